//! The archive's scheduled verification: a CronJob of the consumer image running
//! `audit-consumer verify --archive` as hardened as the consumer pods, with a ServiceAccount of
//! its own and only read-only store credentials (the verifier must not be able to write what
//! it checks). Each run starts where the previous one's `verifiedThrough` ended, and leaves
//! its report as the container's termination message, which the operator reads (see
//! `features::verification`).

use std::collections::BTreeMap;

use audit_consumer::{archive::segment::Naming, flag::Flag};
use k8s_openapi::{
    api::{
        batch::v1::{
            CronJob, CronJobSpec, JobSpec, JobTemplateSpec, PodFailurePolicy,
            PodFailurePolicyOnExitCodesRequirement, PodFailurePolicyRule,
        },
        core::v1::{Container, PodSpec, PodTemplateSpec, ResourceRequirements, ServiceAccount},
    },
    apimachinery::pkg::{api::resource::Quantity, apis::meta::v1::ObjectMeta},
};

use super::{
    INSTANCE_LABEL, MANAGED_BY_LABEL, NAME_LABEL,
    deployment::{
        COMMAND, SecretFiles, TERMINATION_MESSAGE_PATH, TERMINATION_MESSAGE_POLICY, non_empty,
        restricted_container, restricted_pod,
    },
};
use crate::consumer::{archive::ValidArchive, integrity::ValidIntegrity, validate::ValidConsumer};

/// Value of [`NAME_LABEL`] on the verifier's objects and pods: not the consumer pods'
/// selector, so a verification pod never counts as a consumer replica.
pub const APP_NAME: &str = "audit-verify";
/// Name of the verifier's container.
pub const CONTAINER_NAME: &str = "audit-verify";
/// `verify`'s exit status when it found a problem: a rerun would find it again.
const EXIT_PROBLEMS: i32 = 1;
/// Runs longer than this are stopped (and retried at the next schedule).
const ACTIVE_DEADLINE_SECONDS: i64 = 6 * 3600;
/// Finished runs kept, successful and failed each: their pods hold the reports.
const HISTORY: i32 = 3;

/// Name of the CronJob and the ServiceAccount of the AuditConsumer `name`.
pub fn verifier_name(name: &str) -> String {
    format!("{name}-{APP_NAME}")
}

/// The labels of the verifier's objects and pods.
pub fn verifier_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (NAME_LABEL.to_owned(), APP_NAME.to_owned()),
        (INSTANCE_LABEL.to_owned(), name.to_owned()),
        (
            MANAGED_BY_LABEL.to_owned(),
            crate::CONTROLLER_NAME.to_owned(),
        ),
    ])
}

/// The selector of the verifier's pods, as a string for a list request.
pub fn verifier_selector(name: &str) -> String {
    format!("{NAME_LABEL}={APP_NAME},{INSTANCE_LABEL}={name}")
}

fn verifier_metadata(valid: &ValidConsumer) -> ObjectMeta {
    ObjectMeta {
        name: Some(verifier_name(&valid.name)),
        namespace: valid.namespace.clone(),
        labels: Some(verifier_labels(&valid.name)),
        owner_references: valid.owner.clone().map(|owner| vec![owner]),
        ..ObjectMeta::default()
    }
}

/// What a verification needs: an archive with a schedule, and integrity (the CRD requires
/// both together).
fn scheduled(valid: &ValidConsumer) -> Option<(&ValidArchive, &ValidIntegrity)> {
    let archive = valid.archive.as_ref()?;
    archive.verification.as_ref()?;
    Some((archive, valid.integrity.as_ref()?))
}

/// The verifier's ServiceAccount: no token, no RBAC; a workload identity may map it to a
/// read-only role of the store.
pub fn service_account(valid: &ValidConsumer) -> Option<ServiceAccount> {
    let (archive, _) = scheduled(valid)?;
    let annotations = &archive.verification.as_ref()?.service_account_annotations;
    let mut metadata = verifier_metadata(valid);
    metadata.annotations = (!annotations.is_empty()).then(|| annotations.clone());
    Some(ServiceAccount {
        metadata,
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    })
}

