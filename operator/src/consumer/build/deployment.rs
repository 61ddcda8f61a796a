//! The consumer pods' Deployment: `audit-consumer` hardened beyond the Pod Security Standards
//! *restricted* profile, configured by flags only, with NATS credentials and TLS material
//! mounted read-only from the referenced Secrets as files.
//!
//! The flags are the consumer's own option types ([`Flag`]), so the operator and the
//! consumer cannot disagree on a name or a value's syntax.
//!
//! A change of the spec changes the pod template (flags, image, scheduling) and so rolls the
//! pods; a rotated Secret does too, through the Secret versions recorded in a template
//! annotation (versions, never contents).

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, time::Duration};

use audit_consumer::{config::OutputKind, flag::Flag};
use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
            ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext,
            TopologySpreadConstraint, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{labels, metadata, selector_labels, workload_name};
use crate::{
    consumer::{archive::ValidArchive, validate::ValidConsumer},
    crd::{
        connection::{AuthSecret, SecretKeyRef},
        consumer::ArchiveCredentialsRef,
    },
};

/// Name of the consumer container.
pub const CONTAINER_NAME: &str = "audit-consumer";
/// Where the consumer image installs the binary (see the Dockerfile).
pub const COMMAND: &str = "/usr/local/bin/audit-consumer";
/// Port of `/livez`, `/readyz` and `/metrics`.
pub const HEALTH_PORT: u16 = 8080;
pub const HEALTH_PORT_NAME: &str = "metrics";
/// Template annotation holding the versions of the mounted Secrets.
pub const SECRET_VERSIONS_ANNOTATION: &str = "audit.eventsaudit.io/secret-versions";
/// Directory under which each Secret volume is mounted.
pub const SECRETS_DIR: &str = "/etc/audit-consumer/nats";
/// Where the consumer writes its fatal error, and Kubernetes reads it (its default path).
pub(super) const TERMINATION_MESSAGE_PATH: &str = "/dev/termination-log";
/// Only the file, so that the status may quote a termination message (see `pods`).
pub const TERMINATION_MESSAGE_POLICY: &str = "File";
/// The consumer's variable for `--integrity-pod`.
const INTEGRITY_POD_ENV: &str = "AUDIT_CONSUMER_INTEGRITY_POD";
/// The distroless `nonroot` user of the consumer image.
const RUN_AS: i64 = 65532;
/// Owner read, group read (the pod's fsGroup): the files are the pod's alone.
const SECRET_FILE_MODE: i32 = 0o440;
/// Time the consumer gets beyond one pull expiry to write, ack and drain in-flight events.
const DRAIN_MARGIN: Duration = Duration::from_secs(30);
/// The consumer's default `--archive-shutdown-timeout`, which the operator leaves as it is.
const ARCHIVE_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(20);

pub fn build(valid: &ValidConsumer) -> Deployment {
    Deployment {
        metadata: metadata(valid),
        spec: Some(DeploymentSpec {
            replicas: Some(valid.replicas),
            selector: own_pods(valid),
            // A new pod must be ready before an old one goes: the ready count never drops
            // below the desired one during a rollout.
            strategy: Some(DeploymentStrategy {
                type_: Some("RollingUpdate".to_owned()),
                rolling_update: Some(RollingUpdateDeployment {
                    max_surge: Some(IntOrString::Int(1)),
                    max_unavailable: Some(IntOrString::Int(0)),
                }),
            }),
            revision_history_limit: Some(5),
            template: pod_template(valid),
            ..DeploymentSpec::default()
        }),
        status: None,
    }
}

