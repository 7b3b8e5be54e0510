//! Forwarding with retries: per-try and overall timeouts, retryable conditions, exponential
//! backoff with full jitter, and the backend's retry budget. Plus fire-and-forget mirroring.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::request::Parts;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tracing::debug;

use super::local_reply;
use crate::balance::{Backend, Outcome, Unavailable};
use crate::body::{self, Body};
use crate::detect::Protocol;
use crate::proxy::Shared;
use crate::retry::{Failure, RetryPolicy};
use crate::routes::Rule;
use crate::upstream::SendError;

/// A new request with the same head (`Parts` is not `Clone` because of extensions).
fn rebuild(parts: &Parts, body: Body) -> Request<Body> {
    let mut req = Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}

pub struct Forwarded<'a> {
    pub shared: &'a Arc<Shared>,
    pub backend: &'a Arc<Backend>,
    pub caller: Option<SocketAddr>,
    pub http2: bool,
    pub rule: Option<&'a Rule>,
}

enum Try {
    Done(Response<Incoming>),
    Failed(Failure, Option<Response<Incoming>>),
    Unavailable(Unavailable),
}

impl Forwarded<'_> {
    /// Returns the response, the last endpoint tried, the number of tries and a response flag.
    pub async fn send(
        &self,
        parts: Parts,
        buffered: Option<Bytes>,
        mut streaming: Option<Incoming>,
    ) -> (Response<Body>, Option<String>, u32, &'static str) {
        let policy = RetryPolicy::new(self.rule.and_then(|r| r.spec.retries.as_ref()));
        // A streamed body can be sent only once.
        let max_tries = if buffered.is_some() {
            policy.attempts
        } else {
            1
        };
        let deadline = self
            .rule
            .and_then(|r| r.spec.timeout)
            .map(|t| Instant::now() + t);
        let hash_key = self
            .backend
            .hash_header()
            .and_then(|h| parts.headers.get(h.as_str()).map(|v| v.as_bytes().to_vec()));
        self.backend.retry_budget().on_request();
        let mut tries = 0;
        let mut tried: Vec<SocketAddr> = vec![];
        loop {
            tries += 1;
            let body = match (&buffered, streaming.take()) {
                (Some(b), _) => body::full(b.clone()),
                (None, Some(s)) => body::incoming(s),
                (None, None) => body::empty(),
            };
            let per_try = match (policy.per_try_timeout, deadline) {
                (Some(p), Some(d)) => Some(p.min(d.saturating_duration_since(Instant::now()))),
                (p, d) => p.or(d.map(|d| d.saturating_duration_since(Instant::now()))),
            };
            let outcome = self
                .try_once(
                    rebuild(&parts, body),
                    hash_key.as_deref(),
                    per_try,
                    &mut tried,
                )
                .await;
            let last_endpoint = tried.last().map(|a| a.to_string());
            let failure = match outcome {
                Try::Done(resp) => return (upstream_response(resp), last_endpoint, tries, ""),
                Try::Unavailable(u) => {
                    let reason = match u {
                        Unavailable::NoHealthyUpstream => "no_healthy_upstream",
                        Unavailable::Overflow(_) => "upstream_overflow",
                    };
                    return (
                        local_reply(StatusCode::SERVICE_UNAVAILABLE, reason),
                        last_endpoint,
                        tries,
                        u.response_flag(),
                    );
                }
                Try::Failed(f, resp) => (f, resp),
            };
            let past_deadline = deadline.is_some_and(|d| Instant::now() >= d);
            let retry = tries < max_tries
                && !past_deadline
                && policy.retryable(failure.0)
                && self.backend.retry_budget().try_retry();
            if retry {
                let mut wait = policy.backoff(tries, &mut rand::thread_rng());
                if let Some(d) = deadline {
                    wait = wait.min(d.saturating_duration_since(Instant::now()));
                }
                debug!(tries, failure = ?failure.0, ?wait, "retrying");
                tokio::time::sleep(wait).await;
                continue;
            }
            // Out of tries (or not retryable): answer with what the last try produced.
            let exhausted = tries > 1 || (max_tries > 1 && policy.retryable(failure.0));
            let (resp, flag) = match failure {
                (Failure::Timeout, _) => (
                    local_reply(StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
                    "UT",
                ),
                (_, Some(resp)) => (upstream_response(resp), if exhausted { "URX" } else { "" }),
                (Failure::ConnectFailure, None) => (
                    local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream_connect_failed"),
                    if exhausted { "URX" } else { "UF" },
                ),
                (_, None) => (
                    local_reply(StatusCode::SERVICE_UNAVAILABLE, "upstream_reset"),
                    if exhausted { "URX" } else { "UR" },
                ),
            };
            return (resp, last_endpoint, tries, flag);
        }
    }

    async fn try_once(
        &self,
        req: Request<Body>,
        hash_key: Option<&[u8]>,
        timeout: Option<Duration>,
        tried: &mut Vec<SocketAddr>,
    ) -> Try {
        // Retries go to an endpoint not tried yet when there is one (Envoy's previous_hosts);
        // a consistent-hash request stays on its endpoint.
        let avoid: &[SocketAddr] = if hash_key.is_some() { &[] } else { tried };
        let pick = match self.backend.pick_avoiding(hash_key, avoid) {
            Ok(p) => p,
            Err(u) => return Try::Unavailable(u),
        };
        tried.push(pick.endpoint.addr);
        let started = Instant::now();
        let send =
            self.shared
                .upstream
                .send(self.backend, &pick.endpoint, self.caller, self.http2, req);
        let result = match timeout {
            Some(t) => match tokio::time::timeout(t, send).await {
                Ok(r) => r,
                Err(_) => {
                    pick.finish(Outcome::Timeout);
                    return Try::Failed(Failure::Timeout, None);
                }
            },
            None => send.await,
        };
        match result {
            Ok(resp) => {
                let status = resp.status().as_u16();
                pick.finish(Outcome::Response {
                    status,
                    latency: started.elapsed(),
                });
                if status >= 500 || (400..500).contains(&status) {
                    Try::Failed(Failure::Status(status), Some(resp))
                } else {
                    Try::Done(resp)
                }
            }
            Err(SendError::Unavailable(u)) => Try::Unavailable(u),
            Err(SendError::Connect { endpoint, why }) => {
                debug!(%endpoint, %why, "upstream connect failed");
                pick.finish(Outcome::ConnectFailure);
                Try::Failed(Failure::ConnectFailure, None)
            }
            Err(SendError::Reset { endpoint, why }) => {
                debug!(%endpoint, %why, "upstream reset");
                pick.finish(Outcome::Reset);
                Try::Failed(Failure::Reset, None)
            }
        }
    }
}

fn upstream_response(resp: Response<Incoming>) -> Response<Body> {
    let (mut parts, b) = resp.into_parts();
    super::strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, body::incoming(b))
}

/// Sends a copy of the request to the mirror backend in the background; the response is
/// read and thrown away. Never waits for anything: the caller's request goes on at once.
pub fn mirror(
    shared: Arc<Shared>,
    backend: Arc<Backend>,
    caller: Option<SocketAddr>,
    protocol: Protocol,
    parts: &Parts,
    body: Bytes,
) {
    let req = rebuild(parts, body::full(body));
    tokio::spawn(async move {
        let Ok(pick) = backend.pick(None) else { return };
        let started = Instant::now();
        match shared
            .upstream
            .send(
                &backend,
                &pick.endpoint,
                caller,
                protocol == Protocol::Http2,
                req,
            )
            .await
        {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let _ = resp.into_body().collect().await;
                pick.finish(Outcome::Response {
                    status,
                    latency: started.elapsed(),
                });
            }
            Err(e) => debug!(error = %e, "mirror request failed"),
        }
    });
}
