//! `ambitctl status`: is every proxy up, configured and holding valid certificates, and is
//! every Ambit object enforced as written?

use kube::api::{Api, DynamicObject, ListParams};
use serde::Serialize;
use serde_json::{json, Value};

mod table;

use crate::cluster::{self, ServerSource, KNOWN};
use crate::cmd::config_dump::{admin_json, rfc3339};
use crate::ctx::Ctx;
use crate::error::{CliError, Result};
use crate::output::{print_structured, Format};
use crate::targets::{NodeTarget, WaypointTarget};

#[derive(clap::Args, Debug)]
#[command(
    after_help = "Exit code 3 when the API server or a proxy cannot be reached; else 1 when a
proxy has no config, capture failures or an expired certificate; --fail-on-warnings also
exits 1 on objects with a False condition (e.g. a policy that cannot be enforced).

Examples:
  ambitctl status
  ambitctl status -o json
  ambitctl status --ztunnel-admin node-1=10.0.0.5:15000"
)]
pub struct StatusArgs {
    /// Exit 1 on warnings too.
    #[arg(long)]
    pub fail_on_warnings: bool,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NodeStatus {
    pub name: String,
    pub reachable: bool,
    pub healthy: bool,
    pub problems: Vec<String>,
    /// The config dump's `configSource`, when the ztunnel reports one.
    pub config_source: Option<Value>,
    pub config_loaded: bool,
    pub workloads: usize,
    pub services: usize,
    pub policies: usize,
    pub captured_pods: Vec<String>,
    pub capture_failures: Value,
    pub certificates: Vec<Value>,
    pub certs_valid_until: Option<String>,
    pub certs_expire_in_seconds: Option<i64>,
}

#[derive(Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct WaypointStatus {
    pub namespace: String,
    pub name: String,
    pub reachable: bool,
    pub healthy: bool,
    pub problems: Vec<String>,
    pub routes: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Warning {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
    pub condition: String,
    pub reason: String,
    pub message: String,
}

fn len_of(v: &Value, ptr: &str) -> usize {
    match v.pointer(ptr) {
        Some(Value::Array(a)) => a.len(),
        Some(Value::Object(o)) => o.len(),
        _ => 0,
    }
}

async fn node_status(client: Option<&kube::Client>, n: &NodeTarget) -> NodeStatus {
    let mut s = NodeStatus {
        name: n.name.clone(),
        ..Default::default()
    };
    let dump = match admin_json(client, &n.admin, "/config_dump").await {
        Ok(d) => d,
        Err(e) => {
            s.problems.push(e.to_string());
            return s;
        }
    };
    s.reachable = true;
    s.config_source = dump.get("configSource").cloned();
    s.config_loaded = dump
        .pointer("/state/trustDomain")
        .and_then(Value::as_str)
        .is_some_and(|t| !t.is_empty());
    if let Some(false) = s
        .config_source
        .as_ref()
        .and_then(|c| c["connected"].as_bool())
    {
        s.problems
            .push("config source disconnected (serving the last good config)".into());
    }
    if !s.config_loaded {
        s.problems.push("no mesh config loaded yet".into());
    }
    s.workloads = len_of(&dump, "/state/workloads");
    s.services = len_of(&dump, "/state/services");
    s.policies = len_of(&dump, "/state/policies");
    s.captured_pods = dump["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["uid"].as_str().map(str::to_string))
        .collect();
    s.capture_failures = dump.get("captureFailures").cloned().unwrap_or(json!({}));
    for (uid, why) in s.capture_failures.as_object().into_iter().flatten() {
        s.problems.push(format!(
            "pod {uid} cannot be captured: {}",
            why.as_str().unwrap_or("?")
        ));
    }
    // /certs is the authoritative list; the dump's copy is a fallback for older ztunnels.
    let certs = admin_json(client, &n.admin, "/certs")
        .await
        .unwrap_or_else(|_| dump["certificates"].clone());
    s.certificates = certs.as_array().cloned().unwrap_or_default();
    let earliest = s
        .certificates
        .iter()
        .filter_map(|c| Some((c["notAfter"].as_i64()?, c["expiresInSeconds"].as_i64()?)))
        .min();
    if let Some((not_after, left)) = earliest {
        s.certs_valid_until = Some(rfc3339(not_after));
        s.certs_expire_in_seconds = Some(left);
        if left <= 0 {
            s.problems.push(format!(
                "a workload certificate expired at {}",
                rfc3339(not_after)
            ));
        }
    }
    s.healthy = s.problems.is_empty();
    s
}

/// Route names from a waypoint's config dump: the first `routes` found, as names or keys.
fn routes_in(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Object(o) => {
            if let Some(r) = o.get("routes") {
                return Some(match r {
                    Value::Array(a) => a
                        .iter()
                        .map(|x| {
                            x["name"].as_str().map(str::to_string).unwrap_or_else(|| {
                                let ns = x["namespace"].as_str().unwrap_or("");
                                format!(
                                    "{ns}{}",
                                    x.pointer("/metadata/name")
                                        .and_then(Value::as_str)
                                        .unwrap_or("?")
                                )
                            })
                        })
                        .collect(),
                    Value::Object(m) => m.keys().cloned().collect(),
                    _ => vec![],
                });
            }
            o.values().find_map(routes_in)
        }
        Value::Array(a) => a.iter().find_map(routes_in),
        _ => None,
    }
}

async fn waypoint_status(client: Option<&kube::Client>, w: &WaypointTarget) -> WaypointStatus {
    let mut s = WaypointStatus {
        namespace: w.namespace.clone(),
        name: w.name.clone(),
        ..Default::default()
    };
    match admin_json(client, &w.admin, "/config_dump").await {
        Ok(d) => {
            s.reachable = true;
            s.routes = routes_in(&d).unwrap_or_default();
        }
        Err(e) => s.problems.push(e.to_string()),
    }
    s.healthy = s.problems.is_empty();
    s
}

/// Every False condition on an Ambit object, and a Mesh that is not Ready.
async fn warnings(client: &kube::Client) -> Result<Vec<Warning>> {
    let mut out = vec![];
    for k in KNOWN.iter().filter(|k| k.is_ambit()) {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), &k.api_resource());
        let list = match api.list(&ListParams::default()).await {
            Ok(l) => l,
            // CRD not installed: `check` reports that; nothing to warn about here.
            Err(kube::Error::Api(s)) if s.code == 404 => continue,
            Err(e) => return Err(crate::error::from_kube(&format!("listing {}", k.plural), e)),
        };
        for o in list.items {
            let v = serde_json::to_value(&o).expect("objects serialize");
            for c in v
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let bad = condition_is_a_problem(c);
                if bad {
                    out.push(Warning {
                        kind: k.kind.into(),
                        namespace: o.metadata.namespace.clone(),
                        name: o.metadata.name.clone().unwrap_or_default(),
                        condition: format!(
                            "{}={}",
                            c["type"].as_str().unwrap_or("?"),
                            c["status"].as_str().unwrap_or("?")
                        ),
                        reason: c["reason"].as_str().unwrap_or("").into(),
                        message: c["message"].as_str().unwrap_or("").into(),
                    });
                }
            }
        }
    }
    Ok(out)
}

