//! The `AuditConsumer` kind: a durable JetStream pull consumer on an `AuditStream`, and the
//! hardened workload (`audit-consumer` pods) that drains it.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        core::v1::{Affinity, ResourceRequirements, Toleration, TopologySpreadConstraint},
        networking::v1::NetworkPolicyPeer,
    },
    apimachinery::pkg::apis::meta::v1::Condition,
};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::connection::SecretKeyRef;

/// A durable pull consumer of an AuditStream, and the `audit-consumer` pods that write every
/// event it delivers as one log line and acknowledge it only after the line is written.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
// Printer columns repeat `type_` and `priority` by nature.
#[allow(clippy::duplicated_attributes)]
#[kube(
    group = "audit.eventsaudit.io",
    version = "v1alpha1",
    kind = "AuditConsumer",
    namespaced,
    status = "AuditConsumerStatus",
    shortname = "acon",
    category = "audit",
    doc = "A durable JetStream pull consumer of an AuditStream, and the hardened audit-consumer pods that drain it, managed by audit-operator.",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the consumer exists on NATS and its pods are available"
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason",
        description = "Why the consumer is or is not ready"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        json_path = ".status.desiredReplicas",
        description = "Consumer pods wanted: spec.replicas, or the autoscaler's decision"
    ),
    printcolumn(
        name = "Available",
        type_ = "integer",
        json_path = ".status.readyReplicas",
        description = "Consumer pods ready to pull"
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        json_path = ".status.pending",
        description = "Events in the stream not yet delivered to the consumer"
    ),
    printcolumn(
        name = "Ack Pending",
        type_ = "integer",
        json_path = ".status.ackPending",
        description = "Events delivered but not yet acknowledged"
    ),
    printcolumn(
        name = "Stream",
        type_ = "string",
        json_path = ".spec.streamRef.name",
        description = "The AuditStream this consumer reads",
        priority = 1
    ),
    printcolumn(
        name = "Redelivered",
        type_ = "integer",
        json_path = ".status.redelivered",
        description = "Events delivered more than once",
        priority = 1
    ),
    printcolumn(
        name = "Max Delivered",
        type_ = "integer",
        json_path = ".status.maxDeliveriesReached",
        description = "Events that reached maxDeliver and will not be redelivered",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.durableName) == has(oldSelf.durableName) && (!has(self.durableName) || self.durableName == oldSelf.durableName)").message("durableName is immutable: a durable consumer cannot be renamed; create a new AuditConsumer instead"))]
#[x_kube(validation = Rule::new("(self.deliverPolicy == 'ByStartSequence') == has(self.startSequence)").message("set startSequence exactly when deliverPolicy is ByStartSequence"))]
#[x_kube(validation = Rule::new("(self.deliverPolicy == 'ByStartTime') == has(self.startTime)").message("set startTime exactly when deliverPolicy is ByStartTime"))]
#[x_kube(validation = Rule::new("has(self.startSequence) == has(oldSelf.startSequence) && (!has(self.startSequence) || self.startSequence == oldSelf.startSequence) && has(self.startTime) == has(oldSelf.startTime) && (!has(self.startTime) || self.startTime == oldSelf.startTime)").message("startSequence and startTime are immutable: NATS cannot move a durable consumer's start; create a new AuditConsumer instead"))]
#[x_kube(validation = Rule::new("!has(self.maxDeliver) || !has(self.backoff) || self.maxDeliver >= size(self.backoff)").message("maxDeliver must be at least the number of backoff delays"))]
#[x_kube(validation = Rule::new("!has(self.replicas) || !has(self.autoscaling)").message("set replicas or autoscaling, not both: while autoscaling is on, the operator sets the number of pods (remove spec.replicas, e.g. kubectl patch --type=json -p '[{\"op\":\"remove\",\"path\":\"/spec/replicas\"}]')"))]
#[x_kube(validation = Rule::new("!has(self.archive) || !has(self.archive.verification) || (has(self.integrity) && self.integrity.enabled)").message("archive.verification checks the archive against the witnessed chain heads: turn integrity on (integrity.enabled with a signingKeySecretRef)"))]
pub struct AuditConsumerSpec {
    /// The AuditStream to consume, in the same namespace. Its connection (servers,
    /// credentials, TLS, domain) is used by the operator and by the consumer pods. Immutable.
    #[x_kube(validation = Rule::new("self == oldSelf").message("streamRef is immutable: a durable consumer belongs to one stream; create a new AuditConsumer instead"))]
    pub stream_ref: StreamRef,

