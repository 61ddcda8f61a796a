//! What a log shipper sees: every line each selected pod's container writes, read through the
//! API server's log endpoint (`kubectl logs -f`) from the moment the container starts until
//! it ends, including pods that are deleted later, and how each container exited.
//!
//! A pod's log endpoint disappears with the pod, so lines of a pod stopped by a rollout or a
//! scale-down can only be collected by following them while it runs, as a cluster's log
//! agent would.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, LogParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::task::JoinSet;

#[derive(Debug, Default)]
struct Collected {
    /// Lines per pod, in the order the container wrote them, with the time the runtime
    /// received each.
    lines: BTreeMap<String, Vec<(Timestamp, String)>>,
    /// Exit codes of containers that terminated, per pod (a restarted container adds one).
    exits: BTreeMap<String, Vec<i32>>,
    /// Follow requests that failed and how, for failure messages.
    errors: Vec<String>,
}

/// Follows the logs of every pod of `namespace` matching a label selector, from the
/// collector's start until it is dropped.
pub struct PodLogs {
    collected: Arc<Mutex<Collected>>,
    tasks: tokio::task::JoinHandle<()>,
}

impl PodLogs {
    /// Starts following: each pod matching `selector` is followed from its container's
    /// start, each new one as soon as it runs.
    pub fn follow(client: &kube::Client, namespace: &str, selector: &str) -> Self {
        let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
        let collected = Arc::new(Mutex::new(Collected::default()));
        let tasks = tokio::spawn(watch_pods(pods, selector.to_owned(), collected.clone()));
        Self { collected, tasks }
    }

    fn with<T>(&self, read: impl FnOnce(&Collected) -> T) -> T {
        read(
            &self
                .collected
                .lock()
                .expect("no panic while holding the logs"),
        )
    }

    /// Every line of every pod so far.
    pub fn lines(&self) -> Vec<String> {
        self.with(|c| {
            c.lines
                .values()
                .flatten()
                .map(|(_, line)| line.clone())
                .collect()
        })
    }

    /// Every line so far, per pod.
    pub fn lines_by_pod(&self) -> BTreeMap<String, Vec<String>> {
        self.with(|c| {
            c.lines
                .iter()
                .map(|(pod, lines)| (pod.clone(), lines.iter().map(|(_, l)| l.clone()).collect()))
                .collect()
        })
    }

    /// Every line so far with the time the container runtime received it, in time order.
    pub fn timed_lines(&self) -> Vec<(Timestamp, String)> {
        let mut lines: Vec<(Timestamp, String)> =
            self.with(|c| c.lines.values().flatten().cloned().collect());
        lines.sort_by_key(|(time, _)| *time);
        lines
    }

    /// How many lines each pod wrote so far.
    pub fn lines_per_pod(&self) -> BTreeMap<String, usize> {
        self.with(|c| {
            c.lines
                .iter()
                .map(|(pod, lines)| (pod.clone(), lines.len()))
                .collect()
        })
    }

    /// The exit codes of containers that ended, per pod.
    pub fn exit_codes(&self) -> BTreeMap<String, Vec<i32>> {
        self.with(|c| c.exits.clone())
    }

    /// Follow requests that failed, if any.
    pub fn errors(&self) -> Vec<String> {
        self.with(|c| c.errors.clone())
    }
}

impl Drop for PodLogs {
    fn drop(&mut self) {
        self.tasks.abort();
    }
}

