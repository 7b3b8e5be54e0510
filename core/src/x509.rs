//! Reading what Ambit needs out of X.509 certificates: the SPIFFE ID and the validity window.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::identity::{Identity, IdentityError};

#[derive(Debug, thiserror::Error)]
pub enum CertParseError {
    #[error("certificate is not valid DER X.509: {0}")]
    Der(String),
    #[error(
        "certificate has no URI SAN; Ambit certificates carry the SPIFFE ID as their only URI SAN"
    )]
    NoUriSan,
    #[error("certificate has {0} URI SANs; exactly one (the SPIFFE ID) is allowed")]
    ManyUriSans(usize),
    #[error("certificate's URI SAN is not a valid Ambit SPIFFE ID: {0}")]
    BadIdentity(#[from] IdentityError),
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, CertParseError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| CertParseError::Der(e.to_string()))
}

/// The SPIFFE identity carried by a leaf certificate.
pub fn identity_of(der: &[u8]) -> Result<Identity, CertParseError> {
    let cert = parse(der)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CertParseError::Der(e.to_string()))?;
    let uris: Vec<&str> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(*u),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match uris.as_slice() {
        [] => Err(CertParseError::NoUriSan),
        [one] => Ok(one.parse()?),
        many => Err(CertParseError::ManyUriSans(many.len())),
    }
}

/// The certificate's validity window.
pub fn validity_of(der: &[u8]) -> Result<(SystemTime, SystemTime), CertParseError> {
    let cert = parse(der)?;
    let to_system = |t: x509_parser::time::ASN1Time| {
        UNIX_EPOCH + Duration::from_secs(t.timestamp().max(0) as u64)
    };
    let v = cert.validity();
    Ok((to_system(v.not_before), to_system(v.not_after)))
}

/// The certificate's serial number in hex (shown by admin endpoints to spot rotations).
pub fn serial_of(der: &[u8]) -> Result<String, CertParseError> {
    Ok(parse(der)?.raw_serial_as_string())
}
