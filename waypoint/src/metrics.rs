//! Prometheus metrics in Istio's naming (`istio_requests_total` → `ambit_requests_total`, same
//! label names), served on :15020 `/metrics`; readiness on :15021 `/healthz/ready`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::debug;

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    pub route: String,
    pub response_code: String,
    pub response_flags: String,
}

#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: String,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

fn ms_buckets() -> Histogram {
    Histogram::new(exponential_buckets(0.5, 2.0, 17))
}
fn byte_buckets() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 4.0, 14))
}

type HistFamily = Family<RequestLabels, Histogram, fn() -> Histogram>;

pub struct Metrics {
    pub registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub duration: HistFamily,
    pub request_bytes: HistFamily,
    pub response_bytes: HistFamily,
    pub tcp_opened: Family<TcpLabels, Counter>,
    pub tcp_closed: Family<TcpLabels, Counter>,
    pub tcp_sent: Family<TcpLabels, Counter>,
    pub tcp_received: Family<TcpLabels, Counter>,
    /// Upstream tries beyond the first.
    pub retries: Family<RequestLabels, Counter>,
    /// Tunnels refused before any byte flowed (not ours, ...).
    pub refused: Family<ReasonLabels, Counter>,
    pub config_reloads: Family<ResultLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("ambit");
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = HistFamily::new_with_constructor(ms_buckets);
        let request_bytes = HistFamily::new_with_constructor(byte_buckets);
        let response_bytes = HistFamily::new_with_constructor(byte_buckets);
        let retries = Family::<RequestLabels, Counter>::default();
        let tcp_opened = Family::<TcpLabels, Counter>::default();
        let tcp_closed = Family::<TcpLabels, Counter>::default();
        let tcp_sent = Family::<TcpLabels, Counter>::default();
        let tcp_received = Family::<TcpLabels, Counter>::default();
        let refused = Family::<ReasonLabels, Counter>::default();
        let config_reloads = Family::<ResultLabels, Counter>::default();
        registry.register("requests", "HTTP/gRPC requests handled", requests.clone());
        registry.register(
            "request_duration_milliseconds",
            "Time from request received to response complete",
            duration.clone(),
        );
        registry.register("request_bytes", "Request body sizes", request_bytes.clone());
        registry.register(
            "response_bytes",
            "Response body sizes",
            response_bytes.clone(),
        );
        registry.register(
            "upstream_retries",
            "Upstream tries beyond the first",
            retries.clone(),
        );
        registry.register(
            "tcp_connections_opened",
            "Opaque TCP connections opened",
            tcp_opened.clone(),
        );
        registry.register(
            "tcp_connections_closed",
            "Opaque TCP connections closed",
            tcp_closed.clone(),
        );
        registry.register(
            "tcp_sent_bytes",
            "Opaque TCP bytes sent to the destination",
            tcp_sent.clone(),
        );
        registry.register(
            "tcp_received_bytes",
            "Opaque TCP bytes received from the destination",
            tcp_received.clone(),
        );
        registry.register(
            "tunnels_refused",
            "HBONE tunnels refused before proxying",
            refused.clone(),
        );
        registry.register(
            "config_reloads",
            "Config loads by result",
            config_reloads.clone(),
        );
        Self {
            registry,
            requests,
            duration,
            request_bytes,
            response_bytes,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            retries,
            refused,
            config_reloads,
        }
    }

    pub fn config_reload(&self, result: &str) {
        self.config_reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
    }

    pub fn refused(&self, reason: &str) {
        self.refused
            .get_or_create(&ReasonLabels {
                reason: reason.into(),
            })
            .inc();
    }

    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Serves `/metrics` on one address and `/healthz/ready` on another until the task is dropped.
pub async fn serve_admin(
    metrics_listener: TcpListener,
    ready_listener: TcpListener,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
) {
    let m = tokio::spawn(serve(metrics_listener, move |path| match path {
        "/metrics" | "/stats/prometheus" => (200, metrics.encode()),
        _ => (404, "not found\n".into()),
    }));
    let r = tokio::spawn(serve(ready_listener, move |path| match path {
        "/healthz/ready" if ready.load(Ordering::Acquire) => (200, "ready\n".into()),
        "/healthz/ready" => (503, "not ready\n".into()),
        _ => (404, "not found\n".into()),
    }));
    let _ = tokio::join!(m, r);
}

async fn serve<F>(listener: TcpListener, page: F)
where
    F: Fn(&str) -> (u16, String) + Clone + Send + Sync + 'static,
{
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let page = page.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (status, body) = page(req.uri().path());
                let resp = http::Response::builder()
                    .status(status)
                    .header("content-type", "text/plain; version=0.0.4")
                    .body(Full::new(Bytes::from(body)))
                    .expect("static response");
                async move { Ok::<_, Infallible>(resp) }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await
            {
                debug!(%peer, error = %e, "admin connection ended");
            }
        });
    }
}

/// Binds both admin listeners.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
