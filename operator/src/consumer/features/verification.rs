//! The archive's scheduled verification (`spec.archive.verification`), as a [`Feature`]: the
//! CronJob's finished pods leave `audit-consumer verify`'s report as their termination
//! message; the newest one becomes `status.archive.verification`, the condition
//! `ArchiveVerified`, a Warning when that turns False, and the
//! `audit_operator_archive_verification_problems` metric the shipped alert watches.
//!
//! A run that found problems does not move `verifiedThrough`: the next run checks the same
//! stretch again, so the finding stays visible until someone looks into it. The CronJob itself
//! is a workload object (see `build::verification`), applied with the others.

use std::time::Duration;

use k8s_openapi::{api::core::v1::Pod, apimachinery::pkg::apis::meta::v1::Time, jiff::Timestamp};
use kube::{Api, ResourceExt, api::ListParams};
use serde::Deserialize;
use tracing::debug;

use super::{Feature, remove_condition, set_condition, turned_false};
use crate::{
    conditions::{Status, Value},
    consumer::{Context, build::verification},
    crd::consumer::{ArchiveStatus, AuditConsumer, AuditConsumerStatus, VerificationStatus},
    metrics::Metrics,
    report::Notice,
};

pub const ARCHIVE_VERIFIED: &str = "ArchiveVerified";
pub const ARCHIVE_PROBLEMS: &str = "ArchiveProblems";
pub const VERIFICATION_FAILED: &str = "VerificationFailed";
const NOT_VERIFIED_YET: &str = "NotVerifiedYet";
/// How soon a consumer whose verification is running is looked at again.
const RUNNING_RECHECK: Duration = Duration::from_secs(20);
/// Findings quoted in the condition's message; the status holds all the report has.
const FINDINGS_IN_MESSAGE: usize = 3;

/// The report `audit-consumer verify --report-file` writes.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct RunReport {
    /// `complete`, `unwitnessed`, `problems` or `failed`.
    pub verdict: String,
    pub verified_through: Option<String>,
    pub segments: u64,
    pub chains: u64,
    pub complete: u64,
    pub unwitnessed: u64,
    pub problems: u64,
    pub rejected_heads: u64,
    pub missing_segments: u64,
    pub accepted: u64,
    pub findings: Vec<String>,
    pub findings_omitted: u64,
    pub error: Option<String>,
}

/// One finished verification pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedRun {
    pub finished: Timestamp,
    pub exit_code: i32,
    /// The termination message, unparsed.
    pub message: String,
}

/// What the operator saw of the verification this time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verification {
    pub schedule: String,
    /// The newest finished run, if any pod of one is left; `None` also when the pods could
    /// not be listed (the status then stays as it was).
    pub newest: Option<FinishedRun>,
    /// A run is under way.
    pub running: bool,
}

/// The feature: what was seen, or `None` when the consumer asks for no verification (then
/// neither its condition nor its status stays).
pub struct Verifying(pub Option<Verification>);

/// Lists the verifier's pods, when `consumer` asks for a verification (I/O).
pub async fn observe(consumer: &AuditConsumer, ctx: &Context) -> Verifying {
    Verifying(observe_runs(consumer, ctx).await)
}

async fn observe_runs(consumer: &AuditConsumer, ctx: &Context) -> Option<Verification> {
    let settings = consumer.spec.archive.as_ref()?.verification.as_ref()?;
    let namespace = consumer.namespace().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    let selector = verification::verifier_selector(&consumer.name_any());
    let pods = match api.list(&ListParams::default().labels(&selector)).await {
        Ok(pods) => pods.items,
        Err(error) => {
            debug!(%error, "cannot list the verification pods; the status stays as it was");
            Vec::new()
        }
    };
    Some(Verification {
        schedule: settings.schedule.clone(),
        newest: pods
            .iter()
            .filter_map(finished_run)
            .max_by_key(|run| run.finished),
        running: pods.iter().any(|pod| {
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            matches!(phase, Some("Pending" | "Running"))
        }),
    })
}

