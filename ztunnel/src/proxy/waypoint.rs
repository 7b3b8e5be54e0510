//! Outbound to a waypoint (Istio ambient semantics). A connection to a Service VIP whose
//! Service has a waypoint, or to a workload (by pod IP, or picked behind a Service without
//! one) that has a waypoint, goes over HBONE to one healthy pod of the waypoint's Service at
//! `pod-ip:15008`, expecting that pod's identity. `:authority` stays the original destination
//! so the waypoint can apply L7 policy and routing to it.
//!
//! Fail closed: when the waypoint can't be reached the connection is reset, never sent
//! directly, because that would silently skip the L7 policy the waypoint enforces.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::warn;

use super::{reset, PodContext, ProxyInputs};
use crate::config::WaypointRef;
use crate::metrics::ConnLabels;
use crate::state::{ProxyState, Workload};

/// Failure reason (in `ambit_tcp_connection_failures_total`) for a waypoint-bound
/// connection that could not reach its waypoint.
pub const WAYPOINT_UNAVAILABLE: &str = "waypoint_unavailable";

/// Whether traffic from `source` must go through `wp`. Not when the source is itself one of
/// the waypoint's pods: the waypoint's own upstream connections would loop back to it.
pub(super) fn applies(state: &ProxyState, wp: &WaypointRef, source: Option<&Workload>) -> bool {
    match (state.waypoint_service(wp), source) {
        (Some(svc), Some(src)) => !svc.selects(src),
        // A missing waypoint Service can't exempt anyone: route to it and fail closed there.
        _ => true,
    }
}

/// What the caller was trying to reach, for logs: the Service hostname or the workload.
pub(super) struct Target {
    pub addr: SocketAddr,
    pub what: String,
}

/// Sends the connection to one healthy pod of `wp`'s Service, or resets it.
pub(super) async fn connect(
    downstream: TcpStream,
    src: SocketAddr,
    target: Target,
    wp: WaypointRef,
    labels: ConnLabels,
    pod: Arc<PodContext>,
    inputs: Arc<ProxyInputs>,
) {
    let state = inputs.state();
    let endpoint = state
        .waypoint_service(&wp)
        .and_then(|svc| svc.pick().map(|ep| ep.workload.clone()));
    let Some(waypoint) = endpoint else {
        let why = if state.waypoint_service(&wp).is_some() {
            "its Service has no healthy endpoints"
        } else {
            "its Service is not in the config"
        };
        warn!(%src, dst = %target.addr, destination = %target.what,
            waypoint = %format!("{}/{}", wp.namespace, wp.name),
            "outbound: waypoint unavailable ({why}); resetting instead of bypassing it");
        inputs.metrics.fail("source", WAYPOINT_UNAVAILABLE);
        return reset(downstream);
    };
    // The caller's ztunnel terminates at the waypoint: it is the destination workload and
    // principal; `destination_service` keeps the original Service.
    let labels = labels.with_destination(Some(&waypoint));
    let via = Via {
        wp,
        target: target.what,
    };
    super::outbound::hbone(
        downstream,
        src,
        target.addr,
        waypoint,
        labels,
        pod,
        inputs,
        Some(&via),
    )
    .await
}

/// A tunnel that goes through a waypoint, for failure accounting and logs.
pub(super) struct Via {
    pub wp: WaypointRef,
    /// The original destination's Service hostname or workload.
    pub target: String,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "waypoint {}/{} for {}",
            self.wp.namespace, self.wp.name, self.target
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MeshConfig;

    fn state(yaml: &str) -> ProxyState {
        let cfg: MeshConfig = serde_yaml::from_str(yaml).unwrap();
        ProxyState::build(&cfg).unwrap()
    }

    const CFG: &str = r#"
workloads:
  - {name: a, namespace: ns, ip: 10.0.0.1, node: n, labels: {app: a}}
  - {name: wp-0, namespace: ns, serviceAccount: wp, ip: 10.0.0.9, node: n, labels: {gw: wp}, healthy: false}
services:
  - {name: b, namespace: ns, vips: [10.96.0.1], ports: [{port: 80}], selector: {app: b}, waypoint: {name: wp, namespace: ns}}
  - {name: wp, namespace: ns, vips: [10.96.0.9], ports: [{port: 15008}], selector: {gw: wp}}
"#;

    #[test]
    fn the_waypoints_own_pods_are_exempt_even_when_unhealthy() {
        let s = state(CFG);
        let wp = WaypointRef {
            name: "wp".into(),
            namespace: "ns".into(),
        };
        let a = s.workload(&"10.0.0.1".parse().unwrap()).unwrap();
        let waypoint_pod = s.workload(&"10.0.0.9".parse().unwrap()).unwrap();
        assert!(applies(&s, &wp, Some(a)));
        assert!(!applies(&s, &wp, Some(waypoint_pod)));
        assert!(
            applies(&s, &wp, None),
            "an unknown source gets no exemption"
        );
        let missing = WaypointRef {
            name: "gone".into(),
            namespace: "ns".into(),
        };
        assert!(
            applies(&s, &missing, Some(waypoint_pod)),
            "a waypoint missing from config exempts nobody (fail closed)"
        );
    }
}
