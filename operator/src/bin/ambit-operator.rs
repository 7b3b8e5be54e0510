//! `ambit-operator`: reconciles the Mesh into the data plane, serves the mesh CA and the config
//! stream, deploys waypoints and writes CRD status. See docs/control-plane.md.
#![forbid(unsafe_code)]

use std::net::SocketAddr;

use ambit_operator::leader::LeaseTimings;
use ambit_operator::runtime::{run, Options};
use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "Ambit's operator: Mesh -> data plane, CA + config stream, waypoints, status"
)]
struct Args {
    /// Namespace the operator runs in (its Lease, CA Secret and DaemonSets live there).
    #[arg(long, env = "POD_NAMESPACE", default_value = "ambit-system")]
    namespace: String,
    /// This replica's name (the leader-election identity).
    #[arg(long, env = "POD_NAME", default_value = "ambit-operator")]
    pod_name: String,
    /// CA and config stream (TLS).
    #[arg(long, default_value = "0.0.0.0:15012")]
    listen: SocketAddr,
    /// Prometheus metrics (/metrics).
    #[arg(long, default_value = "0.0.0.0:15014")]
    metrics: SocketAddr,
    /// Liveness (/healthz) and readiness (/readyz).
    #[arg(long, default_value = "0.0.0.0:15021")]
    health: SocketAddr,
    /// Elect a leader through a Lease (run 2 replicas with it). Without it this replica
    /// always reconciles.
    #[arg(long)]
    leader_elect: bool,
    /// Where proxies reach the control plane (default: ambit-operator.<namespace>.svc:<listen port>).
    #[arg(long)]
    control_plane_address: Option<String>,
    /// Kubernetes API server URL (default: in-cluster config or kubeconfig).
    #[arg(long, env = "AMBIT_API_SERVER")]
    api_server: Option<String>,
    #[arg(long, default_value = "info", env = "RUST_LOG")]
    log_level: String,
    #[arg(long, default_value = "json", value_parser = ["text", "json"])]
    log_format: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level).with_context(|| {
        format!(
            "--log-level {:?} is not a valid filter (try info or debug)",
            args.log_level
        )
    })?;
    if args.log_format == "json" {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        tracing_subscriber::fmt().with_env_filter(filter).init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut config = match &args.api_server {
            Some(url) => kube::Config::new(
                url.parse()
                    .with_context(|| format!("--api-server {url:?} is not a URL"))?,
            ),
            None => kube::Config::infer().await.context(
                "no Kubernetes API: not in a cluster and no kubeconfig (or pass --api-server)",
            )?,
        };
        // Audit logs and API server metrics name us.
        config.headers.push((
            http::header::USER_AGENT,
            http::HeaderValue::from_static(concat!("ambit-operator/", env!("CARGO_PKG_VERSION"))),
        ));
        let client = kube::Client::try_from(config)?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
            let _ = stop_tx.send(true);
        });
        run(
            client,
            Options {
                namespace: args.namespace,
                pod_name: args.pod_name,
                listen: args.listen,
                metrics: args.metrics,
                health: args.health,
                leader_elect: args.leader_elect,
                control_plane_address: args.control_plane_address,
                lease: LeaseTimings::default(),
            },
            stop_rx,
        )
        .await
    })
}
