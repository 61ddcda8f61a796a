//! One pod's life on the local kubelet, from binding to removal: a task per pod, as a
//! kubelet has a pod worker per pod.
//!
//! The worker binds a pending pod to the node (standing in for the scheduler), starts its
//! container, restarts it per `restartPolicy` with a kubelet's crash-loop back-off, runs its
//! startup, liveness and readiness probes, and writes the pod's status whenever it changes.
//! When the pod is deleted it stops the container (SIGTERM, then SIGKILL after the grace
//! period) and finishes the deletion with grace period 0; on a node shutdown it stops the
//! container and marks the pod `Failed`, as a kubelet's graceful node shutdown does.

use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{
    Binding, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ObjectReference, Pod, PodCondition, PodStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams, PostParams, Preconditions};
use serde_json::json;
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use super::Context;
use super::container::{PreparedContainer, prepare};
use super::probe::Prober;
use super::status::{Observed, TransitionTimes, container_status, now, pod_status};

/// How often a running container is checked for having exited, at most.
const POLL: Duration = Duration::from_millis(200);
/// A kubelet's crash-loop back-off: 10 s, doubling, at most 5 min.
const BACKOFF_BASE: Duration = Duration::from_secs(10);
const BACKOFF_MAX: Duration = Duration::from_secs(300);
/// How long before a failed start (a missing Secret, say) is tried again.
const START_RETRY: Duration = Duration::from_secs(5);

/// A running container's probes.
struct Probes {
    startup: Option<Prober>,
    liveness: Option<Prober>,
    readiness: Option<Prober>,
}

enum Run {
    /// Not running: not started yet, or backing off before a restart.
    Waiting {
        reason: &'static str,
        message: Option<String>,
        until: Instant,
    },
    Running {
        started_at: Time,
        pid: u32,
        probes: Box<Probes>,
        started: bool,
    },
    /// Exited for good (the restart policy says no restart).
    Terminated(ContainerStateTerminated),
}

pub(super) struct PodWorker {
    ctx: Arc<Context>,
    uid: String,
    name: String,
    prepared: Option<PreparedContainer>,
    run: Run,
    restart_count: i32,
    ever_started: bool,
    last_state: Option<ContainerState>,
    start_time: Option<Time>,
    times: TransitionTimes,
    written: Option<PodStatus>,
    last_bind_attempt: Option<Instant>,
}

impl PodWorker {
    pub fn new(ctx: Arc<Context>, pod: &Pod) -> Self {
        Self {
            ctx,
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            prepared: None,
            run: Run::Waiting {
                reason: "ContainerCreating",
                message: None,
                until: Instant::now(),
            },
            restart_count: 0,
            ever_started: false,
            last_state: None,
            start_time: None,
            times: TransitionTimes::default(),
            written: None,
            last_bind_attempt: None,
        }
    }

