//! Pipeline step 3 (pure): what an AuditConsumer should look like on NATS (the durable
//! consumer) and in Kubernetes (its workload objects), one builder per object.
//!
//! Every workload object carries the same labels, the AuditConsumer as controlling owner, and
//! is named after it, so that a hand-made object of the same name is never taken over
//! silently (see `apply`).

pub mod deployment;
pub mod nats_consumer;
pub mod network_policy;
pub mod pdb;
pub mod service_account;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{Resource, ResourceExt};

use super::validate::ValidConsumer;
use crate::crd::{connection::NatsConnection, consumer::AuditConsumer};

/// Label selecting every object of one AuditConsumer, with [`INSTANCE_LABEL`].
pub const NAME_LABEL: &str = "app.kubernetes.io/name";
pub const INSTANCE_LABEL: &str = "app.kubernetes.io/instance";
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`NAME_LABEL`] on every consumer workload.
pub const APP_NAME: &str = "audit-consumer";

/// Everything the workload builders need beyond the AuditConsumer itself: what was read from
/// the referenced AuditStream and its Secrets, and the operator's configuration.
#[derive(Clone, Debug)]
pub struct WorkloadInputs<'a> {
    pub valid: &'a ValidConsumer,
    /// The stream's name on NATS.
    pub stream_name: &'a str,
    /// The referenced AuditStream's connection, whose Secrets the pods mount.
    pub connection: &'a NatsConnection,
    /// Whether the client certificate Secret also holds the CA (`ca.crt`) and no CA Secret is
    /// named: the pods then verify the server with it, as the operator does.
    pub client_cert_has_ca: bool,
    /// `namespace/name@resourceVersion` of every Secret the pods mount.
    pub secret_versions: &'a [String],
    /// The image when the spec sets none.
    pub default_image: &'a str,
}

/// Name of every workload object of `consumer`.
pub fn workload_name(consumer: &AuditConsumer) -> String {
    format!("{}-{APP_NAME}", consumer.name_any())
}

/// The labels by which the pods are selected.
pub fn selector_labels(consumer: &AuditConsumer) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), APP_NAME.to_owned()),
        (INSTANCE_LABEL.to_owned(), consumer.name_any()),
    ])
}

/// The selector as a string, for the scale subresource.
pub fn selector_string(consumer: &AuditConsumer) -> String {
    selector_labels(consumer)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Labels of every workload object.
pub fn labels(consumer: &AuditConsumer) -> BTreeMap<String, String> {
    let mut labels = selector_labels(consumer);
    labels.insert(
        MANAGED_BY_LABEL.to_owned(),
        crate::CONTROLLER_NAME.to_owned(),
    );
    labels
}

/// Metadata of a workload object: name, namespace, labels and the controlling owner.
pub fn metadata(consumer: &AuditConsumer) -> ObjectMeta {
    ObjectMeta {
        name: Some(workload_name(consumer)),
        namespace: consumer.namespace(),
        labels: Some(labels(consumer)),
        owner_references: consumer.controller_owner_ref(&()).map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::consumer::validate::{tests::consumer, validate};

    pub(crate) const CONNECTION: &str = "servers: [nats://nats-a.nats:4222, tls://nats-b.nats:7422]\nauth: {credsSecretRef: {name: nats-creds, key: user.creds}}\ntls: {caSecretRef: {name: nats-ca, key: ca.pem}}\njsDomain: hub\n";

    /// Builds with inputs as the controller would pass them for the given spec and connection.
    pub(crate) fn with_inputs<T>(
        spec: &str,
        connection: &str,
        build: impl FnOnce(&AuditConsumer, &WorkloadInputs<'_>) -> T,
    ) -> T {
        let consumer = consumer(spec);
        let valid = validate(&consumer).unwrap();
        let connection: NatsConnection = serde_yaml::from_str(connection).unwrap();
        let versions = ["shop/nats-ca@4".to_owned(), "shop/nats-creds@12".to_owned()];
        let inputs = WorkloadInputs {
            valid: &valid,
            stream_name: "orders_audit",
            connection: &connection,
            client_cert_has_ca: false,
            secret_versions: &versions,
            default_image: "ghcr.io/eventsaudit/audit-consumer:0.1.0",
        };
        build(&consumer, &inputs)
    }

    #[test]
    fn metadata_names_the_owner_as_controller() {
        let consumer = consumer("streamRef: {name: orders}\n");
        let meta = metadata(&consumer);
        assert_eq!(meta.name.as_deref(), Some("orders.reader-audit-consumer"));
        let owner = &meta.owner_references.unwrap()[0];
        assert_eq!(owner.kind, "AuditConsumer");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(
            selector_string(&consumer),
            "app.kubernetes.io/instance=orders.reader,app.kubernetes.io/name=audit-consumer"
        );
    }
}