/// The CronJob, or `None` without a scheduled verification. `since` is the previous run's
/// `verifiedThrough`: the first run checks the whole archive.
pub fn cron_job(valid: &ValidConsumer, since: Option<&str>) -> Option<CronJob> {
    let (archive, _) = scheduled(valid)?;
    let settings = archive.verification.as_ref()?;
    let mut files = SecretFiles::default();
    files.add_connection(valid);
    files.add_archive(
        settings.credentials_secret_ref.as_ref(),
        archive.ca.as_ref(),
    );
    let args = args(valid, std::mem::take(&mut files.flags), since)?;
    let container = Container {
        name: CONTAINER_NAME.to_owned(),
        image: Some(valid.image.clone()),
        command: Some(vec![COMMAND.to_owned()]),
        args: Some(args),
        resources: Some(settings.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(restricted_container()),
        volume_mounts: non_empty(&files.mounts),
        termination_message_path: Some(TERMINATION_MESSAGE_PATH.to_owned()),
        termination_message_policy: Some(TERMINATION_MESSAGE_POLICY.to_owned()),
        ..Container::default()
    };
    let pod = PodSpec {
        containers: vec![container],
        restart_policy: Some("Never".to_owned()),
        service_account_name: Some(verifier_name(&valid.name)),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        security_context: Some(restricted_pod()),
        volumes: non_empty(&files.volumes),
        node_selector: super::deployment::non_empty_map(&valid.pod.node_selector),
        tolerations: non_empty(&valid.pod.tolerations),
        priority_class_name: valid.pod.priority_class_name.clone(),
        ..PodSpec::default()
    };
    let labels = verifier_labels(&valid.name);
    Some(CronJob {
        metadata: verifier_metadata(valid),
        spec: CronJobSpec {
            schedule: settings.schedule.clone(),
            time_zone: settings.time_zone.clone(),
            // One run at a time: each starts where the previous one ended.
            concurrency_policy: Some("Forbid".to_owned()),
            // A run missed by more than an hour waits for the next; it covers the gap.
            starting_deadline_seconds: Some(3600),
            successful_jobs_history_limit: Some(HISTORY),
            failed_jobs_history_limit: Some(HISTORY),
            job_template: JobTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels.clone()),
                    ..ObjectMeta::default()
                }),
                spec: Some(job_spec(labels, pod)),
            },
            ..CronJobSpec::default()
        },
        status: None,
    })
}

/// One run: retried when the store or NATS could not be reached, never after a finding.
fn job_spec(labels: BTreeMap<String, String>, pod: PodSpec) -> JobSpec {
    JobSpec {
        // A store or NATS not reachable is tried again; a finding is final.
        backoff_limit: Some(2),
        pod_failure_policy: Some(PodFailurePolicy {
            rules: vec![PodFailurePolicyRule {
                action: "FailJob".to_owned(),
                on_exit_codes: Some(PodFailurePolicyOnExitCodesRequirement {
                    container_name: Some(CONTAINER_NAME.to_owned()),
                    operator: "In".to_owned(),
                    values: vec![EXIT_PROBLEMS],
                }),
                on_pod_conditions: None,
            }],
        }),
        active_deadline_seconds: Some(ACTIVE_DEADLINE_SECONDS),
        template: PodTemplateSpec {
            metadata: Some(ObjectMeta {
                labels: Some(labels),
                annotations: Some(BTreeMap::from([(
                    "kubectl.kubernetes.io/default-container".to_owned(),
                    CONTAINER_NAME.to_owned(),
                )])),
                ..ObjectMeta::default()
            }),
            spec: Some(pod),
        },
        ..JobSpec::default()
    }
}

/// `audit-consumer verify`'s command line: this consumer's part of the archive, its witnessed
/// heads, and the report where Kubernetes keeps it.
fn args(
    valid: &ValidConsumer,
    secret_flags: Vec<Flag>,
    since: Option<&str>,
) -> Option<Vec<String>> {
    let (archive, integrity) = scheduled(valid)?;
    let mut flags = vec![Flag::NatsUrl(valid.connection.servers.clone())];
    flags.extend(valid.connection.js_domain.clone().map(Flag::JsDomain));
    flags.extend([
        Flag::IntegrityStream(integrity.witness_stream.clone()),
        Flag::IntegritySubject(integrity.subject.clone()),
        Flag::ArchiveRegion(archive.region.clone()),
    ]);
    flags.extend(archive.endpoint.clone().map(Flag::ArchiveEndpoint));
    if archive.force_path_style {
        flags.push(Flag::ArchivePathStyle);
    }
    flags.extend(secret_flags);
    let mut args = vec!["verify".to_owned()];
    args.extend(flags.iter().map(ToString::to_string));
    args.extend([
        format!(
            "--archive=s3://{}/{}",
            archive.bucket,
            consumer_prefix(valid, archive)
        ),
        format!("--public-key={}", integrity.key.public_key),
        format!("--report-file={TERMINATION_MESSAGE_PATH}"),
        // The newest segments' heads follow within the checkpoint interval, and the next run
        // reads those segments again.
        "--unwitnessed-ok".to_owned(),
    ]);
    args.extend(since.map(|since| format!("--since={since}")));
    let accepted = &archive.verification.as_ref()?.accepted_findings;
    args.extend(
        accepted
            .iter()
            .map(|accepted| format!("--accept-finding={}", accepted.finding)),
    );
    Some(args)
}