    /// Name of the durable consumer on the NATS server. Defaults to the resource's name with
    /// `.` replaced by `_`. Immutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub durable_name: Option<String>,

    /// Description stored with the consumer on the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 4096))]
    pub description: Option<String>,

    /// Deliver only events whose subject matches one of these (wildcards allowed). All of the
    /// stream's events when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 64),
        inner(length(min = 1, max = 255), regex(pattern = r"^\S+$"))
    )]
    pub filter_subjects: Vec<String>,

    /// Where in the stream a new consumer starts: `All` (the default: every event stored),
    /// `Last`, `New`, `LastPerSubject`, `ByStartSequence` (with `startSequence`) or
    /// `ByStartTime` (with `startTime`). Immutable: NATS cannot move a durable consumer.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("deliverPolicy is immutable: NATS cannot change it on a durable consumer; create a new AuditConsumer instead"))]
    pub deliver_policy: DeliverPolicy,

    /// First stream sequence to deliver, with `deliverPolicy: ByStartSequence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub start_sequence: Option<i64>,

    /// First publish time to deliver (RFC 3339, e.g. `2026-11-22T00:00:00Z`), with
    /// `deliverPolicy: ByStartTime`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "date-time"))]
    pub start_time: Option<String>,

    /// How long NATS waits for an acknowledgement before delivering an event again, a
    /// duration such as `30s` (the default). At least `1s`: a shorter wait redelivers events
    /// that are still being written.
    #[serde(default = "default_ack_wait")]
    #[schemars(length(max = 64), regex(pattern = r"^([0-9]+(ns|us|ms|s|m|h))+$"))]
    // Guarded like every duration rule: a malformed value gets the pattern's message only.
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ns|us|ms|s|m|h))+$') || duration(self) >= duration('1s')").message("ackWait must be at least 1s"))]
    pub ack_wait: String,

    /// How often an event is delivered before NATS gives up on it. Unlimited when omitted
    /// (the default): an audit event must not be dropped after failed writes. Events that
    /// reach a limit stay in the stream but are no longer delivered; the operator counts them
    /// in `status.maxDeliveriesReached` and reports them in a `MaxDeliveriesReached` Warning
    /// Event, from NATS's advisories, which its NATS user needs permission to subscribe to
    /// (`$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>`; the condition `MaxDeliveriesCounted`
    /// says whether it has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_deliver: Option<i64>,

    /// Delays before each redelivery of an unacknowledged event (durations such as `1s`),
    /// used in order, the last one repeating. When set, the first delay replaces `ackWait`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 32),
        inner(length(max = 64), regex(pattern = r"^([0-9]+(ns|us|ms|s|m|h))+$"))
    )]
    pub backoff: Vec<String>,

    /// Most events delivered but not yet acknowledged, across all pods. Defaults to twice
    /// `replicas` times `batch`, so every pod can hold a batch in flight while fetching the
    /// next; with `archive`, to `replicas` times (twice `segment.maxLines` plus twice
    /// `batch`), so every pod can fill a segment while the previous one is stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_ack_pending: Option<i64>,

    /// What deleting this resource does to the durable consumer: `Delete` (the default)
    /// removes it from NATS (the stream's events stay); `Retain` keeps it, with its position.
    /// A durable consumer that can no longer be reached (its AuditStream or namespace deleted
    /// together with the credentials) is left on NATS and named in the operator's log and
    /// metrics.
    #[serde(default)]
    pub deletion_policy: ConsumerDeletionPolicy,

    /// Number of consumer pods, 1 when omitted. They share the durable consumer: each event
    /// goes to one pod. Also set through the scale subresource (`kubectl scale`, an HPA, a
    /// KEDA ScaledObject). Not with `autoscaling`, which sets the number itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: Option<i32>,

    /// Let the operator follow the load: it sets the number of pods from the durable
    /// consumer's lag (events pending plus acknowledgements pending) as NATS's JetStream API
    /// reports it, between `minReplicas` (0 allowed: no pod while nothing is pending) and
    /// `maxReplicas`, with HPA's algorithm: `ceil(lag / targetLagPerReplica)` pods, within a
    /// tolerance, stabilized and rate-limited per direction. It never writes the spec, and
    /// holds the last number whenever the lag cannot be trusted (the consumer unreadable, NATS
    /// unreachable, the durable consumer recreated); condition `ScalingActive` says why. Not
    /// with `replicas`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSettings>,

    /// Container image of `audit-consumer`. Defaults to the image the operator was configured
    /// with (`--consumer-image`), so upgrading the operator rolls the consumers to the matching
    /// version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub image: Option<String>,

    /// Events requested per pull.
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1, max = 10000))]
    pub batch: i32,

    /// Most bytes requested per pull; the consumer's default (4 MiB) when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_bytes: Option<i64>,

    /// How long one pull request waits for events, a duration such as `30s` (the default).
    #[serde(default = "default_expires")]
    #[schemars(length(max = 64), regex(pattern = r"^([0-9]+(ns|us|ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ns|us|ms|s|m|h))+$') || (duration(self) >= duration('1s') && duration(self) <= duration('5m'))").message("expires must be between 1s and 5m"))]
    pub expires: String,

    /// Idle heartbeat of a pull request, a duration; the consumer's default when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = r"^([0-9]+(ns|us|ms|s|m|h))+$"))]
    pub heartbeat: Option<String>,

    /// Format of the event log lines: `Json` (the default) or `Text` (key=value).
    #[serde(default)]
    pub format: LogFormat,

    /// Keys whose values are replaced by `"[REDACTED]"`, at any depth, in structured events
    /// before they are written (e.g. `password`, `token`, `authorization`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = 128),
        inner(length(min = 1, max = 253), regex(pattern = r"^[^,\s]+$"))
    )]
    pub redact_keys: Vec<String>,

    /// Scheduling and metadata of the consumer pods.
    #[serde(default, skip_serializing_if = "PodSettings::is_empty")]
    pub pod: PodSettings,

    /// A NetworkPolicy for the consumer pods: egress only to NATS and DNS, ingress only to the
    /// metrics port. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySettings>,

    /// A tamper-evident audit trail: every line a pod writes joins a hash chain, and the pods
    /// publish their chain heads, signed, to an append-only witness stream on the AuditStream's
    /// NATS, against which `audit-consumer verify` checks the logs later. Off by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<IntegritySettings>,

    /// Write the lines to an S3 bucket (AWS S3, MinIO, Ceph RGW, ...) instead of the pods'
    /// standard output: the same lines, gathered into segments, each stored once as an object
    /// that is never overwritten, under Object Lock retention when `objectLock` is set. A
    /// segment's events are acknowledged only after the store confirmed its object. For both
    /// outputs, create two AuditConsumers on the AuditStream: each keeps its own position.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveSettings>,
}

