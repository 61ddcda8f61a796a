//! Checking a log against its witnessed heads, without I/O: lines go in as read (several pods'
//! output interleaved, any other lines among them), signed checkpoints as opened, and out
//! comes, per chain, what is complete and what is missing, altered, reordered or truncated.
//!
//! Chains are independent: a redelivered event written by two pods appears in two chains,
//! each complete, and a restarted pod starts a chain of its own. Within a chain, positions are
//! read from the lines, so a line's place in the input matters only for `reordered`.

use std::collections::{BTreeMap, BTreeSet, btree_map};
use std::fmt;

use super::chain::{self, Link};
use super::head::Checkpoint;

/// Where a line was read: the index of its source and its line number there (from 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub source: usize,
    pub line: usize,
}

#[derive(Clone, Debug)]
struct Entry {
    seq: u64,
    prev: Option<blake3::Hash>,
    hash: blake3::Hash,
    at: Location,
}

#[derive(Default)]
struct ChainInput {
    /// In input order.
    lines: Vec<Entry>,
    /// Witnessed position -> hash.
    heads: BTreeMap<u64, blake3::Hash>,
    /// Two trusted heads at one position with different hashes.
    conflicting_heads: BTreeSet<u64>,
    /// The first position expected (0 and 1 alike: the chain's start).
    floor: u64,
    /// The last position expected, when the input is one object of the chain checked on its
    /// own: heads after it are not judged, and the object's first line must link to the
    /// head before it.
    ceiling: Option<u64>,
}

/// One thing found about one chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// Positions `from..=to` are absent, though a later position is present.
    Missing { from: u64, to: u64 },
    /// The line at `seq` is not the one written: its hash differs from what the next line or
    /// a witnessed head records for it.
    Altered { seq: u64, at: Location },
    /// The line at `seq` comes after the line at the later position `after`.
    Reordered { seq: u64, after: u64, at: Location },
    /// Two different lines claim position `seq`.
    Conflict { seq: u64, at: Location },
    /// Positions `from..=to` were witnessed but no line at or after `from` is present.
    Truncated { from: u64, to: u64 },
    /// Witnessed up to `to`, and not one line of the chain is present.
    Absent { to: u64 },
    /// Two validly signed heads disagree about position `seq`: the signing key is misused.
    ConflictingHeads { seq: u64 },
    /// Positions `from..=to` are present and linked, but no head vouches for them yet (the
    /// pod stopped before its next checkpoint, or is still running). Not a problem by itself.
    Unwitnessed { from: u64, to: u64 },
    /// The same line twice (a log shipper delivered it again). Not a problem.
    Duplicate { seq: u64, at: Location },
    /// An object checked on its own starts at `seq`, but no head vouches for the line before
    /// it (written before heads were published at every segment's end): its link to the
    /// previous object can only be checked together with that one. Not a problem by itself.
    Unlinked { seq: u64 },
}

impl Finding {
    /// Whether the finding means the log is not what the pods wrote.
    pub fn is_problem(&self) -> bool {
        !matches!(
            self,
            Finding::Unwitnessed { .. } | Finding::Duplicate { .. } | Finding::Unlinked { .. }
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Every position up to the last head is present, in order and as written, and nothing
    /// follows it.
    Complete,
    /// No problem, but lines after the last head (or all of them) are not witnessed.
    Unwitnessed,
    /// At least one problem.
    Problems,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Complete => "complete",
            Status::Unwitnessed => "unwitnessed",
            Status::Problems => "problems",
        })
    }
}

#[derive(Clone, Debug)]
pub struct ChainReport {
    pub chain: String,
    pub lines: usize,
    /// The last witnessed position (0 without a head).
    pub witnessed: u64,
    pub findings: Vec<Finding>,
}

impl ChainReport {
    pub fn status(&self) -> Status {
        if self.findings.iter().any(Finding::is_problem) {
            Status::Problems
        } else if self.findings.iter().any(|finding| {
            matches!(
                finding,
                Finding::Unwitnessed { .. } | Finding::Unlinked { .. }
            )
        }) {
            Status::Unwitnessed
        } else {
            Status::Complete
        }
    }
}

#[derive(Default)]
pub struct Verifier {
    chains: BTreeMap<String, ChainInput>,
}

