//! The set of object keys whose values are replaced before an event is written.
//!
//! Matching is ASCII case-insensitive (`Password`, `PASSWORD` and `password` all match), because
//! producers disagree on case and a secret that slips through because of it is worse than a
//! harmless field that gets hidden. The JSON scanner asks this set about every key it sees, so the
//! check is one bit test of the key's length (most keys have no candidate of their length),
//! then a byte compare, with no allocation.

/// What replaces a redacted value; a JSON string so the event stays valid JSON.
pub const REDACTED: &[u8] = b"\"[REDACTED]\"";

#[derive(Clone, Debug, Default)]
pub struct RedactKeys {
    keys: Vec<Box<[u8]>>,
    /// Bit `n` is set when some key is `n` bytes long (bit 63: 63 bytes or longer).
    lengths: u64,
}

impl RedactKeys {
    /// Builds the set from key names; empty and duplicate names are ignored.
    pub fn new<I, S>(names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut keys: Vec<Box<[u8]>> = Vec::new();
        for name in names {
            let lowered = name.as_ref().trim().to_ascii_lowercase().into_bytes();
            if !lowered.is_empty() && !keys.iter().any(|key| **key == *lowered) {
                keys.push(lowered.into_boxed_slice());
            }
        }
        let lengths = keys.iter().fold(0, |bits, key| bits | length_bit(key));
        Self { keys, lengths }
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// True when `key` (the decoded object key) names a value to redact.
    #[inline]
    pub fn matches(&self, key: &[u8]) -> bool {
        self.lengths & length_bit(key) != 0
            && self.keys.iter().any(|candidate| {
                candidate.len() == key.len() && candidate.eq_ignore_ascii_case(key)
            })
    }
}

#[inline]
fn length_bit(key: &[u8]) -> u64 {
    1 << key.len().min(63)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_names_case_insensitively() {
        let keys = RedactKeys::new(["password", " Token ", "", "password"]);
        assert!(keys.matches(b"password"));
        assert!(keys.matches(b"PassWord"));
        assert!(keys.matches(b"token"));
        assert!(!keys.matches(b"passwords"));
        assert!(!keys.matches(b""));
    }

    #[test]
    fn long_keys_are_compared_in_full() {
        let long = "k".repeat(70);
        let keys = RedactKeys::new([long.as_str(), &"x".repeat(63)]);
        assert!(keys.matches(long.to_uppercase().as_bytes()));
        assert!(keys.matches("X".repeat(63).as_bytes()));
        assert!(!keys.matches("k".repeat(69).as_bytes()));
        assert!(!keys.matches("k".repeat(71).as_bytes()));
        assert!(!keys.matches("x".repeat(64).as_bytes()));
    }

    #[test]
    fn empty_set_matches_nothing() {
        let keys = RedactKeys::new(Vec::<String>::new());
        assert!(keys.is_empty());
        assert!(!keys.matches(b"password"));
    }
}
