//! The data path: HBONE in ([`server`]), protocol sniffing, HTTP handling ([`http`]) or
//! opaque TCP ([`tcp`]), and HBONE out through [`crate::upstream`].

pub mod http;
pub mod server;
mod tcp;
mod upgrade;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use ambit_core::Identity;
use tokio::sync::watch;

use crate::backends::Backends;
use crate::metrics::Metrics;
use crate::state::State;
use crate::upstream::Upstream;

/// What every connection shares.
pub struct Shared {
    pub state: watch::Receiver<Arc<State>>,
    pub backends: Backends,
    pub upstream: Upstream,
    pub metrics: Arc<Metrics>,
    pub access_log: bool,
    /// Request bodies up to this size are buffered so they can be retried and mirrored.
    pub body_limit: usize,
    /// Becomes true when draining starts.
    pub draining: watch::Receiver<bool>,
    /// Tunnels (inbound CONNECT streams) being served.
    pub active: AtomicUsize,
}

impl Shared {
    pub fn state(&self) -> Arc<State> {
        self.state.borrow().clone()
    }
}

/// One inbound tunnel: who sent it and where it was going.
pub struct Tunnel {
    pub shared: Arc<Shared>,
    pub peer: Identity,
    /// The original source, from `Forwarded: for=`.
    pub caller: Option<SocketAddr>,
    /// The original destination (`:authority`).
    pub authority: SocketAddr,
}

/// Counts a tunnel as active while alive (graceful drain waits for zero).
pub struct ActiveGuard(Arc<Shared>);

impl ActiveGuard {
    pub fn new(shared: Arc<Shared>) -> Self {
        shared.active.fetch_add(1, Ordering::AcqRel);
        Self(shared)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Resolves once draining has started (the watch guard is dropped before returning, so the
/// future stays `Send`).
pub async fn drained(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|d| *d).await;
}
