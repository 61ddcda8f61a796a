//! The consumer pods' own ServiceAccount. The pods never talk to Kubernetes, so no token is
//! mounted, and the account gets no RBAC rights.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::metadata;
use crate::crd::consumer::AuditConsumer;

pub fn build(consumer: &AuditConsumer) -> ServiceAccount {
    ServiceAccount {
        metadata: metadata(consumer),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::validate::tests::{MINIMAL, consumer};

    #[test]
    fn no_token_is_mounted() {
        let account = build(&consumer(MINIMAL));
        assert_eq!(account.automount_service_account_token, Some(false));
        assert_eq!(
            account.metadata.name.as_deref(),
            Some("orders.reader-audit-consumer")
        );
    }
}
