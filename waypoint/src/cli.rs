//! The `waypoint` command line, with ztunnel's two modes:
//! - stream mode (`--control-plane HOST:PORT`, what the operator renders): config from the
//!   operator's config stream (target `waypoint/<namespace>/<service account>`) and the
//!   certificate from its CA, authenticated by the projected ServiceAccount token;
//! - file mode (`--config` + `--ca-cert` + `--ca-key`, tests and the sandbox): config from a
//!   YAML file, certificate from a local CA.
//!
//! Exactly one mode must be given.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::certs::{CertificateProvider, LocalCa};
use ambit_core::config_source::{local_ca, ControlPlaneArgs};
use ambit_core::control::RemoteCa;
use ambit_core::hbone::client::PoolConfig;
use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing::info;

use crate::{ConfigMode, Options, Waypoint, DEFAULT_BODY_LIMIT};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Ambit's per-namespace L7 proxy (waypoint)",
    // Same paths as ztunnel's; only the help names the waypoint's own ConfigMap.
    mut_arg("root_cert", |a| a.help(
        "The mesh root certificate the control plane's certificate must chain to (stream mode; \
         the operator mounts ConfigMap <waypoint>-root-cert here)"
    )),
    mut_arg("token_file", |a| a.help(
        "Projected ServiceAccount token sent to the control plane (stream mode; re-read per \
         connection, kubelet rotates it)"
    ))
)]
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
    #[command(flatten)]
    control: ControlPlaneArgs,
    /// File mode: mesh config (workloads, services, policies, routes) as YAML; re-read when it
    /// changes.
    #[arg(long, env = "AMBIT_CONFIG")]
    config: Option<PathBuf>,
    /// File mode: how often to check the config file for changes.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    reload_interval: Duration,
    /// File mode: mesh CA certificate (PEM) used to issue the waypoint's certificate locally.
    #[arg(long, env = "AMBIT_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// File mode: mesh CA private key (PKCS#8 PEM).
    #[arg(long, env = "AMBIT_CA_KEY")]
    ca_key: Option<PathBuf>,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, default_value = "24h", value_parser = humantime::parse_duration)]
    leaf_ttl: Duration,
    #[arg(long, default_value = "0.0.0.0:15008")]
    hbone_addr: SocketAddr,
    /// Admin endpoints (/config_dump, /certs); keep it on localhost.
    #[arg(long, default_value = "127.0.0.1:15000")]
    admin_addr: SocketAddr,
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

/// Exactly one of: the control plane (config stream + remote CA), or a file and a local CA.
/// Returns the config mode, the certificate provider and a description for the log.
pub fn mode(args: &Args) -> anyhow::Result<(ConfigMode, Arc<dyn CertificateProvider>, String)> {
    let file_flags = [
        ("--config", args.config.is_some()),
        ("--ca-cert", args.ca_cert.is_some()),
        ("--ca-key", args.ca_key.is_some()),
    ];
    if let Some(endpoint) =
        args.control
            .endpoint(&args.trust_domain, &file_flags, "the certificate")?
    {
        let from = format!("control plane {}", endpoint.address);
        let certs = Arc::new(RemoteCa {
            endpoint: endpoint.clone(),
        });
        return Ok((ConfigMode::ControlPlane { endpoint }, certs, from));
    }
    let (Some(config), Some(ca_cert), Some(ca_key)) = (&args.config, &args.ca_cert, &args.ca_key)
    else {
        let missing: Vec<&str> = file_flags.iter().filter(|f| !f.1).map(|f| f.0).collect();
        anyhow::bail!(
            "give either --control-plane HOST:PORT, or all of --config, --ca-cert and --ca-key (missing {})",
            missing.join(", ")
        );
    };
    let certs = Arc::new(LocalCa {
        ca: Arc::new(local_ca(&args.trust_domain, ca_cert, ca_key)?),
        leaf_ttl: args.leaf_ttl,
        extra_roots: vec![],
    });
    let mode = ConfigMode::File {
        path: config.clone(),
        reload_interval: args.reload_interval,
    };
    Ok((mode, certs, config.display().to_string()))
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
    let (config, certs, from) = mode(&args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.worker_threads)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let wp = Waypoint::start(Options {
            service_account: args
                .service_account
                .clone()
                .unwrap_or_else(|| args.name.clone()),
            name: args.name.clone(),
            namespace: args.namespace.clone(),
            trust_domain: args.trust_domain.clone(),
            config,
            certs,
            hbone_addr: args.hbone_addr,
            admin_addr: args.admin_addr,
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
        info!(name = %args.name, namespace = %args.namespace, config = %from, "waypoint started");
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => info!("SIGTERM: draining"),
            _ = tokio::signal::ctrl_c() => info!("interrupted: draining"),
        }
        wp.drain(args.drain_timeout).await;
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ambit_core::ca::CertificateAuthority;

    fn args(extra: &[&str]) -> Args {
        let base = ["waypoint", "--name", "wp", "--namespace", "shop"];
        Args::try_parse_from(base.iter().chain(extra)).unwrap()
    }

    fn err(extra: &[&str]) -> String {
        match mode(&args(extra)) {
            Ok(_) => panic!("{extra:?} was accepted"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn exactly_one_mode_with_errors_that_name_the_flags() {
        let e = err(&[]);
        assert!(
            e.contains("--control-plane") && e.contains("missing --config, --ca-cert, --ca-key"),
            "{e}"
        );
        let e = err(&["--config", "m.yaml"]);
        assert!(e.contains("missing --ca-cert, --ca-key"), "{e}");
        let e = err(&[
            "--control-plane",
            "op:15012",
            "--config",
            "m.yaml",
            "--ca-key",
            "k",
        ]);
        assert!(e.contains("drop --config, --ca-key"), "{e}");
    }

    #[test]
    fn stream_mode_fails_fast_on_a_missing_root_or_token() {
        let dir = std::env::temp_dir().join(format!("wp-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let root = dir.join("root.pem");
        let token = dir.join("token");
        let (root_s, token_s) = (root.to_str().unwrap(), token.to_str().unwrap());
        let cp = [
            "--control-plane",
            "op:15012",
            "--root-cert",
            root_s,
            "--token-file",
            token_s,
        ];
        let e = err(&cp);
        assert!(e.contains("root.pem") && e.contains("--root-cert"), "{e}");
        let ca =
            CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        std::fs::write(&root, ca.root_pem()).unwrap();
        let e = err(&cp);
        assert!(e.contains("token") && e.contains("--token-file"), "{e}");
        std::fs::write(&token, "t0k3n\n").unwrap();
        let (mode, _, from) = mode(&args(&cp)).unwrap();
        assert_eq!(from, "control plane op:15012");
        let ConfigMode::ControlPlane { endpoint } = mode else {
            panic!("file mode selected")
        };
        assert_eq!(
            endpoint.operator_identity.to_string(),
            "spiffe://cluster.local/ns/ambit-system/sa/ambit-operator"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
