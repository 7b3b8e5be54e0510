//! `ambitctl get KIND [NAME]`: Ambit objects, pods, services and namespaces.

use kube::api::{DynamicObject, ListParams};
use serde_json::Value;

use crate::cluster::{self, KnownKind};
use crate::ctx::Ctx;
use crate::error::{from_kube, Result};
use crate::output::{print_structured, Format, Table};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Kinds: meshes, waypoints (wp), trafficroutes (tr), backendpolicies (bp),
authorizationpolicies (ap), peerauthentications (pa), pods (po), services (svc), namespaces (ns).

Examples:
  ambitctl get trafficroutes -n bookinfo
  ambitctl get tr reviews-canary -n bookinfo -o yaml
  ambitctl get authorizationpolicies -A
  ambitctl get mesh"
)]
pub struct GetArgs {
    /// Kind: name, plural or short name.
    pub kind: String,
    /// One object's name; all objects without it.
    pub name: Option<String>,
    /// Namespace (default: `default`).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Every namespace.
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    pub all_namespaces: bool,
}

pub async fn run(ctx: &Ctx, args: GetArgs) -> Result<()> {
    let kind = cluster::resolve_kind(&args.kind)?;
    let client = ctx.client().await?;
    let ns = args.namespace.clone().unwrap_or_else(|| "default".into());
    let all = args.all_namespaces && args.name.is_none();
    let api = cluster::api(
        &client,
        &kind.api_resource(),
        kind.namespaced,
        (!all).then_some(ns.as_str()),
    );
    let objects: Vec<DynamicObject> = match &args.name {
        Some(name) => vec![api
            .get(name)
            .await
            .map_err(|e| from_kube(&format!("getting {}/{name}", kind.plural), e))?],
        None => {
            api.list(&ListParams::default())
                .await
                .map_err(|e| from_kube(&format!("listing {}", kind.plural), e))?
                .items
        }
    };
    match ctx.format() {
        Format::Table => {
            if objects.is_empty() {
                eprintln!(
                    "No {} found{}.",
                    kind.plural,
                    if kind.namespaced && !all {
                        format!(" in namespace {ns}")
                    } else {
                        String::new()
                    }
                );
                return Ok(());
            }
            print!("{}", table(kind, &objects, all && kind.namespaced).render());
        }
        f => {
            let mut values: Vec<Value> = objects
                .iter()
                .map(|o| serde_json::to_value(o).expect("objects serialize"))
                .collect();
            for v in &mut values {
                // The dynamic type drops these; put them back so the output can be re-applied.
                v["apiVersion"] = Value::String(kind.api_resource().api_version);
                v["kind"] = Value::String(kind.kind.into());
            }
            if args.name.is_some() {
                print_structured(f, &values[0]);
            } else {
                print_structured(
                    f,
                    &serde_json::json!({"apiVersion": "v1", "kind": "List", "items": values}),
                );
            }
        }
    }
    Ok(())
}

/// `Type=Status` per condition, with the reason for anything not True: `Accepted=True, Programmed=False(L7RulesNotEnforceable)`.
pub fn conditions_summary(obj: &Value) -> String {
    let Some(conds) = obj.pointer("/status/conditions").and_then(Value::as_array) else {
        return "<none>".into();
    };
    let parts: Vec<String> = conds
        .iter()
        .map(|c| {
            let t = c["type"].as_str().unwrap_or("?");
            let s = c["status"].as_str().unwrap_or("?");
            match c["reason"].as_str() {
                Some(r) if s != "True" && !r.is_empty() => format!("{t}={s}({r})"),
                _ => format!("{t}={s}"),
            }
        })
        .collect();
    if parts.is_empty() {
        "<none>".into()
    } else {
        parts.join(",")
    }
}

fn s(v: &Value, ptr: &str) -> String {
    match v.pointer(ptr) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "-".into(),
        Some(other) => other.to_string(),
    }
}

