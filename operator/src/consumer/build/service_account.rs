//! The consumer pods' own ServiceAccount. The pods never talk to Kubernetes, so no token is
//! mounted, and the account gets no RBAC rights.

use k8s_openapi::api::core::v1::ServiceAccount;

use super::metadata;
use crate::consumer::validate::ValidConsumer;

pub fn build(valid: &ValidConsumer) -> ServiceAccount {
    ServiceAccount {
        metadata: metadata(valid),
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
    }
}
