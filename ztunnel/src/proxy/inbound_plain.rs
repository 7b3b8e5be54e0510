//! Inbound plaintext (15006): connections from outside the mesh. STRICT workloads refuse
//! them; PERMISSIVE ones apply L4 authorization (no identity, so only IP/port rules can
//! admit them) and connect to the app keeping the caller's address.

use std::net::SocketAddr;
use std::sync::Arc;

use ambit_core::socket::{mesh_socket, original_dst};
use tokio::net::TcpStream;
use tracing::{debug, info};

use super::{copy_plain, is_mesh_port, reset, PodContext, ProxyInputs};
use crate::authz::{authorize, Connection};
use crate::config::MtlsMode;
use crate::metrics::ConnLabels;

pub async fn serve(
    listener: tokio::net::TcpListener,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
) {
    let conns = inputs.conns.clone();
    super::accept_loop(listener, conns, "inbound_plaintext", move |stream, peer| {
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
    let metrics = &inputs.metrics;
    let dst = match original_dst(&downstream) {
        Ok(d) if d.ip() == pod.ip && !is_mesh_port(d.port()) => d,
        Ok(d) => {
            debug!(%src, dst = %d, "inbound plaintext: refusing a connection aimed at a mesh port");
            metrics.deny("destination", "destination_is_mesh_port", "unknown", None);
            return reset(downstream);
        }
        Err(_) => return reset(downstream),
    };
    let state = inputs.state();
    let Some(workload) = pod.workload(&state) else {
        return reset(downstream);
    };
    if workload.mtls_mode == MtlsMode::Strict {
        info!(%src, %dst, workload = %workload.name, "inbound: plaintext refused (mTLS STRICT)");
        metrics.deny(
            "destination",
            "plaintext_in_strict_mode",
            "unknown",
            Some(&workload),
        );
        return reset(downstream);
    }
    let conn = Connection {
        src_identity: None,
        src_ip: src.ip(),
        dst_port: dst.port(),
    };
    if let Err(denied) = authorize(&state.policies, &workload, &conn) {
        info!(%src, %dst, policy = %denied.by, "inbound: plaintext connection denied");
        metrics.deny(
            "destination",
            "denied_by_policy",
            "unknown",
            Some(&workload),
        );
        return reset(downstream);
    }
    let upstream = match pod.netns.run(|| mesh_socket(dst, Some(src.ip()))) {
        Ok(Ok(socket)) => tokio::time::timeout(super::CONNECT_TIMEOUT, socket.connect(dst))
            .await
            .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into())),
        Ok(Err(e)) | Err(e) => Err(e),
    };
    let upstream = match upstream {
        Ok(u) => u,
        Err(error) => {
            debug!(%src, %dst, %error, "inbound plaintext: app connect failed");
            metrics.fail("destination", "upstream_connect_failed");
            return reset(downstream);
        }
    };
    let source = state.workload(&src.ip()).cloned();
    let labels = ConnLabels {
        reporter: "destination".into(),
        connection_security_policy: "none".into(),
        ..Default::default()
    }
    .with_source(source.as_deref(), Some("unknown".into()))
    .with_destination(Some(&workload));
    copy_plain(downstream, upstream, metrics.open(labels)).await
}
