//! Ambit's waypoint: the per-namespace L7 proxy. It terminates HBONE tunnels that ztunnels send
//! for Services (or workloads) using it, parses HTTP/1.1 and HTTP/2 (gRPC included), applies
//! routes (matches, weighted backends, timeouts, retries, faults, mirroring, header changes) and
//! L7 authorization, balances over endpoints ([`balance`]) and re-originates HBONE to the
//! chosen endpoint. Anything that isn't HTTP is passed through as opaque TCP.
//!
//! See `docs/waypoint.md` for the behaviour users see.
#![forbid(unsafe_code)]
pub mod balance;

pub mod admin;
pub mod authz;
pub mod backends;
pub mod body;
pub mod cli;
pub mod detect;
pub mod io;
pub mod metrics;
pub mod proxy;
pub mod retry;
pub mod routes;
pub mod source;
pub mod state;
pub mod stream_source;
pub mod telemetry;
pub mod upstream;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_core::certs::{CertManager, CertificateProvider};
use ambit_core::control::Endpoint;
use ambit_core::hbone::client::{Pool, PoolConfig};
use ambit_core::meshconfig::WaypointRef;
use ambit_core::Identity;
use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::admin::{Admin, SourceInfo};
use crate::backends::Backends;
use crate::metrics::Metrics;
use crate::proxy::Shared;
use crate::source::FileSource;
use crate::stream_source::StreamSource;
use crate::upstream::Upstream;

/// Default size up to which request bodies are buffered (and so can be retried or mirrored).
pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// Where config (and, with it, certificates) come from.
pub enum ConfigMode {
    /// A local `MeshConfig` YAML file, polled every `reload_interval`.
    File {
        path: PathBuf,
        reload_interval: Duration,
    },
    /// The operator's config stream, target `waypoint/<namespace>/<service account>`.
    ControlPlane { endpoint: Endpoint },
}

pub struct Options {
    /// The waypoint's name; Services and workloads name it in their `waypoint` field.
    pub name: String,
    pub namespace: String,
    /// Service account of the waypoint's pods (its SPIFFE identity); usually `name`.
    pub service_account: String,
    pub trust_domain: String,
    pub config: ConfigMode,
    pub certs: Arc<dyn CertificateProvider>,
    pub hbone_addr: SocketAddr,
    /// Admin (`/config_dump`, `/certs`); localhost only.
    pub admin_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub readiness_addr: SocketAddr,
    pub access_log: bool,
    pub body_limit: usize,
    pub pool: PoolConfig,
}

/// A running waypoint. Dropping it stops the listeners; [`Waypoint::drain`] stops gracefully.
pub struct Waypoint {
    pub shared: Arc<Shared>,
    pub hbone_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    draining: watch::Sender<bool>,
    ready: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Waypoint {
    /// Starts serving once the first config is in (file mode: read at once, a bad file is
    /// fatal; stream mode: waits, retrying, for the first valid config). Every listener,
    /// readiness included, opens only after that.
    pub async fn start(opts: Options) -> anyhow::Result<Waypoint> {
        let metrics = Arc::new(Metrics::new());
        let me = WaypointRef {
            name: opts.name.clone(),
            namespace: opts.namespace.clone(),
        };
        let (state, source) = match &opts.config {
            ConfigMode::File {
                path,
                reload_interval,
            } => {
                let state = FileSource {
                    path: path.clone(),
                    interval: *reload_interval,
                    trust_domain: opts.trust_domain.clone(),
                    me,
                }
                .start(metrics.clone())
                .context("loading the mesh config")?;
                (state, SourceInfo::File { path: path.clone() })
            }
            ConfigMode::ControlPlane { endpoint } => {
                let src = StreamSource {
                    endpoint: endpoint.clone(),
                    namespace: opts.namespace.clone(),
                    service_account: opts.service_account.clone(),
                    me,
                    trust_domain: opts.trust_domain.clone(),
                };
                let target = src.target().to_string();
                let (state, status) = src.start(metrics.clone()).await;
                let source = SourceInfo::ControlPlane {
                    address: endpoint.address.clone(),
                    target,
                    status,
                };
                (state, source)
            }
        };
        let identity = Identity::new(&opts.trust_domain, &opts.namespace, &opts.service_account)
            .context("the waypoint's SPIFFE identity")?;
        let slot = CertManager::new(opts.certs.clone())
            .slot(&identity)
            .await
            .with_context(|| format!("getting a certificate for {identity}"))?;
        let tls = ambit_core::tls::server_config(slot.clone());
        let listener = TcpListener::bind(opts.hbone_addr)
            .await
            .with_context(|| format!("binding the HBONE listener on {}", opts.hbone_addr))?;
        let hbone_addr = listener.local_addr()?;
        let metrics_listener = metrics::bind(opts.metrics_addr)
            .await
            .with_context(|| format!("binding metrics on {}", opts.metrics_addr))?;
        let ready_listener = metrics::bind(opts.readiness_addr)
            .await
            .with_context(|| format!("binding readiness on {}", opts.readiness_addr))?;
        let admin_listener = metrics::bind(opts.admin_addr)
            .await
            .with_context(|| format!("binding admin on {}", opts.admin_addr))?;
        let (draining, draining_rx) = watch::channel(false);
        let src_ip = if hbone_addr.ip().is_unspecified() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            hbone_addr.ip()
        };
        let shared = Arc::new(Shared {
            state: state.clone(),
            backends: Backends::default(),
            upstream: Upstream::new(Pool::new(opts.pool.clone()), slot.clone(), src_ip),
            metrics: metrics.clone(),
            access_log: opts.access_log,
            body_limit: opts.body_limit,
            draining: draining_rx,
            active: AtomicUsize::new(0),
        });
        let ready = Arc::new(AtomicBool::new(true));
        let mut tasks = vec![];
        tasks.push(tokio::spawn(proxy::server::accept_loop(
            listener,
            tls,
            shared.clone(),
        )));
        tasks.push(tokio::spawn(metrics::serve_admin(
            metrics_listener,
            ready_listener,
            metrics.clone(),
            ready.clone(),
        )));
        let admin = Admin {
            shared: shared.clone(),
            slot,
            source,
            name: opts.name.clone(),
            namespace: opts.namespace.clone(),
        };
        tasks.push(tokio::spawn(admin.serve(admin_listener)));
        let weak = Arc::downgrade(&shared);
        let mut updates = state;
        tasks.push(tokio::spawn(async move {
            // Endpoints and policies of live backends follow the config.
            while updates.changed().await.is_ok() {
                let Some(shared) = weak.upgrade() else { return };
                let state = updates.borrow_and_update().clone();
                shared.backends.refresh(&state);
            }
        }));
        info!(%identity, %hbone_addr, "waypoint serving");
        Ok(Waypoint {
            shared,
            hbone_addr,
            metrics,
            draining,
            ready,
            tasks,
        })
    }

    /// Stops accepting (readiness turns 503, listener closes, GOAWAY to callers), then waits up
    /// to `timeout` for tunnels in flight to finish.
    pub async fn drain(&self, timeout: Duration) {
        self.ready.store(false, Ordering::Release);
        let _ = self.draining.send(true);
        let until = Instant::now() + timeout;
        while self.shared.active.load(Ordering::Acquire) > 0 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.shared.active.load(Ordering::Acquire);
        info!(left, "drain finished");
    }
}

impl Drop for Waypoint {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