/// The key prefix under which this consumer's pods store their segments:
/// `<prefix><stream>/<consumer>/`, spelled as the consumer spells it.
fn consumer_prefix(valid: &ValidConsumer, archive: &ValidArchive) -> String {
    let day = Naming::day_prefix(&archive.prefix, &valid.stream_name, &valid.durable_name, 0);
    // The day part of a key is `<yyyy>/<mm>/<dd>/`; what is before it is the consumer's.
    day.strip_suffix("1970/01/01/").unwrap_or(&day).to_owned()
}

fn default_resources() -> ResourceRequirements {
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_owned(), Quantity(cpu.to_owned())),
            ("memory".to_owned(), Quantity(memory.to_owned())),
        ])
    };
    ResourceRequirements {
        requests: Some(quantities("50m", "128Mi")),
        limits: Some(quantities("1", "512Mi")),
        ..ResourceRequirements::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumer::validate::tests::{CONNECTION, MINIMAL, valid_with, validated};

    /// An archive with a verification; integrity as the CRD requires (the key as read).
    fn verified() -> ValidConsumer {
        let key = nkeys::KeyPair::new_account();
        ValidConsumer {
            integrity: Some(crate::consumer::integrity::tests::valid_integrity(&key)),
            ..valid_with(&format!("{MINIMAL}{VERIFIED}"), CONNECTION).unwrap()
        }
    }

    const VERIFIED: &str = "archive:
  bucket: trail
  region: eu-central-1
  endpoint: http://s3.storage:9000
  forcePathStyle: true
  prefix: audit/
  credentialsSecretRef: {name: writer}
  caSecretRef: {name: store-ca, key: ca.crt}
  verification:
    schedule: '5 * * * *'
    credentialsSecretRef: {name: reader}
";

    fn args_of(job: &CronJob) -> Vec<String> {
        let pod = job.spec.job_template.spec.as_ref().unwrap();
        let spec = pod.template.spec.as_ref().unwrap();
        spec.containers[0].args.clone().unwrap()
    }

    #[test]
    fn a_workload_identity_annotates_the_verifiers_account_only() {
        let key = nkeys::KeyPair::new_account();
        let yaml = format!(
            "{MINIMAL}{VERIFIED}    serviceAccountAnnotations:\n      eks.amazonaws.com/role-arn: arn:aws:iam::111122223333:role/audit-reader\n"
        );
        let valid = ValidConsumer {
            integrity: Some(crate::consumer::integrity::tests::valid_integrity(&key)),
            ..valid_with(&yaml, CONNECTION).unwrap()
        };
        let account = service_account(&valid).unwrap();
        let annotations = account.metadata.annotations.unwrap();
        assert_eq!(
            annotations["eks.amazonaws.com/role-arn"],
            "arn:aws:iam::111122223333:role/audit-reader"
        );
        assert_eq!(account.automount_service_account_token, Some(false));
        let writer = crate::consumer::build::service_account::build(&valid);
        assert_eq!(writer.metadata.annotations, None);
        assert_eq!(
            service_account(&verified()).unwrap().metadata.annotations,
            None
        );
    }

    #[test]
    fn no_verification_no_objects() {
        let valid = validated(MINIMAL);
        assert!(cron_job(&valid, None).is_none());
        assert!(service_account(&valid).is_none());
    }

    #[test]
    fn the_verifier_checks_this_consumers_part_with_read_only_credentials() {
        let valid = verified();
        let job = cron_job(&valid, None).unwrap();
        let spec = &job.spec;
        assert_eq!(spec.schedule, "5 * * * *");
        assert_eq!(spec.concurrency_policy.as_deref(), Some("Forbid"));
        let args = args_of(&job);
        assert_eq!(args[0], "verify");
        let has = |arg: &str| args.iter().any(|a| a == arg);
        assert!(
            has("--archive=s3://trail/audit/orders_audit/orders_reader/")
                || has("--archive=s3://trail/audit/orders-audit/orders-reader/"),
            "{args:?}"
        );
        assert!(has("--report-file=/dev/termination-log"));
        assert!(has("--unwitnessed-ok"));
        assert!(has("--archive-path-style"));
        assert!(
            has(
                "--archive-access-key-id-file=/etc/audit-consumer/nats/archive-credentials/access-key-id"
            ),
            "{args:?}"
        );
        assert!(!args.iter().any(|a| a.starts_with("--since")));
        let pod = spec
            .job_template
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap();
        let volumes = pod.volumes.as_ref().unwrap();
        let secrets: Vec<&str> = volumes
            .iter()
            .filter_map(|v| v.secret.as_ref()?.secret_name.as_deref())
            .collect();
        assert!(secrets.contains(&"reader"), "{secrets:?}");
        assert!(secrets.contains(&"store-ca"), "{secrets:?}");
        assert!(
            !secrets.contains(&"writer"),
            "never the writer's key pair: {secrets:?}"
        );
        assert!(
            !secrets.contains(&"signer"),
            "never the signing key: {secrets:?}"
        );
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(
            pod.service_account_name.as_deref(),
            Some("orders.reader-audit-verify")
        );
        let security = pod.containers[0].security_context.as_ref().unwrap();
        assert_eq!(security.read_only_root_filesystem, Some(true));
        assert_eq!(security.allow_privilege_escalation, Some(false));
        let labels = pod_labels(&job);
        assert_eq!(labels.get(NAME_LABEL).map(String::as_str), Some(APP_NAME));
    }

    fn pod_labels(job: &CronJob) -> BTreeMap<String, String> {
        let job_spec = job.spec.job_template.spec.as_ref().unwrap();
        job_spec
            .template
            .metadata
            .as_ref()
            .unwrap()
            .labels
            .clone()
            .unwrap()
    }

    #[test]
    fn a_later_run_starts_where_the_previous_ended() {
        let valid = verified();
        let job = cron_job(&valid, Some("2026-12-04T10:05:00Z")).unwrap();
        assert!(args_of(&job).contains(&"--since=2026-12-04T10:05:00Z".to_owned()));
    }

    #[test]
    fn accepted_findings_are_passed_to_every_run() {
        let key = nkeys::KeyPair::new_account();
        let finding =
            "run=pod-a_20261204T090000.000000000Z finding=missing_segments numbers=3 after=audit/x";
        let yaml = format!(
            "{MINIMAL}{VERIFIED}    acceptedFindings:\n    - finding: {finding:?}\n      reason: INC-42, deleted by a cleanup job\n"
        );
        let valid = ValidConsumer {
            integrity: Some(crate::consumer::integrity::tests::valid_integrity(&key)),
            ..valid_with(&yaml, CONNECTION).unwrap()
        };
        let args = args_of(&cron_job(&valid, None).unwrap());
        assert!(
            args.contains(&format!("--accept-finding={finding}")),
            "{args:?}"
        );
        assert!(!args.iter().any(|arg| arg.contains("INC-42")));
        let parsed =
            <audit_consumer::integrity::verify_command::VerifyArgs as clap::Parser>::try_parse_from(
                std::iter::once("audit-consumer verify".to_owned()).chain(args.into_iter().skip(1)),
            )
            .unwrap();
        assert_eq!(parsed.accept_finding, [finding]);
    }

    #[test]
    fn the_command_line_is_one_verify_accepts() {
        let valid = verified();
        let job = cron_job(&valid, Some("2026-12-04T10:05:00Z")).unwrap();
        let args = args_of(&job);
        let parsed =
            <audit_consumer::integrity::verify_command::VerifyArgs as clap::Parser>::try_parse_from(
                std::iter::once("audit-consumer verify".to_owned()).chain(args.into_iter().skip(1)),
            );
        assert!(parsed.is_ok(), "{parsed:?}");
    }
}
