//! The L7 part of `local up`: the Waypoint for `bookinfo` (the sandbox runs the pod of the
//! operator's waypoint Deployment, the waypoint binary in stream mode), a round-robin
//! BackendPolicy for reviews (its three versions then share the traffic evenly, which shows
//! them all in a few requests), and the namespace's `use-waypoint` label, so reviews' traffic
//! goes through the waypoint. No route is applied: the canary
//! in `examples/canary-90-10.yaml` is the user's next step ([`CANARY_YAML`]). Reported as
//! skipped, with the reason, when the waypoint binary cannot take its config from the operator.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use kube::Client;
use serde::Deserialize as _;
use serde_json::{json, Value};

use super::bins::{cni_add, Bins, CniAdd};
use super::cluster::{self, APP_NS};
use super::dataplane::node_files;
use super::layout::{node_name, Layout, Net};
use super::net::{self, netns_path};
use super::{procs, Progress};
use crate::targets::WaypointEntry;

const WAYPOINT_YAML: &str = include_str!("../../../examples/waypoint.yaml");
/// The canary route `local up` suggests applying next (a copy goes into the state directory
/// when the examples are not at hand).
pub const CANARY_YAML: &str = include_str!("../../../examples/canary-90-10.yaml");
pub const CANARY_PATH: &str = "examples/canary-90-10.yaml";
const WAYPOINT: &str = "waypoint";
/// Infrastructure pods take pod indexes from here, clear of the demo app's.
const INFRA_POD_INDEX: usize = 200;

pub struct Ctx<'a> {
    pub c: &'a Client,
    pub layout: &'a Layout,
    pub net: Net,
    pub bins: &'a Bins,
    pub root_cert: &'a Path,
}

/// Runs the step; returns the waypoint for the state file when it runs.
pub async fn step(
    x: &Ctx<'_>,
    nodes: usize,
    p: &Progress,
    steps: &mut Vec<Value>,
) -> anyhow::Result<Option<WaypointEntry>> {
    let why = match &x.bins.waypoint {
        None => Some("no waypoint binary next to ambitctl".to_string()),
        Some(w) if !x.bins.waypoint_has_stream_mode() => Some(format!(
            "{} has no control-plane stream mode (--control-plane), so it cannot run as the operator's waypoint Deployment",
            w.display()
        )),
        Some(_) => None,
    };
    if let Some(why) = why {
        p.step(&format!("skipped: Waypoint `waypoint`: {why}"));
        steps.push(json!({"step": "waypoint", "status": "skipped", "detail": why}));
        return Ok(None);
    }
    p.step("applying Waypoint bookinfo/waypoint (examples/waypoint.yaml, 1 replica) and running its pod");
    let entry = waypoint(x).await?;
    p.step("applying BackendPolicy bookinfo/reviews (round robin over v1, v2, v3); labelling namespace bookinfo ambit.dev/use-waypoint=waypoint: reviews' traffic goes through it (no route yet)");
    cluster::create(
        x.c,
        &format!("/apis/ambit.dev/v1alpha1/namespaces/{APP_NS}/backendpolicies"),
        round_robin("reviews"),
    )
    .await?;
    cluster::label_namespace(x.c, APP_NS, json!({"ambit.dev/use-waypoint": WAYPOINT})).await?;
    wait_in_path(x, nodes, entry.netns.as_deref().unwrap_or_default()).await?;
    steps.push(json!({"step": "waypoint", "status": "done",
        "detail": format!("bookinfo/waypoint pod on {} in netns {}; every ztunnel sends reviews to it",
            node_name(0), entry.netns.clone().unwrap_or_default())}));
    Ok(Some(entry))
}

/// A BackendPolicy balancing `service`'s endpoints round robin.
fn round_robin(service: &str) -> Value {
    json!({"apiVersion": "ambit.dev/v1alpha1", "kind": "BackendPolicy",
        "metadata": {"name": service, "namespace": APP_NS},
        "spec": {"targetRef": {"name": service}, "loadBalancer": {"type": "RoundRobin"}}})
}

/// Requests the waypoint has handled for Service reviews (its `ambit_requests_total`).
pub fn reviews_requests(waypoint_netns: &str) -> Option<f64> {
    let text = ambit_core::netns::run_in_thread(&netns_path(waypoint_netns), || {
        crate::http_get::get("127.0.0.1:15020", "/metrics").ok()
    })
    .ok()??;
    Some(ambit_testkit::mesh::metric_sum(
        &text,
        "ambit_requests_total",
        &[("destination_service_name", "reviews")],
    ))
}

