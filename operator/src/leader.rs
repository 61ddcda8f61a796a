//! Leader election through a coordination.k8s.io Lease, so that several operator replicas
//! can run for availability while exactly one of them reconciles.
//!
//! A standby replica polls the Lease and takes it over once the holder stops renewing it. The
//! leader renews it every `retry_period`; if it cannot renew within `renew_deadline`, it
//! reports leadership lost and the binary exits, as controller-runtime operators do: a
//! replica that may no longer be the only writer must stop writing at once, and the restarted
//! pod rejoins as a standby.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::{Instant, sleep};

/// Where the Lease lives, who we are, and the timing (the Kubernetes defaults).
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: String, identity: String) -> Self {
        Self {
            namespace,
            name: "audit-operator-leader".to_owned(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// Whether `identity` may take or keep the Lease at `now`: it is free, ours, or expired.
pub fn may_hold(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> bool {
    let Some(spec) = spec else { return true };
    match spec.holder_identity.as_deref() {
        None | Some("") => return true,
        Some(holder) if holder == identity => return true,
        Some(_) => {}
    }
    let Some(renewed) = spec.renew_time.as_ref().map(|t| t.0) else {
        return true;
    };
    let duration = SignedDuration::from_secs(spec.lease_duration_seconds.unwrap_or(15).into());
    renewed
        .saturating_add(duration)
        .is_ok_and(|expiry| expiry < now)
}

/// The Lease spec that records `identity` as holder at `now`, counting a change of holder.
pub fn held_by(
    previous: Option<&LeaseSpec>,
    settings: &LeaseSettings,
    now: Timestamp,
) -> LeaseSpec {
    let previous_holder = previous.and_then(|spec| spec.holder_identity.as_deref());
    let transitions = previous
        .and_then(|spec| spec.lease_transitions)
        .unwrap_or(0);
    let taking_over = previous_holder != Some(settings.identity.as_str());
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(
            i32::try_from(settings.lease_duration.as_secs()).unwrap_or(i32::MAX),
        ),
        acquire_time: if taking_over {
            Some(MicroTime(now))
        } else {
            previous.and_then(|spec| spec.acquire_time.clone())
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if taking_over && previous_holder.is_some() {
            transitions + 1
        } else {
            transitions
        }),
        ..LeaseSpec::default()
    }
}

/// One attempt to take or renew the Lease. `Ok(true)` when we hold it afterwards.
///
/// The write carries the resourceVersion that was read, so two replicas racing for an expired
/// Lease cannot both win: the API server rejects the slower write with a conflict.
async fn try_hold(api: &Api<Lease>, settings: &LeaseSettings) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    match api.get_opt(&settings.name).await? {
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(settings.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(held_by(None, settings, now)),
            };
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(error) => Err(error),
            }
        }
        Some(mut lease) => {
            if !may_hold(lease.spec.as_ref(), &settings.identity, now) {
                return Ok(false);
            }
            lease.spec = Some(held_by(lease.spec.as_ref(), settings, now));
            match api
                .replace(&settings.name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(error) => Err(error),
            }
        }
    }
}

/// Waits until this replica holds the Lease.
pub async fn acquire(client: kube::Client, settings: &LeaseSettings) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut waiting_logged = false;
    loop {
        match try_hold(&api, settings).await {
            Ok(true) => {
                tracing::info!(lease = %settings.name, identity = %settings.identity, "became the leader");
                return;
            }
            Ok(false) if !waiting_logged => {
                tracing::info!(lease = %settings.name, "another replica leads; standing by");
                waiting_logged = true;
            }
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(%error, lease = %settings.name, "cannot read or take the leader Lease")
            }
        }
        sleep(settings.retry_period).await;
    }
}

/// Renews the Lease while leading; returns when leadership is lost, that is when no renewal
/// succeeded within `renew_deadline` or another replica holds the Lease.
pub async fn hold_until_lost(client: kube::Client, settings: LeaseSettings) {
    let settings = &settings;
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut last_renewal = Instant::now();
    loop {
        sleep(settings.retry_period).await;
        match try_hold(&api, settings).await {
            Ok(true) => last_renewal = Instant::now(),
            Ok(false) => {
                tracing::error!(lease = %settings.name, "another replica took the leader Lease");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, lease = %settings.name, "cannot renew the leader Lease");
                if last_renewal.elapsed() >= settings.renew_deadline {
                    tracing::error!(lease = %settings.name, "leader Lease not renewed within the deadline");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(identity: &str) -> LeaseSettings {
        LeaseSettings::new("ns".into(), identity.into())
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn a_missing_or_empty_lease_is_free() {
        assert!(may_hold(None, "a", at(0)));
        assert!(may_hold(Some(&LeaseSpec::default()), "a", at(0)));
    }

    #[test]
    fn a_live_lease_of_another_holder_is_not_taken_until_it_expires() {
        let spec = held_by(None, &settings("b"), at(0));
        assert!(!may_hold(Some(&spec), "a", at(10)));
        assert!(!may_hold(Some(&spec), "a", at(15)));
        assert!(may_hold(Some(&spec), "a", at(16)));
        assert!(may_hold(Some(&spec), "b", at(10)), "the holder keeps it");
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_keeps_the_acquire_time() {
        let first = held_by(None, &settings("a"), at(0));
        assert_eq!(first.lease_transitions, Some(0));
        let renewed = held_by(Some(&first), &settings("a"), at(5));
        assert_eq!(renewed.acquire_time, first.acquire_time);
        assert_eq!(renewed.renew_time, Some(MicroTime(at(5))));
        assert_eq!(renewed.lease_transitions, Some(0));
        let taken = held_by(Some(&renewed), &settings("b"), at(30));
        assert_eq!(taken.holder_identity.as_deref(), Some("b"));
        assert_eq!(taken.acquire_time, Some(MicroTime(at(30))));
        assert_eq!(taken.lease_transitions, Some(1));
    }
}