impl Verifier {
    /// Takes one line (without its newline); a line without chain fields is ignored.
    /// Returns whether it was a chained line.
    pub fn add_line(&mut self, line: &[u8], at: Location) -> bool {
        let Some(Link { chain, seq, prev }) = chain::parse(line) else {
            return false;
        };
        let entry = Entry {
            seq,
            prev,
            hash: chain::line_hash(line),
            at,
        };
        match self.chains.get_mut(chain) {
            Some(input) => input.lines.push(entry),
            None => {
                let mut input = ChainInput::default();
                input.lines.push(entry);
                self.chains.insert(chain.to_owned(), input);
            }
        }
        true
    }

    /// Takes a checkpoint whose signature has been verified.
    pub fn add_checkpoint(&mut self, checkpoint: &Checkpoint) {
        let Ok(hash) = blake3::Hash::from_hex(&checkpoint.hash) else {
            return;
        };
        let input = self.chains.entry(checkpoint.chain.clone()).or_default();
        match input.heads.entry(checkpoint.seq) {
            btree_map::Entry::Vacant(vacant) => {
                vacant.insert(hash);
            }
            btree_map::Entry::Occupied(occupied) => {
                if *occupied.get() != hash {
                    input.conflicting_heads.insert(checkpoint.seq);
                }
            }
        }
    }

    /// Positions below `first_position` are not expected: the input starts the chain there,
    /// its earlier part having been checked before (an incremental check of an archive).
    /// Only missing lines are judged differently; the line at the floor must still link to
    /// a predecessor.
    pub fn set_floor(&mut self, chain: &str, first_position: u64) {
        match self.chains.get_mut(chain) {
            Some(input) => input.floor = first_position,
            None => {
                let input = ChainInput {
                    floor: first_position,
                    ..ChainInput::default()
                };
                self.chains.insert(chain.to_owned(), input);
            }
        }
    }

    /// Limits the check to the lines read from `source`, one object checked on its own: each
    /// chain with lines there is expected from its first position there to the one
    /// `end_of(chain)` gives (the head that ends the object), or to its last line there
    /// without one; chains without lines there are dropped.
    pub fn confine_to_source(&mut self, source: usize, end_of: impl Fn(&str) -> Option<u64>) {
        self.chains.retain(|chain, input| {
            let positions = input
                .lines
                .iter()
                .filter(|entry| entry.at.source == source)
                .map(|entry| entry.seq);
            let (Some(first), Some(last)) = (positions.clone().min(), positions.max()) else {
                return false;
            };
            input.floor = first;
            input.ceiling = Some(end_of(chain).unwrap_or(last).max(last));
            true
        });
    }

    /// One report per chain seen in the lines or the heads, ordered by chain id.
    pub fn reports(&self) -> Vec<ChainReport> {
        self.chains
            .iter()
            .map(|(chain, input)| input.report(chain))
            .collect()
    }
}

