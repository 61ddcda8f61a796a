//! The chart's monitoring: its ServiceMonitor, PodMonitor and PrometheusRule are off by
//! default and render without the Prometheus Operator's CRDs; the alerting rules pass
//! `promtool test rules` (tests/promtool/alerts.test.yaml); and every metric the rules and the
//! Grafana dashboard (deploy/grafana/audit-operator.json) query is one the real
//! `audit-operator` and `audit-consumer` binaries export on `/metrics`.

mod operator_support;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use audit_tests::kube_env::ControlPlane;
use audit_tests::nats::NatsServer;
use audit_tests::operator::{OperatorProcess, install_crds};
use audit_tests::ports::free_port;
use audit_tests::process::ServerProcess;
use audit_tests::testenv::{cargo_bin, testenv_bin, workspace_root};
use audit_tests::{tools, wait};
use futures::StreamExt;
use kube::api::DynamicObject;
use operator_support::{AUDIT_CONSUMER, AUDIT_STREAM};
use serde_json::{Value, json};

const CHART: &str = "deploy/helm/audit-operator";
const KUBERNETES_VERSION: &str = "1.36.3";
const DASHBOARD: &str = "deploy/grafana/audit-operator.json";
/// Prometheus's own series for every scrape target, which the alerts on unreachable targets
/// use; no binary exports it.
const PROMETHEUS_SERIES: &[&str] = &["up"];
const WAIT: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(200);

fn helm_template(values: &[&str]) -> String {
    let mut args = vec![
        "template",
        "audit",
        CHART,
        "--namespace",
        "audit-system",
        "--kube-version",
        KUBERNETES_VERSION,
    ];
    for value in values {
        args.extend(["--set", value]);
    }
    tools::run("helm", &args, None).unwrap_or_else(|e| panic!("{e:#}"))
}

fn documents(manifests: &str) -> Vec<serde_yaml::Value> {
    use serde::Deserialize as _;
    serde_yaml::Deserializer::from_str(manifests)
        .filter_map(|document| serde_yaml::Value::deserialize(document).ok())
        .filter(|value| !value.is_null())
        .collect()
}

fn kinds(manifests: &str) -> BTreeSet<String> {
    documents(manifests)
        .iter()
        .filter_map(|d| d.get("kind").and_then(|k| k.as_str()).map(str::to_owned))
        .collect()
}

/// The rule groups of the chart's PrometheusRule, as a Prometheus rule file.
fn rendered_rules() -> serde_yaml::Value {
    let manifests = helm_template(&["monitoring.prometheusRule.enabled=true"]);
    documents(&manifests)
        .into_iter()
        .find(|d| d.get("kind").and_then(|k| k.as_str()) == Some("PrometheusRule"))
        .and_then(|d| d.get("spec").cloned())
        .expect("the chart renders a PrometheusRule with a spec")
}

fn rule_expressions() -> Vec<String> {
    rendered_rules()["groups"]
        .as_sequence()
        .expect("rule groups")
        .iter()
        .flat_map(|group| group["rules"].as_sequence().expect("rules").clone())
        .map(|rule| {
            rule["expr"]
                .as_str()
                .expect("every rule has an expr")
                .to_owned()
        })
        .collect()
}

fn dashboard_expressions() -> Vec<String> {
    let text = std::fs::read_to_string(workspace_root().join(DASHBOARD)).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is valid JSON");
    let mut expressions = Vec::new();
    collect_expressions(&dashboard, &mut expressions);
    assert!(!expressions.is_empty(), "the dashboard queries nothing");
    expressions
}

/// Every PromQL expression in a dashboard: panel targets' `expr` and template variables'
/// `definition`.
fn collect_expressions(value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(members) => {
            for (key, member) in members {
                match (key.as_str(), member) {
                    ("expr" | "definition", Value::String(expr)) => found.push(expr.clone()),
                    _ => collect_expressions(member, found),
                }
            }
        }
        Value::Array(items) => items
            .iter()
            .for_each(|item| collect_expressions(item, found)),
        _ => {}
    }
}

