//! Outbound: connections the pod makes, redirected to 15001 in its namespace. The original
//! destination decides the path: a Service or workload with a waypoint goes to the waypoint
//! (see [`super::waypoint`]); a Service VIP is resolved to one healthy endpoint; a captured
//! workload is reached over HBONE; anything else passes through untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use ambit_core::hbone::client::{HboneError, PoolKey};
use ambit_core::hbone::splice;
use ambit_core::socket::{mesh_socket, original_dst};
use ambit_core::tls::client_config;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::{copy_plain, reset, waypoint, PodContext, ProxyInputs, HBONE_PORT};
use crate::config::WaypointRef;
use crate::metrics::ConnLabels;
use crate::state::Workload;

pub async fn serve(
    listener: tokio::net::TcpListener,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
) {
    let conns = inputs.conns.clone();
    super::accept_loop(listener, conns, "outbound", move |stream, peer| {
        handle(stream, peer, pod.clone(), inputs.clone())
    })
    .await
}

async fn handle(
    downstream: TcpStream,
    src: SocketAddr,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
) {
    let dst = match original_dst(&downstream) {
        Ok(d) => d,
        Err(error) => {
            warn!(%src, %error, "outbound: no original destination (was the connection redirected?)");
            return reset(downstream);
        }
    };
    if super::is_mesh_port(dst.port()) && (dst.ip() == pod.ip || dst.ip().is_loopback()) {
        // Someone in the pod connected to one of our listeners directly (loopback is never
        // redirected, so the "original destination" is the listener itself): proxying it
        // would connect to ourselves, again and again, until the node runs out of sockets.
        inputs.metrics.deny(
            "source",
            "destination_is_mesh_port",
            &pod.identity.to_string(),
            None,
        );
        return reset(downstream);
    }
    let state = inputs.state();
    let source = pod.workload(&state);
    let labels = ConnLabels {
        reporter: "source".into(),
        ..Default::default()
    }
    .with_source(source.as_deref(), Some(pod.identity.to_string()));
    let applies = |wp: &Option<WaypointRef>| {
        wp.clone()
            .filter(|wp| waypoint::applies(&state, wp, source.as_deref()))
    };
    let (target, dst_workload, service, wp) = if let Some(svc) = state.service(&dst) {
        if let Some(wp) = applies(&svc.waypoint) {
            // The waypoint resolves the Service itself; we never pick an endpoint for it.
            (dst, None, Some(svc.hostname()), Some(wp))
        } else {
            match svc.pick() {
                // As in Istio: an endpoint with its own waypoint is reached through it.
                Some(ep) => (
                    SocketAddr::new(ep.workload.ip, ep.port),
                    Some(ep.workload.clone()),
                    Some(svc.hostname()),
                    applies(&ep.workload.waypoint),
                ),
                None => {
                    info!(%src, %dst, service = %svc.hostname(), "outbound: service has no healthy endpoints");
                    inputs.metrics.deny(
                        "source",
                        "no_healthy_endpoints",
                        &labels.source_principal,
                        None,
                    );
                    return reset(downstream);
                }
            }
        }
    } else {
        let w = state.workload(&dst.ip()).cloned();
        let wp = w.as_ref().and_then(|w| applies(&w.waypoint));
        (dst, w, None, wp)
    };
    let mut labels = labels;
    labels.destination_service = service.clone().unwrap_or_default();
    if let Some(wp) = wp {
        let what = service
            .or_else(|| dst_workload.map(|w| format!("{}/{}", w.namespace, w.name)))
            .unwrap_or_else(|| target.to_string());
        let target = waypoint::Target { addr: target, what };
        return waypoint::connect(downstream, src, target, wp, labels, pod, inputs).await;
    }
    let mut labels = labels.with_destination(dst_workload.as_deref());
    match dst_workload {
        Some(w) if w.captured => hbone(downstream, src, target, w, labels, pod, inputs, None).await,
        _ => {
            labels.connection_security_policy = "none".into();
            passthrough(downstream, src, target, labels, pod, inputs).await
        }
    }
}

/// Tunnels to `dst`'s pod (the destination workload, or a waypoint) with `:authority` =
/// `target`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn hbone(
    mut downstream: TcpStream,
    src: SocketAddr,
    target: SocketAddr,
    dst: Arc<Workload>,
    mut labels: ConnLabels,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
    via: Option<&waypoint::Via>,
) {
    labels.connection_security_policy = "mutual_tls".into();
    let key = PoolKey {
        src_ip: pod.ip,
        src_identity: pod.identity.clone(),
        dst: SocketAddr::new(dst.ip, HBONE_PORT),
        dst_identity: dst.identity.clone(),
    };
    let hbone_addr = key.dst;
    let tunnel = inputs
        .pool
        .connect(
            &key,
            || pod.netns.run(|| mesh_socket(hbone_addr, None))?,
            || client_config(pod.cert.clone(), vec![dst.identity.clone()]),
            target,
            Some(src),
        )
        .await;
    let tunnel = match tunnel {
        Ok(t) => t,
        Err(error) => {
            match &error {
                HboneError::Status { status, .. }
                    if status.as_u16() == 401 || status.as_u16() == 403 =>
                {
                    info!(%src, %target, %error, "outbound: denied by destination policy");
                    inputs.metrics.deny(
                        "source",
                        error.reason(),
                        &labels.source_principal,
                        Some(&dst),
                    );
                }
                // The waypoint answered (e.g. 503): it is there, the failure is beyond it.
                _ => match via.filter(|_| !matches!(error, HboneError::Status { .. })) {
                    Some(via) => {
                        warn!(%src, %target, %error, "outbound: {via} unreachable; resetting instead of bypassing it");
                        inputs
                            .metrics
                            .fail("source", waypoint::WAYPOINT_UNAVAILABLE);
                    }
                    None => {
                        warn!(%src, %target, %error, "outbound: HBONE connection failed");
                        inputs.metrics.fail("source", error.reason());
                    }
                },
            }
            return reset(downstream);
        }
    };
    debug!(%src, %target, identity = %dst.identity, "outbound: tunnel open");
    let m = inputs.metrics.open(labels);
    let result = splice(
        &mut downstream,
        tunnel.send,
        tunnel.recv,
        &|n| {
            m.sent.inc_by(n as u64);
        },
        &|n| {
            m.received.inc_by(n as u64);
        },
    )
    .await;
    if let Err(error) = result {
        debug!(%src, %target, %error, "outbound: tunnel ended with error");
    }
}

async fn passthrough(
    downstream: TcpStream,
    src: SocketAddr,
    target: SocketAddr,
    labels: ConnLabels,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
) {
    let socket = match pod.netns.run(|| mesh_socket(target, None)) {
        Ok(Ok(s)) => s,
        Ok(Err(e)) | Err(e) => {
            warn!(%src, %target, error = %e, "outbound passthrough: socket creation failed");
            inputs.metrics.fail("source", "socket_failed");
            return reset(downstream);
        }
    };
    match tokio::time::timeout(super::CONNECT_TIMEOUT, socket.connect(target))
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        Ok(upstream) => {
            let m = inputs.metrics.open(labels);
            copy_plain(downstream, upstream, m).await
        }
        Err(error) => {
            debug!(%src, %target, %error, "outbound passthrough: connect failed");
            inputs.metrics.fail("source", "connect_failed");
            reset(downstream)
        }
    }
}
