//! HBONE server: accepts CONNECT streams on an established mTLS connection and hands each
//! to a handler that decides (authorization, upstream dial) and returns the upstream socket.
//!
//! Status codes: 200 tunnel open; 400 malformed request (bad authority); 405 not CONNECT;
//! 401/403 refused by policy; 503 upstream unreachable. A protocol error on the HTTP/2
//! connection (garbage frames) ends that connection only.

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use h2::server::SendResponse;
use http::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tracing::debug;

use super::{
    parse_forwarded_for, splice, CONNECTION_WINDOW, MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE,
    REASON_HEADER, STREAM_WINDOW,
};
use crate::identity::Identity;

/// What the server knows about one CONNECT request.
#[derive(Clone, Debug)]
pub struct HboneRequest {
    /// The original destination (`:authority`).
    pub authority: SocketAddr,
    /// The original source, from `Forwarded: for=`.
    pub forwarded_for: Option<SocketAddr>,
    /// The verified SPIFFE identity of the peer proxy's client certificate.
    pub peer_identity: Identity,
    /// TCP peer address of the mTLS connection.
    pub peer_addr: SocketAddr,
}

/// A refusal: status and a short reason sent in `x-ambit-reason`.
#[derive(Clone, Debug)]
pub struct Reject {
    pub status: StatusCode,
    pub reason: &'static str,
}

/// An accepted stream: the upstream socket plus byte counters.
pub struct Accepted {
    pub upstream: TcpStream,
    /// Called with byte counts as they flow (client → upstream).
    pub sent: Box<dyn Fn(usize) + Send + Sync>,
    /// Called with byte counts as they flow (upstream → client).
    pub received: Box<dyn Fn(usize) + Send + Sync>,
    /// Called once when the stream ends.
    pub done: Box<dyn FnOnce(std::io::Result<()>) + Send>,
}

impl Accepted {
    /// `upstream`, with no byte counting or end-of-stream hook (test servers, benchmarks).
    pub fn uncounted(upstream: TcpStream) -> Accepted {
        Accepted {
            upstream,
            sent: Box::new(|_| {}),
            received: Box::new(|_| {}),
            done: Box::new(|_| {}),
        }
    }

    /// Connects to `addr` and accepts the stream [uncounted](Self::uncounted); a failed
    /// connect is `503 upstream_connect_failed`.
    pub async fn connect(addr: SocketAddr) -> Result<Accepted, Reject> {
        let upstream = TcpStream::connect(addr).await.map_err(|_| Reject {
            status: StatusCode::SERVICE_UNAVAILABLE,
            reason: "upstream_connect_failed",
        })?;
        Ok(Accepted::uncounted(upstream))
    }
}

pub trait Handler: Clone + Send + Sync + 'static {
    fn open(&self, req: HboneRequest) -> impl Future<Output = Result<Accepted, Reject>> + Send;
}

/// Serves CONNECT streams on one mTLS connection until it closes.
pub async fn serve_connection<S, H>(
    io: S,
    peer_identity: Identity,
    peer_addr: SocketAddr,
    handler: H,
) -> Result<(), h2::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    serve_connection_until(
        io,
        peer_identity,
        peer_addr,
        handler,
        std::future::pending(),
    )
    .await
}

/// [`serve_connection`] until `shutdown` resolves, then gracefully: a GOAWAY tells the
/// peer to open new streams elsewhere, the streams already open run to their end, and the
/// connection closes after them.
pub async fn serve_connection_until<S, H>(
    io: S,
    peer_identity: Identity,
    peer_addr: SocketAddr,
    handler: H,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), h2::Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Handler,
{
    let mut conn = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(16 * 1024)
        .handshake::<_, Bytes>(io)
        .await?;
    let mut shutdown = std::pin::pin!(shutdown);
    let mut going_away = false;
    loop {
        let next = tokio::select! {
            next = conn.accept() => next,
            () = &mut shutdown, if !going_away => {
                going_away = true;
                conn.graceful_shutdown();
                continue;
            }
        };
        let Some(next) = next else { break };
        let (req, respond) = next?;
        let handler = handler.clone();
        let peer_identity = peer_identity.clone();
        tokio::spawn(async move {
            handle_stream(req, respond, peer_identity, peer_addr, handler).await;
        });
    }
    Ok(())
}

fn refuse(respond: &mut SendResponse<Bytes>, status: StatusCode, reason: &str) {
    let resp = Response::builder()
        .status(status)
        .header(REASON_HEADER, reason)
        .body(())
        .expect("static response is well-formed");
    // end_of_stream: nothing follows a refusal.
    let _ = respond.send_response(resp, true);
}

async fn handle_stream<H: Handler>(
    req: Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer_identity: Identity,
    peer_addr: SocketAddr,
    handler: H,
) {
    if req.method() != Method::CONNECT {
        debug!(method = %req.method(), %peer_addr, "HBONE: refusing non-CONNECT request");
        return refuse(
            &mut respond,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_connect",
        );
    }
    let Some(authority) = req
        .uri()
        .authority()
        .and_then(|a| a.as_str().parse::<SocketAddr>().ok())
    else {
        debug!(uri = %req.uri(), %peer_addr, "HBONE: authority is not ip:port");
        return refuse(&mut respond, StatusCode::BAD_REQUEST, "bad_authority");
    };
    let forwarded_for = req
        .headers()
        .get(http::header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_forwarded_for);
    let request = HboneRequest {
        authority,
        forwarded_for,
        peer_identity,
        peer_addr,
    };
    let accepted = match handler.open(request).await {
        Ok(a) => a,
        Err(rej) => return refuse(&mut respond, rej.status, rej.reason),
    };
    let send = match respond.send_response(Response::new(()), false) {
        Ok(s) => s,
        Err(e) => return (accepted.done)(Err(std::io::Error::other(e))),
    };
    let mut upstream = accepted.upstream;
    let result = splice(
        &mut upstream,
        send,
        req.into_body(),
        &*accepted.received,
        &*accepted.sent,
    )
    .await;
    (accepted.done)(result);
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("TLS handshake with {peer}: {source}")]
    Tls {
        peer: SocketAddr,
        source: std::io::Error,
    },
    #[error("peer {0} presented no usable SPIFFE identity")]
    NoIdentity(SocketAddr),
    #[error("HTTP/2 with {peer}: {source}")]
    H2 { peer: SocketAddr, source: h2::Error },
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// Completes the mTLS handshake on an accepted socket, then serves HBONE on it.
pub async fn serve_tls<H: Handler>(
    tcp: TcpStream,
    config: std::sync::Arc<rustls::ServerConfig>,
    handler: H,
) -> Result<(), ServeError> {
    serve_tls_until(tcp, config, handler, std::future::pending()).await
}

/// [`serve_tls`] with a graceful end when `shutdown` resolves (see [`serve_connection_until`]).
pub async fn serve_tls_until<H: Handler>(
    tcp: TcpStream,
    config: std::sync::Arc<rustls::ServerConfig>,
    handler: H,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let peer = tcp.peer_addr()?;
    let tcp = tokio::io::BufReader::with_capacity(super::TLS_READ_BUFFER, tcp);
    let tls = tokio_rustls::TlsAcceptor::from(config)
        .accept(tcp)
        .await
        .map_err(|source| ServeError::Tls { peer, source })?;
    let identity = crate::tls::peer_identity(tls.get_ref().1.peer_certificates())
        .ok_or(ServeError::NoIdentity(peer))?;
    serve_connection_until(tls, identity, peer, handler, shutdown)
        .await
        .map_err(|source| ServeError::H2 { peer, source })
}