/// The consumer's command line: what to read and how, then the files of its credentials.
pub fn flags(valid: &ValidConsumer, secret_flags: Vec<Flag>) -> Vec<Flag> {
    let mut flags = vec![
        Flag::NatsUrl(valid.connection.servers.clone()),
        Flag::Stream(valid.stream_name.clone()),
        Flag::Consumer(valid.durable_name.clone()),
        Flag::Format(valid.format),
        Flag::HealthListen(SocketAddr::from(([0, 0, 0, 0], HEALTH_PORT))),
        Flag::Batch(valid.batch),
        Flag::Expires(valid.expires),
        Flag::TerminationLog(PathBuf::from(TERMINATION_MESSAGE_PATH)),
    ];
    flags.extend(valid.max_bytes.map(Flag::MaxBytes));
    flags.extend(valid.heartbeat.map(Flag::Heartbeat));
    if !valid.redact_keys.is_empty() {
        flags.push(Flag::RedactKeys(valid.redact_keys.clone()));
    }
    flags.extend(valid.connection.js_domain.clone().map(Flag::JsDomain));
    flags.extend(secret_flags);
    if let Some(integrity) = &valid.integrity {
        flags.extend([
            Flag::Integrity,
            Flag::IntegrityStream(integrity.witness_stream.clone()),
            Flag::IntegritySubject(integrity.subject.clone()),
            Flag::IntegrityCheckpointLines(integrity.checkpoint_lines),
            Flag::IntegrityCheckpointInterval(integrity.checkpoint_interval),
        ]);
    }
    if let Some(archive) = &valid.archive {
        flags.extend(archive_flags(archive));
    }
    flags
}

/// The archive's settings; its Secrets' files come with the other files.
fn archive_flags(archive: &ValidArchive) -> Vec<Flag> {
    let mut flags = vec![
        Flag::Output(OutputKind::Archive),
        Flag::ArchiveBucket(archive.bucket.clone()),
        Flag::ArchiveRegion(archive.region.clone()),
    ];
    flags.extend(archive.endpoint.clone().map(Flag::ArchiveEndpoint));
    if archive.force_path_style {
        flags.push(Flag::ArchivePathStyle);
    }
    if !archive.prefix.is_empty() {
        flags.push(Flag::ArchivePrefix(archive.prefix.clone()));
    }
    flags.extend([
        Flag::ArchiveSegmentLines(archive.segment_lines),
        Flag::ArchiveSegmentBytes(archive.segment_bytes),
        Flag::ArchiveSegmentAge(archive.segment_age),
        Flag::ArchiveCompression(archive.compression),
    ]);
    if let Some((mode, retention)) = archive.lock {
        flags.extend([
            Flag::ArchiveLockMode(mode),
            Flag::ArchiveRetention(retention),
        ]);
    }
    flags
}

fn pod_template(valid: &ValidConsumer) -> PodTemplateSpec {
    let files = secret_files(valid);
    let mut pod_labels = valid.pod.labels.clone();
    pod_labels.extend(labels(&valid.name));
    let mut annotations = valid.pod.annotations.clone();
    annotations.insert(
        "kubectl.kubernetes.io/default-container".to_owned(),
        CONTAINER_NAME.to_owned(),
    );
    if !valid.secret_versions.is_empty() {
        annotations.insert(
            SECRET_VERSIONS_ANNOTATION.to_owned(),
            valid.secret_versions.join(","),
        );
    }
    let args = flags(valid, files.flags)
        .iter()
        .map(ToString::to_string)
        .collect();
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(pod_labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        }),
        spec: Some(PodSpec {
            containers: vec![container(valid, args, files.mounts)],
            service_account_name: Some(workload_name(&valid.name)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(restricted_pod()),
            termination_grace_period_seconds: Some(grace_period(valid)),
            volumes: non_empty(&files.volumes),
            node_selector: non_empty_map(&valid.pod.node_selector),
            tolerations: non_empty(&valid.pod.tolerations),
            affinity: valid.pod.affinity.clone(),
            topology_spread_constraints: Some(topology_spread(valid)),
            priority_class_name: valid.pod.priority_class_name.clone(),
            ..PodSpec::default()
        }),
    }
}

