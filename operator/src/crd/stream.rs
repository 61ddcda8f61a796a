//! The `AuditStream` kind: a JetStream stream that holds an audit trail, declared in Kubernetes.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::connection::NatsConnection;

/// A NATS JetStream stream for audit events, created and kept in its declared shape by the
/// operator. Safe defaults for an audit trail: file storage, message delete and purge denied,
/// and the stream kept when this resource is deleted.
// Clippy reads the repeated `type_` of several printer columns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "audit.eventsaudit.io",
    version = "v1alpha1",
    kind = "AuditStream",
    namespaced,
    status = "AuditStreamStatus",
    shortname = "ast",
    category = "audit",
    doc = "A NATS JetStream stream for audit events, created and kept in its declared shape by audit-operator.",
    printcolumn(
        name = "Stream",
        type_ = "string",
        json_path = ".status.streamName",
        description = "Name of the stream on the NATS server"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the stream exists on NATS as declared"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the stream is or is not ready"
    ),
    printcolumn(
        name = "Messages",
        type_ = "integer",
        json_path = ".status.messages",
        description = "Messages held by the stream"
    ),
    printcolumn(
        name = "Bytes",
        type_ = "integer",
        json_path = ".status.bytes",
        description = "Bytes held by the stream",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.name) == has(oldSelf.name) && (!has(self.name) || self.name == oldSelf.name)").message("name is immutable: NATS cannot rename a stream; create a new AuditStream instead"))]
// A duration rule passes a malformed value (`matches` first): the field's pattern already
// rejects it with a clear message, and `duration()` would add a conversion error.
#[x_kube(validation = Rule::new("has(self.mirror) || (has(self.subjects) && size(self.subjects) > 0) || (has(self.sources) && size(self.sources) > 0)").message("set subjects (what the stream captures), sources (streams it collects from), or a mirror"))]
#[x_kube(validation = Rule::new("!has(self.mirror) || ((!has(self.subjects) || size(self.subjects) == 0) && (!has(self.sources) || size(self.sources) == 0))").message("a mirror holds exactly its origin's messages: it takes no subjects and no sources; remove them, or use sources instead of mirror"))]
#[x_kube(validation = Rule::new("has(self.mirror) == has(oldSelf.mirror)").message("mirror cannot be added to or removed from an existing stream: NATS does not allow it; create a new AuditStream instead"))]
#[x_kube(validation = Rule::new("!has(self.mirror) || !has(oldSelf.mirror) || (self.mirror.name == oldSelf.mirror.name && (has(self.mirror.domain) ? self.mirror.domain : '') == (has(oldSelf.mirror.domain) ? oldSelf.mirror.domain : ''))").message("a mirror's origin (name and domain) is immutable: NATS cannot point a mirror elsewhere; create a new AuditStream instead"))]
#[x_kube(validation = Rule::new("!has(self.maxAge) || !has(self.duplicateWindow) || !self.maxAge.matches('^([0-9]+(ns|us|ms|s|m|h))+$') || !self.duplicateWindow.matches('^([0-9]+(ns|us|ms|s|m|h))+$') || duration(self.maxAge) == duration('0s') || duration(self.duplicateWindow) <= duration(self.maxAge)").message("duplicateWindow must not be longer than maxAge"))]
pub struct AuditStreamSpec {
    /// How to reach NATS.
    pub connection: NatsConnection,

    /// Name of the stream on the NATS server. Defaults to the resource's name with `.`
    /// replaced by `_`. Immutable: NATS cannot rename a stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub name: Option<String>,

