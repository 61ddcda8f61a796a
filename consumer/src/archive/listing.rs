//! What `verify --archive` learns from the bucket's listing alone, keys and store times,
//! without reading an object: which run and number a segment is, which segments an
//! incremental check reads, and which numbers are gone. Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::SystemTime;

use super::segment::key_safe;

const EXTENSIONS: [&str; 4] = [".jsonl", ".jsonl.gz", ".log", ".log.gz"];

/// One object as the store lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    pub key: String,
    /// When the store took the object (`LastModified`); `None` if it did not say.
    pub stored: Option<SystemTime>,
}

/// Whether a key names a segment (by its extension).
pub fn is_segment(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    EXTENSIONS.iter().any(|extension| name.ends_with(extension))
}

/// One process's segments, as their keys name it: the consumer's directory, the pod and the
/// start. With integrity one run is one chain, so both name it the same way.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Run {
    pub consumer: String,
    pub pod: String,
    /// The start in the keys' basic format, `20261204T100000.000000001Z`.
    pub start: String,
}

impl Run {
    /// The run whose segments hold the chain `<consumer>/<pod>/<RFC 3339 start>`: keys carry
    /// the same names made key-safe and the same start in basic format.
    pub fn of_chain(chain: &str) -> Option<Run> {
        let mut parts = chain.splitn(3, '/');
        let (consumer, pod, start) = (parts.next()?, parts.next()?, parts.next()?);
        Some(Run {
            consumer: key_safe(consumer),
            pod: key_safe(pod),
            start: start.replace(['-', ':'], ""),
        })
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}_{}", self.pod, self.start)
    }
}

/// A segment's place in its run, read from its key
/// (`.../<consumer>/<yyyy>/<mm>/<dd>/<opened>_<pod>_<start>_<number>_<range>.<ext>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentKey {
    pub run: Run,
    pub number: u64,
}

impl SegmentKey {
    /// `None` for a key that is not a segment's as the archive names them.
    pub fn parse(key: &str) -> Option<Self> {
        if !is_segment(key) {
            return None;
        }
        let mut path = key.rsplit('/');
        let name = path.next()?;
        // Skips the day, the month and the year.
        let consumer = path.nth(3)?;
        // Key-safe pods and starts hold no `_`: the name has exactly five parts.
        let parts: Vec<&str> = name.split('_').collect();
        let [_opened, pod, start, number, _range] = parts[..] else {
            return None;
        };
        Some(Self {
            run: Run {
                consumer: consumer.to_owned(),
                pod: pod.to_owned(),
                start: start.to_owned(),
            },
            number: number.parse().ok()?,
        })
    }
}

/// What one check covers: the segments the store took in `[since, until)` and the heads
/// published then.
#[derive(Clone, Copy, Debug)]
pub struct Window {
    pub since: Option<SystemTime>,
    pub until: SystemTime,
}

impl Window {
    /// A segment whose store time is unknown is read rather than skipped.
    fn holds(&self, stored: Option<SystemTime>) -> bool {
        stored.is_none_or(|at| self.since.is_none_or(|since| at >= since) && at < self.until)
    }

    fn before_since(&self, stored: Option<SystemTime>) -> bool {
        matches!((stored, self.since), (Some(at), Some(since)) if at < since)
    }
}

/// One segment to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Selected<'a> {
    pub key: &'a str,
    /// The first segment read of a run that is not the run's number 1: its chain is checked
    /// from this segment's first line on, what came before having been checked earlier.
    pub continues_run: bool,
}

