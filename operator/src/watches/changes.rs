//! Which changes of an object matter: those that change a predicate's value (kube-runtime's
//! `predicates`, e.g. the generation), as its `predicate_filter` decides. That filter is a
//! stream adapter; this one stands alone, so that it lives with the watch for the whole
//! process (its memory of every object stays warm while standing by, and a new leadership
//! term does not take every object's next status write for a change) and so that one watch
//! can feed several filters.

use std::collections::HashMap;

use kube::{Resource, runtime::Predicate};

/// Who an object is: a re-created object (new uid) is a new object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Identity {
    namespace: Option<String>,
    name: Option<String>,
    uid: Option<String>,
}

impl Identity {
    fn of<K: Resource>(object: &K) -> Self {
        let meta = object.meta();
        Self {
            namespace: meta.namespace.clone(),
            name: meta.name.clone(),
            uid: meta.uid.clone(),
        }
    }
}

/// The last value of `predicate` seen for each object.
pub struct ChangeFilter<P> {
    predicate: P,
    seen: HashMap<Identity, u64>,
}

impl<P> ChangeFilter<P> {
    pub fn new(predicate: P) -> Self {
        Self {
            predicate,
            seen: HashMap::new(),
        }
    }

    /// Whether `object` is new or its predicate's value changed since it was last seen; an
    /// object the predicate has no value for always counts as changed.
    pub fn changed<K: Resource>(&mut self, object: &K) -> bool
    where
        P: Predicate<K>,
    {
        match self.predicate.hash_property(object) {
            Some(value) => self.seen.insert(Identity::of(object), value) != Some(value),
            None => true,
        }
    }

    /// Forgets a deleted object.
    pub fn forget<K: Resource>(&mut self, object: &K) {
        self.seen.remove(&Identity::of(object));
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;
    use kube::runtime::predicates;

    use super::*;

    fn object(uid: &str, generation: Option<i64>) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("a".into()),
                namespace: Some("ns".into()),
                uid: Some(uid.into()),
                generation,
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    #[test]
    fn the_first_sight_and_every_new_value_pass_and_repeats_do_not() {
        let mut filter = ChangeFilter::new(predicates::generation);
        assert!(filter.changed(&object("u1", Some(1))));
        assert!(!filter.changed(&object("u1", Some(1))));
        assert!(filter.changed(&object("u1", Some(2))));
        assert!(!filter.changed(&object("u1", Some(2))));
    }

    #[test]
    fn a_recreated_object_is_new_and_a_forgotten_one_too() {
        let mut filter = ChangeFilter::new(predicates::generation);
        assert!(filter.changed(&object("u1", Some(1))));
        assert!(filter.changed(&object("u2", Some(1))), "new uid");
        filter.forget(&object("u2", Some(1)));
        assert!(filter.changed(&object("u2", Some(1))));
    }

    #[test]
    fn without_a_value_every_sight_passes() {
        let mut filter = ChangeFilter::new(predicates::generation);
        assert!(filter.changed(&object("u1", None)));
        assert!(filter.changed(&object("u1", None)));
    }
}