fn default_ack_wait() -> String {
    "30s".to_owned()
}

fn default_expires() -> String {
    "30s".to_owned()
}

/// The number of consumer pods when neither `replicas` nor `autoscaling` says otherwise.
pub const DEFAULT_REPLICAS: i32 = 1;

fn default_batch() -> i32 {
    100
}

/// A reference to an AuditStream in the same namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamRef {
    /// Name of the AuditStream.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Where a new durable consumer starts in the stream.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DeliverPolicy {
    /// Every event stored in the stream.
    #[default]
    All,
    /// The last event stored.
    Last,
    /// Only events stored after the consumer was created.
    New,
    /// The last event of each subject.
    LastPerSubject,
    /// From `startSequence` on.
    ByStartSequence,
    /// From `startTime` on.
    ByStartTime,
}

/// What deleting the resource does to the durable consumer on NATS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConsumerDeletionPolicy {
    /// Delete the durable consumer (the stream and its events stay).
    #[default]
    Delete,
    /// Keep the durable consumer and its position.
    Retain,
}

/// Format of the event log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LogFormat {
    /// One JSON object per line.
    #[default]
    Json,
    /// key=value pairs, values quoted where needed.
    Text,
}

/// Scheduling and metadata of the consumer pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodSettings {
    /// Extra labels on the pods. The `app.kubernetes.io/` labels the operator selects pods by
    /// cannot be overridden.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,

    /// Extra annotations on the pods, e.g. for a metrics scraper.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,

    /// CPU and memory of the consumer container. Defaults: requests 50m CPU and 64Mi memory,
    /// limits 1 CPU and 256Mi memory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Nodes the pods may run on, by label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Taints the pods tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Node and pod affinity of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// How the pods spread across zones or nodes. A constraint without a `labelSelector`
    /// selects this consumer's pods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,

    /// PriorityClass of the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Annotations on the pods' ServiceAccount (`<name>-audit-consumer`), for a workload
    /// identity that maps it to a cloud role: `eks.amazonaws.com/role-arn` (IRSA) for an
    /// archive on AWS S3 without `credentialsSecretRef`, for example. The account has no
    /// Kubernetes rights and mounts no API token; identity webhooks project their own token.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub service_account_annotations: BTreeMap<String, String>,
}

