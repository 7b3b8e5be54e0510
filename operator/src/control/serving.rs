//! The control plane's own certificate: issued by the mesh CA for the operator's SPIFFE ID
//! (what proxies check) plus the DNS name `ambit-operator.<ns>.svc` (for generic clients),
//! renewed at half-life. Minted directly from the CA key: the CA's CSR path deliberately
//! allows nothing but the single SPIFFE URI.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use ambit_core::ca::CertificateAuthority;
use ambit_core::tls::{provider, ALPN_H2};
use ambit_core::Identity;
use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
    SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use time::OffsetDateTime;
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
#[error("issuing the control plane's serving certificate for {identity}: {why}")]
pub struct ServingCertError {
    identity: String,
    why: String,
}

/// Mints a serving certificate (leaf, then the root) for `identity` + `dns`.
pub fn mint(
    ca: &CertificateAuthority,
    identity: &Identity,
    dns: &str,
    ttl: Duration,
) -> Result<Arc<CertifiedKey>, ServingCertError> {
    let err = |why: String| ServingCertError {
        identity: identity.to_string(),
        why,
    };
    let issuer_key = KeyPair::from_pem(&ca.key_pem()).map_err(|e| err(e.to_string()))?;
    let issuer = CertificateParams::from_ca_cert_pem(&ca.root_pem())
        .and_then(|p| p.self_signed(&issuer_key))
        .map_err(|e| err(e.to_string()))?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|e| err(e.to_string()))?;
    let mut params =
        CertificateParams::new(vec![dns.to_string()]).map_err(|e| err(e.to_string()))?;
    let uri = identity
        .to_string()
        .try_into()
        .map_err(|e: rcgen::Error| err(e.to_string()))?;
    params.subject_alt_names.push(SanType::URI(uri));
    params.distinguished_name = DistinguishedName::new();
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(60);
    params.not_after = now + ttl;
    let leaf = params
        .signed_by(&key, &issuer, &issuer_key)
        .map_err(|e| err(e.to_string()))?;
    let signing_key = provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
            key.serialize_der(),
        )))
        .map_err(|e| err(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::new(
        vec![leaf.der().clone(), ca.root_der()],
        signing_key,
    )))
}

/// The current serving certificate; handshakes read it, a task renews it.
#[derive(Debug)]
pub struct ServingCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("serving cert lock").clone())
    }
}

impl ServingCert {
    /// Issues the first certificate and starts renewing it at half of `ttl`.
    pub fn start(
        ca: Arc<CertificateAuthority>,
        identity: Identity,
        dns: String,
        ttl: Duration,
    ) -> Result<Arc<Self>, ServingCertError> {
        let me = Arc::new(Self {
            current: RwLock::new(mint(&ca, &identity, &dns, ttl)?),
        });
        let weak: Weak<Self> = Arc::downgrade(&me);
        tokio::spawn(async move {
            let mut wait = ttl / 2;
            loop {
                tokio::time::sleep(wait).await;
                let Some(me) = weak.upgrade() else { return };
                match mint(&ca, &identity, &dns, ttl) {
                    Ok(c) => {
                        *me.current.write().expect("serving cert lock") = c;
                        info!(%identity, "renewed the control plane's serving certificate");
                        wait = ttl / 2;
                    }
                    Err(e) => {
                        warn!(error = %e, "renewing the serving certificate failed; retrying");
                        wait = Duration::from_secs(10).min(ttl / 4);
                    }
                }
            }
        });
        Ok(me)
    }

    /// TLS 1.3, HTTP/2, no client certificate (proxies authenticate with tokens).
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("ring supports TLS 1.3")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![ALPN_H2.to_vec()];
        Arc::new(cfg)
    }
}
