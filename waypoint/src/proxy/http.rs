//! One HTTP request through the waypoint: route, authorize, inject faults, pick a backend and
//! an endpoint, forward (with retries, timeouts and mirroring), and record telemetry.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use ambit_core::hbone::REASON_HEADER;
use bytes::Bytes;
use http::header::{CONNECTION, HOST, UPGRADE};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body as _, Incoming};
use rand::Rng;

use super::{upgrade, Tunnel};
use crate::authz;
use crate::backends::BackendKey;
use crate::body::{self, Body, Counted};
use crate::detect::Protocol;
use crate::metrics::RequestLabels;
use crate::routes::Rule;
use crate::state::{State, Target};
use crate::telemetry::{Record, Trace, TRACEPARENT};

mod forward;
mod headers;

pub use forward::Forwarded;
pub use headers::{add_forwarded, apply_headers, strip_hop_by_hop};

/// Istio-style name of a Service: `name.namespace.svc.cluster.local`.
fn fqdn(ns: &str, name: &str) -> String {
    format!("{name}.{ns}.svc.cluster.local")
}

/// A reply made by the waypoint itself.
pub fn local_reply(status: StatusCode, reason: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(REASON_HEADER, reason)
        .header("content-type", "text/plain")
        .body(body::full(format!("{reason}\n")))
        .expect("local reply is well-formed")
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(UPGRADE)
        && h.get_all(CONNECTION).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.to_ascii_lowercase().contains("upgrade"))
        })
}

/// The request's destination as the policies and routes see it.
struct Destination {
    namespace: String,
    name: String,
    labels: std::collections::BTreeMap<String, String>,
    port: u16,
    default_backend: BackendKey,
    route: Option<Arc<crate::routes::CompiledRoute>>,
}

fn destination(state: &State, target: &Target) -> Option<Destination> {
    match target {
        Target::Service { key, port } => {
            let svc = state.services.get(key)?;
            Some(Destination {
                namespace: key.0.clone(),
                name: key.1.clone(),
                labels: svc.selector.clone(),
                port: *port,
                default_backend: BackendKey::Service {
                    service: key.clone(),
                    port: *port,
                    subset: Default::default(),
                },
                route: state.routes.get(key).cloned(),
            })
        }
        Target::Workload { ip, port } => {
            let w = state.workloads.get(ip)?;
            Some(Destination {
                namespace: w.spec.namespace.clone(),
                name: w.spec.name.clone(),
                labels: w.spec.labels.clone(),
                port: *port,
                default_backend: BackendKey::Workload(SocketAddr::new(*ip, *port)),
                route: None,
            })
        }
    }
}

