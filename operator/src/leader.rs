//! Leader election through a coordination.k8s.io Lease, so that several operator replicas
//! can run for availability while exactly one of them writes.
//!
//! A leader must stop writing before a standby starts, even when nothing tells it that it
//! lost: its API server may simply stop answering it. Two clocks make that hold, and neither
//! is ever compared with another node's:
//!
//! - The leader counts from the moment it *started* its last renewal that succeeded, on its
//!   own monotonic clock. Without another success within `renew_deadline` (10 s) it reports
//!   leadership lost, and the binary exits at once. Every request is bounded by a timeout: a
//!   request to an API server that drops packets would otherwise wait for as long as the TCP
//!   connection lives, and the deadline would never be checked.
//! - A standby counts from the moment it *saw* the holder's last renewal (a new
//!   resourceVersion of the Lease), on its own monotonic clock, and takes the Lease only
//!   `lease_duration` (15 s) later. It never compares the `renewTime` the holder wrote with
//!   its own wall clock, so clocks that differ between nodes cannot shorten its wait.
//!
//! A renewal is seen no earlier than it was started, so a standby takes over at least
//! `lease_duration - renew_deadline` (5 s) after the old leader gave up. A leader that shuts
//! down gracefully releases the Lease once its controllers have stopped, so that a standby
//! takes over at its next attempt instead of waiting out the lease.

use std::fmt::Display;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::time::{Instant, sleep, sleep_until, timeout};

/// Name of the leader-election Lease, in the operator's namespace (`--lease-namespace`);
/// `kubectl audit check` looks for it by this name.
pub const LEASE_NAME: &str = "audit-operator-leader";

/// Where the Lease lives, who we are, and the timing (the Kubernetes defaults).
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    /// The longest one attempt to read and write the Lease may take.
    pub request_timeout: Duration,
}

impl LeaseSettings {
    pub fn new(namespace: String, identity: String) -> Self {
        Self {
            namespace,
            name: LEASE_NAME.to_owned(),
            identity,
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            // Two attempts fit in the renew deadline: a renewal stuck on a dead connection
            // is retried on a new one before the leader gives up.
            request_timeout: Duration::from_secs(4),
        }
    }
}

/// Why a leader stopped leading.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Loss {
    #[error("another holder took the Lease")]
    TakenOver,
    #[error("the Lease could not be renewed within {0:?}")]
    NotRenewed(Duration),
}

/// What this replica last saw of the Lease, and when by its own monotonic clock.
#[derive(Debug, Default)]
pub struct Observed {
    resource_version: Option<String>,
    since: Option<Instant>,
}

impl Observed {
    /// Records the Lease as read at `now`: a new resourceVersion is a write by its holder.
    pub fn see(&mut self, lease: &Lease, now: Instant) {
        if self.since.is_none() || lease.metadata.resource_version != self.resource_version {
            self.resource_version = lease.metadata.resource_version.clone();
            self.since = Some(now);
        }
    }

    /// Whether `identity` may take or keep the Lease at `now`: it is free, ours, or its holder
    /// has not renewed it for its whole duration since this replica saw it last change.
    pub fn may_hold(
        &self,
        spec: Option<&LeaseSpec>,
        identity: &str,
        default_duration: Duration,
        now: Instant,
    ) -> bool {
        let Some(spec) = spec else { return true };
        match spec.holder_identity.as_deref() {
            None | Some("") => return true,
            Some(holder) if holder == identity => return true,
            Some(_) => {}
        }
        let duration = spec
            .lease_duration_seconds
            .and_then(|seconds| u64::try_from(seconds).ok())
            .map_or(default_duration, Duration::from_secs);
        self.since
            .is_some_and(|since| now.saturating_duration_since(since) > duration)
    }
}

