//! Admin (localhost:15000: config dump, certificates), Prometheus metrics (15020) and
//! readiness (15021) endpoints.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::debug;

use crate::inpod::PodStatus;
use crate::proxy::ProxyInputs;

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response is well-formed")
}

/// Serves HTTP/1.1 on `listener` with a synchronous handler.
pub async fn serve<F>(listener: TcpListener, handler: F)
where
    F: Fn(&http::Request<Incoming>) -> Reply + Clone + Send + Sync + 'static,
{
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                // Out of fds or similar: back off rather than spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let r = handler(&req);
                async move { Ok::<_, Infallible>(r) }
            });
            if let Err(error) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(%peer, %error, "admin connection error");
            }
        });
    }
}

#[derive(Clone)]
pub struct AdminState {
    pub inputs: Arc<ProxyInputs>,
    pub pods: Arc<RwLock<Vec<PodStatus>>>,
    pub failures: Arc<RwLock<std::collections::BTreeMap<String, String>>>,
    pub ready: Arc<AtomicBool>,
    pub source: Arc<crate::source::SourceStatus>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct CertInfo {
    identity: String,
    not_before: u64,
    not_after: u64,
    expires_in_seconds: i64,
    serial: String,
}

fn secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

impl AdminState {
    fn certs(&self) -> Vec<CertInfo> {
        let now = secs(std::time::SystemTime::now()) as i64;
        self.inputs
            .certs
            .snapshot()
            .iter()
            .map(|c| CertInfo {
                identity: c.identity.to_string(),
                not_before: secs(c.not_before),
                not_after: secs(c.not_after),
                expires_in_seconds: secs(c.not_after) as i64 - now,
                serial: c
                    .certified_key
                    .end_entity_cert()
                    .ok()
                    .and_then(|der| ambit_core::x509::serial_of(der).ok())
                    .unwrap_or_default(),
            })
            .collect()
    }

    pub fn admin(&self, req: &http::Request<Incoming>) -> Reply {
        let json = |v: serde_json::Value| {
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::to_vec_pretty(&v).expect("JSON values serialize"),
            )
        };
        match req.uri().path() {
            "/config_dump" => json(serde_json::json!({
                "node": self.inputs.node,
                "configSource": self.source.get(),
                "pods": *self.pods.read().expect("status lock poisoned"),
                "captureFailures": *self.failures.read().expect("failures lock poisoned"),
                "certificates": self.certs(),
                "state": &*self.inputs.state(),
                "pool": {"connections": self.inputs.pool.connections()},
            })),
            "/certs" => json(serde_json::json!(self.certs())),
            "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
            "/" => reply(
                StatusCode::OK,
                "text/plain",
                "ztunnel admin\n  /config_dump  pods, certificates, mesh state, pool\n  /certs        workload certificates\n  /healthz\n",
            ),
            other => reply(StatusCode::NOT_FOUND, "text/plain", format!("no admin endpoint {other}; try /\n")),
        }
    }

    pub fn metrics(&self, req: &http::Request<Incoming>) -> Reply {
        match req.uri().path() {
            "/metrics" | "/stats/prometheus" => reply(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.inputs.metrics.encode(),
            ),
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "metrics are at /metrics\n",
            ),
        }
    }

    pub fn readiness(&self, req: &http::Request<Incoming>) -> Reply {
        match req.uri().path() {
            "/healthz/ready" if !self.ready.load(Ordering::Acquire) => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "not ready: local pods not yet captured\n",
            ),
            "/healthz/ready" => {
                let failures = self.failures.read().expect("failures lock poisoned");
                if failures.is_empty() {
                    return reply(StatusCode::OK, "text/plain", "ready\n");
                }
                let mut body = format!(
                    "not ready: {} pod(s) cannot be captured (retrying):\n",
                    failures.len()
                );
                for (uid, why) in failures.iter() {
                    body.push_str(&format!("  {uid}: {why}\n"));
                }
                reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", body)
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                "text/plain",
                "readiness is at /healthz/ready\n",
            ),
        }
    }
}

/// Binds the three servers (so a port conflict fails start-up loudly) and serves them.
pub async fn start(
    state: AdminState,
    admin: SocketAddr,
    metrics: SocketAddr,
    readiness: SocketAddr,
) -> std::io::Result<()> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))
    };
    let (a, m, r) = (
        bind(admin).await?,
        bind(metrics).await?,
        bind(readiness).await?,
    );
    let s = state.clone();
    tokio::spawn(serve(a, move |req| s.admin(req)));
    let s = state.clone();
    tokio::spawn(serve(m, move |req| s.metrics(req)));
    tokio::spawn(serve(r, move |req| state.readiness(req)));
    Ok(())
}
