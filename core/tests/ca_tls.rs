//! The CA issues exactly the identity it authorizes; TLS enforces HBONE's identity rules.
mod common;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ambit_core::ca::{generate_csr, CaError};
use ambit_core::tls::{client_config, peer_identity, server_config};
use ambit_core::x509::{identity_of, validity_of};
use common::*;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[test]
fn ca_issues_only_the_authorized_identity() {
    let ca = ca("cluster.local");
    let alice = id("spiffe://cluster.local/ns/a/sa/alice");
    let (_key, csr) = generate_csr(&alice).unwrap();
    let leaf = ca.sign_csr(&csr, &alice, Duration::from_secs(600)).unwrap();
    assert_eq!(identity_of(&leaf).unwrap(), alice);
    let (nb, na) = validity_of(&leaf).unwrap();
    let life = na.duration_since(nb).unwrap();
    assert!(
        life >= Duration::from_secs(600) && life <= Duration::from_secs(700),
        "{life:?}"
    );
    assert!(nb <= SystemTime::now());

    let bob = id("spiffe://cluster.local/ns/a/sa/bob");
    match ca.sign_csr(&csr, &bob, Duration::from_secs(600)) {
        Err(CaError::CsrSanMismatch { asked, authorized }) => {
            assert_eq!(asked, vec![alice.to_string()]);
            assert_eq!(authorized, bob.to_string());
        }
        other => panic!("expected a SAN mismatch, got {other:?}"),
    }
    let foreign = id("spiffe://other.domain/ns/a/sa/alice");
    let (_k, csr) = generate_csr(&foreign).unwrap();
    assert!(matches!(
        ca.sign_csr(&csr, &foreign, Duration::from_secs(1)),
        Err(CaError::WrongTrustDomain { .. })
    ));
    assert!(matches!(
        ca.sign_csr(b"not a csr", &alice, Duration::from_secs(1)),
        Err(CaError::BadCsr(_))
    ));
}

#[test]
fn ca_round_trips_through_pem() {
    let ca = ca("cluster.local");
    let loaded = ambit_core::ca::CertificateAuthority::from_pem(
        "cluster.local",
        &ca.root_pem(),
        &ca.key_pem(),
    )
    .unwrap();
    let alice = id("spiffe://cluster.local/ns/a/sa/alice");
    let (_key, csr) = generate_csr(&alice).unwrap();
    let leaf = loaded
        .sign_csr(&csr, &alice, Duration::from_secs(60))
        .unwrap();
    // A leaf from the reloaded CA must verify against the original root.
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.root_der()).unwrap();
    let parsed = rustls::server::ParsedCertificate::try_from(&leaf).unwrap();
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        &roots,
        &[],
        rustls::pki_types::UnixTime::now(),
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .all,
    )
    .unwrap();
}

/// Runs one handshake; returns (client result, server's view of the client identity).
async fn handshake(
    server: Arc<ambit_core::certs::CertSlot>,
    client: Arc<ambit_core::certs::CertSlot>,
    expected: &[&str],
) -> (Result<(), String>, Result<String, String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let scfg = server_config(server);
    let srv = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        match tokio_rustls::TlsAcceptor::from(scfg).accept(tcp).await {
            Ok(mut tls) => {
                let who = peer_identity(tls.get_ref().1.peer_certificates())
                    .map(|i| i.to_string())
                    .ok_or_else(|| "no identity".to_string());
                let _ = tls.write_all(b"ok").await;
                who
            }
            Err(e) => Err(e.to_string()),
        }
    });
    let ccfg = client_config(client, expected.iter().map(|s| id(s)).collect());
    let tcp = TcpStream::connect(addr).await.unwrap();
    let res = tokio_rustls::TlsConnector::from(ccfg)
        .connect(ServerName::IpAddress(addr.ip().into()), tcp)
        .await;
    let client_result = match res {
        Ok(mut tls) => {
            let mut buf = [0u8; 2];
            // In TLS 1.3 the server checks our certificate after we think we are done:
            // a rejection shows up as a failed read.
            tls.read_exact(&mut buf)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
        Err(e) => Err(e.to_string()),
    };
    (client_result, srv.await.unwrap())
}