    /// Subjects the stream captures, wildcards allowed (e.g. `audit.>`). May be empty for a
    /// stream that only collects `sources`; must be empty for a `mirror`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 256),
        inner(length(min = 1, max = 255), regex(pattern = r"^[^\s]+$"))
    )]
    pub subjects: Vec<String>,

    /// Streams this one collects from, e.g. one per cluster, each in the JetStream domain of
    /// that cluster's leaf node: the hub of a hub-and-spoke trail. The sourced messages keep
    /// their subjects (unless transformed) and carry a `Nats-Stream-Source` header naming
    /// their origin, which the consumer writes into each line. `status.sources` says per
    /// source whether it is active and how far behind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub sources: Vec<StreamSource>,

    /// A stream this one is a read-only copy of (for disaster recovery, or reading near a
    /// far-away origin): same messages, same sequence numbers. Can only be set when the
    /// stream is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<StreamSource>,

    /// How long a source (or the mirror) may be inactive before the condition
    /// `SourcesActive` turns False and the alert `AuditStreamSourceInactive` may fire, a
    /// duration such as `2m` (the default). NATS sees an active source at least every few
    /// seconds, even without traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = crate::duration::PATTERN))]
    pub source_inactive_after: Option<String>,

    /// When messages are removed: `Limits` keeps them until a limit (age, bytes, count) is
    /// reached; `Interest` until every consumer acknowledged them; `WorkQueue` until one
    /// consumer acknowledged them. Changing to or from `WorkQueue` is not possible.
    #[serde(default)]
    #[x_kube(validation = Rule::new("(self == 'WorkQueue') == (oldSelf == 'WorkQueue')").message("retention cannot change to or from WorkQueue: NATS does not allow it; create a new AuditStream instead"))]
    pub retention: Retention,

    /// Where messages are stored. `File` survives a server restart, `Memory` does not.
    /// Immutable: NATS cannot change a stream's storage.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("storage is immutable: NATS cannot change a stream's storage type; create a new AuditStream instead"))]
    pub storage: Storage,

    /// Number of copies of each message in a NATS cluster (1 to 5).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: i32,

    /// Maximum age of a message, a duration such as `720h`. Unlimited when omitted or `0s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = crate::duration::PATTERN))]
    pub max_age: Option<String>,

    /// Maximum total size of the stream in bytes. Unlimited when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_bytes: Option<i64>,

    /// Maximum number of messages in the stream. Unlimited when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_messages: Option<i64>,

    /// Maximum number of messages kept per subject. Unlimited when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_messages_per_subject: Option<i64>,

    /// Largest message the stream accepts, in bytes. The server's limit when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_message_size: Option<i32>,

    /// What happens when a limit is reached: `Old` removes the oldest messages, `New` rejects
    /// new ones (publishers see an error; nothing already stored is lost).
    #[serde(default)]
    pub discard: Discard,

    /// Window in which a message with the same `Nats-Msg-Id` header is stored only once, a
    /// duration such as `2m` (the default, or `maxAge` when that is shorter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = crate::duration::PATTERN))]
    pub duplicate_window: Option<String>,

    /// Compression of stored messages: `None` or `S2`.
    #[serde(default)]
    pub compression: Compression,

    /// Description stored with the stream on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub description: Option<String>,

    /// Where a NATS cluster places the stream's replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<Placement>,

    /// Key/value metadata stored with the stream on the server. Keys starting with `_nats.`
    /// (the server's) or `audit.eventsaudit.io/` (the operator's) are reserved.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('_nats.') && !k.startsWith('audit.eventsaudit.io/'))").message("metadata keys starting with _nats. or audit.eventsaudit.io/ are reserved"))]
    pub metadata: BTreeMap<String, String>,

    /// Refuse requests to delete individual messages: an audit trail is append-only. Once
    /// on, NATS does not allow turning it off.
    #[serde(default = "default_true")]
    #[x_kube(validation = Rule::new("self || !oldSelf").message("denyDelete cannot be turned off once on: NATS does not allow it"))]
    pub deny_delete: bool,

    /// Refuse requests to purge the stream. Once on, NATS does not allow turning it off.
    #[serde(default = "default_true")]
    #[x_kube(validation = Rule::new("self || !oldSelf").message("denyPurge cannot be turned off once on: NATS does not allow it"))]
    pub deny_purge: bool,

    /// What deleting this resource does to the stream: `Retain` (the default) keeps the stream
    /// and its data on NATS; `Delete` deletes the stream and every message in it, with the
    /// credentials last used if the Secret is gone. Only when the namespace is deleted and no
    /// credentials are left does the stream stay, named in the operator's log and metrics.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Take over a stream of the same name that already exists on the server and was not
    /// created by this resource, changing it to match this spec. Without it, such a stream is
    /// left untouched and the resource reports the conflict.
    #[serde(default)]
    pub adopt: bool,
}

fn default_replicas() -> i32 {
    1
}

fn default_true() -> bool {
    true
}

/// When the stream removes messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Retention {
    /// Keep messages until a limit (age, bytes, count) is reached.
    #[default]
    Limits,
    /// Keep messages until every consumer acknowledged them.
    Interest,
    /// Keep messages until one consumer acknowledged them.
    WorkQueue,
}

/// Where the stream stores messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Storage {
    /// On disk: survives a server restart.
    #[default]
    File,
    /// In memory: lost when the server restarts (the operator recreates the empty stream).
    Memory,
}