impl PodSettings {
    pub fn is_empty(&self) -> bool {
        self == &PodSettings::default()
    }
}

/// Lag-driven autoscaling of the consumer pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.minReplicas) || self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas must not be greater than maxReplicas"))]
pub struct AutoscalingSettings {
    /// Fewest pods, 1 when omitted. 0 lets the pods go away once nothing has been pending
    /// for `scaleDown.stabilizationWindow`; the first pending event brings one back within
    /// about the operator's `--autoscaling-interval` (5 s by default) plus a pod's start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub min_replicas: Option<i32>,

    /// Most pods.
    #[schemars(range(min = 1, max = 100))]
    pub max_replicas: i32,

    /// Lag (events pending plus acknowledgements pending) one pod is meant to carry: the
    /// autoscaler wants `ceil(lag / targetLagPerReplica)` pods. 1000 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_lag_per_replica: Option<i64>,

    /// How far, in percent, the lag per pod may stray from the target before the number of
    /// pods changes (HPA's tolerance). 10 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub tolerance_percent: Option<i32>,

    /// How fast pods are added. When omitted: no stabilization window, at most 4 pods or
    /// 100% more (whichever is more) per 15 s, as an HPA does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_up: Option<ScalingRules>,

    /// How fast pods are removed. When omitted: a stabilization window of 5 m (the highest
    /// recommendation of the last 5 minutes is followed, so a short lull removes no pod), at
    /// most 100% of the pods per 15 s, as an HPA does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down: Option<ScalingRules>,
}

/// How fast one direction of autoscaling moves. Each field has its direction's default when
/// omitted (see `scaleUp` and `scaleDown`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// The recommendations of this long (a duration such as `5m`) are considered: scaling
    /// up follows the lowest of them, scaling down the highest, so that a short spike or
    /// lull does not move the pods. At most `1h`. An operator that has observed a consumer
    /// for less than the window (it just started, or just became the leader) does not move
    /// in this direction yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = r"^([0-9]+(ns|us|ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ns|us|ms|s|m|h))+$') || duration(self) <= duration('1h')").message("stabilizationWindow must be at most 1h"))]
    pub stabilization_window: Option<String>,

    /// At most this many pods per step...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub pods: Option<i32>,

    /// ...or this percentage of the current pods, whichever allows more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub percent: Option<i32>,

    /// At most one step in this direction per period (a duration such as `15s`, between
    /// `1s` and `30m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = r"^([0-9]+(ns|us|ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ns|us|ms|s|m|h))+$') || (duration(self) >= duration('1s') && duration(self) <= duration('30m'))").message("period must be between 1s and 30m"))]
    pub period: Option<String>,
}

/// The consumer pods' NetworkPolicy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySettings {
    /// Create the NetworkPolicy.
    pub enabled: bool,

    /// Where the NATS servers run (e.g. a `namespaceSelector` for the NATS namespace). NATS
    /// ports are allowed to any destination when empty, since a policy cannot name hosts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nats_peers: Vec<NetworkPolicyPeer>,

    /// Who may scrape the metrics port (e.g. the monitoring namespace). Anyone when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics_from: Vec<NetworkPolicyPeer>,
}

/// The tamper-evident audit trail of the consumer pods.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!self.enabled || has(self.signingKeySecretRef)").message("integrity.enabled needs signingKeySecretRef: the Secret key holding the NKey seed that signs the checkpoints (`nk -gen account`)"))]
pub struct IntegritySettings {
    /// Chain every line and publish signed checkpoints.
    pub enabled: bool,

    /// A Secret key holding the NKey seed (`S...`, any NKey type, e.g. from
    /// `nk -gen account`) whose Ed25519 key signs the checkpoints. It is mounted into the pods
    /// as a file; its public key is shown in `status.integrity.publicKey`, and auditors verify
    /// with that. Rotating it rolls the pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key_secret_ref: Option<SecretKeyRef>,

