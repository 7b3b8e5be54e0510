//! The three per-pod listeners: outbound capture (15001), inbound HBONE (15008) and inbound
//! plaintext (15006). All of them live inside the pod's network namespace.

pub mod inbound;
pub mod inbound_plain;
pub mod outbound;
mod waypoint;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ambit_core::certs::{CertManager, CertSlot};
use ambit_core::hbone::client::Pool;
use ambit_core::netns::Netns;
use ambit_core::Identity;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tracing::warn;

use crate::drain::ConnTracker;
use crate::metrics::Metrics;
use crate::state::{ProxyState, Workload};

pub const OUTBOUND_PORT: u16 = 15001;
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
pub use ambit_core::hbone::HBONE_PORT;

/// Upper bound for connecting to an app or a non-mesh destination.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Ports of ztunnel's own in-pod listeners. A connection *to* one of them must never be
/// proxied: ztunnel would connect to itself, again and again, until it runs out of sockets.
pub fn is_mesh_port(port: u16) -> bool {
    matches!(port, OUTBOUND_PORT | INBOUND_PLAINTEXT_PORT | HBONE_PORT)
}

/// What every proxy on this node shares.
pub struct ProxyInputs {
    pub node: String,
    pub state: watch::Receiver<Arc<ProxyState>>,
    pub certs: Arc<CertManager>,
    pub pool: Pool,
    pub metrics: Arc<Metrics>,
    /// Every proxied connection, for the drain at shutdown.
    pub conns: Arc<ConnTracker>,
}

impl ProxyInputs {
    pub fn state(&self) -> Arc<ProxyState> {
        self.state.borrow().clone()
    }
}

/// One captured pod, as its listeners see it.
pub struct PodContext {
    pub uid: String,
    pub ip: IpAddr,
    pub identity: Identity,
    pub netns: Netns,
    pub cert: Arc<CertSlot>,
    pub server_tls: Arc<rustls::ServerConfig>,
}

impl PodContext {
    /// The pod's current workload record (labels and mode may change on reload).
    pub fn workload(&self, state: &ProxyState) -> Option<Arc<Workload>> {
        state.workload(&self.ip).cloned()
    }
}

/// Accepts forever, handing each connection to `handle` on its own task (counted in
/// `conns` until it ends).
pub(crate) async fn accept_loop<F, Fut>(
    listener: TcpListener,
    conns: Arc<ConnTracker>,
    what: &'static str,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                // Proxied request/response traffic must not wait on Nagle's algorithm.
                let _ = stream.set_nodelay(true);
                let guard = conns.track();
                let conn = handle(stream, peer);
                tokio::spawn(async move {
                    conn.await;
                    drop(guard);
                });
            }
            Err(error) => {
                // EMFILE and friends: back off instead of spinning; the listener stays.
                warn!(listener = what, %error, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Closes with a TCP RST so the client sees a refusal, not a clean end of stream.
pub(crate) fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

/// Plain TCP-to-TCP proxying with byte accounting, for passthrough and plaintext inbound.
pub(crate) async fn copy_plain(
    mut downstream: TcpStream,
    mut upstream: TcpStream,
    m: crate::metrics::ConnMetrics,
) {
    if let Ok((sent, received)) =
        tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await
    {
        m.sent.inc_by(sent);
        m.received.inc_by(received);
    }
}
