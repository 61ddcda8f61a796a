//! A small local kubelet for a machine with no kubelet: it registers a Node, binds the
//! pending pods of one namespace to it (there is no scheduler either), runs each pod's
//! container as a local process, and keeps the pods' status true to what runs, so that
//! Deployments report ready replicas and what reads them (the operator) sees real pods.
//!
//! - [`container`]: the container runtime (the pod's command as a local process).
//! - [`probe`]: startup, liveness and readiness probes.
//! - [`worker`]: one pod's life, from binding to removal.
//! - [`status`]: the Pod status reported for what was observed.
//! - [`node`]: the Node object.
//!
//! It never dials anything but 127.0.0.1: a pod's listen address is rewritten to a loopback
//! port, and no pod IP is reported or used.

mod container;
mod node;
mod probe;
mod status;
#[cfg(test)]
mod tests;
mod worker;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use tempfile::TempDir;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use worker::PodWorker;

/// How long dropping a kubelet (a failing test) waits for a container to exit after SIGTERM
/// before SIGKILL, whatever the pod's grace period: a failing test should not hang for it.
const DROP_GRACE: Duration = Duration::from_secs(10);

/// Configures a [`Kubelet`] before it starts.
pub struct KubeletBuilder {
    client: kube::Client,
    namespace: String,
    node: String,
    binaries: BTreeMap<String, PathBuf>,
}

impl KubeletBuilder {
    /// Declares that the image's `image_path` is the local file `local`.
    pub fn binary(mut self, image_path: &str, local: impl Into<PathBuf>) -> Self {
        self.binaries.insert(image_path.to_owned(), local.into());
        self
    }

    /// The Node's name; `local-kubelet` unless set. Kubelets that run at the same time in one
    /// control plane should have names of their own: each reports its Node's readiness.
    pub fn node_name(mut self, name: &str) -> Self {
        name.clone_into(&mut self.node);
        self
    }

    /// Registers the Node and starts watching the namespace's pods. The kubelet's tasks run
    /// on the current tokio runtime, and its containers die with the thread that started
    /// them, so with a test's runtime they never outlive the test.
    pub async fn start(self) -> anyhow::Result<Kubelet> {
        node::register(&self.client, &self.node).await?;
        let dir = tempfile::Builder::new()
            .prefix(&format!("audit-kubelet-{}-", self.namespace))
            .tempdir()?;
        // Traversable by the pods' users, as a kubelet's pod directories are.
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let node_labels = BTreeMap::from([
            ("kubernetes.io/hostname".to_owned(), self.node.clone()),
            ("kubernetes.io/os".to_owned(), "linux".to_owned()),
            ("kubernetes.io/arch".to_owned(), node::arch().to_owned()),
        ]);
        let ctx = Arc::new(Context {
            pods: Api::namespaced(self.client.clone(), &self.namespace),
            secrets: Api::namespaced(self.client.clone(), &self.namespace),
            node: self.node.clone(),
            node_labels,
            binaries: self.binaries,
            dir: dir.path().to_owned(),
            records: Mutex::new(Vec::new()),
            dropping: AtomicBool::new(false),
        });
        let (shutdown, node_shutdown) = watch::channel(false);
        let dispatcher = tokio::spawn(dispatch(ctx.clone(), node_shutdown));
        Ok(Kubelet {
            client: self.client,
            node: self.node,
            ctx,
            shutdown,
            dispatcher: Some(dispatcher),
            _dir: dir,
        })
    }
}

/// A running local kubelet. [`shutdown`](Kubelet::shutdown) stops it as a node shutdown
/// would; dropping it stops its containers too (SIGTERM, then SIGKILL).
pub struct Kubelet {
    client: kube::Client,
    node: String,
    ctx: Arc<Context>,
    shutdown: watch::Sender<bool>,
    dispatcher: Option<JoinHandle<()>>,
    // Last: removed after the processes writing into it have stopped.
    _dir: TempDir,
}

impl Kubelet {
    /// A kubelet for the pods of `namespace`, on node `local-kubelet`.
    pub fn builder(client: &kube::Client, namespace: &str) -> KubeletBuilder {
        KubeletBuilder {
            client: client.clone(),
            namespace: namespace.to_owned(),
            node: "local-kubelet".to_owned(),
            binaries: BTreeMap::new(),
        }
    }