/// The verifier container's end, when it has ended (pure).
pub fn finished_run(pod: &Pod) -> Option<FinishedRun> {
    let statuses = pod.status.as_ref()?.container_statuses.as_ref()?;
    let container = statuses
        .iter()
        .find(|s| s.name == verification::CONTAINER_NAME)?;
    let terminated = container.state.as_ref()?.terminated.as_ref()?;
    Some(FinishedRun {
        finished: terminated.finished_at.as_ref()?.0,
        exit_code: terminated.exit_code,
        message: terminated.message.clone().unwrap_or_default(),
    })
}

/// The status a finished run gives (pure). A run that did not leave a readable report (killed,
/// out of memory) failed.
pub fn run_status(run: &FinishedRun, previous: Option<&VerificationStatus>) -> VerificationStatus {
    let report: Option<RunReport> = serde_json::from_str(run.message.trim()).ok();
    let kept_through = previous.and_then(|p| p.verified_through.clone());
    let last_run_time = run.finished.to_string();
    let Some(report) = report.filter(|r| r.verdict != "failed") else {
        let reason = serde_json::from_str::<RunReport>(run.message.trim())
            .ok()
            .and_then(|r| r.error)
            .unwrap_or_else(|| {
                format!(
                    "the verification pod ended with exit status {} and no report",
                    run.exit_code
                )
            });
        return VerificationStatus {
            last_run_time,
            result: "Failed".to_owned(),
            verified_through: kept_through,
            findings: vec![reason],
            ..VerificationStatus::default()
        };
    };
    let problems = report.problems + report.rejected_heads + report.missing_segments;
    let clean = problems == 0 && report.verdict != "problems";
    let mut findings = report.findings;
    if report.findings_omitted > 0 {
        findings.push(format!("... and {} more", report.findings_omitted));
    }
    VerificationStatus {
        last_run_time,
        result: if clean { "Complete" } else { "Problems" }.to_owned(),
        verified_through: if clean {
            report.verified_through.or(kept_through)
        } else {
            kept_through
        },
        segments: report.segments,
        chains: report.chains,
        chains_complete: report.complete,
        problems: problems.max(u64::from(!clean)),
        accepted: report.accepted,
        findings,
    }
}

/// `ArchiveVerified` from the last run's status (pure).
pub fn verified_condition(last: Option<&VerificationStatus>, schedule: &str) -> Value {
    let Some(last) = last else {
        return Value::new(
            Status::Unknown,
            NOT_VERIFIED_YET,
            format!("no verification run has finished yet (schedule {schedule:?})"),
        );
    };
    let through = last.verified_through.as_deref().unwrap_or("nothing yet");
    let quoted = last
        .findings
        .iter()
        .take(FINDINGS_IN_MESSAGE)
        .cloned()
        .collect::<Vec<_>>()
        .join("; ");
    match last.result.as_str() {
        "Complete" => Value::new(
            Status::True,
            "Verified",
            format!(
                "verified through {through}: {} chain(s), {} complete, {} segment(s) read at {}{}",
                last.chains,
                last.chains_complete,
                last.segments,
                last.last_run_time,
                match last.accepted {
                    0 => String::new(),
                    accepted => format!(
                        "; {accepted} finding(s) accepted in spec.archive.verification.acceptedFindings"
                    ),
                }
            ),
        ),
        "Problems" => Value::new(
            Status::False,
            ARCHIVE_PROBLEMS,
            format!(
                "the verification at {} found {} problem(s) in the archive after {through}: {quoted}; see status.archive.verification and the runbook AuditArchiveVerificationProblems",
                last.last_run_time, last.problems
            ),
        ),
        _ => Value::new(
            Status::False,
            VERIFICATION_FAILED,
            format!(
                "the verification at {} could not check the archive: {quoted}; verified through {through}",
                last.last_run_time
            ),
        ),
    }
}

