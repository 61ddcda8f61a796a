//! The API reference (`docs/reference/api.md`), generated from the CRDs committed in `crds/`:
//! the same OpenAPI schema the API server enforces and `kubectl explain` reads, so the
//! reference cannot say something the server does not. `make api-reference` writes it (the
//! `api-reference` binary), and a test fails when the committed page differs.
//!
//! Per CRD and version: the resource's names, scope and subresources, the `kubectl get`
//! columns, and one table row per field path (depth first, alphabetical, as `kubectl explain
//! --recursive` walks it) with its type, whether it is required, its default, its schema
//! constraints (enum, bounds, pattern, list and map types) and CEL rules, and its description.
//! Each row carries an HTML anchor, `<kind>-<version>-<path>` in lowercase, so the guides can
//! link to one field.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, CustomResourceDefinitionVersion, JSONSchemaProps,
    JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};

use crate::testenv::workspace_root;

/// Where the reference is committed, relative to the workspace root.
pub const PATH: &str = "docs/reference/api.md";
/// The command that regenerates it.
pub const COMMAND: &str = "make api-reference";

/// The reference as generated from the CRDs in `crds/` now.
pub fn generate() -> anyhow::Result<String> {
    render(&committed_crds()?)
}

/// Writes the reference to [`PATH`].
pub fn write() -> anyhow::Result<()> {
    let path = workspace_root().join(PATH);
    std::fs::create_dir_all(path.parent().expect("the reference lives in a directory"))?;
    std::fs::write(&path, generate()?).with_context(|| format!("writing {}", path.display()))
}

/// The committed reference.
pub fn committed() -> anyhow::Result<String> {
    let path = workspace_root().join(PATH);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// Every CRD in `crds/`, sorted by kind.
fn committed_crds() -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let dir = workspace_root().join("crds");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    paths.retain(|path| is_crd_file(path));
    let mut crds = paths
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path)?;
            serde_yaml::from_str::<CustomResourceDefinition>(&text)
                .with_context(|| format!("{} is no CRD", path.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    crds.sort_by(|a, b| a.spec.names.kind.cmp(&b.spec.names.kind));
    Ok(crds)
}

/// `crds/` holds the CRDs and the Kustomization that lists them.
fn is_crd_file(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "yaml")
        && path.file_name().is_some_and(|f| f != "kustomization.yaml")
}

/// The reference of `crds`.
pub fn render(crds: &[CustomResourceDefinition]) -> anyhow::Result<String> {
    let mut page = String::new();
    page.push_str(
        "# API reference\n\n\
         <!-- Generated from the CRDs in crds/ by `make api-reference` (tests/src/api_reference.rs). \
         Do not edit: change the Rust types in operator/src/crd/, run `make crds`, then `make api-reference`. -->\n\n\
         Every field of audit-operator's custom resources, generated from the CRDs in\n\
         [`crds/`](../../crds/): the schema the API server enforces and `kubectl explain` reads.\n\
         The guides say what the resources do and how to use them:\n\
         [AuditStream](../auditstream.md), [AuditConsumer](../auditconsumer.md).\n\n\
         A field's path is written as `kubectl explain` takes it; `[]` stands for every item of a\n\
         list. *Required* fields must be set when their parent object is. A default is what the\n\
         API server fills in when the field is omitted. CEL rules are checked by the API server on\n\
         every create and update; `oldSelf` is the stored value, so rules that use it apply to\n\
         updates only.\n\n",
    );
    for crd in crds {
        for version in &crd.spec.versions {
            let _ = writeln!(
                page,
                "- [{} {}](#{})",
                crd.spec.names.kind,
                version.name,
                heading_slug(crd, version)
            );
        }
    }
    page.push('\n');
    for crd in crds {
        for version in &crd.spec.versions {
            render_version(&mut page, crd, version)?;
        }
    }
    Ok(page)
}

fn heading_slug(
    crd: &CustomResourceDefinition,
    version: &CustomResourceDefinitionVersion,
) -> String {
    format!("{}-{}", crd.spec.names.kind, version.name).to_lowercase()
}

