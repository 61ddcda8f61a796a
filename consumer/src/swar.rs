//! Word-at-a-time searches for the first byte of a class ("SIMD within a register").
//!
//! The escaper, the JSON scanner and the text format's bare-value check walk runs of ordinary
//! bytes looking for the few that need attention. Testing eight bytes per step with plain
//! `u64` arithmetic costs less than a table lookup and a branch per byte, needs no `unsafe`
//! and works on any target.
//!
//! A class is tested by a function from eight bytes (one little-endian word, byte `i` in lane
//! `i`) to a word with the high bit of a lane set when that lane's byte may belong to the
//! class; bytes it flags that are not in the class are settled one at a time. The helpers
//! below build such functions from per-lane comparisons that never carry from one lane into the
//! next, so every lane's answer is exact, not only the first.

/// The high bit of every lane: a class function's result is masked with it, and a byte is
/// ASCII exactly when its lane's bit is clear in `word & HIGH`.
pub(crate) const HIGH: u64 = 0x8080_8080_8080_8080;
/// The low seven bits of every lane.
const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;

/// `byte` in every lane.
pub(crate) const fn splat(byte: u8) -> u64 {
    u64::from_ne_bytes([byte; 8])
}

/// The low seven bits of each lane of `word`: the input of [`low7_ne`] and [`low7_ge`].
#[inline(always)]
pub(crate) const fn low7(word: u64) -> u64 {
    word & LOW7
}

/// High bit of a lane set when the lane's low seven bits differ from those of `byte` (the
/// other bits are left over; a class function masks its result with [`HIGH`]). Each lane sums
/// to at most 0x7f + 0x7f, so nothing carries into the next lane.
#[inline(always)]
pub(crate) const fn low7_ne(low7: u64, byte: u8) -> u64 {
    (low7 ^ splat(byte & 0x7f)) + LOW7
}

/// High bit of a lane set when the lane's low seven bits are at least `bound` (1..=0x80; the
/// other bits are left over). Each lane sums to at most 0x7f + 0x7f, so nothing carries into
/// the next lane.
#[inline(always)]
pub(crate) const fn low7_ge(low7: u64, bound: u8) -> u64 {
    low7 + splat(0x80 - bound)
}

/// Appends to `out` the bytes of `bytes` before the first one in a class, and returns how
/// many that was (`bytes.len()` when none is in the class).
///
/// `candidates` flags, eight bytes at a time, every byte of the class and possibly others
/// (a cheaper test than an exact one); `confirm` settles each flagged byte. Every step appends
/// a whole word and then cuts `out` back to the end of the run, so a short run costs one
/// 8-byte store rather than a call to `memcpy`.
#[inline(always)]
pub(crate) fn copy_run(
    out: &mut Vec<u8>,
    bytes: &[u8],
    candidates: impl Fn(u64) -> u64,
    confirm: impl Fn(u8) -> bool,
) -> usize {
    let mut words = bytes.chunks_exact(8);
    let mut offset = 0;
    for word in &mut words {
        let word: [u8; 8] = word.try_into().expect("chunks of 8");
        out.extend_from_slice(&word);
        if let Some(run) = first_confirmed(candidates(u64::from_le_bytes(word)), word, &confirm) {
            out.truncate(out.len() - 8 + run);
            return offset + run;
        }
        offset += 8;
    }
    let rest = words.remainder();
    if rest.is_empty() {
        return offset;
    }
    let (word, len) = load(rest);
    out.extend_from_slice(&word.to_le_bytes());
    let hits = candidates(word) & lanes_below(len);
    let run = first_confirmed(hits, word.to_le_bytes(), &confirm).unwrap_or(len);
    out.truncate(out.len() - 8 + run);
    offset + run
}

/// The length of the run of bytes at the start of `bytes` before the first one in a class
/// (`bytes.len()` when none is), with the class tested as [`copy_run`] tests it.
#[inline(always)]
pub(crate) fn run_len(
    bytes: &[u8],
    candidates: impl Fn(u64) -> u64,
    confirm: impl Fn(u8) -> bool,
) -> usize {
    let mut words = bytes.chunks_exact(8);
    let mut offset = 0;
    for word in &mut words {
        let word: [u8; 8] = word.try_into().expect("chunks of 8");
        if let Some(run) = first_confirmed(candidates(u64::from_le_bytes(word)), word, &confirm) {
            return offset + run;
        }
        offset += 8;
    }
    let rest = words.remainder();
    if rest.is_empty() {
        return offset;
    }
    let (word, len) = load(rest);
    let hits = candidates(word) & lanes_below(len);
    offset + first_confirmed(hits, word.to_le_bytes(), &confirm).unwrap_or(len)
}

/// The first lane flagged in `hits` whose byte of `word` is confirmed to be in the class.
#[inline(always)]
fn first_confirmed(mut hits: u64, word: [u8; 8], confirm: impl Fn(u8) -> bool) -> Option<usize> {
    while hits != 0 {
        let lane = first_lane(hits);
        if confirm(word[lane]) {
            return Some(lane);
        }
        hits &= hits - 1;
    }
    None
}

