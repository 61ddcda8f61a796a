//! What GitOps tools make of AuditStreams and AuditConsumers: Argo CD through the shipped
//! Lua health check (`deploy/argocd/health.lua`, run by a real Lua 5.1 interpreter the way
//! Argo CD runs it) and Flux through kstatus (the library Flux's controllers use, built by
//! hack/testenv.sh as `kstatus`), both on status objects the operator really wrote.
//!
//! The objects are fixtures in `tests/fixtures/health/`, captured from the operator on a real
//! API server by `the_fixtures_are_what_the_operator_writes`, which fails when they are stale
//! and rewrites them with `AUDIT_UPDATE_FIXTURES=1` (`make health-fixtures`). Each fixture's
//! expected verdicts are in `verdicts.yaml`, the table docs/gitops.md documents.

mod operator_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use audit_tests::kube_env::ControlPlane;
use audit_tests::kubelet::Kubelet;
use audit_tests::nats::NatsServer;
use audit_tests::operator::OperatorProcess;
use audit_tests::testenv::{cargo_bin, testenv_bin, workspace_root};
use audit_tests::{tools, wait};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, PostParams};
use operator_support::{AUDIT_CONSUMER, AUDIT_STREAM, create_token_secret};
use serde::Deserialize;
use serde_json::{Value, json};

const FIXTURES: &str = "tests/fixtures/health";
const UPDATE: &str = "AUDIT_UPDATE_FIXTURES";
const HEALTH_LUA: &str = "deploy/argocd/health.lua";
const WAIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(250);
const TOKEN: &str = "health-fixtures-token";
/// What the fixtures say instead of the test's own namespace, server address and times, so
/// that a capture is the same on every run.
const FIXTURE_NAMESPACE: &str = "shop";
const FIXTURE_NATS_URL: &str = "nats://nats.nats-system.svc:4222";
const FIXTURE_TIME: &str = "2026-01-01T00:00:00Z";

/// A health verdict: Argo CD's `status` (Healthy, Progressing, Degraded, ...) or kstatus's
/// (Current, InProgress, Failed, ...), and the message shown with it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
struct Verdict {
    status: String,
    message: String,
}

#[derive(Debug, Deserialize)]
struct Expected {
    argocd: Verdict,
    kstatus: Verdict,
}

fn fixtures_dir() -> PathBuf {
    workspace_root().join(FIXTURES)
}

fn expected_verdicts() -> BTreeMap<String, Expected> {
    let path = fixtures_dir().join("verdicts.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

fn fixture(name: &str) -> Value {
    let path = fixtures_dir().join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

/// A Lua expression for a JSON value, as Argo CD decodes an object for its VM: objects and
/// arrays become tables (arrays 1-based), numbers Lua numbers, null nil.
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".to_owned(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => lua_string(s),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(lua_literal).collect();
            format!("{{{}}}", items.join(", "))
        }
        Value::Object(members) => {
            let members: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("[{}] = {}", lua_string(k), lua_literal(v)))
                .collect();
            format!("{{{}}}", members.join(", "))
        }
    }
}

/// A Lua string literal; every byte outside printable ASCII, and the quote and backslash, as a
/// decimal escape, which Lua 5.1 reads back byte for byte.
fn lua_string(text: &str) -> String {
    let mut literal = String::with_capacity(text.len() + 2);
    literal.push('"');
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'"' && byte != b'\\' {
            literal.push(char::from(byte));
        } else {
            literal.push_str(&format!("\\{byte:03}"));
        }
    }
    literal.push('"');
    literal
}

