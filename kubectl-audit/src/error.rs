//! The plugin's one error type: what went wrong, said so that the user knows what to do.

use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot load the kubeconfig: {0}")]
    Kubeconfig(#[source] kube::config::KubeconfigError),

    #[error("cannot configure the Kubernetes client: {0}")]
    InferConfig(#[source] kube::config::InferConfigError),

    #[error("cannot create the Kubernetes client: {0}")]
    Client(#[source] kube::Error),

    #[error("{action}: {source}")]
    Kube {
        action: String,
        #[source]
        source: kube::Error,
    },

    #[error("no AuditStream or AuditConsumer named {name} in namespace {namespace}")]
    NotFound { name: String, namespace: String },

    #[error("AuditConsumer {namespace}/{name} not found")]
    ConsumerNotFound { name: String, namespace: String },

    #[error(
        "AuditConsumer {namespace}/{name} has no scheduled archive verification to run: set \
         spec.archive (the bucket the pods write) with spec.archive.verification (read-only \
         credentials, schedule) and spec.integrity (the witnessed chain heads it checks \
         against); see docs/archive.md"
    )]
    NoVerification { name: String, namespace: String },

    #[error(
        "the operator has not created CronJob {namespace}/{cron_job} yet; `kubectl audit status \
         {consumer} -n {namespace}` says why"
    )]
    NoCronJob {
        cron_job: String,
        consumer: String,
        namespace: String,
    },

    #[error("not ready after {timeout:?}: {why}")]
    CheckTimedOut { timeout: Duration, why: String },

    #[error(
        "Job {namespace}/{job} did not finish within {timeout:?}; it keeps running (`kubectl get job {job} -n {namespace}`)"
    )]
    VerifyTimedOut {
        job: String,
        namespace: String,
        timeout: Duration,
    },

    #[error("Job {namespace}/{job} ended without a verification report: {why}")]
    NoReport {
        job: String,
        namespace: String,
        why: String,
    },

    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),

    #[error("cannot encode JSON: {0}")]
    Json(#[source] serde_json::Error),
}

impl Error {
    /// Wraps an API error with what the plugin was doing, e.g. `listing AuditConsumers in ns`.
    pub fn kube(action: impl Into<String>) -> impl FnOnce(kube::Error) -> Self {
        let action = action.into();
        move |source| Error::Kube { action, source }
    }

    /// The process exit status: 1 for a check that did not pass, 2 for anything that stopped
    /// the plugin from finding out (as `audit-consumer verify` does).
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::CheckTimedOut { .. } => 1,
            _ => 2,
        }
    }
}