fn container(valid: &ValidConsumer, args: Vec<String>, mounts: Vec<VolumeMount>) -> Container {
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(HEALTH_PORT_NAME.to_owned()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    };
    Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(valid.image.clone()),
        command: Some(vec![COMMAND.to_owned()]),
        args: Some(args),
        ports: Some(vec![ContainerPort {
            name: Some(HEALTH_PORT_NAME.to_owned()),
            container_port: HEALTH_PORT.into(),
            protocol: Some("TCP".to_owned()),
            ..ContainerPort::default()
        }]),
        // Up to a minute to connect and bind before liveness counts.
        startup_probe: Some(probe("/livez", 2, 30)),
        liveness_probe: Some(probe("/livez", 10, 3)),
        readiness_probe: Some(probe("/readyz", 5, 2)),
        resources: Some(
            valid
                .pod
                .resources
                .clone()
                .unwrap_or_else(|| default_resources(valid.archive.as_ref())),
        ),
        security_context: Some(restricted_container()),
        // The pod's name names its chains and its archive segments.
        env: (valid.integrity.is_some() || valid.archive.is_some()).then(|| vec![pod_name_env()]),
        volume_mounts: non_empty(&mounts),
        // The consumer writes its fatal error there itself; never the log's tail, which
        // holds audit events and would reach `kubectl describe pod` and the status.
        termination_message_path: Some(TERMINATION_MESSAGE_PATH.to_owned()),
        termination_message_policy: Some(TERMINATION_MESSAGE_POLICY.to_owned()),
        ..Container::default()
    }
}

/// The pod's name, which names its chains, from the downward API: not a secret, and exact
/// even where a pod's host name is not its name.
fn pod_name_env() -> EnvVar {
    EnvVar {
        name: INTEGRITY_POD_ENV.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// Longer than the consumer's drain: an outstanding pull may run for one expiry, then
/// in-flight events are written and acked; with an archive, the last segment is stored
/// (retried for the consumer's `--archive-shutdown-timeout`) before its events are acked.
fn grace_period(valid: &ValidConsumer) -> i64 {
    let archive = if valid.archive.is_some() {
        ARCHIVE_SHUTDOWN_TIMEOUT
    } else {
        Duration::ZERO
    };
    i64::try_from((valid.expires + DRAIN_MARGIN + archive).as_secs()).unwrap_or(i64::MAX)
}

/// Beyond the Pod Security Standards' restricted profile: non-root, no privilege
/// escalation, no capability, a read-only root file system, the runtime's seccomp profile.
pub(super) fn restricted_container() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Capabilities::default()
        }),
        privileged: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        seccomp_profile: Some(runtime_default()),
        ..SecurityContext::default()
    }
}

/// The pod's side of [`restricted_container`]; the Secret files belong to its group.
pub(super) fn restricted_pod() -> PodSecurityContext {
    PodSecurityContext {
        run_as_non_root: Some(true),
        run_as_user: Some(RUN_AS),
        run_as_group: Some(RUN_AS),
        fs_group: Some(RUN_AS),
        seccomp_profile: Some(runtime_default()),
        ..PodSecurityContext::default()
    }
}

fn runtime_default() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".to_owned(),
        ..SeccompProfile::default()
    }
}

/// With an archive, memory for a segment being filled beside one being stored (or retried).
fn default_resources(archive: Option<&ValidArchive>) -> ResourceRequirements {
    let quantities = |cpu: &str, memory_mib: usize| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(format!("{memory_mib}Mi"))),
        ])
    };
    let segment_mib = archive.map_or(0, |archive| archive.segment_bytes.div_ceil(1 << 20));
    ResourceRequirements {
        requests: Some(quantities("50m", 64 + segment_mib)),
        limits: Some(quantities("1", 256 + 2 * segment_mib)),
        ..ResourceRequirements::default()
    }
}

/// The selector of this consumer's pods.
fn own_pods(valid: &ValidConsumer) -> LabelSelector {
    LabelSelector {
        match_labels: Some(selector_labels(&valid.name)),
        ..LabelSelector::default()
    }
}

/// The user's constraints, each selecting this consumer's pods unless it says otherwise; by
/// default, pods prefer distinct nodes.
fn topology_spread(valid: &ValidConsumer) -> Vec<TopologySpreadConstraint> {
    let given = &valid.pod.topology_spread_constraints;
    if given.is_empty() {
        return vec![TopologySpreadConstraint {
            max_skew: 1,
            topology_key: "kubernetes.io/hostname".to_owned(),
            when_unsatisfiable: "ScheduleAnyway".to_owned(),
            label_selector: Some(own_pods(valid)),
            ..TopologySpreadConstraint::default()
        }];
    }
    given
        .iter()
        .map(|constraint| TopologySpreadConstraint {
            label_selector: constraint
                .label_selector
                .clone()
                .or_else(|| Some(own_pods(valid))),
            ..constraint.clone()
        })
        .collect()
}

