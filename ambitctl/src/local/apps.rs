//! Step 5 of `local up`: the Bookinfo-shaped demo app in namespace `bookinfo`. Each pod is
//! a Pod object, a network namespace made by the sandbox's primary CNI, a CNI ADD through
//! the real `ambit-cni` plugin, and an `ambitctl demo-app` process inside the namespace.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;

use kube::Client;
use serde_json::json;

use super::bins::{cni_add, Bins, CniAdd};
use super::cluster::{self, APP_NS};
use super::dataplane::node_files;
use super::layout::{node_name, Layout, Net};
use super::net::{self, netns_path};
use super::procs;

pub const PORT: u16 = 9080;

/// (pod, app, version); `None` app = the client pod, which runs no server.
const PODS: &[(&str, Option<&str>, &str)] = &[
    ("productpage-v1", Some("productpage"), "v1"),
    ("details-v1", Some("details"), "v1"),
    ("reviews-v1", Some("reviews"), "v1"),
    ("reviews-v2", Some("reviews"), "v2"),
    ("reviews-v3", Some("reviews"), "v3"),
    ("ratings-v1", Some("ratings"), "v1"),
    ("client", None, "v1"),
];

/// Service name → ClusterIP, from the sandbox's service range 10.96.0.0/16.
pub const SERVICES: &[(&str, Ipv4Addr)] = &[
    ("productpage", Ipv4Addr::new(10, 96, 0, 10)),
    ("details", Ipv4Addr::new(10, 96, 0, 11)),
    ("reviews", Ipv4Addr::new(10, 96, 0, 12)),
    ("ratings", Ipv4Addr::new(10, 96, 0, 13)),
];

pub fn vip(service: &str) -> SocketAddr {
    let ip = SERVICES
        .iter()
        .find(|(s, _)| *s == service)
        .map(|(_, ip)| *ip)
        .expect("a demo service");
    SocketAddr::from((ip, PORT))
}

#[derive(Clone, Debug, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodInfo {
    pub name: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub netns: String,
}

/// Creates the Services and pods and starts the app processes. Returns the pods, the client last.
pub async fn deploy(
    c: &Client,
    layout: &Layout,
    net_: Net,
    bins: &Bins,
    nodes: usize,
) -> anyhow::Result<Vec<PodInfo>> {
    for (svc, ip) in SERVICES {
        cluster::create_service(c, APP_NS, svc, *ip, PORT).await?;
    }
    let mut per_node = vec![0usize; nodes];
    let mut out = vec![];
    for (n, (pod, app, version)) in PODS.iter().enumerate() {
        let node = n % nodes;
        let k = per_node[node];
        per_node[node] += 1;
        let node_n = node_name(node);
        let ip = net_.pod_ip(node, k);
        let sa = format!("bookinfo-{}", app.unwrap_or("client"));
        let labels = json!({"app": app.unwrap_or("client"), "version": version});
        let uid = cluster::create_pod(c, APP_NS, pod, &node_n, &sa, labels, false).await?;
        let files = node_files(layout, node);
        // The runtime's sequence: primary CNI (interface + IP), then the chained ambit-cni.
        let ns_path = net::add_pod(layout, net_, node, k, pod)?;
        cni_add(
            &bins.cni,
            &netns_path(&layout.netns(&node_n)),
            &CniAdd {
                netns: &ns_path,
                container_id: &format!("{}-{pod}", layout.name),
                namespace: APP_NS,
                pod,
                uid: &uid,
                ip,
                agent_socket: &files.agent_socket,
            },
        )?;
        cluster::set_pod_running(c, APP_NS, pod, ip, net_.node_ip(node)).await?;
        if let Some(role) = app {
            start_app(layout, bins, &ns_path, pod, role, version)?;
        }
        out.push(PodInfo {
            name: pod.to_string(),
            node: node_n,
            ip,
            netns: layout.netns(pod),
        });
    }
    Ok(out)
}

fn start_app(
    layout: &Layout,
    bins: &Bins,
    netns: &std::path::Path,
    pod: &str,
    role: &str,
    version: &str,
) -> anyhow::Result<()> {
    let mut cmd = Command::new(&bins.ambitctl);
    cmd.args(["demo-app", "--role", role, "--version", version])
        .arg("--listen")
        .arg(format!("0.0.0.0:{PORT}"))
        .arg("--details")
        .arg(format!("http://{}", vip("details")))
        .arg("--reviews")
        .arg(format!("http://{}", vip("reviews")))
        .arg("--ratings")
        .arg(format!("http://{}", vip("ratings")))
        .env("HOSTNAME", pod);
    procs::spawn(layout, &format!("app-{pod}"), Some(netns), cmd).map(drop)
}
