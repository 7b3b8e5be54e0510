//! `Mesh`: the cluster-scoped install of the mesh (normally one object, named `default`).

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::Duration;
use super::{Validate, ValidationError};

/// The name of the one Mesh object the operator reconciles.
pub const DEFAULT_MESH_NAME: &str = "default";

/// Desired state of the mesh: trust domain, defaults for workloads, and how the operator runs the
/// node-level components (ztunnel, node agent) and waypoints.
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicate attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ambit.dev",
    version = "v1alpha1",
    kind = "Mesh",
    plural = "meshes",
    status = "MeshStatus",
    derive = "PartialEq",
    doc = "The mesh installation: one cluster-scoped object, normally named `default`.",
    printcolumn(
        name = "Trust Domain",
        type_ = "string",
        json_path = ".spec.trustDomain"
    ),
    printcolumn(name = "mTLS", type_ = "string", json_path = ".spec.defaultMtlsMode"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MeshSpec {
    /// SPIFFE trust domain: every identity is `spiffe://<trustDomain>/ns/<namespace>/sa/<service-account>`.
    #[serde(default = "default_trust_domain")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")
    )]
    pub trust_domain: String,
    /// mTLS mode of workloads that no PeerAuthentication covers. PERMISSIVE also accepts plaintext
    /// from callers outside the mesh; STRICT accepts only mTLS (HBONE).
    #[serde(default)]
    pub default_mtls_mode: MeshMtlsMode,
    /// Log level of every component, unless the component overrides it.
    #[serde(default)]
    pub log_level: LogLevel,
    /// Lifetime of workload certificates. They are rotated at half-life. A change applies to
    /// certificates issued from then on (no restart).
    #[serde(default = "default_certificate_ttl")]
    pub certificate_ttl: Duration,
    /// The per-node L4 proxy (DaemonSet).
    #[serde(default)]
    pub ztunnel: ZtunnelComponent,
    /// The per-node agent that installs traffic redirection in pods (DaemonSet).
    #[serde(default)]
    pub node_agent: NodeAgentComponent,
    /// Defaults for the waypoint Deployments the operator creates for Waypoint objects.
    #[serde(default)]
    pub waypoint: WaypointComponent,
    /// The chained CNI plugin.
    #[serde(default)]
    pub cni: CniSpec,
    /// How the node-level DaemonSets are rolled during an upgrade.
    #[serde(default)]
    pub upgrade: UpgradeSpec,
}

fn default_trust_domain() -> String {
    ambit_core::identity::DEFAULT_TRUST_DOMAIN.to_string()
}

fn default_certificate_ttl() -> Duration {
    Duration::new("24h")
}

/// Mesh-wide default mTLS mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MeshMtlsMode {
    #[default]
    Permissive,
    Strict,
}

/// Log verbosity.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

/// When the kubelet pulls a component's image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ImagePullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