impl Feature for Verification {
    fn contribute(
        &self,
        previous: &AuditConsumerStatus,
        status: &mut AuditConsumerStatus,
        now: &Time,
    ) {
        let before = previous
            .archive
            .as_ref()
            .and_then(|a| a.verification.as_ref());
        let newer = self.newest.as_ref().filter(|run| {
            before.is_none_or(|b| {
                b.last_run_time
                    .parse::<Timestamp>()
                    .is_ok_and(|seen| run.finished > seen)
                    || b.last_run_time.parse::<Timestamp>().is_err()
            })
        });
        let last = match newer {
            Some(run) => Some(run_status(run, before)),
            None => before.cloned(),
        };
        let value = verified_condition(last.as_ref(), &self.schedule);
        set_condition(previous, status, ARCHIVE_VERIFIED, value, now);
        status.archive = Some(ArchiveStatus { verification: last });
    }

    fn notices(&self, previous: &AuditConsumerStatus, status: &AuditConsumerStatus) -> Vec<Notice> {
        let Some(condition) = turned_false(previous, status, ARCHIVE_VERIFIED) else {
            return Vec::new();
        };
        let reason = if condition.reason == ARCHIVE_PROBLEMS {
            ARCHIVE_PROBLEMS
        } else {
            VERIFICATION_FAILED
        };
        vec![Notice::warning(reason, condition.message)]
    }

    fn requeue(&self) -> Option<Duration> {
        self.running.then_some(RUNNING_RECHECK)
    }

    fn record(&self, metrics: &Metrics, consumer: &AuditConsumer, status: &AuditConsumerStatus) {
        let Some(last) = status
            .archive
            .as_ref()
            .and_then(|a| a.verification.as_ref())
        else {
            return;
        };
        let problems = match last.result.as_str() {
            "Failed" => -1,
            _ => i64::try_from(last.problems).unwrap_or(i64::MAX),
        };
        let through = last
            .verified_through
            .as_deref()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map(|t| t.as_second());
        metrics.set_archive_verification(
            &consumer.namespace().unwrap_or_default(),
            &consumer.name_any(),
            problems,
            through,
        );
    }
}

impl Feature for Verifying {
    fn contribute(
        &self,
        previous: &AuditConsumerStatus,
        status: &mut AuditConsumerStatus,
        now: &Time,
    ) {
        match &self.0 {
            Some(verification) => verification.contribute(previous, status, now),
            None => {
                remove_condition(status, ARCHIVE_VERIFIED);
                status.archive = None;
            }
        }
    }

    fn notices(&self, previous: &AuditConsumerStatus, status: &AuditConsumerStatus) -> Vec<Notice> {
        self.0
            .as_ref()
            .map_or_else(Vec::new, |v| v.notices(previous, status))
    }

    fn requeue(&self) -> Option<Duration> {
        self.0.as_ref().and_then(Feature::requeue)
    }