    pub fn node_name(&self) -> &str {
        &self.node
    }

    /// Every pod this kubelet has run or runs, in the order it took them on.
    pub fn pods(&self) -> Vec<LocalPod> {
        self.ctx.records().iter().map(PodRecord::view).collect()
    }

    /// The standard output lines of every pod this kubelet has run or runs (for the
    /// consumer: its events).
    pub fn stdout_lines(&self) -> Vec<String> {
        self.pods()
            .iter()
            .flat_map(LocalPod::stdout_lines)
            .collect()
    }

    /// Waits until at least `count` pods run here and pass their readiness probe, and returns
    /// them. Fails at once, with the reason, if a pod cannot be started.
    pub async fn wait_ready(
        &self,
        count: usize,
        timeout: Duration,
    ) -> anyhow::Result<Vec<LocalPod>> {
        let waited = crate::wait::until(
            &format!("{count} pod(s) running and ready on node {}", self.node),
            timeout,
            Duration::from_millis(200),
            || {
                let pods = self.pods();
                async move {
                    if let Some(pod) = pods.iter().find(|p| !p.finished && p.error.is_some()) {
                        anyhow::bail!(
                            "pod {} cannot start: {}",
                            pod.name,
                            pod.error.as_deref().unwrap_or_default()
                        );
                    }
                    let ready: Vec<LocalPod> = pods
                        .into_iter()
                        .filter(|p| p.ready && !p.finished)
                        .collect();
                    Ok((ready.len() >= count).then_some(ready))
                }
            },
        )
        .await;
        waited.map_err(|e| {
            let pods: Vec<String> = self.pods().iter().map(LocalPod::describe).collect();
            anyhow::anyhow!("{e:#}\npods on this node:\n{}", pods.join("\n"))
        })
    }

