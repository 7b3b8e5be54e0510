//! `ambit-cni-agent`: Ambit's node agent (one per node, host network, privileged).
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use ambit_cni::agent::kube_source::{self, DaemonSetState};
use ambit_cni::agent::source::{ClusterFeed, ClusterSource, LiveView};
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
    #[command(flatten)]
    dirs: CniDirs,
    #[command(subcommand)]
    command: Cmd,
}

/// Global: the operator passes them before the subcommand.
#[derive(clap::Args, Clone)]
struct CniDirs {
    /// The node's CNI network config directory.
    #[arg(long, global = true, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// The node's CNI plugin binary directory.
    #[arg(long, global = true, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the plugin and serve until SIGTERM.
    Run(Box<RunArgs>),
    /// Remove the plugin from the node's CNI config and bin dir.
    Uninstall,
}

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("source").required(true).args(["cluster_state", "kube"])))]
struct RunArgs {
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// Cluster state (namespaces, pods) as JSON; re-read every --resync. Exclusive with --kube.
    #[arg(long)]
    cluster_state: Option<PathBuf>,
    /// Watch pods on this node and all namespaces in Kubernetes. Exclusive with
    /// --cluster-state.
    #[arg(long)]
    kube: bool,
    /// The API server's URL, unauthenticated (tests, the sandbox); default: the in-cluster
    /// service account or kubeconfig.
    #[arg(long, requires = "kube")]
    api_server: Option<String>,
    /// The DaemonSet running this agent, NAMESPACE/NAME: read on SIGTERM to tell removal of
    /// the mesh (deleted or being deleted: uninstall from the node) from a restart or upgrade
    /// (leave everything in place). Default: $POD_NAMESPACE/ambit-node-agent.
    #[arg(long, requires = "kube", value_parser = parse_daemonset)]
    daemonset: Option<(String, String)>,
    /// Namespace whose pods are never captured (repeatable; written into the plugin's config
    /// too).
    #[arg(
        long = "exclude-namespace",
        value_name = "NS",
        default_value = "kube-system"
    )]
    exclude_namespaces: Vec<String>,
    #[arg(long, default_value = ambit_core::inpod_proto::DEFAULT_SOCKET)]
    ztunnel_socket: PathBuf,
    #[arg(long, default_value = ambit_cni::agent_proto::DEFAULT_AGENT_SOCKET)]
    plugin_socket: PathBuf,
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
    /// Metrics (/metrics) and readiness (/healthz/ready: plugin installed, ztunnel connected,
    /// and with --kube the initial lists loaded).
    #[arg(long, default_value = "0.0.0.0:15022")]
    health_addr: std::net::SocketAddr,
    /// The node's network namespace (kubelet-probe SNAT).
    #[arg(long, default_value = "/proc/self/ns/net")]
    host_netns: PathBuf,
    /// Look for running pods only in named network namespaces with this prefix (simulated
    /// nodes sharing one machine).
    #[arg(long, hide = true)]
    netns_prefix: Option<String>,
}

fn parse_daemonset(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.into(), name.into()))
        }
        _ => Err(format!("{s:?} is not NAMESPACE/NAME")),
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let cli = Cli::parse();
    match cli.command {
        Cmd::Uninstall => {
            let changed = install::remove_chained(&cli.dirs.cni_conf_dir)?;
            install::uninstall_binary(&cli.dirs.cni_bin_dir)?;
            info!(?changed, "plugin removed from the node");
            Ok(())
        }
        Cmd::Run(args) => run(*args, cli.dirs),
    }
}

