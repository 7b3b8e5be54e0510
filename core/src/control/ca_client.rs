//! The operator's CA as a [`CertificateProvider`]: one `POST /ca/v1/sign` per certificate.

use rustls::pki_types::CertificateDer;

use super::proto::{SignRequest, SignResponse};
use super::{pem_encode as pem, read_body, refused, request, ControlError, Endpoint, SIGN_PATH};
use crate::certs::{BoxFuture, CertError, CertificateProvider, SignedCert};
use crate::identity::Identity;

/// Signs CSRs at the operator. A new connection per request: certificates are fetched
/// rarely (per identity, at half-life), and each connection re-reads the rotating token.
pub struct RemoteCa {
    pub endpoint: Endpoint,
}

fn parse_certs(pems: &[String], what: &str) -> Result<Vec<CertificateDer<'static>>, ControlError> {
    let mut out = vec![];
    for p in pems {
        for c in rustls_pemfile::certs(&mut p.as_bytes()) {
            out.push(c.map_err(|e| ControlError::Protocol(format!("{what}: {e}")))?);
        }
    }
    if out.is_empty() {
        return Err(ControlError::Protocol(format!("{what}: no certificate")));
    }
    Ok(out)
}

impl RemoteCa {
    pub async fn sign_at_operator(
        &self,
        identity: &Identity,
        csr_der: &[u8],
    ) -> Result<SignedCert, ControlError> {
        let token = self.endpoint.token()?;
        let mut send = self.endpoint.connect().await?;
        let body = serde_json::to_vec(&SignRequest {
            identity: identity.to_string(),
            csr_pem: pem("CERTIFICATE REQUEST", csr_der),
        })
        .expect("JSON");
        let proto = |e: h2::Error| ControlError::Protocol(e.to_string());
        let (resp, mut stream) = send
            .send_request(request(SIGN_PATH, &token), false)
            .map_err(proto)?;
        stream.send_data(body.into(), true).map_err(proto)?;
        let resp = resp.await.map_err(proto)?;
        let (parts, body) = resp.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(refused(parts.status, body).await);
        }
        let bytes = read_body(body, 1024 * 1024).await?;
        let signed: SignResponse = serde_json::from_slice(&bytes)
            .map_err(|e| ControlError::Protocol(format!("sign response: {e}")))?;
        Ok(SignedCert {
            chain: parse_certs(&signed.cert_chain_pem, "certificate chain")?,
            roots: parse_certs(&signed.roots_pem, "trust roots")?,
        })
    }
}

impl CertificateProvider for RemoteCa {
    fn sign<'a>(
        &'a self,
        identity: &'a Identity,
        csr_der: Vec<u8>,
    ) -> BoxFuture<'a, Result<SignedCert, CertError>> {
        Box::pin(async move {
            self.sign_at_operator(identity, &csr_der)
                .await
                .map_err(|e| CertError::Unavailable(format!("operator CA for {identity}: {e}")))
        })
    }
}
