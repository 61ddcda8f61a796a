//! AuditStream reconciliation against the real servers: the committed CRDs on the test
//! control plane, a real nats-server, and the `audit-operator` binary run as a child process
//! scoped to each test's namespace with short requeue and retry intervals.

mod operator_support;

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, stream};
use audit_tests::kube_env::ControlPlane;
use audit_tests::nats::NatsServer;
use audit_tests::nats_accounts::Accounts;
use audit_tests::operator::{OperatorProcess, install_crds};
use audit_tests::testenv::{testenv_bin, workspace_root};
use audit_tests::wait;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use operator_support::{AUDIT_STREAM, condition, condition_status, events_about, occurrences};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
const FINALIZER: &str = "audit.eventsaudit.io/stream-cleanup";
const OWNER_KEY: &str = "audit.eventsaudit.io/owner";

/// One test's world: a namespace, a nats-server and an operator watching that namespace.
struct Env {
    client: kube::Client,
    namespace: String,
    streams: Api<DynamicObject>,
    nats: NatsServer,
    operator: OperatorProcess,
}

impl Env {
    async fn start(prefix: &str) -> anyhow::Result<Self> {
        Self::start_with_nats(prefix, NatsServer::start().await?).await
    }

    async fn start_with_nats(prefix: &str, nats: NatsServer) -> anyhow::Result<Self> {
        Self::start_with_operator_args(prefix, nats, &[]).await
    }

    async fn start_with_operator_args(
        prefix: &str,
        nats: NatsServer,
        operator_args: &[&str],
    ) -> anyhow::Result<Self> {
        let (client, namespace) = operator_support::namespace(prefix, &[]).await?;
        let mut args = vec!["--namespace", namespace.as_str()];
        args.extend_from_slice(operator_args);
        let operator = OperatorProcess::start(&args)?;
        let streams = operator_support::api(&client, &namespace, AUDIT_STREAM);
        Ok(Self {
            client,
            namespace,
            streams,
            nats,
            operator,
        })
    }

    async fn jetstream(&self) -> anyhow::Result<jetstream::Context> {
        Ok(jetstream::new(self.nats.client().await?))
    }

    /// Server-side applies an AuditStream with `spec`, as a user's `kubectl apply` would.
    async fn apply(&self, name: &str, spec: Value) -> Result<DynamicObject, kube::Error> {
        operator_support::apply(&self.streams, AUDIT_STREAM, name, spec).await
    }

    /// A spec reaching this test's nats-server, with `extra` fields merged in.
    fn spec(&self, extra: Value) -> Value {
        let mut spec = json!({
            "connection": { "servers": [self.nats.url()] },
            "subjects": ["audit.>"],
        });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
            spec.extend(extra.clone());
        }
        spec
    }

    /// Waits until the Ready condition has `status` and `reason`, for the current generation;
    /// returns the object.
    async fn wait_ready_condition(
        &mut self,
        name: &str,
        status: &str,
        reason: &str,
    ) -> anyhow::Result<DynamicObject> {
        let what = format!("AuditStream {name} Ready={status} ({reason})");
        let result = wait::until(&what, WAIT, POLL, || async {
            let object = self.streams.get(name).await?;
            let generation = object.metadata.generation;
            let current = object.data["status"]["observedGeneration"].as_i64() == generation;
            let matches = condition(&object, "Ready")
                .is_some_and(|c| c["status"] == status && c["reason"] == reason);
            Ok((current && matches).then_some(object))
        })
        .await;
        self.with_operator_log(result)
    }

    async fn wait_ready(&mut self, name: &str) -> anyhow::Result<DynamicObject> {
        self.wait_ready_condition(name, "True", "StreamReady").await
    }

    /// Polls the stream `ORDERS` on NATS until `check` accepts what it sees (`None` when the
    /// stream does not exist).
    async fn wait_for_stream<T>(
        &mut self,
        what: &str,
        check: impl FnMut(Option<&stream::Info>) -> Option<T>,
    ) -> anyhow::Result<T> {
        self.wait_for_named_stream("ORDERS", what, check).await
    }

    async fn wait_for_named_stream<T>(
        &mut self,
        name: &str,
        what: &str,
        mut check: impl FnMut(Option<&stream::Info>) -> Option<T>,
    ) -> anyhow::Result<T> {
        let js = self.jetstream().await?;
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let info = match js.get_stream(name).await {
                Ok(stream) => Some(stream.cached_info().clone()),
                Err(_) => None,
            };
            if let Some(value) = check(info.as_ref()) {
                return Ok(value);
            }
            if tokio::time::Instant::now() > deadline {
                let timed_out = anyhow::anyhow!("timed out after {WAIT:?} waiting for {what}");
                return self.with_operator_log(Err(timed_out));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Reasons of the Events about AuditStream `name`.
    async fn event_reasons(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let events = events_about(&self.client, &self.namespace, name).await?;
        Ok(events.into_iter().filter_map(|e| e.reason).collect())
    }

    /// How often an Event `reason` was reported about AuditStream `name`.
    async fn event_occurrences(&self, name: &str, reason: &str) -> anyhow::Result<i32> {
        let events = events_about(&self.client, &self.namespace, name).await?;
        Ok(occurrences(&events, reason))
    }

    async fn wait_event(&mut self, name: &str, reason: &str) -> anyhow::Result<()> {
        let what = format!("an Event {reason} for {name}");
        let result = wait::until(&what, WAIT, POLL, || async {
            let reasons = self.event_reasons(name).await?;
            Ok(reasons.iter().any(|r| r == reason).then_some(()))
        })
        .await;
        self.with_operator_log(result)
    }

    /// Everything the operator has logged so far.
    fn operator_log(&self) -> String {
        std::fs::read_to_string(self.operator.log_path()).unwrap_or_default()
    }

    /// The value of one sample of the operator's `/metrics`; 0 while it is absent.
    async fn operator_metric(&self, sample: &str) -> anyhow::Result<f64> {
        operator_support::operator_metric(&self.operator, sample).await
    }

    /// The ids of every connection, open or closed, the operator has made to this test's
    /// nats-server (it names its connections `audit-operator`), from the server's monitoring
    /// endpoint.
    async fn operator_connection_ids(&self) -> anyhow::Result<BTreeSet<u64>> {
        let connz =
            audit_tests::http::get(self.nats.monitor_port(), "/connz?state=all&limit=100000")
                .await?;
        let connz: Value = serde_json::from_str(&connz.body)?;
        Ok(connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|connection| connection["name"] == "audit-operator")
            .filter_map(|connection| connection["cid"].as_u64())
            .collect())
    }

    /// Adds the operator's log to a failure, which is where the explanation usually is.
    fn with_operator_log<T>(&mut self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        result.map_err(|e| {
            let running = self.operator.ensure_running().err();
            anyhow::anyhow!(
                "{e:#}\n{running:?}\noperator log:\n{}\nnats log:\n{}",
                self.operator.log_tail(),
                self.nats.log_tail()
            )
        })
    }
}

