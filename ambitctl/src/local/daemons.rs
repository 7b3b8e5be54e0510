//! The sandbox's host-side background processes, run from this binary (hidden subcommands)
//! so one `ambitctl` is all the sandbox needs besides the data-plane binaries.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

#[derive(clap::Args)]
pub struct ApisimArgs {
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Written with the server's URL once it listens.
    #[arg(long)]
    url_file: PathBuf,
}

/// The in-memory API server until SIGTERM.
pub async fn apisim(args: ApisimArgs) -> anyhow::Result<()> {
    let server = ambit_apisim::ApiServer::start(args.listen).await?;
    let tmp = args.url_file.with_extension("tmp");
    std::fs::write(&tmp, server.url())?;
    std::fs::rename(&tmp, &args.url_file)?;
    eprintln!("apisim serving on {}", server.url());
    wait_for_term().await?;
    server.shutdown().await;
    Ok(())
}

async fn wait_for_term() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}

#[derive(clap::Args)]
pub struct OperatorArgs {
    #[arg(long)]
    api_server: String,
    /// CA and config stream (TLS), on the host's cluster-bridge address.
    #[arg(long)]
    listen: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:0")]
    metrics: SocketAddr,
    #[arg(long, default_value = "127.0.0.1:0")]
    health: SocketAddr,
}

/// The operator (`ambit_operator::runtime::run`) until SIGTERM.
pub fn operator(args: OperatorArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,kube_client=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let url = args
            .api_server
            .parse()
            .with_context(|| format!("--api-server {:?} is not a URL", args.api_server))?;
        let client = kube::Client::try_from(kube::Config::new(url))?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let _ = wait_for_term().await;
            let _ = stop_tx.send(true);
        });
        ambit_operator::runtime::run(
            client,
            ambit_operator::runtime::Options {
                namespace: super::cluster::SYSTEM_NS.into(),
                pod_name: "ambit-operator-0".into(),
                listen: args.listen,
                metrics: args.metrics,
                health: args.health,
                // Without election, runtime::run reads the dropped leadership channel as a
                // lost lease and exits; one replica wins its own Lease at once anyway.
                leader_elect: true,
                control_plane_address: Some(args.listen.to_string()),
                lease: ambit_operator::leader::LeaseTimings::default(),
            },
            stop_rx,
        )
        .await
    })
}