async fn watch_pods(pods: Api<Pod>, selector: String, collected: Arc<Mutex<Collected>>) {
    let mut followers = JoinSet::new();
    let mut followed: HashSet<String> = HashSet::new();
    let mut seen_exits: HashSet<(String, String)> = HashSet::new();
    let config = watcher::Config::default().labels(&selector);
    // Backoff: while the API server is down (a restart), the watch retries without spinning.
    let mut events = watcher(pods.clone(), config)
        .default_backoff()
        .applied_objects()
        .boxed();
    loop {
        tokio::select! {
            event = events.try_next() => {
                let pod = match event {
                    Ok(Some(pod)) => pod,
                    Ok(None) => return,
                    Err(e) => {
                        record_error(&collected, format!("pod watch: {e}"));
                        continue;
                    }
                };
                let Some(name) = pod.metadata.name.clone() else { continue };
                let statuses = pod
                    .status
                    .as_ref()
                    .and_then(|status| status.container_statuses.clone())
                    .unwrap_or_default();
                for status in &statuses {
                    let terminated = status
                        .state
                        .as_ref()
                        .and_then(|state| state.terminated.as_ref())
                        .or(status.last_state.as_ref().and_then(|state| state.terminated.as_ref()));
                    if let Some(terminated) = terminated {
                        let key = (name.clone(), terminated.container_id.clone().unwrap_or_default());
                        if seen_exits.insert(key) {
                            collected
                                .lock()
                                .expect("no panic while holding the logs")
                                .exits
                                .entry(name.clone())
                                .or_default()
                                .push(terminated.exit_code);
                        }
                    }
                }
                let started = statuses.iter().any(|status| {
                    status.state.as_ref().is_some_and(|state| state.running.is_some() || state.terminated.is_some())
                });
                if started && followed.insert(name.clone()) {
                    followers.spawn(follow_pod(pods.clone(), name, collected.clone()));
                }
            }
            Some(_) = followers.join_next(), if !followers.is_empty() => {}
        }
    }
}

/// Follows one pod's log from its first line. The stream ends when the container ends; if it
/// ends earlier (a dropped connection, an API server restart) or the container was restarted,
/// following resumes after the last line's timestamp, for as long as the pod exists.
async fn follow_pod(pods: Api<Pod>, name: String, collected: Arc<Mutex<Collected>>) {
    let mut last_timestamp: Option<Timestamp> = None;
    loop {
        // A resumed stream starts again at this time: what it repeats was collected already.
        let mut resume_after = last_timestamp;
        let params = LogParams {
            follow: true,
            timestamps: true,
            since_time: last_timestamp,
            ..LogParams::default()
        };
        match pods.log_stream(&name, &params).await {
            Ok(stream) => {
                let mut lines = stream.lines();
                while let Some(line) = lines.next().await {
                    let line = match line {
                        Ok(line) => line,
                        Err(e) => {
                            record_error(&collected, format!("{name}: reading the log: {e}"));
                            break;
                        }
                    };
                    let Some((timestamp, text)) = line
                        .split_once(' ')
                        .and_then(|(t, text)| Some((t.parse::<Timestamp>().ok()?, text)))
                    else {
                        record_error(
                            &collected,
                            format!("{name}: a log line without a timestamp: {line}"),
                        );
                        continue;
                    };
                    if resume_after.is_some_and(|after| timestamp <= after) {
                        continue;
                    }
                    resume_after = None;
                    last_timestamp = Some(timestamp);
                    collected
                        .lock()
                        .expect("no panic while holding the logs")
                        .lines
                        .entry(name.clone())
                        .or_default()
                        .push((timestamp, text.to_owned()));
                }
            }
            Err(e) => record_error(&collected, format!("{name}: following the log: {e}")),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // Done when the pod is gone, or its container ended for good; an unanswered question
        // (the API server restarting) is asked again.
        match pods.get_opt(&name).await {
            Ok(None) => return,
            Ok(Some(pod)) if finished(&pod) => return,
            Ok(Some(_)) => {}
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

/// Whether a pod's containers ended and will not run again: it succeeded or failed, or it is
/// being deleted and none of its containers runs any more.
fn finished(pod: &Pod) -> bool {
    let Some(status) = pod.status.as_ref() else {
        return false;
    };
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return true;
    }
    let running = status.container_statuses.iter().flatten().any(|container| {
        container
            .state
            .as_ref()
            .is_some_and(|s| s.running.is_some() || s.waiting.is_some())
    });
    pod.metadata.deletion_timestamp.is_some() && !running
}

/// Keeps the latest errors only: a pod waiting to restart answers every follow with one.
fn record_error(collected: &Mutex<Collected>, error: String) {
    const KEPT: usize = 50;
    let mut collected = collected.lock().expect("no panic while holding the logs");
    if collected.errors.len() == KEPT {
        collected.errors.remove(0);
    }
    collected.errors.push(error);
}
