//! An AuditConsumer with a `maxDeliver` limit against the real servers: when NATS gives up
//! on an event, the operator counts it in the status and warns in an Event, also after a NATS
//! outage; and when its NATS user may not subscribe to the advisories, it says so. The tests
//! play a sink that fails: they pull an event from the durable consumer and never acknowledge
//! it.

mod operator_support;

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use audit_tests::nats::NatsServer;
use audit_tests::operator::OperatorProcess;
use audit_tests::wait;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DynamicObject, PostParams};
use operator_support::{AUDIT_CONSUMER, AUDIT_STREAM, events_about};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);
/// What NATS publishes on when an event of the durable `reader` on `ORDERS` is given up.
const ADVISORY_SUBJECT: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.ORDERS.reader";

/// Permissions of a NATS user who may use JetStream but not hear its advisories.
const NO_ADVISORIES: &str = r#"{
      publish: { allow: ["$JS.API.>"] }
      subscribe: { allow: [">"], deny: ["$JS.EVENT.ADVISORY.>"] }
    }"#;

/// A server with two users: `admin` (the tests' own client) and `operator`, with the given
/// permissions (none: everything).
fn users_config(operator_permissions: Option<&str>) -> String {
    let permissions = operator_permissions
        .map(|p| format!(", permissions: {p}"))
        .unwrap_or_default();
    format!(
        "authorization {{\n  users: [\n    {{ user: admin, password: admin-secret }}\n    {{ user: operator, password: operator-secret{permissions} }}\n  ]\n}}\n"
    )
}

/// How the operator authenticates, if the server asks: the `operator` user of
/// [`users_config`], through a Secret.
const AS_OPERATOR_USER: Option<(&str, &str)> = Some(("operator", "operator-secret"));

/// The operator running against `nats`, an AuditStream `orders` (stream `ORDERS`, `storage`
/// as given) and an AuditConsumer `reader` with `maxDeliver: 1`, once the operator listens
/// for its advisories.
struct Scenario {
    client: kube::Client,
    namespace: String,
    consumers: Api<DynamicObject>,
    operator: OperatorProcess,
}

impl Scenario {
    async fn start(
        nats: &NatsServer,
        namespace_prefix: &str,
        storage: &str,
        user: Option<(&str, &str)>,
        operator_args: &[&str],
    ) -> anyhow::Result<Self> {
        let (client, namespace) = operator_support::namespace(namespace_prefix, &[]).await?;
        let mut args = vec![
            "--namespace",
            &namespace,
            "--consumer-image",
            "audit-consumer:test",
        ];
        args.extend(operator_args);
        let operator = OperatorProcess::start(&args)?;
        let mut connection = json!({ "servers": [nats.url()] });
        if let Some((username, password)) = user {
            let secret: Secret = serde_json::from_value(json!({
                "metadata": { "name": "nats-user" },
                "stringData": { "username": username, "password": password },
            }))?;
            Api::<Secret>::namespaced(client.clone(), &namespace)
                .create(&PostParams::default(), &secret)
                .await?;
            connection["auth"] = json!({ "userPasswordSecretRef": { "name": "nats-user" } });
        }
        let streams = operator_support::api(&client, &namespace, AUDIT_STREAM);
        let consumers = operator_support::api(&client, &namespace, AUDIT_CONSUMER);
        operator_support::apply(
            &streams,
            AUDIT_STREAM,
            "orders",
            json!({
                "connection": connection,
                "name": "ORDERS",
                "subjects": ["audit.>"],
                "storage": storage,
            }),
        )
        .await?;
        operator_support::apply(
            &consumers,
            AUDIT_CONSUMER,
            "reader",
            json!({ "streamRef": { "name": "orders" }, "maxDeliver": 1, "ackWait": "1s" }),
        )
        .await?;
        let scenario = Self {
            client,
            namespace,
            consumers,
            operator,
        };
        // A zero count in the status means the operator listens for the advisories.
        scenario
            .wait_for_count(
                "the durable consumer, and the operator listening for its advisories",
                0,
                nats,
            )
            .await?;
        Ok(scenario)
    }

    /// The AuditConsumer's status once `status.maxDeliveriesReached` is `count`.
    async fn wait_for_count(
        &self,
        what: &str,
        count: u64,
        nats: &NatsServer,
    ) -> anyhow::Result<Value> {
        wait::until(what, WAIT, POLL, || async {
            let status = self.consumers.get("reader").await?.data["status"].clone();
            Ok((status["maxDeliveriesReached"] == count).then_some(status))
        })
        .await
        .map_err(|e| self.with_logs(e, nats))
    }

