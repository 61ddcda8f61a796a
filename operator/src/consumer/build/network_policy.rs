//! The consumer pods' optional NetworkPolicy: egress only to the NATS ports (of the given
//! peers, or anywhere, since a policy cannot name hosts), to DNS and, with an archive, to the
//! object store's port; ingress only to the metrics port.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::{
    api::networking::v1::{
        NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPort,
        NetworkPolicySpec,
    },
    apimachinery::pkg::{
        apis::meta::v1::{LabelSelector, LabelSelectorRequirement},
        util::intstr::IntOrString,
    },
};

use super::{
    APP_NAME, INSTANCE_LABEL, NAME_LABEL, deployment::HEALTH_PORT, metadata, selector_labels,
    verification,
};
use crate::consumer::validate::ValidConsumer;

/// The policy, or `None` when the spec does not enable one.
pub fn build(valid: &ValidConsumer) -> Option<NetworkPolicy> {
    let settings = valid.network_policy.as_ref()?;
    let port = |protocol: &str, port: i32| NetworkPolicyPort {
        protocol: Some(protocol.to_owned()),
        port: Some(IntOrString::Int(port)),
        ..NetworkPolicyPort::default()
    };
    let nats_ports: BTreeSet<i32> = valid
        .connection
        .servers
        .iter()
        .filter_map(|url| server_port(url))
        .collect();
    let non_empty = |peers: &Vec<_>| (!peers.is_empty()).then(|| peers.clone());
    let mut egress = vec![
        NetworkPolicyEgressRule {
            to: None,
            ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
        },
        NetworkPolicyEgressRule {
            to: non_empty(&settings.nats_peers),
            ports: Some(nats_ports.into_iter().map(|p| port("TCP", p)).collect()),
        },
    ];
    if let Some(archive) = &valid.archive {
        // The object store, wherever it is: a policy cannot name its host either.
        egress.push(NetworkPolicyEgressRule {
            to: None,
            ports: Some(vec![port("TCP", archive.port())]),
        });
    }
    Some(NetworkPolicy {
        metadata: metadata(valid),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(pods(valid)),
            policy_types: Some(vec!["Ingress".to_owned(), "Egress".to_owned()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: non_empty(&settings.metrics_from),
                ports: Some(vec![port("TCP", HEALTH_PORT.into())]),
            }]),
            egress: Some(egress),
        }),
    })
}

/// The consumer pods and, with a scheduled verification of the archive, the verifier's,
/// which reach the same NATS and the same store.
fn pods(valid: &ValidConsumer) -> LabelSelector {
    let verified = valid
        .archive
        .as_ref()
        .is_some_and(|archive| archive.verification.is_some());
    if !verified {
        return LabelSelector {
            match_labels: Some(selector_labels(&valid.name)),
            ..LabelSelector::default()
        };
    }
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            INSTANCE_LABEL.to_owned(),
            valid.name.clone(),
        )])),
        match_expressions: Some(vec![LabelSelectorRequirement {
            key: NAME_LABEL.to_owned(),
            operator: "In".to_owned(),
            values: Some(vec![APP_NAME.to_owned(), verification::APP_NAME.to_owned()]),
        }]),
    }
}

/// The TCP port of a NATS server URL, with the scheme's default when none is written.
fn server_port(url: &str) -> Option<i32> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let explicit = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split_once("]:").and_then(|(_, p)| p.parse().ok()),
        None => host_port.rsplit_once(':').and_then(|(_, p)| p.parse().ok()),
    };
    explicit.or(match scheme {
        "nats" | "tls" => Some(4222),
        "ws" => Some(80),
        "wss" => Some(443),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::validate::tests::validated;

    #[test]
    fn off_unless_enabled() {
        let spec = "streamRef: {name: orders}\n";
        assert!(build(&validated(spec)).is_none());
        let disabled = "streamRef: {name: orders}\nnetworkPolicy: {enabled: false}\n";
        assert!(build(&validated(disabled)).is_none());
    }

    #[test]
    fn allows_nats_ports_dns_and_metrics_only() {
        let spec = "streamRef: {name: orders}\nnetworkPolicy:\n  enabled: true\n  natsPeers: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: nats}}}]\n";
        let policy = build(&validated(spec)).unwrap().spec.unwrap();
        let egress = policy.egress.unwrap();
        let nats_ports: Vec<_> = egress[1]
            .ports
            .as_ref()
            .unwrap()
            .iter()
            .map(|p| p.port.clone().unwrap())
            .collect();
        assert_eq!(nats_ports, [IntOrString::Int(4222), IntOrString::Int(7422)]);
        assert!(egress[1].to.is_some());
        let ingress = policy.ingress.unwrap();
        assert_eq!(
            ingress[0].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(8080))
        );
        assert!(ingress[0].from.is_none());
    }

    #[test]
    fn an_archive_opens_the_store_port() {
        let spec = "streamRef: {name: orders}\nnetworkPolicy: {enabled: true}\narchive: {bucket: trail, region: r, endpoint: 'https://minio.storage:9000'}\n";
        let egress = build(&validated(spec))
            .unwrap()
            .spec
            .unwrap()
            .egress
            .unwrap();
        assert_eq!(egress.len(), 3);
        assert_eq!(
            egress[2].ports.as_ref().unwrap()[0].port,
            Some(IntOrString::Int(9000))
        );
    }

    #[test]
    fn server_ports_with_defaults() {
        assert_eq!(server_port("nats://a:4223"), Some(4223));
        assert_eq!(server_port("tls://a"), Some(4222));
        assert_eq!(server_port("wss://user:pw@a/path"), Some(443));
        assert_eq!(server_port("nats://[::1]:5222"), Some(5222));
        assert_eq!(server_port("nats://[::1]"), Some(4222));
    }
}
