//! The CA endpoint over real TLS on loopback: who may get which certificate.
mod control_common;

use std::sync::Arc;
use std::time::Duration;

use ambit_core::certs::BoxFuture;
use ambit_core::certs::CertManager;
use ambit_core::control::proto::{ErrorBody, SignRequest};
use ambit_core::control::{
    pem_encode, ConfigStream, ControlError, RemoteCa, StreamOptions, SIGN_PATH,
};
use ambit_core::Identity;
use ambit_operator::control::{Caller, ReviewError, Server, ServerConfig, TokenReviewer};
use control_common::*;

fn id(ns: &str, sa: &str) -> Identity {
    Identity::new("cluster.local", ns, sa).unwrap()
}

async fn sign(env: &Env, token: &str, identity: &Identity) -> Result<(), ControlError> {
    let ca = RemoteCa {
        endpoint: env.endpoint(token),
    };
    let (_key, csr) = ambit_core::ca::generate_csr(identity).unwrap();
    ca.sign_at_operator(identity, &csr).await.map(|_| ())
}

fn refused(r: Result<(), ControlError>) -> (u16, String, String) {
    match r {
        Err(ControlError::Refused {
            status,
            error,
            reason,
        }) => (status, error, reason),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test]
async fn ztunnel_gets_certificates_for_pods_on_its_node_only() {
    let env = Env::start("ca-node").await;
    env.index.add("prod", "web", "n1");
    env.index.add("prod", "db", "n2");
    // Through the CertificateProvider path ztunnel uses: a usable leaf chained to the root.
    let manager = CertManager::new(Arc::new(RemoteCa {
        endpoint: env.endpoint(ZTUNNEL_N1),
    }));
    let cert = manager.issue(&id("prod", "web")).await.unwrap();
    assert_eq!(cert.identity, id("prod", "web"));
    assert_eq!(cert.root_ders, vec![env.ca.root_der()]);
    let life = cert.not_after.duration_since(cert.not_before).unwrap();
    assert!(
        life > Duration::from_secs(23 * 3600),
        "default TTL is 24h: {life:?}"
    );

    let (status, error, reason) = refused(sign(&env, ZTUNNEL_N1, &id("prod", "db")).await);
    assert_eq!((status, reason.as_str()), (403, "forbidden"));
    assert!(
        error.contains("spiffe://cluster.local/ns/prod/sa/db") && error.contains("node n1"),
        "the refusal names the identity and the node: {error}"
    );
    // The right node gets it.
    sign(&env, ZTUNNEL_N2, &id("prod", "db")).await.unwrap();
}

#[tokio::test]
async fn bad_tokens_are_401_and_waypoints_get_only_themselves() {
    let env = Env::start("ca-authn").await;
    let (status, error, _) = refused(sign(&env, "bogus", &id("prod", "wp")).await);
    assert_eq!(status, 401, "{error}");
    sign(&env, WAYPOINT, &id("prod", "wp")).await.unwrap();
    env.index.add("prod", "web", "n2");
    let (status, error, _) = refused(sign(&env, WAYPOINT, &id("prod", "web")).await);
    assert_eq!(status, 403);
    assert!(error.contains("own identity"), "{error}");
    // A CSR for another identity than the one asked for is a bad request, whoever asks.
    let ca = RemoteCa {
        endpoint: env.endpoint(WAYPOINT),
    };
    let (_key, csr) = ambit_core::ca::generate_csr(&id("prod", "web")).unwrap();
    let r = ca
        .sign_at_operator(&id("prod", "wp"), &csr)
        .await
        .map(|_| ());
    let (status, error, _) = refused(r);
    assert_eq!(status, 400, "{error}");
}

#[tokio::test]
async fn proxies_refuse_a_server_with_another_identity() {
    let env = Env::start("ca-serverid").await;
    let mut ep = env.endpoint(WAYPOINT);
    ep.operator_identity = id("ambit-system", "impostor");
    let ca = RemoteCa { endpoint: ep };
    let (_key, csr) = ambit_core::ca::generate_csr(&id("prod", "wp")).unwrap();
    let err = ca
        .sign_at_operator(&id("prod", "wp"), &csr)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, ControlError::Unreachable { why, .. } if why.contains("expected spiffe://cluster.local/ns/ambit-system/sa/impostor")),
        "{err}"
    );
}

