//! AuditConsumer reconciliation against the real servers: the committed CRDs on the test
//! control plane, a real nats-server, and the `audit-operator` binary scoped to each test's
//! namespace. What the pods do once they run is tested on a real node
//! (`node_consumer_pods.rs`).

mod operator_support;

use std::time::Duration;

use async_nats::jetstream;
use audit_tests::nats::NatsServer;
use audit_tests::operator::OperatorProcess;
use audit_tests::wait;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::CronJob;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use operator_support::{
    AUDIT_CONSUMER, AUDIT_STREAM, RESTRICTED, create_token_secret, events_about, occurrences,
};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_millis(250);
const TOKEN: &str = "pod-runner-token-7f3a";

/// One test's world: a namespace enforcing the `restricted` Pod Security level, a
/// nats-server requiring a token, the token in a Secret, and an operator for the namespace.
struct Env {
    client: kube::Client,
    namespace: String,
    streams: Api<DynamicObject>,
    consumers: Api<DynamicObject>,
    nats: NatsServer,
    operator: OperatorProcess,
}

impl Env {
    async fn start(prefix: &str) -> anyhow::Result<Self> {
        Self::start_with_operator_args(prefix, &[]).await
    }

    /// Like [`start`](Self::start), with more flags for the operator (they override the
    /// harness's defaults).
    async fn start_with_operator_args(
        prefix: &str,
        operator_args: &[&str],
    ) -> anyhow::Result<Self> {
        let (client, namespace) = operator_support::namespace(prefix, &[RESTRICTED]).await?;
        let nats =
            NatsServer::start_with_config(&format!("authorization {{ token: \"{TOKEN}\" }}"))
                .await?;
        create_token_secret(&client, &namespace, "nats-token", TOKEN).await?;
        let operator = start_operator(&namespace, operator_args)?;
        Ok(Self {
            streams: operator_support::api(&client, &namespace, AUDIT_STREAM),
            consumers: operator_support::api(&client, &namespace, AUDIT_CONSUMER),
            client,
            namespace,
            nats,
            operator,
        })
    }

    fn operator_log(&self) -> String {
        self.operator.log_tail()
    }

    /// Everything the operator has logged so far.
    fn full_operator_log(&self) -> String {
        std::fs::read_to_string(self.operator.log_path()).unwrap_or_default()
    }

    /// How often an Event `reason` was reported about `name`.
    async fn event_occurrences(&self, name: &str, reason: &str) -> anyhow::Result<i32> {
        let events = events_about(&self.client, &self.namespace, name).await?;
        Ok(occurrences(&events, reason))
    }

    /// Waits until `count` Events `reason` were reported about `name` (published after the
    /// pass's status write, so a moment after what the status shows).
    async fn wait_event_occurrences(
        &self,
        name: &str,
        reason: &str,
        count: i32,
    ) -> anyhow::Result<()> {
        let what = format!("{count} Event(s) {reason} about {name}");
        wait::until(&what, WAIT, POLL, || async {
            let seen = self.event_occurrences(name, reason).await?;
            anyhow::ensure!(seen <= count, "{seen} Events {reason}, more than {count}");
            Ok((seen == count).then_some(()))
        })
        .await
    }

    /// Stops the operator and starts a new one: nothing it held in memory survives.
    fn restart_operator(&mut self) -> anyhow::Result<()> {
        self.operator.stop();
        self.operator = start_operator(&self.namespace, &[])?;
        Ok(())
    }

    /// The value of one sample of the operator's `/metrics`; 0 while it is absent.
    async fn operator_metric(&self, sample: &str) -> anyhow::Result<f64> {
        operator_support::operator_metric(&self.operator, sample).await
    }

    /// The operator's `audit_operator_ready` samples for AuditConsumer `name` of this test.
    async fn readiness_samples(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let metrics = audit_tests::http::get(self.operator.health_port(), "/metrics").await?;
        let prefix = format!(
            r#"audit_operator_ready{{kind="AuditConsumer",namespace="{}",name="{name}",reason="#,
            self.namespace
        );
        Ok(metrics
            .body
            .lines()
            .filter(|line| line.starts_with(&prefix))
            .map(str::to_owned)
            .collect())
    }

    /// Deletes this test's namespace and waits until it is gone: every finalizer in it ran.
    async fn delete_namespace_and_wait(&self) -> anyhow::Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        namespaces
            .delete(&self.namespace, &DeleteParams::default())
            .await?;
        wait::until(
            &format!("namespace {} gone", self.namespace),
            WAIT,
            POLL,
            || async {
                Ok(namespaces
                    .get_opt(&self.namespace)
                    .await?
                    .is_none()
                    .then_some(()))
            },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\noperator log:\n{}", self.operator_log()))
    }

    async fn jetstream(&self) -> anyhow::Result<jetstream::Context> {
        let client = async_nats::ConnectOptions::with_token(TOKEN.into())
            .connect(self.nats.url())
            .await?;
        Ok(jetstream::new(client))
    }

    /// The AuditStream `orders` on this test's server, authenticated by the token Secret.
    async fn apply_stream(&self) -> anyhow::Result<()> {
        operator_support::apply(
            &self.streams,
            AUDIT_STREAM,
            "orders",
            json!({
                "connection": {
                    "servers": [self.nats.url()],
                    "auth": { "tokenSecretRef": { "name": "nats-token", "key": "token" } },
                },
                "name": "ORDERS",
                "subjects": ["audit.>"],
                "storage": "Memory",
                "deletionPolicy": "Delete",
            }),
        )
        .await?;
        Ok(())
    }

    async fn apply_consumer(&self, name: &str, extra: Value) -> Result<DynamicObject, kube::Error> {
        let mut spec = json!({ "streamRef": { "name": "orders" } });
        if let (Some(spec), Value::Object(extra)) = (spec.as_object_mut(), extra) {
            spec.extend(extra);
        }
        operator_support::apply(&self.consumers, AUDIT_CONSUMER, name, spec).await
    }

    async fn condition(&self, name: &str, type_: &str) -> anyhow::Result<Option<Value>> {
        let object = self.consumers.get(name).await?;
        Ok(object.data["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == type_).cloned()))
    }

    /// Waits until condition `type_` of AuditConsumer `name` has `status`.
    async fn wait_condition(&self, name: &str, type_: &str, status: &str) -> anyhow::Result<Value> {
        let waited = wait::until(
            &format!("AuditConsumer {name} condition {type_}={status}"),
            WAIT,
            POLL,
            || async {
                Ok(self
                    .condition(name, type_)
                    .await?
                    .filter(|c| c["status"] == status))
            },
        )
        .await;
        waited.map_err(|e| anyhow::anyhow!("{e:#}\noperator log:\n{}", self.operator_log()))
    }

    async fn deployment(&self, name: &str) -> anyhow::Result<Deployment> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), &self.namespace);
        let name = format!("{name}-audit-consumer");
        wait::until(&format!("Deployment {name}"), WAIT, POLL, || async {
            Ok(deployments.get_opt(&name).await?)
        })
        .await
    }
}

