//! The proxy side of the control-plane TLS: no client certificate (proxies authenticate with
//! their ServiceAccount token), the server must chain to the mesh root read from a file and
//! carry the operator's SPIFFE ID.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;

use super::ControlError;
use crate::identity::Identity;
use crate::tls::{provider, ALPN_H2};

#[derive(Debug)]
struct OperatorVerifier {
    roots: RootCertStore,
    expected: Identity,
}

fn rejected(msg: String) -> rustls::Error {
    rustls::Error::General(msg)
}

impl ServerCertVerifier for OperatorVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        let id = crate::x509::identity_of(end_entity)
            .map_err(|e| rejected(format!("control plane certificate: {e}")))?;
        if id != self.expected {
            return Err(rejected(format!(
                "control plane presented {id}, expected {}; check --operator-identity",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _m: &[u8],
        _c: &CertificateDer<'_>,
        _d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Reads the mesh root(s) from a PEM file (re-read per connection: roots rotate).
pub fn read_roots(path: &Path) -> Result<RootCertStore, ControlError> {
    let bad = |why: String| ControlError::Roots {
        path: path.to_path_buf(),
        why,
    };
    let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| bad(e.to_string()))?;
        roots.add(cert).map_err(|e| bad(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in the file".into()));
    }
    Ok(roots)
}

/// TLS 1.3 client config accepting only `expected` under `roots`.
pub fn client_config(roots: RootCertStore, expected: Identity) -> Arc<ClientConfig> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(OperatorVerifier { roots, expected }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    Arc::new(cfg)
}

/// Where and how to reach the control plane.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `host:port`.
    pub address: String,
    pub root_cert: std::path::PathBuf,
    pub operator_identity: Identity,
    /// The projected ServiceAccount token, re-read per connection (kubelet rotates it).
    pub token_file: std::path::PathBuf,
    pub connect_timeout: Duration,
}

impl Endpoint {
    pub fn token(&self) -> Result<String, ControlError> {
        let t = std::fs::read_to_string(&self.token_file).map_err(|e| ControlError::Token {
            path: self.token_file.clone(),
            why: e.to_string(),
        })?;
        let t = t.trim().to_string();
        if t.is_empty() {
            return Err(ControlError::Token {
                path: self.token_file.clone(),
                why: "the file is empty".into(),
            });
        }
        Ok(t)
    }

    /// A fresh HTTP/2 connection to the control plane (the connection task runs in the
    /// background and ends when the returned handle and its streams are dropped).
    pub async fn connect(&self) -> Result<SendRequest<Bytes>, ControlError> {
        let roots = read_roots(&self.root_cert)?;
        let config = client_config(roots, self.operator_identity.clone());
        let unreachable = |why: String| ControlError::Unreachable {
            address: self.address.clone(),
            why,
        };
        let host = self
            .address
            .rsplit_once(':')
            .map(|(h, _)| h.trim_matches(['[', ']']))
            .unwrap_or(&self.address)
            .to_string();
        let name =
            ServerName::try_from(host).map_err(|e| unreachable(format!("bad host name: {e}")))?;
        let fut = async {
            let tcp = TcpStream::connect(&self.address)
                .await
                .map_err(|e| unreachable(format!("TCP: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| unreachable(format!("TLS: {e}")))?;
            let (send, conn) = h2::client::handshake(tls)
                .await
                .map_err(|e| unreachable(format!("HTTP/2: {e}")))?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "control-plane connection ended");
                }
            });
            Ok(send)
        };
        tokio::time::timeout(self.connect_timeout, fut)
            .await
            .map_err(|_| unreachable(format!("timed out after {:?}", self.connect_timeout)))?
    }
}
