//! The API reference (`docs/api-reference.md`), generated from the CRDs the Rust types make:
//! one table row per field with its type, limits, default and doc comment, then the CEL rules
//! and printer columns. `cargo run --bin crdgen -- --markdown > docs/api-reference.md`
//! writes it; a unit test fails while the committed file is stale.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use serde_json::Value;

use super::{JobRetry, policy::JobRetryPolicy};

/// The whole reference page as Markdown: each kind's section.
pub fn markdown() -> String {
    let mut out = String::from(
        "# API reference\n\n\
         <!-- Generated from the CRDs by `cargo run --bin crdgen -- --markdown > docs/api-reference.md`; do not edit by hand. -->\n",
    );
    for crd in [JobRetry::crd(), JobRetryPolicy::crd()] {
        out.push_str(&section(&crd));
    }
    out
}

/// One kind's section: names, spec and status fields with their rules, printer columns.
fn section(crd: &CustomResourceDefinition) -> String {
    let version = &crd.spec.versions[0];
    let root = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_default();
    let names = &crd.spec.names;
    let mut out = format!(
        "\n## {}\n\n`{}/{}`, kind `{}`, plural `{}`, short name `{}`, namespaced, category `{}`.\n\n{}\n",
        names.kind,
        crd.spec.group,
        version.name,
        names.kind,
        names.plural,
        names.short_names.clone().unwrap_or_default().join("`, `"),
        names.categories.clone().unwrap_or_default().join("`, `"),
        text(&root["description"]),
    );
    for part in ["spec", "status"] {
        let schema = &root["properties"][part];
        out.push_str(&format!(
            "\n### {part}\n\n{}\n\n",
            text(&schema["description"])
        ));
        out.push_str("| field | type | default | description |\n| --- | --- | --- | --- |\n");
        let mut rules = Vec::new();
        fields(part, schema, &mut out, &mut rules);
        if !rules.is_empty() {
            out.push_str("\nValidation rules (CEL), with the message `kubectl apply` shows:\n\n");
            out.push_str(&rules.join(""));
        }
    }
    out.push_str("\n### Printer columns\n\n| column | from | shown |\n| --- | --- | --- |\n");
    for c in version.additional_printer_columns.iter().flatten() {
        let shown = if c.priority.unwrap_or(0) > 0 {
            "with `-o wide`"
        } else {
            "always"
        };
        out.push_str(&format!("| {} | `{}` | {shown} |\n", c.name, c.json_path));
    }
    out
}

/// Appends a row for each property of `schema` (at `path`), depth first, and its rules.
fn fields(path: &str, schema: &Value, out: &mut String, rules: &mut Vec<String>) {
    for rule in schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
    {
        rules.push(format!("- `{path}`: {}\n", text(&rule["message"])));
    }
    let required: Vec<&str> = (schema["required"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    let Some(props) = schema["properties"].as_object() else {
        return;
    };
    for (name, prop) in props {
        let here = format!("{path}.{name}");
        let default = match &prop["default"] {
            Value::Null => String::new(),
            v => format!("`{v}`"),
        };
        out.push_str(&format!(
            "| `{here}` | {} | {default} | {} |\n",
            kind(prop, required.contains(&name.as_str())),
            cell(&text(&prop["description"])),
        ));
        // metav1.Condition is Kubernetes' own type: documented there, not expanded here.
        if prop["items"]["properties"]["lastTransitionTime"].is_object() {
            continue;
        }
        fields(&here, prop, out, rules);
        let items = &prop["items"];
        if items["properties"].is_object() {
            fields(&format!("{here}[]"), items, out, rules);
        }
    }
}

/// `string, required, 1–256 characters`: the type and the limits of one property.
fn kind(prop: &Value, required: bool) -> String {
    let mut parts = vec![match prop["type"].as_str().unwrap_or("any") {
        "array" if prop["items"]["properties"]["lastTransitionTime"].is_object() => {
            "list of metav1.Condition".to_string()
        }
        "array" => format!(
            "list of {}",
            prop["items"]["type"].as_str().unwrap_or("object")
        ),
        "object" if prop["additionalProperties"]["type"].is_string() => format!(
            "map of string to {}",
            text(&prop["additionalProperties"]["type"])
        ),
        "string" if prop["format"] == "date-time" => "time (RFC 3339)".to_string(),
        t => t.to_string(),
    }];
    if required {
        parts.push("required".into());
    }
    let num = |k: &str| prop[k].as_f64().map(|n| n as u64);
    let range = |lo: Option<u64>, hi: Option<u64>, unit: &str| match (lo, hi) {
        (Some(lo), Some(hi)) => Some(format!("{lo}–{hi}{unit}")),
        (None, Some(hi)) => Some(format!("at most {hi}{unit}")),
        (Some(lo), None) => Some(format!("at least {lo}{unit}")),
        (None, None) => None,
    };
    parts.extend(range(num("minLength"), num("maxLength"), " characters"));
    parts.extend(range(num("minItems"), num("maxItems"), " items"));
    parts.extend(range(num("minimum"), num("maximum"), ""));
    let each = &prop["items"];
    parts.extend(range(
        num_of(each, "minLength"),
        num_of(each, "maxLength"),
        " characters each",
    ));
    if let Some(values) = prop["enum"].as_array() {
        let v: Vec<String> = values.iter().map(|v| format!("`{}`", text(v))).collect();
        parts.push(format!("one of {}", v.join(", ")));
    }
    if let Some(p) = prop["pattern"].as_str() {
        parts.push(format!("matches `{}`", p.replace('|', "\\|")));
    }
    parts.join(", ")
}

/// Text safe in a table cell: `|` escaped, `<...>` shown as written rather than taken for HTML.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn num_of(v: &Value, k: &str) -> Option<u64> {
    v[k].as_f64().map(|n| n as u64)
}

/// A string value on one line.
fn text(v: &Value) -> String {
    v.as_str()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_reference_is_generated_from_the_crd() {
        let committed = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/api-reference.md"
        ))
        .unwrap_or_default();
        assert!(
            committed == markdown(),
            "docs/api-reference.md is stale: regenerate it with \
             `cargo run --bin crdgen -- --markdown > docs/api-reference.md`"
        );
    }

    #[test]
    fn every_field_has_a_row_with_its_limits_and_default() {
        let md = markdown();
        for row in [
            "| `spec.queue.name` | string, required, 1–256 characters |  | The BullMQ queue name; must not contain ':'. |",
            "| `spec.selector.maxJobs` | integer, 1–100000000 | `10000` |",
            "| `spec.jobIds` | list of string, 1–10000 items, 1–256 characters each |",
            "| `spec.state` | string, one of `failed`, `completed` | `\"failed\"` |",
            "| `status.counts` | map of string to integer |",
            "| `status.conditions` | list of metav1.Condition, at most 16 items |",
            "| `status.jobs[].result` | string, required |",
        ] {
            assert!(md.contains(row), "no {row:?} in:\n{md}");
        }
        assert!(
            md.contains("- `spec`: exactly one of spec.jobIds and spec.selector must be set\n")
        );
        assert!(md.contains("| SCANNED | `.status.selection.scanned` | with `-o wide` |"));
        assert!(
            !md.contains("status.conditions[].reason"),
            "metav1.Condition is not expanded"
        );
    }
}