/// The operator for `namespace`, with the consumer image the tests use and `extra` flags.
fn start_operator(namespace: &str, extra: &[&str]) -> anyhow::Result<OperatorProcess> {
    let mut args = vec![
        "--namespace",
        namespace,
        "--consumer-image",
        "audit-consumer:test",
    ];
    args.extend_from_slice(extra);
    OperatorProcess::start(&args)
}

fn template_args(deployment: &Deployment) -> Vec<String> {
    deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .args
        .clone()
        .unwrap_or_default()
}

#[tokio::test]
async fn workload_matches_the_spec_and_passes_the_restricted_profile() -> anyhow::Result<()> {
    let env = Env::start("consumer-objects").await?;
    env.apply_stream().await?;
    env.apply_consumer(
        "reader",
        json!({
            "replicas": 2, "batch": 50, "filterSubjects": ["audit.orders.>"],
            "networkPolicy": { "enabled": true },
        }),
    )
    .await?;
    env.wait_condition("reader", "ConsumerReady", "True")
        .await?;

    // The durable consumer on NATS, as declared and marked as the resource's.
    let js = env.jetstream().await?;
    let info = js
        .get_stream("ORDERS")
        .await?
        .consumer_info("reader")
        .await?;
    assert_eq!(info.config.filter_subject, "audit.orders.>");
    assert_eq!(
        info.config.max_deliver, -1,
        "never give up on an audit event"
    );
    assert_eq!(info.config.ack_wait, Duration::from_secs(30));
    assert_eq!(info.config.max_ack_pending, 200, "2 x replicas x batch");
    assert_eq!(
        info.config.metadata["audit.eventsaudit.io/owner"],
        format!("{}/reader", env.namespace)
    );

    let deployment = env.deployment("reader").await?;
    let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.controller),
        ("AuditConsumer", Some(true))
    );
    assert_eq!(deployment.spec.as_ref().unwrap().replicas, Some(2));
    let args = template_args(&deployment);
    assert!(args.contains(&format!("--nats-url={}", env.nats.url())));
    assert!(args.contains(&"--stream=ORDERS".to_owned()));
    assert!(args.contains(&"--consumer=reader".to_owned()));
    assert!(args.contains(&"--batch=50".to_owned()));
    assert!(args.contains(&"--token-file=/etc/audit-consumer/nats/token/token".to_owned()));
    assert!(
        !args.iter().any(|a| a.contains(TOKEN)),
        "the token never appears in the spec"
    );
    let template = deployment.spec.as_ref().unwrap().template.clone();
    assert_eq!(
        template.spec.as_ref().unwrap().containers[0]
            .image
            .as_deref(),
        Some("audit-consumer:test"),
        "the operator's configured image"
    );

    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.namespace);
    let account = accounts.get("reader-audit-consumer").await?;
    assert_eq!(account.automount_service_account_token, Some(false));
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(env.client.clone(), &env.namespace);
    budgets.get("reader-audit-consumer").await?;

    // The NetworkPolicy as the API server stored it: the pods may reach only this test's NATS
    // port and DNS, and be reached only on the health and metrics port.
    let policies: Api<NetworkPolicy> = Api::namespaced(env.client.clone(), &env.namespace);
    let policy = policies.get("reader-audit-consumer").await?;
    let policy = serde_json::to_value(policy.spec.expect("a NetworkPolicy has a spec"))?;
    assert_eq!(policy["policyTypes"], json!(["Ingress", "Egress"]));
    assert_eq!(
        policy["ingress"][0]["ports"],
        json!([{ "protocol": "TCP", "port": 8080 }])
    );
    let egress_ports: Vec<Value> = policy["egress"]
        .as_array()
        .expect("egress rules")
        .iter()
        .flat_map(|rule| rule["ports"].as_array().cloned().unwrap_or_default())
        .collect();
    assert!(egress_ports.contains(&json!({ "protocol": "TCP", "port": env.nats.port() })));
    assert!(egress_ports.contains(&json!({ "protocol": "UDP", "port": 53 })));
    assert_eq!(egress_ports.len(), 3, "NATS and DNS only: {egress_ports:?}");

    // The real admission check: a Pod from the template in this `restricted` namespace.
    let pods: Api<Pod> = Api::namespaced(env.client.clone(), &env.namespace);
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("dry-run-reader".into()),
            labels: template.metadata.as_ref().and_then(|m| m.labels.clone()),
            ..Default::default()
        },
        spec: template.spec.clone(),
        status: None,
    };
    pods.create(
        &PostParams {
            dry_run: true,
            ..PostParams::default()
        },
        &pod,
    )
    .await
    .map_err(|e| anyhow::anyhow!("the restricted profile rejected the pod template: {e}"))?;

    // The status a user reads: stream and consumer fine, pods pending (no kubelet runs them
    // in this test).
    let object = env.consumers.get("reader").await?;
    let status = &object.data["status"];
    assert_eq!(status["streamName"], "ORDERS");
    assert_eq!(status["consumerName"], "reader");
    assert_eq!(
        status["selector"],
        "app.kubernetes.io/instance=reader,app.kubernetes.io/name=audit-consumer"
    );
    assert_eq!(
        status["observedGeneration"],
        object.metadata.generation.unwrap()
    );
    let ready = env.condition("reader", "Ready").await?.unwrap();
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "WorkloadProgressing");
    Ok(())
}

