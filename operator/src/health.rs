//! Liveness/readiness (`/healthz`, `/readyz`) and Prometheus (`/metrics`) endpoints.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type Reply = Response<Full<Bytes>>;

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain; charset=utf-8")
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

async fn serve_with<F>(addr: SocketAddr, handler: F) -> std::io::Result<JoinHandle<()>>
where
    F: Fn(&Request<Incoming>) -> Reply + Clone + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let r = handler(&req);
                    async move { Ok::<_, Infallible>(r) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    }))
}

/// `/healthz` answers while the process runs; `/readyz` once `ready` is set (first config
/// published — standby replicas serve proxies too, so they are ready as well).
pub async fn serve(addr: SocketAddr, ready: Arc<AtomicBool>) -> std::io::Result<JoinHandle<()>> {
    serve_with(addr, move |req| match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "ok\n"),
        "/readyz" if ready.load(Ordering::Relaxed) => reply(StatusCode::OK, "ready\n"),
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: waiting for the Mesh object and the first config publication\n",
        ),
        _ => reply(StatusCode::NOT_FOUND, "try /healthz or /readyz\n"),
    })
    .await
}

pub async fn serve_metrics(
    addr: SocketAddr,
    registry: Arc<Registry>,
) -> std::io::Result<JoinHandle<()>> {
    serve_with(addr, move |req| {
        if req.uri().path() != "/metrics" {
            return reply(StatusCode::NOT_FOUND, "try /metrics\n");
        }
        let mut out = String::new();
        match prometheus_client::encoding::text::encode(&mut out, &registry) {
            Ok(()) => Response::builder()
                .header(
                    "content-type",
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                )
                .body(Full::new(Bytes::from(out)))
                .expect("static response parts are valid"),
            Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    })
    .await
}
