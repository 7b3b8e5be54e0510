//! HBONE client: pooled mTLS HTTP/2 connections, many CONNECT streams per connection.
//!
//! Connections are keyed by (source address, source identity, destination, expected
//! destination identity), so a pod IP reused by another workload never inherits a stale
//! connection, and each pod's tunnels originate from its own address.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Method, Request, StatusCode};
use rustls::pki_types::ServerName;
use tokio::net::TcpSocket;
use tracing::debug;

use super::{forwarded_for, CONNECTION_WINDOW, MAX_FRAME_SIZE, REASON_HEADER, STREAM_WINDOW};
use crate::identity::Identity;

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct PoolKey {
    pub src_ip: IpAddr,
    pub src_identity: Identity,
    /// The peer's HBONE address (`ip:15008`).
    pub dst: SocketAddr,
    pub dst_identity: Identity,
}

#[derive(Clone, Debug)]
pub struct PoolConfig {
    /// Open another connection to the same peer once each one carries this many streams.
    pub max_streams_per_conn: usize,
    /// Upper bound of connections per key; beyond it streams queue on the least busy one.
    pub max_conns_per_key: usize,
    /// A connection without streams for this long is closed.
    pub idle_timeout: Duration,
    /// TCP connect plus TLS and HTTP/2 handshakes.
    pub connect_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            max_streams_per_conn: 100,
            max_conns_per_key: 8,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connecting to {dst}: {source}")]
    Connect { dst: SocketAddr, source: io::Error },
    #[error("TLS handshake with {dst}: {source}")]
    Tls { dst: SocketAddr, source: io::Error },
    #[error("HTTP/2 with {dst}: {source}")]
    H2 { dst: SocketAddr, source: h2::Error },
    #[error("connecting to {dst} timed out after {after:?}")]
    Timeout { dst: SocketAddr, after: Duration },
    #[error("{dst} answered CONNECT {authority} with {status} ({reason})")]
    Status {
        dst: SocketAddr,
        authority: SocketAddr,
        status: StatusCode,
        reason: String,
    },
}

impl HboneError {
    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            HboneError::Connect { .. } => "connect_failed",
            HboneError::Tls { .. } => "tls_failed",
            HboneError::H2 { .. } => "http2_failed",
            HboneError::Timeout { .. } => "connect_timeout",
            HboneError::Status { status, .. } if *status == StatusCode::FORBIDDEN => {
                "denied_by_policy"
            }
            HboneError::Status { status, .. } if *status == StatusCode::UNAUTHORIZED => {
                "unauthorized"
            }
            HboneError::Status { .. } => "upstream_refused",
        }
    }
}

struct Conn {
    send: SendRequest<Bytes>,
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
    closed: Arc<AtomicBool>,
}

/// One open CONNECT stream. Dropping it releases its slot on the pooled connection.
pub struct Tunnel {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
    _slot: StreamSlot,
}

struct StreamSlot(Arc<Conn>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().expect("idle lock poisoned") = Instant::now();
        }
    }
}

type Entry = Arc<tokio::sync::Mutex<Vec<Arc<Conn>>>>;

#[derive(Default)]
struct PoolInner {
    cfg: PoolConfig,
    keys: Mutex<HashMap<PoolKey, Entry>>,
}

/// The HBONE connection pool. Cheap to clone.
#[derive(Clone)]
pub struct Pool {
    inner: Arc<PoolInner>,
}

impl Pool {
    /// Creates a pool and its idle-eviction task (which ends when the pool is dropped).
    pub fn new(cfg: PoolConfig) -> Self {
        let inner = Arc::new(PoolInner {
            cfg,
            keys: Mutex::new(HashMap::new()),
        });
        tokio::spawn(evict_idle(Arc::downgrade(&inner)));
        Self { inner }
    }

    /// Number of live pooled connections (all keys).
    pub fn connections(&self) -> usize {
        let keys = self.inner.keys.lock().expect("pool lock poisoned");
        keys.values()
            .map(|e| {
                e.try_lock()
                    .map(|c| {
                        c.iter()
                            .filter(|c| !c.closed.load(Ordering::Acquire))
                            .count()
                    })
                    .unwrap_or(0)
            })
            .sum()
    }

    /// Opens a CONNECT stream to `authority` through the peer in `key`, reusing a pooled
    /// connection when one has room. `socket` and `tls` are only called to dial anew.
    ///
    /// A pooled connection the peer is closing (it sent GOAWAY because it drains for an
    /// upgrade, or it went away) may refuse the new stream before its response: no byte of
    /// the caller's was sent yet, so the stream is opened again on another connection. A
    /// freshly dialed connection's failure is final.
    pub async fn connect(
        &self,
        key: &PoolKey,
        socket: impl Fn() -> io::Result<TcpSocket>,
        tls: impl Fn() -> Arc<rustls::ClientConfig>,
        authority: SocketAddr,
        forwarded: Option<SocketAddr>,
    ) -> Result<Tunnel, HboneError> {
        let mut stale = 0;
        loop {
            let (conn, dialed) = self.checkout(key, &socket, &tls).await?;
            match self
                .open_stream(key, conn.clone(), authority, forwarded)
                .await
            {
                Err(e @ HboneError::H2 { .. })
                    if !dialed && stale < self.inner.cfg.max_conns_per_key =>
                {
                    debug!(dst = %key.dst, error = %e, "pooled HBONE connection refused a new stream; opening it elsewhere");
                    conn.closed.store(true, Ordering::Release);
                    stale += 1;
                }
                other => return other,
            }
        }
    }

