//! HBONE client and server over real loopback sockets with real mTLS.
mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ambit_core::certs::CertSlot;
use ambit_core::hbone::client::{HboneError, Pool, PoolConfig, PoolKey};
use ambit_core::hbone::server::{serve_tls, Accepted, Handler, HboneRequest, Reject};
use ambit_core::hbone::splice;
use ambit_core::tls::{client_config, server_config};
use bytes::Bytes;
use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

const CLIENT: &str = "spiffe://cluster.local/ns/a/sa/client";
const SERVER: &str = "spiffe://cluster.local/ns/b/sa/server";

/// Echo server on loopback.
async fn echo() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[derive(Clone)]
struct TestHandler {
    seen: Arc<std::sync::Mutex<Vec<HboneRequest>>>,
    deny_port: u16,
}

impl Handler for TestHandler {
    async fn open(&self, req: HboneRequest) -> Result<Accepted, Reject> {
        self.seen.lock().unwrap().push(req.clone());
        if req.authority.port() == self.deny_port {
            return Err(Reject {
                status: StatusCode::FORBIDDEN,
                reason: "denied_by_policy",
            });
        }
        Accepted::connect(req.authority).await
    }
}

struct Server {
    addr: SocketAddr,
    seen: Arc<std::sync::Mutex<Vec<HboneRequest>>>,
    accepted: Arc<AtomicUsize>,
}

async fn hbone_server(slot: Arc<CertSlot>) -> Server {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(vec![]));
    let accepted = Arc::new(AtomicUsize::new(0));
    let handler = TestHandler {
        seen: seen.clone(),
        deny_port: 1,
    };
    let cfg = server_config(slot);
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = l.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve_tls(tcp, cfg.clone(), handler.clone()));
        }
    });
    Server {
        addr,
        seen,
        accepted,
    }
}

struct Client {
    pool: Pool,
    slot: Arc<CertSlot>,
}

impl Client {
    async fn tunnel(
        &self,
        server: SocketAddr,
        expect: &str,
        authority: SocketAddr,
    ) -> Result<ambit_core::hbone::client::Tunnel, HboneError> {
        let key = PoolKey {
            src_ip: "127.0.0.1".parse().unwrap(),
            src_identity: self.slot.identity().clone(),
            dst: server,
            dst_identity: id(expect),
        };
        let slot = self.slot.clone();
        self.pool
            .connect(
                &key,
                TcpSocket::new_v4,
                || client_config(slot.clone(), vec![id(expect)]),
                authority,
                Some("10.1.1.1:5555".parse().unwrap()),
            )
            .await
    }
}

async fn roundtrip(t: ambit_core::hbone::client::Tunnel, payload: &[u8]) -> Vec<u8> {
    let mut send = t.send;
    let mut recv = t.recv;
    send.send_data(Bytes::copy_from_slice(payload), true)
        .unwrap();
    let mut out = vec![];
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.unwrap();
        recv.flow_control().release_capacity(chunk.len()).unwrap();
        out.extend_from_slice(&chunk);
    }
    out
}

async fn setup(cfg: PoolConfig) -> (Server, Client, SocketAddr) {
    let ca = ca("cluster.local");
    let server = hbone_server(slot(&ca, SERVER).await).await;
    let client = Client {
        pool: Pool::new(cfg),
        slot: slot(&ca, CLIENT).await,
    };
    (server, client, echo().await)
}

#[tokio::test]
async fn connect_echoes_and_carries_metadata() {
    let (server, client, echo) = setup(PoolConfig::default()).await;
    let t = client.tunnel(server.addr, SERVER, echo).await.unwrap();
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(roundtrip(t, &payload).await, payload);
    let seen = server.seen.lock().unwrap();
    assert_eq!(seen[0].authority, echo);
    assert_eq!(
        seen[0].forwarded_for,
        Some("10.1.1.1:5555".parse().unwrap())
    );
    assert_eq!(seen[0].peer_identity.to_string(), CLIENT);
}

#[tokio::test]
async fn streams_share_one_pooled_connection() {
    let (server, client, echo) = setup(PoolConfig::default()).await;
    let mut tunnels = vec![];
    for _ in 0..20 {
        tunnels.push(client.tunnel(server.addr, SERVER, echo).await.unwrap());
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 1);
    assert_eq!(client.pool.connections(), 1);
    let results = futures::future::join_all(
        tunnels
            .into_iter()
            .enumerate()
            .map(|(i, t)| async move { roundtrip(t, format!("stream {i}").as_bytes()).await }),
    )
    .await;
    for (i, r) in results.into_iter().enumerate() {
        assert_eq!(r, format!("stream {i}").as_bytes());
    }
}

#[tokio::test]
async fn pool_opens_more_connections_past_stream_limit_and_stays_bounded() {
    let cfg = PoolConfig {
        max_streams_per_conn: 2,
        max_conns_per_key: 3,
        ..PoolConfig::default()
    };
    let (server, client, echo) = setup(cfg).await;
    let mut tunnels = vec![];
    for _ in 0..10 {
        tunnels.push(client.tunnel(server.addr, SERVER, echo).await.unwrap());
    }
    assert_eq!(server.accepted.load(Ordering::SeqCst), 3);
    assert_eq!(client.pool.connections(), 3);
}

