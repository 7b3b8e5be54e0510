//! Outbound: connections the pod makes, redirected to 15001 in its namespace. The original
//! destination decides the path: a Service VIP is resolved to one healthy endpoint; a
//! captured workload is reached over HBONE; anything else passes through untouched.

use std::net::SocketAddr;
use std::sync::Arc;

use ambit_core::hbone::client::{HboneError, PoolKey};
use ambit_core::hbone::splice;
use ambit_core::socket::{mesh_socket, original_dst};
use ambit_core::tls::client_config;
use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use super::{copy_plain, reset, PodContext, ProxyInputs, HBONE_PORT};
use crate::metrics::ConnLabels;
use crate::state::Workload;

pub async fn serve(
    listener: tokio::net::TcpListener,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
) {
    super::accept_loop(listener, "outbound", move |stream, peer| {
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
    let (target, dst_workload, service) = if let Some(svc) = state.service(&dst) {
        match svc.pick() {
            Some(ep) => (
                SocketAddr::new(ep.workload.ip, ep.port),
                Some(ep.workload.clone()),
                Some(svc.hostname()),
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
    } else {
        (dst, state.workload(&dst.ip()).cloned(), None)
    };
    let mut labels = labels.with_destination(dst_workload.as_deref());
    labels.destination_service = service.unwrap_or_default();
    match dst_workload {
        Some(w) if w.captured => hbone(downstream, src, target, w, labels, pod, inputs).await,
        _ => {
            labels.connection_security_policy = "none".into();
            passthrough(downstream, src, target, labels, pod, inputs).await
        }
    }
}

async fn hbone(
    mut downstream: TcpStream,
    src: SocketAddr,
    target: SocketAddr,
    dst: Arc<Workload>,
    mut labels: ConnLabels,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
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
                _ => {
                    warn!(%src, %target, %error, "outbound: HBONE connection failed");
                    inputs.metrics.fail("source", error.reason());
                }
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
