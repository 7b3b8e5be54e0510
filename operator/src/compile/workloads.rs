//! Pods of enrolled namespaces become workloads: identity, node, health, labels, mTLS mode and
//! the waypoint for traffic addressed to the pod directly.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ambit_core::meshconfig::{MtlsMode, WaypointRef, WorkloadSpec};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::index::Index;
use super::services::{find_waypoint, namespace_label};
use super::{mtls, selects, Snapshot, DATAPLANE_MODE_LABEL, USE_WAYPOINT_LABEL};
use crate::crd::waypoint::WaypointServes;

/// Namespaces labelled `ambit.dev/dataplane-mode=ambient`, minus those the CNI never captures.
pub(super) fn enrolled_namespaces(snapshot: &Snapshot, excluded: &[String]) -> BTreeSet<String> {
    snapshot
        .namespaces
        .iter()
        .filter(|n| n.labels().get(DATAPLANE_MODE_LABEL).map(String::as_str) == Some("ambient"))
        .map(|n| n.name_any())
        .filter(|n| !excluded.contains(n))
        .collect()
}

/// A pod that has an address and has not finished. Pending pods with an IP count: their
/// containers may already accept connections, and the CNI captured them at sandbox creation.
pub(super) fn pod_is_live(pod: &Pod) -> bool {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref());
    status
        .and_then(|s| s.pod_ip.as_deref())
        .is_some_and(|ip| !ip.is_empty())
        && !matches!(phase, Some("Succeeded" | "Failed"))
}

pub(super) fn compile(
    snapshot: &Snapshot,
    index: &Index<'_>,
    excluded: &[String],
    default_mode: MtlsMode,
) -> Vec<WorkloadSpec> {
    let enrolled = enrolled_namespaces(snapshot, excluded);
    let waypoint_selectors = waypoint_pod_selectors(snapshot);
    let mut pods: Vec<&Pod> = snapshot
        .pods
        .iter()
        .filter(|p| {
            p.metadata
                .namespace
                .as_deref()
                .is_some_and(|ns| enrolled.contains(ns))
        })
        .filter(|p| pod_is_live(p))
        .filter(|p| {
            !p.spec
                .as_ref()
                .and_then(|s| s.host_network)
                .unwrap_or(false)
        })
        .map(|p| &**p)
        .collect();
    // Pods still terminating first lose their IP to a live pod that already reuses it: ztunnel
    // refuses a config where two workloads share an address.
    let order = |p: &Pod| {
        (
            p.metadata.deletion_timestamp.is_some(),
            p.metadata.namespace.clone(),
            p.metadata.name.clone(),
        )
    };
    pods.sort_by_cached_key(|p| order(p));
    let mut seen_ips = BTreeSet::new();
    let mut out = Vec::new();
    for pod in pods {
        let Some(w) = compile_one(snapshot, index, pod, default_mode, &waypoint_selectors) else {
            continue;
        };
        if !seen_ips.insert(w.ip) {
            tracing::warn!(pod = %format!("{}/{}", w.namespace, w.name), ip = %w.ip,
                "pod IP is also used by another pod; left out");
            continue;
        }
        out.push(w);
    }
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    out
}

fn compile_one(
    snapshot: &Snapshot,
    index: &Index<'_>,
    pod: &Pod,
    default_mode: MtlsMode,
    waypoint_selectors: &[(String, BTreeMap<String, String>)],
) -> Option<WorkloadSpec> {
    let ns = pod.namespace()?;
    let spec = pod.spec.as_ref()?;
    let status = pod.status.as_ref()?;
    let ip: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let node = spec.node_name.clone()?;
    let labels: BTreeMap<String, String> = pod.labels().clone();
    // A terminating pod stays Ready until its containers stop, but new requests must go
    // elsewhere from the moment it is deleted (as EndpointSlices mark it not ready).
    let healthy = pod.metadata.deletion_timestamp.is_none()
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
    let is_waypoint = waypoint_selectors
        .iter()
        .any(|(wns, sel)| *wns == ns && selects(sel, &labels));
    Some(WorkloadSpec {
        name: pod.name_any(),
        service_account: spec
            .service_account_name
            .clone()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".to_string()),
        uid: pod.uid(),
        ip,
        node,
        netns: None,
        captured: labels.get(DATAPLANE_MODE_LABEL).map(String::as_str) != Some("none"),
        mtls_mode: Some(mtls::mode_for(index, &ns, &labels, default_mode)),
        healthy,
        waypoint: if is_waypoint {
            None
        } else {
            workload_waypoint(snapshot, &ns, &labels)
        },
        labels,
        namespace: ns,
    })
}

/// The pods of each waypoint's own Service (named like the Waypoint), so a waypoint's pods are
/// never sent to a waypoint themselves.
fn waypoint_pod_selectors(snapshot: &Snapshot) -> Vec<(String, BTreeMap<String, String>)> {
    snapshot
        .services
        .iter()
        .filter(|s| {
            let ns = s.namespace().unwrap_or_default();
            find_waypoint(snapshot, &ns, &s.name_any()).is_some()
        })
        .filter_map(|s| {
            let sel = s.spec.as_ref()?.selector.clone()?;
            (!sel.is_empty()).then(|| (s.namespace().unwrap_or_default(), sel))
        })
        .collect()
}

/// The waypoint named by the pod's label, else its Namespace's, when that Waypoint serves
/// workloads (`Workloads` or `All`).
fn workload_waypoint(
    snapshot: &Snapshot,
    ns: &str,
    labels: &BTreeMap<String, String>,
) -> Option<WaypointRef> {
    let name = match labels.get(super::USE_WAYPOINT_LABEL) {
        Some(n) => n.clone(),
        None => namespace_label(snapshot, ns, USE_WAYPOINT_LABEL)?,
    };
    if name == "none" {
        return None;
    }
    let wp = find_waypoint(snapshot, ns, &name)?;
    matches!(
        wp.spec.serves,
        WaypointServes::Workloads | WaypointServes::All
    )
    .then(|| WaypointRef {
        name,
        namespace: ns.to_string(),
    })
}
