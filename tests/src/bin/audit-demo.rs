//! `make demo`: audit-operator end to end on this machine, with no cluster, until Ctrl-C.
//!
//! Where a real node can run (root, the Debian packages `make testenv` installs, the images
//! `make images` builds), it starts the test environment's node and control plane, installs
//! the operator with its Helm chart, applies the samples in `deploy/samples/` and shows what
//! the consumer pods write, read through the API as `kubectl logs` does, and what `kubectl get
//! audit` says, while it publishes sample audit events. Elsewhere it says why and falls back
//! to the control plane alone, the operator as a local process and the harness's local kubelet
//! (which runs the consumer pods' command as local processes). Ctrl-C scales the consumer to
//! zero (the kubelet stops the pods as a cluster would), deletes the resources (so the
//! finalizers run), and stops every server and the node; temporary files go with them.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use audit_tests::kube_env::ControlPlane;
use audit_tests::kubelet::Kubelet;
use audit_tests::nats::NatsServer;
use audit_tests::node::{self, Node};
use audit_tests::operator::{ChartRelease, OperatorProcess};
use audit_tests::pod_logs::PodLogs;
use audit_tests::testenv::{testenv_bin, workspace_root};
use audit_tests::{cargo_bin, wait};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::Api;
use serde_json::json;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(120);
const CONSUMER_NAME: &str = "audit-log";
/// The NATS address in the samples, which a real cluster would resolve.
const SAMPLE_NATS_URL: &str = "nats://nats.nats-system.svc:4222";

fn step(text: &str) {
    println!("\n\x1b[1m==> {text}\x1b[0m");
}

fn note(text: &str) {
    println!("    {text}");
}

/// Set in the environment of the process that runs the demo under its supervisor.
const SUPERVISED: &str = "AUDIT_DEMO_SUPERVISED";

fn main() -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    if std::env::var_os(SUPERVISED).is_some() {
        runtime.block_on(run_demo())
    } else {
        runtime.block_on(supervise())
    }
}

