//! Sending requests to endpoints: HBONE tunnels from core's pool (one CONNECT stream per
//! upstream connection, the waypoint's identity, the endpoint's identity expected), and hyper
//! HTTP/1.1 and HTTP/2 client connections pooled per (endpoint, caller) over those tunnels.
//!
//! The caller's IP is part of the key because the tunnel's `Forwarded: for=` names the original
//! source, which the destination's ztunnel uses as the connection's source address.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_core::certs::CertSlot;
use ambit_core::hbone::client::{Pool, PoolKey};
use ambit_core::hbone::HBONE_PORT;
use ambit_core::Identity;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpSocket;
use tracing::debug;

use crate::balance::{Backend, Endpoint, Unavailable};
use crate::body::Body;
use crate::io::H2Io;

/// Idle HTTP/1.1 connections kept per key.
const MAX_IDLE_H1: usize = 128;

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connecting to {endpoint}: {why}")]
    Connect { endpoint: SocketAddr, why: String },
    #[error("{endpoint} reset the request: {why}")]
    Reset { endpoint: SocketAddr, why: String },
    #[error("{0}")]
    Unavailable(Unavailable),
}

/// An HTTP/2 request must carry `:authority` and `:scheme`, but a caller may send only a `Host`
/// header (RFC 9113 allows it) or, from HTTP/1.1, an origin-form target: the URI is made
/// absolute from `Host` (or, without one, from the endpoint's address) as RFC 9113 §8.3.1
/// asks of an intermediary. The scheme is `http`: TLS is the tunnel's, not the app's.
fn with_authority<B>(req: &mut Request<B>, endpoint: SocketAddr) {
    if req.uri().authority().is_some() {
        return;
    }
    let authority = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .unwrap_or_else(|| {
            endpoint
                .to_string()
                .parse()
                .expect("a socket address is an authority")
        });
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    *req.uri_mut() = http::Uri::from_parts(parts).expect("scheme, authority and path are set");
    *req.version_mut() = http::Version::HTTP_2;
}

#[derive(Clone, Debug, Hash, PartialEq, Eq)]
struct ConnKey {
    endpoint: SocketAddr,
    identity: Identity,
    caller: Option<IpAddr>,
    http2: bool,
}

#[derive(Default)]
struct Conns {
    h1: Vec<http1::SendRequest<Body>>,
    h2: Option<http2::SendRequest<Body>>,
}

pub struct Upstream {
    hbone: Pool,
    slot: Arc<CertSlot>,
    src_ip: IpAddr,
    conns: Mutex<HashMap<ConnKey, Conns>>,
}

impl Upstream {
    pub fn new(hbone: Pool, slot: Arc<CertSlot>, src_ip: IpAddr) -> Self {
        Self {
            hbone,
            slot,
            src_ip,
            conns: Mutex::new(HashMap::new()),
        }
    }

    /// Opens a CONNECT tunnel to `ep` carrying `caller` as the original source.
    pub async fn tunnel(
        &self,
        ep: &Endpoint,
        caller: Option<SocketAddr>,
    ) -> Result<H2Io, SendError> {
        let key = PoolKey {
            src_ip: self.src_ip,
            src_identity: self.slot.identity().clone(),
            dst: SocketAddr::new(ep.addr.ip(), HBONE_PORT),
            dst_identity: ep.identity.clone(),
        };
        let v4 = ep.addr.is_ipv4();
        let tunnel = self
            .hbone
            .connect(
                &key,
                || {
                    if v4 {
                        TcpSocket::new_v4()
                    } else {
                        TcpSocket::new_v6()
                    }
                },
                || ambit_core::tls::client_config(self.slot.clone(), vec![ep.identity.clone()]),
                ep.addr,
                caller,
            )
            .await
            .map_err(|e| SendError::Connect {
                endpoint: ep.addr,
                why: e.to_string(),
            })?;
        Ok(H2Io::client(tunnel))
    }

    fn key(ep: &Endpoint, caller: Option<SocketAddr>, http2: bool) -> ConnKey {
        ConnKey {
            endpoint: ep.addr,
            identity: ep.identity.clone(),
            caller: caller.map(|c| c.ip()),
            http2,
        }
    }

    fn idle_h1(&self, key: &ConnKey) -> Option<http1::SendRequest<Body>> {
        let mut conns = self.conns.lock().expect("conns lock poisoned");
        let c = conns.get_mut(key)?;
        c.h1.retain(|s| !s.is_closed());
        let i = c.h1.iter().position(|s| s.is_ready())?;
        Some(c.h1.swap_remove(i))
    }

    fn park_h1(&self, key: ConnKey, sender: http1::SendRequest<Body>) {
        let mut conns = self.conns.lock().expect("conns lock poisoned");
        let c = conns.entry(key).or_default();
        if c.h1.len() < MAX_IDLE_H1 {
            c.h1.push(sender);
        }
    }

