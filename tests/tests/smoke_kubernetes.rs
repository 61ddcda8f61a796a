//! Proves the Kubernetes part of the test environment is real: each test would fail against a
//! mocked API server, because it relies on schema validation, the controller manager, Pod
//! Security admission or RBAC doing their work.

use std::time::Duration;

use audit_tests::kube_env::ControlPlane;
use audit_tests::wait;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("test fixtures are valid objects")
}

fn status_code(error: &kube::Error) -> Option<u16> {
    match error {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

#[tokio::test]
async fn crd_becomes_established_and_its_schema_is_enforced() -> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    let client = control_plane.admin_client().await?;
    let namespace = control_plane.create_namespace("smoke-crd").await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd: CustomResourceDefinition = from_json(serde_json::json!({
        "metadata": { "name": "widgets.smoke.audit.test" },
        "spec": {
            "group": "smoke.audit.test",
            "names": { "kind": "Widget", "plural": "widgets", "singular": "widget" },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1", "served": true, "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "properties": { "spec": {
                        "type": "object",
                        "required": ["size"],
                        "properties": { "size": { "type": "integer", "minimum": 1 } }
                    }}
                }}
            }]
        }
    }));
    crds.create(&PostParams::default(), &crd).await?;
    wait::until(
        "the Widget CRD to become Established",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let crd = crds.get("widgets.smoke.audit.test").await?;
            let established = crd
                .status
                .and_then(|status| status.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            Ok(established.then_some(()))
        },
    )
    .await?;

    let resource =
        ApiResource::from_gvk(&GroupVersionKind::gvk("smoke.audit.test", "v1", "Widget"));
    let widgets: Api<DynamicObject> = Api::namespaced_with(client, &namespace, &resource);
    let widget = |name: &str, size: i64| -> DynamicObject {
        from_json(serde_json::json!({
            "apiVersion": "smoke.audit.test/v1", "kind": "Widget",
            "metadata": { "name": name },
            "spec": { "size": size }
        }))
    };
    // The discovery cache behind a fresh CRD can lag its Established condition briefly.
    wait::until(
        "a valid Widget to be accepted",
        Duration::from_secs(30),
        Duration::from_millis(200),
        || async {
            Ok(Some(
                widgets
                    .create(&PostParams::default(), &widget("good", 3))
                    .await?,
            ))
        },
    )
    .await?;
    let rejected = widgets
        .create(&PostParams::default(), &widget("bad", 0))
        .await
        .expect_err("size 0 violates minimum 1");
    assert_eq!(status_code(&rejected), Some(422), "{rejected}");
    assert!(rejected.to_string().contains("spec.size"), "{rejected}");
    Ok(())
}

#[tokio::test]
async fn deployment_gets_a_replicaset_which_is_garbage_collected() -> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    let client = control_plane.admin_client().await?;
    let namespace = control_plane.create_namespace("smoke-gc").await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let replica_sets: Api<ReplicaSet> = Api::namespaced(client, &namespace);
    let deployment: Deployment = from_json(serde_json::json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "registry.invalid/web:1" }] }
            }
        }
    }));
    let created = deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let owner_uid = created.metadata.uid.clone().expect("the server sets a uid");

    wait::until(
        "the deployment controller to create a ReplicaSet owned by the Deployment",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            let owned = replica_sets
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .any(|rs| {
                    rs.metadata
                        .owner_references
                        .unwrap_or_default()
                        .iter()
                        .any(|owner| owner.uid == owner_uid)
                });
            Ok(owned.then_some(()))
        },
    )
    .await?;

    deployments
        .delete("web", &DeleteParams::background())
        .await?;
    wait::until(
        "the garbage collector to delete the ReplicaSet",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || async {
            Ok(replica_sets
                .list(&ListParams::default())
                .await?
                .items
                .is_empty()
                .then_some(()))
        },
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn restricted_pod_security_rejects_a_privileged_pod_on_dry_run() -> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    let client = control_plane.admin_client().await?;
    let namespace = control_plane
        .create_namespace_labelled(
            "smoke-psa",
            &[("pod-security.kubernetes.io/enforce", "restricted")],
        )
        .await?;
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let dry_run = PostParams {
        dry_run: true,
        ..Default::default()
    };

    let privileged: Pod = from_json(serde_json::json!({
        "metadata": { "name": "privileged" },
        "spec": { "containers": [{
            "name": "c", "image": "registry.invalid/c:1",
            "securityContext": { "privileged": true }
        }]}
    }));
    let rejected = pods
        .create(&dry_run, &privileged)
        .await
        .expect_err("a privileged pod violates the restricted profile");
    assert_eq!(status_code(&rejected), Some(403), "{rejected}");
    assert!(rejected.to_string().contains("PodSecurity"), "{rejected}");

    let compliant: Pod = from_json(serde_json::json!({
        "metadata": { "name": "compliant" },
        "spec": {
            "securityContext": { "runAsNonRoot": true, "runAsUser": 1001, "seccompProfile": { "type": "RuntimeDefault" } },
            "containers": [{
                "name": "c", "image": "registry.invalid/c:1",
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": { "drop": ["ALL"] }
                }
            }]
        }
    }));
    pods.create(&dry_run, &compliant).await?;
    assert!(
        pods.get_opt("compliant").await?.is_none(),
        "a dry run persists nothing"
    );
    Ok(())
}

#[tokio::test]
async fn ordinary_user_reads_secrets_only_once_rbac_allows_it() -> anyhow::Result<()> {
    let control_plane = ControlPlane::shared();
    let admin = control_plane.admin_client().await?;
    let namespace = control_plane.create_namespace("smoke-rbac").await?;
    let as_user: Api<Secret> = Api::namespaced(
        control_plane.client_as("smoke-user", &[]).await?,
        &namespace,
    );

    let forbidden = as_user
        .list(&ListParams::default())
        .await
        .expect_err("a user without a Role may not list Secrets");
    assert_eq!(status_code(&forbidden), Some(403), "{forbidden}");

    let role: Role = from_json(serde_json::json!({
        "metadata": { "name": "secret-reader" },
        "rules": [{ "apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "list"] }]
    }));
    let binding: RoleBinding = from_json(serde_json::json!({
        "metadata": { "name": "smoke-user-reads-secrets" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "secret-reader" },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "smoke-user" }]
    }));
    Api::<Role>::namespaced(admin.clone(), &namespace)
        .create(&PostParams::default(), &role)
        .await?;
    Api::<RoleBinding>::namespaced(admin, &namespace)
        .create(&PostParams::default(), &binding)
        .await?;

    // The authorizer's informers see the new binding within moments.
    wait::until(
        "the RoleBinding to take effect",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async { Ok(Some(as_user.list(&ListParams::default()).await?)) },
    )
    .await?;
    Ok(())
}
