//! The `kubectl-audit` plugin binary against the test control plane, a real nats-server and
//! the operator scoped to each test's namespace: its text output (golden, with times and the
//! namespace masked), its `-o json` document, exit statuses, and the shipped viewer RBAC.
//! Its `verify` on a real kubelet is tested in `node_consumer_pods.rs`.

mod operator_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use audit_tests::kube_env::ControlPlane;
use audit_tests::nats::NatsServer;
use audit_tests::operator::{OPERATOR_NAMESPACE, OperatorProcess};
use audit_tests::testenv::{cargo_bin, workspace_root};
use audit_tests::{tools, wait};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use operator_support::{AUDIT_CONSUMER, AUDIT_STREAM, LEASE, condition, lease_holder, wait_ready};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

/// One test's world: a namespace, a nats-server and an operator watching that namespace.
struct Env {
    namespace: String,
    streams: Api<DynamicObject>,
    consumers: Api<DynamicObject>,
    nats: NatsServer,
    operator: OperatorProcess,
}

impl Env {
    async fn start(prefix: &str, operator_args: &[&str]) -> anyhow::Result<Self> {
        let (client, namespace) = operator_support::namespace(prefix, &[]).await?;
        let nats = NatsServer::start().await?;
        let mut args = vec![
            "--namespace",
            namespace.as_str(),
            "--consumer-image",
            "audit-consumer:test",
        ];
        args.extend_from_slice(operator_args);
        let operator = OperatorProcess::start(&args)?;
        Ok(Self {
            streams: operator_support::api(&client, &namespace, AUDIT_STREAM),
            consumers: operator_support::api(&client, &namespace, AUDIT_CONSUMER),
            namespace,
            nats,
            operator,
        })
    }

    async fn apply_stream(&self, name: &str, extra: Value) -> anyhow::Result<()> {
        let mut spec = json!({
            "connection": { "servers": [self.nats.url()] },
            "name": name.to_uppercase(),
            "subjects": [format!("{name}.>")],
            "storage": "Memory",
            "deletionPolicy": "Delete",
        });
        merge(&mut spec, extra);
        operator_support::apply(&self.streams, AUDIT_STREAM, name, spec).await?;
        Ok(())
    }

    async fn apply_consumer(&self, name: &str, stream: &str, extra: Value) -> anyhow::Result<()> {
        let mut spec = json!({ "streamRef": { "name": stream } });
        merge(&mut spec, extra);
        operator_support::apply(&self.consumers, AUDIT_CONSUMER, name, spec).await?;
        Ok(())
    }

    async fn wait_ready(&self, api: &Api<DynamicObject>, name: &str) -> anyhow::Result<()> {
        wait_ready(api, name, WAIT)
            .await
            .map_err(|e| anyhow::anyhow!("{e:#}\noperator log:\n{}", self.operator.log_tail()))
    }

    /// The plugin as the administrator, in this test's namespace.
    fn plugin(&self, args: &[&str]) -> Plugin {
        Plugin::run(
            ControlPlane::shared().kubeconfig_path(),
            &self.namespace,
            args,
        )
    }
}

fn merge(spec: &mut Value, extra: Value) {
    if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
        spec.extend(extra);
    }
}

/// One run of the `kubectl-audit` binary.
struct Plugin {
    output: Output,
}

