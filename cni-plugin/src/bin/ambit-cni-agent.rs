//! `ambit-cni-agent`: Ambit's node agent (one per node, host network, privileged).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::time::Duration;

use ambit_cni::agent::{install, Agent, AgentOptions};
use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;
use tracing::{info, warn};

#[derive(Parser)]
#[command(
    version,
    about = "Ambit's node agent: chains the CNI plugin and captures pods into the node's ztunnel"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(clap::Args, Clone)]
struct CniDirs {
    /// The node's CNI network config directory.
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The node's CNI plugin binary directory.
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the plugin and serve until SIGTERM.
    Run {
        #[arg(long, env = "NODE_NAME")]
        node: String,
        /// Cluster state (namespaces, pods) as JSON; re-read every --resync.
        #[arg(long)]
        cluster_state: PathBuf,
        #[arg(long, default_value = ambit_core::inpod_proto::DEFAULT_SOCKET)]
        ztunnel_socket: PathBuf,
        #[arg(long, default_value = ambit_cni::agent_proto::DEFAULT_AGENT_SOCKET)]
        plugin_socket: PathBuf,
        #[command(flatten)]
        dirs: CniDirs,
        /// The plugin binary to copy into --cni-bin-dir (skip installing when absent).
        #[arg(long)]
        plugin_binary: Option<PathBuf>,
        /// What the plugin does when the pod cannot be captured: closed (pod fails) or open.
        #[arg(long, default_value = "closed", value_parser = ["closed", "open"])]
        failure_policy: String,
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        resync: Duration,
        /// Do not touch the CNI config (tests that invoke the plugin directly).
        #[arg(long)]
        no_install: bool,
        /// Metrics (/metrics) and readiness (/healthz/ready: plugin installed and ztunnel
        /// connected).
        #[arg(long, default_value = "0.0.0.0:15022")]
        health_addr: std::net::SocketAddr,
    },
    /// Remove the plugin from the node's CNI config and bin dir.
    Uninstall {
        #[command(flatten)]
        dirs: CniDirs,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match Cli::parse().command {
        Cmd::Uninstall { dirs } => {
            let changed = install::remove_chained(&dirs.cni_conf_dir)?;
            install::uninstall_binary(&dirs.cni_bin_dir)?;
            info!(?changed, "plugin removed from the node");
            Ok(())
        }
        Cmd::Run {
            node,
            cluster_state,
            ztunnel_socket,
            plugin_socket,
            dirs,
            plugin_binary,
            failure_policy,
            resync,
            no_install,
            health_addr,
        } => {
            let agent = Agent::start(AgentOptions {
                node,
                cluster_state,
                ztunnel_socket,
                plugin_socket: plugin_socket.clone(),
                host_netns: PathBuf::from("/proc/self/ns/net"),
                redirect: Default::default(),
                resync,
                netns_prefix: None,
            })
            .context("starting the node agent")?;
            let listener = std::net::TcpListener::bind(health_addr)
                .with_context(|| format!("binding the health address {health_addr}"))?;
            ambit_cni::agent::health::serve(listener, agent.clone());
            agent.set_installed(no_install);
            let entry = json!({"agentSocket": plugin_socket, "failurePolicy": failure_policy});
            let entry = entry.as_object().expect("object literal").clone();
            loop {
                if !no_install {
                    if let Some(bin) = &plugin_binary {
                        if let Err(e) = install::install_binary(bin, &dirs.cni_bin_dir) {
                            warn!(error = %e, "installing the plugin binary");
                        }
                    }
                    // The primary CNI may rewrite its config at any time: check again.
                    match install::ensure_chained(&dirs.cni_conf_dir, &entry) {
                        Ok((path, changed)) => {
                            if changed {
                                info!(path = %path.display(), "chained the plugin into the CNI config");
                            }
                            agent.set_installed(true);
                        }
                        Err(e) => {
                            warn!(error = %e, "cannot chain the plugin yet");
                            agent.set_installed(false);
                        }
                    }
                }
                std::thread::sleep(Duration::from_secs(2));
            }
        }
    }
}