/// The Lease spec that records `identity` as holder at `now`, counting a change of holder.
pub fn held_by(
    previous: Option<&LeaseSpec>,
    settings: &LeaseSettings,
    now: Timestamp,
) -> LeaseSpec {
    let previous_holder = previous
        .and_then(|spec| spec.holder_identity.as_deref())
        .filter(|holder| !holder.is_empty());
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

/// The Lease spec of a holder that lets go: no holder, so that any standby may take it now.
pub fn released(previous: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        renew_time: Some(MicroTime(now)),
        ..previous.clone()
    }
}

/// One attempt to take or renew the Lease. `Ok(true)` when we hold it afterwards.
///
/// The write carries the resourceVersion that was read, so two replicas racing for an expired
/// Lease cannot both win: the API server rejects the slower write with a conflict.
async fn try_hold(
    api: &Api<Lease>,
    settings: &LeaseSettings,
    observed: &mut Observed,
) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(settings.name.clone()),
                ..ObjectMeta::default()
            },
            spec: Some(held_by(None, settings, Timestamp::now())),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        };
    };
    observed.see(&lease, Instant::now());
    let may_hold = observed.may_hold(
        lease.spec.as_ref(),
        &settings.identity,
        settings.lease_duration,
        Instant::now(),
    );
    if !may_hold {
        return Ok(false);
    }
    lease.spec = Some(held_by(lease.spec.as_ref(), settings, Timestamp::now()));
    match api
        .replace(&settings.name, &PostParams::default(), &lease)
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(error) => Err(error),
    }
}

/// Waits until this replica holds the Lease. Returns when the winning attempt started: the
/// leader's renew deadline counts from then.
pub async fn acquire(client: kube::Client, settings: &LeaseSettings) -> Instant {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let mut observed = Observed::default();
    let mut waiting_logged = false;
    loop {
        let started = Instant::now();
        let attempt = timeout(
            settings.request_timeout,
            try_hold(&api, settings, &mut observed),
        );
        match attempt.await {
            Ok(Ok(true)) => {
                tracing::info!(lease = %settings.name, identity = %settings.identity, "became the leader");
                return started;
            }
            Ok(Ok(false)) if !waiting_logged => {
                tracing::info!(lease = %settings.name, "another replica leads; standing by");
                waiting_logged = true;
            }
            Ok(Ok(false)) => {}
            Ok(Err(error)) => {
                tracing::warn!(%error, lease = %settings.name, "cannot read or take the leader Lease");
            }
            Err(_elapsed) => {
                tracing::warn!(lease = %settings.name, timeout = ?settings.request_timeout, "no answer from the API server about the leader Lease");
            }
        }
        sleep(settings.retry_period).await;
    }
}

/// Renews the Lease while leading, the first time `retry_period` after `renewed_at` (when the
/// attempt that won it started); returns as soon as leadership is lost.
pub async fn hold_until_lost(
    client: kube::Client,
    settings: &LeaseSettings,
    renewed_at: Instant,
) -> Loss {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    let loss = keep_renewing(settings, renewed_at, || {
        let api = api.clone();
        // No observation carries over: a Lease that is not ours any more is lost at once.
        async move { try_hold(&api, settings, &mut Observed::default()).await }
    })
    .await;
    tracing::error!(lease = %settings.name, reason = %loss, "lost the leader Lease");
    loss
}

/// The renewal loop, apart from the API: `renew` is one attempt (`Ok(false)` when another
/// holder has the Lease). Each attempt gets at most what is left of the deadline, so the loop
/// returns by `renew_deadline` after the last successful attempt started, however the API
/// server behaves.
async fn keep_renewing<F, Fut, E>(
    settings: &LeaseSettings,
    mut renewed_at: Instant,
    mut renew: F,
) -> Loss
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool, E>>,
    E: Display,
{
    loop {
        let deadline = renewed_at + settings.renew_deadline;
        sleep_until((Instant::now() + settings.retry_period).min(deadline)).await;
        let started = Instant::now();
        if started >= deadline {
            return Loss::NotRenewed(settings.renew_deadline);
        }
        let budget = settings.request_timeout.min(deadline - started);
        match timeout(budget, renew()).await {
            Ok(Ok(true)) => renewed_at = started,
            Ok(Ok(false)) => return Loss::TakenOver,
            Ok(Err(error)) => {
                tracing::warn!(%error, lease = %settings.name, "cannot renew the leader Lease");
            }
            Err(_elapsed) => {
                tracing::warn!(lease = %settings.name, timeout = ?budget, "no answer from the API server to the renewal of the leader Lease");
            }
        }
    }
}

