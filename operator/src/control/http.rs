//! Request handling on the control-plane port: authentication, then the CA endpoint or the
//! config stream. Every refusal is a JSON [`ErrorBody`] with the status the contract names.

use std::sync::Arc;
use std::time::Duration;

use ambit_core::ca::CaError;
use ambit_core::control::proto::{
    ClientMessage, ErrorBody, LineDecoder, SignRequest, SignResponse,
};
use ambit_core::control::{pem_encode, SIGN_PATH, STREAM_PATH};
use ambit_core::Identity;
use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use tracing::{debug, info, warn};

use super::auth::{Caller, ReviewError};
use super::Shared;

/// Largest sign request body (a P-256 CSR is well under 1 KiB).
const MAX_SIGN_BODY: usize = 64 * 1024;
/// How long a new stream may take to send its Subscribe.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

/// A refusal on its way to the client.
pub(crate) struct Failure {
    status: StatusCode,
    reason: &'static str,
    error: String,
}

fn fail(status: StatusCode, reason: &'static str, error: impl Into<String>) -> Failure {
    Failure {
        status,
        reason,
        error: error.into(),
    }
}

fn respond_json(
    mut respond: SendResponse<Bytes>,
    status: StatusCode,
    body: &impl serde::Serialize,
) {
    let resp = Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(())
        .expect("static response is well-formed");
    let body = serde_json::to_vec(body).expect("JSON");
    if let Ok(mut s) = respond.send_response(resp, false) {
        let _ = s.send_data(body.into(), true);
    }
}

fn respond_failure(respond: SendResponse<Bytes>, f: Failure) {
    respond_json(
        respond,
        f.status,
        &ErrorBody {
            error: f.error,
            reason: f.reason.into(),
        },
    );
}

pub(crate) async fn handle(
    req: Request<RecvStream>,
    respond: SendResponse<Bytes>,
    shared: Arc<Shared>,
) {
    let path = req.uri().path().to_string();
    let result = match (req.method(), path.as_str()) {
        (&Method::POST, SIGN_PATH) => sign(req, &shared).await,
        (&Method::POST, STREAM_PATH) => return stream(req, respond, shared).await,
        (_, SIGN_PATH | STREAM_PATH) => Err(fail(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{path} takes POST"),
        )),
        _ => Err(fail(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no control-plane endpoint {path}; use {SIGN_PATH} or {STREAM_PATH}"),
        )),
    };
    match result {
        Ok(body) => respond_json(respond, StatusCode::OK, &body),
        Err(f) => respond_failure(respond, f),
    }
}

async fn authenticate(req: &Request<RecvStream>, shared: &Shared) -> Result<Caller, Failure> {
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            fail(
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "missing `authorization: Bearer <ServiceAccount token>` header",
            )
        })?;
    shared.reviewer.review(token).await.map_err(|e| match e {
        ReviewError::Invalid(_) => fail(StatusCode::UNAUTHORIZED, "unauthenticated", e.to_string()),
        ReviewError::Unavailable(_) => fail(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        ),
    })
}

async fn read_body(body: &mut RecvStream, limit: usize) -> Result<Vec<u8>, Failure> {
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk =
            chunk.map_err(|e| fail(StatusCode::BAD_REQUEST, "bad_request", e.to_string()))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
        if out.len() > limit {
            return Err(fail(
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("request body larger than {limit} bytes"),
            ));
        }
    }
    Ok(out)
}

fn csr_result(shared: &Shared, result: &str) {
    shared.metrics.count_csr(result);
}

