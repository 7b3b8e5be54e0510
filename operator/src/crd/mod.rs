//! The mesh's custom resources (group `ambit.dev`, version `v1alpha1`).
//!
//! The API server enforces the generated schema (types, enums, ranges, patterns) and the CEL
//! rules (`x-kubernetes-validations`) that span fields. Each spec also has a `validate()` that
//! mirrors those CEL rules, so the operator, `ambitctl` and tests without an API server reach the
//! same verdict; tests check that both agree.

pub mod authorization_policy;
pub mod backend_policy;
pub mod common;
pub mod docs;
pub mod generate;
pub mod mesh;
pub mod peer_authentication;
pub mod traffic_route;
pub mod waypoint;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

pub use authorization_policy::{AuthorizationPolicy, AuthorizationPolicySpec};
pub use backend_policy::{BackendPolicy, BackendPolicySpec};
pub use common::{Duration, TargetRef, WorkloadSelector};
pub use mesh::{Mesh, MeshSpec};
pub use peer_authentication::{PeerAuthentication, PeerAuthenticationSpec};
pub use traffic_route::{TrafficRoute, TrafficRouteSpec};
pub use waypoint::{Waypoint, WaypointSpec};

/// The API group of every Ambit resource.
pub const GROUP: &str = "ambit.dev";
/// The only served (and stored) version.
pub const VERSION: &str = "v1alpha1";
/// PeerAuthentication objects in this namespace apply mesh-wide.
pub const ROOT_NAMESPACE: &str = "ambit-system";

/// Every CRD, in a fixed order (generation output and docs follow it).
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![
        Mesh::crd(),
        Waypoint::crd(),
        TrafficRoute::crd(),
        BackendPolicy::crd(),
        AuthorizationPolicy::crd(),
        PeerAuthentication::crd(),
    ]
}

/// A field that breaks a rule the schema's CEL validations also enforce.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// JSON path of the offending field, e.g. `spec.rules[0].backends[1]`.
    pub field: String,
    pub message: String,
}

impl ValidationError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Client-side mirror of a spec's cross-field (CEL) rules.
pub trait Validate {
    /// Every rule the object breaks (empty when valid), with paths rooted at `spec`.
    fn validate(&self) -> Vec<ValidationError>;

    /// The broken rules as one message for a status condition (`None` when valid).
    fn problems(&self) -> Option<String> {
        join_errors(&self.validate())
    }
}

/// Validation errors as one `; `-separated message (`None` when there are none).
pub fn join_errors(errors: &[ValidationError]) -> Option<String> {
    (!errors.is_empty()).then(|| {
        errors
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    })
}