fn run(args: RunArgs, dirs: CniDirs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Registered first: a SIGTERM during startup still gets the shutdown decision.
    let mut sigterm = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    })?;
    let exclude: std::collections::BTreeSet<String> =
        args.exclude_namespaces.iter().cloned().collect();
    let (source, kube) = if args.kube {
        let client = rt.block_on(kube_source::client(args.api_server.as_deref()))?;
        let daemonset = match args.daemonset.clone() {
            Some(ds) => ds,
            None => (
                std::env::var("POD_NAMESPACE")
                    .unwrap_or_else(|_| client.default_namespace().to_string()),
                "ambit-node-agent".to_string(),
            ),
        };
        let live = LiveView::new();
        rt.spawn(kube_source::watch(
            client.clone(),
            args.node.clone(),
            live.clone(),
        ));
        (ClusterSource::Live(live), Some((client, daemonset)))
    } else {
        let path = args
            .cluster_state
            .clone()
            .expect("clap requires one source");
        (ClusterSource::File(path), None)
    };
    let agent = Agent::start_fed(
        AgentOptions {
            node: args.node.clone(),
            cluster_state: args.cluster_state.clone().unwrap_or_default(),
            ztunnel_socket: args.ztunnel_socket.clone(),
            plugin_socket: args.plugin_socket.clone(),
            host_netns: args.host_netns.clone(),
            redirect: Default::default(),
            resync: args.resync,
            netns_prefix: args.netns_prefix.clone(),
        },
        ClusterFeed {
            source,
            exclude_namespaces: exclude,
        },
    )
    .context("starting the node agent")?;
    let listener = std::net::TcpListener::bind(args.health_addr)
        .with_context(|| format!("binding the health address {}", args.health_addr))?;
    ambit_cni::agent::health::serve(listener, agent.clone());
    agent.set_installed(args.no_install);

    let (stop_installer, stopped) = mpsc::channel::<()>();
    let installer = (!args.no_install).then(|| {
        let (agent, dirs) = (agent.clone(), dirs.clone());
        let entry = json!({
            "agentSocket": args.plugin_socket,
            "failurePolicy": args.failure_policy,
            "excludeNamespaces": args.exclude_namespaces,
        });
        let entry = entry.as_object().expect("object literal").clone();
        let binary = args.plugin_binary.clone();
        std::thread::spawn(move || loop {
            keep_installed(&agent, &dirs, binary.as_deref(), &entry);
            // The primary CNI may rewrite its config at any time: check again.
            if stopped.recv_timeout(Duration::from_secs(2)) != Err(mpsc::RecvTimeoutError::Timeout)
            {
                return;
            }
        })
    });

    rt.block_on(sigterm.recv());
    info!("SIGTERM: shutting down");
    // The installer must not put the plugin back while we decide (and maybe remove it).
    drop(stop_installer);
    if let Some(t) = installer {
        let _ = t.join();
    }
    let Some((client, (ns, name))) = kube else {
        info!("cluster state from a file: leaving the plugin chained and pods captured");
        return Ok(());
    };
    let state = rt.block_on(async {
        tokio::time::timeout(
            Duration::from_secs(5),
            kube_source::daemonset_state(client, &ns, &name),
        )
        .await
    });
    match state {
        Ok(Ok(DaemonSetState::Running)) => info!(
            daemonset = %format!("{ns}/{name}"),
            "the node agent's DaemonSet stays (restart or upgrade): leaving the plugin chained and pods captured"
        ),
        Ok(Ok(DaemonSetState::Removed(why))) => {
            info!(%why, "the mesh is being removed from this node: uninstalling");
            // Pods an earlier agent captured are only known from the view: give the
            // initial lists a moment, then take those pods over so they are released too.
            let deadline = std::time::Instant::now() + Duration::from_secs(4);
            while !agent.view_loaded() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if agent.view_loaded() {
                agent.reconcile();
            } else {
                warn!("the cluster view is still not loaded: pods captured by an earlier agent keep their redirection");
            }
            let cni = (!args.no_install)
                .then_some((dirs.cni_conf_dir.as_path(), dirs.cni_bin_dir.as_path()));
            let done = agent.uninstall_node(cni);
            info!(
                conflists = ?done.conflists,
                released = done.released.len(),
                swept = done.swept.len(),
                "uninstalled from the node"
            );
        }
        Ok(Err(e)) => warn!(
            error = %e,
            "cannot read the node agent's DaemonSet {ns}/{name}: leaving the plugin chained and pods captured (the safe default)"
        ),
        Err(_) => warn!(
            "the API server did not answer within 5s about DaemonSet {ns}/{name}: leaving the plugin chained and pods captured (the safe default)"
        ),
    }
    Ok(())
}

/// One pass of the installer: the binary in the bin dir, the plugin chained last.
fn keep_installed(
    agent: &Agent,
    dirs: &CniDirs,
    binary: Option<&std::path::Path>,
    entry: &serde_json::Map<String, serde_json::Value>,
) {
    if let Some(bin) = binary {
        if let Err(e) = install::install_binary(bin, &dirs.cni_bin_dir) {
            warn!(error = %e, "installing the plugin binary");
        }
    }
    match install::ensure_chained(&dirs.cni_conf_dir, entry) {
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