/// Waits until the waypoint balances reviews round robin and every ztunnel sends reviews'
/// traffic to it: only then does the demo traffic take the L7 path.
async fn wait_in_path(x: &Ctx<'_>, nodes: usize, waypoint_netns: &str) -> anyhow::Result<()> {
    let reviews = super::apps::vip("reviews").to_string();
    let admin = |ns: String| async move {
        tokio::task::spawn_blocking(move || {
            ambit_core::netns::run_in_thread(&netns_path(&ns), || {
                crate::http_get::get("127.0.0.1:15000", "/config_dump").ok()
            })
            .ok()
            .flatten()
        })
        .await
        .ok()
        .flatten()
    };
    cluster::wait_for(
        "the waypoint to balance reviews round robin and every ztunnel to send reviews to it",
        Duration::from_secs(30),
        || async {
            let wp = admin(waypoint_netns.to_string()).await.unwrap_or_default();
            let wp: Value = serde_json::from_str(&wp).unwrap_or_default();
            let rr = wp["backendPolicies"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|b| {
                    b["service"]["name"] == "reviews" && b["loadBalancer"]["type"] == "RoundRobin"
                });
            if !rr {
                return Ok(None);
            }
            for i in 0..nodes {
                let dump = admin(x.layout.netns(&node_name(i)))
                    .await
                    .unwrap_or_default();
                let v: Value = serde_json::from_str(&dump).unwrap_or_default();
                if v["state"]["services"][&reviews]["waypoint"].is_null() {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        },
    )
    .await
}

async fn waypoint(x: &Ctx<'_>) -> anyhow::Result<WaypointEntry> {
    let doc = serde_yaml::Deserializer::from_str(WAYPOINT_YAML)
        .map(|d| serde_yaml::Value::deserialize(d).map_err(anyhow::Error::from))
        .find_map(|v| {
            v.ok()
                .and_then(|v| serde_json::to_value(v).ok())
                .filter(|v| v["kind"] == "Waypoint")
        })
        .context("examples/waypoint.yaml has no Waypoint")?;
    let mut wp = doc;
    // One replica is enough on a laptop.
    wp["spec"]["replicas"] = json!(1);
    cluster::create(
        x.c,
        &format!("/apis/ambit.dev/v1alpha1/namespaces/{APP_NS}/waypoints"),
        wp,
    )
    .await?;
    let dep_path = format!("/apis/apps/v1/namespaces/{APP_NS}/deployments/{WAYPOINT}");
    let dep = cluster::wait_for(
        "the operator to create Deployment bookinfo/waypoint",
        Duration::from_secs(20),
        || async { cluster::get(x.c, &dep_path).await },
    )
    .await?;
    let tpl = &dep["spec"]["template"];
    let sa = tpl["spec"]["serviceAccountName"]
        .as_str()
        .unwrap_or(WAYPOINT)
        .to_string();
    let container = &tpl["spec"]["containers"][0];
    let pod = "waypoint-0";
    let (node, k) = (0, INFRA_POD_INDEX);
    let node_n = node_name(node);
    let ip = x.net.pod_ip(node, k);
    let uid = cluster::create_pod(
        x.c,
        APP_NS,
        pod,
        &node_n,
        &sa,
        tpl["metadata"]["labels"].clone(),
        false,
    )
    .await?;
    let ns_path = net::add_pod(x.layout, x.net, node, k, pod)?;
    cni_add(
        &x.bins.cni,
        &netns_path(&x.layout.netns(&node_n)),
        &CniAdd {
            netns: &ns_path,
            container_id: &format!("{}-{pod}", x.layout.name),
            namespace: APP_NS,
            pod,
            uid: &uid,
            ip,
            agent_socket: &node_files(x.layout, node).agent_socket,
        },
    )?;
    cluster::set_pod_running(x.c, APP_NS, pod, ip, x.net.node_ip(node)).await?;
    let dir = x.layout.dir.join("waypoint");
    std::fs::create_dir_all(&dir)?;
    let token_file = dir.join("token");
    std::fs::write(
        &token_file,
        cluster::token(x.c, APP_NS, &sa, pod, &uid).await?,
    )?;
    // The Deployment's own arguments, with the mounted files' paths replaced by ours.
    let args: Vec<String> = container["args"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .filter(|a| !a.starts_with("--root-cert") && !a.starts_with("--token-file"))
        .map(String::from)
        .collect();
    let mut cmd = Command::new(x.bins.waypoint.as_ref().expect("checked by step"));
    cmd.args(&args)
        .arg("--service-account")
        .arg(&sa)
        .arg("--root-cert")
        .arg(x.root_cert)
        .arg("--token-file")
        .arg(&token_file)
        .env("RUST_LOG", "info");
    procs::spawn(x.layout, "waypoint-0", Some(&ns_path), cmd)?;
    let ready = ns_path.clone();
    cluster::wait_for(
        "the waypoint to be ready (:15021)",
        Duration::from_secs(30),
        || {
            let ns = ready.clone();
            async move {
                let r = tokio::task::spawn_blocking(move || {
                    ambit_core::netns::run_in_thread(&ns, || {
                        crate::http_get::get("127.0.0.1:15021", "/healthz/ready")
                    })
                })
                .await?;
                Ok(matches!(r, Ok(Ok(_))).then_some(()))
            }
        },
    )
    .await?;
    // Play the Deployment controller.
    cluster::patch(
        x.c,
        &format!("{dep_path}/status"),
        json!({"status": {
        "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1,
        "observedGeneration": dep["metadata"]["generation"]}}),
    )
    .await?;
    Ok(WaypointEntry {
        name: WAYPOINT.into(),
        namespace: APP_NS.into(),
        admin: "127.0.0.1:15000".into(),
        metrics: Some(format!("{ip}:15020")),
        netns: Some(x.layout.netns(pod)),
    })
}
