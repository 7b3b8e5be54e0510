//! `Waypoint`: an L7 proxy Deployment for a namespace.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Validate, ValidationError};

/// A waypoint proxy. The operator runs it as a Deployment named `<name>` fronted by a Service
/// named `<name>` in the same namespace; Services and Namespaces opt in with the label
/// `ambit.dev/use-waypoint=<name>`.
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicate attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ambit.dev",
    version = "v1alpha1",
    kind = "Waypoint",
    namespaced,
    status = "WaypointStatus",
    derive = "PartialEq",
    shortname = "wp",
    doc = "An L7 proxy for the Services (or workloads) that opt in with `ambit.dev/use-waypoint=<name>`.",
    scale = r#"{"specReplicasPath":".spec.replicas","statusReplicasPath":".status.readyReplicas"}"#,
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Address", type_ = "string", json_path = ".status.address"),
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
pub struct WaypointSpec {
    /// Number of proxy pods.
    #[serde(default = "one")]
    #[schemars(range(min = 1, max = 10))]
    pub replicas: i32,
    /// CPU and memory of each proxy pod; unset means the Mesh's `waypoint.resources`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// What traffic the waypoint handles: traffic addressed to Services, to workloads directly
    /// (pod IPs), or both.
    #[serde(default)]
    pub serves: WaypointServes,
    /// Whether the proxy writes one access-log line per request.
    #[serde(default)]
    pub access_log: bool,
}

fn one() -> i32 {
    1
}

/// The traffic a waypoint handles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum WaypointServes {
    #[default]
    Services,
    Workloads,
    All,
}

/// Observed state of a waypoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WaypointStatus {
    /// The `metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the spec is valid), `Programmed` (the Deployment and Service exist and at least
    /// one replica is ready), `ConfigAccepted` (False names the waypoint proxies that rejected
    /// their config, and the error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Proxy pods that are ready.
    #[serde(default)]
    pub ready_replicas: i32,
    /// ClusterIP of the waypoint's Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

impl Validate for WaypointSpec {
    fn validate(&self) -> Vec<ValidationError> {
        if (1..=10).contains(&self.replicas) {
            Vec::new()
        } else {
            vec![ValidationError::new(
                "spec.replicas",
                format!("{} is out of range: use 1 to 10", self.replicas),
            )]
        }
    }
}