impl Plugin {
    fn run(kubeconfig: &Path, namespace: &str, args: &[&str]) -> Plugin {
        let output = Command::new(cargo_bin("kubectl-audit"))
            .args(args)
            .args(["--namespace", namespace])
            .env("KUBECONFIG", kubeconfig)
            .env_remove("KUBECTL_AUDIT_NAMESPACE")
            .env_remove("KUBECTL_AUDIT_OPERATOR_NAMESPACE")
            .current_dir(workspace_root())
            .output()
            .expect("running kubectl-audit");
        Plugin { output }
    }

    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Standard output, failing with both streams unless the run succeeded.
    fn success(&self) -> String {
        assert_eq!(
            self.code(),
            Some(0),
            "kubectl-audit failed:\n{}\n{}",
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }
}

/// The output with what changes from run to run masked: the namespace, RFC 3339 times, ages.
fn masked(text: &str, namespace: &str) -> String {
    let text = text.replace(namespace, "<ns>");
    let time =
        regex::Regex::new(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)").unwrap();
    let age = regex::Regex::new(r"\(\d+[smhd] ago\)").unwrap();
    age.replace_all(&time.replace_all(&text, "<time>"), "(<age> ago)")
        .into_owned()
}

#[tokio::test]
async fn status_shows_a_ready_stream_and_its_consumer_on_one_screen() -> anyhow::Result<()> {
    let env = Env::start("plugin-status", &[]).await?;
    env.apply_stream(
        "orders",
        json!({ "maxMessages": 1000, "maxBytes": 1_048_576, "maxAge": "720h" }),
    )
    .await?;
    env.apply_consumer(
        "reader",
        "orders",
        json!({ "replicas": 0, "maxDeliver": 5 }),
    )
    .await?;
    env.wait_ready(&env.streams, "orders").await?;
    env.wait_ready(&env.consumers, "reader").await?;
    let nats = env.nats.client().await?;
    for n in 0..3 {
        nats.publish(format!("orders.created.{n}"), "{}".into())
            .await?;
    }
    nats.flush().await?;
    // The operator's next status write counts them.
    wait::until(
        "3 messages in the status",
        WAIT,
        Duration::from_millis(200),
        || async {
            let stream = env.streams.get("orders").await?;
            let consumer = env.consumers.get("reader").await?;
            Ok(
                (stream.data["status"]["messages"] == 3 && consumer.data["status"]["pending"] == 3)
                    .then_some(()),
            )
        },
    )
    .await?;

    let text = env.plugin(&["status", "orders"]).success();
    let stream_ready = condition(&env.streams.get("orders").await?, "Ready")
        .cloned()
        .unwrap();
    let consumer_ready = condition(&env.consumers.get("reader").await?, "Ready")
        .cloned()
        .unwrap();
    let expected = format!(
        "AuditStream <ns>/orders: Ready
  NATS stream      ORDERS
  Conditions:
{stream_conditions}  Messages         3 of 1000 (0%)
  Bytes            {bytes} of 1.0 MiB (0%)
  Max age          720h
  When full        drop the oldest messages (discard Old)
  Sequences        1 to 3
  Consumers        1
  Warning Events of the last 1h: none

AuditConsumer <ns>/reader: Ready
  Reads            AuditStream orders (NATS stream ORDERS, durable consumer reader)
  Conditions:
{consumer_conditions}  Pending          3
  Ack pending      0
  Acknowledged     through sequence 0, delivered through 0, last ack -
  Redelivered      0
  Given up         0 event(s) reached maxDeliver 5
  Pods             0 desired, 0 exist, 0 ready
  Warning Events of the last 1h: none

",
        stream_conditions = conditions_block(&env.streams.get("orders").await?),
        bytes = masked_bytes(&text),
        consumer_conditions = conditions_block(&env.consumers.get("reader").await?),
    );
    assert_eq!(
        masked(&text, &env.namespace),
        expected,
        "raw output:\n{text}"
    );
    assert_eq!(consumer_ready["status"], "True");
    assert_eq!(stream_ready["status"], "True");

    // -o json: the same facts, for scripts.
    let json: Value = serde_json::from_str(&env.plugin(&["status", "-o", "json"]).success())?;
    assert_eq!(json["formatVersion"], 1);
    let stream = &json["streams"][0];
    assert_eq!(stream["name"], "orders");
    assert_eq!(stream["namespace"], env.namespace.as_str());
    assert_eq!(stream["ready"]["status"], "True");
    assert_eq!(stream["ready"]["message"], stream_ready["message"]);
    assert_eq!(stream["messages"], 3);
    assert_eq!(stream["limits"]["maxMessages"], 1000);
    assert_eq!(stream["limits"]["maxBytes"], 1_048_576);
    assert_eq!(stream["limits"]["maxAge"], "720h");
    assert_eq!(stream["lastSeq"], 3);
    assert!(
        stream["conditions"].as_array().unwrap().len() >= 3,
        "{stream}"
    );
    let consumer = &json["consumers"][0];
    assert_eq!(consumer["name"], "reader");
    assert_eq!(consumer["streamRef"], "orders");
    assert_eq!(consumer["ready"]["status"], "True");
    assert_eq!(consumer["pending"], 3);
    assert_eq!(consumer["ackPending"], 0);
    assert_eq!(consumer["maxDeliver"], 5);
    assert_eq!(consumer["replicas"]["desired"], 0);
    assert_eq!(consumer["pods"], json!([]));
    assert_eq!(consumer["warningEvents"], json!([]));
    assert!(consumer["integrity"].is_null() && consumer["archive"].is_null());

    // -A: every namespace, this test's among them.
    let everywhere: Value =
        serde_json::from_str(&env.plugin(&["status", "-A", "-o", "json"]).success())?;
    assert!(
        everywhere["consumers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["namespace"] == env.namespace.as_str() && c["name"] == "reader"),
        "{everywhere}"
    );

    // The shipped read-only role is enough for status (and logs, which reads the same pods).
    let viewer = viewer_kubeconfig(&env, "auditor")?;
    let as_viewer = Plugin::run(&viewer, &env.namespace, &["status", "orders"]).success();
    assert_eq!(
        masked(&as_viewer, &env.namespace),
        masked(&text, &env.namespace)
    );
    let logs = Plugin::run(&viewer, &env.namespace, &["logs", "reader"]);
    assert_eq!(logs.code(), Some(0), "{}", logs.stderr());
    Ok(())
}

/// `Type=Status Reason`, and the message lines, as the plugin prints a condition.
fn condition_line(object: &DynamicObject, type_: &str) -> String {
    let condition = condition(object, type_).unwrap();
    let mut line = format!(
        "{} (since <time> (<age> ago))",
        condition["reason"].as_str().unwrap()
    );
    for message in condition["message"].as_str().unwrap_or_default().lines() {
        line.push_str(&format!("\n      {message}"));
    }
    line
}

fn conditions_block(object: &DynamicObject) -> String {
    object.data["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            format!(
                "    {}={} {}\n",
                c["type"].as_str().unwrap(),
                c["status"].as_str().unwrap(),
                condition_line(object, c["type"].as_str().unwrap())
            )
        })
        .collect()
}

