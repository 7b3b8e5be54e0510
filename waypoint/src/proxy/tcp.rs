//! Opaque TCP: bytes that are neither HTTP/1 nor HTTP/2 go to one endpoint of the destination
//! as they are (no routes or L7 policy can apply), through a fresh HBONE tunnel.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tracing::debug;

use super::Tunnel;
use crate::backends::BackendKey;
use crate::balance::Outcome;
use crate::metrics::TcpLabels;
use crate::state::Target;

/// The caller's side of the splice: bytes read are sent to the destination, bytes written
/// were received from it.
struct Counting<S> {
    inner: S,
    read: Counter,
    written: Counter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counting<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.read.inc_by((buf.filled().len() - before) as u64);
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counting<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.written.inc_by(n as u64);
        }
        polled
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

pub async fn proxy<S: AsyncRead + AsyncWrite + Unpin>(t: Arc<Tunnel>, downstream: S) {
    let shared = &t.shared;
    let state = shared.state();
    let src = t.caller.and_then(|c| state.workloads.get(&c.ip()));
    let mut labels = TcpLabels {
        reporter: "waypoint".into(),
        source_workload: src.map_or("unknown".into(), |w| w.spec.name.clone()),
        source_workload_namespace: src.map_or("unknown".into(), |w| w.spec.namespace.clone()),
        source_principal: t.peer.to_string(),
        ..Default::default()
    };
    let key = match state.target(t.authority) {
        Some(Target::Service { key, port }) => {
            labels.destination_service = format!("{}.{}.svc.cluster.local", key.1, key.0);
            labels.destination_service_namespace = key.0.clone();
            BackendKey::Service {
                service: key,
                port,
                subset: Default::default(),
            }
        }
        Some(Target::Workload { ip, port }) => {
            labels.destination_service_namespace = state
                .workloads
                .get(&ip)
                .map_or(String::new(), |w| w.spec.namespace.clone());
            BackendKey::Workload(std::net::SocketAddr::new(ip, port))
        }
        None => return shared.metrics.refused("not_served_by_waypoint"),
    };
    let backend = shared.backends.get(&state, &key);
    let Ok(pick) = backend.pick(None) else {
        return shared.metrics.refused("no_healthy_upstream");
    };
    let started = std::time::Instant::now();
    let mut upstream = match shared.upstream.tunnel(&pick.endpoint, t.caller).await {
        Ok(u) => u,
        Err(e) => {
            debug!(error = %e, "opaque TCP: upstream tunnel failed");
            pick.finish(Outcome::ConnectFailure);
            return shared.metrics.refused("upstream_connect_failed");
        }
    };
    pick.finish(Outcome::Response {
        status: 200,
        latency: started.elapsed(),
    });
    shared.metrics.tcp_opened.get_or_create(&labels).inc();
    // Counted as bytes flow, so a connection that ends with an error is counted too.
    let mut downstream = Counting {
        inner: downstream,
        read: shared.metrics.tcp_sent.get_or_create(&labels).clone(),
        written: shared.metrics.tcp_received.get_or_create(&labels).clone(),
    };
    if let Err(e) = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await {
        debug!(error = %e, "opaque TCP ended with an error");
    }
    shared.metrics.tcp_closed.get_or_create(&labels).inc();
}
