//! The `ztunnel` command line (shared by the binary and the benchmark, which re-executes it).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::source::{ConfigSource, FileSource};
use crate::stream_source::StreamSource;
use crate::{Options, ShutdownTimeouts, Ztunnel};
use ambit_core::certs::{CertificateProvider, LocalCa};
use ambit_core::config_source::{local_ca, read_pem, ControlPlaneArgs};
use ambit_core::control::RemoteCa;
use ambit_core::hbone::client::PoolConfig;
use anyhow::Context;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Ambit's per-node L4 tunnel: mTLS (HBONE) for every captured pod on this node"
)]
pub struct Args {
    /// Name of the node this ztunnel serves.
    #[arg(long, env = "NODE_NAME")]
    node: String,
    #[command(flatten)]
    control: ControlPlaneArgs,
    /// File mode: mesh config (workloads, services, policies) as YAML; re-read when it changes.
    #[arg(long, env = "AMBIT_CONFIG")]
    config: Option<PathBuf>,
    /// How often to check the config file for changes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    reload_interval: Duration,
    /// File mode: mesh CA certificate (PEM) used to issue workload certificates locally.
    #[arg(long, env = "AMBIT_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// File mode: mesh CA private key (PKCS#8 PEM).
    #[arg(long, env = "AMBIT_CA_KEY")]
    ca_key: Option<PathBuf>,
    /// Extra trust roots (PEM), e.g. the next root during a root rotation.
    #[arg(long)]
    extra_root: Vec<PathBuf>,
    /// SPIFFE trust domain of the CA.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime of workload certificates; they rotate at half of it.
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    leaf_ttl: Duration,
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15020")]
    metrics_addr: SocketAddr,
    #[arg(long, default_value = "0.0.0.0:15021")]
    readiness_addr: SocketAddr,
    /// Tokio worker threads (ztunnel is I/O bound; 2 suits most nodes).
    #[arg(long, default_value_t = 2)]
    worker_threads: usize,
    /// Close pooled HBONE connections idle this long.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pool_idle_timeout: Duration,
    /// On SIGTERM (node-agent mode): longest wait for the node agent to move to a newer
    /// ztunnel before the pods' listeners close.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    handover_timeout: Duration,
    /// On SIGTERM (node-agent mode), once the listeners are closed: longest wait for open
    /// connections to end. Keep it below the pod's terminationGracePeriodSeconds.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// Node-agent mode: listen on this Unix (SOCK_SEQPACKET) socket for the node agent, which
    /// hands over each pod's network namespace; pods then come only from the agent and the
    /// config's `netns` paths are ignored. E.g. /var/run/ambit/ztunnel.sock.
    #[arg(long, env = "AMBIT_INPOD_SOCKET")]
    inpod_socket: Option<PathBuf>,
    /// Log format.
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

type Mode = (Box<dyn ConfigSource>, Arc<dyn CertificateProvider>, String);

/// Exactly one of: the control plane (config stream + remote CA), or a file and a local CA.
fn mode(args: &Args) -> anyhow::Result<Mode> {
    let file_flags = [
        ("--config", args.config.is_some()),
        ("--ca-cert", args.ca_cert.is_some()),
        ("--ca-key", args.ca_key.is_some()),
        ("--extra-root", !args.extra_root.is_empty()),
    ];
    if let Some(endpoint) =
        args.control
            .endpoint(&args.trust_domain, &file_flags, "certificates")?
    {
        let from = format!("control plane {}", endpoint.address);
        let source = Box::new(StreamSource {
            endpoint: endpoint.clone(),
            node: args.node.clone(),
            trust_domain: args.trust_domain.clone(),
        });
        return Ok((source, Arc::new(RemoteCa { endpoint }), from));
    }
    let (Some(config), Some(ca_cert), Some(ca_key)) = (&args.config, &args.ca_cert, &args.ca_key)
    else {
        anyhow::bail!(
            "give either --control-plane HOST:PORT, or all of --config, --ca-cert and --ca-key"
        );
    };
    let ca = local_ca(&args.trust_domain, ca_cert, ca_key)?;
    let mut extra_roots = vec![];
    for path in &args.extra_root {
        let pem = read_pem(path, "extra trust root")?;
        for cert in rustls_pemfile::certs(&mut pem.as_bytes()) {
            extra_roots.push(cert.with_context(|| format!("parsing {}", path.display()))?);
        }
    }
    let source = Box::new(FileSource {
        path: config.clone(),
        interval: args.reload_interval,
        trust_domain: Some(args.trust_domain.clone()),
    });
    let certs = Arc::new(LocalCa {
        ca: Arc::new(ca),
        leaf_ttl: args.leaf_ttl,
        extra_roots,
    });
    Ok((source, certs, config.display().to_string()))
}

/// Parses `args` (argv without the program name) and runs ztunnel until SIGTERM.
pub fn main_with_args<I: IntoIterator<Item = std::ffi::OsString>>(args: I) -> anyhow::Result<()> {
    let args = Args::parse_from(std::iter::once("ztunnel".into()).chain(args));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if args.log_format == "json" {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads)
        .enable_all()
        .build()?;
    let (source, certs, from) = mode(&args)?;
    runtime.block_on(async move {
        let zt = Ztunnel::start(Options {
            node: args.node.clone(),
            source,
            certs,
            admin_addr: args.admin_addr,
            metrics_addr: args.metrics_addr,
            readiness_addr: args.readiness_addr,
            pool: PoolConfig {
                idle_timeout: args.pool_idle_timeout,
                ..PoolConfig::default()
            },
            inpod_socket: args.inpod_socket.clone(),
        })
        .await?;
        info!(node = %args.node, config = %from, "ztunnel started");
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: shutting down"),
            _ = tokio::signal::ctrl_c() => info!("interrupted: shutting down"),
        }
        let timeouts = ShutdownTimeouts {
            handover: args.handover_timeout,
            drain: args.drain_timeout,
        };
        tokio::select! {
            () = zt.shutdown(timeouts) => {}
            _ = term.recv() => info!("second SIGTERM: leaving now"),
        }
        anyhow::Ok(())
    })
}