/// The segments to read, in key order: those stored in the window and, with a `since`, for
/// every run with one of them or with a head in the window (`witnessed`), its newest segment
/// stored before `since`. That predecessor links the window to what an earlier check saw
/// and holds the positions of heads published late.
pub fn select<'a>(
    listing: &'a [Listed],
    window: &Window,
    witnessed: &BTreeSet<Run>,
) -> Vec<Selected<'a>> {
    let parsed: Vec<Option<SegmentKey>> = listing
        .iter()
        .map(|listed| SegmentKey::parse(&listed.key))
        .collect();
    let mut runs: BTreeSet<&Run> = witnessed.iter().collect();
    runs.extend(
        listing
            .iter()
            .zip(&parsed)
            .filter(|(listed, _)| window.holds(listed.stored))
            .filter_map(|(_, segment)| segment.as_ref().map(|segment| &segment.run)),
    );
    // Run -> the index of its newest segment stored before `since`.
    let mut predecessors: BTreeMap<&Run, (u64, usize)> = BTreeMap::new();
    for (index, (listed, segment)) in listing.iter().zip(&parsed).enumerate() {
        let Some(segment) = segment else { continue };
        if window.before_since(listed.stored) && runs.contains(&segment.run) {
            let newest = predecessors.entry(&segment.run).or_insert((0, index));
            if segment.number >= newest.0 {
                *newest = (segment.number, index);
            }
        }
    }
    let predecessors: BTreeSet<usize> = predecessors.values().map(|(_, index)| *index).collect();
    let mut runs_started: BTreeSet<&Run> = BTreeSet::new();
    listing
        .iter()
        .zip(&parsed)
        .enumerate()
        .filter(|(index, (listed, _))| window.holds(listed.stored) || predecessors.contains(index))
        .map(|(_, (listed, segment))| Selected {
            key: &listed.key,
            continues_run: window.since.is_some()
                && segment.as_ref().is_some_and(|segment| {
                    runs_started.insert(&segment.run) && segment.number != 1
                }),
        })
        .collect()
}

/// Segment numbers missing from a run: `from..=to`, after the segment `after` (none when the
/// run's first numbers are gone).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Gap {
    pub run: Run,
    pub from: u64,
    pub to: u64,
    pub after: Option<String>,
}

impl Gap {
    pub fn numbers(&self) -> u64 {
        self.to - self.from + 1
    }
}

