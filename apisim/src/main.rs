//! `ambit-apisim`: run the in-memory API server on its own, for debugging and the sandbox.
#![forbid(unsafe_code)]

use ambit_apisim::{ApiServer, ApiServerConfig};
use clap::Parser;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    about = "A small in-memory Kubernetes API server (test and sandbox use only: no authentication)"
)]
struct Args {
    /// Address to serve on. Keep it on loopback: requests are not authenticated.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// JSON snapshot loaded at start (if present) and written at shutdown.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Watch events kept for resuming watches.
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// Bookmark period for watches that allow bookmarks.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    bookmark_interval: std::time::Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    if !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "apisim has no authentication; anyone who can reach this address can change the cluster");
    }
    let config = ApiServerConfig {
        history_limit: args.history,
        bookmark_interval: args.bookmark_interval,
        state_file: args.state,
        ..Default::default()
    };
    let server = ApiServer::start_with(args.listen, config).await?;
    println!("{}", server.url());
    // Both Ctrl-C and SIGTERM (how the sandbox stops it) save the state file.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    server.shutdown().await;
    Ok(())
}
