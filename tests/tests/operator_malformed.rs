//! One unreadable AuditStream (stored before the schema could reject it) is reported and
//! never stops the controller from reconciling every other AuditStream.
//!
//! A test binary of its own: it briefly loosens the CRD's schema on this binary's control
//! plane, which would disturb tests running beside it.

mod operator_support;

use std::time::Duration;

use audit_tests::nats::NatsServer;
use audit_tests::operator::{OperatorProcess, install_crds};
use audit_tests::wait;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use operator_support::{AUDIT_STREAM, events_about, is_ready};
use serde_json::json;

const CRD: &str = "auditstreams.audit.eventsaudit.io";

#[tokio::test]
async fn a_malformed_stream_is_reported_and_the_others_still_reconcile() -> anyhow::Result<()> {
    let (client, namespace) = operator_support::namespace("malformed", &[]).await?;
    let streams = operator_support::api(&client, &namespace, AUDIT_STREAM);

    // Store an object the operator's types cannot read: with the schema loosened, as an
    // older CRD version might have allowed, and then put back.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let mut loose = crds.get(CRD).await?;
    loose.metadata.managed_fields = None;
    loose.metadata.resource_version = None;
    loose.status = None;
    let version = &mut loose.spec.versions[0];
    version.schema = Some(serde_json::from_value(json!({
        "openAPIV3Schema": { "type": "object", "x-kubernetes-preserve-unknown-fields": true }
    }))?);
    version.subresources = None;
    version.additional_printer_columns = None;
    crds.patch(
        CRD,
        &PatchParams::apply("malformed-test").force(),
        &Patch::Apply(&loose),
    )
    .await?;
    let broken: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "audit.eventsaudit.io/v1alpha1",
        "kind": "AuditStream",
        "metadata": { "name": "broken" },
        "spec": { "subjects": "not a list" },
    }))?;
    wait::until(
        "the loosened schema to accept a malformed AuditStream",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async { Ok(Some(streams.create(&PostParams::default(), &broken).await?)) },
    )
    .await?;
    // Back to the committed CRD, applied by the same field manager so that nothing of the
    // loosened schema stays behind.
    let committed: CustomResourceDefinition = serde_yaml::from_str(&std::fs::read_to_string(
        audit_tests::testenv::workspace_root().join(format!("crds/{CRD}.yaml")),
    )?)?;
    crds.patch(
        CRD,
        &PatchParams::apply("malformed-test").force(),
        &Patch::Apply(&committed),
    )
    .await?;
    install_crds(&client).await?;

    let nats = NatsServer::start().await?;
    let mut operator = OperatorProcess::start(&["--namespace", &namespace])?;
    let good = json!({
        "apiVersion": "audit.eventsaudit.io/v1alpha1",
        "kind": "AuditStream",
        "metadata": { "name": "good" },
        "spec": { "connection": { "servers": [nats.url()] }, "subjects": ["audit.>"] },
    });
    wait::until(
        "the real schema to be back in force",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            let rejected = streams
                .patch(
                    "broken",
                    &PatchParams::apply("malformed-test"),
                    &Patch::Apply(&json!({
                        "apiVersion": "audit.eventsaudit.io/v1alpha1",
                        "kind": "AuditStream",
                        "metadata": { "name": "broken" },
                        "spec": { "subjects": "still not a list" },
                    })),
                )
                .await
                .is_err();
            Ok(rejected.then_some(()))
        },
    )
    .await?;
    streams
        .patch(
            "good",
            &PatchParams::apply("malformed-test"),
            &Patch::Apply(&good),
        )
        .await?;

    let result = wait::until(
        "the good stream Ready and an InvalidObject Event for the broken one",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || async {
            let ready = is_ready(&streams.get("good").await?);
            let reported = events_about(&client, &namespace, "broken")
                .await?
                .iter()
                .any(|e| e.reason.as_deref() == Some("InvalidObject"));
            Ok((ready && reported).then_some(()))
        },
    )
    .await;
    result.map_err(|e| anyhow::anyhow!("{e:#}\noperator log:\n{}", operator.log_tail()))?;
    operator.ensure_running()?;
    Ok(())
}