    /// Sends one request over a pooled connection (HTTP/2 when `http2`), opening one when
    /// none is free. Counts connections against the backend's `maxConnections`.
    pub async fn send(
        &self,
        backend: &Backend,
        ep: &Endpoint,
        caller: Option<SocketAddr>,
        http2: bool,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let key = Self::key(ep, caller, http2);
        let reset = |e: hyper::Error| SendError::Reset {
            endpoint: ep.addr,
            why: e.to_string(),
        };
        if http2 {
            let existing = {
                let conns = self.conns.lock().expect("conns lock poisoned");
                conns
                    .get(&key)
                    .and_then(|c| c.h2.clone())
                    .filter(|s| !s.is_closed())
            };
            let mut sender = match existing {
                Some(s) => s,
                None => {
                    let guard = backend.connection_guard().map_err(SendError::Unavailable)?;
                    let io = self.tunnel(ep, caller).await?;
                    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                        .handshake(TokioIo::new(io))
                        .await
                        .map_err(|e| SendError::Connect {
                            endpoint: ep.addr,
                            why: e.to_string(),
                        })?;
                    tokio::spawn(async move {
                        let _guard = guard;
                        if let Err(e) = conn.await {
                            debug!(error = %e, "upstream HTTP/2 connection ended");
                        }
                    });
                    let mut conns = self.conns.lock().expect("conns lock poisoned");
                    conns.entry(key).or_default().h2 = Some(sender.clone());
                    sender
                }
            };
            let mut req = req;
            with_authority(&mut req, ep.addr);
            return sender.send_request(req).await.map_err(reset);
        }
        let mut sender = match self.idle_h1(&key) {
            Some(s) => s,
            None => match backend.connection_guard() {
                Ok(guard) => self.dial_h1(ep, caller, guard, false).await?,
                Err(Unavailable::Overflow(limit)) => {
                    // maxConnections reached: wait (as a pending request) for a connection to free up.
                    let _pending = backend.pending_guard().map_err(SendError::Unavailable)?;
                    self.wait_idle_h1(&key, backend.connect_timeout())
                        .await
                        .ok_or(SendError::Unavailable(Unavailable::Overflow(limit)))?
                }
                Err(e) => return Err(SendError::Unavailable(e)),
            },
        };
        let resp = sender.send_request(req).await.map_err(reset)?;
        self.park_h1(key, sender);
        Ok(resp)
    }

    async fn wait_idle_h1(
        &self,
        key: &ConnKey,
        limit: Duration,
    ) -> Option<http1::SendRequest<Body>> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(s) = self.idle_h1(key) {
                return Some(s);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    async fn dial_h1(
        &self,
        ep: &Endpoint,
        caller: Option<SocketAddr>,
        guard: crate::balance::ConnectionGuard,
        upgrades: bool,
    ) -> Result<http1::SendRequest<Body>, SendError> {
        let io = self.tunnel(ep, caller).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| SendError::Connect {
                endpoint: ep.addr,
                why: e.to_string(),
            })?;
        tokio::spawn(async move {
            let _guard = guard;
            let result = if upgrades {
                conn.with_upgrades().await
            } else {
                conn.await
            };
            if let Err(e) = result {
                debug!(error = %e, "upstream HTTP/1.1 connection ended");
            }
        });
        Ok(sender)
    }

    /// Sends an `Upgrade` request (WebSocket) on a connection of its own, which the upgraded
    /// stream then keeps.
    pub async fn send_upgrade(
        &self,
        backend: &Backend,
        ep: &Endpoint,
        caller: Option<SocketAddr>,
        req: Request<Body>,
    ) -> Result<Response<Incoming>, SendError> {
        let guard = backend.connection_guard().map_err(SendError::Unavailable)?;
        let mut sender = self.dial_h1(ep, caller, guard, true).await?;
        sender
            .send_request(req)
            .await
            .map_err(|e| SendError::Reset {
                endpoint: ep.addr,
                why: e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(uri: &str, host: Option<&str>) -> Request<()> {
        let mut b = Request::get(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn http2_requests_get_an_authority_from_host_or_the_endpoint() {
        let ep: SocketAddr = "10.1.2.3:9080".parse().unwrap();
        let mut r = req("/a?b=1", Some("api.shop:8080"));
        with_authority(&mut r, ep);
        assert_eq!(r.uri(), "http://api.shop:8080/a?b=1");
        assert_eq!(r.version(), http::Version::HTTP_2);

        let mut r = req("/x", None);
        with_authority(&mut r, ep);
        assert_eq!(r.uri(), "http://10.1.2.3:9080/x");

        // A Host that is not an authority falls back to the endpoint, never fails the request.
        let mut r = req("/x", Some("bad host"));
        with_authority(&mut r, ep);
        assert_eq!(r.uri(), "http://10.1.2.3:9080/x");

        // An absolute URI is left exactly as the caller sent it.
        let mut r = req("https://other.example/y", Some("api.shop"));
        with_authority(&mut r, ep);
        assert_eq!(r.uri(), "https://other.example/y");
    }
}
