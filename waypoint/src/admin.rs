//! Admin endpoints on localhost:15000, in the JSON style of ztunnel's admin so `ambitctl config
//! dump waypoint` and `ambitctl status` read both: `/config_dump` (the config served now: the
//! Services and workloads this waypoint handles, their routes, policies, the live backends
//! with endpoint and ejection state, where the config comes from and its version) and `/certs`.

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use ambit_core::certs::CertSlot;
use ambit_core::control::client::StreamStatus;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::debug;

use crate::balance::Backend;
use crate::proxy::Shared;
use crate::state::State;

/// Where the config comes from, as the config dump shows it.
#[derive(Clone)]
pub enum SourceInfo {
    File {
        path: PathBuf,
    },
    ControlPlane {
        address: String,
        target: String,
        status: watch::Receiver<StreamStatus>,
    },
}

impl SourceInfo {
    /// `version`: the control plane's version of the config in force, or the file's
    /// generation (1 for the first load, +1 per accepted change).
    fn json(&self, state: &State) -> (Value, u64) {
        match self {
            SourceInfo::File { path } => (
                json!({"kind": "file", "path": path, "version": state.generation}),
                state.generation,
            ),
            SourceInfo::ControlPlane {
                address,
                target,
                status,
            } => {
                let s = status.borrow().clone();
                let version = s.version.unwrap_or_default();
                (
                    json!({
                        "kind": "controlPlane",
                        "address": address,
                        "target": target,
                        "connected": s.connected,
                        "version": s.version,
                        "applied": s.applied,
                        "rejected": s.rejected,
                        "subscriptions": s.subscriptions,
                        "lastError": s.last_error,
                    }),
                    version,
                )
            }
        }
    }
}

#[derive(Clone)]
pub struct Admin {
    pub shared: Arc<Shared>,
    pub slot: Arc<CertSlot>,
    pub source: SourceInfo,
    /// `{name, namespace}` of this waypoint.
    pub name: String,
    pub namespace: String,
}

fn secs(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

fn backend_json(b: &Backend) -> Value {
    let (in_flight, pending, connections) = b.load();
    let endpoints: Vec<Value> = b
        .endpoints()
        .into_iter()
        .map(|e| {
            json!({
                "address": e.endpoint.addr.to_string(),
                "workload": e.endpoint.workload,
                "identity": e.endpoint.identity.to_string(),
                "inFlight": e.in_flight,
                "latencyEstimateMs": e.latency_estimate.as_secs_f64() * 1000.0,
                "ejected": e.ejected_for.is_some(),
                "ejectedForSeconds": e.ejected_for.map(|d| d.as_secs_f64()),
                "timesEjected": e.times_ejected,
            })
        })
        .collect();
    json!({
        "name": b.name(),
        "inFlight": in_flight,
        "pending": pending,
        "connections": connections,
        "ejectionsTotal": b.stats().ejections_total(),
        "retriesTotal": b.retry_budget().retries_total(),
        "endpoints": endpoints,
    })
}

impl Admin {
    pub fn certs(&self) -> Value {
        let c = self.slot.current();
        let serial = c
            .certified_key
            .end_entity_cert()
            .ok()
            .and_then(|der| ambit_core::x509::serial_of(der).ok())
            .unwrap_or_default();
        let now = secs(SystemTime::now());
        json!([{
            "identity": c.identity.to_string(),
            "notBefore": secs(c.not_before),
            "notAfter": secs(c.not_after),
            "expiresInSeconds": secs(c.not_after) - now,
            "serial": serial,
        }])
    }

    pub fn config_dump(&self) -> Value {
        let state = self.shared.state();
        let (source, version) = self.source.json(&state);
        let route_of = |ns: &str, name: &str| {
            state
                .routes
                .get(&(ns.to_string(), name.to_string()))
                .map(|r| r.key.clone())
        };
        let services: Vec<Value> = state
            .served_services()
            .into_iter()
            .map(|s| {
                json!({
                    "name": s.name,
                    "namespace": s.namespace,
                    "vips": s.vips,
                    "ports": s.ports,
                    "selector": s.selector,
                    "route": route_of(&s.namespace, &s.name),
                })
            })
            .collect();
        let workloads: Vec<Value> = state
            .served_workloads()
            .into_iter()
            .map(|w| json!({"name": w.spec.name, "namespace": w.spec.namespace, "ip": w.spec.ip}))
            .collect();
        // Routes of the Services this waypoint serves: the ones that take effect here.
        let mut routes: Vec<_> = state
            .served_services()
            .into_iter()
            .filter_map(|s| state.routes.get(&(s.namespace.clone(), s.name.clone())))
            .map(|r| r.spec.clone())
            .collect();
        routes.sort_by_key(|r| r.key());
        let backends: Vec<Value> = self
            .shared
            .backends
            .snapshot()
            .iter()
            .map(|b| backend_json(b))
            .collect();
        let mut backend_policies: Vec<_> = state.backend_policies.values().cloned().collect();
        backend_policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        json!({
            "waypoint": {
                "name": self.name,
                "namespace": self.namespace,
                "identity": self.slot.identity().to_string(),
            },
            "configSource": source,
            "version": version,
            "generation": state.generation,
            "trustDomain": state.trust_domain,
            "services": services,
            "workloads": workloads,
            "routes": routes,
            "policies": state.policies,
            "backendPolicies": backend_policies,
            "backends": backends,
            "certificates": self.certs(),
        })
    }

    fn page(&self, path: &str) -> (StatusCode, &'static str, String) {
        let pretty = |v: Value| serde_json::to_string_pretty(&v).expect("JSON values serialize");
        match path {
            "/config_dump" => (StatusCode::OK, "application/json", pretty(self.config_dump())),
            "/certs" => (StatusCode::OK, "application/json", pretty(self.certs())),
            "/healthz" => (StatusCode::OK, "text/plain", "ok\n".into()),
            "/" => (
                StatusCode::OK,
                "text/plain",
                "waypoint admin\n  /config_dump  config source and version, served services, routes, policies, backends\n  /certs        the waypoint's certificate\n  /healthz\n".into(),
            ),
            other => (
                StatusCode::NOT_FOUND,
                "text/plain",
                format!("no admin endpoint {other}; try /\n"),
            ),
        }
    }

    /// Serves HTTP/1.1 on `listener` until the task is dropped.
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(_) => {
                    // Out of fds or similar: back off rather than spin.
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let (status, content_type, body) = admin.page(req.uri().path());
                    let resp = Response::builder()
                        .status(status)
                        .header(http::header::CONTENT_TYPE, content_type)
                        .body(Full::new(Bytes::from(body)))
                        .expect("static response is well-formed");
                    async move { Ok::<_, Infallible>(resp) }
                });
                if let Err(e) = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await
                {
                    debug!(%peer, error = %e, "admin connection ended");
                }
            });
        }
    }
}
