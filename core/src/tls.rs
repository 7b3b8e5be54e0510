//! rustls configurations that enforce the HBONE identity rules.
//!
//! - Server: a client certificate is required, must chain to the mesh roots and carry a
//!   SPIFFE ID in the server's own trust domain. Authorization happens after the handshake.
//! - Client: the server's certificate must chain to the mesh roots and carry one of the
//!   SPIFFE IDs the caller expects for that destination (so a forged or stolen endpoint is
//!   refused even when its certificate is otherwise valid).
//!
//! Both read the current certificate from a [`CertSlot`] on every handshake, which is what
//! makes rotation transparent to established connections.

use std::sync::{Arc, OnceLock};

use rustls::client::danger::{ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DistinguishedName, Error, OtherError, RootCertStore,
    ServerConfig, SignatureScheme,
};

use crate::certs::CertSlot;
use crate::identity::Identity;

/// ALPN for HBONE.
pub const ALPN_H2: &[u8] = b"h2";

/// The crypto provider Ambit uses everywhere (ring: no C build toolchain beyond cc).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct IdentityRejected(String);

fn reject(msg: String) -> Error {
    Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(
        IdentityRejected(msg),
    ))))
}

pub(crate) fn webpki_client_verifier(
    roots: Arc<RootCertStore>,
) -> Result<Arc<dyn ClientCertVerifier>, rustls::server::VerifierBuilderError> {
    WebPkiClientVerifier::builder_with_provider(roots, provider()).build()
}

/// The identity a verified peer certificate carries.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<Identity> {
    certs
        .and_then(|c| c.first())
        .and_then(|leaf| crate::x509::identity_of(leaf).ok())
}

/// The handshake-signature methods every Ambit verifier shares (client- and server-cert
/// verifiers alike, which are different traits with the same three methods): TLS 1.3 only,
/// the provider's algorithms.
macro_rules! tls13_only_signatures {
    () => {
        fn verify_tls12_signature(
            &self,
            _message: &[u8],
            _cert: &rustls::pki_types::CertificateDer<'_>,
            _dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Err(rustls::Error::PeerIncompatible(
                rustls::PeerIncompatible::Tls12NotOffered,
            ))
        }
        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                message,
                cert,
                dss,
                &$crate::tls::provider().signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            $crate::tls::provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    };
}
pub(crate) use tls13_only_signatures;

/// The SPIFFE ID of a certificate whose chain was verified; `what` names the certificate
/// and `reject` makes the caller's kind of rustls error.
pub(crate) fn spiffe_id(
    end_entity: &CertificateDer<'_>,
    what: &str,
    reject: fn(String) -> Error,
) -> Result<Identity, Error> {
    crate::x509::identity_of(end_entity).map_err(|e| reject(format!("{what}: {e}")))
}

/// Verifies a server's certificate chain against `roots` at `now` and returns the SPIFFE ID
/// it carries (see [`spiffe_id`] for `what` and `reject`). The caller checks the ID.
pub(crate) fn verified_server_id(
    roots: &RootCertStore,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    what: &str,
    reject: fn(String) -> Error,
) -> Result<Identity, Error> {
    let parsed = ParsedCertificate::try_from(end_entity)?;
    rustls::client::verify_server_cert_signed_by_trust_anchor(
        &parsed,
        roots,
        intermediates,
        now,
        provider().signature_verification_algorithms.all,
    )?;
    spiffe_id(end_entity, what, reject)
}

#[derive(Debug)]
struct SlotResolver(Arc<CertSlot>);

impl std::fmt::Debug for CertSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CertSlot({})", self.identity())
    }
}

impl ResolvesServerCert for SlotResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key.clone())
    }
}

impl ResolvesClientCert for SlotResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.current().certified_key.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// Server side: chain to the mesh roots, SPIFFE ID in our trust domain.
#[derive(Debug)]
struct SpiffeClientVerifier {
    slot: Arc<CertSlot>,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        true
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        let current = self.slot.current();
        current
            .client_verifier
            .verify_client_cert(end_entity, intermediates, now)?;
        let id = spiffe_id(end_entity, "client certificate", reject)?;
        let ours = self.slot.identity().trust_domain();
        if id.trust_domain() != ours {
            return Err(reject(format!(
                "client identity {id} is not in trust domain {ours:?}"
            )));
        }
        Ok(ClientCertVerified::assertion())
    }
    tls13_only_signatures!();
}

/// Client side: chain to the mesh roots, SPIFFE ID is one of the expected ones.
#[derive(Debug)]
struct SpiffeServerVerifier {
    slot: Arc<CertSlot>,
    expected: Vec<Identity>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let current = self.slot.current();
        let id = verified_server_id(
            &current.roots,
            end_entity,
            intermediates,
            now,
            "server certificate",
            reject,
        )?;
        if !self.expected.contains(&id) {
            let want: Vec<String> = self.expected.iter().map(ToString::to_string).collect();
            return Err(reject(format!(
                "server presented {id}, expected one of {want:?}"
            )));
        }
        Ok(ServerCertVerified::assertion())
    }
    tls13_only_signatures!();
}

/// TLS 1.3-only server config presenting `slot`'s certificate and requiring mesh clients.
pub fn server_config(slot: Arc<CertSlot>) -> Arc<ServerConfig> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .with_client_cert_verifier(Arc::new(SpiffeClientVerifier { slot: slot.clone() }))
        .with_cert_resolver(Arc::new(SlotResolver(slot)));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    // No resumption: every connection proves its identity with a full handshake, and the
    // server keeps no ticket state.
    cfg.send_tls13_tickets = 0;
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Arc::new(cfg)
}

/// TLS 1.3-only client config presenting `slot`'s certificate, accepting only `expected`.
pub fn client_config(slot: Arc<CertSlot>, expected: Vec<Identity>) -> Arc<ClientConfig> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("ring supports TLS 1.3")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier {
            slot: slot.clone(),
            expected,
        }))
        .with_client_cert_resolver(Arc::new(SlotResolver(slot)));
    cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}