pub async fn run(ctx: &Ctx, args: StatusArgs) -> Result<()> {
    let source = ctx.server_source();
    let client = match &source {
        ServerSource::Url(_) => Some(ctx.client().await?),
        ServerSource::Kubeconfig => cluster::client(&source).await.ok(),
    };
    let mut api = json!(null);
    let mut warns = vec![];
    let mut healthy = true;
    if let Some(c) = &client {
        match warnings(c).await {
            Ok(w) => {
                warns = w;
                api = json!({"reachable": true});
            }
            Err(e) => {
                healthy = false;
                api = json!({"reachable": false, "error": e.to_string()});
            }
        }
    }
    let api_ok = api["reachable"] != false;
    let targets = ctx.targets(client.as_ref().filter(|_| api_ok)).await?;
    if targets.nodes.is_empty() && targets.waypoints.is_empty() && client.is_none() {
        return Err(CliError::Unreachable(
            "nothing to report on: no sandbox state, no --server or --ztunnel-admin, and no kubeconfig".into(),
        ));
    }
    let mut nodes = vec![];
    for n in &targets.nodes {
        nodes.push(node_status(client.as_ref(), n).await);
    }
    let mut waypoints = vec![];
    for w in &targets.waypoints {
        waypoints.push(waypoint_status(client.as_ref(), w).await);
    }
    healthy &= nodes.iter().all(|n| n.healthy) && waypoints.iter().all(|w| w.healthy);
    let unreachable =
        !api_ok || nodes.iter().any(|n| !n.reachable) || waypoints.iter().any(|w| !w.reachable);
    if ctx.format() == Format::Table {
        table::print(&api, &nodes, &waypoints, &warns);
    } else {
        print_structured(
            ctx.format(),
            &json!({"healthy": healthy, "apiServer": api, "nodes": nodes, "waypoints": waypoints, "warnings": warns}),
        );
    }
    if unreachable {
        Err(CliError::Silent(3))
    } else if !healthy || (args.fail_on_warnings && !warns.is_empty()) {
        Err(CliError::Silent(1))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_are_found_wherever_the_dump_keeps_them() {
        let d = json!({"listeners": [], "config": {"routes": [{"name": "reviews-canary"}, {"name": "default"}]}});
        assert_eq!(routes_in(&d).unwrap(), vec!["reviews-canary", "default"]);
        let d = json!({"routes": {"bookinfo/reviews": {}}});
        assert_eq!(routes_in(&d).unwrap(), vec!["bookinfo/reviews"]);
        assert_eq!(routes_in(&json!({"x": 1})), None);
    }
}

/// Most conditions are healthy when True; `Degraded` and `Progressing` (abnormal-true, as
/// in Deployments) are healthy when False, and a rollout under way is not a problem either.
fn condition_is_a_problem(c: &Value) -> bool {
    match c["type"].as_str() {
        Some("Degraded") => c["status"] == "True",
        Some("Progressing") => false,
        _ => c["status"] == "False",
    }
}

#[cfg(test)]
mod condition_tests {
    use super::condition_is_a_problem;
    use serde_json::json;

    #[test]
    fn healthy_mesh_conditions_are_not_warnings() {
        for (t, s, bad) in [
            ("Ready", "True", false),
            ("Ready", "False", true),
            ("Progressing", "False", false),
            ("Progressing", "True", false),
            ("Degraded", "False", false),
            ("Degraded", "True", true),
            ("Programmed", "False", true),
        ] {
            assert_eq!(
                condition_is_a_problem(&json!({"type": t, "status": s})),
                bad,
                "{t}={s}"
            );
        }
    }
}