/// One read-only Secret volume per referenced Secret use, and the flags naming the files.
fn secret_files(valid: &ValidConsumer) -> SecretFiles {
    let mut files = SecretFiles::default();
    files.add_connection(valid);
    if let Some(integrity) = &valid.integrity {
        let key = &integrity.key.secret;
        let [path] = files.add("integrity-key", &key.name, [(&key.key, "seed.nk")]);
        files.flags.push(Flag::IntegrityKeyFile(path));
    }
    if let Some(archive) = &valid.archive {
        files.add_archive(archive.credentials.as_ref(), archive.ca.as_ref());
    }
    files
}

impl SecretFiles {
    /// The files of the AuditStream's connection: NATS credentials and TLS material.
    pub(super) fn add_connection(&mut self, valid: &ValidConsumer) {
        let files = self;
        match valid.connection.auth_secret() {
            Some(AuthSecret::Creds(r)) => {
                let [path] = files.add("creds", &r.name, [(&r.key, "user.creds")]);
                files.flags.push(Flag::CredsFile(path));
            }
            Some(AuthSecret::NKey(r)) => {
                let [path] = files.add("nkey", &r.name, [(&r.key, "seed.nk")]);
                files.flags.push(Flag::NkeySeedFile(path));
            }
            Some(AuthSecret::UserPassword(r)) => {
                // The user name comes from the Secret too, and stays a file like the password:
                // pod arguments are readable by anyone who can read the Deployment.
                let [user, password] = files.add(
                    "password",
                    &r.name,
                    [(&r.username_key, "username"), (&r.password_key, "password")],
                );
                files.flags.push(Flag::UserFile(user));
                files.flags.push(Flag::PasswordFile(password));
            }
            Some(AuthSecret::Token(r)) => {
                let [path] = files.add("token", &r.name, [(&r.key, "token")]);
                files.flags.push(Flag::TokenFile(path));
            }
            // Anonymous; an auth block with no single reference never gets this far (resolving
            // the connection refuses it).
            None => {}
        }
        if let Some(tls) = &valid.connection.tls {
            if let Some(r) = &tls.ca_secret_ref {
                let [path] = files.add("tls-ca", &r.name, [(&r.key, "ca.crt")]);
                files.flags.push(Flag::TlsCaFile(path));
            }
            if let Some(r) = &tls.client_cert_secret_ref {
                let pair = [("tls.crt", "tls.crt"), ("tls.key", "tls.key")];
                if tls.ca_secret_ref.is_none() && valid.client_cert_has_ca {
                    let [cert, key, ca] = files.add(
                        "tls-client",
                        &r.name,
                        [pair[0], pair[1], ("ca.crt", "ca.crt")],
                    );
                    files.flags.push(Flag::TlsCertFile(cert));
                    files.flags.push(Flag::TlsKeyFile(key));
                    files.flags.push(Flag::TlsCaFile(ca));
                } else {
                    let [cert, key] = files.add("tls-client", &r.name, pair);
                    files.flags.push(Flag::TlsCertFile(cert));
                    files.flags.push(Flag::TlsKeyFile(key));
                }
            }
        }
    }

    /// The files of an archive's access key pair (the pods' or the verifier's) and CA.
    pub(super) fn add_archive(
        &mut self,
        credentials: Option<&ArchiveCredentialsRef>,
        ca: Option<&SecretKeyRef>,
    ) {
        if let Some(r) = credentials {
            let [id, secret] = self.add(
                "archive-credentials",
                &r.name,
                [
                    (&r.access_key_id_key, "access-key-id"),
                    (&r.secret_access_key_key, "secret-access-key"),
                ],
            );
            self.flags.push(Flag::ArchiveAccessKeyIdFile(id));
            self.flags.push(Flag::ArchiveSecretAccessKeyFile(secret));
        }
        if let Some(r) = ca {
            let [path] = self.add("archive-ca", &r.name, [(&r.key, "ca.crt")]);
            self.flags.push(Flag::ArchiveCaFile(path));
        }
    }
}

