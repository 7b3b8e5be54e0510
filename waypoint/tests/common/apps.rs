//! Small test backends, run in the test process on loopback and reached through a pod's HBONE
//! listener: an HTTP echo (HTTP/1.1 and HTTP/2 on one port) that can fail, slow down, upgrade to
//! a WebSocket-style echo and answer gRPC-style requests with trailers; and a TCP echo.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type BoxBody = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// How an [`HttpApp`] behaves; changeable while it runs.
#[derive(Clone, Debug, Default)]
pub struct Behavior {
    /// Share of requests answered 503, 0..=100.
    pub fail_percent: u32,
    pub delay: Duration,
}

pub struct HttpApp {
    pub name: String,
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub behavior: Arc<Mutex<Behavior>>,
    /// Total request body bytes seen.
    pub body_bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl HttpApp {
    pub async fn start(name: &str) -> HttpApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicUsize::new(0));
        let behavior = Arc::new(Mutex::new(Behavior::default()));
        let body_bytes = Arc::new(AtomicU64::new(0));
        let ctx = Arc::new((
            name.to_string(),
            hits.clone(),
            behavior.clone(),
            body_bytes.clone(),
        ));
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let ctx = ctx.clone();
                        async move {
                            Ok::<_, Infallible>(serve(&ctx.0, &ctx.1, &ctx.2, &ctx.3, req).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        HttpApp {
            name: name.to_string(),
            addr,
            hits,
            behavior,
            body_bytes,
            task,
        }
    }

    pub fn set(&self, b: Behavior) {
        *self.behavior.lock().unwrap() = b;
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn full(b: impl Into<Bytes>) -> BoxBody {
    Full::new(b.into()).map_err(|e| match e {}).boxed()
}

fn headers_json(h: &HeaderMap) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    for (k, v) in h {
        m.insert(k.to_string(), v.to_str().unwrap_or("").into());
    }
    m.into()
}

async fn serve(
    name: &str,
    hits: &AtomicUsize,
    behavior: &Mutex<Behavior>,
    body_bytes: &AtomicU64,
    mut req: Request<Incoming>,
) -> Response<BoxBody> {
    hits.fetch_add(1, Ordering::SeqCst);
    let b = behavior.lock().unwrap().clone();
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    if req.headers().contains_key(http::header::UPGRADE) {
        let on = hyper::upgrade::on(&mut req);
        let tag = name.to_string();
        tokio::spawn(async move {
            let Ok(up) = on.await else { return };
            let mut io = TokioIo::new(up);
            let _ = io.write_all(format!("hello from {tag}\n").as_bytes()).await;
            let mut buf = [0u8; 4096];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                    break;
                }
            }
        });
        return Response::builder()
            .status(101)
            .header("upgrade", "websocket")
            .header("connection", "upgrade")
            .body(full(""))
            .unwrap();
    }
    let grpc = req
        .headers()
        .get("content-type")
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if grpc {
        let body = GrpcEcho {
            inner: req.into_body(),
            trailers: Some(name.to_string()),
        };
        return Response::builder()
            .header("content-type", "application/grpc")
            .body(body.boxed())
            .unwrap();
    }
    if b.fail_percent > 0 && rand::thread_rng().gen_range(0..100) < b.fail_percent {
        return Response::builder()
            .status(503)
            .header("x-backend", name)
            .body(full("failing on purpose\n"))
            .unwrap();
    }
    let (parts, body) = req.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    body_bytes.fetch_add(bytes.len() as u64, Ordering::SeqCst);
    let out = serde_json::json!({
        "backend": name,
        "method": parts.method.as_str(),
        "path": parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/"),
        "version": format!("{:?}", parts.version),
        "headers": headers_json(&parts.headers),
        "body_len": bytes.len(),
    });
    Response::builder()
        .header("x-backend", name)
        .header("content-type", "application/json")
        .body(full(out.to_string()))
        .unwrap()
}

/// Echoes each request DATA frame as it arrives, then sends `grpc-status: 0` trailers.
struct GrpcEcho {
    inner: Incoming,
    trailers: Option<String>,
}

impl Body for GrpcEcho {
    type Data = Bytes;
    type Error = hyper::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        loop {
            match Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(f))) => {
                    if f.is_data() {
                        return Poll::Ready(Some(Ok(f)));
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => {
                    let Some(name) = self.trailers.take() else {
                        return Poll::Ready(None);
                    };
                    let mut t = HeaderMap::new();
                    t.insert("grpc-status", "0".parse().unwrap());
                    t.insert("x-backend", name.parse().unwrap());
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Echoes bytes back, prefixed once with `<name>:`.
pub struct TcpEcho {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpEcho {
    pub async fn start(name: &str) -> TcpEcho {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name = name.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut tcp, _)) = listener.accept().await else {
                    continue;
                };
                let name = name.clone();
                tokio::spawn(async move {
                    let _ = tcp.write_all(format!("{name}:").as_bytes()).await;
                    let (mut r, mut w) = tcp.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        TcpEcho { addr, task }
    }
}