    /// A pod publishes its chain head after at most this many lines...
    #[serde(default = "default_checkpoint_lines")]
    #[schemars(range(min = 1, max = 100_000_000))]
    pub checkpoint_lines: i64,

    /// ...or this long after its previous checkpoint, whichever comes first (a duration such
    /// as `10s`, the default; between `1s` and `1h`), and at shutdown. Lines written after the
    /// last checkpoint are not witnessed yet.
    #[serde(default = "default_checkpoint_interval")]
    #[schemars(length(max = 64), regex(pattern = r"^([0-9]+(ns|us|ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ns|us|ms|s|m|h))+$') || (duration(self) >= duration('1s') && duration(self) <= duration('1h'))").message("checkpointInterval must be between 1s and 1h"))]
    pub checkpoint_interval: String,

    /// The witness stream on the AuditStream's NATS (created by the operator if missing, with
    /// subjects `audit-integrity.>` and delete and purge denied; never deleted by it). One
    /// witness stream serves every AuditConsumer of a NATS account; each publishes on
    /// `audit-integrity.<stream>.<durable consumer>`.
    #[serde(default = "default_witness_stream")]
    #[schemars(length(min = 1, max = 255), regex(pattern = r"^[A-Za-z0-9_-]+$"))]
    pub witness_stream: String,
}

/// The archive output: an S3 bucket that keeps a write-once copy of the trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.verification) || !has(self.credentialsSecretRef) || (has(self.verification.credentialsSecretRef) && self.verification.credentialsSecretRef.name != self.credentialsSecretRef.name)").message("archive.verification needs credentials of its own (verification.credentialsSecretRef, a Secret other than credentialsSecretRef's) allowed only s3:ListBucket and s3:GetObject: the verifier must not be able to write the archive it checks"))]
pub struct ArchiveSettings {
    /// Name of the bucket. With `objectLock`, it must have been created with Object Lock
    /// enabled (the pods refuse to start otherwise, and say so).
    #[schemars(
        length(min = 3, max = 63),
        regex(pattern = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$")
    )]
    pub bucket: String,

    /// Region of the bucket (e.g. `eu-central-1`; `us-east-1` for most other stores).
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[a-z0-9-]+$"))]
    pub region: String,

    /// URL of an S3-compatible store (e.g. `https://minio.storage:9000`); AWS S3 when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024), regex(pattern = r"^https?://[^\s/]+(/.*)?$"))]
    pub endpoint: Option<String>,

    /// Address the bucket in the path (`https://host/bucket/key`) rather than the host name;
    /// most self-hosted stores need it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force_path_style: bool,

    /// Prefix of every object key (e.g. `audit/`). Keys continue with
    /// `<stream>/<durable consumer>/<yyyy>/<mm>/<dd>/`, so a time range is cheap to list.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(length(max = 512))]
    pub prefix: String,

    /// A Secret holding the access key pair, mounted into the pods as files. When omitted,
    /// the pods use the AWS SDK's default chain (workload identity, instance profile, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<ArchiveCredentialsRef>,

    /// A Secret key holding the PEM CA bundle that signed the store's certificate, added to
    /// the public roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,

    /// When a segment closes and is stored: whichever limit is reached first.
    #[serde(default)]
    pub segment: SegmentLimits,

    /// `Gzip` (the default: audit lines shrink several times) or `None`.
    #[serde(default)]
    pub compression: ArchiveCompression,

    /// Object Lock retention set on every object: nobody, with `Compliance` not even the
    /// account's root user, can delete or overwrite it before the period ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_lock: Option<ObjectLockSettings>,

    /// Verify the archive on a schedule: a CronJob of the consumer image, with read-only
    /// credentials, checks every segment stored since the previous run against the
    /// witnessed chain heads (and the whole listing for missing segments), and the status
    /// (`archive.verification`, condition `ArchiveVerified`) says what it found. Needs
    /// `integrity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<ArchiveVerificationSettings>,
}