/// The metric names a PromQL expression selects: identifiers that are not functions,
/// keywords, label names, label values or durations. Grafana's `label_values(metric, label)`
/// counts as selecting `metric`.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Binary operators and modifiers, and the aggregation operators, which may be followed
    // by `by (...)` rather than by their parenthesis.
    const KEYWORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "group",
        "stddev",
        "stdvar",
        "count",
        "count_values",
        "bottomk",
        "topk",
        "quantile",
        "limitk",
        "limit_ratio",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut previous_word = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            // Label matchers and range or subquery durations hold no metric names.
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    if chars[i] == '"' || chars[i] == '\'' {
                        let quote = chars[i];
                        i += 1;
                        while i < chars.len() && chars[i] != quote {
                            i += usize::from(chars[i] == '\\') + 1;
                        }
                    }
                    i += 1;
                }
                i += 1;
            }
            '"' | '\'' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += usize::from(chars[i] == '\\') + 1;
                }
                i += 1;
            }
            '(' if GROUPING.contains(&previous_word.as_str()) => {
                while i < chars.len() && chars[i] != ')' {
                    i += 1;
                }
                i += 1;
                previous_word.clear();
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                let is_function = next == Some(&'(');
                // In Grafana's label_values(metric, label) the label follows a comma.
                let is_label_argument = expr.starts_with("label_values(")
                    && chars[..start].iter().rev().find(|c| !c.is_whitespace()) == Some(&',');
                if !is_function && !is_label_argument && !KEYWORDS.contains(&word.as_str()) {
                    names.insert(word.clone());
                }
                previous_word = word;
            }
            c if c.is_ascii_digit() => {
                // A number, or a duration such as 5m.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            _ => {
                if !c.is_whitespace() {
                    previous_word.clear();
                }
                i += 1;
            }
        }
    }
    names
}

#[test]
fn metric_names_are_told_from_functions_labels_and_durations() {
    let names = metric_names(
        r#"max by (namespace, pod) (rate(audit_x_total{job="a/b", kind=~"A|B"}[5m])) > 0 and on (pod) up{x="}"} == 0"#,
    );
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["audit_x_total", "up"]
    );
    let names = metric_names(r#"label_values(audit_y{n="$n"}, auditconsumer)"#);
    assert_eq!(names.into_iter().collect::<Vec<_>>(), ["audit_y"]);
}

/// Sample names a `/metrics` exposition can carry, from its `# TYPE` lines: a family with no
/// sample yet (a failure counter before the first failure) is listed too.
fn exported_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(family), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total", "_created"],
            "histogram" => &["_bucket", "_sum", "_count", "_created"],
            "summary" => &["", "_sum", "_count", "_created"],
            _ => &[""],
        };
        names.extend(suffixes.iter().map(|suffix| format!("{family}{suffix}")));
    }
    names
}

async fn scrape(port: u16) -> anyhow::Result<String> {
    wait::until(
        &format!("/metrics on port {port}"),
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            Ok(audit_tests::http::get(port, "/metrics")
                .await
                .ok()
                .filter(|r| r.status == 200)
                .map(|r| r.body))
        },
    )
    .await
}