#[tokio::test]
async fn scale_spec_change_deleted_deployment_and_secret_rotation() -> anyhow::Result<()> {
    let env = Env::start("consumer-changes").await?;
    env.apply_stream().await?;
    env.apply_consumer("reader", json!({ "replicas": 2 }))
        .await?;
    env.wait_condition("reader", "ConsumerReady", "True")
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(env.client.clone(), &env.namespace);
    let first = env.deployment("reader").await?;

    // `kubectl scale` goes through the scale subresource.
    env.consumers
        .patch_scale(
            "reader",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 1 } })),
        )
        .await?;
    wait::until("the Deployment scaled to 1", WAIT, POLL, || async {
        let d = deployments.get("reader-audit-consumer").await?;
        Ok((d.spec.unwrap().replicas == Some(1)).then_some(()))
    })
    .await?;
    wait::until("the budget removed at one replica", WAIT, POLL, || async {
        Ok(budgets
            .get_opt("reader-audit-consumer")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    let scale = env.consumers.get_scale("reader").await?;
    assert_eq!(scale.spec.unwrap().replicas, Some(1));

    // A spec change rolls out: the pod template changes.
    env.apply_consumer("reader", json!({ "replicas": 1, "batch": 25 }))
        .await?;
    wait::until("the template to carry --batch=25", WAIT, POLL, || async {
        let d = deployments.get("reader-audit-consumer").await?;
        Ok(template_args(&d)
            .contains(&"--batch=25".to_owned())
            .then_some(()))
    })
    .await?;

    // A deleted Deployment comes back.
    deployments
        .delete("reader-audit-consumer", &DeleteParams::foreground())
        .await?;
    wait::until("the Deployment recreated", WAIT, POLL, || async {
        let d = deployments.get_opt("reader-audit-consumer").await?;
        Ok(d.filter(|d| {
            d.metadata.uid != first.metadata.uid && d.metadata.deletion_timestamp.is_none()
        }))
    })
    .await?;

    // A rotated Secret rolls the pods: the template's Secret versions change.
    let annotation = |d: &Deployment| {
        d.spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()["audit.eventsaudit.io/secret-versions"]
            .clone()
    };
    let before = annotation(&deployments.get("reader-audit-consumer").await?);
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    secrets
        .patch(
            "nats-token",
            &PatchParams::default(),
            &Patch::Merge(json!({ "stringData": { "token": TOKEN, "rotated": "yes" } })),
        )
        .await?;
    wait::until(
        "the template's Secret versions to change",
        WAIT,
        POLL,
        || async {
            let d = deployments.get("reader-audit-consumer").await?;
            Ok((annotation(&d) != before).then_some(()))
        },
    )
    .await?;

    // A hand edit of an owned field is put back.
    deployments
        .patch(
            "reader-audit-consumer",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 5 } })),
        )
        .await?;
    wait::until("the hand-edited replicas restored", WAIT, POLL, || async {
        let d = deployments.get("reader-audit-consumer").await?;
        Ok((d.spec.unwrap().replicas == Some(1)).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn immutable_fields_are_rejected_at_apply_time() -> anyhow::Result<()> {
    let env = Env::start("consumer-cel").await?;
    env.apply_consumer("reader", json!({ "durableName": "first" }))
        .await?;
    let message = |e: kube::Error| match e {
        kube::Error::Api(status) => status.message,
        other => other.to_string(),
    };
    let renamed = env
        .apply_consumer("reader", json!({ "durableName": "second" }))
        .await;
    assert!(message(renamed.unwrap_err()).contains("durableName is immutable"));
    let moved = env
        .apply_consumer(
            "reader",
            json!({ "durableName": "first", "deliverPolicy": "New" }),
        )
        .await;
    assert!(message(moved.unwrap_err()).contains("deliverPolicy is immutable"));
    let too_few = env
        .apply_consumer("other", json!({ "maxDeliver": 1, "backoff": ["1s", "5s"] }))
        .await;
    assert!(message(too_few.unwrap_err()).contains("maxDeliver"));
    let tiny_ack_wait = env
        .apply_consumer("third", json!({ "ackWait": "10ms" }))
        .await;
    assert!(message(tiny_ack_wait.unwrap_err()).contains("ackWait must be at least 1s"));
    // A malformed duration gets one message, the pattern's, not a CEL conversion error too.
    for (field, value) in [("ackWait", "abc"), ("expires", "abc"), ("expires", "10x")] {
        let Err(kube::Error::Api(status)) =
            env.apply_consumer("fourth", json!({ field: value })).await
        else {
            panic!("{field}: {value} was accepted");
        };
        let causes = status.details.as_ref().map_or(0, |d| {
            // The API server adds a note that CEL rules were skipped; not a problem of its own.
            d.causes
                .iter()
                .filter(|c| !c.message.contains("validation rules were not checked"))
                .count()
        });
        assert!(
            status.message.contains(&format!("spec.{field}")) && causes == 1,
            "{field}: {value}: {}",
            status.message
        );
    }
    Ok(())
}

#[tokio::test]
async fn deletion_removes_the_durable_consumer_unless_retained() -> anyhow::Result<()> {
    let env = Env::start("consumer-delete").await?;
    env.apply_stream().await?;
    env.apply_consumer("dropped", json!({})).await?;
    env.apply_consumer("kept", json!({ "deletionPolicy": "Retain" }))
        .await?;
    env.wait_condition("dropped", "ConsumerReady", "True")
        .await?;
    env.wait_condition("kept", "ConsumerReady", "True").await?;
    env.deployment("dropped").await?;
    // No kubelet here: the pods never run, and the operator exports that.
    let samples = wait::until("dropped's readiness exported", WAIT, POLL, || async {
        let samples = env.readiness_samples("dropped").await?;
        Ok((!samples.is_empty()).then_some(samples))
    })
    .await?;
    assert_eq!(samples.len(), 1, "one series per object: {samples:?}");
    assert!(samples[0].ends_with(" 0"), "{samples:?}");

    let logged_before_deletion = env.full_operator_log().len();
    env.consumers
        .delete("dropped", &DeleteParams::default())
        .await?;
    env.consumers
        .delete("kept", &DeleteParams::default())
        .await?;
    for name in ["dropped", "kept"] {
        wait::until(
            &format!("AuditConsumer {name} gone"),
            WAIT,
            POLL,
            || async { Ok(env.consumers.get_opt(name).await?.is_none().then_some(())) },
        )
        .await
        .map_err(|e| anyhow::anyhow!("{e:#}\noperator log:\n{}", env.operator_log()))?;
    }
    // Reconciliations queued with a stale copy (the Deployment's deletion wakes its owner)
    // run right after the object went; give them time to show themselves.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for name in ["dropped", "kept"] {
        let samples = env.readiness_samples(name).await?;
        assert!(
            samples.is_empty(),
            "deleted, no readiness left: {samples:?}"
        );
    }
    let deletion_log = env.full_operator_log()[logged_before_deletion..].to_owned();
    assert!(
        !deletion_log.contains("WARN") && !deletion_log.contains("ERROR"),
        "a normal deletion logs at info:\n{deletion_log}"
    );
    for (name, reason) in [("dropped", "Deleted"), ("kept", "Retained")] {
        assert_eq!(
            env.event_occurrences(name, reason).await?,
            1,
            "one {reason} Event for {name}"
        );
    }
    let js = env.jetstream().await?;
    let stream = js.get_stream("ORDERS").await?;
    assert!(
        stream.consumer_info("dropped").await.is_err(),
        "Delete removes it"
    );
    stream.consumer_info("kept").await?;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    wait::until("the workload garbage-collected", WAIT, POLL, || async {
        Ok(deployments
            .get_opt("kept-audit-consumer")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    Ok(())
}

/// The token Secret of the stream, deleted before its namespace: the namespace controller
/// may do the same, in any order, when the namespace is deleted.
async fn delete_token_secret(env: &Env) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    secrets
        .delete("nats-token", &DeleteParams::default())
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_namespace_whose_secret_went_first_is_deleted_with_its_stream() -> anyhow::Result<()> {
    let env = Env::start("consumer-ns-delete").await?;
    env.apply_stream().await?;
    env.apply_consumer("reader", json!({})).await?;
    env.wait_condition("reader", "ConsumerReady", "True")
        .await?;

    delete_token_secret(&env).await?;
    env.delete_namespace_and_wait().await?;
    // deletionPolicy: Delete was carried out with the credentials the operator last used.
    let js = env.jetstream().await?;
    assert!(
        js.get_stream("ORDERS").await.is_err(),
        "the stream was deleted from NATS"
    );
    Ok(())
}

#[tokio::test]
async fn a_namespace_goes_even_when_no_credentials_are_left_and_what_stays_is_named()
-> anyhow::Result<()> {
    let mut env = Env::start("consumer-ns-orphan").await?;
    env.apply_stream().await?;
    env.apply_consumer("reader", json!({})).await?;
    env.wait_condition("reader", "ConsumerReady", "True")
        .await?;

    delete_token_secret(&env).await?;
    // A new operator never saw the credentials: nothing can reach the stream any more.
    env.restart_operator()?;
    env.delete_namespace_and_wait().await?;

    let js = env.jetstream().await?;
    let stream = js.get_stream("ORDERS").await?;
    stream.consumer_info("reader").await?;
    let namespace = &env.namespace;
    for sample in [
        format!(
            "audit_operator_streams_left_on_nats_total{{namespace=\"{namespace}\",name=\"orders\",stream=\"ORDERS\"}}"
        ),
        format!(
            "audit_operator_consumers_left_on_nats_total{{namespace=\"{namespace}\",name=\"reader\",stream=\"ORDERS\",consumer=\"reader\"}}"
        ),
    ] {
        assert_eq!(
            env.operator_metric(&sample).await?,
            1.0,
            "{sample}\noperator log:\n{}",
            env.operator_log()
        );
    }
    let log = env.full_operator_log();
    assert!(
        log.lines().any(|line| line.contains("WARN")
            && line.contains("ORDERS")
            && line.contains("left on NATS")),
        "a warning names the stream left on NATS:\n{log}"
    );
    Ok(())
}

#[tokio::test]
async fn outside_a_namespace_deletion_a_missing_secret_holds_the_deletion_until_it_is_back()
-> anyhow::Result<()> {
    let mut env = Env::start("consumer-secret-wait").await?;
    env.apply_stream().await?;
    wait::until("AuditStream orders Ready", WAIT, POLL, || async {
        let object = env.streams.get("orders").await?;
        let ready = object.data["status"]["conditions"]
            .as_array()
            .is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            });
        Ok(ready.then_some(()))
    })
    .await?;
    delete_token_secret(&env).await?;
    // No credentials in memory either: the Secret is the only way to reach the stream.
    env.restart_operator()?;
    env.streams
        .delete("orders", &DeleteParams::default())
        .await?;

    // The namespace stays, so the Secret can come back: the deletion waits and says so.
    let events: Api<Event> = Api::namespaced(env.client.clone(), &env.namespace);
    wait::until(
        "a SecretNotFound Event of the deletion",
        WAIT,
        POLL,
        || async {
            let found = events
                .list(&Default::default())
                .await?
                .items
                .into_iter()
                .any(|e| {
                    e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("orders")
                        && e.reason.as_deref() == Some("SecretNotFound")
                        && e.action.as_deref() == Some("Delete")
                });
            Ok(found.then_some(()))
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\noperator log:\n{}", env.operator_log()))?;
    assert!(env.streams.get_opt("orders").await?.is_some());

    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": { "name": "nats-token" },
                "stringData": { "token": TOKEN },
            }))?,
        )
        .await?;
    wait::until("AuditStream orders gone", WAIT, POLL, || async {
        Ok(env.streams.get_opt("orders").await?.is_none().then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\noperator log:\n{}", env.operator_log()))?;
    let js = env.jetstream().await?;
    assert!(
        js.get_stream("ORDERS").await.is_err(),
        "Delete was carried out"
    );
    Ok(())
}

#[tokio::test]
async fn a_consumer_waits_while_its_stream_is_missing_on_nats() -> anyhow::Result<()> {
    // No periodic check within the test: the stream controller notices the missing stream
    // only when told to.
    let env = Env::start_with_operator_args("consumer-stream-gone", &["--requeue-interval", "10m"])
        .await?;
    env.apply_stream().await?;
    env.apply_consumer("reader", json!({})).await?;
    env.wait_condition("reader", "ConsumerReady", "True")
        .await?;

    // The stream is deleted out of band, and the consumer is reconciled before the stream is
    // recreated.
    env.jetstream().await?.delete_stream("ORDERS").await?;
    env.apply_consumer("reader", json!({ "description": "after the stream went" }))
        .await?;
    let ready = wait::until(
        "the consumer's Ready condition for its new generation",
        WAIT,
        POLL,
        || async {
            let object = env.consumers.get("reader").await?;
            let ready = object.data["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready").cloned());
            Ok(ready.filter(|c| c["observedGeneration"].as_i64() == object.metadata.generation))
        },
    )
    .await?;
    assert_ne!(ready["reason"], "ConsumerConfigRejected", "{ready}");
    assert_eq!(
        env.condition("reader", "Reconciling").await?.unwrap()["status"],
        "True",
        "a missing stream is a wait: {ready}"
    );
    assert_eq!(
        env.condition("reader", "Stalled").await?.unwrap()["status"],
        "False",
        "{ready}"
    );

    // The AuditStream puts its stream back; the consumer follows without help.
    env.streams
        .patch(
            "orders",
            // A manager of its own: the fields applied by the others stay as they are.
            &PatchParams::apply("consumer-tests-description"),
            &Patch::Apply(json!({
                "apiVersion": "audit.eventsaudit.io/v1alpha1",
                "kind": "AuditStream",
                "metadata": { "name": "orders" },
                "spec": { "description": "recreate me" },
            })),
        )
        .await?;
    wait::until("the durable consumer back on NATS", WAIT, POLL, || async {
        let js = env.jetstream().await?;
        let Ok(stream) = js.get_stream("ORDERS").await else {
            return Ok(None);
        };
        Ok(stream.consumer_info("reader").await.ok().map(|_| ()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\noperator log:\n{}", env.operator_log()))?;
    env.wait_condition("reader", "ConsumerReady", "True")
        .await?;
    Ok(())
}

/// A Secret `name` holding `seed` under the key `seed`, created or replaced.
async fn put_signing_key(env: &Env, name: &str, seed: &str) -> anyhow::Result<()> {
    let secrets: Api<Secret> = Api::namespaced(env.client.clone(), &env.namespace);
    let secret: Secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": name },
        "stringData": { "seed": seed },
    }))?;
    secrets
        .patch(
            name,
            &PatchParams::apply("integrity-test").force(),
            &Patch::Apply(&secret),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn integrity_witness_is_append_only_and_bad_keys_forgeries_stalls_and_loose_streams_show()
-> anyhow::Result<()> {
    let env = Env::start_with_operator_args("integrity", &["--requeue-interval", "2s"]).await?;
    env.apply_stream().await?;
    let js = env.jetstream().await?;
    let integrity = |key: &str, stream: &str| {
        json!({ "replicas": 0, "integrity": {
            "enabled": true,
            "signingKeySecretRef": { "name": key, "key": "seed" },
            "checkpointInterval": "2s",
            "witnessStream": stream,
        }})
    };

    // On without a key: the schema refuses it.
    let refused = env
        .apply_consumer("keyless", json!({ "integrity": { "enabled": true } }))
        .await
        .expect_err("integrity without a signing key");
    assert!(
        refused.to_string().contains("needs signingKeySecretRef"),
        "{refused}"
    );

    // An existing witness stream that allows deleting and purging is refused, not changed.
    js.create_stream(jetstream::stream::Config {
        name: "LOOSE".into(),
        subjects: vec!["audit-integrity.ORDERS.loose".into()],
        ..Default::default()
    })
    .await?;
    put_signing_key(&env, "signer", &nkeys::KeyPair::new_account().seed()?).await?;
    env.apply_consumer("loose", integrity("signer", "LOOSE"))
        .await?;
    let condition = env
        .wait_condition("loose", "ConsumerReady", "False")
        .await?;
    assert_eq!(condition["reason"], "WitnessStreamUnfit", "{condition}");
    let message = condition["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("deny_delete") && message.contains("deny_purge"),
        "{message}"
    );
    let loose = js.get_stream("LOOSE").await?.cached_info().clone();
    assert!(!loose.config.deny_delete, "left as it was");
    // Out of the way of the witness stream below, whose subjects would overlap.
    env.consumers
        .delete("loose", &DeleteParams::default())
        .await?;
    wait::until("AuditConsumer loose gone", WAIT, POLL, || async {
        Ok(env
            .consumers
            .get_opt("loose")
            .await?
            .is_none()
            .then_some(()))
    })
    .await?;
    js.delete_stream("LOOSE").await?;

    // A key that is no seed: said, without its content, and nothing runs.
    put_signing_key(&env, "signer", "not-a-seed-9d1").await?;
    env.apply_consumer("trail", integrity("signer", "AUDIT_INTEGRITY"))
        .await?;
    let condition = env
        .wait_condition("trail", "ConsumerReady", "False")
        .await?;
    assert_eq!(condition["reason"], "SecretInvalid", "{condition}");
    let message = condition["message"].as_str().unwrap_or_default();
    assert!(message.contains("nk -gen account"), "{message}");
    assert!(!message.contains("not-a-seed-9d1"), "{message}");

    // The right key: Ready, the witness stream append-only, the key a file in the pods.
    let key = nkeys::KeyPair::new_account();
    put_signing_key(&env, "signer", &key.seed()?).await?;
    env.wait_condition("trail", "Ready", "True").await?;
    let witness = js
        .get_stream("AUDIT_INTEGRITY")
        .await?
        .cached_info()
        .clone();
    assert!(witness.config.deny_delete && witness.config.deny_purge);
    assert_eq!(witness.config.subjects, ["audit-integrity.>"]);
    let deployment = env.deployment("trail").await?;
    let args = template_args(&deployment);
    for expected in [
        "--integrity",
        "--integrity-key-file=/etc/audit-consumer/nats/integrity-key/seed.nk",
        "--integrity-subject=audit-integrity.ORDERS.trail",
        "--integrity-checkpoint-interval=2s",
    ] {
        assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
    }
    let status = env.consumers.get("trail").await?.data["status"].clone();
    assert_eq!(status["integrity"]["publicKey"], key.public_key());
    assert_eq!(
        status["integrity"]["subject"],
        "audit-integrity.ORDERS.trail"
    );
    let witnessed = env
        .wait_condition("trail", "CheckpointsWitnessed", "True")
        .await?;
    assert_eq!(witnessed["reason"], "Witnessed", "{witnessed}");

    // A checkpoint signed by another key on the subject: flagged, with a Warning Event.
    let forger = nkeys::KeyPair::new_account();
    let payload = format!(
        r#"{{"chain":"trail/forged/2026-11-28T00:00:00.000000000Z","seq":1,"hash":"{}","time":"2026-11-28T00:00:00Z","signer":"{}"}}"#,
        "ab".repeat(32),
        key.public_key()
    );
    let signature = base64_url(&forger.sign(payload.as_bytes())?);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Audit-Signature", signature.as_str());
    js.publish_with_headers("audit-integrity.ORDERS.trail", headers, payload.into())
        .await?
        .await?;
    let rejected = env
        .wait_condition("trail", "CheckpointsWitnessed", "False")
        .await?;
    assert_eq!(rejected["reason"], "CheckpointsRejected", "{rejected}");
    assert_eq!(
        env.consumers.get("trail").await?.data["status"]["integrity"]["rejectedCheckpoints"],
        1
    );
    wait::until("a CheckpointsRejected Event", WAIT, POLL, || async {
        let events = events_about(&env.client, &env.namespace, "trail").await?;
        Ok((occurrences(&events, "CheckpointsRejected") > 0).then_some(()))
    })
    .await?;
    assert_eq!(
        env.condition("trail", "Ready").await?.unwrap()["status"],
        "True",
        "not part of Ready"
    );

    // Events acknowledged after the rollout by a reader that publishes no checkpoint (as a pod
    // whose NATS user may not publish to the subject): the checkpoints are reported stalled.
    env.apply_consumer("silent", integrity("signer", "AUDIT_INTEGRITY"))
        .await?;
    env.wait_condition("silent", "CheckpointsWitnessed", "True")
        .await?;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    wait::until("the silent Deployment rolled out", WAIT, POLL, || async {
        let deployment = deployments.get("silent-audit-consumer").await?;
        let done = deployment
            .status
            .and_then(|status| status.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.reason.as_deref() == Some("NewReplicaSetAvailable"));
        Ok(done.then_some(()))
    })
    .await?;
    for n in 0..5 {
        js.publish(format!("audit.silent.{n}"), "{}".into())
            .await?
            .await?;
    }
    let acked = acknowledge(&js, "ORDERS", "silent", 5).await?;
    assert!(acked > 0, "the reader got events");
    let stalled = env
        .wait_condition("silent", "CheckpointsWitnessed", "False")
        .await?;
    assert_eq!(stalled["reason"], "CheckpointsStalled", "{stalled}");
    assert!(
        stalled["message"]
            .as_str()
            .is_some_and(|m| m.contains("audit-integrity.ORDERS.silent")),
        "{stalled}"
    );
    wait::until("a CheckpointsStalled Event", WAIT, POLL, || async {
        let events = events_about(&env.client, &env.namespace, "silent").await?;
        Ok((occurrences(&events, "CheckpointsStalled") > 0).then_some(()))
    })
    .await?;
    Ok(())
}

fn base64_url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn a_consumer_applied_before_its_stream_waits_for_it_without_stalling() -> anyhow::Result<()>
{
    let env =
        Env::start_with_operator_args("stream-later", &["--missing-stream-grace", "5m"]).await?;
    // As `kubectl apply -f deploy/samples/` does: auditconsumer.yaml sorts first.
    env.apply_consumer("early", json!({ "replicas": 0 }))
        .await?;
    let waiting = env.wait_condition("early", "StreamReady", "False").await?;
    assert_eq!(waiting["reason"], "StreamNotReady", "{waiting}");
    assert!(
        waiting["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not exist yet")),
        "{waiting}"
    );
    let stalled = env.condition("early", "Stalled").await?;
    assert!(
        stalled.as_ref().is_none_or(|c| c["status"] != "True"),
        "waiting is not stalled: {stalled:?}"
    );
    env.apply_stream().await?;
    env.wait_condition("early", "Ready", "True").await?;
    let events = events_about(&env.client, &env.namespace, "early").await?;
    let warnings: Vec<_> = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning"))
        .map(|e| (e.reason.clone(), e.note.clone()))
        .collect();
    assert!(
        warnings.is_empty(),
        "no Warning while waiting: {warnings:?}"
    );
    Ok(())
}

/// A Secret `name` with an access key pair under the archive's default keys.
async fn put_key_pair(env: &Env, name: &str, id: &str, secret: &str) -> anyhow::Result<()> {
    operator_support::put_key_pair(&env.client, &env.namespace, name, id, secret).await
}

#[tokio::test]
async fn an_archive_verification_runs_read_only_on_a_schedule_and_its_findings_turn_false()
-> anyhow::Result<()> {
    let env = Env::start_with_operator_args("verification", &["--requeue-interval", "2s"]).await?;
    env.apply_stream().await?;
    let key = nkeys::KeyPair::new_account();
    put_signing_key(&env, "signer", &key.seed()?).await?;
    put_key_pair(&env, "archive-writer", "WRITERID", "writer-secret-4f1").await?;
    put_key_pair(&env, "archive-reader", "READERID", "reader-secret-8c2").await?;
    let integrity =
        json!({ "enabled": true, "signingKeySecretRef": { "name": "signer", "key": "seed" } });
    let archive = |verification: Value| {
        json!({
            "bucket": "trail",
            "region": "us-east-1",
            "endpoint": "http://127.0.0.1:9000",
            "forcePathStyle": true,
            "prefix": "audit/",
            "credentialsSecretRef": { "name": "archive-writer" },
            "verification": verification,
        })
    };

    // The schema refuses a verification without integrity, or with the writer's key pair.
    let refused = env
        .apply_consumer(
            "unchained",
            json!({ "replicas": 0, "archive": archive(json!({})) }),
        )
        .await
        .expect_err("a verification without integrity");
    assert!(
        refused.to_string().contains("turn integrity on"),
        "{refused}"
    );
    let refused = env
        .apply_consumer(
            "writer",
            json!({ "replicas": 0, "integrity": integrity, "archive": archive(json!({
                "credentialsSecretRef": { "name": "archive-writer" },
            })) }),
        )
        .await
        .expect_err("the writer's credentials for the verifier");
    assert!(
        refused.to_string().contains("credentials of its own"),
        "{refused}"
    );

    env.apply_consumer(
        "archived",
        json!({ "replicas": 0, "integrity": integrity, "networkPolicy": { "enabled": true }, "archive": archive(json!({
            "schedule": "5 * * * *",
            "credentialsSecretRef": { "name": "archive-reader" },
        })) }),
    )
    .await?;
    let pending = env
        .wait_condition("archived", "ArchiveVerified", "Unknown")
        .await?;
    assert_eq!(pending["reason"], "NotVerifiedYet", "{pending}");
    // Not part of Ready: the consumer turns Ready (once its Deployment's status is current)
    // with no verification run yet.
    env.wait_condition("archived", "Ready", "True").await?;
    let still = env.condition("archived", "ArchiveVerified").await?.unwrap();
    assert_eq!(still["reason"], "NotVerifiedYet", "{still}");

    // The CronJob: verify with the reader's key pair as files, never the writer's or the
    // signing key, no secret value anywhere in it.
    let jobs: Api<CronJob> = Api::namespaced(env.client.clone(), &env.namespace);
    let job = wait::until("the verification CronJob", WAIT, POLL, || async {
        Ok(jobs.get_opt("archived-audit-verify").await?)
    })
    .await?;
    let text = serde_json::to_string(&job)?;
    for secret in [
        "READERID",
        "reader-secret-8c2",
        "WRITERID",
        "writer-secret-4f1",
    ] {
        assert!(!text.contains(secret), "{secret} in the CronJob");
    }
    let spec = &job.spec;
    assert_eq!(spec.schedule, "5 * * * *");
    let pod = spec
        .job_template
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let args = pod.containers[0].args.clone().unwrap_or_default();
    assert_eq!(args[0], "verify", "{args:?}");
    for expected in [
        "--archive=s3://trail/audit/ORDERS/archived/".to_owned(),
        format!("--public-key={}", key.public_key()),
        "--integrity-subject=audit-integrity.ORDERS.archived".to_owned(),
        "--report-file=/dev/termination-log".to_owned(),
    ] {
        assert!(args.contains(&expected), "{expected} in {args:?}");
    }
    let mounted: Vec<String> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
        .collect();
    assert!(
        mounted.contains(&"archive-reader".to_owned()),
        "{mounted:?}"
    );
    assert!(
        !mounted.contains(&"archive-writer".to_owned()),
        "{mounted:?}"
    );
    assert!(!mounted.contains(&"signer".to_owned()), "{mounted:?}");
    let accounts: Api<ServiceAccount> = Api::namespaced(env.client.clone(), &env.namespace);
    assert!(accounts.get_opt("archived-audit-verify").await?.is_some());
    // The consumer pods' NetworkPolicy covers the verifier's too.
    let policies: Api<NetworkPolicy> = Api::namespaced(env.client.clone(), &env.namespace);
    let policy = policies.get("archived-audit-consumer").await?;
    let selector = serde_json::to_string(&policy.spec.unwrap().pod_selector)?;
    assert!(selector.contains("audit-verify"), "{selector}");

    // A complete run: True, and the next run starts where it ended.
    let through = "2026-12-04T10:00:00Z";
    operator_support::finished_verification_pod(
        &env.client,
        &env.namespace,
        "archived",
        "1",
        0,
        &json!({ "verdict": "complete", "verifiedThrough": through, "segments": 4,
                 "chains": 1, "complete": 1, "problems": 0, "findings": [] }),
    )
    .await?;
    let verified = env
        .wait_condition("archived", "ArchiveVerified", "True")
        .await?;
    assert!(
        verified["message"]
            .as_str()
            .unwrap_or_default()
            .contains(through),
        "{verified}"
    );
    wait::until(
        "the next run starting where this one ended",
        WAIT,
        POLL,
        || async {
            let job = jobs.get("archived-audit-verify").await?;
            let pod = job.spec.job_template.spec.unwrap().template.spec.unwrap();
            let args = pod.containers[0].args.clone().unwrap_or_default();
            Ok(args.contains(&format!("--since={through}")).then_some(()))
        },
    )
    .await?;
    let problems = format!(
        r#"audit_operator_archive_verification_problems{{namespace="{}",name="archived"}}"#,
        env.namespace
    );
    assert_eq!(env.operator_metric(&problems).await?, 0.0);

    // A run that found a segment missing: False, named, one Warning, the metric.
    let finding = "run=archived-audit-consumer-0_20261204T090000.000000000Z finding=missing_segments numbers=3-3";
    operator_support::finished_verification_pod(
        &env.client,
        &env.namespace,
        "archived",
        "2",
        1,
        &json!({ "verdict": "problems", "since": through, "verifiedThrough": "2026-12-04T11:00:00Z",
                 "segments": 2, "chains": 1, "complete": 0, "problems": 1, "missingSegments": 1,
                 "findings": [finding] }),
    )
    .await?;
    let found = env
        .wait_condition("archived", "ArchiveVerified", "False")
        .await?;
    assert_eq!(found["reason"], "ArchiveProblems", "{found}");
    assert!(
        found["message"]
            .as_str()
            .unwrap_or_default()
            .contains("numbers=3-3"),
        "{found}"
    );
    let status =
        env.consumers.get("archived").await?.data["status"]["archive"]["verification"].clone();
    assert_eq!(status["result"], "Problems", "{status}");
    assert_eq!(
        status["verifiedThrough"], through,
        "held for the next run: {status}"
    );
    assert_eq!(
        env.condition("archived", "Ready").await?.unwrap()["status"],
        "True",
        "not part of Ready"
    );
    wait::until("the problems metric", WAIT, POLL, || async {
        Ok((env.operator_metric(&problems).await? >= 2.0).then_some(()))
    })
    .await?;
    // Reconciled again and again (every 2 s): one Warning for the one transition.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(
        env.event_occurrences("archived", "ArchiveProblems").await?,
        1
    );

    // Verification turned off: the CronJob, its account, the condition and the status go.
    env.apply_consumer(
        "archived",
        json!({ "replicas": 0, "integrity": integrity, "archive": archive(Value::Null) }),
    )
    .await?;
    wait::until("the verification removed", WAIT, POLL, || async {
        let gone = jobs.get_opt("archived-audit-verify").await?.is_none()
            && accounts.get_opt("archived-audit-verify").await?.is_none()
            && env
                .condition("archived", "ArchiveVerified")
                .await?
                .is_none();
        Ok(gone.then_some(()))
    })
    .await?;
    Ok(())
}

/// Pulls up to `count` events from durable consumer `durable` of `stream` and acknowledges
/// each, as a pod that wrote them would: batch after batch until `count`, or until a batch
/// brings none. Returns how many.
async fn acknowledge(
    js: &jetstream::Context,
    stream: &str,
    durable: &str,
    count: usize,
) -> anyhow::Result<usize> {
    let durable: jetstream::consumer::PullConsumer = js
        .get_stream(stream)
        .await?
        .get_consumer(durable)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut acked = 0;
    while acked < count {
        let before = acked;
        let mut batch = durable
            .fetch()
            .max_messages(count - acked)
            .messages()
            .await?;
        while let Some(message) = futures::StreamExt::next(&mut batch).await {
            message
                .map_err(|e| anyhow::anyhow!("{e}"))?
                .double_ack()
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            acked += 1;
        }
        if acked == before {
            break;
        }
    }
    Ok(acked)
}

/// Publishes `count` events to `subject` prefix on `js`, each acknowledged by the stream.
async fn publish_acked(js: &jetstream::Context, prefix: &str, count: usize) -> anyhow::Result<()> {
    for n in 0..count {
        js.publish(format!("audit.{prefix}.{n}"), "{}".into())
            .await?
            .await?;
    }
    Ok(())
}

#[tokio::test]
async fn events_a_full_stream_discards_before_they_are_written_are_counted_and_reported()
-> anyhow::Result<()> {
    let env = Env::start("ac-discard").await?;
    // A stream that keeps 100 events: its oldest go at the limit, written or not.
    operator_support::apply(
        &env.streams,
        AUDIT_STREAM,
        "limited",
        json!({
            "connection": {
                "servers": [env.nats.url()],
                "auth": { "tokenSecretRef": { "name": "nats-token", "key": "token" } },
            },
            "name": "LIMITED",
            "subjects": ["audit.>"],
            "storage": "Memory",
            "maxMessages": 100,
            "maxAge": "1h",
            "discard": "Old",
        }),
    )
    .await?;
    operator_support::wait_ready(&env.streams, "limited", WAIT).await?;
    let js = env.jetstream().await?;
    // 150 events before the consumer exists: the first 50 are gone, but not from it (it
    // starts at the stream's first event), so nothing is counted.
    publish_acked(&js, "before", 150).await?;
    let spec = |name: &str| json!({ "streamRef": { "name": "limited" }, "durableName": name, "replicas": 0 });
    operator_support::apply(&env.consumers, AUDIT_CONSUMER, "stopped", spec("stopped")).await?;
    env.wait_condition("stopped", "ConsumerReady", "True")
        .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let status = env.consumers.get("stopped").await?.data["status"].clone();
    assert!(status["eventsDiscarded"].is_null(), "{status}");
    // The warning before a loss: the 100 events in the stream are all unwritten, so they take
    // the whole of maxMessages; none is old against maxAge; no maxBytes, no share of it.
    assert_eq!(
        status["limitsUse"],
        json!({ "messages": 100, "age": 0 }),
        "{status}"
    );
    let share = |limit: &str| {
        format!(
            r#"audit_operator_consumer_limit_use_ratio{{namespace="{}",name="stopped",limit="{limit}"}}"#,
            env.namespace
        )
    };
    assert_eq!(env.operator_metric(&share("messages")).await?, 1.0);
    assert!(env.operator_metric(&share("age")).await? < 0.01);

    // No pod reads (replicas 0): 100 more events push the 100 the consumer had not written
    // out of the stream.
    publish_acked(&js, "while-stopped", 100).await?;
    let status = wait::until("the discarded events counted", WAIT, POLL, || async {
        let status = env.consumers.get("stopped").await?.data["status"].clone();
        Ok((status["eventsDiscarded"] == 100).then_some(status))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", env.operator_log()))?;
    assert_eq!(status["discardedThrough"], 150, "{status}");
    let events = events_about(&env.client, &env.namespace, "stopped").await?;
    let warning = events
        .iter()
        .find(|e| e.reason.as_deref() == Some("EventsDiscarded"))
        .ok_or_else(|| anyhow::anyhow!("no EventsDiscarded Warning: {events:?}"))?;
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let note = warning.note.as_deref().unwrap_or_default();
    assert!(
        note.starts_with("100 event(s) at stream sequences 51-150 were removed from LIMITED"),
        "{note}"
    );
    let sample = format!(
        r#"audit_operator_events_discarded{{namespace="{}",name="stopped"}}"#,
        env.namespace
    );
    assert_eq!(env.operator_metric(&sample).await?, 100.0);

    // Counted once: later reconciliations add nothing while nothing more goes.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = env.consumers.get("stopped").await?.data["status"].clone();
    assert_eq!(status["eventsDiscarded"], 100, "{status}");
    assert_eq!(
        occurrences(
            &events_about(&env.client, &env.namespace, "stopped").await?,
            "EventsDiscarded"
        ),
        1
    );

    // A reader writes and acknowledges 20 of the 100 the stream holds: 80 remain at risk.
    assert_eq!(acknowledge(&js, "LIMITED", "stopped", 20).await?, 20);
    let status = wait::until("80% of maxMessages in use", WAIT, POLL, || async {
        let status = env.consumers.get("stopped").await?.data["status"].clone();
        Ok((status["limitsUse"]["messages"] == 80).then_some(status))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", env.operator_log()))?;
    assert!(status["limitsUse"]["bytes"].is_null(), "{status}");
    assert_eq!(env.operator_metric(&share("messages")).await?, 0.8);
    Ok(())
}

/// The Deployment's `spec.replicas` once it is `wanted`.
async fn wait_deployment_replicas(env: &Env, name: &str, wanted: i32) -> anyhow::Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    let deployment = format!("{name}-audit-consumer");
    wait::until(
        &format!("Deployment {deployment} at {wanted} replica(s)"),
        WAIT,
        POLL,
        || async {
            let d = deployments.get_opt(&deployment).await?;
            Ok(d.filter(|d| d.spec.as_ref().and_then(|s| s.replicas) == Some(wanted)))
        },
    )
    .await
    .map(drop)
    .map_err(|e| anyhow::anyhow!("{e:#}\noperator log:\n{}", env.operator_log()))
}

/// The Deployment's `spec.replicas` now.
async fn deployment_replicas(env: &Env, name: &str) -> anyhow::Result<Option<i32>> {
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.namespace);
    let d = deployments.get(&format!("{name}-audit-consumer")).await?;
    Ok(d.spec.and_then(|s| s.replicas))
}

/// Without pods (no kubelet here) the lag stays as the test makes it: published events are
/// pending until the test itself acknowledges them through the durable consumer.
#[tokio::test]
async fn autoscaling_follows_the_lag_and_holds_when_the_lag_cannot_be_trusted() -> anyhow::Result<()>
{
    let mut env =
        Env::start_with_operator_args("ac-autoscale", &["--autoscaling-interval", "1s"]).await?;
    env.apply_stream().await?;
    operator_support::wait_ready(&env.streams, "orders", WAIT).await?;
    let autoscaling = json!({
        "minReplicas": 0, "maxReplicas": 5, "targetLagPerReplica": 100,
        "scaleDown": { "stabilizationWindow": "20s", "period": "1s" },
    });

    // Both a fixed number and autoscaling: the schema says which to remove.
    let both = env
        .apply_consumer(
            "reader",
            json!({ "replicas": 2, "autoscaling": autoscaling.clone() }),
        )
        .await
        .expect_err("replicas and autoscaling together are rejected");
    assert!(
        both.to_string()
            .contains("set replicas or autoscaling, not both"),
        "{both}"
    );

    env.apply_consumer(
        "reader",
        json!({ "durableName": "reader", "autoscaling": autoscaling }),
    )
    .await?;
    // Nothing pending: no pod at all.
    wait_deployment_replicas(&env, "reader", 0).await?;
    let scaling = env
        .wait_condition("reader", "ScalingActive", "True")
        .await?;
    assert_eq!(scaling["reason"], "FollowingLag", "{scaling}");

    // A burst of 350: ceil(350 / 100) = 4 pods, in one step (at most 4 per period).
    let js = env.jetstream().await?;
    publish_acked(&js, "burst", 350).await?;
    wait_deployment_replicas(&env, "reader", 4).await?;
    // The status is written right after the Deployment, in the same pass.
    let object = wait::until("status.desiredReplicas 4", WAIT, POLL, || async {
        let object = env.consumers.get("reader").await?;
        Ok((object.data["status"]["desiredReplicas"] == 4).then_some(object))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", env.operator_log()))?;
    let status = &object.data["status"];
    assert_eq!(status["desiredReplicas"], 4, "{status}");
    assert_eq!(status["autoscaling"]["lag"], 350, "{status}");
    assert_eq!(
        status["autoscaling"]["lastScaleDirection"], "ScaledUp",
        "{status}"
    );
    // The spec is the user's: not a field of it was written.
    assert_eq!(object.metadata.generation, Some(1));
    assert!(
        object.data["spec"].get("replicas").is_none(),
        "{}",
        object.data["spec"]
    );
    env.wait_event_occurrences("reader", "ScaledUp", 1).await?;
    let desired = format!(
        r#"audit_operator_consumer_desired_replicas{{namespace="{}",name="reader"}}"#,
        env.namespace
    );
    let lag = format!(
        r#"audit_operator_consumer_lag{{namespace="{}",name="reader"}}"#,
        env.namespace
    );
    assert_eq!(env.operator_metric(&desired).await?, 4.0);
    assert_eq!(env.operator_metric(&lag).await?, 350.0);

    // An HPA or KEDA cannot fight the autoscaler through the scale subresource.
    let scaled = env
        .consumers
        .patch_scale(
            "reader",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "replicas": 1 } })),
        )
        .await
        .expect_err("a scale write is rejected while autoscaling is on");
    assert!(scaled.to_string().contains("not both"), "{scaled}");

    // 300 written and acknowledged (by the test, as pods would): lag 50 wants 1 pod, but
    // only after 20 s of lower recommendations.
    let stream = js.get_stream("ORDERS").await?;
    assert_eq!(acknowledge(&js, "ORDERS", "reader", 300).await?, 300);
    let lowered = std::time::Instant::now();
    wait_deployment_replicas(&env, "reader", 1).await?;
    assert!(
        lowered.elapsed() >= Duration::from_secs(15),
        "scaled down {:?} after the lag fell, inside the 20 s window",
        lowered.elapsed()
    );
    env.wait_event_occurrences("reader", "ScaledDown", 1)
        .await?;

    // The durable consumer deleted on NATS: the operator recreates it, and its lag (the
    // whole stream again: 350) is no backlog to scale for.
    stream.delete_consumer("reader").await?;
    let held = env
        .wait_condition("reader", "ScalingActive", "False")
        .await?;
    assert_eq!(held["reason"], "ConsumerRecreated", "{held}");
    assert!(
        held["message"]
            .as_str()
            .unwrap_or_default()
            .contains("holding 1 pod(s)"),
        "{held}"
    );
    for _ in 0..8 {
        assert_eq!(deployment_replicas(&env, "reader").await?, Some(1), "held");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(
        env.event_occurrences("reader", "ConsumerRecreated").await?,
        1
    );

    // NATS unreachable: nothing to go by, nothing changes, and the condition says why.
    env.nats.stop().await;
    let unknown = wait::until("ScalingActive LagUnknown", WAIT, POLL, || async {
        Ok(env
            .condition("reader", "ScalingActive")
            .await?
            .filter(|c| c["reason"] == "LagUnknown"))
    })
    .await
    .map_err(|e| anyhow::anyhow!("{e:#}\n{}", env.operator_log()))?;
    assert!(
        unknown["message"]
            .as_str()
            .unwrap_or_default()
            .contains("holding 1 pod(s)"),
        "{unknown}"
    );
    assert_eq!(deployment_replicas(&env, "reader").await?, Some(1));
    env.nats.start_again().await?;

    // Turned off: the fixed number again, and the autoscaler's state leaves the status.
    env.apply_consumer("reader", json!({ "durableName": "reader", "replicas": 2 }))
        .await?;
    wait_deployment_replicas(&env, "reader", 2).await?;
    wait::until("the autoscaling status gone", WAIT, POLL, || async {
        let object = env.consumers.get("reader").await?;
        let status = &object.data["status"];
        Ok((status["autoscaling"].is_null()
            && status["desiredReplicas"] == 2
            && !status["conditions"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "ScalingActive"))
        .then_some(()))
    })
    .await?;
    Ok(())
}