/// The stream's size as the plugin printed it: it depends on the server's storage overhead.
fn masked_bytes(text: &str) -> String {
    text.lines()
        .find_map(|l| l.trim_start().strip_prefix("Bytes"))
        .and_then(|rest| rest.trim_start().split(" of ").next())
        .unwrap_or_default()
        .to_owned()
}

/// A kubeconfig acting as `user`, bound to the shipped `kubectl-audit-viewer` ClusterRole in
/// this test's namespace only.
fn viewer_kubeconfig(env: &Env, user: &str) -> anyhow::Result<PathBuf> {
    tools::run(
        "kubectl",
        &[
            "apply",
            "--server-side",
            "--field-manager=audit-tests",
            "-f",
            "deploy/rbac/kubectl-audit-viewer.yaml",
        ],
        None,
    )?;
    tools::run(
        "kubectl",
        &[
            "create",
            "rolebinding",
            "auditor",
            "--clusterrole=kubectl-audit-viewer",
            &format!("--user={user}"),
            "--namespace",
            &env.namespace,
        ],
        None,
    )?;
    let admin = std::fs::read_to_string(ControlPlane::shared().kubeconfig_path())?;
    let mut kubeconfig: serde_yaml::Value = serde_yaml::from_str(&admin)?;
    for entry in kubeconfig["users"].as_sequence_mut().into_iter().flatten() {
        entry["user"]["as"] = user.into();
    }
    let path = ControlPlane::shared()
        .dir_path()
        .join(format!("{user}-{}.kubeconfig", env.namespace));
    std::fs::write(&path, serde_yaml::to_string(&kubeconfig)?)?;
    Ok(path)
}