#[derive(Default)]
pub(super) struct SecretFiles {
    pub volumes: Vec<Volume>,
    pub mounts: Vec<VolumeMount>,
    pub flags: Vec<Flag>,
}

impl SecretFiles {
    /// Mounts `items` (Secret key, file name) of Secret `secret` at `SECRETS_DIR/<purpose>`;
    /// returns the files' paths in the container, in the order of `items`.
    fn add<const N: usize>(
        &mut self,
        purpose: &str,
        secret: &str,
        items: [(&str, &str); N],
    ) -> [PathBuf; N] {
        let volume = format!("nats-{purpose}");
        let dir = PathBuf::from(SECRETS_DIR).join(purpose);
        self.volumes.push(Volume {
            name: volume.clone(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(secret.to_owned()),
                items: Some(
                    items
                        .iter()
                        .map(|(key, file)| KeyToPath {
                            key: (*key).to_owned(),
                            path: (*file).to_owned(),
                            mode: None,
                        })
                        .collect(),
                ),
                default_mode: Some(SECRET_FILE_MODE),
                optional: Some(false),
            }),
            ..Volume::default()
        });
        self.mounts.push(VolumeMount {
            name: volume,
            mount_path: dir.display().to_string(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        items.map(|(_, file)| dir.join(file))
    }
}

pub(super) fn non_empty<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

pub(super) fn non_empty_map(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then(|| map.clone())
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;
    use crate::consumer::validate::tests::{CONNECTION, valid_with};

    const SPEC: &str = "streamRef: {name: orders}\nreplicas: 3\nformat: Text\nredactKeys: [password, token]\npod:\n  labels: {team: payments, app.kubernetes.io/name: hijack}\n  annotations: {prometheus.io/scrape: 'true'}\n  priorityClassName: audit\n";

    fn deployment(spec: &str, connection: &str) -> Deployment {
        build(&valid_with(spec, connection).unwrap())
    }

    fn pod(deployment: &Deployment) -> &PodSpec {
        deployment
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
    }

    fn args(deployment: &Deployment) -> &[String] {
        pod(deployment).containers[0].args.as_deref().unwrap()
    }

    #[test]
    fn flags_follow_the_consumer_contract() {
        let deployment = deployment(SPEC, CONNECTION);
        let container = &pod(&deployment).containers[0];
        assert_eq!(
            container.command.as_deref(),
            Some(&[COMMAND.to_owned()][..])
        );
        assert_eq!(
            container.image.as_deref(),
            Some("ghcr.io/eventsaudit/audit-consumer:0.1.0")
        );
        assert_eq!(
            args(&deployment),
            [
                "--nats-url=nats://nats-a.nats:4222,tls://nats-b.nats:7422",
                "--stream=orders_audit",
                "--consumer=orders_reader",
                "--format=text",
                "--health-listen=0.0.0.0:8080",
                "--batch=100",
                "--expires=30s",
                "--termination-log=/dev/termination-log",
                "--redact-keys=password,token",
                "--js-domain=hub",
                "--creds-file=/etc/audit-consumer/nats/creds/user.creds",
                "--tls-ca-file=/etc/audit-consumer/nats/tls-ca/ca.crt",
            ]
        );
        assert!(container.env.is_none(), "configuration is by flags only");
    }

    #[test]
    fn pod_passes_restricted_and_more() {
        let deployment = deployment(SPEC, CONNECTION);
        let pod = pod(&deployment);
        let security = pod.security_context.as_ref().unwrap();
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.run_as_user, Some(65532));
        assert_eq!(
            security.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        let container = &pod.containers[0];
        let security = container.security_context.as_ref().unwrap();
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(
            security.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_owned()][..])
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        assert!(container.startup_probe.is_some());
        assert!(container.liveness_probe.is_some());
        let readiness = container.readiness_probe.as_ref().unwrap();
        assert_eq!(
            readiness.http_get.as_ref().unwrap().path.as_deref(),
            Some("/readyz")
        );
        let resources = container.resources.as_ref().unwrap();
        assert!(resources.requests.is_some() && resources.limits.is_some());
        assert_eq!(pod.termination_grace_period_seconds, Some(60));
    }

    #[test]
    fn secrets_are_read_only_files_never_environment() {
        let deployment = deployment(SPEC, CONNECTION);
        let pod = pod(&deployment);
        let volumes = pod.volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 2);
        let creds = volumes[0].secret.as_ref().unwrap();
        assert_eq!(creds.secret_name.as_deref(), Some("nats-creds"));
        assert_eq!(creds.items.as_ref().unwrap()[0].key, "user.creds");
        assert_eq!(creds.default_mode, Some(0o440));
        let mounts = pod.containers[0].volume_mounts.as_ref().unwrap();
        assert!(mounts.iter().all(|m| m.read_only == Some(true)));
    }

