//! What wakes a controller.
//!
//! The operator's own status writes are watch events too. Unfiltered, each would start another
//! reconciliation, and because the live state in the status (messages, pending, ack floor)
//! moves with traffic, every pass would write again: reconciliation would run at the rate of
//! the audit traffic instead of the requeue interval. So a resource wakes its controller only
//! when a user changed it (spec: the generation; deletion also bumps the generation) or its
//! finalizers changed; the periodic requeue refreshes the live state.
//!
//! The filters run in the watches ([`crate::watches`]), which outlive leadership terms, so
//! that they remember every object while standing by too.
//!
//! Besides watches, a NATS connection coming back after an outage wakes the resources using
//! it, so that they recover within moments rather than at the end of their retry backoff.

use std::hash::{DefaultHasher, Hash, Hasher};

use futures::{Stream, StreamExt};
use kube::{
    Resource,
    api::{ObjectMeta, PartialObjectMetaExt},
    core::{DeserializeGuard, PartialObjectMeta},
    runtime::{Predicate, predicates, watcher},
};

use crate::{connection::NatsPool, crd::stream::AuditStream};

/// What a user changes of a primary resource: its spec (the generation; a deletion bumps it
/// too) or its finalizers; not its status, which the operator writes.
pub fn user_changes<K: Resource>() -> impl Predicate<K> {
    predicates::generation.combine(predicates::finalizers)
}

/// An AuditStream matters to the consumers reading it when its spec or its readiness changes,
/// not when its message counters do. Readiness counts for the generation it was observed at:
/// after a spec change a stream stays `Ready=True` while the operator applies the new
/// generation, and its consumers, which wait for exactly that, must hear when it is done.
pub fn stream_generation_and_readiness(stream: &DeserializeGuard<AuditStream>) -> Option<u64> {
    let generation = stream.meta().generation;
    let ready = stream.0.as_ref().ok().and_then(|stream| {
        stream.status.as_ref().and_then(|status| {
            status
                .conditions
                .iter()
                .find(|condition| condition.type_ == crate::conditions::READY)
                .map(|condition| (condition.status.clone(), status.observed_generation))
        })
    });
    let mut hasher = DefaultHasher::new();
    (generation, ready).hash(&mut hasher);
    Some(hasher.finish())
}

/// The resources of kind `K` whose pooled NATS connection has just reconnected. They come as
/// object metadata naming each one because the controller's stable API takes a stream of
/// objects (as for the max-deliveries advisories).
pub fn reconnected<K>(
    pool: &NatsPool,
) -> impl Stream<Item = Result<PartialObjectMeta<K>, watcher::Error>> + Send + use<K>
where
    K: Resource<DynamicType = ()> + Send + 'static,
{
    pool.reconnected(&K::kind(&())).map(|user| {
        Ok(ObjectMeta {
            name: Some(user.name),
            namespace: Some(user.namespace),
            ..ObjectMeta::default()
        }
        .into_request_partial::<K>())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(yaml: &str) -> DeserializeGuard<AuditStream> {
        DeserializeGuard(Ok(serde_yaml::from_str(yaml).unwrap()))
    }

    const BASE: &str = "
apiVersion: audit.eventsaudit.io/v1alpha1
kind: AuditStream
metadata: {name: orders, namespace: shop, generation: 3}
spec:
  connection: {servers: ['nats://127.0.0.1:4222']}
  subjects: [audit.>]
";

    #[test]
    fn counters_moving_do_not_matter_but_readiness_does() {
        let ready = |messages: u64, status: &str| {
            stream(&format!(
                "{BASE}status:\n  messages: {messages}\n  conditions:\n  - {{type: Ready, status: '{status}', reason: r, message: m, lastTransitionTime: '2026-11-22T00:00:00Z'}}\n"
            ))
        };
        let key = stream_generation_and_readiness;
        assert_eq!(key(&ready(1, "True")), key(&ready(500, "True")));
        assert_ne!(key(&ready(1, "True")), key(&ready(1, "False")));
        assert_ne!(
            key(&ready(1, "True")),
            key(&stream(&BASE.replace("generation: 3", "generation: 4")))
        );
    }

    #[test]
    fn ready_again_at_a_new_generation_matters() {
        let ready_at = |observed: u64| {
            stream(&format!(
                "{}status:\n  observedGeneration: {observed}\n  conditions:\n  - {{type: Ready, status: 'True', reason: r, message: m, lastTransitionTime: '2026-11-22T00:00:00Z'}}\n",
                BASE.replace("generation: 3", "generation: 4")
            ))
        };
        let key = stream_generation_and_readiness;
        assert_ne!(key(&ready_at(3)), key(&ready_at(4)));
    }
}
