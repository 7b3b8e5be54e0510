//! The operator as a separate process, so its memory can be read from /proc alone: the
//! benchmark re-executes itself as `ambit-bench cp-operator ...`, which runs exactly what the
//! `ambit-operator` binary runs (`runtime::run` on a 2-worker runtime) against the in-memory
//! API server of the benchmark process.

use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};

use ambit_operator::leader::LeaseTimings;
use ambit_operator::runtime::{run, Options};
use anyhow::Context;
use clap::Parser;

/// Name of the hidden subcommand.
pub const SUBCOMMAND: &str = "cp-operator";

#[derive(Parser, Debug)]
struct OperatorArgs {
    #[arg(long)]
    api_server: String,
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long)]
    metrics: SocketAddr,
    #[arg(long)]
    health: SocketAddr,
}

/// The hidden `cp-operator` subcommand (`args` excludes the program and subcommand names).
pub fn operator_main(args: impl Iterator<Item = std::ffi::OsString>) -> anyhow::Result<()> {
    let args = OperatorArgs::parse_from(std::iter::once(SUBCOMMAND.into()).chain(args));
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let url = args
            .api_server
            .parse()
            .with_context(|| format!("--api-server {:?} is not a URL", args.api_server))?;
        let client = kube::Client::try_from(kube::Config::new(url))?;
        // Runs until the benchmark kills the process.
        let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        run(
            client,
            Options {
                namespace: "ambit-system".into(),
                pod_name: "ambit-operator-bench".into(),
                listen: args.listen,
                metrics: args.metrics,
                health: args.health,
                // As deployed (the chart runs it with leader election). Also, without it the
                // runtime drops its leadership sender and exits at once ("lost the leader
                // lease"), reported to the operator's owner.
                leader_elect: true,
                control_plane_address: Some(args.listen.to_string()),
                lease: LeaseTimings::default(),
            },
            stop_rx,
        )
        .await
    })
}

/// A free loopback port (the child binds it a moment later; nothing else here races for it).
fn free_port() -> anyhow::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0").context("finding a free loopback port")?;
    Ok(l.local_addr()?)
}

/// The running operator child; killed when dropped.
pub struct OperatorProcess {
    child: Child,
    pub listen: SocketAddr,
}

impl OperatorProcess {
    pub fn spawn(api_server: &str) -> anyhow::Result<Self> {
        let listen = free_port()?;
        let exe = std::env::current_exe().context("locating the benchmark binary")?;
        let child = Command::new(exe)
            .arg(SUBCOMMAND)
            .args(["--api-server", api_server])
            .args(["--listen", &listen.to_string()])
            .args(["--metrics", &free_port()?.to_string()])
            .args(["--health", &free_port()?.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting the operator process")?;
        Ok(Self { child, listen })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails when the operator has exited (it should run until killed).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => anyhow::bail!("the operator process exited early: {status}"),
            None => Ok(()),
        }
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