/// Drives the operator through what its metrics count (a reconciliation, a failing one, an
/// event NATS gives up on), so that every family it exports carries a sample, and returns its
/// `/metrics`. A family without a sample does not appear in the exposition at all.
async fn operator_metrics_after_a_real_run(nats: &NatsServer) -> anyhow::Result<String> {
    let control_plane = ControlPlane::shared();
    let client = control_plane.admin_client().await?;
    install_crds(&client).await?;
    let namespace = control_plane.create_namespace("metrics").await?;
    let operator = OperatorProcess::start(&[
        "--namespace",
        &namespace,
        "--consumer-image",
        "audit-consumer:test",
    ])?;
    let with_log =
        |e: anyhow::Error| anyhow::anyhow!("{e:#}\noperator log:\n{}", operator.log_tail());
    let streams = operator_support::api(&client, &namespace, AUDIT_STREAM);
    let consumers = operator_support::api(&client, &namespace, AUDIT_CONSUMER);
    operator_support::apply(
        &streams,
        AUDIT_STREAM,
        "orders",
        json!({
            "connection": { "servers": [nats.url()] },
            "name": "ORDERS",
            "subjects": ["orders.>"],
            "storage": "Memory",
            // A limit: its use by the consumers' unwritten events.
            "maxMessages": 1000,
        }),
    )
    .await?;
    // A stream that collects ORDERS: its source's lag and activity.
    operator_support::apply(
        &streams,
        AUDIT_STREAM,
        "collected",
        json!({
            "connection": { "servers": [nats.url()] },
            "name": "COLLECTED",
            "storage": "Memory",
            "sources": [{ "name": "ORDERS" }],
        }),
    )
    .await?;
    // A Secret that does not exist: a failing reconciliation.
    operator_support::apply(
        &streams,
        AUDIT_STREAM,
        "locked",
        json!({
            "connection": {
                "servers": [nats.url()],
                "auth": { "tokenSecretRef": { "name": "no-such-secret", "key": "token" } },
            },
            "subjects": ["locked.>"],
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
    let status = |object: DynamicObject| object.data["status"].clone();
    wait::until(
        "the operator listening for max-deliveries advisories",
        WAIT,
        POLL,
        || async {
            Ok((status(consumers.get("reader").await?)["maxDeliveriesReached"] == 0).then_some(()))
        },
    )
    .await
    .map_err(with_log)?;
    // One delivery, never acknowledged: with maxDeliver 1, NATS gives the event up.
    let js = jetstream::new(nats.client().await?);
    js.publish("orders.placed", "{}".into()).await?.await?;
    let durable: jetstream::consumer::Consumer<pull::Config> = js
        .get_stream("ORDERS")
        .await?
        .get_consumer("reader")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut batch = durable.fetch().max_messages(1).messages().await?;
    batch
        .next()
        .await
        .expect("the published event")
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    wait::until(
        "the event NATS gave up on to be counted",
        WAIT,
        POLL,
        || async {
            Ok((status(consumers.get("reader").await?)["maxDeliveriesReached"] == 1).then_some(()))
        },
    )
    .await
    .map_err(with_log)?;
    archive_verified(&client, &namespace, &consumers)
        .await
        .map_err(with_log)?;
    scrape(operator.health_port()).await
}

/// An AuditConsumer whose archive is verified on a schedule, and one finished run of it:
/// what the verification's metrics need to be exported.
async fn archive_verified(
    client: &kube::Client,
    namespace: &str,
    consumers: &kube::Api<DynamicObject>,
) -> anyhow::Result<()> {
    let secrets: kube::Api<k8s_openapi::api::core::v1::Secret> =
        kube::Api::namespaced(client.clone(), namespace);
    let seed = nkeys::KeyPair::new_account().seed()?;
    let secret = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "signer" },
        "stringData": { "seed": seed },
    }))?;
    secrets.create(&Default::default(), &secret).await?;
    operator_support::apply(
        consumers,
        AUDIT_CONSUMER,
        "archived",
        json!({
            "streamRef": { "name": "orders" },
            "replicas": 0,
            "integrity": { "enabled": true, "signingKeySecretRef": { "name": "signer", "key": "seed" } },
            "archive": {
                "bucket": "trail",
                "region": "us-east-1",
                "endpoint": "http://127.0.0.1:9000",
                "verification": {},
            },
        }),
    )
    .await?;
    operator_support::finished_verification_pod(
        client,
        namespace,
        "archived",
        "1",
        0,
        &json!({ "verdict": "complete", "verifiedThrough": "2026-12-04T10:00:00Z" }),
    )
    .await?;
    wait::until(
        "the verification's result in the status",
        WAIT,
        POLL,
        || async {
            let status = consumers.get("archived").await?.data["status"].clone();
            Ok((status["archive"]["verification"]["result"] == "Complete").then_some(()))
        },
    )
    .await
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_query_is_exported() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let operator_metrics = operator_metrics_after_a_real_run(&nats).await?;

    let health_port = free_port();
    let dir = tempfile::tempdir()?;
    let mut command = Command::new(cargo_bin("audit-consumer"));
    command.args([
        "--nats-url",
        &nats.url(),
        "--stream",
        "METRICS",
        "--consumer",
        "metrics",
        "--create",
        "--subjects",
        "metrics.>",
        "--health-listen",
        &format!("127.0.0.1:{health_port}"),
    ]);
    let _consumer = ServerProcess::spawn("audit-consumer", command, &dir.path().join("log"))?;
    let consumer_metrics = scrape(health_port).await?;

    let mut exported = exported_names(&operator_metrics);
    exported.extend(exported_names(&consumer_metrics));
    assert!(
        exported.contains("audit_operator_max_deliveries_reached_total")
            && exported.contains("audit_consumer_events_total"),
        "both binaries' metrics were read:\n{operator_metrics}\n{consumer_metrics}"
    );
    exported.extend(PROMETHEUS_SERIES.iter().map(|s| (*s).to_owned()));

    let mut unknown = Vec::new();
    for (source, expressions) in [
        ("the PrometheusRule", rule_expressions()),
        (DASHBOARD, dashboard_expressions()),
    ] {
        for expr in expressions {
            for name in metric_names(&expr) {
                if !exported.contains(&name) {
                    unknown.push(format!("{source}: {name} in {expr}"));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "metrics no binary exports:\n{}\nexported: {exported:?}",
        unknown.join("\n")
    );
    Ok(())
}

#[test]
fn monitoring_objects_are_off_by_default_and_render_without_their_crds() {
    let default = kinds(&helm_template(&[]));
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(!default.contains(kind), "{kind} rendered by default");
    }
    // helm template has no cluster to ask: rendering needs no monitoring.coreos.com CRDs.
    let all = kinds(&helm_template(&[
        "monitoring.serviceMonitor.enabled=true",
        "monitoring.podMonitor.enabled=true",
        "monitoring.prometheusRule.enabled=true",
    ]));
    for kind in ["ServiceMonitor", "PodMonitor", "PrometheusRule"] {
        assert!(all.contains(kind), "{kind} not rendered when enabled");
    }
}

#[test]
fn the_alerting_rules_pass_their_promtool_unit_tests() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::write(
        dir.path().join("rules.yaml"),
        serde_yaml::to_string(&rendered_rules()).expect("rules as YAML"),
    )
    .expect("writing rules.yaml");
    std::fs::copy(
        workspace_root().join("tests/promtool/alerts.test.yaml"),
        dir.path().join("alerts.test.yaml"),
    )
    .expect("copying the rule tests");
    for args in [
        &["check", "rules", "rules.yaml"][..],
        &["test", "rules", "alerts.test.yaml"][..],
    ] {
        let output = Command::new(testenv_bin("promtool"))
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("running promtool");
        assert!(
            output.status.success(),
            "promtool {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

#[test]
fn every_alert_links_to_its_runbook_section() {
    let runbooks = std::fs::read_to_string(workspace_root().join("docs/runbooks.md"))
        .expect("docs/runbooks.md");
    let anchors: BTreeSet<String> = runbooks
        .lines()
        .filter_map(|line| line.strip_prefix("## "))
        .map(|heading| heading.trim().to_lowercase())
        .collect();
    let rules = rendered_rules();
    for group in rules["groups"].as_sequence().expect("rule groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            let alert = rule["alert"].as_str().expect("alerting rules only");
            let url = rule["annotations"]["runbook_url"]
                .as_str()
                .unwrap_or_else(|| panic!("{alert} has no runbook_url"));
            let anchor = url.rsplit_once('#').map(|(_, a)| a).unwrap_or_default();
            assert_eq!(anchor, alert.to_lowercase(), "{alert}: {url}");
            assert!(
                anchors.contains(anchor),
                "docs/runbooks.md has no section `## {alert}`"
            );
        }
    }
}
