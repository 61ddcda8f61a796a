//! Pipeline step 3 (pure): what an AuditConsumer should look like on NATS (the durable
//! consumer) and in Kubernetes (its workload objects), one builder per object, each reading
//! only the [`ValidConsumer`].
//!
//! Every workload object carries the same labels, the AuditConsumer as controlling owner, and
//! is named after it, so that a hand-made object of the same name is never taken over
//! silently (see `apply`).

pub mod deployment;
pub mod nats_consumer;
pub mod network_policy;
pub mod pdb;
pub mod service_account;
pub mod verification;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::validate::ValidConsumer;

/// Label selecting every object of one AuditConsumer, with [`INSTANCE_LABEL`].
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`NAME_LABEL`] on every consumer workload.
pub const APP_NAME: &str = "audit-consumer";

/// Name of every workload object of the AuditConsumer `name`.
pub fn workload_name(name: &str) -> String {
    format!("{name}-{APP_NAME}")
}

/// The labels by which the pods of the AuditConsumer `name` are selected.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), APP_NAME.to_owned()),
        (INSTANCE_LABEL.to_owned(), name.to_owned()),
    ])
}

/// The selector as a string, for the scale subresource.
pub fn selector_string(name: &str) -> String {
    selector_labels(name)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels of every workload object.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    let mut labels = selector_labels(name);
    labels.insert(
        MANAGED_BY_LABEL.to_owned(),
        crate::CONTROLLER_NAME.to_owned(),
    );
    labels
}

/// Metadata of a workload object: name, namespace, labels and the controlling owner.
pub fn metadata(valid: &ValidConsumer) -> ObjectMeta {
    ObjectMeta {
        name: Some(workload_name(&valid.name)),
        namespace: valid.namespace.clone(),
        labels: Some(labels(&valid.name)),
        owner_references: valid.owner.clone().map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::validate::tests::validated;

    #[test]
    fn metadata_names_the_owner_as_controller() {
        let valid = validated("streamRef: {name: orders}\n");
        let meta = metadata(&valid);
        assert_eq!(meta.name.as_deref(), Some("orders.reader-audit-consumer"));
        let owner = &meta.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "AuditConsumer");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(
            selector_string(&valid.name),
            "app.kubernetes.io/instance=orders.reader,app.kubernetes.io/name=audit-consumer"
        );
    }
}
