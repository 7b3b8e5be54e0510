//! What passes through a real waypoint process: HTTP/1.1, HTTP/2, gRPC (unary and streaming,
//! with trailers), WebSocket upgrades, opaque TCP, malformed HTTP; plus L7 authorization,
//! mirroring, telemetry (metrics labels, access log, traceparent) and graceful drain.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ambit_waypoint::body::{self, BoxError};
use bytes::Bytes;
use common::apps::{Behavior, HttpApp, TcpEcho};
use common::*;
use http::Request;
use http_body_util::BodyExt;
use hyper::body::{Body as HttpBody, Frame};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

async fn one_backend(tag: &str) -> (Env, HttpApp, TcpEcho) {
    let mut env = Env::new(tag).await;
    let app = HttpApp::start("api-0").await;
    let tcp = TcpEcho::start("api-0").await;
    env.add_backend(
        "api-0",
        json!({"app": "api"}),
        &[(8080, app.addr), (9000, tcp.addr)],
    )
    .await;
    (env, app, tcp)
}

struct ChanBody(mpsc::Receiver<Bytes>);

impl HttpBody for ChanBody {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut v = vec![0u8];
    v.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    v.extend_from_slice(msg);
    v.into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_http2_grpc_websocket_and_tcp_pass_through() {
    if skip_unless_root() {
        return;
    }
    let (mut env, _app, _tcp) = one_backend("proto").await;
    env.start_waypoint(&[]);
    let client = env.client("client").await;

    // HTTP/1.1 with a body.
    let mut h1 = client.h1(VIP).await;
    let req = Request::post("/echo")
        .header("host", "api.shop")
        .body(body::full("abc"))
        .unwrap();
    let (s, b, bytes) = read(h1.send_request(req).await.unwrap()).await;
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (s, b.as_str(), v["version"].as_str(), v["body_len"].as_u64()),
        (200, "api-0", Some("HTTP/1.1"), Some(3))
    );

    // HTTP/2.
    let mut h2 = client.h2(VIP).await;
    let req = Request::get("http://api.shop/h2")
        .body(body::empty())
        .unwrap();
    let (s, _, bytes) = read(h2.send_request(req).await.unwrap()).await;
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!((s, v["version"].as_str()), (200, Some("HTTP/2.0")));

