//! HTTP on both ends of the path: an app in a backend pod that reports what it saw of the
//! caller, and clients inside the client pod (captured, so they go through ztunnel).

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ambit_testkit::NetNs;
use ambit_waypoint::body::{self, Body};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

/// An HTTP/1.1 app in a pod: answers with its name, what it saw of the caller, or 503 while
/// `fail` is set.
pub struct App {
    pub hits: Arc<AtomicUsize>,
    pub fail: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for App {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn reply(name: &str, peer: SocketAddr, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let header = |n: &str| req.headers().get(n).and_then(|v| v.to_str().ok());
    let out = json!({
        "backend": name,
        "method": req.method().as_str(),
        "path": req.uri().path(),
        "peer": peer.ip().to_string(),
        "forwarded": header("forwarded"),
        "xForwardedFor": header("x-forwarded-for"),
    });
    Response::builder()
        .header("x-backend", name)
        .body(Full::new(Bytes::from(out.to_string())))
        .unwrap()
}

impl App {
    pub fn start(ns: &NetNs, name: &str, port: u16) -> App {
        let std_listener = ns
            .run(|| std::net::TcpListener::bind(("0.0.0.0", port)))
            .unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        let (hits, fail) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let ctx = (name.to_string(), hits.clone(), fail.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let ctx = ctx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        ctx.1.fetch_add(1, Ordering::SeqCst);
                        let resp = if ctx.2.load(Ordering::SeqCst) {
                            Response::builder()
                                .status(503)
                                .header("x-backend", ctx.0.as_str())
                                .body(Full::new(Bytes::from("failing on purpose\n")))
                                .unwrap()
                        } else {
                            reply(&ctx.0, peer, &req)
                        };
                        async move { Ok::<_, std::convert::Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        App { hits, fail, task }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

/// A keep-alive HTTP/1.1 connection from inside a pod (captured: it goes through ztunnel).
pub async fn connect(ns: &NetNs, dst: SocketAddr) -> hyper::client::conn::http1::SendRequest<Body> {
    let s = ns
        .run(|| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None))
        .unwrap();
    s.set_nonblocking(true).unwrap();
    let tcp = tokio::net::TcpSocket::from_std_stream(s.into())
        .connect(dst)
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

pub struct Answer {
    pub status: u16,
    pub backend: String,
    pub reason: String,
    pub body: Bytes,
}

pub async fn send(
    conn: &mut hyper::client::conn::http1::SendRequest<Body>,
    method: &str,
    path: &str,
) -> Answer {
    conn.ready().await.unwrap();
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "api.default")
        .body(body::empty())
        .unwrap();
    let resp = conn.send_request(req).await.unwrap();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    };
    let (status, backend, reason) = (resp.status().as_u16(), h("x-backend"), h("x-ambit-reason"));
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        backend,
        reason,
        body,
    }
}

/// `n` GETs over `conns` parallel keep-alive connections; (status, backend) of each.
pub async fn load(ns: &NetNs, dst: SocketAddr, n: usize, conns: usize) -> Vec<(u16, String)> {
    let mut tasks = vec![];
    for c in 0..conns {
        let mut conn = connect(ns, dst).await;
        tasks.push(tokio::spawn(async move {
            let mut out = vec![];
            for _ in (c..n).step_by(conns) {
                let a = send(&mut conn, "GET", "/").await;
                out.push((a.status, a.backend));
            }
            out
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// A plain HTTP/1.0 GET from inside `ns`: (status, body).
pub fn get_in(ns: &NetNs, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let path = path.to_string();
    ns.run(move || {
        let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
        Ok((status, body.unwrap_or_default()))
    })
}