#[tokio::test]
async fn status_of_a_resource_that_is_not_ready_shows_the_whole_message() -> anyhow::Result<()> {
    let env = Env::start("plugin-not-ready", &[]).await?;
    env.apply_consumer("orphan", "missing", json!({ "replicas": 0 }))
        .await?;
    let message = wait::until(
        "orphan to report why it is not Ready",
        WAIT,
        Duration::from_millis(200),
        || async {
            let object = env.consumers.get("orphan").await?;
            Ok(condition(&object, "Ready")
                .filter(|c| c["status"] == "False")
                .and_then(|c| c["message"].as_str().map(str::to_owned))
                .filter(|m| !m.is_empty()))
        },
    )
    .await?;

    let run = env.plugin(&["status", "orphan"]);
    let text = run.success();
    assert!(
        text.starts_with(&format!(
            "AuditConsumer {}/orphan: not Ready (",
            env.namespace
        )),
        "{text}"
    );
    // Every line of the message, whole, under its condition.
    for line in message.lines() {
        assert!(
            text.contains(&format!("\n      {line}\n")),
            "{line:?} missing from:\n{text}"
        );
    }
    let json: Value =
        serde_json::from_str(&env.plugin(&["status", "orphan", "-o", "json"]).success())?;
    assert_eq!(json["consumers"][0]["ready"]["message"], message.as_str());
    assert_eq!(json["streams"], json!([]));

    let missing = env.plugin(&["status", "nothing-here"]);
    assert_eq!(missing.code(), Some(2));
    assert!(
        missing
            .stderr()
            .contains("no AuditStream or AuditConsumer named nothing-here"),
        "{}",
        missing.stderr()
    );

    // verify says what to configure when there is no archive verification...
    let verify = env.plugin(&["verify", "orphan"]);
    assert_eq!(verify.code(), Some(2));
    assert!(
        verify
            .stderr()
            .contains("has no scheduled archive verification to run: set spec.archive"),
        "{}",
        verify.stderr()
    );
    // ...and, with one, that the operator has not made its CronJob yet (the stream is
    // missing here, so it never will).
    env.apply_consumer(
        "unverified",
        "missing",
        json!({
            "replicas": 0,
            "integrity": { "enabled": true, "signingKeySecretRef": { "name": "signer", "key": "seed" } },
            "archive": {
                "bucket": "trail",
                "region": "us-east-1",
                "verification": { "credentialsSecretRef": { "name": "archive-reader" } },
            },
        }),
    )
    .await?;
    let no_cron_job = env.plugin(&["verify", "unverified"]);
    assert_eq!(no_cron_job.code(), Some(2));
    assert!(
        no_cron_job.stderr().contains("has not created CronJob")
            && no_cron_job.stderr().contains("unverified-audit-verify"),
        "{}",
        no_cron_job.stderr()
    );
    // The viewer role reads the AuditConsumer but may not go on to the CronJob and Jobs.
    let viewer = viewer_kubeconfig(&env, "reader-only")?;
    let forbidden = Plugin::run(&viewer, &env.namespace, &["verify", "unverified"]);
    assert_eq!(forbidden.code(), Some(2));
    assert!(
        forbidden.stderr().contains("forbidden"),
        "{}",
        forbidden.stderr()
    );
    Ok(())
}

