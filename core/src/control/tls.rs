//! The proxy side of the control-plane TLS: no client certificate (proxies authenticate with
//! their ServiceAccount token), the server must chain to the mesh root read from a file and
//! carry the operator's SPIFFE ID.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;

use super::ControlError;
use crate::identity::Identity;
use crate::tls::{provider, tls13_only_signatures, verified_server_id, ALPN_H2};

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
        let id = verified_server_id(
            &self.roots,
            end_entity,
            intermediates,
            now,
            "control plane certificate",
            rejected,
        )?;
        if id != self.expected {
            return Err(rejected(format!(
                "control plane presented {id}, expected {}; check --operator-identity",
                self.expected
            )));
        }
        Ok(ServerCertVerified::assertion())
    }
    tls13_only_signatures!();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{generate_csr, CertificateAuthority};

    fn leaf(ca: &CertificateAuthority, id: &str) -> CertificateDer<'static> {
        let id: Identity = id.parse().unwrap();
        let (_key, csr) = generate_csr(&id).unwrap();
        ca.sign_csr(&csr, &id, Duration::from_secs(600)).unwrap()
    }

    fn verify(v: &OperatorVerifier, leaf: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let name = ServerName::try_from("op").unwrap();
        v.verify_server_cert(leaf, &[], &name, &[], UnixTime::now())
            .map(drop)
    }

    #[test]
    fn only_the_operator_identity_under_the_mesh_root_is_accepted() {
        let ca =
            CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(ca.root_der()).unwrap();
        let v = OperatorVerifier {
            roots,
            expected: super::super::operator_identity("cluster.local").unwrap(),
        };
        let op = "spiffe://cluster.local/ns/ambit-system/sa/ambit-operator";
        verify(&v, &leaf(&ca, op)).unwrap();
        let impostor = "spiffe://cluster.local/ns/ambit-system/sa/impostor";
        match verify(&v, &leaf(&ca, impostor)) {
            Err(rustls::Error::General(msg)) => assert_eq!(
                msg,
                format!(
                    "control plane presented {impostor}, expected {op}; check --operator-identity"
                )
            ),
            other => panic!("impostor: {other:?}"),
        }
        // The right identity from another CA fails the chain check, before the ID is read.
        let other =
            CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        match verify(&v, &leaf(&other, op)) {
            Err(rustls::Error::InvalidCertificate(_)) => {}
            other => panic!("foreign root: {other:?}"),
        }
        assert!(!v.supported_verify_schemes().is_empty());
    }
}
