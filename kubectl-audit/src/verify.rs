//! `kubectl audit verify NAME`: runs the archive's scheduled verification now. Like `kubectl
//! create job --from=cronjob/<name>-audit-verify`, a Job from the operator's CronJob (same pod,
//! same read-only credentials, owned by the CronJob so it goes with it), followed to its end;
//! its pod's termination message is `audit-consumer verify`'s JSON report, which the
//! operator also reads into `status.archive.verification` (the Job's pods carry the labels it
//! watches), and its exit status becomes ours.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use audit_operator::consumer::build::verification::verifier_name;
use audit_operator::consumer::features::verification::{FinishedRun, RunReport, finished_run};
use audit_operator::crd::AuditConsumer;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use tokio::time::{Instant, sleep};

use crate::cli::{Output, VerifyArgs};
use crate::client::Connection;
use crate::error::{Error, Result};

const POLL: Duration = Duration::from_secs(1);
/// What `kubectl create job --from=cronjob` marks its Jobs with.
const INSTANTIATE_ANNOTATION: &str = "cronjob.kubernetes.io/instantiate";
/// Set by the Job controller on its pods.
const JOB_NAME_LABEL: &str = "batch.kubernetes.io/job-name";
/// A Job's pods carry its name in a label, which holds at most 63 characters; the API server
/// appends 5 random ones to the generated name.
const MAX_GENERATED_PREFIX: usize = 63 - 5;

/// Runs the verification and returns `audit-consumer verify`'s exit status.
pub async fn run(connection: &Connection, args: &VerifyArgs, out: &mut impl Write) -> Result<u8> {
    let namespace = connection.namespace.as_str();
    let client = &connection.client;
    let cron_job = verification_cron_job(client, namespace, &args.name).await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let job = jobs
        .create(&PostParams::default(), &job_from_cron_job(&cron_job))
        .await
        .map_err(Error::kube(format!(
            "creating a Job from CronJob {namespace}/{}",
            cron_job.name_any()
        )))?;
    let job_name = job.name_any();
    eprintln!(
        "job.batch/{job_name} created from cronjob.batch/{}; following it",
        cron_job.name_any()
    );
    let run = follow(client, namespace, &job_name, args.timeout).await?;
    let report: Option<RunReport> = serde_json::from_str(run.message.trim()).ok();
    let text = match (args.output, &report) {
        (Output::Json, Some(_)) => format!("{}\n", run.message.trim()),
        (Output::Text, Some(report)) => render(report, namespace, &args.name, &job_name),
        (_, None) => {
            return Err(Error::NoReport {
                job: job_name,
                namespace: namespace.to_owned(),
                why: format!(
                    "its pod ended with exit status {} and the termination message {:?}",
                    run.exit_code, run.message
                ),
            });
        }
    };
    out.write_all(text.as_bytes()).map_err(Error::Output)?;
    Ok(u8::try_from(run.exit_code).unwrap_or(2))
}