/// Human age from an RFC 3339 timestamp: `45s`, `12m`, `3h`, `5d`.
pub fn age(ts: Option<&str>) -> String {
    let Some(t) = ts.and_then(|t| t.parse::<k8s_openapi::jiff::Timestamp>().ok()) else {
        return "-".into();
    };
    let secs = (k8s_openapi::jiff::Timestamp::now().as_second() - t.as_second()).max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Kind-specific columns between NAME and AGE.
/// A column: header and how to compute its cell.
type Column = (&'static str, fn(&Value) -> String);

fn columns(kind: &KnownKind) -> Vec<Column> {
    let conds: Column = ("CONDITIONS", conditions_summary);
    match kind.kind {
        "Mesh" => vec![
            ("TRUST DOMAIN", |v| s(v, "/spec/trustDomain")),
            ("MTLS", |v| s(v, "/spec/defaultMtlsMode")),
            conds,
        ],
        "Waypoint" => vec![
            ("REPLICAS", |v| s(v, "/spec/replicas")),
            ("READY", |v| s(v, "/status/readyReplicas")),
            ("ADDRESS", |v| s(v, "/status/address")),
            conds,
        ],
        "TrafficRoute" => vec![
            ("TARGET", |v| s(v, "/spec/targetRef/name")),
            ("RULES", |v| {
                v.pointer("/spec/rules")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len)
                    .to_string()
            }),
            conds,
        ],
        "BackendPolicy" => vec![
            ("TARGET", |v| s(v, "/spec/targetRef/name")),
            ("LB", |v| s(v, "/spec/loadBalancer/type")),
            conds,
        ],
        "AuthorizationPolicy" => vec![("ACTION", |v| s(v, "/spec/action")), conds],
        "PeerAuthentication" => vec![("MODE", |v| s(v, "/spec/mtls/mode")), conds],
        "Pod" => vec![
            ("STATUS", |v| s(v, "/status/phase")),
            ("NODE", |v| s(v, "/spec/nodeName")),
            ("IP", |v| s(v, "/status/podIP")),
            ("MESH", |v| {
                v.pointer("/metadata/labels/ambit.dev~1dataplane-mode")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_string()
            }),
        ],
        "Service" => vec![
            ("TYPE", |v| s(v, "/spec/type")),
            ("CLUSTER-IP", |v| s(v, "/spec/clusterIP")),
            ("PORTS", |v| {
                v.pointer("/spec/ports")
                    .and_then(Value::as_array)
                    .map(|ps| {
                        ps.iter()
                            .map(|p| {
                                format!("{}/{}", p["port"], p["protocol"].as_str().unwrap_or("TCP"))
                            })
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_else(|| "-".into())
            }),
            ("WAYPOINT", |v| {
                v.pointer("/metadata/labels/ambit.dev~1use-waypoint")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_string()
            }),
        ],
        "Namespace" => vec![
            ("STATUS", |v| s(v, "/status/phase")),
            ("DATAPLANE", |v| {
                v.pointer("/metadata/labels/ambit.dev~1dataplane-mode")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_string()
            }),
            ("WAYPOINT", |v| {
                v.pointer("/metadata/labels/ambit.dev~1use-waypoint")
                    .and_then(Value::as_str)
                    .unwrap_or("-")
                    .to_string()
            }),
        ],
        _ => vec![conds],
    }
}

pub fn table(kind: &KnownKind, objects: &[DynamicObject], with_ns: bool) -> Table {
    let cols = columns(kind);
    let mut header: Vec<&str> = vec![];
    if with_ns {
        header.push("NAMESPACE");
    }
    header.push("NAME");
    header.extend(cols.iter().map(|(h, _)| *h));
    header.push("AGE");
    let mut t = Table::new(&header);
    for o in objects {
        let v = serde_json::to_value(o).expect("objects serialize");
        let mut row = vec![];
        if with_ns {
            row.push(o.metadata.namespace.clone().unwrap_or_default());
        }
        row.push(o.metadata.name.clone().unwrap_or_default());
        row.extend(cols.iter().map(|(_, f)| f(&v)));
        row.push(age(v
            .pointer("/metadata/creationTimestamp")
            .and_then(Value::as_str)));
        t.row(row);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn conditions_summary_shows_reasons_of_non_true_conditions() {
        let v = json!({"status": {"conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted"},
            {"type": "Programmed", "status": "False", "reason": "L7RulesNotEnforceable"}]}});
        assert_eq!(
            conditions_summary(&v),
            "Accepted=True,Programmed=False(L7RulesNotEnforceable)"
        );
        assert_eq!(conditions_summary(&json!({})), "<none>");
    }

    #[test]
    fn ages_are_compact() {
        assert_eq!(age(None), "-");
        let t = k8s_openapi::jiff::Timestamp::now()
            - k8s_openapi::jiff::SignedDuration::from_secs(3 * 3600 + 5);
        assert_eq!(age(Some(&t.to_string())), "3h");
    }
}
