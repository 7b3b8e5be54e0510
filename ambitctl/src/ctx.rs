//! Global flags and what they resolve to: the API server and the proxies.

use std::path::PathBuf;

use crate::cluster::{self, ServerSource};
use crate::error::Result;
use crate::output::Format;
use crate::targets::{self, Endpoint, SandboxState, Targets};

/// Flags every command accepts.
#[derive(clap::Args, Clone, Debug)]
pub struct GlobalArgs {
    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// API server URL (e.g. http://127.0.0.1:6443). Default: the sandbox's, else your kubeconfig.
    #[arg(long, global = true, env = "AMBIT_SERVER")]
    pub server: Option<String>,
    /// Sandbox state file (written by `ambitctl local up`).
    #[arg(long, global = true, env = "AMBIT_SANDBOX_STATE", value_name = "PATH")]
    pub sandbox_state: Option<PathBuf>,
    /// A ztunnel admin address to use for NODE (repeatable), e.g. node-1=10.0.0.5:15000.
    #[arg(long, global = true, value_name = "NODE=ADDR", value_parser = targets::parse_pair)]
    pub ztunnel_admin: Vec<(String, String)>,
    /// An extra Prometheus endpoint to scrape (repeatable), e.g. 10.0.0.5:15020.
    #[arg(long, global = true, value_name = "ADDR")]
    pub metrics: Vec<String>,
}

pub struct Ctx {
    pub args: GlobalArgs,
    pub state: Option<SandboxState>,
}

impl Ctx {
    pub fn new(args: GlobalArgs) -> Result<Self> {
        let (path, explicit) = match &args.sandbox_state {
            Some(p) => (p.clone(), true),
            None => (PathBuf::from(targets::DEFAULT_STATE_PATH), false),
        };
        let state = SandboxState::load(&path, explicit)?;
        Ok(Self { args, state })
    }

    pub fn format(&self) -> Format {
        self.args.output
    }

    /// `--server` / `AMBIT_SERVER`, then the sandbox state's, then kubeconfig.
    pub fn server_source(&self) -> ServerSource {
        if let Some(url) = &self.args.server {
            return ServerSource::Url(url.clone());
        }
        if let Some(url) = self.state.as_ref().and_then(|s| s.api_server.clone()) {
            return ServerSource::Url(url);
        }
        ServerSource::Kubeconfig
    }

    pub async fn client(&self) -> Result<kube::Client> {
        cluster::client(&self.server_source()).await
    }

    /// A client when one is configured (server flag or sandbox); `None` rather than an error
    /// when nothing points at an API server and there is no kubeconfig.
    pub async fn optional_client(&self) -> Option<kube::Client> {
        cluster::client(&self.server_source()).await.ok()
    }

    /// The proxies: the sandbox state and flags; with neither, the cluster's pods via `client`.
    pub async fn targets(&self, client: Option<&kube::Client>) -> Result<Targets> {
        let mut t = self
            .state
            .as_ref()
            .map(Targets::from_state)
            .unwrap_or_default();
        t.add_flag_nodes(&self.args.ztunnel_admin);
        t.extra_metrics = self
            .args
            .metrics
            .iter()
            .map(|a| Endpoint::direct(a, None))
            .collect();
        if t.nodes.is_empty() && t.waypoints.is_empty() {
            if let Some(c) = client {
                let found = cluster::discover_targets(c).await?;
                t.nodes = found.nodes;
                t.waypoints = found.waypoints;
            }
        }
        Ok(t)
    }
}
