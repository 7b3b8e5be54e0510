//! `TrafficRoute`: L7 routing for one Service (matches, weighted backends, retries, timeouts,
//! faults, mirroring, header rewrites), applied by the Service's waypoint.

mod validate;

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::common::{Duration, TargetRef};

/// Routes for the requests addressed to one Service. Rules are tried in order; the first whose
/// matches fit the request picks the backends.
// Each printcolumn(...) repeats the same keys, which clippy mistakes for duplicate attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "ambit.dev",
    version = "v1alpha1",
    kind = "TrafficRoute",
    namespaced,
    status = "TrafficRouteStatus",
    derive = "PartialEq",
    shortname = "tr",
    doc = "L7 routes for one Service, applied by the waypoint that serves it.",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
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
pub struct TrafficRouteSpec {
    /// The Service whose requests these rules route.
    pub target_ref: TargetRef,
    /// Ordered rules; the first that matches a request applies.
    #[schemars(length(min = 1, max = 64))]
    pub rules: Vec<RouteRule>,
}

/// One routing rule.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.backends.exists(b, !has(b.weight) || b.weight > 0)").message("at least one backend needs a weight above 0 (the weights must sum to more than 0)"))]
pub struct RouteRule {
    /// The rule applies when any of these matches the request; empty matches every request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub matches: Vec<RouteMatch>,
    /// Where matching requests go, split by weight.
    #[schemars(length(min = 1, max = 16))]
    pub backends: Vec<RouteBackend>,
    /// Deadline for the whole request, retries included. Unset: no deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Retries of failed requests. Unset: no retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// Injected delays and errors, for testing resilience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<FaultInjection>,
    /// Copies of requests sent to another Service; responses are discarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Mirror>,
    /// Headers changed on the request before it is forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_headers: Option<HeaderModifier>,
    /// Headers changed on the response before it is returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_headers: Option<HeaderModifier>,
}

/// Conditions on a request; all that are set must hold.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    /// Condition on the request path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Conditions on request headers; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub headers: Vec<HeaderMatch>,
    /// The request method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<HttpMethod>,
    /// Conditions on query parameters; all must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub query_params: Vec<QueryParamMatch>,
}

/// How a path is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum PathMatchType {
    Exact,
    /// Whole path segments: `/api` matches `/api` and `/api/v1`, not `/apis`.
    #[default]
    PathPrefix,
    /// RE2 syntax, matched against the whole path.
    RegularExpression,
}

/// A condition on the request path.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.type) && self.type == 'RegularExpression') || self.value.startsWith('/')").message("an Exact or PathPrefix path must start with '/'"))]
pub struct PathMatch {
    /// How `value` is compared with the path: `Exact`; `PathPrefix` matches whole segments
    /// (`/api` matches `/api` and `/api/v1`, not `/apis`); `RegularExpression` (RE2, whole path).
    #[serde(default, rename = "type")]
    pub type_: PathMatchType,
    /// The path, prefix or regular expression.
    #[schemars(length(min = 1, max = 1024))]
    pub value: String,
}

/// How a header value is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum HeaderMatchType {
    #[default]
    Exact,
    Prefix,
    /// RE2 syntax, matched against the whole value.
    RegularExpression,
    /// The header is present, whatever its value (`value` must be unset).
    Present,
}

/// A condition on one request header.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.type) && self.type == 'Present') ? !has(self.value) : has(self.value)").message("value is required, except for type Present where it must be unset"))]
pub struct HeaderMatch {
    /// Header name (case-insensitive).
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$")
    )]
    pub name: String,
    /// How `value` is compared: `Exact`, `Prefix`, `RegularExpression` (RE2, whole value), or
    /// `Present` (any value; leave `value` unset).
    #[serde(default, rename = "type")]
    pub type_: HeaderMatchType,
    /// The value, prefix or regular expression.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// HTTP request methods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum HttpMethod {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
}

/// How a query parameter value is compared.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum QueryParamMatchType {
    #[default]
    Exact,
    /// RE2 syntax, matched against the whole value.
    RegularExpression,
}

/// A condition on one query parameter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueryParamMatch {
    /// Parameter name (case-sensitive).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// How `value` is compared: `Exact` or `RegularExpression` (RE2, whole value).
    #[serde(default, rename = "type")]
    pub type_: QueryParamMatchType,
    /// The value or regular expression.
    pub value: String,
}

