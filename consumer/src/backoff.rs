//! Bounded exponential backoff with jitter, so that many consumers recovering from the same
//! outage do not retry in lockstep, and a persistent failure never becomes a busy loop.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Self {
        Self {
            base,
            max,
            attempt: 0,
        }
    }

    /// The next delay: a random point in the upper half of `base * 2^attempt`, capped at `max`.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(20))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Called after a success, so the next failure starts again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_stays_bounded_and_resets() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(5);
        let mut backoff = Backoff::new(base, max);
        let first = backoff.next_delay();
        assert!(first >= base / 2 && first <= base);
        let later: Vec<Duration> = (0..30).map(|_| backoff.next_delay()).collect();
        assert!(
            later
                .iter()
                .all(|delay| *delay <= max && *delay >= base / 2)
        );
        assert!(later.last().unwrap() >= &(max / 2));
        backoff.reset();
        assert!(backoff.next_delay() <= base);
    }
}
