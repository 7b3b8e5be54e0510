//! Renders `docs/crds.md` from the generated openAPIV3 schemas, so the reference never drifts from
//! what the API server enforces.

use std::fmt::Write;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::Value;

const INTRO: &str = include_str!("docs_intro.md");

/// Kubernetes types embedded in our specs: shown by name with a link, not expanded.
const EMBEDDED: [(&str, &str); 3] = [
    (
        "resources",
        "[ResourceRequirements](https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#resources)",
    ),
    (
        "tolerations",
        "[][Toleration](https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/#scheduling)",
    ),
    (
        "conditions",
        "[][Condition](https://kubernetes.io/docs/reference/kubernetes-api/common-definitions/object-meta/#Condition)",
    ),
];

/// The whole reference page.
pub fn markdown(crds: &[CustomResourceDefinition]) -> String {
    let mut out = String::new();
    out.push_str(INTRO.trim_end());
    out.push('\n');
    for crd in crds {
        render_crd(crd, &mut out);
    }
    out
}

fn render_crd(crd: &CustomResourceDefinition, out: &mut String) {
    let names = &crd.spec.names;
    let version = &crd.spec.versions[0];
    let schema = version
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .map(|s| serde_json::to_value(s).unwrap_or_default())
        .unwrap_or_default();
    let _ = writeln!(out, "\n## {}\n", names.kind);
    let short = names
        .short_names
        .as_ref()
        .filter(|s| !s.is_empty())
        .map(|s| format!(", short name `{}`", s.join("`, `")))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "`{}/{}`, {} (`kubectl get {}`{short}).\n",
        crd.spec.group,
        version.name,
        if crd.spec.scope == "Namespaced" {
            "namespaced"
        } else {
            "cluster-scoped"
        },
        names.plural,
    );
    if let Some(d) = schema.get("description").and_then(Value::as_str) {
        let _ = writeln!(out, "{d}");
    }
    for part in ["spec", "status"] {
        let Some(s) = schema.pointer(&format!("/properties/{part}")) else {
            continue;
        };
        let _ = writeln!(out, "\n### {}.{part}\n", names.kind);
        for rule in rules(s) {
            let _ = writeln!(out, "Rule on `{part}`: {rule}\n");
        }
        out.push_str("| Field | Type | Default | Validation | Description |\n");
        out.push_str("|---|---|---|---|---|\n");
        let mut rows = Vec::new();
        fields(s, part, &mut rows);
        for r in rows {
            out.push_str(&r);
        }
    }
}

/// One table row per field, depth first, in the schema's (sorted) property order.
fn fields(schema: &Value, path: &str, rows: &mut Vec<String>) {
    let Some(props) = schema.get("properties").and_then(Value::as_object) else {
        return;
    };
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for (name, field) in props {
        let p = format!("{path}.{name}");
        let embedded = EMBEDDED.iter().find(|(n, _)| n == name).map(|(_, t)| *t);
        let ty = embedded.map_or_else(|| type_name(field), str::to_string);
        let mut validation = constraints(field);
        if required.contains(&name.as_str()) {
            validation.insert(0, "required".to_string());
        }
        validation.extend(rules(field));
        if let Some(items) = field.get("items") {
            validation.extend(constraints(items).into_iter().map(|c| format!("each: {c}")));
            validation.extend(rules(items).into_iter().map(|c| format!("each: {c}")));
        }
        let default = match field.get("default") {
            Some(Value::Object(_)) => "(its fields' defaults)".to_string(),
            Some(d) => format!("`{d}`"),
            None => String::new(),
        };
        let desc = field
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .replace('\n', " ");
        rows.push(format!(
            "| `{}` | {} | {} | {} | {} |\n",
            p.split_once('.').map_or(p.as_str(), |(_, rest)| rest),
            cell(&ty),
            cell(&default),
            cell(&validation.join("; ")),
            cell(&desc),
        ));
        if embedded.is_none() {
            fields(field, &p, rows);
            if let Some(items) = field.get("items") {
                fields(items, &format!("{p}[]"), rows);
            }
        }
    }
}

fn type_name(s: &Value) -> String {
    let ty = s.get("type").and_then(Value::as_str).unwrap_or("any");
    match ty {
        "array" => format!("[]{}", s.get("items").map_or("any".into(), type_name)),
        "object" if s.get("properties").is_none() => match s.get("additionalProperties") {
            Some(v) if v.is_object() => format!("map[string]{}", type_name(v)),
            _ => "object".to_string(),
        },
        "integer" | "number" => match s.get("format").and_then(Value::as_str) {
            Some(f) => format!("{ty} ({f})"),
            None => ty.to_string(),
        },
        _ => ty.to_string(),
    }
}

fn constraints(s: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        let vals: Vec<String> = e
            .iter()
            .filter(|v| !v.is_null())
            .map(|v| format!("`{}`", v.as_str().map_or(v.to_string(), str::to_string)))
            .collect();
        out.push(format!("one of {}", vals.join(", ")));
    }
    // schemars writes integer bounds as floats (`10.0`); show them as written by a user.
    let num = |k: &str| {
        s.get(k).and_then(Value::as_f64).map(|v| {
            if v.fract() == 0.0 {
                format!("{}", v as i64)
            } else {
                v.to_string()
            }
        })
    };
    match (num("minimum"), num("maximum")) {
        (Some(lo), Some(hi)) => out.push(format!("{lo} to {hi}")),
        (Some(lo), None) => out.push(format!("at least {lo}")),
        (None, Some(hi)) => out.push(format!("at most {hi}")),
        (None, None) => {}
    }
    for (k, what) in [
        ("minLength", "length at least"),
        ("maxLength", "length at most"),
        ("minItems", "items at least"),
        ("maxItems", "items at most"),
        ("minProperties", "entries at least"),
    ] {
        if let Some(v) = num(k) {
            out.push(format!("{what} {v}"));
        }
    }
    if let Some(p) = s.get("pattern").and_then(Value::as_str) {
        out.push(format!("matches `{p}`"));
    }
    out
}

/// CEL rules (`x-kubernetes-validations`) as "`rule`: message".
fn rules(s: &Value) -> Vec<String> {
    s.get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    let rule = r.get("rule").and_then(Value::as_str).unwrap_or_default();
                    match r.get("message").and_then(Value::as_str) {
                        Some(m) => format!("{m} (CEL `{rule}`)"),
                        None => format!("CEL `{rule}`"),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Escapes what would break a Markdown table cell.
fn cell(s: &str) -> String {
    s.replace('|', "\\|")
}