/// The scheduled verification of an archive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveVerificationSettings {
    /// When to run, in cron syntax (five fields, the CronJob's time zone: UTC unless
    /// `timeZone` says otherwise), e.g. `17 * * * *` (the default: hourly). Each run covers
    /// what was stored since the previous run's `verifiedThrough`.
    #[serde(default = "default_verification_schedule")]
    #[schemars(length(min = 9, max = 128), regex(pattern = r"^(\S+\s+){4}\S+$"))]
    pub schedule: String,

    /// Time zone of the schedule (an IANA name such as `Europe/Berlin`); UTC when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64), regex(pattern = r"^[A-Za-z0-9_+/-]+$"))]
    pub time_zone: Option<String>,

    /// A Secret holding a read-only access key pair (s3:ListBucket and s3:GetObject only),
    /// mounted into the verifier's pods as files. When omitted, the verifier uses the AWS
    /// SDK's default chain with a ServiceAccount of its own (`<name>-audit-verify`), which a
    /// workload identity can map to a read-only role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<ArchiveCredentialsRef>,

    /// Compute resources of the verifier; 50m CPU and 128Mi requested, 1 CPU and 512Mi as
    /// limits by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Annotations on the verifier's ServiceAccount (`<name>-audit-verify`), for a workload
    /// identity that maps it to a read-only role of the store (e.g. `eks.amazonaws.com/role-arn`
    /// with IRSA) when `credentialsSecretRef` is omitted. Keep that role to s3:ListBucket and
    /// s3:GetObject: the verifier must not be able to change what it checks.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 32))]
    pub service_account_annotations: BTreeMap<String, String>,

    /// Findings accepted after an investigation (a segment deleted from a bucket without
    /// Object Lock and its loss recorded, say): each no longer counts as a problem, so that
    /// `ArchiveVerified` turns True again while everything else is still checked. The finding
    /// is the line exactly as in `status.archive.verification.findings`; it stays printed,
    /// marked `accepted=true`, in every later run's output. Keep the reason: it is the
    /// record of why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub accepted_findings: Vec<AcceptedFinding>,
}

/// A verification finding accepted after an investigation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AcceptedFinding {
    /// The finding, exactly as the verification reported it (e.g.
    /// `run=pod-a_20261204T090000.000000000Z finding=missing_segments numbers=3 after=...`).
    #[schemars(length(min = 1, max = 1024), regex(pattern = r"^\S.*\S$"))]
    pub finding: String,

    /// Why it is accepted: who investigated, and what they found (a ticket, an incident).
    #[schemars(length(min = 1, max = 1024))]
    pub reason: String,
}

fn default_verification_schedule() -> String {
    "17 * * * *".to_owned()
}

/// The Secret with the store's access key pair.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveCredentialsRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,

    /// Key of the access key id.
    #[serde(default = "default_access_key_id_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub access_key_id_key: String,

    /// Key of the secret access key.
    #[serde(default = "default_secret_access_key_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub secret_access_key_key: String,
}

fn default_access_key_id_key() -> String {
    "accessKeyId".to_owned()
}

fn default_secret_access_key_key() -> String {
    "secretAccessKey".to_owned()
}

/// When an archive segment closes. The defaults suit a year of retention: few, large objects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SegmentLimits {
    /// Lines per segment (default 100000). A pod holds a segment's events unacknowledged
    /// until it is stored, so this also sets `maxAckPending`'s default.
    #[serde(default = "default_segment_lines")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_lines: i64,

    /// Uncompressed bytes per segment (default 64 MiB). A pod keeps up to two segments in
    /// memory; its default memory limit grows to match.
    #[serde(default = "default_segment_bytes")]
    #[schemars(range(min = 1024, max = 1_073_741_824))]
    pub max_bytes: i64,

    /// Age of a segment's first line at which it closes (default `5m`; between `1s` and
    /// `24h`): the longest a line waits to be archived.
    #[serde(default = "default_segment_age")]
    #[schemars(length(max = 64), regex(pattern = r"^([0-9]+(ns|us|ms|s|m|h))+$"))]
    #[x_kube(validation = Rule::new("!self.matches('^([0-9]+(ns|us|ms|s|m|h))+$') || (duration(self) >= duration('1s') && duration(self) <= duration('24h'))").message("segment.maxAge must be between 1s and 24h"))]
    pub max_age: String,
}

impl Default for SegmentLimits {
    fn default() -> Self {
        Self {
            max_lines: default_segment_lines(),
            max_bytes: default_segment_bytes(),
            max_age: default_segment_age(),
        }
    }
}

fn default_segment_lines() -> i64 {
    100_000
}

fn default_segment_bytes() -> i64 {
    64 << 20
}

fn default_segment_age() -> String {
    "5m".to_owned()
}

