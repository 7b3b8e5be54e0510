//! The operator's control-plane server on port 15012: the mesh CA (`POST /ca/v1/sign`) and
//! the per-proxy config streams (`POST /config/v1/stream`), over TLS 1.3 + HTTP/2.
//!
//! Proxies authenticate with their ServiceAccount token ([`auth`]); what each may do is
//! decided in [`authz`]. Reconcilers push compiled configs through [`ConfigServer::publish`]
//! (get one with [`Server::publisher`]). See docs/control-plane.md for the protocol.

pub mod auth;
pub mod authz;
pub mod config_server;
mod http;
pub mod kube_review;
pub mod metrics;
pub mod serving;
mod stream_session;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ambit_core::ca::{CertificateAuthority, DEFAULT_LEAF_TTL};
use ambit_core::control::{OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT};
use ambit_core::Identity;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

pub use auth::{CachedReviewer, Caller, ReviewError, StaticReviewer, TokenReviewer};
pub use authz::{Authorizer, StaticIndex, WorkloadIndex};
pub use config_server::{ConfigServer, NackRecord, ProxyStatus};
pub use metrics::ControlMetrics;

pub struct ServerConfig {
    pub listen: SocketAddr,
    pub ca: Arc<CertificateAuthority>,
    pub reviewer: Arc<dyn TokenReviewer>,
    pub index: Arc<dyn WorkloadIndex>,
    pub authorizer: Authorizer,
    /// Namespace the operator runs in (its identity and DNS name derive from it).
    pub namespace: String,
    /// Lifetime of issued workload certificates (Mesh `certificateTtl`).
    pub leaf_ttl: Duration,
    /// Heartbeat period on config streams; a peer silent for `peer_timeout` is dropped.
    pub heartbeat: Duration,
    pub peer_timeout: Duration,
}

impl ServerConfig {
    /// Defaults: namespace `ambit-system`, 24 h leaves, 10 s heartbeats, 30 s peer timeout.
    pub fn new(
        listen: SocketAddr,
        ca: Arc<CertificateAuthority>,
        reviewer: Arc<dyn TokenReviewer>,
        index: Arc<dyn WorkloadIndex>,
    ) -> Self {
        Self {
            listen,
            ca,
            reviewer,
            index,
            authorizer: Authorizer::default(),
            namespace: OPERATOR_NAMESPACE.into(),
            leaf_ttl: DEFAULT_LEAF_TTL,
            heartbeat: Duration::from_secs(10),
            peer_timeout: Duration::from_secs(30),
        }
    }

    /// The operator's SPIFFE ID, which proxies expect.
    pub fn identity(&self) -> Result<Identity, ServerError> {
        Identity::new(
            self.ca.trust_domain(),
            &self.namespace,
            OPERATOR_SERVICE_ACCOUNT,
        )
        .map_err(|e| ServerError::Config(e.to_string()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("control plane: listening on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("control plane: {0}")]
    Config(String),
    #[error(transparent)]
    Cert(#[from] serving::ServingCertError),
}

/// The lifetime of issued workload certificates, shared between the CA handler and whoever
/// follows the Mesh (a lock-free read per signing request).
#[derive(Clone, Debug)]
pub struct LeafTtl(Arc<AtomicU64>);

impl LeafTtl {
    pub fn new(ttl: Duration) -> Self {
        Self(Arc::new(AtomicU64::new(ttl.as_millis() as u64)))
    }

    pub fn get(&self) -> Duration {
        Duration::from_millis(self.0.load(Ordering::Relaxed))
    }

    /// Sets the lifetime of certificates issued from now on; returns the previous one.
    pub fn set(&self, ttl: Duration) -> Duration {
        Duration::from_millis(self.0.swap(ttl.as_millis() as u64, Ordering::Relaxed))
    }
}

/// What request handlers share.
pub(crate) struct Shared {
    ca: Arc<CertificateAuthority>,
    reviewer: Arc<dyn TokenReviewer>,
    index: Arc<dyn WorkloadIndex>,
    authorizer: Authorizer,
    leaf_ttl: LeafTtl,
    config: ConfigServer,
    metrics: Arc<ControlMetrics>,
}

pub struct Server {
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    _cert: Arc<serving::ServingCert>,
}

impl Server {
    /// Binds `cfg.listen` and issues the serving certificate.
    pub async fn new(cfg: ServerConfig) -> Result<Self, ServerError> {
        let listener = TcpListener::bind(cfg.listen)
            .await
            .map_err(|source| ServerError::Bind {
                addr: cfg.listen,
                source,
            })?;
        Self::with_listener(listener, cfg)
    }

    /// Serves on an already bound listener (`cfg.listen` is ignored), e.g. one opened inside
    /// another network namespace.
    pub fn with_listener(listener: TcpListener, cfg: ServerConfig) -> Result<Self, ServerError> {
        let identity = cfg.identity()?;
        let dns = format!("{OPERATOR_SERVICE_ACCOUNT}.{}.svc", cfg.namespace);
        let cert = serving::ServingCert::start(cfg.ca.clone(), identity, dns, cfg.leaf_ttl)?;
        let metrics = Arc::new(ControlMetrics::default());
        let shared = Arc::new(Shared {
            config: ConfigServer::new(metrics.clone(), cfg.heartbeat, cfg.peer_timeout),
            ca: cfg.ca,
            reviewer: cfg.reviewer,
            index: cfg.index,
            authorizer: cfg.authorizer,
            leaf_ttl: LeafTtl::new(cfg.leaf_ttl),
            metrics,
        });
        Ok(Self {
            listener,
            tls: cert.server_config(),
            shared,
            _cert: cert,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The handle reconcilers publish configs through (and read NACKs from).
    pub fn publisher(&self) -> ConfigServer {
        self.shared.config.clone()
    }

    pub fn metrics(&self) -> Arc<ControlMetrics> {
        self.shared.metrics.clone()
    }

    /// The lifetime of the workload certificates this server issues, changeable while it runs
    /// (the Mesh's `certificateTtl`).
    pub fn leaf_ttl(&self) -> LeafTtl {
        self.shared.leaf_ttl.clone()
    }

    /// Accepts connections until the future is dropped; dropping it also closes every
    /// connection and stream it serves.
    pub async fn serve(self) -> std::io::Result<()> {
        info!(addr = %self.listener.local_addr()?, "control plane serving CA and config");
        let mut conns = JoinSet::new();
        loop {
            tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let _ = tcp.set_nodelay(true);
                        conns.spawn(connection(tcp, peer, self.tls.clone(), self.shared.clone()));
                    }
                    // E.g. out of file descriptors: keep serving the connections we have.
                    Err(e) => {
                        warn!(error = %e, "control plane: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
    }
}

async fn connection(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
) {
    let tls = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio_rustls::TlsAcceptor::from(tls).accept(tcp),
    )
    .await
    {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return debug!(%peer, error = %e, "control plane: TLS handshake failed"),
        Err(_) => return debug!(%peer, "control plane: TLS handshake timed out"),
    };
    let mut conn = match h2::server::handshake(tls).await {
        Ok(c) => c,
        Err(e) => return debug!(%peer, error = %e, "control plane: HTTP/2 handshake failed"),
    };
    // Streams die with their connection (and with the server).
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((req, respond))) => {
                    streams.spawn(http::handle(req, respond, shared.clone()));
                }
                Some(Err(e)) => return debug!(%peer, error = %e, "control plane: HTTP/2 error"),
                None => return,
            },
            Some(_) = streams.join_next(), if !streams.is_empty() => {}
        }
    }
}
