//! The compiled mesh state the proxies serve from: what the operator streams to every ztunnel and
//! waypoint, and what tests and the sandbox write as a local YAML file. Field names follow
//! Kubernetes conventions. ztunnel reads the L4 part; the waypoint also reads the L7 part.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub mod backend;
mod lists;

pub mod route;

pub use lists::ListEdit;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshConfig {
    /// SPIFFE trust domain of every identity.
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// mTLS mode for workloads that don't set their own.
    #[serde(default)]
    pub default_mtls_mode: MtlsMode,
    /// Shared, so that copying a config to change a few workloads (what a proxy does for each
    /// streamed update) copies pointers, not 10,000 workloads.
    #[serde(default)]
    pub workloads: Vec<Arc<WorkloadSpec>>,
    #[serde(default)]
    pub services: Vec<ServiceSpec>,
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    /// Waypoint load balancing, circuit breaking, outlier ejection and retry budgets, per Service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backend_policies: Vec<backend::BackendPolicySpec>,
    /// L7 routes, applied by waypoints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<route::RouteSpec>,
}

fn default_trust_domain() -> String {
    crate::identity::DEFAULT_TRUST_DOMAIN.to_string()
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Plaintext is accepted too (for callers outside the mesh). Istio's default.
    #[default]
    Permissive,
    /// Only HBONE (mTLS) is accepted.
    Strict,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSpec {
    pub name: String,
    pub namespace: String,
    #[serde(default = "default_sa")]
    pub service_account: String,
    /// Pod UID; defaults to namespace/name.
    #[serde(default)]
    pub uid: Option<String>,
    pub ip: IpAddr,
    pub node: String,
    /// The pod's network namespace, for pods on this ztunnel's node (file mode only: the
    /// node agent hands namespaces over a socket in a cluster).
    #[serde(default)]
    pub netns: Option<PathBuf>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Whether the pod's traffic is captured (its namespace is enrolled and it has not opted out).
    #[serde(default = "yes")]
    pub captured: bool,
    #[serde(default)]
    pub mtls_mode: Option<MtlsMode>,
    /// Endpoints that fail readiness are not load-balanced to.
    #[serde(default = "yes")]
    pub healthy: bool,
    /// The waypoint that handles traffic addressed to this workload directly (by pod IP).
    #[serde(default)]
    pub waypoint: Option<WaypointRef>,
}

fn default_sa() -> String {
    "default".to_string()
}
fn yes() -> bool {
    true
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceSpec {
    pub name: String,
    pub namespace: String,
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Endpoints are the workloads of the service's namespace whose labels include all of these.
    pub selector: BTreeMap<String, String>,
    /// The waypoint that handles traffic addressed to this service (the operator sets it from the
    /// `ambit.dev/use-waypoint` label on the Service or its Namespace).
    #[serde(default)]
    pub waypoint: Option<WaypointRef>,
}

/// Names the Service (in `services`) that fronts a waypoint's pods. Traffic for a service or
/// workload with a waypoint goes over HBONE to one of that Service's endpoints on port 15008,
/// expecting the endpoint's own SPIFFE identity.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WaypointRef {
    pub name: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    pub port: u16,
    /// Defaults to `port`.
    #[serde(default)]
    pub target_port: Option<u16>,
}

#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PolicyAction {
    Allow,
    Deny,
}

/// L4 authorization, in the shape of Istio's AuthorizationPolicy.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    pub name: String,
    pub namespace: String,
    /// Workloads in `namespace` whose labels include these; empty selects the whole namespace.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    pub action: PolicyAction,
    /// A connection matches the policy when it matches any rule. No rules: matches nothing
    /// for ALLOW (deny-all) and nothing for DENY.
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    /// Any of these sources (empty: any source).
    #[serde(default)]
    pub from: Vec<SourceSpec>,
    /// Any of these destinations (empty: any port).
    #[serde(default)]
    pub to: Vec<DestinationSpec>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceSpec {
    /// SPIFFE IDs, or `*`, or `prefix*` / `*suffix`.
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    /// CIDRs (`10.0.0.0/8`) or single addresses.
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationSpec {
    #[serde(default)]
    pub ports: Vec<u16>,
    #[serde(default)]
    pub not_ports: Vec<u16>,
    /// L7 conditions, enforced by a waypoint. ztunnel cannot see them; a rule that has any is
    /// handled at L4 the way Istio's ztunnel does (see docs/ztunnel-config.md).
    #[serde(default)]
    pub methods: Vec<String>,
    #[serde(default)]
    pub not_methods: Vec<String>,
    /// Exact paths, `prefix*` or `*suffix`.
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub not_paths: Vec<String>,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub not_hosts: Vec<String>,
}

impl DestinationSpec {
    /// Whether this destination names anything only an L7 proxy can check.
    pub fn has_l7(&self) -> bool {
        !(self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty()
            && self.hosts.is_empty()
            && self.not_hosts.is_empty())
    }
}