/// Runs the health script on `object` with Debian's `lua5.1` as Argo CD runs it: the object
/// as the global `obj`, in an environment with only the libraries Argo CD opens for a
/// configured health check (base, table, a safe os; no string, math or io, and so no string
/// methods either), the chunk's return value being the health.
fn argocd_health(script_path: &Path, object: &Value) -> Verdict {
    let harness = format!(
        r#"
local script = assert(io.open({script})):read("*a")
local env = {{}}
for _, name in ipairs({{"assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall",
    "rawequal", "rawget", "rawset", "select", "setmetatable", "tonumber", "tostring", "type",
    "unpack", "xpcall", "_VERSION"}}) do
  env[name] = _G[name]
end
env.table = table
env.os = {{ time = os.time, date = os.date, clock = os.clock }}
env._G = env
env.obj = {object}
local chunk = assert(loadstring(script, "=health.lua"))
setfenv(chunk, env)
local string_methods = getmetatable("").__index
getmetatable("").__index = nil
local ok, health = pcall(chunk)
getmetatable("").__index = string_methods
if not ok then
  io.stderr:write("health.lua failed: ", tostring(health), "\n")
  os.exit(1)
end
if type(health) ~= "table" then
  io.stderr:write("health.lua returned a ", type(health), ", not a table\n")
  os.exit(1)
end
io.write(tostring(health.status), "\n", tostring(health.message))
"#,
        script = lua_string(&script_path.display().to_string()),
        object = lua_literal(object),
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let harness_path = dir.path().join("harness.lua");
    std::fs::write(&harness_path, harness).expect("writing the Lua harness");
    let output = Command::new("lua5.1")
        .arg(&harness_path)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run lua5.1 ({e}): run hack/testenv.sh as root, or apt-get install lua5.1"
            )
        });
    assert!(
        output.status.success(),
        "lua5.1 failed on the health script:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("the verdict is UTF-8");
    let (status, message) = stdout.split_once('\n').expect("status, then message");
    Verdict {
        status: status.to_owned(),
        message: message.to_owned(),
    }
}

/// kstatus's verdict on each fixture file, from the `kstatus` tool (Flux's library).
fn kstatus_verdicts(files: &[PathBuf]) -> BTreeMap<String, Verdict> {
    #[derive(Deserialize)]
    struct Line {
        file: String,
        status: String,
        message: String,
    }
    let output = Command::new(testenv_bin("kstatus"))
        .args(files)
        .output()
        .expect("running kstatus");
    assert!(
        output.status.success(),
        "kstatus failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|line| {
            let line: Line = serde_json::from_str(line).expect("kstatus prints JSON lines");
            let name = Path::new(&line.file)
                .file_name()
                .expect("a file name")
                .to_string_lossy()
                .into_owned();
            (
                name,
                Verdict {
                    status: line.status,
                    message: line.message,
                },
            )
        })
        .collect()
}

