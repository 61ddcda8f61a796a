//! Witnessed checkpoints (`spec.integrity`), as a [`Feature`]: whether the pods' signed
//! checkpoints in the witness stream keep up with the events they write. It becomes
//! `status.integrity`, the condition `CheckpointsWitnessed` and a Warning when that turns
//! False. Not part of `Ready`: events keep flowing and stay verifiable up to the last
//! witnessed checkpoint.

use std::time::Duration;

use k8s_openapi::{
    api::apps::v1::Deployment,
    apimachinery::pkg::apis::meta::v1::Time,
    jiff::{SignedDuration, Timestamp},
};

use super::{Feature, Seen, keep_condition, remove_condition, set_condition, turned_false};
use crate::{
    conditions::{Status, Value},
    consumer::integrity::{self, Checkpoints},
    crd::consumer::{AuditConsumer, AuditConsumerStatus},
    report::Notice,
};

pub const CHECKPOINTS_WITNESSED: &str = "CheckpointsWitnessed";
pub const CHECKPOINTS_STALLED: &str = "CheckpointsStalled";
pub const CHECKPOINTS_REJECTED: &str = "CheckpointsRejected";
/// Beyond the checkpoint interval, what a checkpoint may take to be published and stored.
const CHECKPOINT_GRACE: Duration = Duration::from_secs(15);
/// How long after the checkpoint covering it a line may still be acknowledged (the pod acks
/// after handing the head over, and the two race).
const ACK_AFTER_CHECKPOINT: Duration = Duration::from_secs(5);

/// What a reconciliation knows of the pods' checkpoints.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Checkpointing {
    /// Integrity off: no integrity status, no condition.
    Off,
    /// Not observed this time (the pipeline stopped before the workload was applied): both
    /// stay as they were.
    Unknown,
    Observed {
        seen: Box<Checkpoints>,
        /// When the workload's current rollout finished, if it has.
        rolled_out: Option<Timestamp>,
    },
}

/// Reads the witness stream, when integrity is on and the pipeline got through (I/O).
pub async fn observe(consumer: &AuditConsumer, seen: &Seen) -> Checkpointing {
    if integrity::wanted_key(consumer).is_none() {
        return Checkpointing::Off;
    }
    let valid = seen.valid.as_ref().and_then(|v| v.integrity.as_ref());
    match (valid, &seen.jetstream, &seen.deployment) {
        (Some(valid), Some(js), Some(deployment)) => Checkpointing::Observed {
            seen: Box::new(integrity::observe(js, valid, Timestamp::now()).await),
            rolled_out: rollout_finished(deployment),
        },
        _ => Checkpointing::Unknown,
    }
}

impl Feature for Checkpointing {
    fn contribute(
        &self,
        previous: &AuditConsumerStatus,
        status: &mut AuditConsumerStatus,
        now: &Time,
    ) {
        match self {
            Self::Off => {
                remove_condition(status, CHECKPOINTS_WITNESSED);
                status.integrity = None;
            }
            Self::Unknown => {
                keep_condition(previous, status, CHECKPOINTS_WITNESSED);
                status.integrity.clone_from(&previous.integrity);
            }
            Self::Observed { seen, rolled_out } => {
                // The acknowledgement seen last time as well as now's: under steady traffic
                // the newest is always just now, too recent to tell whether its checkpoint is
                // late. Those from before the last rollout finished may be old pods', which
                // published no checkpoints (when integrity was just turned on).
                let acked: Vec<Timestamp> = [&previous.last_ack_time, &status.last_ack_time]
                    .into_iter()
                    .filter_map(|time| time.as_deref()?.parse().ok())
                    .filter(|ack| rolled_out.is_some_and(|done| *ack > done))
                    .collect();
                let value = checkpoint_condition(seen, &acked, now.0);
                set_condition(previous, status, CHECKPOINTS_WITNESSED, value, now);
                status.integrity = Some(seen.status.clone());
            }
        }
    }

    fn notices(&self, previous: &AuditConsumerStatus, status: &AuditConsumerStatus) -> Vec<Notice> {
        let Some(condition) = turned_false(previous, status, CHECKPOINTS_WITNESSED) else {
            return Vec::new();
        };
        let reason = if condition.reason == CHECKPOINTS_REJECTED {
            CHECKPOINTS_REJECTED
        } else {
            CHECKPOINTS_STALLED
        };
        vec![Notice::warning(reason, condition.message)]
    }
}