/// A 422 rejection's message and how many problems it lists.
fn rejection(error: kube::Error) -> (String, usize) {
    match error {
        kube::Error::Api(status) if status.code == 422 => {
            // The API server adds a note that CEL rules were skipped; not a problem of its own.
            let causes = status.details.map_or(0, |details| {
                details
                    .causes
                    .iter()
                    .filter(|c| !c.message.contains("validation rules were not checked"))
                    .count()
            });
            (status.message, causes)
        }
        other => panic!("expected a 422 rejection, got {other}"),
    }
}

fn rejection_message(error: kube::Error) -> String {
    match error {
        kube::Error::Api(status) if status.code == 422 => status.message,
        other => panic!("expected a 422 rejection, got {other}"),
    }
}

#[tokio::test]
async fn create_gives_a_ready_audit_safe_stream_with_kstatus_and_live_state() -> anyhow::Result<()>
{
    let mut env = Env::start("ast-create").await?;
    env.apply(
        "orders",
        env.spec(json!({ "name": "ORDERS", "maxAge": "24h" })),
    )
    .await?;
    let object = env.wait_ready("orders").await?;

    assert_eq!(condition_status(&object, "Reconciling"), "False");
    assert_eq!(condition_status(&object, "Stalled"), "False");
    assert_eq!(object.data["status"]["streamName"], "ORDERS");
    assert!(
        object
            .metadata
            .finalizers
            .clone()
            .unwrap_or_default()
            .contains(&FINALIZER.to_owned())
    );
    // The finalizer is written under the operator's name, as its status is.
    let finalizer_managers: Vec<String> = object
        .metadata
        .managed_fields
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|entry| {
            entry
                .fields_v1
                .as_ref()
                .is_some_and(|fields| fields.0.pointer("/f:metadata/f:finalizers").is_some())
        })
        .map(|entry| entry.manager.unwrap_or_default())
        .collect();
    assert_eq!(finalizer_managers, ["audit-operator"]);
    // Defaults the schema filled in.
    assert_eq!(object.data["spec"]["storage"], "File");
    assert_eq!(object.data["spec"]["deletionPolicy"], "Retain");

    let info = env
        .wait_for_stream("stream ORDERS on NATS", |info| info.cloned())
        .await?;
    assert_eq!(info.config.storage, stream::StorageType::File);
    assert_eq!(info.config.subjects, ["audit.>"]);
    assert!(info.config.deny_delete && info.config.deny_purge);
    assert_eq!(info.config.max_age, Duration::from_secs(24 * 3600));
    assert_eq!(
        info.config.metadata.get(OWNER_KEY).map(String::as_str),
        Some(format!("{}/orders", env.namespace).as_str())
    );
    // A first creation writes no Event (the status says it): a bulk apply of N objects
    // would otherwise write N Events more. Nothing else was worth one either.
    let reasons = env.event_reasons("orders").await?;
    assert!(
        reasons.is_empty(),
        "a stream created as asked has no Event, got {reasons:?}"
    );
    assert!(
        env.operator_log().contains("created stream ORDERS on NATS"),
        "the operator logs the creation"
    );

    // Live state reaches the status on a periodic check.
    let js = env.jetstream().await?;
    for i in 0..3 {
        js.publish(format!("audit.order.{i}"), "{}".into())
            .await?
            .await?;
    }
    let streams = env.streams.clone();
    wait::until("status.messages == 3", WAIT, POLL, || async {
        let object = streams.get("orders").await?;
        let status = &object.data["status"];
        Ok((status["messages"] == 3 && status["lastSeq"] == 3).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn spec_update_drift_and_out_of_band_delete_are_put_right() -> anyhow::Result<()> {
    let mut env = Env::start("ast-update").await?;
    env.apply(
        "orders",
        env.spec(json!({ "name": "ORDERS", "maxAge": "24h" })),
    )
    .await?;
    env.wait_ready("orders").await?;

    // A mutable field changed in the spec.
    env.apply(
        "orders",
        env.spec(json!({ "name": "ORDERS", "maxAge": "48h" })),
    )
    .await?;
    env.wait_for_stream("max_age 48h on NATS", |info| {
        (info?.config.max_age == Duration::from_secs(48 * 3600)).then_some(())
    })
    .await?;
    env.wait_ready("orders").await?;
    env.wait_event("orders", "Updated").await?;

    // Someone shortens the retention behind the operator's back.
    let js = env.jetstream().await?;
    let mut tampered = js.get_stream("ORDERS").await?.cached_info().config.clone();
    tampered.max_age = Duration::from_secs(60);
    tampered.duplicate_window = Duration::from_secs(60);
    tampered.description = Some("tampered by hand".into());
    js.update_stream(&tampered).await?;
    env.wait_for_stream("max_age restored to 48h", |info| {
        (info?.config.max_age == Duration::from_secs(48 * 3600)).then_some(())
    })
    .await?;
    env.wait_event("orders", "DriftCorrected").await?;
    // Users read values and the spec's field names, not Rust's debug output.
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    let drift_note = events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .find(|e| e.reason.as_deref() == Some("DriftCorrected"))
        .and_then(|e| e.note)
        .unwrap_or_default();
    for expected in [
        "maxAge (server: 1m, spec: 48h)",
        "duplicateWindow (server: 1m, spec: 2m)",
        "description (server: \"tampered by hand\", spec: none)",
    ] {
        assert!(
            drift_note.contains(expected),
            "{expected} missing: {drift_note}"
        );
    }
    let log = env.operator_log();
    assert!(!drift_note.contains("Some("), "{drift_note}");
    assert!(
        !log.contains("Some("),
        "Rust debug output in the log:\n{log}"
    );

    // Someone deletes the stream.
    js.delete_stream("ORDERS").await?;
    env.wait_for_stream("stream ORDERS recreated", |info| info.map(|_| ()))
        .await?;
    env.wait_event("orders", "Recreated").await?;
    env.wait_ready("orders").await?;
    Ok(())
}

#[tokio::test]
async fn edits_nats_cannot_apply_are_rejected_by_the_apiserver() -> anyhow::Result<()> {
    let mut env = Env::start("ast-cel").await?;
    let base = json!({ "name": "ORDERS", "retention": "Limits", "storage": "File" });
    env.apply("orders", env.spec(base.clone())).await?;
    env.wait_ready("orders").await?;

    let cases = [
        (json!({ "storage": "Memory" }), "storage is immutable"),
        (json!({ "retention": "WorkQueue" }), "to or from WorkQueue"),
        (json!({ "name": "RENAMED" }), "name is immutable"),
        (
            json!({ "denyDelete": false }),
            "denyDelete cannot be turned off",
        ),
        (
            json!({ "denyPurge": false }),
            "denyPurge cannot be turned off",
        ),
    ];
    for (change, expected) in cases {
        let mut spec = env.spec(base.clone());
        spec.as_object_mut()
            .unwrap()
            .extend(change.as_object().unwrap().clone());
        let message = rejection_message(env.apply("orders", spec).await.unwrap_err());
        assert!(message.contains(expected), "{change}: {message}");
    }
    // A change NATS can apply passes (Limits <-> Interest).
    env.apply(
        "orders",
        env.spec(json!({ "name": "ORDERS", "retention": "Interest", "storage": "File" })),
    )
    .await?;
    env.wait_for_stream("retention Interest on NATS", |info| {
        (info?.config.retention == stream::RetentionPolicy::Interest).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn malformed_specs_are_rejected_by_the_schema() -> anyhow::Result<()> {
    let env = Env::start("ast-schema").await?;
    let url = env.nats.url();
    let cases = [
        (
            json!({ "connection": { "servers": [url] }, "subjects": [] }),
            "subjects",
        ),
        (json!({ "subjects": ["a"] }), "connection"),
        (
            json!({ "connection": { "servers": ["http://x"] }, "subjects": ["a"] }),
            "servers",
        ),
        (
            json!({ "connection": { "servers": ["nats://auditor:s3cret@nats:4222"] }, "subjects": ["a"] }),
            "servers",
        ),
        (
            json!({ "connection": { "servers": [url] }, "subjects": ["a"], "maxAge": "3d" }),
            "maxAge",
        ),
        (
            json!({ "connection": { "servers": [url] }, "subjects": ["a"], "replicas": 9 }),
            "replicas",
        ),
        (
            json!({ "connection": { "servers": [url] }, "subjects": ["a"], "storage": "Disk" }),
            "storage",
        ),
        (
            json!({ "connection": { "servers": [url] }, "subjects": ["a"], "name": "a.b" }),
            "name",
        ),
        (
            json!({ "connection": { "servers": [url] }, "subjects": ["a"], "maxAge": "1m", "duplicateWindow": "5m" }),
            "duplicateWindow must not be longer than maxAge",
        ),
        (
            json!({ "connection": { "servers": [url] }, "subjects": ["a"], "maxAge": "1h", "duplicateWindow": "abc" }),
            "spec.duplicateWindow",
        ),
        (
            json!({ "connection": { "servers": [url] }, "subjects": ["a"], "maxAge": "3d", "duplicateWindow": "1m" }),
            "spec.maxAge",
        ),
        (
            json!({ "connection": { "servers": [url], "auth": {
                "tokenSecretRef": { "name": "s", "key": "t" },
                "nkeySecretRef": { "name": "s", "key": "n" } } }, "subjects": ["a"] }),
            "set exactly one of",
        ),
        (
            json!({ "connection": { "servers": [url] }, "subjects": ["a"], "metadata": { "_nats.x": "1" } }),
            "reserved",
        ),
    ];
    for (spec, expected) in cases {
        let (message, causes) = rejection(env.apply("bad", spec.clone()).await.unwrap_err());
        assert!(message.contains(expected), "{spec}: {message}");
        // One mistake, one message: a malformed duration is not also fed to a CEL rule.
        assert_eq!(causes, 1, "{spec}: {message}");
    }
    Ok(())
}

#[tokio::test]
async fn an_existing_stream_is_adopted_only_when_allowed() -> anyhow::Result<()> {
    let mut env = Env::start("ast-adopt").await?;
    let js = env.jetstream().await?;
    js.create_stream(stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["audit.>".into()],
        max_age: Duration::from_secs(3600),
        ..Default::default()
    })
    .await?;
    js.publish("audit.kept", "before adoption".into())
        .await?
        .await?;

    env.apply("orders", env.spec(json!({ "name": "ORDERS" })))
        .await?;
    let object = env
        .wait_ready_condition("orders", "False", "StreamExists")
        .await?;
    assert_eq!(condition_status(&object, "Stalled"), "True");
    assert_eq!(condition_status(&object, "Reconciling"), "False");
    let message = condition(&object, "Ready").unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("spec.adopt"), "{message}");
    // Refused means untouched.
    let info = js.get_stream("ORDERS").await?.cached_info().clone();
    assert_eq!(info.config.max_age, Duration::from_secs(3600));
    assert!(!info.config.metadata.contains_key(OWNER_KEY));

    env.apply(
        "orders",
        env.spec(json!({ "name": "ORDERS", "adopt": true })),
    )
    .await?;
    env.wait_ready("orders").await?;
    env.wait_event("orders", "Adopted").await?;
    let info = js.get_stream("ORDERS").await?.cached_info().clone();
    assert_eq!(info.config.max_age, Duration::ZERO);
    assert!(info.config.deny_delete);
    assert!(info.config.metadata.contains_key(OWNER_KEY));
    assert_eq!(info.state.messages, 1, "adoption keeps the data");

    // A second resource naming the same stream is refused even with adopt, while the
    // first one exists.
    env.apply(
        "orders-copy",
        env.spec(json!({ "name": "ORDERS", "adopt": true })),
    )
    .await?;
    let copy = env
        .wait_ready_condition("orders-copy", "False", "StreamOwnedByAnotherResource")
        .await?;
    assert_eq!(condition_status(&copy, "Stalled"), "True");
    Ok(())
}

#[tokio::test]
async fn deletion_retains_or_deletes_the_stream_per_policy() -> anyhow::Result<()> {
    let mut env = Env::start("ast-delete").await?;
    let js = env.jetstream().await?;
    env.apply(
        "kept",
        env.spec(json!({ "name": "KEPT", "subjects": ["kept.>"] })),
    )
    .await?;
    env.apply(
        "dropped",
        env.spec(
            json!({ "name": "DROPPED", "subjects": ["dropped.>"], "deletionPolicy": "Delete" }),
        ),
    )
    .await?;
    env.wait_ready("kept").await?;
    env.wait_ready("dropped").await?;

    let logged_before_deletion = env.operator_log().len();
    for name in ["kept", "dropped"] {
        env.streams.delete(name, &DeleteParams::default()).await?;
    }
    let streams = env.streams.clone();
    wait::until("both AuditStreams gone", WAIT, POLL, || async {
        let kept = streams.get_opt("kept").await?;
        let dropped = streams.get_opt("dropped").await?;
        Ok((kept.is_none() && dropped.is_none()).then_some(()))
    })
    .await?;
    // Reconciliations queued with a stale copy run right after the object went; give them
    // time to show themselves.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let deletion_log = env.operator_log()[logged_before_deletion..].to_owned();
    assert!(
        !deletion_log.contains("WARN") && !deletion_log.contains("ERROR"),
        "a normal deletion logs at info:\n{deletion_log}"
    );
    assert!(
        js.get_stream("KEPT").await.is_ok(),
        "Retain keeps the stream"
    );
    assert!(
        js.get_stream("DROPPED").await.is_err(),
        "Delete removes the stream"
    );
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    let reasons: Vec<String> = events
        .list(&Default::default())
        .await?
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect();
    assert!(reasons.contains(&"Retained".to_owned()), "{reasons:?}");
    for (name, reason) in [("kept", "Retained"), ("dropped", "Deleted")] {
        assert_eq!(
            env.event_occurrences(name, reason).await?,
            1,
            "one {reason} Event for {name}: {reasons:?}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn nats_down_at_create_then_up_becomes_ready_without_intervention() -> anyhow::Result<()> {
    let mut env = Env::start("ast-outage").await?;
    env.nats.stop().await;
    env.apply("orders", env.spec(json!({ "name": "ORDERS" })))
        .await?;
    let object = env
        .wait_ready_condition("orders", "False", "NatsUnreachable")
        .await?;
    assert_eq!(condition_status(&object, "Reconciling"), "True");
    assert_eq!(condition_status(&object, "Stalled"), "False");
    env.wait_event("orders", "NatsUnreachable").await?;

    env.nats.start_again().await?;
    env.wait_ready("orders").await?;
    env.wait_for_stream("stream ORDERS on NATS", |info| info.map(|_| ()))
        .await?;
    Ok(())
}

#[tokio::test]
async fn credentials_come_from_a_secret_and_rotation_takes_effect() -> anyhow::Result<()> {
    let nats = NatsServer::start_with_config(
        r#"
accounts {
  AUDIT { jetstream: enabled, users: [ { user: auditor, password: right-password } ] }
}
"#,
    )
    .await?;
    let mut env = Env::start_with_nats("ast-creds", nats).await?;
    let spec = env.spec(json!({
        "name": "ORDERS",
        "connection": {
            "servers": [env.nats.url()],
            "auth": { "userPasswordSecretRef": { "name": "nats-user" } },
        },
    }));
    env.apply("orders", spec).await?;
    let object = env
        .wait_ready_condition("orders", "False", "SecretNotFound")
        .await?;
    assert_eq!(condition_status(&object, "Stalled"), "True");

    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let secret = |password: &str| -> Secret {
        serde_json::from_value(json!({
            "metadata": { "name": "nats-user" },
            "type": "kubernetes.io/basic-auth",
            "stringData": { "username": "auditor", "password": password },
        }))
        .unwrap()
    };
    secrets
        .create(&PostParams::default(), &secret("wrong-password"))
        .await?;
    env.wait_ready_condition("orders", "False", "NatsAuthenticationFailed")
        .await?;
    env.wait_event("orders", "NatsAuthenticationFailed").await?;

    // Rotation to the right password: no spec edit, the Secret watch triggers it.
    secrets
        .replace(
            "nats-user",
            &PostParams::default(),
            &secret("right-password"),
        )
        .await?;
    env.wait_ready("orders").await?;

    // And back to a wrong one: the pooled connection of the old Secret is not reused.
    secrets
        .replace("nats-user", &PostParams::default(), &secret("revoked"))
        .await?;
    env.wait_ready_condition("orders", "False", "NatsAuthenticationFailed")
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_memory_stream_lost_in_a_nats_restart_comes_back() -> anyhow::Result<()> {
    let mut env = Env::start("ast-memory").await?;
    env.apply(
        "orders",
        env.spec(json!({ "name": "ORDERS", "storage": "Memory" })),
    )
    .await?;
    env.wait_ready("orders").await?;
    env.nats.stop().await;
    env.nats.start_again().await?;
    env.wait_event("orders", "Recreated").await?;
    let info = env
        .wait_for_stream("memory stream ORDERS back on NATS", |info| info.cloned())
        .await?;
    assert_eq!(info.config.storage, stream::StorageType::Memory);
    env.wait_ready("orders").await?;
    Ok(())
}

#[tokio::test]
async fn the_sample_becomes_ready_with_a_real_stream() -> anyhow::Result<()> {
    let mut env = Env::start("ast-sample").await?;
    let path = workspace_root().join("deploy/samples/auditstream.yaml");
    let mut sample: Value = serde_yaml::from_str(&std::fs::read_to_string(path)?)?;
    // The sample names an in-cluster Service; the test's server is on loopback.
    sample["spec"]["connection"]["servers"] = json!([env.nats.url()]);
    let name = sample["metadata"]["name"].as_str().unwrap().to_owned();
    let stream_name = sample["spec"]["name"].as_str().unwrap().to_owned();
    env.apply(&name, sample["spec"].clone()).await?;
    env.wait_ready(&name).await?;
    let info = env
        .wait_for_named_stream(&stream_name, "the sample's stream", |info| info.cloned())
        .await?;
    assert_eq!(info.config.max_age, Duration::from_secs(2160 * 3600));
    assert!(info.config.deny_delete && info.config.deny_purge);
    Ok(())
}

#[tokio::test]
async fn kubectl_explain_teaches_the_api() -> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    install_crds(&control_plane.admin_client().await?).await?;
    // The apiserver publishes a new CRD's OpenAPI a moment after it is Established.
    let explained = wait::until(
        "kubectl explain auditstream.spec.denyDelete",
        WAIT,
        POLL,
        || async {
            let output = tokio::process::Command::new(testenv_bin("kubectl"))
                .args(["explain", "auditstream.spec.denyDelete"])
                .env("KUBECONFIG", control_plane.kubeconfig_path())
                .output()
                .await?;
            Ok(output
                .status
                .success()
                .then(|| String::from_utf8_lossy(&output.stdout).into_owned()))
        },
    )
    .await?;
    assert!(explained.contains("append-only"), "{explained}");
    let short_name = tokio::process::Command::new(testenv_bin("kubectl"))
        .args(["get", "ast,audit", "--all-namespaces"])
        .env("KUBECONFIG", control_plane.kubeconfig_path())
        .output()
        .await?;
    assert!(
        short_name.status.success(),
        "{}",
        String::from_utf8_lossy(&short_name.stderr)
    );
    Ok(())
}

/// Writes a server certificate signed by a fresh CA into `dir`; returns the CA's PEM and the
/// nats-server `tls { ... }` block that serves that certificate.
fn tls_server(dir: &std::path::Path) -> anyhow::Result<(String, String)> {
    let ca = audit_tests::certs::TestCa::new("nats-test-ca")?;
    let serving = ca.loopback_server("nats-server")?;
    let cert = dir.join("server.crt");
    let key = dir.join("server.key");
    std::fs::write(&cert, &serving.cert_pem)?;
    std::fs::write(&key, &serving.key_pem)?;
    let block = format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n}}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    Ok((ca.cert_pem(), block))
}

fn opaque_secret(name: &str, key: &str, value: &str) -> Secret {
    serde_json::from_value(json!({
        "metadata": { "name": name },
        "stringData": { key: value },
    }))
    .expect("a valid Secret")
}

#[tokio::test]
async fn tls_with_a_ca_from_a_secret_and_a_token() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let (ca_pem, tls_block) = tls_server(certs.path())?;
    let nats = NatsServer::start_with_config(&format!(
        "{tls_block}authorization {{ token: \"t0ken\" }}\n"
    ))
    .await?;
    let mut env = Env::start_with_nats("ast-tls", nats).await?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let (other_ca_pem, _) = tls_server(tempfile::tempdir()?.path())?;
    secrets
        .create(
            &PostParams::default(),
            &opaque_secret("nats-ca", "ca.crt", &other_ca_pem),
        )
        .await?;
    secrets
        .create(
            &PostParams::default(),
            &opaque_secret("nats-token", "token", "t0ken"),
        )
        .await?;
    let spec = env.spec(json!({
        "name": "ORDERS",
        "connection": {
            "servers": [format!("tls://127.0.0.1:{}", env.nats.port())],
            "auth": { "tokenSecretRef": { "name": "nats-token", "key": "token" } },
            "tls": { "caSecretRef": { "name": "nats-ca", "key": "ca.crt" } },
        },
    }));
    env.apply("orders", spec).await?;

    // A CA that did not sign the server's certificate: the user must fix the Secret.
    let object = env
        .wait_ready_condition("orders", "False", "NatsTlsFailed")
        .await?;
    assert_eq!(condition_status(&object, "Stalled"), "True");

    secrets
        .replace(
            "nats-ca",
            &PostParams::default(),
            &opaque_secret("nats-ca", "ca.crt", &ca_pem),
        )
        .await?;
    env.wait_ready("orders").await?;

    // The stream is really there, on the TLS listener, behind the token.
    let client = async_nats::ConnectOptions::with_token("t0ken".into())
        .add_root_certificates(write_pem(certs.path(), "ca.crt", &ca_pem)?)
        .require_tls(true)
        .connect(format!("tls://127.0.0.1:{}", env.nats.port()))
        .await?;
    let mut stream = jetstream::new(client).get_stream("ORDERS").await?;
    assert_eq!(
        stream.info().await?.config.subjects,
        vec!["audit.>".to_owned()]
    );
    Ok(())
}

fn write_pem(dir: &std::path::Path, name: &str, pem: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, pem)?;
    Ok(path)
}

#[tokio::test]
async fn nkey_seed_from_a_secret() -> anyhow::Result<()> {
    let user = nkeys::KeyPair::new_user();
    let nats = NatsServer::start_with_config(&format!(
        "authorization {{ users: [ {{ nkey: {} }} ] }}\n",
        user.public_key()
    ))
    .await?;
    let mut env = Env::start_with_nats("ast-nkey", nats).await?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    // A seed the server does not know is an authentication failure, not a retry loop.
    let stranger = nkeys::KeyPair::new_user();
    secrets
        .create(
            &PostParams::default(),
            &opaque_secret("nats-nkey", "seed", &stranger.seed()?),
        )
        .await?;
    let spec = env.spec(json!({
        "name": "ORDERS",
        "connection": {
            "servers": [env.nats.url()],
            "auth": { "nkeySecretRef": { "name": "nats-nkey", "key": "seed" } },
        },
    }));
    env.apply("orders", spec).await?;
    env.wait_ready_condition("orders", "False", "NatsAuthenticationFailed")
        .await?;

    secrets
        .replace(
            "nats-nkey",
            &PostParams::default(),
            &opaque_secret("nats-nkey", "seed", &user.seed()?),
        )
        .await?;
    env.wait_ready("orders").await?;
    let client = async_nats::ConnectOptions::with_nkey(user.seed()?)
        .connect(env.nats.url())
        .await?;
    jetstream::new(client).get_stream("ORDERS").await?;
    Ok(())
}

#[tokio::test]
async fn traffic_does_not_make_the_operator_rewrite_status() -> anyhow::Result<()> {
    // A requeue interval far beyond the test: any status write during the traffic below would
    // come from the operator reacting to watch events of its own status writes.
    let mut env = Env::start_with_operator_args(
        "ast-quiet",
        NatsServer::start().await?,
        &["--requeue-interval", "10m"],
    )
    .await?;
    env.apply("orders", env.spec(json!({ "name": "ORDERS" })))
        .await?;
    env.wait_ready("orders").await?;

    // Steady traffic for the rest of the test.
    let js = env.jetstream().await?;
    let publisher = tokio::spawn(async move {
        for n in 0..400 {
            let _ = js.publish(format!("audit.{n}"), "event".into()).await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    // A metadata edit that is no change to the stream. Were the operator to reconcile on
    // every watch event, it would now write the moving counters into status, and each write
    // would wake it again for as long as the traffic lasts.
    let labelled = env
        .streams
        .patch(
            "orders",
            &PatchParams::apply("quiet-test"),
            &Patch::Apply(json!({
                "apiVersion": "audit.eventsaudit.io/v1alpha1",
                "kind": "AuditStream",
                "metadata": { "name": "orders", "labels": { "team": "payments" } },
            })),
        )
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = env.streams.get("orders").await?;
    publisher.abort();
    assert_eq!(
        after.metadata.resource_version, labelled.metadata.resource_version,
        "the AuditStream was rewritten during traffic: {:?}",
        after.data["status"]
    );
    Ok(())
}

#[tokio::test]
async fn a_stream_in_a_jetstream_domain() -> anyhow::Result<()> {
    let nats = NatsServer::start_with_jetstream_domain("hub").await?;
    let mut env = Env::start_with_nats("ast-domain", nats).await?;
    // A domain the server does not have: JetStream requests go to a prefix nobody answers,
    // which shows the operator really uses the field.
    let mut spec = env.spec(json!({ "name": "ORDERS" }));
    spec["connection"]["jsDomain"] = json!("spoke");
    env.apply("orders", spec.clone()).await?;
    let object = wait::until("Ready=False for the wrong domain", WAIT, POLL, || async {
        let object = env.streams.get("orders").await?;
        let current =
            object.data["status"]["observedGeneration"].as_i64() == object.metadata.generation;
        let not_ready = condition(&object, "Ready").is_some_and(|c| c["status"] == "False");
        Ok((current && not_ready).then_some(object))
    })
    .await?;
    assert_eq!(condition_status(&object, "Ready"), "False");

    spec["connection"]["jsDomain"] = json!("hub");
    env.apply("orders", spec).await?;
    env.wait_ready("orders").await?;
    // Reached through the domain's API prefix, as a leaf node's clients would.
    let js = jetstream::with_domain(env.nats.client().await?, "hub");
    let mut stream = js.get_stream("ORDERS").await?;
    assert_eq!(
        stream.info().await?.config.subjects,
        vec!["audit.>".to_owned()]
    );
    Ok(())
}

#[tokio::test]
async fn a_restarted_operator_opens_one_connection_for_many_resources() -> anyhow::Result<()> {
    // Enough resources that reconciliations run concurrently at start; all share one server
    // and no credentials, so one connection serves them all.
    const RESOURCES: usize = 40;
    let mut env = Env::start("ast-storm").await?;
    for i in 0..RESOURCES {
        let spec =
            env.spec(json!({ "name": format!("S{i}"), "subjects": [format!("storm.{i}.>")] }));
        env.apply(&format!("s{i}"), spec).await?;
    }
    for i in 0..RESOURCES {
        env.wait_ready(&format!("s{i}")).await?;
    }

    env.operator.stop();
    let before_restart = env.operator_connection_ids().await?;
    env.operator = OperatorProcess::start(&["--namespace", &env.namespace])?;
    let reconciled = r#"audit_operator_reconciliations_total{kind="AuditStream"}"#;
    let result = wait::until(
        "the restarted operator to reconcile every AuditStream",
        WAIT,
        POLL,
        || async {
            let count = env.operator_metric(reconciled).await?;
            Ok((count >= RESOURCES as f64).then_some(()))
        },
    )
    .await;
    env.with_operator_log(result)?;
    let opened: BTreeSet<u64> = env
        .operator_connection_ids()
        .await?
        .difference(&before_restart)
        .copied()
        .collect();
    assert_eq!(
        opened.len(),
        1,
        "connections the restarted operator opened: {opened:?}"
    );
    Ok(())
}

#[tokio::test]
async fn resources_recover_as_soon_as_their_connection_comes_back() -> anyhow::Result<()> {
    // Retries minutes apart and no periodic check within the test: only the connection coming
    // back can make the resource Ready again in time.
    let mut env = Env::start_with_operator_args(
        "ast-reconnect",
        NatsServer::start().await?,
        &[
            "--requeue-interval",
            "10m",
            "--retry-base-delay",
            "5m",
            "--retry-max-delay",
            "10m",
        ],
    )
    .await?;
    env.apply(
        "orders",
        env.spec(json!({ "name": "ORDERS", "maxAge": "24h" })),
    )
    .await?;
    env.wait_ready("orders").await?;

    env.nats.stop().await;
    // A spec change during the outage fails, and its retry is minutes away.
    env.apply(
        "orders",
        env.spec(json!({ "name": "ORDERS", "maxAge": "48h" })),
    )
    .await?;
    env.wait_ready_condition("orders", "False", "NatsUnreachable")
        .await?;

    env.nats.start_again().await?;
    env.wait_ready("orders").await?;
    env.wait_for_stream("max_age 48h on NATS", |info| {
        (info?.config.max_age == Duration::from_secs(48 * 3600)).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn text_logs_written_to_a_file_carry_no_colour_codes() -> anyhow::Result<()> {
    // The harness sends the operator's standard error to a file, as a log collector would.
    let mut env = Env::start("ast-colour").await?;
    env.apply("orders", env.spec(json!({ "name": "ORDERS" })))
        .await?;
    env.wait_ready("orders").await?;
    let log = env.operator_log();
    assert!(log.contains("INFO"), "{log}");
    assert!(
        !log.contains('\u{1b}'),
        "ANSI escape codes in the log:\n{log}"
    );
    Ok(())
}

/// NATS in operator mode, as production runs it: the AuditStream logs in with a creds file
/// (a user JWT of the account) and is Ready; a user JWT that expired, one that expires while
/// in use, and one its account revoked each stall with a reason that says what happened and
/// what to do.
#[tokio::test]
async fn user_jwts_from_creds_files_and_what_expiry_and_revocation_look_like() -> anyhow::Result<()>
{
    let mut accounts = Accounts::new();
    let current = accounts.user("current", None)?;
    let expired = accounts.user("expired", Some(-60))?;
    // Long enough to be Ready first on a loaded machine; the check afterwards waits for it.
    let expiring = accounts.user("expiring", Some(20))?;
    let revoked = accounts.user("revoked", None)?;
    accounts.revoke(&revoked.public_key);
    // The revocation takes effect a second after it was made: JWTs issued before it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let nats = NatsServer::start_with_config(&accounts.server_config()?).await?;
    let mut env = Env::start_with_nats("ast-jwt", nats).await?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    for (name, user) in [
        ("current", &current),
        ("expired", &expired),
        ("expiring", &expiring),
        ("revoked", &revoked),
    ] {
        secrets
            .create(
                &PostParams::default(),
                &opaque_secret(name, "user.creds", &user.creds),
            )
            .await?;
        let spec = env.spec(json!({
            "name": name.to_uppercase(),
            "subjects": [format!("{name}.>")],
            "connection": {
                "servers": [env.nats.url()],
                "auth": { "credsSecretRef": { "name": name, "key": "user.creds" } },
            },
        }));
        env.apply(name, spec).await?;
    }

    env.wait_ready("current").await?;
    env.wait_ready("expiring").await?;
    let message = |object: &DynamicObject| {
        condition(object, "Ready").map(|c| c["message"].as_str().unwrap_or_default().to_owned())
    };
    let object = env
        .wait_ready_condition("expired", "False", "NatsCredentialsExpired")
        .await?;
    assert_eq!(condition_status(&object, "Stalled"), "True");
    let text = message(&object).unwrap_or_default();
    assert!(
        text.contains("\"expired\" expired at") && text.contains("nsc generate creds"),
        "{text}"
    );
    let object = env
        .wait_ready_condition("revoked", "False", "NatsAuthenticationFailed")
        .await?;
    assert_eq!(condition_status(&object, "Stalled"), "True");
    let text = message(&object).unwrap_or_default();
    assert!(text.contains("revoked"), "{text}");

    // Expiry while in use: the next check reports it, as for a JWT that was expired at once.
    let object = wait::until(
        "the expiring user's JWT to be reported expired",
        Duration::from_secs(90),
        POLL,
        || async {
            let object = env.streams.get("expiring").await?;
            let expired = condition(&object, "Ready")
                .is_some_and(|c| c["reason"] == "NatsCredentialsExpired");
            Ok(expired.then_some(object))
        },
    )
    .await?;
    assert_eq!(condition_status(&object, "Stalled"), "True");
    // The current user is not affected.
    env.wait_ready("current").await?;
    Ok(())
}

/// Mutual TLS with `verify`: the server requires a client certificate signed by its CA. A
/// `kubernetes.io/tls` Secret (as cert-manager writes it, with `ca.crt`) is enough; without a
/// client certificate the handshake fails and the stream stalls with the TLS reason.
#[tokio::test]
async fn mutual_tls_with_a_client_certificate_from_a_tls_secret() -> anyhow::Result<()> {
    let certs = tempfile::tempdir()?;
    let ca = audit_tests::certs::TestCa::new("nats-mtls-ca")?;
    let serving = ca.loopback_server("nats-server")?;
    let server_cert = write_pem(certs.path(), "server.crt", &serving.cert_pem)?;
    let server_key = write_pem(certs.path(), "server.key", &serving.key_pem)?;
    let ca_file = write_pem(certs.path(), "ca.crt", &ca.cert_pem())?;
    let nats = NatsServer::start_with_config(&format!(
        "tls {{\n  cert_file: {:?}\n  key_file: {:?}\n  ca_file: {:?}\n  verify: true\n}}\n",
        server_cert.display().to_string(),
        server_key.display().to_string(),
        ca_file.display().to_string()
    ))
    .await?;
    let mut env = Env::start_with_nats("ast-mtls", nats).await?;
    let client = ca.client("audit-operator")?;
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "nats-client" },
                "type": "kubernetes.io/tls",
                "stringData": {
                    "tls.crt": client.cert_pem,
                    "tls.key": client.key_pem,
                    "ca.crt": ca.cert_pem(),
                },
            }))?,
        )
        .await?;
    secrets
        .create(
            &PostParams::default(),
            &opaque_secret("nats-ca", "ca.crt", &ca.cert_pem()),
        )
        .await?;
    let url = format!("tls://127.0.0.1:{}", env.nats.port());
    env.apply(
        "orders",
        env.spec(json!({
            "name": "ORDERS",
            "connection": {
                "servers": [url],
                "tls": { "clientCertSecretRef": { "name": "nats-client" } },
            },
        })),
    )
    .await?;
    env.wait_ready("orders").await?;

    env.apply(
        "anonymous",
        env.spec(json!({
            "name": "ANONYMOUS",
            "subjects": ["anonymous.>"],
            "connection": {
                "servers": [url],
                "tls": { "caSecretRef": { "name": "nats-ca", "key": "ca.crt" } },
            },
        })),
    )
    .await?;
    let object = env
        .wait_ready_condition("anonymous", "False", "NatsTlsFailed")
        .await?;
    assert_eq!(condition_status(&object, "Stalled"), "True");
    Ok(())
}