/// Compression of archive segments.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ArchiveCompression {
    /// gzip (`.jsonl.gz` / `.log.gz` objects).
    #[default]
    Gzip,
    /// Plain lines.
    None,
}

/// Object Lock retention of archive objects.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectLockSettings {
    /// `Compliance` (nobody can shorten it) or `Governance` (users with a special permission
    /// can).
    pub mode: ObjectLockMode,

    /// Days each object is retained from its upload (e.g. 365, or 400 for PCI DSS's twelve
    /// months with a margin).
    #[schemars(range(min = 1, max = 36500))]
    pub retention_days: i32,
}

/// Object Lock mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ObjectLockMode {
    Compliance,
    Governance,
}

fn default_checkpoint_lines() -> i64 {
    10_000
}

fn default_checkpoint_interval() -> String {
    "10s".to_owned()
}

fn default_witness_stream() -> String {
    "AUDIT_INTEGRITY".to_owned()
}

/// Observed state of an AuditConsumer, kstatus-compatible.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditConsumerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// `Ready`, `Reconciling` and `Stalled` (kstatus), and the details: `StreamReady` (the
    /// AuditStream is Ready), `ConsumerReady` (the durable consumer exists on NATS as
    /// declared) and `WorkloadAvailable` (every desired pod is ready; while not, reason
    /// `PodsUnschedulable` or `ContainersFailing` names a pod that cannot run and the
    /// scheduler's or the kubelet's reason). With `maxDeliver`, also
    /// `MaxDeliveriesCounted`: whether the operator hears NATS's max-deliveries advisories
    /// (False with reason `AdvisorySubscriptionDenied` when NATS refuses its subscription;
    /// not part of `Ready`, as the consumer works all the same). With `integrity`, also
    /// `CheckpointsWitnessed`: False with reason `CheckpointsStalled` when events were
    /// acknowledged but no checkpoint was witnessed within the checkpoint interval and a
    /// grace period after, or `CheckpointsRejected` when checkpoints on the subject are not
    /// signed by the signing key (not part of `Ready` either: events keep flowing, and a
    /// Warning Event says what to check). With `archive.verification`, also
    /// `ArchiveVerified`: Unknown (`NotVerifiedYet`) until the first run finished, False with
    /// reason `ArchiveProblems` and the first findings when a run found the archive not as
    /// written, or `VerificationFailed` when a run could not check it (not part of `Ready`:
    /// a Warning Event and the `AuditArchiveVerificationProblems` alert say so).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,

    /// Name of the stream on the NATS server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_name: Option<String>,

    /// Name of the durable consumer on the NATS server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_name: Option<String>,

    /// Consumer pods wanted: `spec.replicas`, or the autoscaler's last decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,

    /// With `autoscaling`, its last decision and what it was based on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingStatus>,

    /// Consumer pods that exist (the scale subresource's current replicas).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,

    /// Consumer pods that are ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_replicas: Option<i32>,

    /// Label selector of the consumer pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,

    /// Events in the stream not yet delivered to the consumer, as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,

    /// Events delivered but not yet acknowledged, as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_pending: Option<u64>,

    /// Events delivered more than once, as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redelivered: Option<u64>,

    /// Stream sequence up to which every event is acknowledged, as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ack_floor: Option<u64>,

    /// Stream sequence of the last event delivered, as last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,

    /// Events that reached `maxDeliver` and will not be redelivered. They remain in the stream
    /// (the last at `lastMaxDeliveredSequence`) and can be replayed by a new AuditConsumer
    /// starting at their sequence. Counted from the NATS max-deliveries advisories while
    /// `maxDeliver` is set; advisories published while no operator ran are not counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_deliveries_reached: Option<u64>,

    /// Stream sequence of the last event that reached `maxDeliver`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_max_delivered_sequence: Option<u64>,

    /// Events the stream's limits (`maxAge`, `maxBytes`, `maxMessages`, ... with `discard:
    /// Old`) removed before this consumer acknowledged them: they are in no output of it.
    /// Found by comparing the consumer's ack floor with the stream's first sequence at every
    /// reconciliation; counted for consumers without `filterSubjects` only (a filtered
    /// consumer cannot tell the stream's other subjects from its own in that gap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_discarded: Option<u64>,

    /// Stream sequence up to which discarded events have been counted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discarded_through: Option<u64>,

    /// How much of the stream's limits the events this consumer has not written yet take, in
    /// percent, for each limit the stream sets: at 100 the stream starts removing them
    /// (`discard: Old`, counted in `eventsDiscarded`) or refuses new events (`discard: New`).
    /// A caught-up consumer uses 0 however full the stream is. For consumers without
    /// `filterSubjects`, refreshed at every reconciliation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits_use: Option<LimitsUse>,

    /// When a pod last acknowledged an event, as last observed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_ack_time: Option<String>,

    /// With `integrity`, where the checkpoints go and the newest of each pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub integrity: Option<IntegrityStatus>,

    /// With `archive`, what its scheduled verification found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive: Option<ArchiveStatus>,
}