/// One struct per component so each has its own default image.
macro_rules! component {
    ($(#[$doc:meta])* $name:ident, $image_fn:ident, $image_fn_name:literal, $image:literal,
     { $($(#[$fdoc:meta])* $field:ident: $ty:ty,)* }) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(rename_all = "camelCase")]
        pub struct $name {
            /// Container image.
            #[serde(default = $image_fn_name)]
            #[schemars(length(min = 1))]
            pub image: String,
            /// Image pull policy.
            #[serde(default)]
            pub image_pull_policy: ImagePullPolicy,
            /// CPU and memory requests and limits of the container.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub resources: Option<ResourceRequirements>,
            /// Log level of this component; unset means the mesh's `logLevel`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub log_level: Option<LogLevel>,
            $($(#[$fdoc])* #[serde(default, skip_serializing_if = "Vec::is_empty")] pub $field: $ty,)*
        }

        fn $image_fn() -> String {
            $image.to_string()
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    image: $image_fn(),
                    image_pull_policy: ImagePullPolicy::default(),
                    resources: None,
                    log_level: None,
                    $($field: Default::default(),)*
                }
            }
        }
    };
}

component!(
    /// The ztunnel DaemonSet.
    ZtunnelComponent, ztunnel_image, "ztunnel_image", "ghcr.io/ambit-mesh/ztunnel:0.1.0",
    {
        /// Tolerations, so ztunnel also runs on tainted nodes that host meshed pods.
        tolerations: Vec<Toleration>,
    }
);
component!(
    /// The node agent DaemonSet (installs the CNI plugin and pod redirection).
    NodeAgentComponent, node_agent_image, "node_agent_image", "ghcr.io/ambit-mesh/ambit-cni-agent:0.1.0",
    {
        /// Tolerations, so the agent also runs on tainted nodes that host meshed pods.
        tolerations: Vec<Toleration>,
    }
);
component!(
    /// Defaults for waypoint proxies.
    WaypointComponent, waypoint_image, "waypoint_image", "ghcr.io/ambit-mesh/waypoint:0.1.0",
    {}
);

/// The chained CNI plugin's settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CniSpec {
    /// Host directory the plugin binary is installed into.
    #[serde(default = "default_bin_dir")]
    #[schemars(regex(pattern = r"^/"))]
    pub bin_dir: String,
    /// Host directory of the cluster's CNI network configuration (the plugin is chained into it).
    #[serde(default = "default_conf_dir")]
    #[schemars(regex(pattern = r"^/"))]
    pub conf_dir: String,
    /// What happens to a new pod of an enrolled namespace when its redirection cannot be set up:
    /// Closed fails the pod's sandbox (it is retried), Open starts the pod uncaptured.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Namespaces the plugin never captures, whatever their labels.
    #[serde(default = "default_exclude_namespaces")]
    pub exclude_namespaces: Vec<String>,
}

fn default_bin_dir() -> String {
    "/opt/cni/bin".to_string()
}
fn default_conf_dir() -> String {
    "/etc/cni/net.d".to_string()
}
fn default_exclude_namespaces() -> Vec<String> {
    vec!["kube-system".to_string()]
}

impl Default for CniSpec {
    fn default() -> Self {
        Self {
            bin_dir: default_bin_dir(),
            conf_dir: default_conf_dir(),
            failure_policy: FailurePolicy::default(),
            exclude_namespaces: default_exclude_namespaces(),
        }
    }
}

/// CNI failure handling.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailurePolicy {
    #[default]
    Closed,
    Open,
}

/// Rolling update of the node-level DaemonSets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeSpec {
    /// Nodes whose ztunnel / node agent are updated at once. At least 1; the operator never
    /// takes every node at once. A node's new ztunnel starts beside the old one, which leaves
    /// once the new one serves the node's pods.
    #[serde(default = "one")]
    #[schemars(range(min = 1))]
    pub max_unavailable: i32,
}

fn one() -> i32 {
    1
}

impl Default for UpgradeSpec {
    fn default() -> Self {
        Self { max_unavailable: 1 }
    }
}

/// Observed state of the mesh.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeshStatus {
    /// The `metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` (every node runs the desired version), `Progressing` (a rollout is under way),
    /// `Degraded` (a component cannot be brought to the desired state), `ConfigAccepted`
    /// (False names the ztunnels that rejected their config, and the error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Rollout state of each node-level component.
    #[serde(default)]
    pub components: ComponentsStatus,
}

/// Rollout state per component.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentsStatus {
    /// The ztunnel DaemonSet.
    #[serde(default)]
    pub ztunnel: ComponentStatus,
    /// The node agent DaemonSet.
    #[serde(default)]
    pub node_agent: ComponentStatus,
}

/// Rollout state of one DaemonSet.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    /// Nodes that should run the component.
    #[serde(default)]
    pub desired_nodes: i32,
    /// Nodes where it runs and is ready.
    #[serde(default)]
    pub ready_nodes: i32,
    /// Nodes that run the desired version.
    #[serde(default)]
    pub updated_nodes: i32,
    /// The version (image tag) being rolled out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl MeshSpec {
    /// `certificateTtl` as a duration, or what is wrong with it (field path included).
    pub fn leaf_ttl(&self) -> Result<std::time::Duration, ValidationError> {
        self.certificate_ttl.parse("spec.certificateTtl")
    }
}

impl Validate for MeshSpec {
    fn validate(&self) -> Vec<ValidationError> {
        let mut errs = Vec::new();
        if let Err(e) = self.leaf_ttl() {
            errs.push(e);
        }
        if self.upgrade.max_unavailable < 1 {
            errs.push(ValidationError::new(
                "spec.upgrade.maxUnavailable",
                "must be at least 1",
            ));
        }
        errs
    }
}