#[tokio::test]
async fn check_passes_while_an_operator_leads_from_a_ready_pod_and_fails_without()
-> anyhow::Result<()> {
    // No operator: no Lease in this namespace, and check gives up after its timeout.
    let (client, empty) = operator_support::namespace("plugin-check-none", &[]).await?;
    let started = std::time::Instant::now();
    let none = Plugin::run(
        ControlPlane::shared().kubeconfig_path(),
        &empty,
        &["check", "--timeout", "2s", "--operator-namespace", &empty],
    );
    assert_eq!(none.code(), Some(1), "{}", none.stderr());
    assert!(started.elapsed() >= Duration::from_secs(2));
    assert!(
        none.stderr().contains(&format!("no Lease {empty}/{LEASE}")),
        "{}",
        none.stderr()
    );

    // An operator with leader election, as the chart runs it; its identity is its pod's name.
    let identity = format!("audit-operator-{}", empty.rsplit('-').next().unwrap_or("x"));
    let env = Env::start(
        "plugin-check",
        &[
            "--leader-election",
            "true",
            "--lease-namespace",
            OPERATOR_NAMESPACE,
            "--instance",
            &identity,
        ],
    )
    .await?;
    let leases = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    wait::until(
        "the operator to take the Lease",
        WAIT,
        Duration::from_millis(200),
        || async {
            Ok((lease_holder(&leases).await?.as_deref() == Some(identity.as_str())).then_some(()))
        },
    )
    .await?;
    let check = [
        "check",
        "--timeout",
        "5s",
        "--operator-namespace",
        OPERATOR_NAMESPACE,
    ];
    let no_pod = env.plugin(&check);
    assert_eq!(no_pod.code(), Some(1));
    assert!(
        no_pod
            .stderr()
            .contains(&format!("the leader {identity} is not a pod")),
        "{}",
        no_pod.stderr()
    );

    // The operator runs as a process here: its pod is stood in for by a Pod object of its
    // name whose status says Ready (no kubelet runs on this control plane to say otherwise).
    let pods: Api<Pod> = Api::namespaced(client.clone(), OPERATOR_NAMESPACE);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": identity },
        "spec": {
            // The operator's namespace enforces the restricted Pod Security level.
            "securityContext": { "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [{
                "name": "operator",
                "image": "audit-operator:test",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"] },
                },
            }],
        },
    }))?;
    pods.create(&PostParams::default(), &pod).await?;
    let ready = |status: &str| json!({ "status": { "conditions": [{ "type": "Ready", "status": status }] } });
    pods.patch_status(
        &identity,
        &PatchParams::default(),
        &Patch::Merge(ready("False")),
    )
    .await?;
    let not_ready = env.plugin(&check);
    assert_eq!(not_ready.code(), Some(1));
    assert!(
        not_ready.stderr().contains("is not Ready"),
        "{}",
        not_ready.stderr()
    );

    pods.patch_status(
        &identity,
        &PatchParams::default(),
        &Patch::Merge(ready("True")),
    )
    .await?;
    let text = env.plugin(&check).success();
    assert_eq!(
        text,
        format!(
            "CRDs established: auditstreams.audit.eventsaudit.io, auditconsumers.audit.eventsaudit.io\n\
             Leader: pod {OPERATOR_NAMESPACE}/{identity} holds Lease {OPERATOR_NAMESPACE}/{LEASE} and is Ready\n\
             The audit-operator is ready.\n"
        )
    );
    // Found without being told where, as the only Lease of that name.
    let anywhere = Plugin::run(ControlPlane::shared().kubeconfig_path(), &empty, &["check"]);
    assert_eq!(anywhere.code(), Some(0), "{}", anywhere.stderr());

    pods.delete(&identity, &Default::default()).await?;
    drop(env);
    Ok(())
}