fn render_version(
    page: &mut String,
    crd: &CustomResourceDefinition,
    version: &CustomResourceDefinitionVersion,
) -> anyhow::Result<()> {
    let names = &crd.spec.names;
    let _ = writeln!(page, "## {} {}\n", names.kind, version.name);
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .with_context(|| format!("{} {} has no schema", names.kind, version.name))?;
    if let Some(description) = &schema.description {
        let _ = writeln!(page, "{}\n", description.trim());
    }
    page.push_str("| | |\n|---|---|\n");
    let _ = writeln!(
        page,
        "| apiVersion | `{}/{}` |",
        crd.spec.group, version.name
    );
    let _ = writeln!(page, "| kind | `{}` |", names.kind);
    let _ = writeln!(page, "| scope | {} |", crd.spec.scope);
    let _ = writeln!(
        page,
        "| plural, singular | `{}`, `{}` |",
        names.plural,
        names.singular.as_deref().unwrap_or_default()
    );
    let listed = |values: &Option<Vec<String>>| {
        values
            .iter()
            .flatten()
            .map(|v| format!("`{v}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(page, "| short names | {} |", listed(&names.short_names));
    let _ = writeln!(page, "| categories | {} |", listed(&names.categories));
    let _ = writeln!(
        page,
        "| served, storage | {}, {} |",
        yes_no(version.served),
        yes_no(version.storage)
    );
    if let Some(deprecation) = version.deprecation_warning.as_deref() {
        let _ = writeln!(page, "| deprecated | {} |", cell(deprecation));
    }
    let mut subresources = Vec::new();
    if let Some(sub) = &version.subresources {
        if sub.status.is_some() {
            subresources.push("`status`".to_string());
        }
        if let Some(scale) = &sub.scale {
            let mut paths = format!(
                "`scale` (replicas `{}`, status `{}`",
                scale.spec_replicas_path, scale.status_replicas_path
            );
            if let Some(selector) = &scale.label_selector_path {
                let _ = write!(paths, ", selector `{selector}`");
            }
            paths.push(')');
            subresources.push(paths);
        }
    }
    let _ = writeln!(page, "| subresources | {} |\n", subresources.join(", "));

    let columns = version.additional_printer_columns.iter().flatten();
    if version.additional_printer_columns.is_some() {
        page.push_str(
            "Columns of `kubectl get` (those of priority 1 with `-o wide` only):\n\n\
             | column | type | JSONPath | priority | description |\n|---|---|---|---|---|\n",
        );
        for column in columns {
            let _ = writeln!(
                page,
                "| {} | {} | {} | {} | {} |",
                column.name,
                column.type_,
                code(&column.json_path),
                column.priority.unwrap_or(0),
                cell(column.description.as_deref().unwrap_or_default())
            );
        }
        page.push('\n');
    }

    let rules = validations(schema);
    if !rules.is_empty() {
        let _ = writeln!(page, "Rules on the whole object: {}\n", rules.join("; "));
    }
    let _ = writeln!(page, "### {} {} fields\n", names.kind, version.name);
    page.push_str(
        "| field | type | required | default | validation | description |\n\
         |---|---|---|---|---|---|\n",
    );
    let anchor_prefix = heading_slug(crd, version);
    let mut anchors = std::collections::BTreeSet::new();
    let mut rows = Vec::new();
    fields(schema, "", &mut rows);
    for row in rows {
        let anchor = format!("{anchor_prefix}-{}", row.path.to_lowercase());
        anyhow::ensure!(
            anchors.insert(anchor.clone()),
            "two fields of {} {} have the anchor {anchor}",
            names.kind,
            version.name
        );
        let _ = writeln!(
            page,
            "| <a id=\"{anchor}\"></a>{} | {} | {} | {} | {} | {} |",
            code(&row.path),
            row.type_name,
            if row.required { "yes" } else { "" },
            row.default,
            row.validation.join("<br>"),
            cell(&row.description)
        );
    }
    page.push('\n');
    Ok(())
}

fn yes_no(value: bool) -> &'static str {
    if value { "yes" } else { "no" }
}

/// One field path of a schema.
struct Row {
    path: String,
    type_name: String,
    required: bool,
    default: String,
    validation: Vec<String>,
    description: String,
}

/// The rows of every field below `schema` (an object), depth first.
fn fields(schema: &JSONSchemaProps, prefix: &str, rows: &mut Vec<Row>) {
    let required = schema.required.as_deref().unwrap_or_default();
    for (name, field) in schema.properties.iter().flatten() {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        rows.push(Row {
            path: path.clone(),
            type_name: type_name(field),
            required: required.contains(name),
            default: field
                .default
                .as_ref()
                .map(|d| json_code(&d.0))
                .unwrap_or_default(),
            validation: constraints(field),
            description: field.description.clone().unwrap_or_default(),
        });
        descend(field, &path, rows);
    }
}

/// The fields inside `field`: its properties, its items' or its map values' properties.
fn descend(field: &JSONSchemaProps, path: &str, rows: &mut Vec<Row>) {
    if field.properties.is_some() {
        fields(field, path, rows);
    }
    if let Some(items) = single_items(field) {
        descend(items, &format!("{path}[]"), rows);
    }
    if let Some(values) = map_values(field) {
        descend(values, &format!("{path}.<key>"), rows);
    }
}

fn single_items(field: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    match &field.items {
        Some(JSONSchemaPropsOrArray::Schema(items)) => Some(items),
        _ => None,
    }
}

fn map_values(field: &JSONSchemaProps) -> Option<&JSONSchemaProps> {
    match &field.additional_properties {
        Some(JSONSchemaPropsOrBool::Schema(values)) => Some(values),
        _ => None,
    }
}

/// The type as Kubernetes' reference docs write it: `[]string`, `map[string]string`, ...
fn type_name(field: &JSONSchemaProps) -> String {
    if field.x_kubernetes_int_or_string == Some(true) {
        return "int-or-string".into();
    }
    if let Some(items) = single_items(field) {
        return format!("[]{}", type_name(items));
    }
    if let Some(values) = map_values(field) {
        return format!("map[string]{}", type_name(values));
    }
    let base = field.type_.as_deref().unwrap_or("any");
    match &field.format {
        Some(format) => format!("{base} ({format})"),
        None => base.to_string(),
    }
}

/// The schema's constraints on `field` and, for a list of scalars, on each item.
fn constraints(field: &JSONSchemaProps) -> Vec<String> {
    let mut found = scalar_constraints(field);
    if let Some(list_type) = &field.x_kubernetes_list_type {
        let mut text = format!("list type {}", code(list_type));
        if let Some(keys) = &field.x_kubernetes_list_map_keys {
            let keys: Vec<String> = keys.iter().map(|k| code(k)).collect();
            let _ = write!(text, " keyed by {}", keys.join(", "));
        }
        found.push(text);
    }
    if let Some(map_type) = &field.x_kubernetes_map_type {
        found.push(format!("map type {}", code(map_type)));
    }
    if field.x_kubernetes_preserve_unknown_fields == Some(true) {
        found.push("unknown fields kept".into());
    }
    if let Some(items) = single_items(field).or_else(|| map_values(field)) {
        let each = scalar_constraints(items);
        if !each.is_empty() {
            found.push(format!("each: {}", each.join(", ")));
        }
        found.extend(validations(items).into_iter().map(|v| format!("each: {v}")));
    }
    found.extend(validations(field));
    found
}

fn scalar_constraints(field: &JSONSchemaProps) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(values) = &field.enum_ {
        let values: Vec<String> = values.iter().map(|v| json_code(&v.0)).collect();
        found.push(format!("one of {}", values.join(", ")));
    }
    let bound = |name: &str, value: Option<String>, found: &mut Vec<String>| {
        if let Some(value) = value {
            found.push(format!("{name} {value}"));
        }
    };
    let number = |v: f64| {
        if v.fract() == 0.0 && v.abs() < 1e15 {
            format!("{}", v as i64)
        } else {
            v.to_string()
        }
    };
    let exclusive = |flag: Option<bool>| {
        if flag == Some(true) {
            " (exclusive)"
        } else {
            ""
        }
    };
    bound(
        "minimum",
        field
            .minimum
            .map(|v| format!("{}{}", number(v), exclusive(field.exclusive_minimum))),
        &mut found,
    );
    bound(
        "maximum",
        field
            .maximum
            .map(|v| format!("{}{}", number(v), exclusive(field.exclusive_maximum))),
        &mut found,
    );
    bound(
        "minLength",
        field.min_length.map(|v| v.to_string()),
        &mut found,
    );
    bound(
        "maxLength",
        field.max_length.map(|v| v.to_string()),
        &mut found,
    );
    bound(
        "minItems",
        field.min_items.map(|v| v.to_string()),
        &mut found,
    );
    bound(
        "maxItems",
        field.max_items.map(|v| v.to_string()),
        &mut found,
    );
    bound(
        "minProperties",
        field.min_properties.map(|v| v.to_string()),
        &mut found,
    );
    bound(
        "maxProperties",
        field.max_properties.map(|v| v.to_string()),
        &mut found,
    );
    if let Some(pattern) = &field.pattern {
        found.push(format!("pattern {}", code(pattern)));
    }
    if field.unique_items == Some(true) {
        found.push("items unique".into());
    }
    found
}

/// The CEL rules on `schema`: the message the API server answers with, then the rule.
fn validations(schema: &JSONSchemaProps) -> Vec<String> {
    schema
        .x_kubernetes_validations
        .iter()
        .flatten()
        .map(|rule| {
            let mut text = String::from("CEL: ");
            match (&rule.message, &rule.message_expression) {
                (Some(message), _) => text.push_str(&cell(message)),
                (None, Some(expression)) => {
                    let _ = write!(text, "message from {}", code(expression));
                }
                (None, None) => text.push_str("(no message)"),
            }
            let _ = write!(text, " (rule {}", code(&rule.rule));
            if let Some(field_path) = &rule.field_path {
                let _ = write!(text, ", on {}", code(field_path));
            }
            if let Some(reason) = &rule.reason {
                let _ = write!(text, ", reason `{reason}`");
            }
            text.push(')');
            text
        })
        .collect()
}

/// A JSON value as inline code: strings bare, everything else as compact JSON.
fn json_code(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => code(s),
        other => code(&other.to_string()),
    }
}

