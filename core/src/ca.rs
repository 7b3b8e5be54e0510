//! A mesh certificate authority: mints a root and signs workload CSRs.
//!
//! The operator runs one of these for the cluster; tests and the local sandbox run one
//! in-process. The CA never trusts the SANs a CSR asks for: it issues exactly the identity
//! the caller was authorized for, and refuses a CSR that asks for anything else.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
    PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;

use crate::identity::Identity;

/// Leaf lifetime when none is configured (the brief: short-lived, 24 h).
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(24 * 3600);
/// Allowed clock skew between nodes: leaves are valid from a minute in the past.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("generating a P-256 key failed: {0}")]
    KeyGen(rcgen::Error),
    #[error("building the certificate failed: {0}")]
    Build(rcgen::Error),
    #[error("CSR is not a valid PKCS#10 request: {0}")]
    BadCsr(rcgen::Error),
    #[error("CSR asks for {asked:?} but the caller is authorized only for {authorized}; send a CSR whose only SAN is that URI")]
    CsrSanMismatch {
        asked: Vec<String>,
        authorized: String,
    },
    #[error("identity {identity} is outside this CA's trust domain {trust_domain:?}")]
    WrongTrustDomain {
        identity: String,
        trust_domain: String,
    },
    #[error("loading the CA from PEM failed: {0}")]
    Load(rcgen::Error),
}

/// A root CA able to sign workload certificates.
pub struct CertificateAuthority {
    trust_domain: String,
    key: KeyPair,
    cert: rcgen::Certificate,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f; // keep it a positive INTEGER
    SerialNumber::from_slice(&bytes)
}

fn validity(ttl: Duration) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    (now - CLOCK_SKEW, now + ttl)
}

impl CertificateAuthority {
    /// Mints a new self-signed root for `trust_domain`, valid for `ttl`.
    pub fn generate(trust_domain: &str, ttl: Duration) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::KeyGen)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, trust_domain);
        dn.push(DnType::CommonName, "Ambit mesh root CA");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        (params.not_before, params.not_after) = validity(ttl);
        let cert = params.self_signed(&key).map_err(CaError::Build)?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            key,
            cert,
        })
    }

    /// Loads a CA from its certificate and PKCS#8 key in PEM.
    pub fn from_pem(trust_domain: &str, cert_pem: &str, key_pem: &str) -> Result<Self, CaError> {
        let key = KeyPair::from_pem(key_pem).map_err(CaError::Load)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem).map_err(CaError::Load)?;
        // rcgen signs with a Certificate object; re-deriving it from the same params and key
        // keeps the issuer name and key identifier identical to the stored root.
        let cert = params.self_signed(&key).map_err(CaError::Load)?;
        Ok(Self {
            trust_domain: trust_domain.to_string(),
            key,
            cert,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }
    pub fn root_der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }
    pub fn root_pem(&self) -> String {
        self.cert.pem()
    }
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// Signs `csr_der` for `identity`, valid for `ttl`. Returns the leaf in DER.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        identity: &Identity,
        ttl: Duration,
    ) -> Result<CertificateDer<'static>, CaError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(CaError::WrongTrustDomain {
                identity: identity.to_string(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let der = CertificateSigningRequestDer::from(csr_der.to_vec());
        let mut csr = CertificateSigningRequestParams::from_der(&der).map_err(CaError::BadCsr)?;
        let wanted = identity.to_string();
        let asked: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .map(|san| match san {
                SanType::URI(uri) => uri.as_str().to_string(),
                other => format!("{other:?}"),
            })
            .collect();
        if asked != [wanted.clone()] {
            return Err(CaError::CsrSanMismatch {
                asked,
                authorized: wanted,
            });
        }
        let p = &mut csr.params;
        p.distinguished_name = DistinguishedName::new();
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.serial_number = Some(random_serial());
        p.use_authority_key_identifier_extension = true;
        (p.not_before, p.not_after) = validity(ttl);
        let leaf = csr
            .signed_by(&self.cert, &self.key)
            .map_err(CaError::Build)?;
        Ok(leaf.der().clone())
    }
}

/// A fresh P-256 key and a CSR whose only SAN is `identity`'s URI.
pub fn generate_csr(identity: &Identity) -> Result<(KeyPair, Vec<u8>), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::KeyGen)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let uri = identity
        .to_string()
        .try_into()
        .expect("a validated SPIFFE ID is always valid IA5");
    params.subject_alt_names = vec![SanType::URI(uri)];
    let csr = params.serialize_request(&key).map_err(CaError::Build)?;
    Ok((key, csr.der().to_vec()))
}