#[test]
fn argo_cd_health_of_every_fixture_is_the_documented_one() {
    let script = workspace_root().join(HEALTH_LUA);
    let mut wrong = Vec::new();
    for (name, expected) in expected_verdicts() {
        let got = argocd_health(&script, &fixture(&name));
        assert!(
            [
                "Healthy",
                "Progressing",
                "Degraded",
                "Suspended",
                "Missing",
                "Unknown"
            ]
            .contains(&got.status.as_str()),
            "{name}: {:?} is no Argo CD health status",
            got.status
        );
        if got != expected.argocd {
            wrong.push(format!(
                "{name}: expected {:?}, got {got:?}",
                expected.argocd
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn flux_kstatus_of_every_fixture_is_the_documented_one() {
    let expected = expected_verdicts();
    let files: Vec<PathBuf> = expected
        .keys()
        .map(|name| fixtures_dir().join(name))
        .collect();
    let got = kstatus_verdicts(&files);
    let mut wrong = Vec::new();
    for (name, expected) in &expected {
        if got.get(name) != Some(&expected.kstatus) {
            wrong.push(format!(
                "{name}: expected {:?}, got {:?}",
                expected.kstatus,
                got.get(name)
            ));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Every fixture is listed with its verdicts, and every listed one exists.
#[test]
fn every_fixture_has_documented_verdicts() {
    let listed: Vec<String> = expected_verdicts().into_keys().collect();
    let mut present: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("the fixtures directory")
        .map(|entry| {
            entry
                .expect("a directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .filter(|name| name != "verdicts.yaml")
        .collect();
    present.sort();
    assert_eq!(listed, present);
}

/// The generated argocd-cm patch is current, and the documented command merges both health
/// checks into an existing argocd-cm on a real API server, keeping what was there.
#[tokio::test]
async fn the_argocd_cm_patch_is_current_and_merges_into_argocd_cm() -> anyhow::Result<()> {
    let generated = Command::new("bash")
        .arg(workspace_root().join("hack/argocd-cm.sh"))
        .output()?;
    assert!(generated.status.success(), "hack/argocd-cm.sh failed");
    let committed = std::fs::read_to_string(workspace_root().join("deploy/argocd/argocd-cm.yaml"))?;
    assert!(
        committed == String::from_utf8(generated.stdout)?,
        "deploy/argocd/argocd-cm.yaml is stale: run `make argocd-cm`"
    );

    let control_plane = ControlPlane::shared();
    let namespace = control_plane.create_namespace("argocd").await?;
    let config_maps: Api<ConfigMap> =
        Api::namespaced(control_plane.admin_client().await?, &namespace);
    config_maps
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "argocd-cm" },
                "data": { "url": "https://argocd.example" },
            }))?,
        )
        .await?;
    tools::run(
        "kubectl",
        &[
            "-n",
            &namespace,
            "patch",
            "configmap",
            "argocd-cm",
            "--patch-file",
            "deploy/argocd/argocd-cm.yaml",
        ],
        None,
    )?;
    let data = config_maps.get("argocd-cm").await?.data.unwrap_or_default();
    let script = std::fs::read_to_string(workspace_root().join(HEALTH_LUA))?;
    for kind in ["AuditStream", "AuditConsumer"] {
        let key = format!("resource.customizations.health.audit.eventsaudit.io_{kind}");
        assert_eq!(data.get(&key), Some(&script), "{key}");
    }
    assert_eq!(
        data.get("url").map(String::as_str),
        Some("https://argocd.example")
    );
    Ok(())
}

/// The fixtures' world: a namespace, a nats-server requiring a token, the token's Secret.
struct Capture {
    namespace: String,
    nats: NatsServer,
    streams: Api<DynamicObject>,
    consumers: Api<DynamicObject>,
    client: kube::Client,
    captured: BTreeMap<String, String>,
}

impl Capture {
    async fn apply_stream(
        &self,
        name: &str,
        servers: &[String],
        secret: &str,
    ) -> anyhow::Result<()> {
        operator_support::apply(
            &self.streams,
            AUDIT_STREAM,
            name,
            json!({
                "connection": {
                    "servers": servers,
                    "auth": { "tokenSecretRef": { "name": secret, "key": "token" } },
                },
                "subjects": [format!("{name}.>")],
                "storage": "Memory",
            }),
        )
        .await?;
        Ok(())
    }

    async fn apply_consumer(&self, name: &str, stream: &str) -> anyhow::Result<()> {
        operator_support::apply(
            &self.consumers,
            AUDIT_CONSUMER,
            name,
            json!({ "streamRef": { "name": stream } }),
        )
        .await?;
        Ok(())
    }

    /// Waits until the Ready condition of `name` has `reason` and a message for which `settled`
    /// holds, and returns the object.
    async fn wait_ready_reason(
        &self,
        api: &Api<DynamicObject>,
        name: &str,
        reason: &str,
        settled: impl Fn(&str) -> bool,
        operator: &OperatorProcess,
    ) -> anyhow::Result<()> {
        wait::until(
            &format!("{name}: Ready condition with reason {reason}"),
            WAIT,
            POLL,
            || async {
                let object = api.get(name).await?;
                let current = object.data["status"]["observedGeneration"]
                    == json!(object.metadata.generation);
                let ready = object.data["status"]["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned());
                Ok(ready
                    .filter(|c| {
                        current
                            && c["reason"] == reason
                            && settled(c["message"].as_str().unwrap_or_default())
                    })
                    .map(|_| ()))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\noperator log:\n{}", operator.log_tail()))
    }

    /// Records `name` as fixture `file`, as the API server returns it, with what varies from
    /// run to run replaced by fixed values.
    async fn capture(
        &mut self,
        api: &Api<DynamicObject>,
        name: &str,
        file: &str,
    ) -> anyhow::Result<()> {
        let mut object = serde_json::to_value(api.get(name).await?)?;
        let metadata = object["metadata"]
            .as_object_mut()
            .expect("an object has metadata");
        metadata.retain(|key, _| {
            ["name", "namespace", "generation", "finalizers", "labels"].contains(&key.as_str())
        });
        // pointer_mut, not indexing: indexing would add a status to an object that has none.
        if let Some(conditions) = object
            .pointer_mut("/status/conditions")
            .and_then(Value::as_array_mut)
        {
            for condition in conditions {
                condition["lastTransitionTime"] = json!(FIXTURE_TIME);
            }
        }
        let text = serde_yaml::to_string(&object)?
            .replace(&self.namespace, FIXTURE_NAMESPACE)
            .replace(&self.nats.url(), FIXTURE_NATS_URL);
        let header = "# Captured from audit-operator on a real API server by tests/tests/deploy_health.rs\n\
                      # (`make health-fixtures`); the namespace, server address and times are fixed.\n";
        self.captured
            .insert(file.to_owned(), format!("{header}{text}"));
        Ok(())
    }
}

/// Runs the operator against a real API server and NATS through the states a GitOps tool
/// sees (no status yet, Ready, Reconciling, Stalled, a spec newer than the status), and
/// compares each object with its committed fixture.
#[tokio::test]
async fn the_fixtures_are_what_the_operator_writes() -> anyhow::Result<()> {
    let (client, namespace) = operator_support::namespace("health", &[]).await?;
    let nats =
        NatsServer::start_with_config(&format!("authorization {{ token: \"{TOKEN}\" }}")).await?;
    create_token_secret(&client, &namespace, "nats-token", TOKEN).await?;
    let mut capture = Capture {
        streams: operator_support::api(&client, &namespace, AUDIT_STREAM),
        consumers: operator_support::api(&client, &namespace, AUDIT_CONSUMER),
        client: client.clone(),
        namespace: namespace.clone(),
        nats,
        captured: BTreeMap::new(),
    };
    let streams = capture.streams.clone();
    let consumers = capture.consumers.clone();
    let nats_url = vec![capture.nats.url()];

    // Applied before any operator runs: what a GitOps tool sees right after its sync.
    capture
        .apply_stream("orders", &nats_url, "nats-token")
        .await?;
    capture.apply_consumer("reader", "orders").await?;
    capture
        .capture(&streams, "orders", "auditstream-new.yaml")
        .await?;
    capture
        .capture(&consumers, "reader", "auditconsumer-new.yaml")
        .await?;

    let operator_args = [
        "--namespace",
        namespace.as_str(),
        "--consumer-image",
        "audit-consumer:test",
    ];
    let mut operator = OperatorProcess::start(&operator_args)?;
    capture
        .wait_ready_reason(&streams, "orders", "StreamReady", |_| true, &operator)
        .await?;
    // No kubelet yet: the pod exists but never runs.
    capture
        .wait_ready_reason(
            &consumers,
            "reader",
            "WorkloadProgressing",
            |message| message.ends_with("1 up to date"),
            &operator,
        )
        .await?;
    capture
        .capture(&consumers, "reader", "auditconsumer-progressing.yaml")
        .await?;
    // The stream's live state counts the durable consumer from its next refresh on; waiting
    // for it makes every later capture of the stream the same on every run.
    wait::until(
        "AuditStream orders counting one consumer",
        WAIT,
        POLL,
        || async {
            let object = streams.get("orders").await?;
            Ok((object.data["status"]["consumerCount"] == 1).then_some(()))
        },
    )
    .await?;
    capture
        .capture(&streams, "orders", "auditstream-ready.yaml")
        .await?;

    // Nothing listens on port 1 of the loopback address: refused at once, retried.
    capture
        .apply_stream(
            "unreachable",
            &["nats://127.0.0.1:1".to_owned()],
            "nats-token",
        )
        .await?;
    capture
        .wait_ready_reason(
            &streams,
            "unreachable",
            "NatsUnreachable",
            |_| true,
            &operator,
        )
        .await?;
    capture
        .capture(&streams, "unreachable", "auditstream-reconciling.yaml")
        .await?;
    capture
        .apply_stream("locked", &nats_url, "no-such-secret")
        .await?;
    capture
        .wait_ready_reason(&streams, "locked", "SecretNotFound", |_| true, &operator)
        .await?;
    capture
        .capture(&streams, "locked", "auditstream-stalled.yaml")
        .await?;
    capture.apply_consumer("orphan", "no-such-stream").await?;
    capture
        .wait_ready_reason(&consumers, "orphan", "StreamNotFound", |_| true, &operator)
        .await?;
    capture
        .capture(&consumers, "orphan", "auditconsumer-stalled.yaml")
        .await?;

    // The consumer's pod runs (as a local process) and passes its readiness probe.
    let mut kubelet = Kubelet::builder(&capture.client, &namespace)
        .binary("/usr/local/bin/audit-consumer", cargo_bin("audit-consumer"))
        .start()
        .await?;
    kubelet.wait_ready(1, WAIT).await?;
    capture
        .wait_ready_reason(&consumers, "reader", "Ready", |_| true, &operator)
        .await?;
    capture
        .capture(&consumers, "reader", "auditconsumer-ready.yaml")
        .await?;

    // A spec change the operator has not seen: with no operator running, the status stays
    // at the previous generation.
    operator.stop();
    operator_support::apply(
        &streams,
        AUDIT_STREAM,
        "orders",
        json!({
            "connection": {
                "servers": nats_url,
                "auth": { "tokenSecretRef": { "name": "nats-token", "key": "token" } },
            },
            "subjects": ["orders.>"],
            "storage": "Memory",
            "maxAge": "48h",
        }),
    )
    .await?;
    operator_support::apply(
        &consumers,
        AUDIT_CONSUMER,
        "reader",
        json!({ "streamRef": { "name": "orders" }, "format": "Text" }),
    )
    .await?;
    capture
        .capture(
            &streams,
            "orders",
            "auditstream-generation-not-observed.yaml",
        )
        .await?;
    capture
        .capture(
            &consumers,
            "reader",
            "auditconsumer-generation-not-observed.yaml",
        )
        .await?;
    kubelet.shutdown().await;

    compare_or_update(&capture.captured)
}

/// Fails, listing every stale fixture, unless each captured object equals its committed file;
/// with AUDIT_UPDATE_FIXTURES=1 writes them instead.
fn compare_or_update(captured: &BTreeMap<String, String>) -> anyhow::Result<()> {
    let dir = fixtures_dir();
    if std::env::var_os(UPDATE).is_some_and(|v| v == "1") {
        std::fs::create_dir_all(&dir)?;
        for (file, text) in captured {
            std::fs::write(dir.join(file), text)?;
        }
        return Ok(());
    }
    let mut stale = Vec::new();
    for (file, text) in captured {
        let committed = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if &committed != text {
            let changes: Vec<String> = committed
                .lines()
                .zip(text.lines())
                .filter(|(old, new)| old != new)
                .map(|(old, new)| format!("  committed: {old}\n  now:       {new}"))
                .collect();
            stale.push(format!(
                "{FIXTURES}/{file} differs from what the operator writes now:\n{}",
                changes.join("\n")
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "{}\nrun `make health-fixtures` and review the verdicts in {FIXTURES}/verdicts.yaml",
        stale.join("\n")
    );
    Ok(())
}
