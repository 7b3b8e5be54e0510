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
pub mod inpod;
pub mod inpod_server;
pub mod metrics;
pub mod proxy;
pub mod source;
pub mod state;
pub mod stream_source;

use std::net::SocketAddr;
use std::sync::Arc;

use ambit_core::certs::{CertManager, CertificateProvider};
use ambit_core::hbone::client::{Pool, PoolConfig};

use crate::admin::AdminState;
use crate::inpod::InpodManager;
use crate::inpod_server::InpodServer;
use crate::metrics::Metrics;
use crate::proxy::ProxyInputs;
use crate::source::ConfigSource;
use anyhow::Context;

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
        match &opts.inpod_socket {
            Some(path) => {
                let server = InpodServer::bind(path, manager)
                    .with_context(|| format!("opening the node-agent socket {}", path.display()))?;
                tokio::spawn(server.run());
            }
            None => {
                tokio::spawn(manager.run_file_mode());
            }
        }
        Ok(Self { inputs })
    }
}
