//! `kubectl audit check`: is the operator there? Its CRDs established, a replica holding the
//! leader Lease and renewing it, and that replica's pod Ready. Waits up to `--timeout`, as
//! `cmctl check api --wait` does, and says what is still missing when it gives up.

use std::io::Write;
use std::time::Duration;

use audit_operator::crd::{AuditConsumer, AuditStream};
use audit_operator::leader::LEASE_NAME;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams};
use kube::{CustomResourceExt, ResourceExt};
use tokio::time::{Instant, sleep};

use crate::cli::CheckArgs;
use crate::client::Connection;
use crate::error::{Error, Result};

const POLL: Duration = Duration::from_millis(500);

/// What this run has seen of the Lease: a new resourceVersion under the same holder is a
/// renewal, seen without comparing anyone's clock with ours.
#[derive(Default)]
struct LeaseWatch {
    first: Option<(String, Option<String>)>,
}

impl LeaseWatch {
    /// Whether `holder` renewed the Lease since this run first saw it.
    fn renewed(&mut self, holder: &str, resource_version: Option<&str>) -> bool {
        match &self.first {
            Some((seen_holder, seen_version)) if seen_holder == holder => {
                seen_version.as_deref() != resource_version
            }
            _ => {
                self.first = Some((holder.to_owned(), resource_version.map(str::to_owned)));
                false
            }
        }
    }
}

pub async fn run(connection: &Connection, args: &CheckArgs, out: &mut impl Write) -> Result<()> {
    let deadline = Instant::now() + args.timeout;
    let mut watch = LeaseWatch::default();
    loop {
        match look(&connection.client, args, &mut watch).await {
            Ok(summary) => return out.write_all(summary.as_bytes()).map_err(Error::Output),
            Err(why) if Instant::now() >= deadline => {
                return Err(Error::CheckTimedOut {
                    timeout: args.timeout,
                    why,
                });
            }
            Err(why) => tracing::debug!(%why, "not ready yet"),
        }
        sleep(POLL.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// One look at everything; `Err` says the first thing missing, API errors included (an API
/// server that is starting is as not-ready as a missing operator).
async fn look(
    client: &kube::Client,
    args: &CheckArgs,
    watch: &mut LeaseWatch,
) -> Result<String, String> {
    let crds = established_crds(client).await?;
    let lease = leader_lease(client, args.operator_namespace.as_deref()).await?;
    let namespace = lease.namespace().unwrap_or_default();
    let spec = lease.spec.clone().unwrap_or_default();
    let Some(holder) = spec.holder_identity.filter(|h| !h.is_empty()) else {
        return Err(format!(
            "Lease {namespace}/{LEASE_NAME} has no holder: no operator replica leads"
        ));
    };
    let fresh_by_our_clock = spec.renew_time.as_ref().is_some_and(|renewed| {
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
        Timestamp::now().duration_since(renewed.0).as_secs() <= duration
    });
    let renewed = watch.renewed(&holder, lease.metadata.resource_version.as_deref());
    if !fresh_by_our_clock && !renewed {
        return Err(format!(
            "Lease {namespace}/{LEASE_NAME} names {holder}, which has not renewed it recently \
             (by this machine's clock; waiting for a renewal with --timeout does not depend on it)"
        ));
    }
    leader_pod_ready(client, &namespace, &holder).await?;
    Ok(format!(
        "CRDs established: {}\nLeader: pod {namespace}/{holder} holds Lease {namespace}/{LEASE_NAME} and is Ready\nThe audit-operator is ready.\n",
        crds.join(", ")
    ))
}

async fn established_crds(client: &kube::Client) -> Result<Vec<String>, String> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut names = Vec::new();
    for name in [AuditStream::crd_name(), AuditConsumer::crd_name()] {
        let crd = api
            .get_opt(name)
            .await
            .map_err(|e| format!("cannot read CRD {name}: {e}"))?
            .ok_or_else(|| {
                format!("CRD {name} is not installed (kubectl apply -k crds/, or the Helm chart)")
            })?;
        let established = crd
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Established" && c.status == "True");
        if !established {
            return Err(format!("CRD {name} is not Established yet"));
        }
        names.push(name.to_owned());
    }
    Ok(names)
}

/// The operator's Lease: in `--operator-namespace`, else the only one in the cluster.
async fn leader_lease(client: &kube::Client, namespace: Option<&str>) -> Result<Lease, String> {
    let not_found =
        "no operator runs with leader election (the Helm chart and the Kustomize base turn it on)";
    if let Some(namespace) = namespace {
        let api: Api<Lease> = Api::namespaced(client.clone(), namespace);
        return api
            .get_opt(LEASE_NAME)
            .await
            .map_err(|e| format!("cannot read Lease {namespace}/{LEASE_NAME}: {e}"))?
            .ok_or_else(|| format!("no Lease {namespace}/{LEASE_NAME}: {not_found}"));
    }
    let api: Api<Lease> = Api::all(client.clone());
    let mut leases = api
        .list(&ListParams::default().fields(&format!("metadata.name={LEASE_NAME}")))
        .await
        .map_err(|e| format!("cannot list Leases named {LEASE_NAME} (pass --operator-namespace if you may only read one namespace): {e}"))?
        .items;
    match leases.len() {
        0 => Err(format!(
            "no Lease {LEASE_NAME} in any namespace: {not_found}"
        )),
        1 => Ok(leases.remove(0)),
        _ => Err(format!(
            "Leases {LEASE_NAME} in several namespaces ({}): pass --operator-namespace",
            leases
                .iter()
                .filter_map(|l| l.namespace())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// The holder is the operator's pod name (its `POD_NAME`).
async fn leader_pod_ready(
    client: &kube::Client,
    namespace: &str,
    holder: &str,
) -> Result<(), String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let pod = api
        .get_opt(holder)
        .await
        .map_err(|e| format!("cannot read the leader's pod {namespace}/{holder}: {e}"))?
        .ok_or_else(|| format!("the leader {holder} is not a pod in namespace {namespace}"))?;
    let ready = pod
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if ready {
        Ok(())
    } else {
        Err(format!(
            "the leader's pod {namespace}/{holder} is not Ready"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_renewal_is_a_new_version_under_the_same_holder() {
        let mut watch = LeaseWatch::default();
        assert!(!watch.renewed("a", Some("1")), "first sight is no renewal");
        assert!(!watch.renewed("a", Some("1")));
        assert!(watch.renewed("a", Some("2")));
        let mut watch = LeaseWatch::default();
        assert!(!watch.renewed("a", Some("1")));
        assert!(!watch.renewed("b", Some("2")), "a new holder starts over");
        assert!(watch.renewed("b", Some("3")));
    }
}