#[tokio::test]
async fn mtls_accepts_expected_peers() {
    let ca = ca("cluster.local");
    let server = slot(&ca, "spiffe://cluster.local/ns/b/sa/server").await;
    let client = slot(&ca, "spiffe://cluster.local/ns/a/sa/client").await;
    let (c, s) = handshake(server, client, &["spiffe://cluster.local/ns/b/sa/server"]).await;
    c.unwrap();
    assert_eq!(s.unwrap(), "spiffe://cluster.local/ns/a/sa/client");
}

#[tokio::test]
async fn client_refuses_unexpected_server_identity() {
    let ca = ca("cluster.local");
    let server = slot(&ca, "spiffe://cluster.local/ns/b/sa/impostor").await;
    let client = slot(&ca, "spiffe://cluster.local/ns/a/sa/client").await;
    let (c, _s) = handshake(server, client, &["spiffe://cluster.local/ns/b/sa/server"]).await;
    let err = c.unwrap_err();
    assert!(err.contains("expected one of"), "{err}");
}

#[tokio::test]
async fn server_refuses_other_trust_domain() {
    // Same root trusted on both sides, but the client's identity is in another trust domain.
    let ca_a = ca("cluster.local");
    let ca_b = ca("evil.example");
    let server = slot(&ca_a, "spiffe://cluster.local/ns/b/sa/server").await;
    let mgr = ambit_core::certs::CertManager::new(Arc::new(ambit_core::certs::LocalCa {
        ca: ca_b.clone(),
        leaf_ttl: Duration::from_secs(60),
        extra_roots: vec![ca_a.root_der()],
    }));
    let client = mgr
        .slot(&id("spiffe://evil.example/ns/a/sa/client"))
        .await
        .unwrap();
    // Make the server trust the foreign root too, so only the trust-domain rule can refuse.
    let server_mgr = ambit_core::certs::CertManager::new(Arc::new(ambit_core::certs::LocalCa {
        ca: ca_a.clone(),
        leaf_ttl: Duration::from_secs(60),
        extra_roots: vec![ca_b.root_der()],
    }));
    let server_trusting = server_mgr
        .slot(&id("spiffe://cluster.local/ns/b/sa/server"))
        .await
        .unwrap();
    drop(server);
    let (c, s) = handshake(
        server_trusting,
        client,
        &["spiffe://cluster.local/ns/b/sa/server"],
    )
    .await;
    assert!(c.is_err());
    let err = s.unwrap_err();
    assert!(err.contains("not in trust domain"), "{err}");
}

#[tokio::test]
async fn forged_identity_from_untrusted_root_is_refused_both_ways() {
    let ca = ca("cluster.local");
    let forger = common::ca("cluster.local"); // same trust domain name, different key
    let server = slot(&ca, "spiffe://cluster.local/ns/b/sa/server").await;
    let forged_client = slot(&forger, "spiffe://cluster.local/ns/a/sa/client").await;
    let (c, s) = handshake(
        server.clone(),
        forged_client,
        &["spiffe://cluster.local/ns/b/sa/server"],
    )
    .await;
    assert!(c.is_err());
    assert!(s.is_err(), "server accepted a forged client: {s:?}");

    let forged_server = slot(&forger, "spiffe://cluster.local/ns/b/sa/server").await;
    let client = slot(&ca, "spiffe://cluster.local/ns/a/sa/client").await;
    let (c, _) = handshake(
        forged_server,
        client,
        &["spiffe://cluster.local/ns/b/sa/server"],
    )
    .await;
    let err = c.unwrap_err();
    // The forged root has the same name as the real one, so webpki finds "the issuer" and
    // fails on its signature; either way the certificate is refused.
    assert!(err.contains("invalid peer certificate"), "{err}");
}