#[test]
fn every_shipped_role_of_the_plugin_is_accepted_by_the_api_server() {
    let applied = tools::run(
        "kubectl",
        &[
            "apply",
            "--server-side",
            "--dry-run=server",
            "--field-manager=audit-tests",
            "-f",
            "deploy/rbac/",
        ],
        None,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
    for role in [
        "kubectl-audit-viewer",
        "kubectl-audit-verifier",
        "kubectl-audit-check",
    ] {
        assert!(
            applied.contains(&format!("clusterrole.rbac.authorization.k8s.io/{role}")),
            "{applied}"
        );
    }
}

#[test]
fn the_krew_manifest_lists_each_release_archive_with_its_sha256() -> anyhow::Result<()> {
    use sha2::Digest as _;
    let dist = tempfile::tempdir()?;
    std::fs::write(dist.path().join("kubectl-audit"), "#!/bin/sh\n")?;
    let mut digests = Vec::new();
    for (os, arch) in [("linux", "amd64"), ("darwin", "arm64")] {
        let archive = format!("kubectl-audit_v9.8.7_{os}_{arch}.tar.gz");
        let status = Command::new("tar")
            .args(["-czf", &archive, "kubectl-audit"])
            .current_dir(dist.path())
            .status()?;
        assert!(status.success());
        let bytes = std::fs::read(dist.path().join(&archive))?;
        digests.push((
            os,
            arch,
            archive,
            format!("{:x}", sha2::Sha256::digest(&bytes)),
        ));
    }
    let output = Command::new("bash")
        .arg(workspace_root().join("hack/krew-manifest.sh"))
        .args(["v9.8.7"])
        .arg(dist.path())
        .output()?;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest: serde_yaml::Value = serde_yaml::from_slice(&output.stdout)?;
    assert_eq!(
        manifest["apiVersion"],
        "krew.googlecontainertools.github.com/v1alpha2"
    );
    assert_eq!(manifest["kind"], "Plugin");
    assert_eq!(
        manifest["metadata"]["name"], "audit",
        "installed as `kubectl audit`"
    );
    assert_eq!(manifest["spec"]["version"], "v9.8.7");
    let platforms = manifest["spec"]["platforms"].as_sequence().unwrap();
    assert_eq!(platforms.len(), 2, "only the platforms with an archive");
    for (platform, (os, arch, archive, sha256)) in platforms.iter().zip(&digests) {
        assert_eq!(platform["selector"]["matchLabels"]["os"], *os);
        assert_eq!(platform["selector"]["matchLabels"]["arch"], *arch);
        assert_eq!(
            platform["uri"].as_str().unwrap(),
            format!(
                "https://github.com/eventsaudit/audit-operator/releases/download/v9.8.7/{archive}"
            )
        );
        assert_eq!(platform["sha256"].as_str().unwrap(), sha256);
        assert_eq!(platform["bin"], "kubectl-audit");
    }
    // Without an archive there is nothing honest to write.
    let empty = tempfile::tempdir()?;
    let none = Command::new("bash")
        .arg(workspace_root().join("hack/krew-manifest.sh"))
        .args(["v9.8.7"])
        .arg(empty.path())
        .output()?;
    assert_eq!(none.status.code(), Some(1));
    Ok(())
}

#[test]
fn the_docs_name_every_flag_and_environment_variable_of_every_command() {
    let docs = std::fs::read_to_string(workspace_root().join("docs/kubectl-audit.md")).unwrap();
    let flag = regex::Regex::new(r"--[a-z][a-z-]+").unwrap();
    let env = regex::Regex::new(r"env: ([A-Z_]+)=").unwrap();
    for command in ["status", "check", "verify", "logs"] {
        let help = Command::new(cargo_bin("kubectl-audit"))
            .args([command, "--help"])
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&help.stdout);
        for name in flag.find_iter(&help).map(|m| m.as_str()) {
            if name == "--help" || name == "--version" {
                continue;
            }
            assert!(
                docs.contains(name),
                "docs/kubectl-audit.md does not mention {command} {name}"
            );
        }
        for variable in env.captures_iter(&help).map(|c| c[1].to_owned()) {
            assert!(
                docs.contains(&variable),
                "docs/kubectl-audit.md does not mention {variable}"
            );
        }
    }
}