/// What the stream does when a limit is reached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Discard {
    /// Remove the oldest messages.
    #[default]
    Old,
    /// Reject new messages.
    New,
}

/// Compression of stored messages.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Compression {
    /// Store messages as published.
    #[default]
    None,
    /// Compress stored messages with S2.
    S2,
}

/// What deleting the resource does to the stream on NATS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeletionPolicy {
    /// Keep the stream and its data.
    #[default]
    Retain,
    /// Delete the stream and its data.
    Delete,
}

/// Another stream this one sources from or mirrors, and where it lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.domain) || !has(self.external)").message("set domain or external, not both: a domain is the shorthand for external.apiPrefix $JS.<domain>.API"))]
#[x_kube(validation = Rule::new("!has(self.startSequence) || !has(self.startTime)").message("set startSequence or startTime, not both"))]
#[x_kube(validation = Rule::new("!has(self.filterSubject) || !has(self.subjectTransforms) || size(self.subjectTransforms) == 0").message("set filterSubject or subjectTransforms, not both (a transform's source is its filter)"))]
pub struct StreamSource {
    /// Name of the stream on its server.
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub name: String,

    /// The JetStream domain the stream lives in (a leaf node's `jetstream.domain`): reached
    /// through the API prefix `$JS.<domain>.API`. Same domain as this stream when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub domain: Option<String>,

    /// The stream's API and delivery prefixes, for a stream in another account (exported
    /// to this one) rather than a domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<ExternalStream>,

    /// Only the messages whose subject matches (wildcards allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^\S+$"))]
    pub filter_subject: Option<String>,

    /// Subject transforms: messages matching `source` are stored under `destination`
    /// (e.g. `audit.>` to `cluster-a.audit.>`, to keep clusters apart on the hub).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub subject_transforms: Vec<SubjectTransform>,

    /// First sequence of the origin to copy; from its first message when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub start_sequence: Option<u64>,

    /// First publish time to copy from (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub start_time: Option<String>,
}

/// Where a stream of another account is reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExternalStream {
    /// The subject prefix of its JetStream API as imported into this account (e.g.
    /// `$JS.spoke-a.API`).
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^\S+$"))]
    pub api_prefix: String,
    /// The subject prefix its messages are delivered on, as imported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^\S+$"))]
    pub deliver_prefix: Option<String>,
}

/// One subject transform of a source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubjectTransform {
    /// The subjects it applies to (wildcards allowed).
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^\S+$"))]
    pub source: String,
    /// What they become (`{{wildcard(1)}}` etc., or `>` kept as is).
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^\S+$"))]
    pub destination: String,
}

/// Placement of the stream's replicas in a NATS cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Placement {
    /// Name of the NATS cluster to place the stream in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Server tags every replica's server must carry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// Observed state of an AuditStream, kstatus-compatible.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditStreamStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling` and `Stalled` (kstatus): Ready is True when the stream exists
    /// on NATS as declared; Stalled is True when the operator needs a change from you (the
    /// message says which); Reconciling is True while it is still working or retrying.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Name of the stream on the NATS server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_name: Option<String>,

    /// Messages held by the stream, as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<u64>,

    /// Bytes held by the stream, as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,

    /// Sequence number of the first message held, as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_seq: Option<u64>,

    /// Sequence number of the last message stored, as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seq: Option<u64>,

    /// Number of consumers of the stream, as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_count: Option<u64>,

    /// Each source's state (and the mirror's, marked `mirror: true`), as last observed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceStatus>,
}

/// A source's (or the mirror's) state as NATS reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SourceStatus {
    /// Name of the origin stream.
    pub name: String,
    /// Where it lives: `domain <name>`, `api <prefix>`, or `local`.
    pub origin: String,
    /// This is the mirror.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mirror: bool,
    /// NATS heard from it within `sourceInactiveAfter`.
    pub active: bool,
    /// Since when it has been inactive (RFC 3339), while it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inactive_since: Option<String>,
    /// Messages of the origin not yet copied.
    pub lag: u64,
    /// The last error NATS reports for it (e.g. the origin not found).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AuditStream {
    /// The stream's name on NATS: the spec's, or one derived from the resource's name (which
    /// Kubernetes keeps unique per namespace and immutable).
    pub fn stream_name(&self) -> String {
        super::nats_name(self.spec.name.as_deref(), &self.metadata)
    }
}