    #[test]
    fn rollout_never_drops_below_the_desired_ready_count() {
        let deployment = deployment(SPEC, CONNECTION);
        let spec = deployment.spec.as_ref().unwrap();
        assert_eq!(spec.replicas, Some(3));
        let rolling = spec
            .strategy
            .as_ref()
            .unwrap()
            .rolling_update
            .as_ref()
            .unwrap();
        assert_eq!(rolling.max_unavailable, Some(IntOrString::Int(0)));
    }

    #[test]
    fn user_labels_cannot_break_the_selector() {
        let deployment = deployment(SPEC, CONNECTION);
        let template = deployment.spec.as_ref().unwrap().template.metadata.as_ref();
        let labels = template.unwrap().labels.as_ref().unwrap();
        assert_eq!(labels["app.kubernetes.io/name"], "audit-consumer");
        assert_eq!(labels["team"], "payments");
        let annotations = template.unwrap().annotations.as_ref().unwrap();
        assert_eq!(annotations["prometheus.io/scrape"], "true");
    }

    #[test]
    fn a_rotated_secret_changes_the_pod_template() {
        let before = deployment(SPEC, CONNECTION);
        let after = build(&ValidConsumer {
            secret_versions: vec!["shop/nats-ca@4".into(), "shop/nats-creds@13".into()],
            ..valid_with(SPEC, CONNECTION).unwrap()
        });
        let annotation = |d: &Deployment| {
            d.spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[SECRET_VERSIONS_ANNOTATION]
                .clone()
        };
        assert_eq!(annotation(&before), "shop/nats-ca@4,shop/nats-creds@12");
        assert_ne!(annotation(&before), annotation(&after));
    }

    #[test]
    fn user_password_and_client_certificate_with_its_ca() {
        let connection = "servers: [tls://nats:4222]\nauth: {userPasswordSecretRef: {name: basic}}\ntls: {clientCertSecretRef: {name: client}}\n";
        let deployment = build(&ValidConsumer {
            client_cert_has_ca: true,
            ..valid_with(SPEC, connection).unwrap()
        });
        let args = args(&deployment);
        assert!(
            args.contains(&"--user-file=/etc/audit-consumer/nats/password/username".to_owned())
        );
        assert!(!args.iter().any(|a| a.starts_with("--user=")));
        assert!(
            args.contains(&"--password-file=/etc/audit-consumer/nats/password/password".to_owned())
        );
        assert!(
            args.contains(
                &"--tls-cert-file=/etc/audit-consumer/nats/tls-client/tls.crt".to_owned()
            )
        );
        assert!(
            args.contains(&"--tls-key-file=/etc/audit-consumer/nats/tls-client/tls.key".to_owned())
        );
        assert!(
            args.contains(&"--tls-ca-file=/etc/audit-consumer/nats/tls-client/ca.crt".to_owned())
        );
        assert!(!args.iter().any(|a| a.contains("s3cr3t")));
    }

    #[test]
    fn topology_spread_defaults_to_distinct_nodes_and_selects_own_pods() {
        let deployment = deployment(SPEC, CONNECTION);
        let spread = pod(&deployment)
            .topology_spread_constraints
            .as_ref()
            .unwrap();
        assert_eq!(spread[0].topology_key, "kubernetes.io/hostname");
        assert_eq!(
            spread[0]
                .label_selector
                .as_ref()
                .unwrap()
                .match_labels
                .as_ref()
                .unwrap()["app.kubernetes.io/instance"],
            "orders.reader"
        );
    }