    /// The `MaxDeliveriesReached` Warning Events about `reader`, once they record `occurrences`
    /// reports. A repeat within a few minutes is recorded as the next occurrence of the first
    /// Event (its `series.count`; the recorder keeps the first note), not as a new Event.
    async fn wait_for_warnings(
        &self,
        occurrences: i32,
        nats: &NatsServer,
    ) -> anyhow::Result<Vec<Event>> {
        self.wait_for_events("MaxDeliveriesReached", occurrences, nats)
            .await
    }

    /// The Events with `reason` about `reader`, once they record `occurrences` reports.
    async fn wait_for_events(
        &self,
        reason: &str,
        occurrences: i32,
        nats: &NatsServer,
    ) -> anyhow::Result<Vec<Event>> {
        wait::until(
            &format!("{occurrences} {reason} Event occurrence(s)"),
            WAIT,
            POLL,
            || async {
                let warnings: Vec<Event> = events_about(&self.client, &self.namespace, "reader")
                    .await?
                    .into_iter()
                    .filter(|e| e.reason.as_deref() == Some(reason))
                    .collect();
                let recorded = operator_support::occurrences(&warnings, reason);
                Ok((recorded >= occurrences).then_some(warnings))
            },
        )
        .await
        .map_err(|e| self.with_logs(e, nats))
    }