/// The operator's CronJob, once the AuditConsumer asks for a verification.
async fn verification_cron_job(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<CronJob> {
    let consumers: Api<AuditConsumer> = Api::namespaced(client.clone(), namespace);
    let consumer = consumers
        .get_opt(name)
        .await
        .map_err(Error::kube(format!(
            "reading AuditConsumer {namespace}/{name}"
        )))?
        .ok_or_else(|| Error::ConsumerNotFound {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        })?;
    let scheduled = consumer
        .spec
        .archive
        .as_ref()
        .is_some_and(|archive| archive.verification.is_some());
    if !scheduled {
        return Err(Error::NoVerification {
            name: name.to_owned(),
            namespace: namespace.to_owned(),
        });
    }
    let cron_name = verifier_name(name);
    let cron_jobs: Api<CronJob> = Api::namespaced(client.clone(), namespace);
    cron_jobs
        .get_opt(&cron_name)
        .await
        .map_err(Error::kube(format!(
            "reading CronJob {namespace}/{cron_name}"
        )))?
        .ok_or_else(|| Error::NoCronJob {
            cron_job: cron_name,
            consumer: name.to_owned(),
            namespace: namespace.to_owned(),
        })
}

/// The Job `kubectl create job --from=cronjob` makes (pure): the template as it is, owned by
/// the CronJob without blocking its deletion (which would need rights on its finalizers).
pub fn job_from_cron_job(cron_job: &CronJob) -> Job {
    let name = cron_job.name_any();
    let template = cron_job.spec.job_template.clone();
    let template_metadata = template.metadata.unwrap_or_default();
    let mut annotations: BTreeMap<String, String> =
        template_metadata.annotations.unwrap_or_default();
    annotations.insert(INSTANTIATE_ANNOTATION.to_owned(), "manual".to_owned());
    let mut prefix = format!("{name}-manual-");
    if prefix.len() > MAX_GENERATED_PREFIX {
        prefix = format!("{}-", &name[..MAX_GENERATED_PREFIX - 1]);
    }
    Job {
        metadata: ObjectMeta {
            generate_name: Some(prefix),
            namespace: cron_job.namespace(),
            labels: template_metadata.labels,
            annotations: Some(annotations),
            owner_references: Some(vec![OwnerReference {
                api_version: "batch/v1".to_owned(),
                kind: "CronJob".to_owned(),
                name,
                uid: cron_job.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        spec: template.spec,
        status: None,
    }
}

/// Waits until the Job has finished and returns its newest pod's end. A failed attempt that
/// the Job retries is reported on the way.
async fn follow(
    client: &kube::Client,
    namespace: &str,
    job: &str,
    timeout: Duration,
) -> Result<FinishedRun> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + timeout;
    let mut reported_failures = 0;
    loop {
        let current = jobs
            .get(job)
            .await
            .map_err(Error::kube(format!("reading Job {namespace}/{job}")))?;
        let runs = finished_runs(&pods, job).await?;
        for failed in runs
            .iter()
            .filter(|r| r.exit_code != 0)
            .skip(reported_failures)
        {
            eprintln!(
                "a verification pod ended with exit status {}: {}",
                failed.exit_code,
                failed.message.trim()
            );
            reported_failures += 1;
        }
        if let Some(end) = finished(&current) {
            return runs
                .into_iter()
                .max_by_key(|r| r.finished)
                .ok_or_else(|| Error::NoReport {
                    job: job.to_owned(),
                    namespace: namespace.to_owned(),
                    why: end,
                });
        }
        if Instant::now() >= deadline {
            return Err(Error::VerifyTimedOut {
                job: job.to_owned(),
                namespace: namespace.to_owned(),
                timeout,
            });
        }
        sleep(POLL).await;
    }
}

async fn finished_runs(pods: &Api<Pod>, job: &str) -> Result<Vec<FinishedRun>> {
    let mut runs: Vec<FinishedRun> = pods
        .list(&ListParams::default().labels(&format!("{JOB_NAME_LABEL}={job}")))
        .await
        .map_err(Error::kube(format!("listing the pods of Job {job}")))?
        .items
        .iter()
        .filter_map(finished_run)
        .collect();
    runs.sort_by_key(|r| r.finished);
    Ok(runs)
}

/// `Some(how)` once the Job is Complete or Failed.
fn finished(job: &Job) -> Option<String> {
    job.status
        .as_ref()?
        .conditions
        .as_deref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| {
            format!(
                "{} ({}: {})",
                c.type_,
                c.reason.as_deref().unwrap_or("-"),
                c.message.as_deref().unwrap_or("")
            )
        })
}

fn render(report: &RunReport, namespace: &str, consumer: &str, job: &str) -> String {
    let mut text = format!(
        "Archive verification of AuditConsumer {namespace}/{consumer} (Job {job}): {}\n",
        report.verdict
    );
    text += &format!(
        "  segments {}, chains {} ({} complete, {} unwitnessed)\n",
        report.segments, report.chains, report.complete, report.unwitnessed
    );
    text += &format!(
        "  problems {}, rejected heads {}, missing segments {}\n",
        report.problems, report.rejected_heads, report.missing_segments
    );
    if report.accepted > 0 {
        text += &format!(
            "  accepted findings {} (spec.archive.verification.acceptedFindings)\n",
            report.accepted
        );
    }
    // Only a clean run moves the status' verifiedThrough; this is how far this one read.
    text += &format!(
        "  checked through {}\n",
        report.verified_through.as_deref().unwrap_or("-")
    );
    if let Some(error) = &report.error {
        text += &format!("  error: {error}\n");
    }
    if !report.findings.is_empty() {
        text += "  findings:\n";
        for finding in &report.findings {
            text += &format!("    {finding}\n");
        }
    }
    if report.findings_omitted > 0 {
        text += &format!("    ... and {} more\n", report.findings_omitted);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron_job(name: &str) -> CronJob {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "namespace": "ns", "uid": "u-1" },
            "spec": {
                "schedule": "17 * * * *",
                "jobTemplate": {
                    "metadata": { "labels": { "app.kubernetes.io/name": "audit-verify" } },
                    "spec": { "backoffLimit": 2, "template": { "spec": { "containers": [] } } },
                },
            },
        }))
        .unwrap()
    }

    #[test]
    fn the_job_is_the_template_owned_by_the_cron_job() {
        let job = job_from_cron_job(&cron_job("orders-audit-verify"));
        assert_eq!(
            job.metadata.generate_name.as_deref(),
            Some("orders-audit-verify-manual-")
        );
        assert_eq!(
            job.metadata.labels.unwrap()["app.kubernetes.io/name"],
            "audit-verify"
        );
        assert_eq!(
            job.metadata.annotations.unwrap()[INSTANTIATE_ANNOTATION],
            "manual"
        );
        let owner = &job.metadata.owner_references.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("CronJob", "orders-audit-verify", "u-1")
        );
        assert_eq!(owner.controller, Some(true));
        assert_eq!(job.spec.unwrap().backoff_limit, Some(2));
    }

    #[test]
    fn accepted_findings_are_counted_apart_from_problems() {
        let report = RunReport {
            verdict: "complete".into(),
            accepted: 1,
            ..RunReport::default()
        };
        let text = render(&report, "ns", "orders", "orders-audit-verify-manual-x");
        assert!(text.contains("problems 0, "), "{text}");
        assert!(
            text.contains("  accepted findings 1 (spec.archive.verification.acceptedFindings)\n"),
            "{text}"
        );
        let clean = render(&RunReport::default(), "ns", "orders", "job");
        assert!(!clean.contains("accepted"), "{clean}");
    }

    #[test]
    fn a_long_name_still_fits_a_label() {
        let long = format!("{}-audit-verify", "x".repeat(50));
        let prefix = job_from_cron_job(&cron_job(&long))
            .metadata
            .generate_name
            .unwrap();
        assert!(prefix.len() + 5 <= 63, "{prefix}");
    }
}