    fn with_integrity(spec: &str) -> ValidConsumer {
        let key = nkeys::KeyPair::new_account();
        ValidConsumer {
            integrity: Some(crate::consumer::integrity::tests::valid_integrity(&key)),
            ..valid_with(spec, CONNECTION).unwrap()
        }
    }

    #[test]
    fn integrity_mounts_the_key_as_a_file_and_names_the_pod_from_the_downward_api() {
        let deployment = build(&with_integrity(SPEC));
        let args = args(&deployment);
        for expected in [
            "--integrity",
            "--integrity-key-file=/etc/audit-consumer/nats/integrity-key/seed.nk",
            "--integrity-stream=AUDIT_INTEGRITY",
            "--integrity-subject=audit-integrity.orders_audit.orders_reader",
            "--integrity-checkpoint-lines=10000",
            "--integrity-checkpoint-interval=10s",
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
        let pod = pod(&deployment);
        let key = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "nats-integrity-key")
            .and_then(|v| v.secret.as_ref())
            .unwrap();
        assert_eq!(key.secret_name.as_deref(), Some("signer"));
        assert_eq!(key.default_mode, Some(0o440));
        let env = pod.containers[0].env.as_deref().unwrap();
        assert_eq!(
            env.len(),
            1,
            "the pod name only: no secret in the environment"
        );
        assert_eq!(env[0].name, "AUDIT_CONSUMER_INTEGRITY_POD");
        assert_eq!(
            env[0]
                .value_from
                .as_ref()
                .unwrap()
                .field_ref
                .as_ref()
                .unwrap()
                .field_path,
            "metadata.name"
        );
        let without = build(&valid_with(SPEC, CONNECTION).unwrap());
        let without = without.spec.unwrap().template.spec.unwrap();
        assert_eq!(without.containers[0].env, None);
    }

    const ARCHIVE: &str = "archive:\n  bucket: audit-trail\n  region: eu-central-1\n  endpoint: https://minio.storage:9000\n  forcePathStyle: true\n  prefix: trail/\n  credentialsSecretRef: {name: s3}\n  caSecretRef: {name: s3-ca, key: ca.crt}\n  segment: {maxLines: 50000, maxBytes: 33554432, maxAge: 10m}\n  objectLock: {mode: Compliance, retentionDays: 400}\n";

