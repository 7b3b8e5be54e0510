//! Inbound HBONE (15008): mTLS with the pod's own certificate, L4 authorization against the
//! verified caller identity, then a connection to the app that keeps the caller's address.

use std::sync::Arc;

use ambit_core::hbone::server::{
    serve_tls_until, Accepted, Handler, HboneRequest, Reject, ServeError,
};
use ambit_core::socket::mesh_socket;
use http::StatusCode;
use tracing::{debug, info};

use super::{PodContext, ProxyInputs};
use crate::authz::{authorize, Connection};
use crate::metrics::ConnLabels;

pub async fn serve(
    listener: tokio::net::TcpListener,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
) {
    let handler = InboundHandler {
        pod: pod.clone(),
        inputs: inputs.clone(),
    };
    let conns = inputs.conns.clone();
    super::accept_loop(listener, conns, "inbound", move |tcp, peer| {
        let cfg = pod.server_tls.clone();
        let handler = handler.clone();
        let metrics = inputs.metrics.clone();
        // Draining for an upgrade: GOAWAY, so the peer's next streams go to the new ztunnel.
        let drain = inputs.conns.draining();
        async move {
            match serve_tls_until(tcp, cfg, handler, drain).await {
                Err(error @ (ServeError::Tls { .. } | ServeError::NoIdentity(_))) => {
                    info!(%peer, %error, "inbound: mTLS handshake refused");
                    metrics.fail("destination", "tls_handshake_failed");
                }
                Err(error) => debug!(%peer, %error, "inbound HBONE connection ended"),
                Ok(()) => {}
            }
        }
    })
    .await
}

#[derive(Clone)]
struct InboundHandler {
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
}

impl Handler for InboundHandler {
    async fn open(&self, req: HboneRequest) -> Result<Accepted, Reject> {
        let pod = &self.pod;
        let metrics = &self.inputs.metrics;
        let principal = req.peer_identity.to_string();
        if super::is_mesh_port(req.authority.port()) {
            metrics.deny("destination", "destination_is_mesh_port", &principal, None);
            return Err(Reject {
                status: StatusCode::BAD_REQUEST,
                reason: "destination_is_mesh_port",
            });
        }
        if req.authority.ip() != pod.ip {
            metrics.deny("destination", "destination_not_local", &principal, None);
            return Err(Reject {
                status: StatusCode::BAD_REQUEST,
                reason: "destination_not_local",
            });
        }
        let state = self.inputs.state();
        let Some(workload) = pod.workload(&state) else {
            return Err(Reject {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: "workload_unknown",
            });
        };
        let conn = Connection {
            src_identity: Some(&req.peer_identity),
            src_ip: req.peer_addr.ip(),
            dst_port: req.authority.port(),
        };
        if let Err(denied) = authorize(&state.policies, &workload, &conn) {
            info!(src = %req.peer_addr, %principal, dst = %req.authority, policy = %denied.by, "inbound: connection denied");
            metrics.deny(
                "destination",
                "denied_by_policy",
                &principal,
                Some(&workload),
            );
            return Err(Reject {
                status: StatusCode::FORBIDDEN,
                reason: "denied_by_policy",
            });
        }
        let src_ip = req.peer_addr.ip();
        let upstream = match pod.netns.run(|| mesh_socket(req.authority, Some(src_ip))) {
            Ok(Ok(socket)) => {
                tokio::time::timeout(super::CONNECT_TIMEOUT, socket.connect(req.authority))
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
            }
            Ok(Err(e)) | Err(e) => Err(e),
        };
        let upstream = upstream.map_err(|error| {
            debug!(dst = %req.authority, %error, "inbound: app connect failed");
            metrics.fail("destination", "upstream_connect_failed");
            Reject {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: "upstream_connect_failed",
            }
        })?;
        let source = state.workload(&src_ip).cloned();
        let labels = ConnLabels {
            reporter: "destination".into(),
            connection_security_policy: "mutual_tls".into(),
            ..Default::default()
        }
        .with_source(source.as_deref(), Some(principal))
        .with_destination(Some(&workload));
        let m = Arc::new(metrics.open(labels));
        let (sent, received) = (m.clone(), m.clone());
        Ok(Accepted {
            upstream,
            sent: Box::new(move |n| {
                sent.sent.inc_by(n as u64);
            }),
            received: Box::new(move |n| {
                received.received.inc_by(n as u64);
            }),
            done: Box::new(move |_| drop(m)),
        })
    }
}
