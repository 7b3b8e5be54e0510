//! `PeerAuthentication`: whether workloads accept plaintext as well as mTLS.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::WorkloadSelector;
use super::{Validate, ValidationError};

/// mTLS mode for workloads. Precedence: a policy with a selector that matches the workload, then
/// the namespace's policy without a selector, then the one in the root namespace `ambit-system`
/// (mesh-wide), then the Mesh's `defaultMtlsMode`.
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicate attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ambit.dev",
    version = "v1alpha1",
    kind = "PeerAuthentication",
    namespaced,
    status = "PeerAuthenticationStatus",
    derive = "PartialEq",
    shortname = "pa",
    doc = "The mTLS mode of a namespace's workloads (mesh-wide in ambit-system).",
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mtls.mode"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    /// Workloads of this namespace the policy applies to. Unset: the whole namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mTLS setting.
    #[serde(default)]
    pub mtls: PeerMtls,
}

/// The mTLS setting.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerMtls {
    /// STRICT accepts only mTLS, PERMISSIVE also plaintext, UNSET inherits from the next level.
    #[serde(default)]
    pub mode: PeerMtlsMode,
}

/// mTLS modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum PeerMtlsMode {
    #[default]
    Unset,
    Permissive,
    Strict,
}

/// Observed state of a PeerAuthentication.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationStatus {
    /// The `metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted`: the policy is valid and in effect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl Validate for PeerAuthenticationSpec {
    fn validate(&self) -> Vec<ValidationError> {
        // Everything is enforced by the schema's types and enums; no cross-field rules.
        Vec::new()
    }
}
