//! Malformed HBONE input against a real ztunnel: each bad stream or connection is refused
//! with the right status, and the ztunnel keeps serving everyone else.
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::ca::CertificateAuthority;
use ambit_core::certs::{CertManager, LocalCa};
use ambit_core::tls::client_config;
use ambit_testkit::mesh::metric_sum;
use common::*;
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_hbone_is_refused_and_others_keep_working() {
    let mut m = mesh("hbonebad", 2);
    let a = m.add_pod(0, "a", "default", "sa-a", &[]).unwrap();
    let b = m.add_pod(1, "b", "default", "sa-b", &[]).unwrap();
    // An outsider that holds a valid mesh certificate but speaks HBONE by hand.
    let x = m.add_pod(0, "x", "default", "sa-x", &[]).unwrap();
    m.pods[x].captured = false;
    m.enroll(a).unwrap();
    m.enroll(b).unwrap();
    m.start_ztunnel(0).unwrap();
    m.start_ztunnel(1).unwrap();
    let _app = serve(&m, b, 8080);

    let ca = CertificateAuthority::from_pem(
        "cluster.local",
        &std::fs::read_to_string(m.dir.join("ca.pem")).unwrap(),
        &std::fs::read_to_string(m.dir.join("ca-key.pem")).unwrap(),
    )
    .unwrap();
    let certs = CertManager::new(Arc::new(LocalCa {
        ca: Arc::new(ca),
        leaf_ttl: Duration::from_secs(600),
        extra_roots: vec![],
    }));
    let slot = certs
        .slot(&"spiffe://cluster.local/ns/default/sa/sa-x".parse().unwrap())
        .await
        .unwrap();
    let b_identity = "spiffe://cluster.local/ns/default/sa/sa-b".parse().unwrap();
    let hbone: SocketAddr = (m.ip(b), 15008).into();
    let tls = client_config(slot, vec![b_identity]);
    let x_ns = &m.pod(x).pod.ns;
    let connect = || async {
        let std = x_ns.run(|| std::net::TcpStream::connect(hbone)).unwrap();
        std.set_nonblocking(true).unwrap();
        let tcp = tokio::net::TcpStream::from_std(std).unwrap();
        tokio_rustls::TlsConnector::from(tls.clone())
            .connect(
                rustls::pki_types::ServerName::IpAddress(m.ip(b).into()),
                tcp,
            )
            .await
            .unwrap()
    };

    let (h2, conn) = h2::client::handshake(connect().await).await.unwrap();
    tokio::spawn(conn);
    let send = |req: http::Request<()>| {
        let h2 = h2.clone();
        async move {
            let (resp, _body) = h2.ready().await.unwrap().send_request(req, false).unwrap();
            resp.await.unwrap()
        }
    };
    let connect_req = |authority: &str| {
        http::Request::builder()
            .method("CONNECT")
            .uri(authority)
            .body(())
            .unwrap()
    };

    let resp = send(
        http::Request::get(format!("http://{}:8080/", m.ip(b)))
            .body(())
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let resp = send(connect_req("bogus-authority:8080")).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = send(connect_req("10.20.2.99:8080")).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(resp.headers()["x-ambit-reason"], "destination_not_local");
    let resp = send(connect_req(&format!("{}:9999", m.ip(b)))).await;
    assert_eq!(
        resp.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "nothing listens on 9999"
    );
    // The same connection still carries a good stream afterwards.
    let resp = send(connect_req(&format!("{}:8080", m.ip(b)))).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // Garbage HTTP/2 frames after a valid TLS handshake: that connection is closed.
    let mut raw = connect().await;
    raw.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x04\xff\xff\xff\xff\xff\xffgarbage")
        .await
        .unwrap();
    let mut sink = vec![];
    let closed = tokio::time::timeout(Duration::from_secs(5), raw.read_to_end(&mut sink)).await;
    assert!(
        closed.is_ok(),
        "a connection sending garbage frames must be closed"
    );

    // Not even TLS: closed, and counted.
    let mut plain = {
        let std = x_ns.run(|| std::net::TcpStream::connect(hbone)).unwrap();
        std.set_nonblocking(true).unwrap();
        tokio::net::TcpStream::from_std(std).unwrap()
    };
    plain.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut sink)).await;
    assert!(closed.is_ok());

    // Everyone else is unaffected.
    let mesh_ref = &m;
    let ok =
        tokio::task::block_in_place(|| call(mesh_ref, a, m.ip(b).into(), 8080, "still serving"));
    assert_eq!(ok.unwrap().2, "still serving");
    let failures = metric_sum(
        &m.metrics(1),
        "ambit_tcp_connection_failures_total",
        &[("reason", "tls_handshake_failed")],
    );
    assert!(failures >= 1.0);
}