/// Gives up the Lease, once this replica has stopped writing, so that a standby takes over at
/// its next attempt rather than when the lease runs out. A failure only costs that wait.
pub async fn release(client: kube::Client, settings: &LeaseSettings) {
    let api: Api<Lease> = Api::namespaced(client, &settings.namespace);
    match timeout(settings.request_timeout, try_release(&api, settings)).await {
        Ok(Ok(true)) => tracing::info!(lease = %settings.name, "released the leader Lease"),
        Ok(Ok(false)) => {}
        Ok(Err(error)) => {
            tracing::warn!(%error, lease = %settings.name, "cannot release the leader Lease; a standby takes over when it runs out");
        }
        Err(_elapsed) => {
            tracing::warn!(lease = %settings.name, "no answer from the API server to the release of the leader Lease; a standby takes over when it runs out");
        }
    }
}

/// Clears the holder if it is still us. `Ok(true)` when released.
async fn try_release(api: &Api<Lease>, settings: &LeaseSettings) -> Result<bool, kube::Error> {
    let Some(mut lease) = api.get_opt(&settings.name).await? else {
        return Ok(false);
    };
    let Some(spec) = lease.spec.as_ref() else {
        return Ok(false);
    };
    if spec.holder_identity.as_deref() != Some(settings.identity.as_str()) {
        return Ok(false);
    }
    lease.spec = Some(released(spec, Timestamp::now()));
    api.replace(&settings.name, &PostParams::default(), &lease)
        .await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn settings(identity: &str) -> LeaseSettings {
        LeaseSettings::new("ns".into(), identity.into())
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    fn lease(spec: LeaseSpec, resource_version: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                resource_version: Some(resource_version.to_owned()),
                ..ObjectMeta::default()
            },
            spec: Some(spec),
        }
    }

    const FIFTEEN: Duration = Duration::from_secs(15);

    #[test]
    fn a_missing_or_empty_lease_is_free() {
        let observed = Observed::default();
        let now = Instant::now();
        assert!(observed.may_hold(None, "a", FIFTEEN, now));
        assert!(observed.may_hold(Some(&LeaseSpec::default()), "a", FIFTEEN, now));
        let released = released(&held_by(None, &settings("b"), at(0)), at(1));
        assert!(observed.may_hold(Some(&released), "a", FIFTEEN, now));
    }

    #[test]
    fn a_live_lease_of_another_holder_is_taken_only_a_full_duration_after_it_was_seen_renewed() {
        let start = Instant::now();
        let spec = held_by(None, &settings("b"), at(0));
        let mut observed = Observed::default();
        observed.see(&lease(spec.clone(), "1"), start);
        let later = |seconds| start + Duration::from_secs(seconds);
        assert!(!observed.may_hold(Some(&spec), "a", FIFTEEN, later(10)));
        assert!(!observed.may_hold(Some(&spec), "a", FIFTEEN, later(15)));
        assert!(observed.may_hold(Some(&spec), "a", FIFTEEN, later(16)));
        assert!(
            observed.may_hold(Some(&spec), "b", FIFTEEN, later(1)),
            "the holder keeps it"
        );

        // A renewal seen at 12 s starts the wait again; reading the same version does not.
        let renewed = held_by(Some(&spec), &settings("b"), at(12));
        observed.see(&lease(renewed.clone(), "2"), later(12));
        observed.see(&lease(renewed.clone(), "2"), later(20));
        assert!(!observed.may_hold(Some(&renewed), "a", FIFTEEN, later(27)));
        assert!(observed.may_hold(Some(&renewed), "a", FIFTEEN, later(28)));
    }

    #[test]
    fn the_holders_wall_clock_does_not_shorten_the_wait() {
        // A holder whose clock runs an hour behind writes a renewTime long past: a standby
        // judging by timestamps would take the Lease at once, while it is being renewed.
        let start = Instant::now();
        let spec = held_by(None, &settings("b"), at(-3600));
        let mut observed = Observed::default();
        observed.see(&lease(spec.clone(), "7"), start);
        assert!(!observed.may_hold(Some(&spec), "a", FIFTEEN, start + Duration::from_secs(1)));
    }

    #[test]
    fn the_wait_is_the_duration_the_holder_declared() {
        let start = Instant::now();
        let spec = LeaseSpec {
            lease_duration_seconds: Some(40),
            ..held_by(None, &settings("b"), at(0))
        };
        let mut observed = Observed::default();
        observed.see(&lease(spec.clone(), "1"), start);
        assert!(!observed.may_hold(Some(&spec), "a", FIFTEEN, start + Duration::from_secs(30)));
        assert!(observed.may_hold(Some(&spec), "a", FIFTEEN, start + Duration::from_secs(41)));
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
        let after_release = held_by(Some(&released(&taken, at(40))), &settings("a"), at(41));
        assert_eq!(after_release.acquire_time, Some(MicroTime(at(41))));
        assert_eq!(after_release.lease_transitions, Some(1));
    }

    /// Runs the renewal loop with `attempt` standing in for the API; returns why it ended and
    /// after how long, and how many attempts were made.
    async fn renew_with<Fut>(attempt: impl Fn() -> Fut) -> (Loss, Duration, usize)
    where
        Fut: Future<Output = Result<bool, String>>,
    {
        let attempts = Arc::new(AtomicUsize::new(0));
        let start = Instant::now();
        let loss = keep_renewing(&settings("a"), start, || {
            attempts.fetch_add(1, Ordering::SeqCst);
            attempt()
        })
        .await;
        (loss, start.elapsed(), attempts.load(Ordering::SeqCst))
    }

    #[tokio::test(start_paused = true)]
    async fn an_api_server_that_never_answers_ends_leadership_at_the_deadline() {
        let (loss, after, attempts) = renew_with(std::future::pending).await;
        assert_eq!(loss, Loss::NotRenewed(Duration::from_secs(10)));
        assert_eq!(after, Duration::from_secs(10));
        assert!(attempts >= 2, "a stuck attempt is retried: {attempts}");
    }

    #[tokio::test(start_paused = true)]
    async fn failing_renewals_end_leadership_at_the_deadline() {
        let (loss, after, attempts) =
            renew_with(|| async { Err("connection refused".to_owned()) }).await;
        assert_eq!(loss, Loss::NotRenewed(Duration::from_secs(10)));
        assert_eq!(after, Duration::from_secs(10));
        assert_eq!(attempts, 4, "every retry period: at 2, 4, 6 and 8 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_held_by_another_ends_leadership_at_the_next_renewal() {
        let (loss, after, attempts) = renew_with(|| async { Ok(false) }).await;
        assert_eq!(loss, Loss::TakenOver);
        assert_eq!(after, Duration::from_secs(2));
        assert_eq!(attempts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn slow_but_successful_renewals_keep_leadership() {
        let renewing = renew_with(|| async {
            sleep(Duration::from_secs(3)).await;
            Ok(true)
        });
        assert!(
            timeout(Duration::from_secs(120), renewing).await.is_err(),
            "still leading after two minutes"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_answers_after_the_deadline_counts_for_nothing() {
        // Succeeds at 2 s, then every attempt answers only after 9 s: too late each time.
        let calls = AtomicUsize::new(0);
        let (loss, after, _) = renew_with(|| {
            let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                if !first {
                    sleep(Duration::from_secs(9)).await;
                }
                Ok(true)
            }
        })
        .await;
        assert_eq!(loss, Loss::NotRenewed(Duration::from_secs(10)));
        assert_eq!(
            after,
            Duration::from_secs(12),
            "10 s after the last success started"
        );
    }
}
