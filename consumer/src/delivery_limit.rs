//! The durable consumer's `max_deliver`, as last seen (when binding, and in every consumer
//! info poll, so a limit the operator changes is followed), and what it means for an event
//! this pod hands back unwritten.
//!
//! NATS gives up on an event whose delivery count has reached `max_deliver` as soon as that
//! delivery is naked or its ack wait runs out: it is not delivered again (nats-server's
//! `hasMaxDeliveries` and `getNextMsg`). So the pod that naks an event at its final delivery
//! knows, at that moment and with one comparison, that the event will not be written by
//! anyone; it counts it as `terminated` instead of `naked`.

use std::sync::atomic::{AtomicI64, Ordering};

/// The limit shared by the worker and the consumer info monitor.
#[derive(Debug, Default)]
pub struct DeliveryLimit {
    /// `max_deliver` from the consumer's configuration; zero or negative means unlimited.
    max_deliver: AtomicI64,
}

impl DeliveryLimit {
    pub fn set(&self, max_deliver: i64) {
        self.max_deliver.store(max_deliver, Ordering::Relaxed);
    }

    /// Whether an event delivered `delivered` times is given up by NATS if it is not acked.
    pub fn is_final(&self, delivered: i64) -> bool {
        is_final_delivery(self.max_deliver.load(Ordering::Relaxed), delivered)
    }
}

/// Whether delivery number `delivered` is the last one `max_deliver` allows. A limit lowered
/// after the event was delivered leaves it above the limit, which NATS gives up on too.
pub fn is_final_delivery(max_deliver: i64, delivered: i64) -> bool {
    max_deliver > 0 && delivered >= max_deliver
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_delivery_at_or_past_a_limit_is_final() {
        assert!(!is_final_delivery(3, 1));
        assert!(!is_final_delivery(3, 2));
        assert!(is_final_delivery(3, 3));
        assert!(is_final_delivery(3, 4), "the limit was lowered meanwhile");
        assert!(is_final_delivery(1, 1));
    }

    #[test]
    fn without_a_limit_no_delivery_is_final() {
        // NATS reports an unlimited max_deliver as -1; 0 is unset.
        for unlimited in [-1, 0] {
            assert!(!is_final_delivery(unlimited, 1));
            assert!(!is_final_delivery(unlimited, i64::MAX));
        }
    }

    #[test]
    fn follows_the_latest_limit() {
        let limit = DeliveryLimit::default();
        assert!(!limit.is_final(5), "unlimited until a consumer is seen");
        limit.set(5);
        assert!(limit.is_final(5));
        limit.set(-1);
        assert!(!limit.is_final(5), "the limit was removed");
    }
}