/// Shares of an AuditStream's limits, in percent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsUse {
    /// The events from the oldest unwritten one to the stream's newest, against
    /// `maxMessages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<u32>,
    /// Their size, estimated from the stream's mean event size, against `maxBytes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u32>,
    /// The age of the oldest unwritten event against `maxAge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub age: Option<u32>,
}

/// The autoscaler's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// The lag (events pending plus acknowledgements pending) of the last trusted
    /// observation, which the current number of pods answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
    /// When the number of pods last changed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<String>,
    /// `ScaledUp` or `ScaledDown`: the direction of the last change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_direction: Option<String>,
    /// Why the number of pods last changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_reason: Option<String>,
    /// When the durable consumer whose lag is trusted was created on NATS (RFC 3339). A
    /// durable consumer created at another time was recreated: its lag counts the stream
    /// again from its deliver policy, and scaling holds for `scaleDown.stabilizationWindow`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_created: Option<String>,
}

/// The archive's state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveStatus {
    /// The last finished run of the scheduled verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<VerificationStatus>,
}

/// What the last finished verification run reported.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerificationStatus {
    /// When the run finished (RFC 3339).
    pub last_run_time: String,
    /// `Complete`, `Problems` or `Failed` (the check could not be made).
    pub result: String,
    /// Everything stored before this time has been checked (RFC 3339); the next run starts
    /// here. Unset until a run succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_through: Option<String>,
    /// Segments the run read.
    #[serde(default)]
    pub segments: u64,
    /// Chains the run checked, and how many of them were complete.
    #[serde(default)]
    pub chains: u64,
    #[serde(default)]
    pub chains_complete: u64,
    /// Problems found (missing, altered, reordered or truncated lines, missing segments,
    /// rejected heads); 0 when the archive is intact.
    #[serde(default)]
    pub problems: u64,
    /// Problems found that `acceptedFindings` lists, not counted in `problems`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub accepted: u64,
    /// The first findings, as `audit-consumer verify` prints them, or why the check could
    /// not be made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<String>,
}

/// The witnessed checkpoints of an AuditConsumer's pods.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IntegrityStatus {
    /// The witness stream on NATS.
    pub witness_stream: String,
    /// The subject the pods publish their checkpoints on: what `audit-consumer verify
    /// --integrity-subject` takes to check this AuditConsumer's logs.
    pub subject: String,
    /// The NKey public key of the signing key: what `audit-consumer verify --public-key`
    /// takes.
    pub public_key: String,
    /// The newest checkpoint of each pod that published one recently (within ten checkpoint
    /// intervals, at least a minute and at most 15 minutes), by pod name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checkpoints: Vec<PodCheckpoint>,
    /// Messages on the subject in that period whose signature does not verify with the
    /// signing key: forged, or signed with a key since rotated.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rejected_checkpoints: u64,
}

fn is_zero(count: &u64) -> bool {
    *count == 0
}

/// A pod's newest witnessed checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodCheckpoint {
    /// The pod.
    pub pod: String,
    /// Its chain (`<consumer>/<pod>/<start>`; a restarted container starts a new one).
    pub chain: String,
    /// How many of the chain's lines the checkpoint covers.
    pub position: u64,
    /// When the witness stream stored it (RFC 3339).
    pub time: String,
    /// With the archive output: the object this checkpoint ends, the pod's newest stored
    /// segment (`audit-consumer verify --archive s3://<bucket>/<this key>` checks it on its
    /// own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    /// Its size as stored, in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<u64>,
}

impl AuditConsumer {
    /// The durable consumer's name on NATS: the spec's, or one derived from the resource's
    /// name (unique per namespace and immutable).
    pub fn durable_name(&self) -> String {
        super::nats_name(self.spec.durable_name.as_deref(), &self.metadata)
    }
}