/// A destination for matching requests: another Service (`service` + `port`), or a subset of the
/// target Service's pods (`subset`, the canary case).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.service) != has(self.subset)").message("a backend names exactly one of service or subset"))]
#[x_kube(validation = Rule::new("has(self.service) == has(self.port)").message("port is required with service, and only with service"))]
#[x_kube(validation = Rule::new("!has(self.subset) || size(self.subset) > 0").message("subset needs at least one label"))]
pub struct RouteBackend {
    /// A Service in the same namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The port of `service`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// Pods of the target Service whose labels include all of these (e.g. `version: v2`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<BTreeMap<String, String>>,
    /// Share of the rule's requests: this weight divided by the sum of the rule's weights.
    /// 0 sends none (handy while shifting traffic).
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 1000))]
    pub weight: i32,
}

fn one() -> i32 {
    1
}

/// Conditions that make a request worth retrying.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RetryOn {
    /// Any 5xx response (connection failures and resets too).
    #[serde(rename = "5xx")]
    FiveXx,
    /// 502, 503 and 504 responses.
    GatewayError,
    /// The connection to the backend could not be made.
    ConnectFailure,
    /// The backend reset or closed the connection before responding.
    Reset,
    /// The statuses listed in `retriableStatusCodes`.
    RetriableStatusCodes,
}

/// Retry policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.retryOn) || !('retriable-status-codes' in self.retryOn) || (has(self.retriableStatusCodes) && size(self.retriableStatusCodes) > 0)").message("retryOn has retriable-status-codes: list the codes in retriableStatusCodes"))]
pub struct RetryPolicy {
    /// Retries after the first try (0 disables retries).
    #[serde(default = "two")]
    #[schemars(range(min = 0, max = 10))]
    pub attempts: i32,
    /// Deadline of each try. Unset: only the rule's `timeout` applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// What failures are retried: `5xx` (any 5xx response, connection failures and resets),
    /// `gateway-error` (502, 503, 504), `connect-failure`, `reset` (the backend reset or closed
    /// the connection before responding), `retriable-status-codes` (the codes listed in
    /// `retriableStatusCodes`).
    #[serde(default = "default_retry_on")]
    #[schemars(length(min = 1, max = 5))]
    pub retry_on: Vec<RetryOn>,
    /// Response statuses retried when `retryOn` has `retriable-status-codes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32), inner(range(min = 100, max = 599)))]
    pub retriable_status_codes: Vec<i32>,
    /// Wait between tries. Unset: 25ms base, 250ms cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<Backoff>,
}

fn two() -> i32 {
    2
}
fn default_retry_on() -> Vec<RetryOn> {
    vec![
        RetryOn::ConnectFailure,
        RetryOn::Reset,
        RetryOn::GatewayError,
    ]
}

/// Exponential backoff with jitter between tries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.maxInterval) || duration(self.maxInterval) >= duration(has(self.baseInterval) ? self.baseInterval : '25ms')").message("maxInterval must not be shorter than baseInterval"))]
pub struct Backoff {
    /// Wait before the first retry; doubles each retry.
    #[serde(default = "default_base_interval")]
    pub base_interval: Duration,
    /// Cap on the wait. Unset: 10 times `baseInterval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_interval: Option<Duration>,
}

fn default_base_interval() -> Duration {
    Duration::new("25ms")
}

/// Faults injected into matching requests.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.delay) || has(self.abort)").message("a fault needs delay, abort or both"))]
pub struct FaultInjection {
    /// Delay some requests before forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer some requests with an error instead of forwarding them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// An injected delay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultDelay {
    /// How long delayed requests wait.
    pub fixed_delay: Duration,
    /// Percentage of requests delayed (0 to 100, fractions allowed).
    #[serde(default = "hundred")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percentage: f64,
}

/// An injected error response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct FaultAbort {
    /// Status of the error response.
    #[schemars(range(min = 200, max = 599))]
    pub http_status: i32,
    /// Percentage of requests aborted (0 to 100, fractions allowed).
    #[serde(default = "hundred")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percentage: f64,
}

fn hundred() -> f64 {
    100.0
}

/// Traffic mirroring.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    /// A Service in the same namespace that receives the copies.
    #[schemars(length(min = 1, max = 253))]
    pub service: String,
    /// Its port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Percentage of requests copied (0 to 100, fractions allowed).
    #[serde(default = "hundred")]
    #[schemars(range(min = 0.0, max = 100.0))]
    pub percentage: f64,
}

/// Header rewrites.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Headers set, replacing any existing values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<HeaderValue>,
    /// Headers appended to any existing values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<HeaderValue>,
    /// Names of headers removed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

/// A header name and value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HeaderValue {
    /// Header name.
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// Header value.
    pub value: String,
}

/// Observed state of a route.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficRouteStatus {
    /// The `metadata.generation` the operator last acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Accepted` (the spec is valid), `ResolvedRefs` (the target and backend Services exist),
    /// `Programmed` (a waypoint serves the target and has the routes).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}