/// Handles one request; never fails (errors become local replies).
pub async fn handle(
    t: Arc<Tunnel>,
    protocol: Protocol,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let start = Instant::now();
    let shared = t.shared.clone();
    let state = shared.state();
    let trace = Trace::from_headers(req.headers());
    let on_upgrade = (protocol == Protocol::Http1 && is_upgrade(req.headers()))
        .then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    let src = t.caller.and_then(|c| state.workloads.get(&c.ip()));
    let mut labels = RequestLabels {
        reporter: "waypoint".into(),
        source_workload: src.map_or("unknown".into(), |w| w.spec.name.clone()),
        source_workload_namespace: src.map_or("unknown".into(), |w| w.spec.namespace.clone()),
        source_principal: t.peer.to_string(),
        route: "default".into(),
        ..Default::default()
    };
    let mut record = Record {
        start,
        labels: RequestLabels::default(),
        method: parts.method.to_string(),
        path: parts
            .uri
            .path_and_query()
            .map_or("/".into(), |p| p.to_string()),
        authority: parts
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or(parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or_default()
            .to_string(),
        protocol: protocol.as_str(),
        upstream: None,
        attempts: 0,
        trace: trace.clone(),
        request_bytes: 0,
    };
    let finish = |record: Record, labels: RequestLabels, resp: Response<Body>, flags: &str| {
        finish_response(&shared, record, labels, resp, flags)
    };
    let dst = state
        .target(t.authority)
        .and_then(|tg| destination(&state, &tg));
    let Some(dst) = dst else {
        return Ok(finish(
            record,
            labels,
            local_reply(StatusCode::SERVICE_UNAVAILABLE, "not_served_by_waypoint"),
            "NR",
        ));
    };
    labels.destination_service = fqdn(&dst.namespace, &dst.name);
    labels.destination_service_name = dst.name.clone();
    labels.destination_service_namespace = dst.namespace.clone();
    let rule: Option<Arc<Rule>> = dst.route.as_ref().and_then(|r| r.select(&parts));
    if let Some(r) = &rule {
        labels.route = r.label.clone();
    }

    let principal = t.peer.to_string();
    let decision = authz::authorize(
        &state.policies,
        &dst.namespace,
        &dst.labels,
        &authz::Request {
            principal: &principal,
            namespace: t.peer.namespace(),
            src_ip: t.caller.map(|c| c.ip()),
            port: dst.port,
            method: parts.method.as_str(),
            path: parts.uri.path(),
            host: &record.authority,
        },
    );
    if let Err((reason, _policy)) = decision {
        return Ok(finish(
            record,
            labels,
            local_reply(StatusCode::FORBIDDEN, reason),
            "RBAC",
        ));
    }

    let mut flags = vec![];
    if let Some(fault) = rule.as_ref().and_then(|r| r.spec.fault.clone()) {
        if let Some(d) = &fault.delay {
            if rand::thread_rng().gen::<f64>() * 100.0 < d.percentage {
                tokio::time::sleep(d.fixed_delay).await;
                flags.push("DI");
            }
        }
        if let Some(a) = &fault.abort {
            if rand::thread_rng().gen::<f64>() * 100.0 < a.percentage {
                flags.push("FI");
                let status =
                    StatusCode::from_u16(a.http_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
                return Ok(finish(
                    record,
                    labels,
                    local_reply(status, "fault_injected"),
                    &flags.join(","),
                ));
            }
        }
    }

    let chosen = rule
        .as_ref()
        .and_then(|r| r.choose(&mut rand::thread_rng()).cloned());
    let backend_key = match chosen {
        Some(b) => BackendKey::Service {
            service: (b.namespace.clone(), b.service.clone()),
            port: b.port.unwrap_or(dst.port),
            subset: b.subset.clone(),
        },
        None => dst.default_backend.clone(),
    };
    if let BackendKey::Service { service, .. } = &backend_key {
        if !state.services.contains_key(service) {
            return Ok(finish(
                record,
                labels,
                local_reply(StatusCode::SERVICE_UNAVAILABLE, "backend_service_unknown"),
                "NR",
            ));
        }
    }
    let backend = shared.backends.get(&state, &backend_key);

    // Request headers going upstream.
    if let Some(r) = &rule {
        apply_headers(&mut parts.headers, r.spec.request_headers.as_ref());
    }
    parts.headers.insert(TRACEPARENT, trace.header());
    if let Some(caller) = t.caller {
        add_forwarded(&mut parts.headers, caller);
    }

    if let Some(on_upgrade) = on_upgrade {
        let (resp, upstream, flag) =
            upgrade::forward(&shared, &backend, t.caller, parts, incoming, on_upgrade).await;
        record.upstream = upstream;
        record.attempts = 1;
        return Ok(finish(record, labels, resp, flag));
    }
    strip_hop_by_hop(&mut parts.headers);

    // Small bodies are buffered so they can be replayed for retries and mirrors.
    let hint = incoming.size_hint();
    let (buffered, streaming) = if incoming.is_end_stream() {
        (Some(Bytes::new()), None)
    } else if hint.upper().is_some_and(|u| u <= shared.body_limit as u64) {
        match incoming.collect().await {
            Ok(c) => (Some(c.to_bytes()), None),
            Err(_) => {
                return Ok(finish(
                    record,
                    labels,
                    local_reply(StatusCode::BAD_REQUEST, "request_body_error"),
                    "DPE",
                ))
            }
        }
    } else {
        (None, Some(incoming))
    };
    record.request_bytes = buffered.as_ref().map_or(hint.lower(), |b| b.len() as u64);

    if let (Some(r), Some(bytes)) = (&rule, &buffered) {
        if let (Some(m), Some(mref)) = (&r.spec.mirror, &r.mirror) {
            if rand::thread_rng().gen::<f64>() * 100.0 < m.percentage {
                let key = BackendKey::Service {
                    service: (mref.namespace.clone(), mref.service.clone()),
                    port: mref.port.unwrap_or(dst.port),
                    subset: mref.subset.clone(),
                };
                if state
                    .services
                    .contains_key(&(mref.namespace.clone(), mref.service.clone()))
                {
                    let mirror = shared.backends.get(&state, &key);
                    forward::mirror(
                        shared.clone(),
                        mirror,
                        t.caller,
                        protocol,
                        &parts,
                        bytes.clone(),
                    );
                }
            }
        }
    }

    let fwd = Forwarded {
        shared: &shared,
        backend: &backend,
        caller: t.caller,
        http2: protocol == Protocol::Http2,
        rule: rule.as_deref(),
    };
    let (resp, upstream, attempts, flag) = fwd.send(parts, buffered, streaming).await;
    record.upstream = upstream;
    record.attempts = attempts;
    if !flag.is_empty() {
        flags.push(flag);
    }
    let mut resp = resp;
    if let Some(r) = &rule {
        apply_headers(resp.headers_mut(), r.spec.response_headers.as_ref());
    }
    let flags = flags.join(",");
    Ok(finish(record, labels, resp, &flags))
}

fn finish_response(
    shared: &Arc<super::Shared>,
    mut record: Record,
    mut labels: RequestLabels,
    resp: Response<Body>,
    flags: &str,
) -> Response<Body> {
    labels.response_code = resp.status().as_u16().to_string();
    labels.response_flags = if flags.is_empty() {
        "-".into()
    } else {
        flags.into()
    };
    record.labels = labels;
    let (parts, b) = resp.into_parts();
    let metrics = shared.metrics.clone();
    let access_log = shared.access_log;
    let counted = Counted::new(b, move |n| record.finish(&metrics, access_log, n));
    Response::from_parts(parts, counted.boxed())
}