/// The first eight bytes of `bytes` as a word, or all of them padded with zero bytes, and how
/// many were taken.
#[inline(always)]
pub(crate) fn load(bytes: &[u8]) -> (u64, usize) {
    if let Some(word) = bytes.first_chunk::<8>() {
        return (u64::from_le_bytes(*word), 8);
    }
    // Shifted in byte by byte: copying a slice of unknown length would call `memcpy`.
    let mut word = 0;
    for (lane, &byte) in bytes.iter().enumerate() {
        word |= u64::from(byte) << (8 * lane);
    }
    (word, bytes.len())
}

/// The high bits of lanes `0..len` (`len` at most 8): masks off the padding of a word from
/// [`load`], whose zero bytes may belong to the class.
#[inline(always)]
pub(crate) fn lanes_below(len: usize) -> u64 {
    HIGH & u64::MAX.checked_shr(64 - 8 * len as u32).unwrap_or(0)
}

/// The lane of the lowest set high bit in `hits` (which is not zero).
#[inline(always)]
pub(crate) fn first_lane(hits: u64) -> usize {
    (hits.trailing_zeros() / 8) as usize
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Checks [`copy_run`] and [`run_len`] with `candidates` and `confirm` against the
    /// byte-at-a-time definition `reference` of the class: every byte value at every position
    /// of inputs of every length up to 24 (covering whole words and tails), on backgrounds of
    /// bytes outside the class, and on random inputs.
    pub(crate) fn agrees_with(
        candidates: impl Fn(u64) -> u64 + Copy,
        confirm: impl Fn(u8) -> bool + Copy,
        reference: impl Fn(u8) -> bool,
    ) {
        let check = |bytes: &[u8], context: &dyn Fn() -> String| {
            let want = bytes
                .iter()
                .position(|&byte| reference(byte))
                .unwrap_or(bytes.len());
            let mut out = b"before".to_vec();
            let run = copy_run(&mut out, bytes, candidates, confirm);
            assert_eq!(run, want, "{}", context());
            assert_eq!(run_len(bytes, candidates, confirm), want, "{}", context());
            assert_eq!(&out[..6], b"before", "{}", context());
            assert_eq!(&out[6..], &bytes[..want], "{}", context());
        };
        // Lanes are independent, so a sample of backgrounds is enough to show no lane leaks.
        let outside: Vec<u8> = (0..=255u8).filter(|&byte| !reference(byte)).collect();
        let backgrounds = outside.iter().step_by(16).chain(outside.last());
        for &background in backgrounds {
            for len in 0..=24 {
                let mut bytes = vec![background; len];
                check(&bytes, &|| format!("{len} x {background:#04x}"));
                for at in 0..len {
                    for byte in 0..=255u8 {
                        bytes[at] = byte;
                        check(&bytes, &|| {
                            format!("byte {byte:#04x} at {at} of {len} on {background:#04x}")
                        });
                    }
                    bytes[at] = background;
                }
            }
        }
        let mut rng = fastrand::Rng::with_seed(13);
        for _ in 0..100_000 {
            let bytes: Vec<u8> = (0..rng.usize(..40)).map(|_| rng.u8(..)).collect();
            check(&bytes, &|| format!("{bytes:x?}"));
        }
    }

    #[test]
    fn lane_comparisons_are_exact_in_every_lane() {
        for byte in 0..=255u8 {
            for lane in 0..8 {
                // Neighbours that would show a carry or borrow leaking across lanes.
                for neighbour in [0x00, 0x7f, 0x80, 0xff, byte.wrapping_add(1)] {
                    let mut bytes = [neighbour; 8];
                    bytes[lane] = byte;
                    let word = u64::from_le_bytes(bytes);
                    let bit = 0x80 << (8 * lane);
                    for other in 0..=255u8 {
                        assert_eq!(
                            low7_ne(low7(word), other) & bit != 0,
                            byte & 0x7f != other & 0x7f
                        );
                    }
                    for bound in 1..=0x80u8 {
                        assert_eq!(low7_ge(low7(word), bound) & bit != 0, byte & 0x7f >= bound);
                    }
                }
            }
        }
    }

    #[test]
    fn finds_the_first_member_of_a_class() {
        let quote_or_non_ascii = |word: u64| (!low7_ne(low7(word), b'"') | word) & HIGH;
        agrees_with(
            quote_or_non_ascii,
            |_| true,
            |byte| byte == b'"' || byte >= 0x80,
        );
        // Candidates that include every non-ASCII byte, settled one byte at a time.
        agrees_with(
            quote_or_non_ascii,
            |byte| byte != 0xe9,
            |byte| byte == b'"' || (byte >= 0x80 && byte != 0xe9),
        );
    }
}
