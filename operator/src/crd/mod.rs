//! The API: custom resource types and the CRD manifests generated from them.

pub mod connection;
pub mod consumer;
pub mod stream;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResourceExt, api::ObjectMeta};

pub use connection::NatsConnection;
pub use consumer::{AuditConsumer, AuditConsumerSpec, AuditConsumerStatus};
pub use stream::{AuditStream, AuditStreamSpec, AuditStreamStatus};

/// API group of every kind the operator serves.
pub const GROUP: &str = "audit.eventsaudit.io";

/// The name on NATS of what a resource declares (a stream, a durable consumer): the one its
/// spec gives, or the resource's name with `.` (which NATS names may not hold) as `_`.
/// Kubernetes keeps the resource's name unique per namespace and immutable, and so is this.
pub fn nats_name(given: Option<&str>, metadata: &ObjectMeta) -> String {
    match given {
        Some(name) => name.to_owned(),
        None => metadata
            .name
            .as_deref()
            .unwrap_or_default()
            .replace('.', "_"),
    }
}

/// Every CRD the operator serves, in a stable order.
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![AuditStream::crd(), AuditConsumer::crd()]
        .into_iter()
        .map(with_kubernetes_formats)
        .collect()
}

/// schemars describes Rust's unsigned integers as `format: uint64` (with `minimum: 0`), a
/// format Kubernetes does not know: every `kubectl apply` of a resource would warn about it.
/// `int64` with the minimum kept says the same in the formats Kubernetes validates.
fn with_kubernetes_formats(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn rewrite(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(format) = map.get_mut("format")
                    && matches!(
                        format.as_str(),
                        Some("uint64" | "uint32" | "uint16" | "uint8" | "uint")
                    )
                {
                    *format = serde_json::Value::from("int64");
                }
                map.values_mut().for_each(rewrite);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(rewrite),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes to JSON");
    rewrite(&mut value);
    serde_json::from_value(value).expect("rewriting formats keeps a valid CRD")
}

/// Each CRD as a YAML document with the file name it is committed under in `crds/`.
pub fn files() -> Result<Vec<(String, String)>, serde_yaml::Error> {
    all()
        .into_iter()
        .map(|crd| {
            let name = format!("{}.yaml", crd.metadata.name.as_deref().unwrap_or_default());
            Ok((name, serde_yaml::to_string(&crd)?))
        })
        .collect()
}

/// Every CRD as one multi-document YAML stream, for `kubectl apply -f -`.
pub fn to_yaml() -> Result<String, serde_yaml::Error> {
    Ok(files()?
        .into_iter()
        .map(|(_, yaml)| format!("---\n{yaml}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const KUSTOMIZATION: &str = "kustomization.yaml";

    fn committed_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds")
    }

    /// Helm installs a chart's `crds/` before its templates; the chart carries a copy.
    fn chart_dir() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/audit-operator/crds")
    }

    fn assert_dir_matches_the_generator(dir: &Path) {
        let regenerate = "regenerate with `make crds`";
        let generated = files().unwrap();
        for (file, yaml) in &generated {
            let committed = std::fs::read_to_string(dir.join(file))
                .unwrap_or_else(|e| panic!("{}/{file}: {e}; {regenerate}", dir.display()));
            assert!(
                committed == *yaml,
                "{}/{file} differs from the generator; {regenerate}",
                dir.display()
            );
        }
        // Besides the CRDs, crds/ holds only the Kustomization that lists them.
        let mut committed_crds: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|file| file != KUSTOMIZATION)
            .collect();
        committed_crds.sort();
        let mut generated_files: Vec<String> = generated.into_iter().map(|(f, _)| f).collect();
        generated_files.sort();
        assert_eq!(
            committed_crds,
            generated_files,
            "stale files in {}; {regenerate}",
            dir.display()
        );
    }

    #[test]
    fn committed_crds_match_the_generator() {
        assert_dir_matches_the_generator(&committed_dir());
    }

    #[test]
    fn chart_crds_match_the_generator() {
        assert_dir_matches_the_generator(&chart_dir());
    }

    #[test]
    fn kustomization_lists_every_crd() {
        let text = std::fs::read_to_string(committed_dir().join(KUSTOMIZATION)).unwrap();
        let kustomization: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
        let mut listed: Vec<&str> = kustomization["resources"]
            .as_sequence()
            .unwrap()
            .iter()
            .filter_map(|r| r.as_str())
            .collect();
        listed.sort();
        let generated = files().unwrap();
        let mut expected: Vec<&str> = generated.iter().map(|(f, _)| f.as_str()).collect();
        expected.sort();
        assert_eq!(listed, expected, "crds/{KUSTOMIZATION} must list every CRD");
    }

    #[test]
    fn manifests_use_only_formats_kubernetes_knows() {
        let yaml = to_yaml().unwrap();
        assert!(
            !yaml.contains("format: uint"),
            "schemars' unsigned formats make kubectl warn"
        );
        assert!(yaml.contains("format: int64"));
    }

    /// Every CEL rule's `rule` text in the generated manifests.
    fn cel_rules(value: &serde_yaml::Value, rules: &mut Vec<String>) {
        match value {
            serde_yaml::Value::Mapping(map) => {
                for (key, value) in map {
                    if key.as_str() == Some("x-kubernetes-validations") {
                        for rule in value.as_sequence().into_iter().flatten() {
                            rules.extend(rule["rule"].as_str().map(str::to_owned));
                        }
                    } else {
                        cel_rules(value, rules);
                    }
                }
            }
            serde_yaml::Value::Sequence(items) => {
                items.iter().for_each(|item| cel_rules(item, rules));
            }
            _ => {}
        }
    }

    #[test]
    fn duration_rules_leave_malformed_values_to_the_pattern() {
        let mut rules = Vec::new();
        for document in serde_yaml::Deserializer::from_str(&to_yaml().unwrap()) {
            let value: serde_yaml::Value = serde::Deserialize::deserialize(document).unwrap();
            cel_rules(&value, &mut rules);
        }
        let duration_rules: Vec<&String> = rules
            .iter()
            .filter(|rule| rule.contains("duration(self"))
            .collect();
        assert!(duration_rules.len() >= 3, "{rules:?}");
        let guard = format!("matches('{}')", crate::duration::PATTERN);
        for rule in duration_rules {
            // Each field converted by duration() is first checked against the pattern.
            let fields: std::collections::BTreeSet<&str> = rule
                .split("duration(")
                .skip(1)
                .filter_map(|rest| rest.split(')').next())
                .filter(|argument| argument.starts_with("self"))
                .collect();
            for field in fields {
                assert!(
                    rule.contains(&format!("!{field}.{guard} ||")),
                    "{field} is converted without the guard in: {rule}"
                );
            }
        }
    }

    #[test]
    fn manifests_hold_nothing_the_server_would_strip() {
        let yaml = to_yaml().unwrap();
        for needle in [": null", ": []"] {
            assert!(!yaml.contains(needle), "CRD YAML contains {needle:?}");
        }
    }
}
