//! Every AuditStream and AuditConsumer the documentation shows is one the API server accepts:
//! each fenced ```yaml block on a Markdown page that holds such an object is sent to the real
//! kube-apiserver, with the committed CRDs installed, as a server-side apply dry run with
//! strict field validation (an unknown or misspelt field fails, as with `kubectl apply`).
//! The schema, the enums and the CEL rules on creation are all checked; nothing is stored.
//!
//! An example that is deliberately partial (a fragment of a spec) is preceded by the comment
//! `<!-- not-a-full-example -->` ([`docs::NOT_A_FULL_EXAMPLE`]); a block without such an
//! object (a Secret, a values file) is not applied. The examples' namespaces are replaced by
//! the test's own.

use audit_tests::docs;
use audit_tests::kube_env::ControlPlane;
use audit_tests::operator::install_crds;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};

const GROUP: &str = "audit.eventsaudit.io";
const KINDS: &[&str] = &["AuditStream", "AuditConsumer"];

#[tokio::test]
async fn every_yaml_example_of_an_audit_resource_is_accepted_by_the_api_server()
-> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    let client = control_plane.admin_client().await?;
    install_crds(&client).await?;
    let namespace = control_plane.create_namespace("docs-examples").await?;

    let mut checked = Vec::new();
    let mut rejected = Vec::new();
    for page in docs::pages()? {
        for example in &page.yaml_examples {
            let place = format!("{}:{}", page.path.display(), example.line);
            for document in serde_yaml::Deserializer::from_str(&example.yaml) {
                let value = match <serde_yaml::Value as serde::Deserialize>::deserialize(document) {
                    Ok(value) => value,
                    Err(error) => {
                        rejected.push(format!("{place}: not YAML: {error}"));
                        continue;
                    }
                };
                let kind = value["kind"].as_str().unwrap_or_default().to_string();
                let api_version = value["apiVersion"].as_str().unwrap_or_default();
                let Some(version) = api_version.strip_prefix(&format!("{GROUP}/")) else {
                    continue;
                };
                if !KINDS.contains(&kind.as_str()) {
                    continue;
                }
                let mut object: DynamicObject = serde_yaml::from_value(value.clone())?;
                object.metadata.namespace = Some(namespace.clone());
                let name = object.metadata.name.clone().unwrap_or_default();
                let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(GROUP, version, &kind));
                let api: Api<DynamicObject> =
                    Api::namespaced_with(client.clone(), &namespace, &resource);
                let params = PatchParams::apply("docs-examples")
                    .dry_run()
                    .validation_strict();
                match api.patch(&name, &params, &Patch::Apply(&object)).await {
                    Ok(_) => checked.push(format!("{place}: {kind} {name}")),
                    Err(error) => rejected.push(format!("{place}: {kind} {name}: {error}")),
                }
            }
        }
    }
    assert!(
        rejected.is_empty(),
        "the API server rejects {} example(s) in the docs (mark a deliberately partial one \
         with `{}` on the line before its fence):\n{}",
        rejected.len(),
        docs::NOT_A_FULL_EXAMPLE,
        rejected.join("\n")
    );
    for kind in KINDS {
        assert!(
            checked.iter().any(|c| c.contains(&format!(": {kind} "))),
            "no {kind} example was found in the docs; checked: {checked:#?}"
        );
    }
    println!("accepted:\n{}", checked.join("\n"));
    Ok(())
}
