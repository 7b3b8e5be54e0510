//! Ambit's ztunnel: the per-node L4 tunnel.
//!
//! Captured pods' TCP connections arrive on listeners ztunnel opened inside each pod's
//! network namespace (see [`inpod`]); [`proxy`] carries them over HBONE to the destination
//! pod's ztunnel, which enforces [`authz`] and delivers them with the caller's address.
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod cli;
pub mod config;
pub mod drain;
pub mod inpod;
pub mod inpod_server;
pub mod metrics;
pub mod proxy;
pub mod source;
pub mod state;
pub mod stream_source;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::certs::{CertManager, CertificateProvider};
use ambit_core::hbone::client::{Pool, PoolConfig};

use crate::admin::AdminState;
use crate::inpod::InpodManager;
use crate::inpod_server::{InpodHandle, InpodServer};
use crate::metrics::Metrics;
use crate::proxy::ProxyInputs;
use crate::source::ConfigSource;
use anyhow::Context;
use tracing::{info, warn};

pub struct Options {
    /// This node's name; workloads with `node` equal to it are served here.
    pub node: String,
    pub source: Box<dyn ConfigSource>,
    pub certs: Arc<dyn CertificateProvider>,
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    pub pool: PoolConfig,
    /// Node-agent mode: pods come only from the agent over this Unix socket (the config's
    /// `netns` paths are ignored). None: file mode.
    pub inpod_socket: Option<std::path::PathBuf>,
}

/// A running ztunnel's handles (for the binary and in-process tests).
pub struct Ztunnel {
    pub inputs: Arc<ProxyInputs>,
    inpod: Option<InpodHandle>,
}

/// How a terminating ztunnel leaves (see [`Ztunnel::shutdown`]).
#[derive(Clone, Copy, Debug)]
pub struct ShutdownTimeouts {
    /// Longest wait for the node agent to move to a newer ztunnel before the pods' listeners
    /// close.
    pub handover: Duration,
    /// Longest wait, after that, for open connections to end.
    pub drain: Duration,
}

impl Ztunnel {
    /// Loads config, opens the admin ports and starts capturing local pods.
    pub async fn start(opts: Options) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let source_status = Arc::new(crate::source::SourceStatus::default());
        let state = opts
            .source
            .start(metrics.clone(), source_status.clone())
            .await?;
        let inputs = Arc::new(ProxyInputs {
            node: opts.node,
            state,
            certs: CertManager::new(opts.certs),
            pool: Pool::new(opts.pool),
            metrics,
            conns: Arc::default(),
        });
        let manager = InpodManager::new(inputs.clone());
        admin::start(
            AdminState {
                inputs: inputs.clone(),
                pods: manager.status(),
                failures: manager.failures(),
                ready: manager.ready(),
                source: source_status,
            },
            opts.admin_addr,
            opts.metrics_addr,
            opts.readiness_addr,
        )
        .await?;
        let inpod = match &opts.inpod_socket {
            Some(path) => {
                let (server, handle) = InpodServer::bind(path, manager)
                    .with_context(|| format!("opening the node-agent socket {}", path.display()))?;
                tokio::spawn(server.run());
                Some(handle)
            }
            None => {
                tokio::spawn(manager.run_file_mode());
                None
            }
        };
        Ok(Self { inputs, inpod })
    }

    /// Leaves without cutting traffic (node-agent mode; in file mode it returns at once):
    /// the pods' listeners close once the node agent has moved on (a newer ztunnel's
    /// listeners already share their ports), inbound HBONE connections get a GOAWAY so peers
    /// open new streams on the newer ztunnel, and open connections get up to `drain` to end.
    pub async fn shutdown(self, t: ShutdownTimeouts) {
        let Some(inpod) = self.inpod else { return };
        inpod.close_listeners(t.handover).await;
        self.inputs.conns.start_drain();
        let open = self.inputs.conns.active();
        if open > 0 {
            info!(connections = open, timeout = ?t.drain, "draining open connections");
        }
        match self.inputs.conns.wait_idle(t.drain).await {
            0 => info!("every connection ended"),
            left => warn!(
                connections = left,
                "drain timeout: closing the connections still open"
            ),
        }
        inpod.remove_socket();
    }
}
