//! The consumer pods' own ServiceAccount. The pods never talk to Kubernetes, so no token is
//! mounted, and the account gets no RBAC rights.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::metadata;
use crate::consumer::validate::ValidConsumer;

pub fn build(valid: &ValidConsumer) -> ServiceAccount {
    let mut metadata = metadata(valid);
    let annotations = &valid.pod.service_account_annotations;
    metadata.annotations = (!annotations.is_empty()).then(|| annotations.clone());
    ServiceAccount {
        metadata,
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::validate::tests::{MINIMAL, validated};

    #[test]
    fn no_token_is_mounted() {
        let account = build(&validated(MINIMAL));
        assert_eq!(account.automount_service_account_token, Some(false));
        assert_eq!(
            account.metadata.name.as_deref(),
            Some("orders.reader-audit-consumer")
        );
        assert_eq!(account.metadata.annotations, None);
    }

    #[test]
    fn a_workload_identity_annotates_the_account() {
        let yaml = format!(
            "{MINIMAL}\npod:\n  serviceAccountAnnotations:\n    eks.amazonaws.com/role-arn: arn:aws:iam::111122223333:role/audit-writer\n"
        );
        let account = build(&validated(&yaml));
        let annotations = account.metadata.annotations.expect("annotations");
        assert_eq!(
            annotations
                .get("eks.amazonaws.com/role-arn")
                .map(String::as_str),
            Some("arn:aws:iam::111122223333:role/audit-writer")
        );
        assert_eq!(account.automount_service_account_token, Some(false));
    }
}