    /// Stops the kubelet as a graceful node shutdown does: every container gets SIGTERM and,
    /// after its pod's grace period, SIGKILL; the pods are marked `Failed` and the Node not
    /// ready. Returns every pod this kubelet ran, with how each container exited.
    pub async fn shutdown(&mut self) -> Vec<LocalPod> {
        self.shutdown.send_replace(true);
        if let Some(dispatcher) = self.dispatcher.take() {
            let _ = dispatcher.await;
        }
        if let Err(e) = node::report_stopped(&self.client, &self.node).await {
            tracing::warn!("reporting node {} stopped: {e:#}", self.node);
        }
        self.pods()
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.ctx.dropping.store(true, Ordering::SeqCst);
        if let Some(dispatcher) = self.dispatcher.take() {
            dispatcher.abort();
        }
        let mut records = self.ctx.records();
        for record in records.iter_mut() {
            record.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + DROP_GRACE;
        for record in records.iter_mut() {
            let Some(mut child) = record.process.take() else {
                continue;
            };
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What a test can read about one pod this kubelet ran: a snapshot.
#[derive(Clone, Debug)]
pub struct LocalPod {
    pub name: String,
    pub uid: String,
    /// Its container passes its readiness probe.
    pub ready: bool,
    /// Its container's process runs now.
    pub running: bool,
    pub restart_count: i32,
    /// How each run of its container ended, in order.
    pub exits: Vec<ExitStatus>,
    /// Why its container cannot start (cleared once it starts).
    pub error: Option<String>,
    /// The last failed write about it to the API server (binding, status, deletion).
    pub api_error: Option<String>,
    /// The pod left this node (deleted, or the node shut down).
    pub finished: bool,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl LocalPod {
    pub fn stdout_lines(&self) -> Vec<String> {
        fs::read_to_string(&self.stdout)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// The diagnostics its container wrote (standard error, over every run).
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The file receiving its container's standard output.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout
    }

    fn describe(&self) -> String {
        let stderr = self.stderr();
        let lines: Vec<&str> = stderr.lines().collect();
        format!(
            "- {} ready={} running={} restarts={} exits={:?} finished={} error={:?} api_error={:?}; last standard error lines:\n{}",
            self.name,
            self.ready,
            self.running,
            self.restart_count,
            self.exits,
            self.finished,
            self.error,
            self.api_error,
            lines[lines.len().saturating_sub(10)..].join("\n")
        )
    }
}

/// What the kubelet's tasks share.
struct Context {
    pods: Api<Pod>,
    secrets: Api<Secret>,
    node: String,
    node_labels: BTreeMap<String, String>,
    binaries: BTreeMap<String, PathBuf>,
    dir: PathBuf,
    /// The pods taken on, each with its container process while it runs. Never locked
    /// across an await.
    records: Mutex<Vec<PodRecord>>,
    /// The kubelet is being dropped: its processes are being stopped from `Drop`.
    dropping: AtomicBool,
}

struct PodRecord {
    name: String,
    uid: String,
    process: Option<Child>,
    ready: bool,
    restart_count: i32,
    exits: Vec<ExitStatus>,
    error: Option<String>,
    api_error: Option<String>,
    finished: bool,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl PodRecord {
    fn view(&self) -> LocalPod {
        LocalPod {
            name: self.name.clone(),
            uid: self.uid.clone(),
            ready: self.ready,
            running: self.process.is_some(),
            restart_count: self.restart_count,
            exits: self.exits.clone(),
            error: self.error.clone(),
            api_error: self.api_error.clone(),
            finished: self.finished,
            stdout: self.stdout.clone(),
            stderr: self.stderr.clone(),
        }
    }

    fn signal(&self, signal: i32) {
        if let Some(child) = &self.process
            && let Ok(pid) = i32::try_from(child.id())
        {
            // SAFETY: kill(2) on our own child, which has not been reaped yet.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

impl Context {
    fn records(&self) -> MutexGuard<'_, Vec<PodRecord>> {
        // A panic while holding the lock leaves the records consistent (plain field writes).
        self.records
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn with_record<T>(&self, uid: &str, f: impl FnOnce(&mut PodRecord) -> T) -> Option<T> {
        self.records().iter_mut().find(|r| r.uid == uid).map(f)
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.dir.join(uid)
    }

    fn add_record(&self, uid: &str, name: &str) {
        let dir = self.pod_dir(uid);
        let mut records = self.records();
        if records.iter().any(|r| r.uid == uid) {
            return;
        }
        records.push(PodRecord {
            name: name.to_owned(),
            uid: uid.to_owned(),
            process: None,
            ready: false,
            restart_count: 0,
            exits: Vec::new(),
            error: None,
            api_error: None,
            finished: false,
            stdout: dir.join("stdout.log"),
            stderr: dir.join("stderr.log"),
        });
    }

    /// Whether this node fits `pod` as a scheduler would judge it; why not if not.
    fn fits(&self, pod: &Pod) -> Result<(), String> {
        let spec = pod.spec.as_ref();
        for (key, value) in spec
            .and_then(|s| s.node_selector.as_ref())
            .into_iter()
            .flatten()
        {
            if self.node_labels.get(key) != Some(value) {
                return Err(format!(
                    "0/1 nodes are available: node {} does not match the pod's node selector {key}={value}",
                    self.node
                ));
            }
        }
        let required_affinity = spec
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            });
        if required_affinity.is_some() {
            return Err(
                "the local kubelet does not evaluate required node affinity, so it does not bind this pod"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// Why the container cannot start.
    fn note_start_error(&self, uid: &str, error: String) {
        tracing::warn!("{error}");
        self.with_record(uid, |r| r.error = Some(error));
    }

    /// A failed write to the API server; the worker tries again on its next sync.
    fn note_api_error(&self, uid: &str, error: String) {
        tracing::warn!("{error}");
        self.with_record(uid, |r| r.api_error = Some(error));
    }

    fn set_process(&self, uid: &str, child: Child) {
        self.with_record(uid, |r| {
            r.process = Some(child);
            r.error = None;
        });
    }

    fn set_ready(&self, uid: &str, ready: bool) {
        self.with_record(uid, |r| r.ready = ready);
    }

    fn is_ready(&self, uid: &str) -> bool {
        self.with_record(uid, |r| r.ready).unwrap_or(false)
    }

    fn set_restart_count(&self, uid: &str, count: i32) {
        self.with_record(uid, |r| r.restart_count = count);
    }

    fn set_finished(&self, uid: &str) {
        self.with_record(uid, |r| {
            r.finished = true;
            r.ready = false;
        });
    }

    /// The container's exit status if it has exited (and is then reaped and recorded).
    fn try_wait(&self, uid: &str) -> Option<ExitStatus> {
        if self.dropping.load(Ordering::SeqCst) {
            return None;
        }
        self.with_record(uid, |r| {
            let status = r.process.as_mut()?.try_wait().ok()??;
            r.process = None;
            r.exits.push(status);
            Some(status)
        })
        .flatten()
    }

    /// SIGTERM, then SIGKILL once `grace` has passed; the exit status, if there was a process.
    async fn stop_process(&self, uid: &str, grace: Duration) -> Option<ExitStatus> {
        self.with_record(uid, |r| r.signal(libc::SIGTERM));
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if self
                .with_record(uid, |r| r.process.is_none())
                .unwrap_or(true)
            {
                return None;
            }
            if let Some(status) = self.try_wait(uid) {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.with_record(uid, |r| {
            let mut child = r.process.take()?;
            let _ = child.kill();
            let status = child.wait().ok()?;
            r.exits.push(status);
            Some(status)
        })
        .flatten()
    }
}

/// Routes the namespace's pods to their workers: a worker for each pod that is pending
/// (to bind) or bound to this node, told of every change and of the pod's deletion.
async fn dispatch(ctx: Arc<Context>, mut node_shutdown: watch::Receiver<bool>) {
    let mut events = watcher(ctx.pods.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let mut workers: HashMap<String, watch::Sender<Option<Pod>>> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut tasks = JoinSet::new();
    // The pods of a relist, to find those deleted while the watch was down.
    let mut relisted: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = node_shutdown.wait_for(|stop| *stop) => break,
        };
        let pod = match event {
            None => break,
            Some(Err(e)) => {
                tracing::warn!("watching pods: {e}");
                continue;
            }
            Some(Ok(watcher::Event::Init)) => {
                relisted = Some(HashSet::new());
                continue;
            }
            Some(Ok(watcher::Event::InitDone)) => {
                let listed = relisted.take().unwrap_or_default();
                for (uid, updates) in &workers {
                    if !listed.contains(uid) {
                        updates.send_replace(None);
                    }
                }
                continue;
            }
            Some(Ok(watcher::Event::Delete(pod))) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                if let Some(updates) = workers.get(&uid) {
                    updates.send_replace(None);
                }
                continue;
            }
            Some(Ok(watcher::Event::InitApply(pod))) => {
                if let Some(listed) = &mut relisted {
                    listed.insert(pod.metadata.uid.clone().unwrap_or_default());
                }
                pod
            }
            Some(Ok(watcher::Event::Apply(pod))) => pod,
        };
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        while tasks.try_join_next().is_some() {}
        workers.retain(|uid, updates| {
            let closed = updates.is_closed();
            if closed {
                done.insert(uid.clone());
            }
            !closed
        });
        if let Some(updates) = workers.get(&uid) {
            updates.send_replace(Some(pod));
        } else if !done.contains(&uid) && takes_on(&ctx, &pod) {
            let (updates, receiver) = watch::channel(Some(pod.clone()));
            workers.insert(uid, updates);
            let worker = PodWorker::new(ctx.clone(), &pod);
            tasks.spawn(worker.run(receiver, node_shutdown.clone()));
        }
    }
    // Every worker sees the shutdown and stops its pod; the senders stay open until then.
    while tasks.join_next().await.is_some() {}
    drop(workers);
}

/// Whether this kubelet handles `pod`: bound to this node, or pending for the default
/// scheduler (which this kubelet stands in for) and not finished.
fn takes_on(ctx: &Context, pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else {
        return false;
    };
    match spec.node_name.as_deref() {
        Some(node) => node == ctx.node,
        None => {
            let terminal = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|p| p == "Succeeded" || p == "Failed");
            let default_scheduler = spec
                .scheduler_name
                .as_deref()
                .is_none_or(|s| s == "default-scheduler");
            default_scheduler && !terminal && pod.metadata.deletion_timestamp.is_none()
        }
    }
}