    /// Runs until the pod is gone from this node. `updates` carries the pod as the API
    /// server has it (`None` once it is deleted there); `node_shutdown` turns true when the
    /// kubelet stops.
    pub async fn run(
        mut self,
        mut updates: watch::Receiver<Option<Pod>>,
        mut node_shutdown: watch::Receiver<bool>,
    ) {
        let mut updates_open = true;
        let mut last_known: Option<Pod> = None;
        loop {
            if *node_shutdown.borrow() {
                self.finish_node_shutdown(last_known.as_ref()).await;
                return;
            }
            let pod = updates.borrow_and_update().clone();
            let Some(pod) = pod else {
                self.finish_gone(last_known.as_ref()).await;
                return;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                self.finish_deleted(&pod).await;
                return;
            }
            match pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) {
                None => self.schedule(&pod).await,
                Some(node) if node == self.ctx.node => self.sync(&pod).await,
                // Bound elsewhere: not this kubelet's pod.
                Some(_) => return,
            }
            last_known = Some(pod);
            let wait = self.next_due();
            tokio::select! {
                changed = updates.changed(), if updates_open => updates_open = changed.is_ok(),
                _ = node_shutdown.changed() => {}
                _ = sleep(wait) => {}
            }
        }
    }

    fn next_due(&self) -> Duration {
        match &self.run {
            Run::Waiting { until, .. } => until.saturating_duration_since(Instant::now()).min(POLL),
            Run::Running { probes, .. } => [&probes.startup, &probes.liveness, &probes.readiness]
                .into_iter()
                .flatten()
                .map(Prober::due_in)
                .fold(POLL, Duration::min),
            Run::Terminated(_) => Duration::from_secs(1),
        }
    }

    /// Stands in for the scheduler: binds the pod to this node if the node fits it.
    async fn schedule(&mut self, pod: &Pod) {
        if self
            .last_bind_attempt
            .is_some_and(|at| at.elapsed() < Duration::from_secs(1))
        {
            return;
        }
        self.last_bind_attempt = Some(Instant::now());
        if let Err(why) = self.ctx.fits(pod) {
            let condition = PodCondition {
                type_: "PodScheduled".to_owned(),
                status: "False".to_owned(),
                reason: Some("Unschedulable".to_owned()),
                message: Some(why),
                ..PodCondition::default()
            };
            let patch = json!({ "status": { "conditions": [condition] } });
            if let Err(e) = self
                .ctx
                .pods
                .patch_status(
                    &self.name,
                    &PatchParams::default(),
                    &Patch::Strategic(&patch),
                )
                .await
            {
                self.ctx.note_api_error(
                    &self.uid,
                    format!("reporting pod {} unschedulable: {e}", self.name),
                );
            }
            return;
        }
        let binding = Binding {
            metadata: ObjectMeta {
                name: Some(self.name.clone()),
                uid: Some(self.uid.clone()),
                ..ObjectMeta::default()
            },
            target: ObjectReference {
                api_version: Some("v1".to_owned()),
                kind: Some("Node".to_owned()),
                name: Some(self.ctx.node.clone()),
                ..ObjectReference::default()
            },
        };
        let bound: Result<serde_json::Value, _> = self
            .ctx
            .pods
            .create_subresource("binding", &self.name, &PostParams::default(), &binding)
            .await;
        match bound {
            Ok(_) => {}
            // Already bound, or gone: the watch brings the outcome.
            Err(kube::Error::Api(status)) if matches!(status.code, 404 | 409) => {}
            Err(e) => {
                self.ctx
                    .note_api_error(&self.uid, format!("binding pod {}: {e}", self.name));
            }
        }
    }

    /// Starts, restarts and probes the container, and reports the pod's status.
    async fn sync(&mut self, pod: &Pod) {
        if self.start_time.is_none() {
            self.start_time = Some(now());
            self.ctx.add_record(&self.uid, &self.name);
        }
        match &mut self.run {
            Run::Waiting { until, .. } if Instant::now() >= *until => self.start(pod).await,
            Run::Waiting { .. } | Run::Terminated(_) => {}
            Run::Running { .. } => {
                if let Some(status) = self.ctx.try_wait(&self.uid) {
                    self.exited(pod, status);
                    // A restart without back-off happens now, not after a status saying it waits.
                    if matches!(self.run, Run::Waiting { until, .. } if until <= Instant::now()) {
                        self.start(pod).await;
                    }
                } else {
                    self.probe(pod).await;
                }
            }
        }
        self.write_status(pod, None).await;
    }

    async fn start(&mut self, pod: &Pod) {
        if self.prepared.is_none() {
            let dir = self.ctx.pod_dir(&self.uid);
            match prepare(&self.ctx.binaries, &self.ctx.secrets, pod, &dir).await {
                Ok(prepared) => self.prepared = Some(prepared),
                Err(e) => {
                    let message = format!("{e:#}");
                    self.ctx.note_start_error(&self.uid, message.clone());
                    self.run = Run::Waiting {
                        reason: "CreateContainerConfigError",
                        message: Some(message),
                        until: Instant::now() + START_RETRY,
                    };
                    return;
                }
            }
        }
        let Some(prepared) = &self.prepared else {
            return;
        };
        match prepared.spawn() {
            Ok(child) => {
                let pid = child.id();
                self.ctx.set_process(&self.uid, child);
                if self.ever_started {
                    self.restart_count += 1;
                    self.ctx.set_restart_count(&self.uid, self.restart_count);
                }
                self.ever_started = true;
                let startup = prepared.startup.clone().map(|s| Prober::new(s, false));
                self.run = Run::Running {
                    started_at: now(),
                    pid,
                    started: startup.is_none(),
                    probes: Box::new(Probes {
                        startup,
                        liveness: prepared.liveness.clone().map(|s| Prober::new(s, true)),
                        readiness: prepared.readiness.clone().map(|s| Prober::new(s, false)),
                    }),
                };
            }
            Err(e) => {
                let message = format!("{e:#}");
                self.ctx.note_start_error(&self.uid, message.clone());
                self.run = Run::Waiting {
                    reason: "RunContainerError",
                    message: Some(message),
                    until: Instant::now() + START_RETRY,
                };
            }
        }
    }

    /// Probes as a kubelet does: startup first; liveness and readiness once started. A
    /// failed startup or liveness probe restarts the container.
    async fn probe(&mut self, pod: &Pod) {
        let Run::Running {
            probes, started, ..
        } = &mut self.run
        else {
            return;
        };
        let Probes {
            startup,
            liveness,
            readiness,
        } = probes.as_mut();
        let mut kill = None;
        if !*started && let Some(startup) = startup {
            if startup.tick().await {
                *started = true;
            } else if startup.failure_threshold_reached() {
                kill = Some("startup probe failed");
            }
        }
        if *started && kill.is_none() {
            if let Some(liveness) = liveness
                && !liveness.tick().await
            {
                kill = Some("liveness probe failed");
            }
            if let Some(readiness) = readiness {
                readiness.tick().await;
            }
        }
        let ready = *started && readiness.as_ref().is_none_or(Prober::result);
        self.ctx.set_ready(&self.uid, ready);
        if let Some(why) = kill {
            tracing::info!(pod = %self.name, "{why}: restarting the container");
            let grace = termination_grace(pod);
            if let Some(status) = self.ctx.stop_process(&self.uid, grace).await {
                self.exited(pod, status);
            }
        }
    }

    /// The container exited: restart it per the restart policy, or let the pod end.
    fn exited(&mut self, pod: &Pod, status: ExitStatus) {
        self.ctx.set_ready(&self.uid, false);
        let started_at = match &self.run {
            Run::Running { started_at, .. } => Some(started_at.clone()),
            _ => None,
        };
        let terminated = terminated_state(status, started_at, self.container_id());
        let policy = pod
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            .unwrap_or("Always");
        let restart = match policy {
            "Always" => true,
            "OnFailure" => !status.success(),
            _ => false,
        };
        if restart {
            self.last_state = Some(ContainerState {
                terminated: Some(terminated),
                ..ContainerState::default()
            });
            // The first restart is immediate; then the back-off doubles.
            let delay = match self.restart_count {
                0 => Duration::ZERO,
                n => BACKOFF_BASE
                    .saturating_mul(2u32.saturating_pow(u32::try_from(n - 1).unwrap_or(u32::MAX)))
                    .min(BACKOFF_MAX),
            };
            self.run = Run::Waiting {
                reason: "CrashLoopBackOff",
                message: Some(format!(
                    "back-off {}s restarting failed container={} pod={}",
                    delay.as_secs(),
                    self.prepared.as_ref().map_or("", |p| &p.name),
                    self.name
                )),
                until: Instant::now() + delay,
            };
        } else {
            self.run = Run::Terminated(terminated);
        }
    }

    fn container_id(&self) -> Option<String> {
        match &self.run {
            Run::Running { pid, .. } => Some(format!("local://{pid}")),
            _ => None,
        }
    }

    fn observe(&self, pod: &Pod, ending: Option<(&'static str, &'static str)>) -> Observed {
        let (name, image, image_id) = match &self.prepared {
            Some(p) => (
                p.name.clone(),
                p.image.clone(),
                format!("local://{}", p.binary.display()),
            ),
            None => {
                let container = pod.spec.as_ref().and_then(|s| s.containers.first());
                (
                    container.map(|c| c.name.clone()).unwrap_or_default(),
                    container.and_then(|c| c.image.clone()).unwrap_or_default(),
                    String::new(),
                )
            }
        };
        let (state, started, ready, phase) = match &self.run {
            Run::Waiting {
                reason, message, ..
            } => (
                ContainerState {
                    waiting: Some(ContainerStateWaiting {
                        reason: Some((*reason).to_owned()),
                        message: message.clone(),
                    }),
                    ..ContainerState::default()
                },
                false,
                false,
                if self.ever_started {
                    "Running"
                } else {
                    "Pending"
                },
            ),
            Run::Running {
                started_at,
                started,
                ..
            } => (
                ContainerState {
                    running: Some(ContainerStateRunning {
                        started_at: Some(started_at.clone()),
                    }),
                    ..ContainerState::default()
                },
                *started,
                self.ctx.is_ready(&self.uid),
                "Running",
            ),
            Run::Terminated(terminated) => (
                ContainerState {
                    terminated: Some(terminated.clone()),
                    ..ContainerState::default()
                },
                false,
                false,
                if terminated.exit_code == 0 {
                    "Succeeded"
                } else {
                    "Failed"
                },
            ),
        };
        let mut container = container_status(
            &name,
            &image,
            &image_id,
            state,
            self.last_state.clone(),
            self.restart_count,
            (started, ready),
        );
        container.container_id = self.container_id();
        Observed {
            phase: match ending {
                Some(_) => "Failed",
                None => phase,
            },
            reason: ending,
            start_time: self.start_time.clone().unwrap_or_else(now),
            container,
            generation: pod.metadata.generation,
        }
    }

    /// Writes the pod's status if it changed since the last write.
    async fn write_status(&mut self, pod: &Pod, ending: Option<(&'static str, &'static str)>) {
        if self.start_time.is_none() {
            return;
        }
        let observed = self.observe(pod, ending);
        let status = pod_status(&observed, &mut self.times);
        if self.written.as_ref() == Some(&status) {
            return;
        }
        let patch = json!({ "status": status });
        match self
            .ctx
            .pods
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Strategic(&patch),
            )
            .await
        {
            Ok(_) => self.written = Some(status),
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => self.ctx.note_api_error(
                &self.uid,
                format!("writing the status of pod {}: {e}", self.name),
            ),
        }
    }

    /// Stops the container, if it runs, within `grace`; records how it ended.
    async fn stop(&mut self, grace: Duration) {
        if let Run::Running { .. } = self.run {
            let status = self.ctx.stop_process(&self.uid, grace).await;
            let started_at = match &self.run {
                Run::Running { started_at, .. } => Some(started_at.clone()),
                _ => None,
            };
            let terminated = match status {
                Some(status) => terminated_state(status, started_at, self.container_id()),
                None => ContainerStateTerminated {
                    exit_code: 137,
                    reason: Some("Unknown".to_owned()),
                    ..ContainerStateTerminated::default()
                },
            };
            self.run = Run::Terminated(terminated);
        } else if let Run::Waiting { .. } = self.run {
            // What a kubelet reports for a container that never ran: the pod ends Failed.
            self.run = Run::Terminated(ContainerStateTerminated {
                exit_code: 137,
                reason: Some("ContainerStatusUnknown".to_owned()),
                message: Some("the container was not running when the pod ended".to_owned()),
                ..ContainerStateTerminated::default()
            });
        }
        self.ctx.set_ready(&self.uid, false);
    }

    /// The pod was deleted with a grace period: stop the container within it, report the
    /// final status, and finish the deletion, as a kubelet does.
    async fn finish_deleted(&mut self, pod: &Pod) {
        if self.start_time.is_some() {
            let grace = pod
                .metadata
                .deletion_grace_period_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map_or_else(|| termination_grace(pod), Duration::from_secs);
            self.stop(grace).await;
            self.write_status(pod, None).await;
        }
        let delete = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(self.uid.clone()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.ctx.pods.delete(&self.name, &delete).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if matches!(s.code, 404 | 409) => {}
            Err(e) => self
                .ctx
                .note_api_error(&self.uid, format!("deleting pod {}: {e}", self.name)),
        }
        self.ctx.set_finished(&self.uid);
    }

    /// The pod vanished from the API server without a graceful deletion (`--force`): stop
    /// the container; there is no status left to write.
    async fn finish_gone(&mut self, last_known: Option<&Pod>) {
        let grace = last_known.map_or(Duration::from_secs(30), termination_grace);
        self.stop(grace).await;
        self.ctx.set_finished(&self.uid);
    }

    /// The kubelet stops: stop the container within the pod's grace period and mark the pod
    /// `Failed`, as a kubelet's graceful node shutdown does; the pod stays in the API server.
    async fn finish_node_shutdown(&mut self, last_known: Option<&Pod>) {
        let Some(pod) = last_known else {
            return;
        };
        if self.start_time.is_none() {
            return;
        }
        self.stop(termination_grace(pod)).await;
        self.write_status(
            pod,
            Some((
                "Terminated",
                "Pod was terminated in response to imminent node shutdown.",
            )),
        )
        .await;
        self.ctx.set_finished(&self.uid);
    }
}

fn termination_grace(pod: &Pod) -> Duration {
    Duration::from_secs(
        pod.spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .and_then(|s| u64::try_from(s).ok())
            .unwrap_or(30),
    )
}

fn terminated_state(
    status: ExitStatus,
    started_at: Option<Time>,
    container_id: Option<String>,
) -> ContainerStateTerminated {
    let exit_code = status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1);
    ContainerStateTerminated {
        exit_code,
        signal: status.signal(),
        reason: Some(if exit_code == 0 { "Completed" } else { "Error" }.to_owned()),
        started_at,
        finished_at: Some(now()),
        container_id,
        ..ContainerStateTerminated::default()
    }
}