    async fn open_stream(
        &self,
        key: &PoolKey,
        conn: Arc<Conn>,
        authority: SocketAddr,
        forwarded: Option<SocketAddr>,
    ) -> Result<Tunnel, HboneError> {
        let slot = StreamSlot(conn.clone());
        let mut req = Request::builder()
            .method(Method::CONNECT)
            .uri(authority.to_string());
        if let Some(src) = forwarded {
            req = req.header(http::header::FORWARDED, forwarded_for(src));
        }
        let req = req.body(()).expect("CONNECT request is well-formed");
        let h2_err = |source| HboneError::H2 {
            dst: key.dst,
            source,
        };
        let mut sender = conn.send.clone().ready().await.map_err(|e| {
            conn.closed.store(true, Ordering::Release);
            h2_err(e)
        })?;
        let (response, send) = sender.send_request(req, false).map_err(h2_err)?;
        let response = tokio::time::timeout(self.inner.cfg.connect_timeout, response)
            .await
            .map_err(|_| HboneError::Timeout {
                dst: key.dst,
                after: self.inner.cfg.connect_timeout,
            })?
            .map_err(h2_err)?;
        if response.status() != StatusCode::OK {
            let reason = response
                .headers()
                .get(REASON_HEADER)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            return Err(HboneError::Status {
                dst: key.dst,
                authority,
                status: response.status(),
                reason,
            });
        }
        Ok(Tunnel {
            send,
            recv: response.into_body(),
            _slot: slot,
        })
    }

    /// A connection with room for one more stream, and whether it was dialed just now.
    async fn checkout(
        &self,
        key: &PoolKey,
        socket: impl FnOnce() -> io::Result<TcpSocket>,
        tls: impl FnOnce() -> Arc<rustls::ClientConfig>,
    ) -> Result<(Arc<Conn>, bool), HboneError> {
        let entry = {
            let mut keys = self.inner.keys.lock().expect("pool lock poisoned");
            keys.entry(key.clone()).or_default().clone()
        };
        // Holding the per-key lock while dialing makes concurrent first requests share one
        // handshake instead of racing N of them.
        let mut conns = entry.lock().await;
        conns.retain(|c| !c.closed.load(Ordering::Acquire));
        let cfg = &self.inner.cfg;
        let least_busy = conns
            .iter()
            .min_by_key(|c| c.active.load(Ordering::Acquire))
            .cloned();
        let (conn, dialed) = match least_busy {
            Some(c)
                if c.active.load(Ordering::Acquire) < cfg.max_streams_per_conn
                    || conns.len() >= cfg.max_conns_per_key =>
            {
                (c, false)
            }
            _ => {
                let c = tokio::time::timeout(cfg.connect_timeout, dial(key, socket, tls))
                    .await
                    .map_err(|_| HboneError::Timeout {
                        dst: key.dst,
                        after: cfg.connect_timeout,
                    })??;
                conns.push(c.clone());
                (c, true)
            }
        };
        conn.active.fetch_add(1, Ordering::AcqRel);
        Ok((conn, dialed))
    }
}

async fn dial(
    key: &PoolKey,
    socket: impl FnOnce() -> io::Result<TcpSocket>,
    tls: impl FnOnce() -> Arc<rustls::ClientConfig>,
) -> Result<Arc<Conn>, HboneError> {
    let dst = key.dst;
    let tcp = socket()
        .map_err(|source| HboneError::Connect { dst, source })?
        .connect(dst)
        .await
        .map_err(|source| HboneError::Connect { dst, source })?;
    // The server name is unused by our verifier (it checks the SPIFFE ID), but rustls needs one.
    let name = ServerName::IpAddress(dst.ip().into());
    let tcp = tokio::io::BufReader::with_capacity(super::TLS_READ_BUFFER, tcp);
    let stream = tokio_rustls::TlsConnector::from(tls())
        .connect(name, tcp)
        .await
        .map_err(|source| HboneError::Tls { dst, source })?;
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .enable_push(false)
        .handshake::<_, Bytes>(stream)
        .await
        .map_err(|source| HboneError::H2 { dst, source })?;
    let closed = Arc::new(AtomicBool::new(false));
    let done = closed.clone();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            debug!(%dst, %error, "HBONE connection ended");
        }
        done.store(true, Ordering::Release);
    });
    debug!(%dst, identity = %key.dst_identity, "HBONE connection established");
    Ok(Arc::new(Conn {
        send,
        active: AtomicUsize::new(0),
        idle_since: Mutex::new(Instant::now()),
        closed,
    }))
}

async fn evict_idle(pool: Weak<PoolInner>) {
    loop {
        let period = match pool.upgrade() {
            Some(p) => {
                (p.cfg.idle_timeout / 2).clamp(Duration::from_millis(50), Duration::from_secs(5))
            }
            None => return,
        };
        tokio::time::sleep(period).await;
        let Some(pool) = pool.upgrade() else { return };
        let timeout = pool.cfg.idle_timeout;
        let mut keys = pool.keys.lock().expect("pool lock poisoned");
        keys.retain(|_, entry| {
            // Busy entries are being used right now: not idle, look again next round.
            let Ok(mut conns) = entry.try_lock() else {
                return true;
            };
            conns.retain(|c| {
                let idle = c.active.load(Ordering::Acquire) == 0
                    && c.idle_since.lock().expect("idle lock poisoned").elapsed() >= timeout;
                !idle && !c.closed.load(Ordering::Acquire)
            });
            !conns.is_empty()
        });
    }
}