#[tokio::test]
async fn idle_connections_are_evicted() {
    let cfg = PoolConfig {
        idle_timeout: Duration::from_millis(200),
        ..PoolConfig::default()
    };
    let (server, client, echo) = setup(cfg).await;
    let t = client.tunnel(server.addr, SERVER, echo).await.unwrap();
    assert_eq!(roundtrip(t, b"x").await, b"x");
    assert_eq!(client.pool.connections(), 1);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(client.pool.connections(), 0);
    // And the pool dials again afterwards.
    let t = client.tunnel(server.addr, SERVER, echo).await.unwrap();
    assert_eq!(roundtrip(t, b"y").await, b"y");
    assert_eq!(server.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn refusals_carry_status_and_reason() {
    let (server, client, _echo) = setup(PoolConfig::default()).await;
    let denied = client
        .tunnel(server.addr, SERVER, "127.0.0.1:1".parse().unwrap())
        .await;
    match denied {
        Err(HboneError::Status { status, reason, .. }) => {
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert_eq!(reason, "denied_by_policy");
        }
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
    // Nothing listens on this port: 503.
    let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = closed.local_addr().unwrap();
    drop(closed);
    match client.tunnel(server.addr, SERVER, dead).await {
        Err(e @ HboneError::Status { .. }) => assert_eq!(e.reason(), "upstream_refused"),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn wrong_server_identity_fails_before_any_stream() {
    let (server, client, echo) = setup(PoolConfig::default()).await;
    let err = client
        .tunnel(server.addr, "spiffe://cluster.local/ns/b/sa/other", echo)
        .await
        .err()
        .expect("must fail");
    assert!(matches!(err, HboneError::Tls { .. }), "{err}");
    assert!(server.seen.lock().unwrap().is_empty());
}

/// A raw h2 client over mTLS, to send what a well-behaved pool never would.
async fn raw_h2(server: SocketAddr, slot: Arc<CertSlot>) -> h2::client::SendRequest<Bytes> {
    let tcp = TcpStream::connect(server).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_config(slot, vec![id(SERVER)]))
        .connect(
            rustls::pki_types::ServerName::IpAddress(server.ip().into()),
            tcp,
        )
        .await
        .unwrap();
    let (send, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test]
async fn malformed_requests_get_statuses_and_the_server_keeps_serving() {
    let (server, client, echo) = setup(PoolConfig::default()).await;
    let mut raw = raw_h2(server.addr, client.slot.clone()).await;

    let get = http::Request::get(format!("https://{echo}/"))
        .body(())
        .unwrap();
    let (resp, _) = raw.send_request(get, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);

    let bad = http::Request::builder()
        .method("CONNECT")
        .uri("not-an-ip:80")
        .body(())
        .unwrap();
    let (resp, _) = raw
        .clone()
        .ready()
        .await
        .unwrap()
        .send_request(bad, false)
        .unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        resp.headers()[ambit_core::hbone::REASON_HEADER],
        "bad_authority"
    );

    // Garbage on another TLS connection: that connection dies, nothing else does.
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut tls =
        tokio_rustls::TlsConnector::from(client_config(client.slot.clone(), vec![id(SERVER)]))
            .connect(
                rustls::pki_types::ServerName::IpAddress(server.addr.ip().into()),
                tcp,
            )
            .await
            .unwrap();
    tls.write_all(
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\xff\xff\xff\xff\xff\xffgarbage garbage",
    )
    .await
    .unwrap();
    let mut sink = vec![];
    let read = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut sink)).await;
    assert!(
        read.is_ok(),
        "server must close a connection that sends garbage frames"
    );

    // The first raw connection and the pool still work.
    let ok = http::Request::builder()
        .method("CONNECT")
        .uri(echo.to_string())
        .body(())
        .unwrap();
    let (resp, _) = raw.ready().await.unwrap().send_request(ok, false).unwrap();
    assert_eq!(resp.await.unwrap().status(), StatusCode::OK);
    let t = client.tunnel(server.addr, SERVER, echo).await.unwrap();
    assert_eq!(roundtrip(t, b"still here").await, b"still here");
}

#[tokio::test]
async fn splice_half_closes_and_counts_bytes() {
    let (server, client, _) = setup(PoolConfig::default()).await;
    // An upstream that reads everything, then answers with the byte count and closes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = l.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut all = vec![];
        s.read_to_end(&mut all).await.unwrap();
        s.write_all(all.len().to_string().as_bytes()).await.unwrap();
    });
    // A local TCP pair whose far end plays the app.
    let local = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let la = local.local_addr().unwrap();
    let app = tokio::spawn(async move {
        let mut s = TcpStream::connect(la).await.unwrap();
        s.write_all(&vec![7u8; 100_000]).await.unwrap();
        s.shutdown().await.unwrap();
        let mut answer = String::new();
        s.read_to_string(&mut answer).await.unwrap();
        answer
    });
    let (mut accepted, _) = local.accept().await.unwrap();
    let t = client.tunnel(server.addr, SERVER, up).await.unwrap();
    let sent = AtomicUsize::new(0);
    let received = AtomicUsize::new(0);
    splice(
        &mut accepted,
        t.send,
        t.recv,
        &|n| {
            sent.fetch_add(n, Ordering::SeqCst);
        },
        &|n| {
            received.fetch_add(n, Ordering::SeqCst);
        },
    )
    .await
    .unwrap();
    assert_eq!(app.await.unwrap(), "100000");
    assert_eq!(sent.load(Ordering::SeqCst), 100_000);
    assert_eq!(received.load(Ordering::SeqCst), 6);
}