/// When the Deployment's current rollout finished (its new ReplicaSet available), if it has.
fn rollout_finished(deployment: &Deployment) -> Option<Timestamp> {
    let status = deployment.status.as_ref()?;
    if deployment.metadata.generation.is_none()
        || status.observed_generation < deployment.metadata.generation
    {
        return None;
    }
    status
        .conditions
        .iter()
        .flatten()
        .find(|c| {
            c.type_ == "Progressing"
                && c.status == "True"
                && c.reason.as_deref() == Some("NewReplicaSetAvailable")
        })
        .and_then(|c| c.last_update_time.as_ref())
        .map(|time| time.0)
}

/// `CheckpointsWitnessed` from what the witness stream showed (pure). A checkpoint is late
/// when an event was acknowledged (so its line written) after the newest checkpoint, and the
/// checkpoint interval and a grace period have passed since: each pod publishes a checkpoint
/// at the latest one interval after it wrote a line.
pub fn checkpoint_condition(seen: &Checkpoints, acked: &[Timestamp], now: Timestamp) -> Value {
    let status = &seen.status;
    if let Some(reason) = &seen.unread {
        return Value::new(
            Status::Unknown,
            "CheckpointsUnread",
            format!(
                "cannot read witness stream {}: {reason}",
                status.witness_stream
            ),
        );
    }
    if status.rejected_checkpoints > 0 {
        return Value::new(
            Status::False,
            CHECKPOINTS_REJECTED,
            format!(
                "{} message(s) on {} since {} are not checkpoints signed by {}: forged, or signed by a key since rotated; find out who can publish there, and check the logs with audit-consumer verify",
                status.rejected_checkpoints, status.subject, seen.since, status.public_key
            ),
        );
    }
    let due = SignedDuration::try_from(seen.interval + CHECKPOINT_GRACE).unwrap_or_default();
    let covered_until = seen
        .newest
        .unwrap_or(seen.since)
        .max(seen.since)
        .checked_add(SignedDuration::try_from(ACK_AFTER_CHECKPOINT).unwrap_or_default())
        .unwrap_or(now);
    let overdue = acked.iter().find(|&&ack| {
        ack > covered_until && ack.checked_add(due).is_ok_and(|deadline| now >= deadline)
    });
    if let Some(ack) = overdue {
        let newest = seen
            .newest
            .map_or_else(|| format!("none since {}", seen.since), |t| t.to_string());
        return Value::new(
            Status::False,
            CHECKPOINTS_STALLED,
            format!(
                "an event was acknowledged at {ack}, but the newest checkpoint on {} is {newest}: the pods cannot publish to witness stream {}; check their logs (audit_consumer_integrity_checkpoints_total{{outcome=\"failed\"}}) and that their NATS user may publish to {}",
                status.subject, status.witness_stream, status.subject
            ),
        );
    }
    Value::new(
        Status::True,
        "Witnessed",
        format!(
            "every line acknowledged is covered by a checkpoint in {} on {}, or will be within the checkpoint interval",
            status.witness_stream, status.subject
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(newest: Option<i64>, rejected: u64) -> Checkpoints {
        Checkpoints {
            status: crate::crd::consumer::IntegrityStatus {
                witness_stream: "AUDIT_INTEGRITY".into(),
                subject: "audit-integrity.orders_audit.orders_reader".into(),
                public_key: "APUBLIC".into(),
                checkpoints: Vec::new(),
                rejected_checkpoints: rejected,
            },
            interval: Duration::from_secs(10),
            newest: newest.map(|s| Timestamp::from_second(s).unwrap()),
            since: Timestamp::from_second(1_000).unwrap(),
            unread: None,
        }
    }

    fn second(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn checkpoints_are_late_only_when_a_line_acked_after_the_newest_went_unwitnessed_too_long() {
        let reason = |seen: &Checkpoints, acked: &[i64], now: i64| {
            let acked: Vec<Timestamp> = acked.iter().map(|s| second(*s)).collect();
            checkpoint_condition(seen, &acked, second(now)).reason
        };
        // Steady traffic, a checkpoint every 10 s: the newest ack is always just now.
        assert_eq!(
            reason(&seen(Some(1_095), 0), &[1_040, 1_100], 1_100),
            "Witnessed"
        );
        // Acked after the newest checkpoint, but within interval + grace (25 s).
        assert_eq!(reason(&seen(Some(1_050), 0), &[1_060], 1_080), "Witnessed");
        // ... and beyond it: stalled, by the ack seen at the previous reconciliation.
        assert_eq!(
            reason(&seen(Some(1_050), 0), &[1_060, 1_100], 1_100),
            CHECKPOINTS_STALLED
        );
        // Traffic stopped: the last line was acked just after its checkpoint; quiet since.
        assert_eq!(reason(&seen(Some(1_050), 0), &[1_052], 1_500), "Witnessed");
        // No checkpoint in the lookback at all, and lines acked in it long ago.
        assert_eq!(reason(&seen(None, 0), &[1_030], 1_100), CHECKPOINTS_STALLED);
        // No checkpoint, and no ack in the lookback either: an idle consumer.
        assert_eq!(reason(&seen(None, 0), &[900], 1_100), "Witnessed");
        assert_eq!(reason(&seen(None, 0), &[], 1_100), "Witnessed");
        // A forged checkpoint outweighs all that; an unreadable stream says so.
        assert_eq!(reason(&seen(Some(1_095), 0), &[], 1_100), "Witnessed");
        assert_eq!(
            reason(&seen(Some(1_095), 1), &[], 1_100),
            CHECKPOINTS_REJECTED
        );
        let unread = Checkpoints {
            unread: Some("stream not found".into()),
            ..seen(None, 0)
        };
        let value = checkpoint_condition(&unread, &[], second(1_100));
        assert_eq!(value.status, Status::Unknown);
        assert!(value.message.contains("stream not found"));
    }

    #[test]
    fn acks_from_before_the_rollout_with_integrity_are_not_judged() {
        let checkpoints = Checkpoints {
            since: second(900),
            ..seen(None, 0)
        };
        // An old pod acked at 1,000 (previous status), before any checkpoint could exist.
        let previous = AuditConsumerStatus {
            last_ack_time: Some(second(1_000).to_string()),
            ..AuditConsumerStatus::default()
        };
        let judged = |rolled_out: i64| {
            let mut status = previous.clone();
            Checkpointing::Observed {
                seen: Box::new(checkpoints.clone()),
                rolled_out: Some(second(rolled_out)),
            }
            .contribute(&previous, &mut status, &Time(second(1_100)));
            status
        };
        let status = judged(1_010);
        let condition = status.conditions.last().unwrap();
        assert_eq!(
            (condition.type_.as_str(), condition.reason.as_str()),
            (CHECKPOINTS_WITNESSED, "Witnessed")
        );
        assert_eq!(status.integrity.as_ref().unwrap().public_key, "APUBLIC");
        // Rolled out before that ack: it was a pod with integrity, and nothing witnessed it.
        let status = judged(990);
        let condition = status.conditions.last().unwrap();
        assert_eq!(condition.reason, CHECKPOINTS_STALLED);
        assert!(
            condition
                .message
                .contains("audit-integrity.orders_audit.orders_reader")
        );
        // Once per turn to False: a Warning now, none while it stays so.
        let feature = Checkpointing::Observed {
            seen: Box::new(checkpoints.clone()),
            rolled_out: Some(second(990)),
        };
        assert_eq!(feature.notices(&previous, &status).len(), 1);
        assert!(feature.notices(&status, &status).is_empty());
    }

    #[test]
    fn unknown_keeps_the_condition_and_off_removes_it() {
        let previous = AuditConsumerStatus::default();
        let mut observed = previous.clone();
        Checkpointing::Observed {
            seen: Box::new(seen(Some(1_095), 0)),
            rolled_out: None,
        }
        .contribute(&previous, &mut observed, &Time(second(1_100)));
        let mut kept = AuditConsumerStatus::default();
        Checkpointing::Unknown.contribute(&observed, &mut kept, &Time(second(1_200)));
        assert_eq!(kept.conditions, observed.conditions);
        assert_eq!(kept.integrity, observed.integrity);
        let mut off = observed.clone();
        Checkpointing::Off.contribute(&observed, &mut off, &Time(second(1_200)));
        assert!(off.conditions.is_empty() && off.integrity.is_none());
    }
}
