//! HTTP/1.1 `Upgrade` (WebSocket and friends): the request goes upstream on a connection of its
//! own; when the endpoint answers 101, both upgraded streams are spliced until either closes.

use std::net::SocketAddr;
use std::sync::Arc;

use http::request::Parts;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::debug;

use super::http::local_reply;
use super::Shared;
use crate::balance::{Backend, Outcome};
use crate::body::{self, Body};
use crate::upstream::SendError;

pub async fn forward(
    shared: &Arc<Shared>,
    backend: &Arc<Backend>,
    caller: Option<SocketAddr>,
    parts: Parts,
    incoming: Incoming,
    downstream: OnUpgrade,
) -> (Response<Body>, Option<String>, &'static str) {
    let pick = match backend.pick(None) {
        Ok(p) => p,
        Err(u) => {
            return (
                local_reply(StatusCode::SERVICE_UNAVAILABLE, "no_healthy_upstream"),
                None,
                u.response_flag(),
            )
        }
    };
    let endpoint = Some(pick.endpoint.addr.to_string());
    let req = Request::from_parts(parts, body::incoming(incoming));
    let started = std::time::Instant::now();
    let mut resp = match shared
        .upstream
        .send_upgrade(backend, &pick.endpoint, caller, req)
        .await
    {
        Ok(r) => r,
        Err(SendError::Unavailable(u)) => {
            return (
                local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream_overflow"),
                endpoint,
                u.response_flag(),
            )
        }
        Err(e) => {
            debug!(error = %e, "upgrade request failed");
            pick.finish(Outcome::ConnectFailure);
            return (
                local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream_connect_failed"),
                endpoint,
                "UF",
            );
        }
    };
    pick.finish(Outcome::Response {
        status: resp.status().as_u16(),
        latency: started.elapsed(),
    });
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let (p, b) = resp.into_parts();
        return (Response::from_parts(p, body::incoming(b)), endpoint, "");
    }
    let upstream = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (down, up) = match tokio::try_join!(downstream, upstream) {
            Ok(pair) => pair,
            Err(e) => return debug!(error = %e, "upgrade failed"),
        };
        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            debug!(error = %e, "upgraded stream ended with an error");
        }
    });
    let (p, _) = resp.into_parts();
    (Response::from_parts(p, body::empty()), endpoint, "")
}