/// POSTs raw bytes to the sign endpoint; (status, error body).
async fn post_raw(env: &Env, token: &str, body: &[u8]) -> (u16, ErrorBody) {
    let ep = env.endpoint(token);
    let mut client = ep.connect().await.unwrap().ready().await.unwrap();
    let req = http::Request::builder()
        .method("POST")
        .uri(format!("https://ambit-operator{SIGN_PATH}"))
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
    let (resp, mut send) = client.send_request(req, false).unwrap();
    send.send_data(bytes::Bytes::copy_from_slice(body), true)
        .unwrap();
    let resp = resp.await.unwrap();
    let status = resp.status().as_u16();
    let mut body = resp.into_body();
    let mut text = Vec::new();
    while let Some(Ok(c)) = body.data().await {
        text.extend_from_slice(&c);
    }
    (status, serde_json::from_slice(&text).unwrap())
}

#[tokio::test]
async fn malformed_requests_are_400_and_leave_streams_alone() {
    let env = Env::start("ca-malformed").await;
    env.publisher
        .publish(&"node/n1".parse().unwrap(), &config(&["a"]))
        .unwrap();
    let stream = ConfigStream::connect(StreamOptions::new(
        env.endpoint(ZTUNNEL_N1),
        "node/n1".parse().unwrap(),
    ))
    .await;
    let (status, body) = post_raw(&env, ZTUNNEL_N1, b"{\"identity\": ").await;
    assert_eq!(
        (status, body.reason.as_str()),
        (400, "bad_request"),
        "{body:?}"
    );
    let bad_csr = serde_json::to_vec(&SignRequest {
        identity: "spiffe://cluster.local/ns/prod/sa/a".into(),
        csr_pem: pem_encode("CERTIFICATE REQUEST", b"not DER"),
    })
    .unwrap();
    env.index.add("prod", "a", "n1");
    let (status, body) = post_raw(&env, ZTUNNEL_N1, &bad_csr).await;
    assert_eq!(status, 400, "{body:?}");
    let (status, _) = post_raw(&env, "bogus", b"{}").await;
    assert_eq!(status, 401);
    // The stream is unaffected: a new config still arrives.
    let mut rx = stream.config.clone();
    env.publisher
        .publish(&"node/n1".parse().unwrap(), &config(&["a", "b"]))
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        rx.wait_for(|c| c.workloads.len() == 2),
    )
    .await
    .expect("update after the malformed requests")
    .unwrap();
}

struct Down;
impl TokenReviewer for Down {
    fn review<'a>(&'a self, _token: &'a str) -> BoxFuture<'a, Result<Caller, ReviewError>> {
        Box::pin(async { Err(ReviewError::Unavailable("API server unreachable".into())) })
    }
}

#[tokio::test]
async fn an_unavailable_token_review_is_503() {
    let env = Env::start("ca-503").await;
    let cfg = ServerConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        env.ca.clone(),
        Arc::new(Down),
        env.index.clone(),
    );
    let server = Server::new(cfg).await.unwrap();
    let mut ep = env.endpoint(WAYPOINT);
    ep.address = server.local_addr().unwrap().to_string();
    let metrics = server.metrics();
    let task = tokio::spawn(server.serve());
    let ca = RemoteCa { endpoint: ep };
    let (_key, csr) = ambit_core::ca::generate_csr(&id("prod", "wp")).unwrap();
    let r = ca
        .sign_at_operator(&id("prod", "wp"), &csr)
        .await
        .map(|_| ());
    let (status, error, reason) = refused(r);
    assert_eq!((status, reason.as_str()), (503, "unavailable"));
    assert!(error.contains("API server unreachable"), "{error}");
    assert!(metrics_text(&metrics)
        .contains("ambit_control_csr_requests_total{result=\"unavailable\"} 1"));
    task.abort();
}
