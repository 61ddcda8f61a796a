//! What `kubectl audit status` reports, as one document: `-o json` prints it as it is, the
//! text view renders it. Field names follow the CRDs' status (camelCase); fields are only
//! ever added, so scripts can rely on the ones they read.

use audit_operator::crd::consumer::{IntegrityStatus, PodCheckpoint, VerificationStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use serde::Serialize;

#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReport {
    /// Bumped only when a field changes meaning or goes away.
    pub format_version: u32,
    pub streams: Vec<StreamReport>,
    pub consumers: Vec<ConsumerReport>,
}

/// The Ready condition in short; `None` when the operator has not written one yet.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamReport {
    pub namespace: String,
    pub name: String,
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    pub ready: Option<Ready>,
    /// Every condition, messages in full.
    pub conditions: Vec<Condition>,
    pub stream_name: Option<String>,
    pub messages: Option<u64>,
    pub bytes: Option<u64>,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub consumer_count: Option<u64>,
    pub limits: StreamLimits,
    pub warning_events: Vec<WarningEvent>,
}

/// The stream's declared limits (`spec`); `None` is unlimited.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamLimits {
    pub max_messages: Option<i64>,
    pub max_bytes: Option<i64>,
    pub max_age: Option<String>,
    pub max_messages_per_subject: Option<i64>,
    /// What a full stream does: `Old` drops the oldest messages, `New` refuses new ones.
    pub discard: String,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerReport {
    pub namespace: String,
    pub name: String,
    /// The AuditStream it reads.
    pub stream_ref: String,
    pub generation: Option<i64>,
    pub observed_generation: Option<i64>,
    pub ready: Option<Ready>,
    pub conditions: Vec<Condition>,
    pub stream_name: Option<String>,
    pub consumer_name: Option<String>,
    pub replicas: Replicas,
    pub pending: Option<u64>,
    pub ack_pending: Option<u64>,
    pub ack_floor: Option<u64>,
    pub delivered: Option<u64>,
    pub redelivered: Option<u64>,
    /// `spec.maxDeliver`; unlimited when `None`.
    pub max_deliver: Option<i64>,
    /// Events that reached `maxDeliver`: given up on, left in the stream.
    pub max_deliveries_reached: Option<u64>,
    pub last_max_delivered_sequence: Option<u64>,
    pub last_ack_time: Option<String>,
    pub pods: Vec<PodReport>,
    pub integrity: Option<IntegrityStatus>,
    pub archive: Option<ArchiveReport>,
    pub warning_events: Vec<WarningEvent>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replicas {
    pub desired: i32,
    pub current: Option<i32>,
    pub ready: Option<i32>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    pub name: String,
    pub phase: Option<String>,
    pub ready: bool,
    pub restarts: i32,
    /// `Running`, `Waiting`, `Terminated`, or `Pending` for a pod without a container yet.
    pub state: String,
    /// The container's waiting or terminated reason, or why the pod is not scheduled.
    pub reason: Option<String>,
    pub message: Option<String>,
    /// How the previous container ended, after a restart.
    pub last_termination: Option<Termination>,
    pub node: Option<String>,
    /// Its newest witnessed checkpoint, with integrity.
    pub checkpoint: Option<PodCheckpoint>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Termination {
    pub reason: Option<String>,
    pub exit_code: i32,
    pub message: Option<String>,
    pub finished_at: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveReport {
    pub bucket: String,
    /// `spec.archive.verification.schedule`; `None` without a scheduled verification.
    pub verification_schedule: Option<String>,
    /// `status.archive.verification`: the last finished run.
    pub verification: Option<VerificationStatus>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WarningEvent {
    pub reason: String,
    pub message: String,
    /// Occurrences, with the repetitions an Event series folds in.
    pub count: i32,
    pub last_seen: Option<String>,
}
