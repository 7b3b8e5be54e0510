//! `BackendPolicy`: how a waypoint talks to one Service's endpoints (load balancing, connection
//! limits, outlier ejection, retry budget).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, TargetRef};
use super::{Validate, ValidationError};

/// Traffic policy for the endpoints of one Service, applied by waypoints that send to it.
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicate attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ambit.dev",
    version = "v1alpha1",
    kind = "BackendPolicy",
    plural = "backendpolicies",
    namespaced,
    status = "BackendPolicyStatus",
    derive = "PartialEq",
    shortname = "bp",
    doc = "Load balancing, connection limits, outlier detection and retry budget for one Service.",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(
        name = "Load Balancer",
        type_ = "string",
        json_path = ".spec.loadBalancer.type"
    ),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct BackendPolicySpec {
    /// The Service whose endpoints this policy governs.
    pub target_ref: TargetRef,
    /// How a request picks an endpoint.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Limits on connections and requests to the Service. Unset: no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// Ejection of failing endpoints. Unset: no ejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Cap on retries, so retries cannot multiply load during an outage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// Load-balancing algorithms.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LoadBalancerType {
    RoundRobin,
    /// Power of two choices over peak-EWMA latency and outstanding requests.
    #[default]
    LeastRequest,
    Random,
    /// Requests with the same `hashHeader` value go to the same endpoint while it is healthy.
    ConsistentHash,
}

/// Load balancing.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.type) && self.type == 'ConsistentHash') == has(self.hashHeader)").message("hashHeader is required with type ConsistentHash, and only with it"))]
pub struct LoadBalancer {
    /// The algorithm: `RoundRobin`, `LeastRequest` (power of two choices over peak-EWMA latency
    /// and outstanding requests), `Random`, or `ConsistentHash` (requests with the same
    /// `hashHeader` value go to the same endpoint while it is healthy).
    #[serde(default, rename = "type")]
    pub type_: LoadBalancerType,
    /// Header whose value is hashed (ConsistentHash only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub hash_header: Option<String>,
}

/// Connection and request limits (circuit breaking). Requests over a limit fail fast with 503.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    /// Most connections open to the Service, per waypoint replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_connections: Option<i32>,
    /// Most requests waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_pending_requests: Option<i32>,
    /// Most requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_requests: Option<i32>,
    /// Deadline for opening a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<Duration>,
}

/// Passive health checking: endpoints that fail repeatedly are ejected for a while.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// 5xx responses in a row that eject an endpoint.
    #[serde(default = "five")]
    #[schemars(range(min = 1))]
    pub consecutive5xx_errors: i32,
    /// 502/503/504 responses and connection failures in a row that eject an endpoint.
    #[serde(default = "five")]
    #[schemars(range(min = 1))]
    pub consecutive_gateway_errors: i32,
    /// How often ejections are reconsidered.
    #[serde(default = "ten_seconds")]
    pub interval: Duration,
    /// First ejection lasts this long; each further ejection of the same endpoint lasts longer.
    #[serde(default = "thirty_seconds")]
    pub base_ejection_time: Duration,
    /// Most endpoints ejected at once, as a percentage of the Service's endpoints.
    #[serde(default = "ten")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: i32,
}

fn five() -> i32 {
    5
}
fn ten() -> i32 {
    10
}
fn ten_seconds() -> Duration {
    Duration::new("10s")
}
fn thirty_seconds() -> Duration {
    Duration::new("30s")
}

/// Retries allowed over a sliding window: `minRetriesPerSecond` plus `percentCanRetry` percent of
/// the requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries allowed as a percentage of requests.
    #[serde(default = "twenty")]
    #[schemars(range(min = 0, max = 100))]
    pub percent_can_retry: i32,
    /// Retries always allowed per second, however few the requests.
    #[serde(default = "ten")]
    #[schemars(range(min = 0))]
    pub min_retries_per_second: i32,
    /// The window requests and retries are counted over.
    #[serde(default = "ten_seconds")]
    pub ttl: Duration,
}

fn twenty() -> i32 {
    20
}

/// Observed state of a backend policy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackendPolicyStatus {
    /// The `metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the spec is valid), `ResolvedRefs` (the target Service exists).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl Validate for BackendPolicySpec {
    fn validate(&self) -> Vec<ValidationError> {
        let mut errs = Vec::new();
        let lb = &self.load_balancer;
        if (lb.type_ == LoadBalancerType::ConsistentHash) != lb.hash_header.is_some() {
            errs.push(ValidationError::new(
                "spec.loadBalancer",
                "hashHeader is required with type ConsistentHash, and only with it",
            ));
        }
        let mut min = |v: Option<i32>, lo: i32, at: &str| {
            if let Some(v) = v.filter(|v| *v < lo) {
                errs.push(ValidationError::new(
                    at,
                    format!("{v} is out of range: use at least {lo}"),
                ));
            }
        };
        if let Some(p) = &self.connection_pool {
            min(p.max_connections, 1, "spec.connectionPool.maxConnections");
            min(
                p.max_pending_requests,
                0,
                "spec.connectionPool.maxPendingRequests",
            );
            min(p.max_requests, 1, "spec.connectionPool.maxRequests");
        }
        if let Some(o) = &self.outlier_detection {
            min(
                Some(o.consecutive5xx_errors),
                1,
                "spec.outlierDetection.consecutive5xxErrors",
            );
            min(
                Some(o.consecutive_gateway_errors),
                1,
                "spec.outlierDetection.consecutiveGatewayErrors",
            );
        }
        if let Some(b) = &self.retry_budget {
            min(
                Some(b.min_retries_per_second),
                0,
                "spec.retryBudget.minRetriesPerSecond",
            );
        }
        let mut percent = |v: i32, at: &str| {
            if !(0..=100).contains(&v) {
                errs.push(ValidationError::new(
                    at,
                    format!("{v} is out of range: use 0 to 100"),
                ));
            }
        };
        if let Some(o) = &self.outlier_detection {
            percent(
                o.max_ejection_percent,
                "spec.outlierDetection.maxEjectionPercent",
            );
        }
        if let Some(b) = &self.retry_budget {
            percent(b.percent_can_retry, "spec.retryBudget.percentCanRetry");
        }
        let durations = [
            (
                self.connection_pool
                    .as_ref()
                    .and_then(|p| p.connect_timeout.as_ref()),
                "spec.connectionPool.connectTimeout",
            ),
            (
                self.outlier_detection.as_ref().map(|o| &o.interval),
                "spec.outlierDetection.interval",
            ),
            (
                self.outlier_detection
                    .as_ref()
                    .map(|o| &o.base_ejection_time),
                "spec.outlierDetection.baseEjectionTime",
            ),
            (
                self.retry_budget.as_ref().map(|b| &b.ttl),
                "spec.retryBudget.ttl",
            ),
        ];
        for (d, at) in durations {
            if let Some(Err(e)) = d.map(|d| d.parse(at)) {
                errs.push(e);
            }
        }
        errs
    }
}