    #[test]
    fn an_archive_mounts_its_credentials_as_files_and_sizes_the_pod_for_two_segments() {
        let spec = format!("{SPEC}{ARCHIVE}");
        let deployment = deployment(&spec, CONNECTION);
        let args = args(&deployment);
        for expected in [
            "--output=archive",
            "--archive-bucket=audit-trail",
            "--archive-region=eu-central-1",
            "--archive-endpoint=https://minio.storage:9000",
            "--archive-path-style",
            "--archive-prefix=trail/",
            "--archive-segment-lines=50000",
            "--archive-segment-bytes=33554432",
            "--archive-segment-age=10m",
            "--archive-compression=gzip",
            "--archive-lock-mode=compliance",
            "--archive-retention=400d",
            "--archive-access-key-id-file=/etc/audit-consumer/nats/archive-credentials/access-key-id",
            "--archive-secret-access-key-file=/etc/audit-consumer/nats/archive-credentials/secret-access-key",
            "--archive-ca-file=/etc/audit-consumer/nats/archive-ca/ca.crt",
        ] {
            assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
        }
        let pod = pod(&deployment);
        let credentials = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "nats-archive-credentials")
            .and_then(|v| v.secret.as_ref())
            .unwrap();
        assert_eq!(credentials.secret_name.as_deref(), Some("s3"));
        let keys: Vec<_> = credentials
            .items
            .iter()
            .flatten()
            .map(|item| item.key.as_str())
            .collect();
        assert_eq!(keys, ["accessKeyId", "secretAccessKey"]);
        let container = &pod.containers[0];
        let env = container.env.as_deref().unwrap();
        assert_eq!(env.len(), 1, "the pod name only, which names the segments");
        let resources = container.resources.as_ref().unwrap();
        assert_eq!(
            resources.limits.as_ref().unwrap()["memory"],
            Quantity("320Mi".into())
        );
        assert_eq!(
            resources.requests.as_ref().unwrap()["memory"],
            Quantity("96Mi".into())
        );
        // The last segment's upload fits in the grace period.
        assert_eq!(pod.termination_grace_period_seconds, Some(80));
    }

    #[test]
    fn without_credentials_the_pods_use_the_sdk_default_chain() {
        let spec = format!("{SPEC}archive: {{bucket: audit-trail, region: us-east-1}}\n");
        let deployment = deployment(&spec, CONNECTION);
        let args = args(&deployment);
        assert!(
            !args
                .iter()
                .any(|a| a.starts_with("--archive-access-key-id-file"))
        );
        assert!(!args.iter().any(|a| a.starts_with("--archive-lock-mode")));
        assert!(!args.iter().any(|a| a.starts_with("--archive-endpoint")));
    }

    /// Every command line the builder writes, read by the consumer's own parser: a flag the
    /// consumer does not know, or a value it cannot read, fails here rather than in a pod.
    #[test]
    fn the_consumer_parses_every_command_line_the_operator_writes() {
        let connections = [
            CONNECTION,
            "servers: [nats://nats:4222]\n",
            "servers: [nats://nats:4222]\nauth: {nkeySecretRef: {name: n, key: seed}}\n",
            "servers: [nats://nats:4222]\nauth: {tokenSecretRef: {name: t, key: token}}\n",
            "servers: [tls://nats:4222]\nauth: {userPasswordSecretRef: {name: basic}}\ntls: {clientCertSecretRef: {name: client}}\n",
            "servers: [tls://nats:4222]\ntls: {caSecretRef: {name: ca, key: ca.crt}, clientCertSecretRef: {name: client}}\n",
        ];
        let specs = [
            SPEC.to_owned(),
            "streamRef: {name: orders}\n".to_owned(),
            "streamRef: {name: orders}\nbatch: 10000\nmaxBytes: 1048576\nexpires: 1m30s\nheartbeat: 45s\n".to_owned(),
            "streamRef: {name: orders}\nexpires: 1500ms\nformat: Json\nredactKeys: [a]\n".to_owned(),
            format!("streamRef: {{name: orders}}\n{ARCHIVE}"),
            "streamRef: {name: orders}\narchive: {bucket: b-1, region: r, compression: None, objectLock: {mode: Governance, retentionDays: 1}}\n".to_owned(),
        ];
        for connection in connections {
            for spec in &specs {
                for (client_cert_has_ca, integrity) in
                    [(false, false), (true, false), (false, true)]
                {
                    let valid = ValidConsumer {
                        client_cert_has_ca,
                        integrity: integrity.then(|| with_integrity(spec).integrity).flatten(),
                        ..valid_with(spec, connection).unwrap()
                    };
                    let deployment = build(&valid);
                    let args = args(&deployment);
                    let parsed = audit_consumer::config::Args::try_parse_from(
                        std::iter::once(COMMAND).chain(args.iter().map(String::as_str)),
                    )
                    .unwrap_or_else(|e| panic!("{args:?}: {e}"));
                    parsed
                        .validate()
                        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
                    assert_eq!(parsed.binding.stream, valid.stream_name);
                    assert_eq!(parsed.binding.consumer, valid.durable_name);
                    assert_eq!(parsed.pull.expires, valid.expires);
                    assert_eq!(parsed.pull.heartbeat, valid.heartbeat);
                    assert_eq!(parsed.pull.batch, valid.batch);
                    assert_eq!(parsed.output.format, valid.format);
                    assert_eq!(parsed.integrity.integrity, integrity);
                    assert_eq!(
                        parsed.archive.output == OutputKind::Archive,
                        valid.archive.is_some()
                    );
                    assert_eq!(
                        parsed.runtime.health_listen.port(),
                        HEALTH_PORT,
                        "the probes' port"
                    );
                }
            }
        }
    }
}
