//! The mesh compiler: a snapshot of the cluster (Namespaces, Pods, Services and Ambit objects)
//! in, [`MeshConfig`] (L4: workloads, services, policies; L7, for waypoints: routes and backend
//! policies) and per-object status outcomes out. Pure functions: no I/O, no clock; the same snapshot always compiles to the same output,
//! in a fixed order (by namespace, then name), so config versions only change when the cluster does.

mod authz;
mod index;
mod l7;
mod l7_map;
mod mtls;
mod services;
mod workloads;

#[cfg(test)]
mod fixtures;

use std::sync::Arc;

use ambit_core::meshconfig::{MeshConfig, MtlsMode, PolicySpec};
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use kube::ResourceExt;

use crate::crd::common::ConditionUpdate;
use crate::crd::mesh::{MeshMtlsMode, DEFAULT_MESH_NAME};
use crate::crd::{
    AuthorizationPolicy, BackendPolicy, Mesh, PeerAuthentication, TrafficRoute, Waypoint,
};

/// Namespace label that enrolls a namespace (value `ambient`), and pod label that opts a pod out
/// (value `none`).
pub const DATAPLANE_MODE_LABEL: &str = "ambit.dev/dataplane-mode";
/// Namespace or Service (or Pod, for workload waypoints) label naming the waypoint to use;
/// `none` on a Service or Pod opts it out of its namespace's waypoint.
pub const USE_WAYPOINT_LABEL: &str = "ambit.dev/use-waypoint";

/// Condition types and reasons the compiler reports.
pub mod conditions {
    pub const ACCEPTED: &str = "Accepted";
    pub const RESOLVED_REFS: &str = "ResolvedRefs";
    pub const PROGRAMMED: &str = "Programmed";

    pub const REASON_ACCEPTED: &str = "Accepted";
    pub const REASON_INVALID: &str = "Invalid";
    pub const REASON_RESOLVED: &str = "ResolvedRefs";
    pub const REASON_TARGET_NOT_FOUND: &str = "TargetNotFound";
    pub const REASON_TARGET_HAS_NO_SELECTOR: &str = "TargetHasNoSelector";
    pub const REASON_PROGRAMMED: &str = "Programmed";
    pub const REASON_ENFORCED_BY_WAYPOINT: &str = "EnforcedByWaypoint";
    pub const REASON_CONFLICTED: &str = "Conflicted";
    pub const REASON_BACKEND_NOT_FOUND: &str = "BackendNotFound";
    pub const REASON_NO_WAYPOINT: &str = "NoWaypoint";
    pub const REASON_L7_NOT_ENFORCEABLE: &str =
        crate::crd::authorization_policy::REASON_L7_NOT_ENFORCEABLE;
}

/// Everything the compiler reads.
/// Everything the compiler reads. Objects are shared with the operator's caches (a compile
/// copies no object; at 10,000 pods a copy cost ~30 ms and a second copy of the cluster).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub meshes: Vec<Arc<Mesh>>,
    pub namespaces: Vec<Arc<Namespace>>,
    pub pods: Vec<Arc<Pod>>,
    pub services: Vec<Arc<Service>>,
    pub waypoints: Vec<Arc<Waypoint>>,
    pub peer_authentications: Vec<Arc<PeerAuthentication>>,
    pub authorization_policies: Vec<Arc<AuthorizationPolicy>>,
    pub traffic_routes: Vec<Arc<TrafficRoute>>,
    pub backend_policies: Vec<Arc<BackendPolicy>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusOutcome {
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
    /// The object's `metadata.generation`, to write as `observedGeneration`.
    pub generation: Option<i64>,
    pub conditions: Vec<ConditionUpdate>,
}

/// The compiler's output.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Compiled {
    /// The L4 config ztunnels enforce.
    pub config: MeshConfig,
    /// AuthorizationPolicies attached (by `targetRef`) to Services that have a waypoint: the
    /// waypoint enforces them, L7 fields included, so they are not in `config.policies` (ztunnel
    /// would enforce their L7 rules fail-closed against the waypoint's own connections).
    pub waypoint_policies: Vec<PolicySpec>,
    /// Status for every AuthorizationPolicy, PeerAuthentication, TrafficRoute and BackendPolicy,
    /// by kind, namespace, name.
    pub statuses: Vec<StatusOutcome>,
}

/// Compiles a snapshot.
pub fn compile(snapshot: &Snapshot) -> Compiled {
    let mesh = snapshot
        .meshes
        .iter()
        .find(|m| m.name_any() == DEFAULT_MESH_NAME);
    let trust_domain = mesh.map_or_else(
        || ambit_core::identity::DEFAULT_TRUST_DOMAIN.to_string(),
        |m| m.spec.trust_domain.clone(),
    );
    let default_mtls_mode = match mesh.map(|m| m.spec.default_mtls_mode) {
        Some(MeshMtlsMode::Strict) => MtlsMode::Strict,
        _ => MtlsMode::Permissive,
    };
    let excluded: Vec<String> = mesh
        .map(|m| m.spec.cni.exclude_namespaces.clone())
        .unwrap_or_default();

    let index = index::Index::new(snapshot);
    let services = services::compile(snapshot, &index, &excluded);
    let workloads = workloads::compile(snapshot, &index, &excluded, default_mtls_mode);
    let authz = authz::compile(snapshot, &services);
    let l7 = l7::compile(snapshot, &services);

    let mut statuses = authz.statuses;
    statuses.extend(mtls::statuses(&snapshot.peer_authentications));
    statuses.extend(l7.statuses);
    statuses.sort_by(|a, b| (a.kind, &a.namespace, &a.name).cmp(&(b.kind, &b.namespace, &b.name)));

    Compiled {
        config: MeshConfig {
            trust_domain,
            default_mtls_mode,
            workloads: workloads.into_iter().map(Arc::new).collect(),
            services,
            policies: authz.policies,
            backend_policies: l7.backend_policies,
            routes: l7.routes,
        },
        waypoint_policies: authz.waypoint_policies,
        statuses,
    }
}

/// Whether `labels` include every entry of `selector`.
fn selects(
    selector: &std::collections::BTreeMap<String, String>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests;