/// `text` as an inline code span that is safe in a table cell: pipes escaped (GitHub and
/// CommonMark's table extension unescape them inside code too), and a longer fence when the
/// text holds a backtick.
fn code(text: &str) -> String {
    let text = text.replace('|', "\\|");
    if text.contains('`') {
        format!("`` {text} ``")
    } else {
        format!("`{text}`")
    }
}

/// Prose as one table cell: lines of a paragraph joined, paragraphs separated by `<br><br>`,
/// pipes escaped, and `<` outside code spans escaped, so that a `<name>` in a description is
/// shown rather than taken for HTML.
fn cell(text: &str) -> String {
    text.trim()
        .split("\n\n")
        .map(|p| escape(&p.split_whitespace().collect::<Vec<_>>().join(" ")))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("<br><br>")
}

fn escape(prose: &str) -> String {
    let mut out = String::with_capacity(prose.len());
    let mut in_code = false;
    for c in prose.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                out.push(c);
            }
            '|' => out.push_str("\\|"),
            '<' if !in_code => out.push_str("&lt;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.test}
spec:
  group: example.test
  names: {kind: Widget, plural: widgets, singular: widget, shortNames: [wd]}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            x-kubernetes-validations:
            - {message: "size is immutable", rule: "self.size == oldSelf.size || self.size > 1"}
            properties:
              size: {type: integer, format: int32, minimum: 1.0, description: "How big.\n\nA <b> tag stays text, `a|b` too."}
              mode: {type: string, default: Fast, enum: [Fast, Slow]}
              labels: {type: object, additionalProperties: {type: string}}
              items:
                type: array
                items: {type: object, required: [name], properties: {name: {type: string, maxLength: 8}}}
"#;

    fn rows() -> Vec<String> {
        let crd: CustomResourceDefinition = serde_yaml::from_str(CRD).unwrap();
        render(&[crd])
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("| <a id="))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn every_field_path_gets_a_row_with_its_anchor_depth_first() {
        let ids: Vec<String> = rows()
            .iter()
            .map(|row| row.split('"').nth(1).unwrap().to_owned())
            .collect();
        assert_eq!(
            ids,
            [
                "widget-v1-spec",
                "widget-v1-spec.items",
                "widget-v1-spec.items[].name",
                "widget-v1-spec.labels",
                "widget-v1-spec.mode",
                "widget-v1-spec.size",
            ]
        );
    }

    #[test]
    fn a_row_holds_type_required_default_constraints_and_rules() {
        let rows = rows();
        let row = |path: &str| {
            rows.iter()
                .find(|r| r.contains(&format!("`{path}`")))
                .unwrap()
                .clone()
        };
        assert!(row("spec").contains(
            "CEL: size is immutable (rule `self.size == oldSelf.size \\|\\| self.size > 1`)"
        ));
        assert!(row("spec.items").contains("| []object |"));
        assert!(row("spec.items[].name").contains("| string | yes |  | maxLength 8 |"));
        assert!(row("spec.labels").contains("| map[string]string |"));
        assert!(row("spec.mode").contains("| string |  | `Fast` | one of `Fast`, `Slow` |"));
        assert!(
            row("spec.size").contains(
                "| integer (int32) | yes |  | minimum 1 | How big.<br><br>A &lt;b> tag stays text, `a\\|b` too. |"
            ),
            "{}",
            row("spec.size")
        );
    }
}
