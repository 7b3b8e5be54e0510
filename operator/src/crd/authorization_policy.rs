//! `AuthorizationPolicy`: who may connect to which workloads, with Istio's semantics.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{TargetRef, WorkloadSelector};
use super::{Validate, ValidationError};

/// Condition type reporting whether the policy is enforced as written.
pub const CONDITION_PROGRAMMED: &str = "Programmed";
/// Reason used when L7 fields target workloads no waypoint serves.
pub const REASON_L7_NOT_ENFORCEABLE: &str = "L7RulesNotEnforceable";

/// Access control for the selected workloads (or a Service's), in the shape of Istio's
/// AuthorizationPolicy. DENY policies are checked first; if any ALLOW policy selects a workload,
/// a request must match one of them.
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicate attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[kube(
    group = "ambit.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    namespaced,
    status = "AuthorizationPolicyStatus",
    derive = "PartialEq",
    shortname = "ap",
    doc = "Allow or deny connections and requests to workloads, with Istio's semantics.",
    printcolumn(name = "Action", type_ = "string", json_path = ".spec.action"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Programmed",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Programmed\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.selector) && has(self.targetRef))").message("set selector or targetRef, not both"))]
pub struct AuthorizationPolicySpec {
    /// Workloads of this namespace the policy applies to. With neither `selector` nor
    /// `targetRef`, the policy applies to the whole namespace (mesh-wide in `ambit-system`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// A Service whose workloads (its selector's pods) the policy applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// What a match does.
    #[serde(default)]
    pub action: AuthorizationAction,
    /// A request matches the policy when it matches any rule. No rules: an ALLOW policy allows
    /// nothing (deny all), a DENY policy denies nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthorizationRule>,
}

/// Policy actions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    #[default]
    Allow,
    Deny,
}

/// A rule matches when any `from` and any `to` entry matches (an empty list matches anything).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationRule {
    /// Sources; any may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<AuthorizationSource>,
    /// Destinations; any may match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<AuthorizationDestination>,
}

/// Conditions on the caller; all that are set must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationSource {
    /// Caller identities: `<trust-domain>/ns/<namespace>/sa/<service-account>` or the full
    /// SPIFFE ID, `*`, `prefix*` or `*suffix`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Caller identities that do not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// Namespaces of the caller's identity.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces that do not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    /// Caller addresses: CIDRs (`10.0.0.0/8`) or single IPs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    /// Caller addresses that do not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
}

/// Conditions on the destination; all that are set must hold. Methods, paths and hosts are L7:
/// only a waypoint can check them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationDestination {
    /// Destination ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1, max = 65535)))]
    pub ports: Vec<i32>,
    /// Destination ports that do not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(inner(range(min = 1, max = 65535)))]
    pub not_ports: Vec<i32>,
    /// HTTP methods (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// HTTP methods that do not match (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    /// Request paths: exact, `prefix*` or `*suffix` (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Request paths that do not match (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// Request hosts (`:authority`), exact, `prefix*` or `*suffix` (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Request hosts that do not match (L7).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
}

impl AuthorizationDestination {
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

impl AuthorizationPolicySpec {
    /// Whether any rule has L7 conditions.
    pub fn has_l7(&self) -> bool {
        self.rules.iter().flat_map(|r| &r.to).any(|t| t.has_l7())
    }
}

/// Observed state of a policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicyStatus {
    /// The `metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the spec is valid), `ResolvedRefs` (the targetRef Service exists),
    /// `Programmed` (enforced as written; False with reason `L7RulesNotEnforceable` when L7 fields
    /// target workloads no waypoint serves, so the policy is enforced at L4, fail-closed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl Validate for AuthorizationPolicySpec {
    fn validate(&self) -> Vec<ValidationError> {
        let mut errs = Vec::new();
        if self.selector.is_some() && self.target_ref.is_some() {
            errs.push(ValidationError::new(
                "spec",
                "set selector or targetRef, not both",
            ));
        }
        for (i, rule) in self.rules.iter().enumerate() {
            for (j, to) in rule.to.iter().enumerate() {
                for p in to.ports.iter().chain(&to.not_ports) {
                    if !(1..=65535).contains(p) {
                        errs.push(ValidationError::new(
                            format!("spec.rules[{i}].to[{j}]"),
                            format!("{p} is not a port (1 to 65535)"),
                        ));
                    }
                }
            }
        }
        errs
    }
}