async fn sign(req: Request<RecvStream>, shared: &Shared) -> Result<SignResponse, Failure> {
    let caller = authenticate(&req, shared)
        .await
        .inspect_err(|f| match f.status {
            StatusCode::UNAUTHORIZED => csr_result(shared, "unauthenticated"),
            _ => csr_result(shared, "unavailable"),
        })?;
    let mut body = req.into_body();
    let invalid = |error: String| {
        csr_result(shared, "invalid");
        fail(StatusCode::BAD_REQUEST, "bad_request", error)
    };
    let bytes = read_body(&mut body, MAX_SIGN_BODY).await?;
    let sr: SignRequest = serde_json::from_slice(&bytes).map_err(|e| {
        invalid(format!(
            "body is not a sign request {{identity, csrPem}}: {e}"
        ))
    })?;
    let identity: Identity = sr.identity.parse().map_err(|e| invalid(format!("{e}")))?;
    if let Err(denied) = shared
        .authorizer
        .may_sign(&caller, &identity, &*shared.index)
    {
        csr_result(shared, "denied");
        warn!(%caller, %identity, reason = %denied, "certificate refused");
        return Err(fail(StatusCode::FORBIDDEN, "forbidden", denied.0));
    }
    let csr = rustls_pemfile::csr(&mut sr.csr_pem.as_bytes())
        .ok()
        .flatten()
        .ok_or_else(|| invalid("csrPem holds no PEM CERTIFICATE REQUEST".into()))?;
    let leaf = shared
        .ca
        .sign_csr(csr.as_ref(), &identity, shared.leaf_ttl.get())
        .map_err(|e| match e {
            CaError::BadCsr(_)
            | CaError::CsrSanMismatch { .. }
            | CaError::WrongTrustDomain { .. } => invalid(e.to_string()),
            other => {
                csr_result(shared, "unavailable");
                fail(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "ca_error",
                    other.to_string(),
                )
            }
        })?;
    csr_result(shared, "ok");
    info!(%caller, %identity, "certificate issued");
    Ok(SignResponse {
        cert_chain_pem: vec![pem_encode("CERTIFICATE", &leaf)],
        roots_pem: vec![shared.ca.root_pem()],
    })
}

async fn first_message(body: &mut RecvStream) -> Result<(ClientMessage, LineDecoder), Failure> {
    let bad = |e: String| fail(StatusCode::BAD_REQUEST, "bad_request", e);
    let mut decoder = LineDecoder::default();
    loop {
        if let Some(m) = decoder
            .next_message::<ClientMessage>()
            .map_err(|e| bad(e.to_string()))?
        {
            return Ok((m, decoder));
        }
        match body.data().await {
            Some(Ok(chunk)) => {
                let _ = body.flow_control().release_capacity(chunk.len());
                decoder.push(&chunk);
            }
            Some(Err(e)) => return Err(bad(e.to_string())),
            None => return Err(bad("stream ended before a Subscribe message".into())),
        }
    }
}

async fn stream(req: Request<RecvStream>, mut respond: SendResponse<Bytes>, shared: Arc<Shared>) {
    let caller = match authenticate(&req, &shared).await {
        Ok(c) => c,
        Err(f) => return respond_failure(respond, f),
    };
    let mut body = req.into_body();
    let first = tokio::time::timeout(SUBSCRIBE_TIMEOUT, first_message(&mut body))
        .await
        .unwrap_or_else(|_| {
            Err(fail(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "no Subscribe message within 10s",
            ))
        });
    let (sub, decoder) = match first {
        Ok((ClientMessage::Subscribe(sub), d)) => (sub, d),
        Ok((other, _)) => {
            let f = fail(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("first message must be a Subscribe, got {other:?}"),
            );
            return respond_failure(respond, f);
        }
        Err(f) => return respond_failure(respond, f),
    };
    if let Err(denied) = shared.authorizer.may_subscribe(&caller, &sub.target) {
        warn!(%caller, target = %sub.target, "subscription refused");
        return respond_failure(respond, fail(StatusCode::FORBIDDEN, "forbidden", denied.0));
    }
    let resp = Response::builder()
        .status(StatusCode::OK)
        .header(http::header::CONTENT_TYPE, "application/x-ndjson")
        .body(())
        .expect("static response is well-formed");
    let send = match respond.send_response(resp, false) {
        Ok(s) => s,
        Err(e) => return debug!(error = %e, "proxy went away before the stream opened"),
    };
    shared
        .config
        .serve_stream(caller, sub, decoder, body, send)
        .await;
}
