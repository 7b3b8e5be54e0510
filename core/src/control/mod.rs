//! The control-plane wire between proxies and the operator (port 15012): TLS 1.3 + HTTP/2,
//! JSON bodies, the proxy's ServiceAccount token as `authorization: Bearer`.
//!
//! - [`ca_client::RemoteCa`]: `POST /ca/v1/sign`, a [`crate::certs::CertificateProvider`].
//! - [`client::ConfigStream`]: `POST /config/v1/stream`, incremental, versioned, acknowledged
//!   config over one long-lived stream (see [`proto`] and [`resources`]).
//!
//! The server lives in the operator (`ambit_operator::control`). See docs/control-plane.md.

pub mod ca_client;
pub mod client;
pub mod held;
pub mod proto;
pub mod resources;
pub mod tls;

use std::path::PathBuf;

use bytes::Bytes;

pub use ca_client::RemoteCa;
pub use client::{ConfigStream, StreamOptions};
pub use tls::Endpoint;

/// The operator's control-plane port.
pub const PORT: u16 = 15012;
pub const SIGN_PATH: &str = "/ca/v1/sign";
pub const STREAM_PATH: &str = "/config/v1/stream";
/// Namespace and service account the operator runs as by default.
pub const OPERATOR_NAMESPACE: &str = "ambit-system";
pub const OPERATOR_SERVICE_ACCOUNT: &str = "ambit-operator";

/// The operator's SPIFFE ID in `trust_domain` (its default namespace and service account).
pub fn operator_identity(
    trust_domain: &str,
) -> Result<crate::Identity, crate::identity::IdentityError> {
    crate::Identity::new(trust_domain, OPERATOR_NAMESPACE, OPERATOR_SERVICE_ACCOUNT)
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("mesh root certificate {path}: {why}; it comes from ConfigMap ambit-ca-root-cert (--root-cert)")]
    Roots { path: PathBuf, why: String },
    #[error("ServiceAccount token {path}: {why}; mount a projected token there (--token-file)")]
    Token { path: PathBuf, why: String },
    #[error("control plane {address} unreachable: {why}")]
    Unreachable { address: String, why: String },
    #[error("control plane answered {status}: {error} ({reason})")]
    Refused {
        status: u16,
        error: String,
        reason: String,
    },
    #[error("control plane protocol error: {0}")]
    Protocol(String),
}

impl ControlError {
    /// Refusals the proxy cannot fix by retrying soon (bad token, forbidden, bad request).
    pub fn is_refusal(&self) -> bool {
        matches!(self, ControlError::Refused { status, .. } if (400..500).contains(status))
    }
}

/// Reads a whole response body, up to `limit` bytes.
pub(crate) async fn read_body(
    mut body: h2::RecvStream,
    limit: usize,
) -> Result<Vec<u8>, ControlError> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk: Bytes = chunk.map_err(|e| ControlError::Protocol(e.to_string()))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
        if out.len() > limit {
            return Err(ControlError::Protocol(format!(
                "response larger than {limit} bytes"
            )));
        }
    }
    Ok(out)
}

/// Turns a non-200 answer into [`ControlError::Refused`], using its JSON error body.
pub(crate) async fn refused(status: http::StatusCode, body: h2::RecvStream) -> ControlError {
    let bytes = read_body(body, 64 * 1024).await.unwrap_or_default();
    let (error, reason) = match serde_json::from_slice::<proto::ErrorBody>(&bytes) {
        Ok(b) => (b.error, b.reason),
        Err(_) => (
            String::from_utf8_lossy(&bytes).into_owned(),
            "unknown".into(),
        ),
    };
    ControlError::Refused {
        status: status.as_u16(),
        error,
        reason,
    }
}

/// A request to the control plane with the proxy's token.
pub(crate) fn request(path: &str, token: &str) -> http::Request<()> {
    http::Request::builder()
        .method(http::Method::POST)
        .uri(format!("https://ambit-operator{path}"))
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(())
        .expect("static request is well-formed")
}

/// PEM text of one DER object (`label`: `CERTIFICATE`, `CERTIFICATE REQUEST`).
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
