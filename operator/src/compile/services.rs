//! Services of enrolled namespaces: cluster IPs, TCP ports (named target ports resolved against
//! the selected pods' container ports), selector, and the waypoint from `ambit.dev/use-waypoint`.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use ambit_core::meshconfig::{ServicePort, ServiceSpec, WaypointRef};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use super::index::Index;
use super::workloads::enrolled_namespaces;
use super::{selects, Snapshot, USE_WAYPOINT_LABEL};
use crate::crd::waypoint::WaypointServes;

pub(super) fn compile(
    snapshot: &Snapshot,
    index: &Index<'_>,
    excluded: &[String],
) -> Vec<ServiceSpec> {
    let enrolled = enrolled_namespaces(snapshot, excluded);
    let mut out: Vec<ServiceSpec> = snapshot
        .services
        .iter()
        .filter(|s| enrolled.contains(s.namespace().unwrap_or_default().as_str()))
        .filter_map(|s| compile_one(snapshot, index, s))
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

fn compile_one(snapshot: &Snapshot, index: &Index<'_>, svc: &Service) -> Option<ServiceSpec> {
    let ns = svc.namespace().unwrap_or_default();
    let spec = svc.spec.as_ref()?;
    let ips: Vec<String> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.clone(),
        _ => spec.cluster_ip.clone().into_iter().collect(),
    };
    // Headless ("None") and ExternalName Services have no virtual IP for ztunnel to recognise.
    let vips: Vec<IpAddr> = ips.iter().filter_map(|ip| ip.parse().ok()).collect();
    if vips.is_empty() {
        return None;
    }
    let selector: BTreeMap<String, String> = spec.selector.clone().unwrap_or_default();
    let pods = selected_pods(index, &ns, &selector);
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let port = u16::try_from(p.port).ok()?;
            let target_port = match &p.target_port {
                None => None,
                Some(IntOrString::Int(n)) => Some(u16::try_from(*n).ok()?),
                Some(IntOrString::String(name)) => match resolve_named_port(&pods, name) {
                    Some(n) => Some(n),
                    None => {
                        // Without a pod to read it from, the port number is unknown; sending to
                        // `port` would reach the wrong socket. Left out until a pod names it.
                        tracing::debug!(service = %format!("{ns}/{}", svc.name_any()), port, target_port = %name,
                            "named targetPort not found on any selected pod; port left out");
                        return None;
                    }
                },
            };
            Some(ServicePort { port, target_port })
        })
        .collect();
    Some(ServiceSpec {
        name: svc.name_any(),
        namespace: ns.clone(),
        vips,
        ports,
        waypoint: service_waypoint(snapshot, svc),
        selector,
    })
}

/// Live pods the selector picks, by name.
fn selected_pods<'a>(
    index: &Index<'a>,
    ns: &str,
    selector: &BTreeMap<String, String>,
) -> Vec<&'a Pod> {
    if selector.is_empty() {
        // A Service without a selector has manually managed endpoints, not pods.
        return Vec::new();
    }
    index
        .live_pods(ns)
        .iter()
        .copied()
        .filter(|p| selects(selector, p.labels()))
        .collect()
}

/// The number of a named container port, from the first selected pod (by name) that has it.
fn resolve_named_port(pods: &[&Pod], name: &str) -> Option<u16> {
    pods.iter()
        .filter_map(|p| p.spec.as_ref())
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .find(|cp| cp.name.as_deref() == Some(name))
        .and_then(|cp| u16::try_from(cp.container_port).ok())
}

/// The waypoint named by the Service's label, else its Namespace's; only if that Waypoint exists
/// in the Service's namespace and serves Services. A waypoint's own Service never gets one.
fn service_waypoint(snapshot: &Snapshot, svc: &Service) -> Option<WaypointRef> {
    let ns = svc.namespace().unwrap_or_default();
    if find_waypoint(snapshot, &ns, &svc.name_any()).is_some() {
        return None;
    }
    let name = match svc.labels().get(USE_WAYPOINT_LABEL) {
        Some(n) => n.clone(),
        None => namespace_label(snapshot, &ns, USE_WAYPOINT_LABEL)?,
    };
    if name == "none" {
        return None;
    }
    let wp = find_waypoint(snapshot, &ns, &name)?;
    matches!(
        wp.spec.serves,
        WaypointServes::Services | WaypointServes::All
    )
    .then(|| WaypointRef {
        name,
        namespace: ns,
    })
}

pub(super) fn find_waypoint<'a>(
    snapshot: &'a Snapshot,
    ns: &str,
    name: &str,
) -> Option<&'a crate::crd::Waypoint> {
    snapshot
        .waypoints
        .iter()
        .find(|w| w.metadata.namespace.as_deref() == Some(ns) && w.name_any() == name)
        .map(Arc::as_ref)
}

pub(super) fn namespace_label(snapshot: &Snapshot, ns: &str, label: &str) -> Option<String> {
    snapshot
        .namespaces
        .iter()
        .find(|n| n.name_any() == ns)
        .and_then(|n| n.labels().get(label).cloned())
}