/// Every run's gaps: a run numbers its segments from 1 without skipping one, so a number
/// absent below the run's highest is a segment deleted (or hidden), wherever in time it lies.
/// Segments cut off after a run's highest are invisible here; the heads tell those.
pub fn gaps(listing: &[Listed]) -> Vec<Gap> {
    let mut runs: BTreeMap<Run, BTreeMap<u64, &str>> = BTreeMap::new();
    for listed in listing {
        if let Some(segment) = SegmentKey::parse(&listed.key) {
            runs.entry(segment.run)
                .or_default()
                .entry(segment.number)
                .or_insert(&listed.key);
        }
    }
    let mut gaps = Vec::new();
    for (run, numbers) in runs {
        let mut expected = 1;
        let mut after = None;
        for (number, key) in numbers {
            if number > expected {
                gaps.push(Gap {
                    run: run.clone(),
                    from: expected,
                    to: number - 1,
                    after: after.map(str::to_owned),
                });
            }
            expected = number + 1;
            after = Some(key);
        }
    }
    gaps
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::archive::segment::{Naming, Span, basic_timestamp};
    use crate::format::Format;
    use crate::integrity::chain::chain_id;

    const START: i128 = 1_796_378_400_000_000_001;

    fn at(second: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_380_000 + second)
    }

    /// Segment `number` of `pod`'s run, stored at `second`.
    fn segment(pod: &str, number: u64, second: u64) -> Listed {
        let naming = Naming::new("p/", "AUDIT", "to-archive", pod, START, Format::Json, true);
        let span = Span {
            opened_unix_nanos: START + i128::from(number) * 1_000_000_000,
            lowest_sequence: number * 10,
            highest_sequence: number * 10 + 9,
        };
        Listed {
            key: naming.key(number, &span),
            stored: Some(at(second)),
        }
    }

    fn run(pod: &str) -> Run {
        Run {
            consumer: "to-archive".into(),
            pod: pod.into(),
            start: basic_timestamp(START, true),
        }
    }

    fn selected(listing: &[Listed], window: &Window, witnessed: &[Run]) -> Vec<(String, bool)> {
        let witnessed = witnessed.iter().cloned().collect();
        select(listing, window, &witnessed)
            .into_iter()
            .map(|s| (s.key.to_owned(), s.continues_run))
            .collect()
    }

    #[test]
    fn a_key_names_its_run_and_number_and_a_chain_its_run() {
        let listed = segment("archiver-0", 7, 0);
        assert_eq!(
            SegmentKey::parse(&listed.key),
            Some(SegmentKey {
                run: run("archiver-0"),
                number: 7
            })
        );
        assert_eq!(SegmentKey::parse("p/AUDIT/to-archive/notes.txt"), None);
        assert_eq!(SegmentKey::parse("x_y.jsonl"), None);
        // The chain's pod keeps characters the key's does not.
        let chain = chain_id("to-archive", "archiver_0", START);
        let key = segment("archiver_0", 1, 0).key;
        assert_eq!(
            Run::of_chain(&chain),
            SegmentKey::parse(&key).map(|segment| segment.run)
        );
        assert_eq!(
            run("archiver-0").to_string(),
            "archiver-0_20261204T100000.000000001Z"
        );
    }

    #[test]
    fn the_window_is_the_store_time_and_each_run_keeps_its_predecessor() {
        let listing = vec![
            segment("a", 1, 10),
            segment("a", 2, 20),
            segment("a", 3, 30),
            segment("a", 4, 40),
            segment("b", 1, 15),
            segment("b", 2, 25),
            segment("c", 1, 5),
        ];
        let key = |index: usize| listing[index].key.clone();
        let window = Window {
            since: Some(at(25)),
            until: at(40),
        };
        // a/3 is in the window, a/2 its predecessor; b/2 (stored at `since`) is in it and b/1
        // before it; c has nothing in the window; a/4 came at `until`, for the next check.
        let mut expected = vec![
            (key(1), true),
            (key(2), false),
            (key(4), false),
            (key(5), false),
        ];
        expected.sort();
        let mut got = selected(&listing, &window, &[]);
        got.sort();
        assert_eq!(got, expected);

        // A head in the window brings in the run's last segment before it.
        let got = selected(&listing, &window, &[run("c")]);
        assert!(got.contains(&(key(6), false)), "{got:?}");

        // Without `since`, everything stored before `until`, and no run continues.
        let full = Window {
            since: None,
            until: at(40),
        };
        let got = selected(&listing, &full, &[]);
        assert_eq!(got.len(), 6);
        assert!(got.iter().all(|(_, continues)| !continues));
    }

    #[test]
    fn a_run_seen_only_after_its_first_segment_continues() {
        let listing = vec![segment("a", 4, 30), segment("a", 5, 35)];
        let window = Window {
            since: Some(at(25)),
            until: at(40),
        };
        let got = selected(&listing, &window, &[]);
        assert_eq!(got[0], (listing[0].key.clone(), true));
        assert_eq!(got[1], (listing[1].key.clone(), false));
    }

    #[test]
    fn missing_numbers_are_gaps_of_their_run() {
        let listing = vec![
            segment("a", 1, 10),
            segment("a", 2, 20),
            segment("a", 5, 30),
            segment("a", 7, 40),
            segment("b", 2, 15),
            segment("c", 1, 5),
        ];
        let gap = |pod: &str, from, to, after: Option<usize>| Gap {
            run: run(pod),
            from,
            to,
            after: after.map(|index: usize| listing[index].key.clone()),
        };
        let found = gaps(&listing);
        assert_eq!(
            found,
            [
                gap("a", 3, 4, Some(1)),
                gap("a", 6, 6, Some(2)),
                gap("b", 1, 1, None)
            ]
        );
        assert_eq!(found[0].numbers(), 2);
    }
}