impl ChainInput {
    fn report(&self, chain: &str) -> ChainReport {
        let mut findings = Vec::new();
        // Position -> the first line that claims it.
        let mut by_seq: BTreeMap<u64, &Entry> = BTreeMap::new();
        // Order is judged within each source: rotated files may be given in any order.
        let mut highest_in_source: BTreeMap<usize, u64> = BTreeMap::new();
        for entry in &self.lines {
            match by_seq.entry(entry.seq) {
                btree_map::Entry::Occupied(first) => {
                    findings.push(if first.get().hash == entry.hash {
                        Finding::Duplicate {
                            seq: entry.seq,
                            at: entry.at,
                        }
                    } else {
                        Finding::Conflict {
                            seq: entry.seq,
                            at: entry.at,
                        }
                    });
                    continue;
                }
                btree_map::Entry::Vacant(vacant) => {
                    vacant.insert(entry);
                }
            }
            let highest = highest_in_source.entry(entry.at.source).or_default();
            if entry.seq < *highest {
                findings.push(Finding::Reordered {
                    seq: entry.seq,
                    after: *highest,
                    at: entry.at,
                });
            }
            *highest = (*highest).max(entry.seq);
        }

        // A line is altered when what vouches for it (the next line's `prev`, a head)
        // records another hash. A line whose own `prev` says it starts the chain, or does
        // not, when its position says otherwise, is altered too.
        let mut altered = BTreeMap::new();
        for (&seq, entry) in &by_seq {
            if (seq == 1) != entry.prev.is_none() {
                altered.insert(seq, entry.at);
            }
            // Positions come from the lines: 0 and u64::MAX are read too, and must not overflow.
            let before = seq.checked_sub(1).and_then(|before| by_seq.get(&before));
            if let (Some(prev), Some(before)) = (entry.prev, before)
                && before.hash != prev
            {
                altered.insert(seq - 1, before.at);
            }
        }
        let heads: BTreeMap<u64, blake3::Hash> = match self.ceiling {
            Some(ceiling) => self
                .heads
                .range(..=ceiling)
                .map(|(s, h)| (*s, *h))
                .collect(),
            None => self.heads.clone(),
        };
        for (seq, hash) in &heads {
            if let Some(entry) = by_seq.get(seq)
                && entry.hash != *hash
            {
                altered.insert(*seq, entry.at);
            }
            // A line whose predecessor is not at hand still links to a head at its place.
            if let Some(next) = seq.checked_add(1).and_then(|next| by_seq.get(&next))
                && !by_seq.contains_key(seq)
                && next.prev.is_some_and(|prev| prev != *hash)
            {
                altered.insert(seq + 1, next.at);
            }
        }
        let mut unlinked = None;
        if self.ceiling.is_some()
            && self.floor > 1
            && by_seq.contains_key(&self.floor)
            && !heads.contains_key(&(self.floor - 1))
        {
            unlinked = Some(Finding::Unlinked { seq: self.floor });
        }
        findings.extend(
            altered
                .into_iter()
                .map(|(seq, at)| Finding::Altered { seq, at }),
        );

        let last_line = by_seq.keys().next_back().copied().unwrap_or(0);
        let mut expected = self.floor.max(1);
        for &seq in by_seq.keys() {
            if seq > expected {
                findings.push(Finding::Missing {
                    from: expected,
                    to: seq - 1,
                });
            }
            expected = seq.saturating_add(1);
        }
        let witnessed = heads.keys().next_back().copied().unwrap_or(0);
        if by_seq.is_empty() {
            findings.push(Finding::Absent { to: witnessed });
        } else if witnessed > last_line {
            findings.push(Finding::Truncated {
                from: last_line + 1,
                to: witnessed,
            });
        } else if last_line > witnessed {
            findings.push(Finding::Unwitnessed {
                from: witnessed.max(self.floor.saturating_sub(1)) + 1,
                to: last_line,
            });
        }
        findings.extend(
            self.conflicting_heads
                .iter()
                .filter(|seq| self.ceiling.is_none_or(|ceiling| **seq <= ceiling))
                .map(|&seq| Finding::ConflictingHeads { seq }),
        );
        findings.extend(unlinked);
        ChainReport {
            chain: chain.to_owned(),
            lines: by_seq.len(),
            witnessed,
            findings,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::format::Format;
    use crate::integrity::chain::{Chain, Head};

    const ID: &str = "logger/pod-a/2026-11-28T11:00:00.000000000Z";

    /// `count` chained text lines of one chain, and its head after each line.
    fn chain_of(id: &str, count: usize) -> (Vec<Vec<u8>>, Vec<Head>) {
        let mut chain = Chain::new(Format::Text, id.into());
        let mut lines = Vec::new();
        let mut heads = Vec::new();
        for n in 0..count {
            let mut out = format!("kind=raw raw=event-{n}\n").into_bytes();
            chain.seal(&mut out, 0);
            out.pop();
            lines.push(out);
            heads.push(chain.head().unwrap());
        }
        (lines, heads)
    }

    fn checkpoint(head: &Head) -> Checkpoint {
        Checkpoint::new(head, 0, "signer".into())
    }

    fn verify(lines: &[Vec<u8>], heads: &[&Head]) -> Vec<ChainReport> {
        let mut verifier = Verifier::default();
        for (index, line) in lines.iter().enumerate() {
            verifier.add_line(
                line,
                Location {
                    source: 0,
                    line: index + 1,
                },
            );
        }
        for head in heads {
            verifier.add_checkpoint(&checkpoint(head));
        }
        verifier.reports()
    }

    fn at(line: usize) -> Location {
        Location { source: 0, line }
    }

    #[test]
    fn a_clean_witnessed_chain_is_complete() {
        let (lines, heads) = chain_of(ID, 10);
        let reports = verify(&lines, &[&heads[4], &heads[9]]);
        assert_eq!(reports.len(), 1);
        assert_eq!(reports[0].status(), Status::Complete, "{reports:?}");
        assert_eq!((reports[0].lines, reports[0].witnessed), (10, 10));
    }

    #[test]
    fn other_lines_and_other_chains_interleave_freely() {
        let (a, a_heads) = chain_of(ID, 5);
        let (b, b_heads) = chain_of("logger/pod-b/2026-11-28T11:00:00.000000000Z", 5);
        let mut lines = Vec::new();
        for (x, y) in a.iter().zip(&b) {
            lines.extend([x.clone(), b"not a chained line".to_vec(), y.clone()]);
        }
        let reports = verify(&lines, &[&a_heads[4], &b_heads[4]]);
        assert_eq!(reports.len(), 2);
        assert!(reports.iter().all(|r| r.status() == Status::Complete));
    }

    /// Segments of ten lines (sources 0, 1, 2) with heads at their ends; only the middle one
    /// is read, with every head.
    fn middle_object(edit: impl FnOnce(&mut Vec<Vec<u8>>, &mut Vec<Head>)) -> ChainReport {
        let (mut lines, heads) = chain_of(ID, 30);
        let mut ends = vec![heads[9].clone(), heads[19].clone(), heads[29].clone()];
        let mut middle = lines.drain(10..20).collect();
        edit(&mut middle, &mut ends);
        let mut verifier = Verifier::default();
        for (index, line) in middle.iter().enumerate() {
            verifier.add_line(
                line,
                Location {
                    source: 1,
                    line: index + 1,
                },
            );
        }
        for head in &ends {
            verifier.add_checkpoint(&checkpoint(head));
        }
        verifier.confine_to_source(1, |_| Some(20));
        let mut reports = verifier.reports();
        assert_eq!(reports.len(), 1);
        reports.remove(0)
    }

    #[test]
    fn one_object_between_two_heads_is_checked_on_its_own() {
        let report = middle_object(|_, _| {});
        assert_eq!(report.status(), Status::Complete, "{report:?}");
        assert_eq!((report.lines, report.witnessed), (10, 20));

        let report = middle_object(|lines, _| {
            lines.truncate(8);
        });
        assert_eq!(report.findings, [Finding::Truncated { from: 19, to: 20 }]);

        // The head before the object is not the line its first line follows.
        let report = middle_object(|_, ends| ends[0].hash = blake3::hash(b"another line"));
        assert_eq!(
            report.findings,
            [Finding::Altered {
                seq: 11,
                at: Location { source: 1, line: 1 }
            }]
        );

        let report = middle_object(|_, ends| {
            ends.remove(0);
        });
        assert_eq!(report.findings, [Finding::Unlinked { seq: 11 }]);
        assert_eq!(report.status(), Status::Unwitnessed);
    }

    #[test]
    fn a_deleted_line_is_missing() {
        let (mut lines, heads) = chain_of(ID, 10);
        lines.remove(3);
        let report = &verify(&lines, &[&heads[9]])[0];
        assert_eq!(report.findings, [Finding::Missing { from: 4, to: 4 }]);
    }

    #[test]
    fn an_edited_character_is_located() {
        let (mut lines, heads) = chain_of(ID, 10);
        let at_event = lines[5].iter().position(|&b| b == b'-').unwrap();
        lines[5][at_event] = b'_';
        let report = &verify(&lines, &[&heads[9]])[0];
        assert_eq!(report.findings, [Finding::Altered { seq: 6, at: at(6) }]);
        // The last witnessed line is checked against its head.
        let (mut lines, heads) = chain_of(ID, 10);
        lines[9][at_event] = b'_';
        let report = &verify(&lines, &[&heads[9]])[0];
        assert_eq!(
            report.findings,
            [Finding::Altered {
                seq: 10,
                at: at(10)
            }]
        );
    }

    #[test]
    fn swapped_lines_are_reordered() {
        let (mut lines, heads) = chain_of(ID, 10);
        lines.swap(2, 3);
        let report = &verify(&lines, &[&heads[9]])[0];
        assert_eq!(
            report.findings,
            [Finding::Reordered {
                seq: 3,
                after: 4,
                at: at(4)
            }]
        );
    }

    #[test]
    fn files_may_come_in_any_order() {
        let (lines, heads) = chain_of(ID, 10);
        let mut verifier = Verifier::default();
        // The newer file first, as `ls` might list rotated logs.
        for (source, range) in [(0, 5..10), (1, 0..5)] {
            for (index, line) in lines[range].iter().enumerate() {
                verifier.add_line(
                    line,
                    Location {
                        source,
                        line: index + 1,
                    },
                );
            }
        }
        verifier.add_checkpoint(&checkpoint(&heads[9]));
        assert_eq!(verifier.reports()[0].status(), Status::Complete);
    }

    #[test]
    fn a_cut_tail_is_truncated_and_a_dropped_chain_absent() {
        let (lines, heads) = chain_of(ID, 10);
        let report = &verify(&lines[..7], &[&heads[4], &heads[9]])[0];
        assert_eq!(report.findings, [Finding::Truncated { from: 8, to: 10 }]);
        let report = &verify(&[], &[&heads[9]])[0];
        assert_eq!(report.findings, [Finding::Absent { to: 10 }]);
        assert_eq!(report.status(), Status::Problems);
    }

    #[test]
    fn lines_after_the_last_head_are_unwitnessed_and_duplicates_harmless() {
        let (mut lines, heads) = chain_of(ID, 10);
        lines.push(lines[9].clone());
        let report = &verify(&lines, &[&heads[6]])[0];
        assert_eq!(
            report.findings,
            [
                Finding::Duplicate {
                    seq: 10,
                    at: at(11)
                },
                Finding::Unwitnessed { from: 8, to: 10 }
            ]
        );
        assert_eq!(report.status(), Status::Unwitnessed);
    }

    #[test]
    fn a_rewritten_tail_does_not_match_its_head() {
        // Lines 6..=10 replaced by a consistent forgery: every link holds, the head does not.
        let (lines, heads) = chain_of(ID, 10);
        let mut forged = Chain::new(Format::Text, ID.into());
        let mut rewritten = Vec::new();
        for (n, line) in lines.iter().enumerate() {
            let text = if n < 5 {
                String::from_utf8(line.clone()).unwrap()
            } else {
                format!("kind=raw raw=forged-{n}")
            };
            let text = text.split(" chain=").next().unwrap().to_owned();
            let mut out = format!("{text}\n").into_bytes();
            forged.seal(&mut out, 0);
            out.pop();
            rewritten.push(out);
        }
        assert_eq!(rewritten[..5], lines[..5]);
        let report = &verify(&rewritten, &[&heads[9]])[0];
        assert_eq!(
            report.findings,
            [Finding::Altered {
                seq: 10,
                at: at(10)
            }]
        );
    }

    #[test]
    fn below_the_floor_nothing_is_expected_and_the_rest_is_checked_as_before() {
        let (lines, heads) = chain_of(ID, 10);
        let from_fifth = |lines: &[Vec<u8>], heads: &[&Head]| {
            let mut verifier = Verifier::default();
            verifier.set_floor(ID, 5);
            for (index, line) in lines.iter().enumerate() {
                verifier.add_line(line, at(index + 1));
            }
            for head in heads {
                verifier.add_checkpoint(&checkpoint(head));
            }
            verifier.reports().remove(0)
        };
        let report = from_fifth(&lines[4..], &[&heads[3], &heads[9]]);
        assert_eq!(report.status(), Status::Complete, "{report:?}");
        assert_eq!(report.lines, 6);

        let mut cut = lines[4..].to_vec();
        cut.remove(2);
        let report = from_fifth(&cut, &[&heads[9]]);
        assert_eq!(report.findings, [Finding::Missing { from: 7, to: 7 }]);

        let report = from_fifth(&lines[4..8], &[&heads[9]]);
        assert_eq!(report.findings, [Finding::Truncated { from: 9, to: 10 }]);

        // Without a head since the floor, only what was read is unwitnessed.
        let report = from_fifth(&lines[4..], &[&heads[1]]);
        assert_eq!(report.findings, [Finding::Unwitnessed { from: 5, to: 10 }]);

        let mut edited = lines[4..].to_vec();
        edited[0][0] = b'X';
        let report = from_fifth(&edited, &[&heads[9]]);
        assert_eq!(report.findings, [Finding::Altered { seq: 5, at: at(1) }]);
    }

    #[test]
    fn heads_that_disagree_are_a_problem() {
        let (lines, heads) = chain_of(ID, 3);
        let forged = Head {
            chain: Arc::from(ID),
            seq: 3,
            hash: blake3::hash(b"other"),
        };
        let report = &verify(&lines, &[&heads[2], &forged])[0];
        assert!(
            report
                .findings
                .contains(&Finding::ConflictingHeads { seq: 3 })
        );
    }
}
