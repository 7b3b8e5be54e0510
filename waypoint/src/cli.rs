//! The `waypoint` command line. File mode: config from a YAML file, certificates from a local
//! CA loaded from `--ca-cert/--ca-key` (as ztunnel's file mode does).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::ca::CertificateAuthority;
use ambit_core::certs::LocalCa;
use ambit_core::hbone::client::PoolConfig;
use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

use crate::{Options, Waypoint, DEFAULT_BODY_LIMIT};

#[derive(Parser, Debug)]
#[command(version, about = "Ambit's per-namespace L7 proxy (waypoint)")]
pub struct Args {
    /// This waypoint's name (Services and workloads name it in `waypoint`).
    #[arg(long, env = "WAYPOINT_NAME")]
    name: String,
    /// This waypoint's namespace.
    #[arg(long, env = "POD_NAMESPACE")]
    namespace: String,
    /// Service account (SPIFFE identity) of the waypoint; defaults to --name.
    #[arg(long, env = "SERVICE_ACCOUNT")]
    service_account: Option<String>,
    /// Mesh config (workloads, services, policies, routes) as YAML; re-read when it changes.
    #[arg(long, env = "AMBIT_CONFIG")]
    config: PathBuf,
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    reload_interval: Duration,
    /// Mesh CA certificate (PEM) used to issue the waypoint's certificate locally.
    #[arg(long, env = "AMBIT_CA_CERT")]
    ca_cert: PathBuf,
    /// Mesh CA private key (PKCS#8 PEM).
    #[arg(long, env = "AMBIT_CA_KEY")]
    ca_key: PathBuf,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    leaf_ttl: Duration,
    #[arg(long, default_value = "0.0.0.0:15008")]
    hbone_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15021")]
    readiness_addr: SocketAddr,
    /// JSON access-log lines on stdout, one per request.
    #[arg(long, env = "AMBIT_ACCESS_LOG")]
    access_log: bool,
    /// Request bodies up to this many bytes are buffered so they can be retried and mirrored.
    #[arg(long, default_value_t = DEFAULT_BODY_LIMIT)]
    body_limit: usize,
    /// On SIGTERM, wait this long for requests in flight.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pool_idle_timeout: Duration,
    #[arg(long, default_value_t = 2)]
    worker_threads: usize,
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

fn read_pem(path: &PathBuf, what: &str) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {what} from {}", path.display()))
}

/// Parses `args` (argv without the program name) and runs the waypoint until SIGTERM.
pub fn main_with_args<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> anyhow::Result<()> {
    let args = Args::parse_from(std::iter::once("waypoint".into()).chain(args));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Logs go to stderr: stdout carries the access log.
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if args.log_format == "json" {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let ca = CertificateAuthority::from_pem(
        &args.trust_domain,
        &read_pem(&args.ca_cert, "CA certificate")?,
        &read_pem(&args.ca_key, "CA key")?,
    )
    .context("loading the mesh CA")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let wp = Waypoint::start(Options {
            service_account: args.service_account.clone().unwrap_or_else(|| args.name.clone()),
            name: args.name.clone(),
            namespace: args.namespace.clone(),
            trust_domain: args.trust_domain.clone(),
            config: args.config.clone(),
            reload_interval: args.reload_interval,
            certs: Arc::new(LocalCa {
                ca: Arc::new(ca),
                leaf_ttl: args.leaf_ttl,
                extra_roots: vec![],
            }),
            hbone_addr: args.hbone_addr,
            metrics_addr: args.metrics_addr,
            readiness_addr: args.readiness_addr,
            access_log: args.access_log,
            body_limit: args.body_limit,
            pool: PoolConfig {
                idle_timeout: args.pool_idle_timeout,
                ..PoolConfig::default()
            },
        })
        .await?;
        info!(name = %args.name, namespace = %args.namespace, config = %args.config.display(), "waypoint started");
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => info!("interrupted: draining"),
        }
        wp.drain(args.drain_timeout).await;
        anyhow::Ok(())
    })
}