    // HTTP/2 without `:authority`, only a Host header (RFC 9113 allows it; an HTTP/1.1
    // request's head goes out this way): the waypoint builds the authority from Host.
    let req = Request::get("/h2-host-only")
        .version(http::Version::HTTP_11)
        .header("host", "api.shop")
        .body(body::empty())
        .unwrap();
    let (s, _, bytes) = read(h2.send_request(req).await.unwrap()).await;
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&bytes));
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        (v["version"].as_str(), v["path"].as_str()),
        (Some("HTTP/2.0"), Some("/h2-host-only"))
    );

    // gRPC unary: body echoed, trailers arrive.
    let req = Request::post("http://api.shop/pkg.Echo/Unary")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body::full(grpc_frame(b"hi")))
        .unwrap();
    let resp = h2.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers.get("grpc-status").unwrap(), "0");
    assert_eq!(collected.to_bytes(), grpc_frame(b"hi"));

    // gRPC bidirectional streaming: each message comes back before the next is sent.
    let (tx, rx) = mpsc::channel(4);
    let req = Request::post("http://api.shop/pkg.Echo/Stream")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(ChanBody(rx).boxed())
        .unwrap();
    h2.ready().await.unwrap();
    let pending = h2.send_request(req);
    tx.send(grpc_frame(b"one")).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(5), pending)
        .await
        .unwrap()
        .unwrap();
    let mut body = resp.into_body();
    for msg in [&b"one"[..], b"two", b"three"] {
        if msg != b"one" {
            tx.send(grpc_frame(msg)).await.unwrap();
        }
        let frame = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(
            frame.into_data().unwrap(),
            grpc_frame(msg),
            "streamed, not buffered"
        );
    }
    drop(tx);
    let rest = body.collect().await.unwrap();
    assert_eq!(rest.trailers().unwrap().get("grpc-status").unwrap(), "0");

    // WebSocket: the upgrade is forwarded, then bytes flow both ways.
    let mut ws = client.h1(VIP).await;
    let req = Request::get("/ws")
        .header("host", "api.shop")
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .body(body::empty())
        .unwrap();
    let resp = ws.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 101);
    let mut io = TokioIo::new(hyper::upgrade::on(resp).await.unwrap());
    let mut buf = vec![0u8; 64];
    let n = io.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"hello from api-0\n");
    io.write_all(b"ping").await.unwrap();
    let mut got = [0u8; 4];
    io.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"ping");

    // Opaque TCP (not HTTP): spliced to an endpoint as is.
    let mut raw = client.tunnel("10.96.0.10:9000").await.unwrap();
    raw.write_all(b"\x00\x01binary stuff\n").await.unwrap();
    let mut got = vec![0u8; 6 + 15];
    raw.read_exact(&mut got).await.unwrap();
    assert_eq!(&got[..], b"api-0:\x00\x01binary stuff\n");
    drop(raw);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = env.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "ambit_tcp_connections_opened_total",
            &[("destination_service", "api.shop.svc.cluster.local")]
        ),
        1.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "ambit_tcp_sent_bytes_total", &[]) >= 15.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_http_gets_400_and_only_its_connection_closes() {
    if skip_unless_root() {
        return;
    }
    let (mut env, _app, _tcp) = one_backend("malformed").await;
    env.start_waypoint(&[]);
    let client = env.client("client").await;
    let mut good = client.h1(VIP).await;
    let mut bad = client.tunnel(VIP).await.unwrap();
    bad.write_all(b"GET / HTTP/1.1\r\nHost: a\r\nthis is not a header\r\n\r\n")
        .await
        .unwrap();
    // Read until the stream ends (cleanly, or reset by the waypoint after its answer).
    let mut out = vec![];
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), bad.read(&mut buf))
            .await
            .expect("the stream ends")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    // The other connection (same pooled HBONE connection) is unaffected.
    for _ in 0..3 {
        good.ready().await.unwrap();
        let (s, _, _) = read(good.send_request(get("/")).await.unwrap()).await;
        assert_eq!(s, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l7_authorization_by_method_path_and_identity() {
    if skip_unless_root() {
        return;
    }
    let (mut env, _app, _tcp) = one_backend("authz").await;
    env.extra = json!({"policies": [
        {"name": "public", "namespace": NS, "selector": {"app": "api"}, "action": "ALLOW",
         "rules": [{"to": [{"methods": ["GET"], "paths": ["/public*"]}]}]},
        {"name": "admin", "namespace": NS, "selector": {"app": "api"}, "action": "ALLOW",
         "rules": [{"from": [{"principals": ["spiffe://cluster.local/ns/shop/sa/admin"]}], "to": [{"methods": ["POST"], "paths": ["/admin"]}]}]}
    ]});
    env.start_waypoint(&[]);
    let user = env.client("user").await;
    let admin = env.client("admin").await;
    let post = || {
        Request::post("/admin")
            .header("host", "api.shop")
            .body(body::full("x"))
            .unwrap()
    };
    let mut u = user.h1(VIP).await;
    let (s, _, _) = read(u.send_request(get("/public/page")).await.unwrap()).await;
    assert_eq!(s, 200);
    u.ready().await.unwrap();
    let resp = u.send_request(post()).await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers().get("x-ambit-reason").unwrap(), "not_allowed");
    let _ = read(resp).await;
    let mut a = admin.h1(VIP).await;
    let (s, _, _) = read(a.send_request(post()).await.unwrap()).await;
    assert_eq!(s, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirror_gets_its_share_and_never_slows_the_caller() {
    if skip_unless_root() {
        return;
    }
    let (mut env, app, _tcp) = one_backend("mirror").await;
    let mirror = HttpApp::start("mirror").await;
    mirror.set(Behavior {
        delay: Duration::from_millis(300),
        fail_percent: 0,
    });
    env.add_backend("mirror-0", json!({"app": "mirror"}), &[(8080, mirror.addr)])
        .await;
    env.extra = json!({"routes": [{"name": "api", "namespace": NS, "service": {"name": "api", "namespace": NS},
        "rules": [{"mirror": {"backend": {"service": "mirror"}, "percentage": 30}}]}]});
    env.start_waypoint(&[]);
    let client = env.client("client").await;
    let n = 1000;
    let t = Instant::now();
    let results = load(&client, n, 4, |_| get("/")).await;
    let took = t.elapsed();
    assert!(
        results.iter().all(|(s, b)| *s == 200 && b == "api-0"),
        "the caller sees only the primary"
    );
    // 1000 requests in 4 lanes: were mirrors awaited, this would take > 250 × 300 ms.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    let share = mirror.hits() as f64 * 100.0 / n as f64;
    assert!(
        (25.0..=35.0).contains(&share),
        "mirror got {share}% (want 30 ± 5)"
    );
    assert_eq!(app.hits(), n);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_access_log_and_traceparent() {
    if skip_unless_root() {
        return;
    }
    let (mut env, _app, _tcp) = one_backend("telemetry").await;
    env.start_waypoint(&[]);
    let client = env.client("client").await;
    let mut send = client.h1(VIP).await;
    let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let req = Request::get("/traced")
        .header("host", "api.shop")
        .header("traceparent", parent)
        .body(body::empty())
        .unwrap();
    let (s, _, bytes) = read(send.send_request(req).await.unwrap()).await;
    assert_eq!(s, 200);
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    let upstream_tp = v["headers"]["traceparent"].as_str().unwrap().to_string();
    let parts: Vec<&str> = upstream_tp.split('-').collect();
    assert_eq!(
        parts[1], "4bf92f3577b34da6a3ce929d0e0e4736",
        "trace id kept"
    );
    assert_ne!(parts[2], "00f067aa0ba902b7", "a child span");
    // Without a traceparent a trace is started.
    send.ready().await.unwrap();
    let (_, _, bytes) = read(send.send_request(get("/untraced")).await.unwrap()).await;
    let v: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["headers"]["traceparent"].as_str().unwrap().len(), 55);
    // The endpoint's tunnel carries the original caller.
    let fwd = env.backends[0].forwarded.lock().unwrap().clone();
    assert!(fwd.iter().all(|f| *f == Some(client.src)), "{fwd:?}");

    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = env.metrics();
    let labels = [
        ("reporter", "waypoint"),
        ("source_workload", "client"),
        ("source_workload_namespace", "shop"),
        (
            "source_principal",
            "spiffe://cluster.local/ns/shop/sa/client",
        ),
        ("destination_service", "api.shop.svc.cluster.local"),
        ("destination_service_namespace", "shop"),
        ("route", "default"),
        ("response_code", "200"),
        ("response_flags", "-"),
    ];
    assert_eq!(metric_sum(&m, "ambit_requests_total", &labels), 2.0, "{m}");
    assert_eq!(
        metric_sum(&m, "ambit_request_duration_milliseconds_count", &labels),
        2.0,
        "{m}"
    );
    assert!(
        metric_sum(&m, "ambit_response_bytes_sum", &labels) > 100.0,
        "{m}"
    );

    let log = env.access_log();
    let line: Value = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["path"] == "/traced")
        .unwrap_or_else(|| panic!("no access-log line for /traced:\n{log}"));
    assert_eq!(line["response_code"], 200);
    assert_eq!(line["response_flags"], "-");
    assert_eq!(line["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(line["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(line["span_id"], parts[2]);
    assert_eq!(
        line["source_principal"],
        "spiffe://cluster.local/ns/shop/sa/client"
    );
    assert!(line["upstream_host"].as_str().unwrap().ends_with(":8080"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    if skip_unless_root() {
        return;
    }
    let (mut env, app, _tcp) = one_backend("drain").await;
    app.set(Behavior {
        delay: Duration::from_millis(800),
        fail_percent: 0,
    });
    env.start_waypoint(&["--drain-timeout", "5s"]);
    let client = env.client("client").await;
    let mut send = client.h1(VIP).await;
    let slow =
        tokio::spawn(async move { read(send.send_request(get("/slow")).await.unwrap()).await.0 });
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.waypoint.as_mut().unwrap().terminate().unwrap();
    assert_eq!(slow.await.unwrap(), 200, "the in-flight request finished");
    let deadline = Instant::now() + Duration::from_secs(5);
    while env.waypoint.as_mut().unwrap().try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "waypoint did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