    fn record(&self, metrics: &Metrics, consumer: &AuditConsumer, status: &AuditConsumerStatus) {
        if let Some(verification) = &self.0 {
            verification.record(metrics, consumer, status);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn second(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    fn run(at: i64, exit_code: i32, message: &str) -> FinishedRun {
        FinishedRun {
            finished: second(at),
            exit_code,
            message: message.to_owned(),
        }
    }

    const COMPLETE: &str = r#"{"verdict":"complete","since":null,"verifiedThrough":"2026-12-04T10:00:00Z","segments":12,"chains":2,"complete":2,"unwitnessed":0,"problems":0,"rejectedHeads":0,"missingSegments":0,"findings":[]}"#;
    const MISSING: &str = r#"{"verdict":"problems","since":"2026-12-04T10:00:00Z","verifiedThrough":"2026-12-04T11:00:00Z","segments":3,"chains":2,"complete":1,"unwitnessed":0,"problems":1,"rejectedHeads":0,"missingSegments":1,"findings":["run=pod-a_20261204T090000.000000000Z finding=missing_segments numbers=3-3 after=audit/x/000002"],"findingsOmitted":2}"#;

    fn verification(newest: Option<FinishedRun>) -> Verification {
        Verification {
            schedule: "17 * * * *".into(),
            newest,
            running: false,
        }
    }

    fn contributed(
        previous: &AuditConsumerStatus,
        seen: &Verification,
        now: i64,
    ) -> AuditConsumerStatus {
        let mut status = previous.clone();
        seen.contribute(previous, &mut status, &Time(second(now)));
        status
    }

    fn condition(
        status: &AuditConsumerStatus,
    ) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        status
            .conditions
            .iter()
            .find(|c| c.type_ == ARCHIVE_VERIFIED)
            .unwrap()
    }

    #[test]
    fn before_any_run_the_condition_is_unknown() {
        let status = contributed(&AuditConsumerStatus::default(), &verification(None), 1);
        assert_eq!(condition(&status).status, "Unknown");
        assert_eq!(condition(&status).reason, NOT_VERIFIED_YET);
    }

    #[test]
    fn a_complete_run_moves_verified_through_and_a_finding_holds_it() {
        let first = contributed(
            &AuditConsumerStatus::default(),
            &verification(Some(run(100, 0, COMPLETE))),
            101,
        );
        let last = first
            .archive
            .as_ref()
            .unwrap()
            .verification
            .as_ref()
            .unwrap();
        assert_eq!(
            last.verified_through.as_deref(),
            Some("2026-12-04T10:00:00Z")
        );
        assert_eq!(
            (last.chains, last.chains_complete, last.segments),
            (2, 2, 12)
        );
        assert_eq!(condition(&first).status, "True");
        let seen = verification(Some(run(100, 0, COMPLETE)));
        assert!(
            seen.notices(&AuditConsumerStatus::default(), &first)
                .is_empty()
        );

        let found = verification(Some(run(200, 1, MISSING)));
        let second_run = contributed(&first, &found, 201);
        let last = second_run
            .archive
            .as_ref()
            .unwrap()
            .verification
            .as_ref()
            .unwrap();
        assert_eq!(last.result, "Problems");
        assert_eq!(
            last.problems, 2,
            "the missing segment and the problem chain"
        );
        assert_eq!(
            last.verified_through.as_deref(),
            Some("2026-12-04T10:00:00Z"),
            "the next run checks the same stretch again"
        );
        assert_eq!(last.findings.len(), 2);
        assert!(last.findings[1].contains("2 more"));
        let held = condition(&second_run);
        assert_eq!(
            (held.status.as_str(), held.reason.as_str()),
            ("False", ARCHIVE_PROBLEMS)
        );
        assert!(
            held.message.contains("missing_segments numbers=3-3"),
            "{}",
            held.message
        );
        let notices = found.notices(&first, &second_run);
        assert_eq!(notices.len(), 1);
        assert_eq!(notices[0].reason, ARCHIVE_PROBLEMS);
        // The same run seen again: no change, no second Warning.
        let again = contributed(&second_run, &found, 260);
        assert_eq!(again, second_run);
        assert!(found.notices(&second_run, &again).is_empty());
    }

    #[test]
    fn a_run_without_a_report_failed_and_says_how_it_ended() {
        let status = contributed(
            &AuditConsumerStatus::default(),
            &verification(Some(run(100, 137, ""))),
            101,
        );
        let last = status
            .archive
            .as_ref()
            .unwrap()
            .verification
            .as_ref()
            .unwrap();
        assert_eq!(last.result, "Failed");
        assert!(last.findings[0].contains("exit status 137"));
        assert_eq!(condition(&status).reason, VERIFICATION_FAILED);
        let failed =
            r#"{"verdict":"failed","error":"cannot list s3://trail/audit/: AccessDenied"}"#;
        let status = contributed(
            &AuditConsumerStatus::default(),
            &verification(Some(run(100, 2, failed))),
            101,
        );
        assert!(condition(&status).message.contains("AccessDenied"));
    }

    #[test]
    fn an_older_run_than_the_status_knows_changes_nothing() {
        let first = contributed(
            &AuditConsumerStatus::default(),
            &verification(Some(run(300, 0, COMPLETE))),
            301,
        );
        let older = contributed(&first, &verification(Some(run(200, 1, MISSING))), 302);
        assert_eq!(older, first);
    }
}
