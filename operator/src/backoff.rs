//! Retry delays after a failed reconciliation: exponential, capped, with jitter, and never
//! exhausted. Attempts are counted per object and reset by a success.

use std::{collections::HashMap, hash::Hash, sync::Mutex, time::Duration};

/// Bounds of the retry delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffPolicy {
    pub base: Duration,
    pub cap: Duration,
}

impl BackoffPolicy {
    /// The delay before retry number `attempt` (0 for the first retry), given `jitter` in
    /// `[0, 1)`: `base * 2^attempt`, capped, then drawn from its upper half so that many
    /// objects failing together do not retry in lockstep.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exponential = self
            .base
            .checked_mul(2u32.saturating_pow(attempt.min(31)))
            .unwrap_or(self.cap);
        let capped = exponential.min(self.cap);
        capped.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// Failure counts per object.
pub struct Retries<K> {
    policy: BackoffPolicy,
    attempts: Mutex<HashMap<K, u32>>,
}

impl<K: Eq + Hash> Retries<K> {
    pub fn new(policy: BackoffPolicy) -> Self {
        Self {
            policy,
            attempts: Mutex::default(),
        }
    }

    /// Records a failure of `key` and returns how long to wait before retrying it.
    pub fn next_delay(&self, key: K) -> Duration {
        let mut attempts = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
        let attempt = attempts.entry(key).or_insert(0);
        let delay = self.policy.delay(*attempt, fastrand::f64());
        *attempt = attempt.saturating_add(1);
        delay
    }

    /// Forgets the failures of `key` after a success.
    pub fn reset(&self, key: &K) {
        self.attempts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: BackoffPolicy = BackoffPolicy {
        base: Duration::from_secs(1),
        cap: Duration::from_secs(300),
    };

    #[test]
    fn doubles_until_the_cap() {
        let upper = |attempt| POLICY.delay(attempt, 1.0);
        assert_eq!(upper(0), Duration::from_secs(1));
        assert_eq!(upper(1), Duration::from_secs(2));
        assert_eq!(upper(5), Duration::from_secs(32));
        assert_eq!(upper(9), Duration::from_secs(300));
        assert_eq!(upper(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        assert_eq!(POLICY.delay(3, 0.0), Duration::from_secs(4));
        assert_eq!(POLICY.delay(3, 0.5), Duration::from_secs(6));
    }

    #[test]
    fn success_resets_the_count() {
        let retries = Retries::new(BackoffPolicy {
            base: Duration::from_secs(10),
            cap: Duration::from_secs(1000),
        });
        retries.next_delay("a");
        retries.next_delay("a");
        assert!(retries.next_delay("a") >= Duration::from_secs(20));
        retries.reset(&"a");
        assert!(retries.next_delay("a") <= Duration::from_secs(10));
    }
}
