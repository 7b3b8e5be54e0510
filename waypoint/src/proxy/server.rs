//! The HBONE listener (:15008). Core's HBONE server hands each stream to a TCP socket, but a
//! waypoint consumes the stream itself, so this is its own small CONNECT loop with core's TLS
//! config and the same HTTP/2 settings and status codes.
//!
//! Each accepted CONNECT stream is sniffed: HTTP/2 and HTTP/1.1 are served by hyper (with
//! upgrades), anything else is proxied as opaque TCP. A malformed HTTP/1 request gets hyper's
//! 400 and ends that stream only.

use std::sync::Arc;
use std::time::Duration;

use ambit_core::hbone::{
    parse_forwarded_for, CONNECTION_WINDOW, MAX_CONCURRENT_STREAMS, MAX_FRAME_SIZE, REASON_HEADER,
    STREAM_WINDOW,
};
use ambit_core::Identity;
use bytes::Bytes;
use h2::server::SendResponse;
use http::{Method, Response, StatusCode};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use super::{http as handler, tcp, ActiveGuard, Shared, Tunnel};
use crate::detect::{sniff, Protocol};
use crate::io::{H2Io, Prefixed};

/// How long a tunnel may stay silent before it is treated as a server-first TCP protocol.
const SNIFF_WAIT: Duration = Duration::from_millis(500);

/// Accepts HBONE connections until draining starts.
pub async fn accept_loop(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
) {
    let mut draining = shared.draining.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = super::drained(&mut draining) => {
                info!("draining: HBONE listener closed");
                return;
            }
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                debug!(error = %e, "accept failed");
                continue;
            }
        };
        let tls = tls.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_tls(tcp, tls, shared).await {
                debug!(%peer, error = %e, "HBONE connection ended");
            }
        });
    }
}

async fn serve_tls(
    tcp: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
) -> anyhow::Result<()> {
    let peer = tcp.peer_addr()?;
    let tcp = tokio::io::BufReader::with_capacity(ambit_core::hbone::TLS_READ_BUFFER, tcp);
    let tls_stream = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await?;
    let identity = ambit_core::tls::peer_identity(tls_stream.get_ref().1.peer_certificates())
        .ok_or_else(|| anyhow::anyhow!("{peer} presented no usable SPIFFE identity"))?;
    let mut conn = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(16 * 1024)
        .handshake::<_, Bytes>(tls_stream)
        .await?;
    let mut draining = shared.draining.clone();
    let mut goaway_sent = false;
    loop {
        let next = tokio::select! {
            n = conn.accept() => n,
            _ = super::drained(&mut draining), if !goaway_sent => {
                // Tell the peer to open new streams elsewhere; streams in flight continue.
                conn.graceful_shutdown();
                goaway_sent = true;
                continue;
            }
        };
        let Some(next) = next else {
            // No new streams (GOAWAY sent or received); keep driving the connection until the
            // streams in flight are done, or dropping it would reset them.
            std::future::poll_fn(|cx| conn.poll_closed(cx)).await?;
            return Ok(());
        };
        let (req, respond) = next?;
        let shared = shared.clone();
        let identity = identity.clone();
        tokio::spawn(async move { stream(req, respond, identity, shared).await });
    }
}

fn refuse(respond: &mut SendResponse<Bytes>, status: StatusCode, reason: &str) {
    let resp = Response::builder()
        .status(status)
        .header(REASON_HEADER, reason)
        .body(())
        .expect("static response is well-formed");
    let _ = respond.send_response(resp, true);
}

async fn stream(
    req: http::Request<h2::RecvStream>,
    mut respond: SendResponse<Bytes>,
    peer: Identity,
    shared: Arc<Shared>,
) {
    if req.method() != Method::CONNECT {
        return refuse(
            &mut respond,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_connect",
        );
    }
    let Some(authority) = req.uri().authority().and_then(|a| a.as_str().parse().ok()) else {
        return refuse(&mut respond, StatusCode::BAD_REQUEST, "bad_authority");
    };
    let state = shared.state();
    if peer.trust_domain() != state.trust_domain {
        shared.metrics.refused("foreign_trust_domain");
        return refuse(&mut respond, StatusCode::FORBIDDEN, "foreign_trust_domain");
    }
    if state.target(authority).is_none() {
        shared.metrics.refused("not_served_by_waypoint");
        return refuse(
            &mut respond,
            StatusCode::SERVICE_UNAVAILABLE,
            "not_served_by_waypoint",
        );
    }
    let caller = req
        .headers()
        .get(http::header::FORWARDED)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_forwarded_for);
    let Ok(send) = respond.send_response(Response::new(()), false) else {
        return;
    };
    let _active = ActiveGuard::new(shared.clone());
    let mut io = H2Io::server(send, req.into_body());
    let (protocol, seen) = match sniff(&mut io, SNIFF_WAIT).await {
        Ok(r) => r,
        Err(e) => return debug!(error = %e, "tunnel ended while sniffing"),
    };
    let io = Prefixed::new(seen, io);
    let tunnel = Arc::new(Tunnel {
        shared: shared.clone(),
        peer,
        caller,
        authority,
    });
    debug!(%authority, ?caller, protocol = protocol.as_str(), "tunnel accepted");
    match protocol {
        Protocol::Tcp => tcp::proxy(tunnel, io).await,
        Protocol::Http1 | Protocol::Http2 => serve_http(tunnel, protocol, io, shared).await,
    }
}

async fn serve_http(
    tunnel: Arc<Tunnel>,
    protocol: Protocol,
    io: Prefixed<H2Io>,
    shared: Arc<Shared>,
) {
    let svc = service_fn(move |req| handler::handle(tunnel.clone(), protocol, req));
    let io = TokioIo::new(io);
    let mut draining = shared.draining.clone();
    let result = if protocol == Protocol::Http2 {
        let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .serve_connection(io, svc);
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = super::drained(&mut draining) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, svc)
            .with_upgrades();
        tokio::pin!(conn);
        tokio::select! {
            r = conn.as_mut() => r,
            _ = super::drained(&mut draining) => {
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        }
    };
    if let Err(e) = result {
        debug!(error = %e, "HTTP connection ended with an error");
    }
}