/// Runs the demo in a process group of its own and forwards Ctrl-C to it as one SIGINT.
///
/// A Ctrl-C at the terminal signals the whole foreground process group: the servers the demo
/// started would get it too and stop while the demo still needs them to clean up. In a group
/// of its own, the demo and its servers hear only what is forwarded.
async fn supervise() -> ExitCode {
    let mut demo = Command::new(std::env::current_exe().expect("the demo's own path"));
    demo.args(std::env::args_os().skip(1))
        .env(SUPERVISED, "1")
        .process_group(0);
    // SAFETY: prctl is async-signal-safe and touches no other state. If the supervisor dies
    // outright, the demo is interrupted and cleans up.
    unsafe {
        demo.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match demo.spawn() {
        Ok(child) => child,
        Err(e) => {
            eprintln!("cannot start the demo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let pid = i32::try_from(child.id()).expect("a pid fits in i32");
    let (Ok(mut interrupt), Ok(mut terminate)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        eprintln!("cannot listen for Ctrl-C");
        return ExitCode::FAILURE;
    };
    let mut exited = tokio::task::spawn_blocking(move || child.wait());
    loop {
        tokio::select! {
            status = &mut exited => {
                return match status {
                    Ok(Ok(status)) if status.success() => ExitCode::SUCCESS,
                    _ => ExitCode::FAILURE,
                };
            }
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        // SAFETY: kill(2) on our own child, which is not reaped until `exited` completes.
        unsafe { libc::kill(pid, libc::SIGINT) };
    }
}

async fn run_demo() -> ExitCode {
    println!(
        "audit-operator demo: a local Kubernetes node and control plane, NATS JetStream, the\n\
         operator and its consumer pods. Press Ctrl-C to stop and clean up."
    );
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop.send(true);
        }
    });
    match demo(stopped).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("\ndemo failed: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Where the consumer pods run, and the operator with them.
enum Workloads {
    /// A real node: the operator installed from the Helm chart runs in a pod, the consumer
    /// pods run in containers, their output is read through the API (`kubectl logs`).
    Node {
        release: ChartRelease,
        logs: PodLogs,
    },
    /// No real node can run here: the operator runs as a local process, and the harness's
    /// local kubelet runs the consumer pods' command as local processes.
    Local {
        kubelet: Box<Kubelet>,
        operator: Box<OperatorProcess>,
    },
}

/// Everything the demo started; dropping it stops the processes and removes the files (the
/// node and the control plane go when the process exits).
struct Running {
    kubeconfig: PathBuf,
    namespace: String,
    js: jetstream::Context,
    workloads: Workloads,
    _nats: NatsServer,
}

async fn demo(stopped: watch::Receiver<bool>) -> anyhow::Result<()> {
    let mut interrupted = stopped.clone();
    // Ctrl-C during the start drops what was started so far, which stops it.
    let mut running = tokio::select! {
        running = start() => running?,
        _ = interrupted.wait_for(|stop| *stop) => return Ok(()),
    };
    let mut interrupted = stopped;
    let result = tokio::select! {
        result = show(&running) => result,
        _ = interrupted.wait_for(|stop| *stop) => Ok(()),
    };
    cleanup(&mut running).await;
    result
}

/// Why a real node cannot run here, if it cannot: it needs root, the Debian packages `make
/// testenv` installs, and the images `make images` builds.
fn real_node_unavailable() -> Option<String> {
    if let Err(reason) = Node::runnable() {
        return Some(format!("{reason:#}"));
    }
    if std::env::var_os("AUDIT_IMAGES_DIR").is_none_or(|dir| dir.is_empty()) {
        return Some("no images were built (`make demo` builds them when run as root)".into());
    }
    None
}

async fn start() -> anyhow::Result<Running> {
    let unavailable = real_node_unavailable();
    let control_plane = match &unavailable {
        None => {
            step(
                "Starting a real Kubernetes node (containerd, kubelet, kube-scheduler, kube-proxy) \
                 and its control plane (etcd, kube-apiserver, kube-controller-manager)",
            );
            let node = tokio::task::spawn_blocking(Node::shared).await?;
            note(&format!(
                "Node {} at {}, pods on {}; the first start takes a while",
                node.name(),
                node.ip(),
                node::layout().pod_cidr
            ));
            ControlPlane::shared()
        }
        Some(reason) => {
            step("Starting etcd, kube-apiserver and kube-controller-manager");
            note(&format!("no real node: {reason}"));
            note("falling back to the harness's local kubelet, which runs pods as local processes");
            tokio::task::spawn_blocking(ControlPlane::shared).await?
        }
    };
    let kubeconfig = control_plane.kubeconfig_path().to_owned();
    note(&format!("API server: {}", control_plane.api_url()));
    note(&format!(
        "try it yourself: export KUBECONFIG={}",
        kubeconfig.display()
    ));

    step("Starting nats-server with JetStream");
    let nats = match unavailable {
        None => NatsServer::start_on(node::layout().node_ip).await?,
        Some(_) => NatsServer::start().await?,
    };
    note(&format!("NATS: {}", nats.url()));

    let operator_namespace = control_plane
        .create_namespace_labelled(
            "audit-system",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await?;
    let namespace = control_plane
        .create_namespace_labelled(
            "audit-demo",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await?;
    note(&format!(
        "namespaces {operator_namespace} and {namespace} enforce the Pod Security 'restricted' profile"
    ));

    let release = if unavailable.is_none() {
        step(&format!(
            "Installing the operator and its CRDs: helm install audit-operator deploy/helm/audit-operator \
             --namespace {operator_namespace} (images built from the Dockerfile)"
        ));
        // A short drift and live-state check, so that `kubectl get audit` follows the demo.
        let release =
            ChartRelease::install(&operator_namespace, 1, &["requeueInterval=10s"]).await?;
        kubectl(
            &kubeconfig,
            &["-n", &operator_namespace, "get", "pods", "-o", "wide"],
            None,
        )?;
        Some(release)
    } else {
        step("Installing the CRDs: kubectl apply --server-side -k crds/");
        install_crds(&kubeconfig)?;
        None
    };
    let mut operator = match release {
        Some(_) => None,
        None => {
            step("Starting audit-operator for that namespace, as a local process");
            let operator = OperatorProcess::start(&["--namespace", &namespace])?;
            note(&format!("operator log: {}", operator.log_path().display()));
            Some(operator)
        }
    };

    step("Applying deploy/samples/auditstream.yaml and auditconsumer.yaml");
    note(&format!(
        "(the samples name the in-cluster NATS address {SAMPLE_NATS_URL}; here it is {})",
        nats.url()
    ));
    for sample in ["auditstream.yaml", "auditconsumer.yaml"] {
        let path = workspace_root().join("deploy/samples").join(sample);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?
            .replace(SAMPLE_NATS_URL, &nats.url());
        kubectl(
            &kubeconfig,
            &["-n", &namespace, "apply", "-f", "-"],
            Some(&text),
        )?;
    }

    step("Waiting for the operator: stream and durable consumer on NATS, and the Deployment");
    let client = control_plane.admin_client().await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let name = format!("{CONSUMER_NAME}-audit-consumer");
    let operator_log = |operator: &Option<OperatorProcess>| match (operator, &release) {
        (Some(operator), _) => format!("operator log:\n{}", operator.log_tail()),
        (None, Some(release)) => release.logs(),
        (None, None) => String::new(),
    };
    wait::until(
        &format!("Deployment {name}"),
        WAIT,
        Duration::from_millis(500),
        || {
            let running = operator
                .as_mut()
                .map_or(Ok(()), OperatorProcess::ensure_running);
            let deployments = &deployments;
            let name = &name;
            async move {
                running?;
                Ok(deployments.get_opt(name).await?)
            }
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", operator_log(&operator)))?;
    kubectl(&kubeconfig, &["-n", &namespace, "get", "audit"], None)?;

    let workloads = match (release, operator) {
        (Some(release), _) => {
            step("Waiting for the consumer pods: real containers, Ready by their own probes");
            let logs = PodLogs::follow(
                &client,
                &namespace,
                &format!("app.kubernetes.io/instance={CONSUMER_NAME}"),
            );
            wait_consumer_ready(&kubeconfig, &namespace)?;
            note(&format!(
                "their output: kubectl logs -n {namespace} -l app.kubernetes.io/instance={CONSUMER_NAME} --prefix"
            ));
            Workloads::Node { release, logs }
        }
        (None, Some(operator)) => {
            step("Running the consumer pods on the local kubelet");
            note("the local kubelet registers the Node local-kubelet, binds the Deployment's pods");
            note("to it and runs each pod's container as a local process with exactly its command");
            note("and arguments, as its non-root user, with its Secret volumes written to a");
            note("temporary directory. It reports the pods' status from their own readiness");
            note("probes, so the Deployment counts them and the AuditConsumer turns Ready.");
            let kubelet = Kubelet::builder(&client, &namespace)
                .binary("/usr/local/bin/audit-consumer", cargo_bin("audit-consumer"))
                .start()
                .await?;
            for pod in kubelet.wait_ready(2, WAIT).await? {
                note(&format!(
                    "pod {} ready; its output: {}",
                    pod.name,
                    pod.stdout_path().display()
                ));
            }
            wait_consumer_ready(&kubeconfig, &namespace)?;
            Workloads::Local {
                kubelet: Box::new(kubelet),
                operator: Box::new(operator),
            }
        }
        (None, None) => unreachable!("the operator runs in a pod or as a process"),
    };
    kubectl(
        &kubeconfig,
        &["-n", &namespace, "get", "pods,deploy", "-o", "wide"],
        None,
    )?;
    println!();
    kubectl(&kubeconfig, &["-n", &namespace, "get", "audit"], None)?;

    let js = jetstream::new(nats.client().await?);
    Ok(Running {
        kubeconfig,
        namespace,
        js,
        workloads,
        _nats: nats,
    })
}

fn install_crds(kubeconfig: &Path) -> anyhow::Result<()> {
    let crds = workspace_root().join("crds");
    kubectl(
        kubeconfig,
        &["apply", "--server-side", "-k", &crds.display().to_string()],
        None,
    )?;
    let mut established = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    let names: Vec<String> = std::fs::read_dir(&crds)?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter_map(|file| file.strip_suffix(".yaml").map(str::to_owned))
        .filter(|name| name != "kustomization")
        .map(|name| format!("crd/{name}"))
        .collect();
    established.extend(names.iter().map(String::as_str));
    kubectl(kubeconfig, &established, None)
}

fn wait_consumer_ready(kubeconfig: &Path, namespace: &str) -> anyhow::Result<()> {
    kubectl(
        kubeconfig,
        &[
            "-n",
            namespace,
            "wait",
            "--for=condition=Ready",
            &format!("auditconsumer/{CONSUMER_NAME}"),
            "--timeout=180s",
        ],
        None,
    )
}

/// Publishes and shows, until the caller stops it.
async fn show(running: &Running) -> anyhow::Result<()> {
    step("Publishing sample audit events (structured, CloudEvents, raw) every 2 seconds");
    let Running {
        js,
        workloads,
        kubeconfig,
        namespace,
        ..
    } = running;
    // Per pod: how many lines were shown, or how far its output file was read.
    let mut shown: HashMap<String, u64> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    for n in 0u64.. {
        tick.tick().await;
        let (subject, payload) = sample_event(n);
        js.publish(subject, payload.into()).await?.await?;
        for (pod, line) in new_output(workloads, &mut shown)? {
            println!("\x1b[36m[{pod}]\x1b[0m {line}");
        }
        if n % 5 == 4 {
            println!();
            kubectl(kubeconfig, &["-n", namespace, "get", "audit"], None)?;
            println!();
        }
    }
    Ok(())
}

/// The pods' output lines not shown yet, with the pod that wrote each.
fn new_output(
    workloads: &Workloads,
    shown: &mut HashMap<String, u64>,
) -> anyhow::Result<Vec<(String, String)>> {
    let mut lines = Vec::new();
    match workloads {
        Workloads::Node { logs, .. } => {
            for (pod, pod_lines) in logs.lines_by_pod() {
                let seen = shown.entry(pod.clone()).or_default();
                let skip = usize::try_from(*seen)?;
                *seen = u64::try_from(pod_lines.len())?;
                lines.extend(pod_lines.into_iter().skip(skip).map(|l| (pod.clone(), l)));
            }
        }
        Workloads::Local { kubelet, .. } => {
            for pod in kubelet.pods() {
                let offset = shown.entry(pod.uid.clone()).or_default();
                for line in new_lines(pod.stdout_path(), offset)? {
                    lines.push((pod.name.clone(), line));
                }
            }
        }
    }
    Ok(lines)
}

/// The `n`th sample event: the old service's structured format (with a password the
/// consumer redacts), a CloudEvent, or raw text.
fn sample_event(n: u64) -> (String, String) {
    match n % 3 {
        0 => (
            "audit.users.login".into(),
            json!({
                "id": format!("evt-{n}"),
                "type": "user.login",
                "source": "auth-service",
                "timestamp": "2026-11-22T10:00:00Z",
                "data": { "user": "alice", "password": "hunter2", "ip": "10.1.2.3" },
            })
            .to_string(),
        ),
        1 => (
            "audit.orders.paid".into(),
            json!({
                "specversion": "1.0",
                "id": format!("ce-{n}"),
                "type": "com.example.order.paid",
                "source": "/shop/orders",
                "subject": format!("order-{n}"),
                "time": "2026-11-22T10:00:01Z",
                "datacontenttype": "application/json",
                "data": { "amount": 42, "currency": "EUR" },
            })
            .to_string(),
        ),
        _ => (
            "audit.legacy".into(),
            format!("legacy audit line {n}: admin changed setting \"retention\"\nsecond line"),
        ),
    }
}

/// The complete lines appended to `path` since `offset`, which moves past them.
fn new_lines(path: &Path, offset: &mut u64) -> anyhow::Result<Vec<String>> {
    let mut file = std::fs::File::open(path)?;
    file.seek(SeekFrom::Start(*offset))?;
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let read = reader.read_line(&mut line)?;
        if read == 0 || !line.ends_with('\n') {
            break;
        }
        *offset += read as u64;
        lines.push(line.trim_end().to_owned());
    }
    Ok(lines)
}

async fn cleanup(running: &mut Running) {
    step(
        "Scaling the consumer to 0: the kubelet stops its pods (SIGTERM: they drain, ack and exit)",
    );
    let scaled = kubectl(
        &running.kubeconfig,
        &[
            "-n",
            &running.namespace,
            "scale",
            &format!("auditconsumer/{CONSUMER_NAME}"),
            "--replicas=0",
        ],
        None,
    );
    if let Err(error) = scaled {
        note(&format!("{error:#}"));
    }
    match &mut running.workloads {
        Workloads::Node { logs, .. } => {
            let stopped = wait::until(
                "the consumer pods to stop",
                WAIT,
                Duration::from_millis(250),
                || async { Ok((logs.exit_codes().len() >= 2).then(|| logs.exit_codes())) },
            )
            .await;
            match stopped {
                Ok(exits) => {
                    for (pod, codes) in exits {
                        note(&format!("pod {pod}: exit code {codes:?}"));
                    }
                }
                Err(error) => note(&format!("{error:#}")),
            }
        }
        Workloads::Local { kubelet, .. } => {
            let drained = wait::until(
                "the consumer pods to stop",
                WAIT,
                Duration::from_millis(250),
                || async { Ok(kubelet.pods().iter().all(|pod| pod.finished).then_some(())) },
            )
            .await;
            if let Err(error) = drained {
                note(&format!("{error:#}; stopping the node instead"));
            }
            for pod in kubelet.shutdown().await {
                let exits: Vec<String> = pod.exits.iter().map(ToString::to_string).collect();
                note(&format!("pod {}: {}", pod.name, exits.join(", ")));
            }
        }
    }
    step("Deleting the AuditConsumer and the AuditStream (the operator's finalizers run)");
    for kind in ["auditconsumers", "auditstreams"] {
        let deleted = kubectl(
            &running.kubeconfig,
            &[
                "-n",
                &running.namespace,
                "delete",
                kind,
                "--all",
                "--timeout=60s",
            ],
            None,
        );
        if let Err(error) = deleted {
            note(&format!("{error:#}"));
        }
    }
    match &mut running.workloads {
        Workloads::Node { release, .. } => {
            step("Stopping NATS, the node and the control plane");
            note(&format!(
                "(operator release {} goes with the node)",
                release.name
            ));
        }
        Workloads::Local { operator, .. } => {
            step("Stopping the operator, NATS and the control plane");
            operator.stop();
        }
    }
}

/// Runs kubectl against the demo's control plane, showing its output.
fn kubectl(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<()> {
    let mut command = Command::new(testenv_bin("kubectl"));
    command
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = command.spawn().context("starting kubectl")?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes())?;
    }
    let status = child.wait()?;
    if !status.success() {
        bail!("kubectl {} failed ({status})", args.join(" "));
    }
    Ok(())
}