    /// The AuditConsumer's condition `type_` once it has `status` and `reason`.
    async fn wait_for_condition(
        &self,
        type_: &str,
        status: &str,
        reason: &str,
        nats: &NatsServer,
    ) -> anyhow::Result<Value> {
        wait::until(
            &format!("condition {type_} to be {status} with reason {reason}"),
            WAIT,
            POLL,
            || async {
                let object = self.consumers.get("reader").await?;
                let found = object.data["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|c| c["type"] == type_ && c["status"] == status && c["reason"] == reason)
                    .cloned();
                Ok(found)
            },
        )
        .await
        .map_err(|e| self.with_logs(e, nats))
    }

    fn with_logs(&self, error: anyhow::Error, nats: &NatsServer) -> anyhow::Error {
        anyhow::anyhow!(
            "{error:#}\noperator log:\n{}\nnats log:\n{}",
            self.operator.log_tail(),
            nats.log_tail()
        )
    }
}

/// Publishes an event and plays the failing sink: takes its only delivery (`maxDeliver: 1`)
/// and never acknowledges it, so NATS gives up on it once the ack wait runs out. Returns its
/// stream sequence.
async fn give_up_on_one_event(client: async_nats::Client) -> anyhow::Result<u64> {
    let js = jetstream::new(client);
    let sequence = js
        .publish("audit.orders", "{}".into())
        .await?
        .await?
        .sequence;
    let durable: jetstream::consumer::Consumer<pull::Config> = js
        .get_stream("ORDERS")
        .await?
        .get_consumer("reader")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut batch = durable.fetch().max_messages(1).messages().await?;
    let unacked = batch
        .next()
        .await
        .expect("the published event")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = unacked.info().map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(info.stream_sequence, sequence);
    Ok(sequence)
}

/// Waits until the server holds the operator's subscription to the advisories again: NATS
/// publishes an advisory only while someone listens, so one published before that would not
/// reach any operator.
async fn wait_for_operator_subscription(nats: &NatsServer) -> anyhow::Result<()> {
    wait::until(
        "the operator's subscription to the advisories on the restarted server",
        WAIT,
        POLL,
        || async {
            let connz = audit_tests::http::get(nats.monitor_port(), "/connz?subs=1").await?;
            let connz: Value = serde_json::from_str(&connz.body)?;
            let subscribed = connz["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|connection| connection["name"] == "audit-operator")
                .any(|connection| {
                    connection["subscriptions_list"]
                        .as_array()
                        .is_some_and(|subjects| subjects.iter().any(|s| s == ADVISORY_SUBJECT))
                });
            Ok(subscribed.then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn an_event_that_reaches_max_deliver_is_counted_and_reported() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let scenario = Scenario::start(&nats, "max-deliver", "Memory", None, &[]).await?;

    let sequence = give_up_on_one_event(nats.client().await?).await?;
    let status = scenario
        .wait_for_count(
            "status.maxDeliveriesReached to count the event NATS gave up on",
            1,
            &nats,
        )
        .await?;
    assert_eq!(status["lastMaxDeliveredSequence"], sequence);

    let warnings = scenario.wait_for_warnings(1, &nats).await?;
    let [warning] = warnings.as_slice() else {
        anyhow::bail!("one Event expected: {warnings:?}");
    };
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let note = warning.note.clone().unwrap_or_default();
    for part in [
        "1 more event(s)".to_owned(),
        format!("stream sequence {sequence}"),
        "spec.maxDeliver".to_owned(),
    ] {
        assert!(note.contains(&part), "{part:?} missing from {note}");
    }
    Ok(())
}

#[tokio::test]
async fn events_given_up_after_a_nats_restart_are_still_counted() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    // File storage: the stream and the durable consumer outlive the restart, as in production.
    let scenario = Scenario::start(&nats, "max-deliver-restart", "File", None, &[]).await?;
    let before = give_up_on_one_event(nats.client().await?).await?;
    let status = scenario
        .wait_for_count("the event given up before the outage", 1, &nats)
        .await?;
    assert_eq!(status["lastMaxDeliveredSequence"], before);
    scenario.wait_for_warnings(1, &nats).await?;

    nats.stop().await;
    nats.start_again().await?;
    wait_for_operator_subscription(&nats)
        .await
        .map_err(|e| scenario.with_logs(e, &nats))?;

    let after = give_up_on_one_event(nats.client().await?).await?;
    let status = scenario
        .wait_for_count("the event given up after the outage", 2, &nats)
        .await?;
    assert_eq!(status["lastMaxDeliveredSequence"], after);
    let warnings = scenario.wait_for_warnings(2, &nats).await?;
    assert!(
        warnings
            .iter()
            .all(|e| e.type_.as_deref() == Some("Warning")),
        "{warnings:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_refused_subscription_to_the_advisories_is_reported_until_granted() -> anyhow::Result<()>
{
    let mut nats = NatsServer::start_with_config(&users_config(Some(NO_ADVISORIES))).await?;
    // Frequent checks, so that the grant below shows within a bounded wait.
    let scenario = Scenario::start(
        &nats,
        "max-deliver-denied",
        "Memory",
        AS_OPERATOR_USER,
        &["--requeue-interval", "2s"],
    )
    .await?;

    let condition = scenario
        .wait_for_condition(
            "MaxDeliveriesCounted",
            "False",
            "AdvisorySubscriptionDenied",
            &nats,
        )
        .await?;
    let message = condition["message"].as_str().unwrap_or_default();
    for part in [
        "Permissions Violation for Subscription",
        ADVISORY_SUBJECT,
        "subscribe to $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>",
    ] {
        assert!(message.contains(part), "{part:?} missing from {message}");
    }
    // The durable consumer works; only the count of what NATS gives up on is blind.
    scenario
        .wait_for_condition("ConsumerReady", "True", "ConsumerReady", &nats)
        .await?;
    let object = scenario.consumers.get("reader").await?;
    let ready = object.data["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == "Ready")
        .cloned()
        .unwrap_or_default();
    assert_ne!(ready["reason"], "AdvisorySubscriptionDenied", "{ready}");
    let warnings = scenario
        .wait_for_events("AdvisorySubscriptionDenied", 1, &nats)
        .await?;
    let note = warnings[0].note.as_deref().unwrap_or_default();
    assert_eq!(warnings[0].type_.as_deref(), Some("Warning"));
    assert!(
        note.contains("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>"),
        "{note}"
    );

    // The administrator grants the permission; the connection stays, and the operator's
    // next try is accepted.
    nats.reload_with_config(&users_config(None)).await?;
    scenario
        .wait_for_condition(
            "MaxDeliveriesCounted",
            "True",
            "AdvisoriesSubscribed",
            &nats,
        )
        .await?;
    let admin =
        async_nats::ConnectOptions::with_user_and_password("admin".into(), "admin-secret".into())
            .connect(nats.url())
            .await?;
    let sequence = give_up_on_one_event(admin).await?;
    let status = scenario
        .wait_for_count(
            "the event given up once the permission was granted",
            1,
            &nats,
        )
        .await?;
    assert_eq!(status["lastMaxDeliveredSequence"], sequence);
    Ok(())
}
