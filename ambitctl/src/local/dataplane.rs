//! Step 4 of `local up`: the sandbox plays the kubelet for the operator's DaemonSets, one
//! ztunnel (stream mode: config and certificates from the operator) and one node agent per
//! node, each inside its node's network namespace.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use kube::Client;
use serde_json::json;

use super::bins::Bins;
use super::cluster::{self, SYSTEM_NS};
use super::layout::{node_name, Layout, Net};
use super::net::netns_path;
use super::procs;

pub struct NodeFiles {
    pub name: String,
    pub dir: PathBuf,
    pub ztunnel_socket: PathBuf,
    pub agent_socket: PathBuf,
}

pub fn node_files(layout: &Layout, i: usize) -> NodeFiles {
    let name = node_name(i);
    let dir = layout.node_dir(&name);
    NodeFiles {
        ztunnel_socket: dir.join("ztunnel.sock"),
        agent_socket: dir.join("cni-agent.sock"),
        name,
        dir,
    }
}

/// Starts ztunnel and the node agent (which watches the API server itself) on node `i`.
#[allow(clippy::too_many_arguments)]
pub async fn start_node(
    c: &Client,
    layout: &Layout,
    net: Net,
    bins: &Bins,
    api_server: &str,
    root_cert: &std::path::Path,
    i: usize,
) -> anyhow::Result<()> {
    let f = node_files(layout, i);
    std::fs::create_dir_all(&f.dir)?;
    let ip = net.node_ip(i);
    let netns = netns_path(&layout.netns(&f.name));

    // The ztunnel pod: its token is bound to it, and through it to the node.
    let pod = format!("ztunnel-{}", f.name);
    let uid = cluster::create_pod(
        c,
        SYSTEM_NS,
        &pod,
        &f.name,
        "ztunnel",
        json!({"app": "ztunnel"}),
        true,
    )
    .await?;
    cluster::set_pod_running(c, SYSTEM_NS, &pod, ip, ip).await?;
    let token = cluster::token(c, SYSTEM_NS, "ztunnel", &pod, &uid).await?;
    let token_file = f.dir.join("ztunnel-token");
    std::fs::write(&token_file, token)?;
    let mut zt = Command::new(&bins.ambitctl);
    zt.arg("__ztunnel")
        .arg("--node")
        .arg(&f.name)
        .arg("--control-plane")
        .arg(format!("{}:15012", net.host_ip()))
        .arg("--root-cert")
        .arg(root_cert)
        .arg("--token-file")
        .arg(&token_file)
        .arg("--inpod-socket")
        .arg(&f.ztunnel_socket)
        .env("RUST_LOG", "info");
    procs::spawn(layout, &format!("ztunnel-{}", f.name), Some(&netns), zt)?;

    let agent_pod = format!("ambit-node-agent-{}", f.name);
    cluster::create_pod(
        c,
        SYSTEM_NS,
        &agent_pod,
        &f.name,
        "ambit-node-agent",
        json!({"app": "ambit-node-agent"}),
        true,
    )
    .await?;
    cluster::set_pod_running(c, SYSTEM_NS, &agent_pod, ip, ip).await?;
    let mut agent = Command::new(&bins.agent);
    agent
        .arg("run")
        .arg("--node")
        .arg(&f.name)
        .arg("--ztunnel-socket")
        .arg(&f.ztunnel_socket)
        .arg("--plugin-socket")
        .arg(&f.agent_socket)
        .arg("--no-install")
        .arg("--resync")
        .arg("500ms")
        .arg("--health-addr")
        .arg("0.0.0.0:15022")
        .env("RUST_LOG", "info");
    agent
        .arg("--kube")
        .arg("--api-server")
        .arg(api_server)
        .arg("--exclude-namespace")
        .arg("kube-system")
        .arg("--exclude-namespace")
        .arg(SYSTEM_NS)
        .env("POD_NAMESPACE", SYSTEM_NS);
    procs::spawn(
        layout,
        &format!("node-agent-{}", f.name),
        Some(&netns),
        agent,
    )?;
    Ok(())
}

/// Waits until ztunnel (`:15021`) and the agent (`:15022`) of node `i` report ready.
pub async fn wait_ready(net: Net, i: usize, timeout: Duration) -> anyhow::Result<()> {
    let ip = net.node_ip(i);
    for (what, port) in [("ztunnel", 15021), ("node agent", 15022)] {
        let addr = format!("{ip}:{port}");
        cluster::wait_for(
            &format!("the {what} on {} to be ready ({addr})", node_name(i)),
            timeout,
            || {
                let addr = addr.clone();
                async move {
                    let r = tokio::task::spawn_blocking(move || {
                        crate::http_get::get(&addr, "/healthz/ready")
                    })
                    .await
                    .context("readiness probe task")?;
                    Ok(r.ok().map(drop))
                }
            },
        )
        .await?;
    }
    Ok(())
}

/// IPs of the pods ztunnel on node `i` has captured (its admin `/config_dump`).
pub fn captured_pods(layout: &Layout, i: usize) -> anyhow::Result<Vec<String>> {
    let netns = netns_path(&layout.netns(&node_name(i)));
    let body = ambit_core::netns::run_in_thread(&netns, || {
        crate::http_get::get("127.0.0.1:15000", "/config_dump")
    })?
    .map_err(|e| anyhow::anyhow!("ztunnel admin on {}: {e:?}", node_name(i)))?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["ip"].as_str().map(String::from))
        .collect())
}
