//! The compiled form of a `BackendPolicy`: how a waypoint balances, limits and ejects the
//! endpoints of one Service. The operator compiles the CRD into this; the waypoint's
//! `balance` module consumes it. Defaults follow Istio's DestinationRule where the concept is
//! the same (outlier detection) and Linkerd where it is Linkerd's (peak-EWMA balancing, retry
//! budgets). Durations are humantime strings in YAML (`"10s"`, `"1m 30s"`, `"250ms"`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One BackendPolicy, compiled.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackendPolicySpec {
    /// Name of the BackendPolicy object (for logs and status).
    pub name: String,
    pub namespace: String,
    /// The Service whose endpoints this policy governs.
    pub service: ServiceTarget,
    #[serde(default)]
    pub load_balancer: LoadBalancerSpec,
    /// Circuit-breaker limits. Absent: no limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPoolSpec>,
    /// Absent: endpoints are never ejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetectionSpec>,
    /// Absent: Linkerd's defaults (20%, 10/s, 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudgetSpec>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceTarget {
    pub name: String,
    pub namespace: String,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum LoadBalancerType {
    RoundRobin,
    /// Power of two choices over peak-EWMA latency × outstanding requests (Linkerd's balancer).
    #[default]
    LeastRequest,
    Random,
    /// Hash of the `hashHeader` request header onto a ring of endpoints.
    ConsistentHash,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LoadBalancerSpec {
    #[serde(default, rename = "type")]
    pub kind: LoadBalancerType,
    /// Required for (and only allowed with) `ConsistentHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_header: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionPoolSpec {
    /// Upstream connections open at once, across all endpoints. Absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection. Absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight. Absent: unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// TCP + HBONE handshake deadline.
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
}

impl Default for ConnectionPoolSpec {
    fn default() -> Self {
        ConnectionPoolSpec {
            max_connections: None,
            max_pending_requests: None,
            max_requests: None,
            connect_timeout: default_connect_timeout(),
        }
    }
}

/// Istio's default connect timeout.
pub fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutlierDetectionSpec {
    /// Consecutive 5xx responses (or locally originated failures) that eject an endpoint;
    /// 0 disables. Istio's default: 5.
    #[serde(default = "default_consecutive_5xx", rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: u32,
    /// Consecutive 502/503/504, connect failures, resets or timeouts that eject; 0 disables
    /// (the default, as in Istio).
    #[serde(default)]
    pub consecutive_gateway_errors: u32,
    /// Sweep period: how often ejection multipliers of healthy endpoints decay.
    #[serde(default = "default_interval", with = "duration")]
    pub interval: Duration,
    /// An endpoint's n-th ejection lasts n × this (capped at max(5m, this)).
    #[serde(default = "default_base_ejection_time", with = "duration")]
    pub base_ejection_time: Duration,
    /// At most this share of endpoints is ejected at once (at least one may be, as in Envoy;
    /// below 100 one endpoint always stays).
    #[serde(default = "default_max_ejection_percent")]
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetectionSpec {
    fn default() -> Self {
        OutlierDetectionSpec {
            consecutive_5xx_errors: default_consecutive_5xx(),
            consecutive_gateway_errors: 0,
            interval: default_interval(),
            base_ejection_time: default_base_ejection_time(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

fn default_consecutive_5xx() -> u32 {
    5
}
fn default_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_base_ejection_time() -> Duration {
    Duration::from_secs(30)
}
fn default_max_ejection_percent() -> u32 {
    10
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudgetSpec {
    /// Retries may add this percentage of the requests seen in the last `ttl`.
    #[serde(default = "default_percent_can_retry")]
    pub percent_can_retry: u32,
    /// Plus this many retries per second regardless of traffic (so low-traffic services retry).
    #[serde(default = "default_min_retries_per_second")]
    pub min_retries_per_second: u32,
    /// The sliding window requests and retries are counted over.
    #[serde(default = "default_ttl", with = "duration")]
    pub ttl: Duration,
}

impl Default for RetryBudgetSpec {
    fn default() -> Self {
        RetryBudgetSpec {
            percent_can_retry: default_percent_can_retry(),
            min_retries_per_second: default_min_retries_per_second(),
            ttl: default_ttl(),
        }
    }
}

fn default_percent_can_retry() -> u32 {
    20
}
fn default_min_retries_per_second() -> u32 {
    10
}
fn default_ttl() -> Duration {
    Duration::from_secs(10)
}

/// A BackendPolicy that cannot be applied, naming the field at fault.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("BackendPolicy {policy}: {field}: {problem}")]
pub struct BackendPolicyError {
    /// `namespace/name` of the policy.
    pub policy: String,
    /// Dotted camelCase path, e.g. `retryBudget.ttl`.
    pub field: &'static str,
    /// What is wrong and what would be accepted.
    pub problem: String,
}

impl BackendPolicySpec {
    /// Checks what serde cannot: ranges, and fields that only make sense together.
    pub fn validate(&self) -> Result<(), BackendPolicyError> {
        let err = |field: &'static str, problem: String| {
            Err(BackendPolicyError {
                policy: format!("{}/{}", self.namespace, self.name),
                field,
                problem,
            })
        };
        if self.service.name.is_empty() {
            return err("service.name", "must name the target Service".into());
        }
        if self.service.namespace.is_empty() {
            return err(
                "service.namespace",
                "must be the target Service's namespace".into(),
            );
        }
        match (self.load_balancer.kind, &self.load_balancer.hash_header) {
            (LoadBalancerType::ConsistentHash, None) => {
                return err(
                    "loadBalancer.hashHeader",
                    "is required with type ConsistentHash (the request header to hash)".into(),
                )
            }
            (LoadBalancerType::ConsistentHash, Some(h)) => {
                if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return err(
                        "loadBalancer.hashHeader",
                        format!("{h:?} is not a valid HTTP header name"),
                    );
                }
            }
            (kind, Some(_)) => {
                return err(
                    "loadBalancer.hashHeader",
                    format!("only applies to type ConsistentHash, not {kind:?}; remove it"),
                )
            }
            (_, None) => {}
        }
        if let Some(pool) = &self.connection_pool {
            for (field, v) in [
                ("connectionPool.maxConnections", pool.max_connections),
                (
                    "connectionPool.maxPendingRequests",
                    pool.max_pending_requests,
                ),
                ("connectionPool.maxRequests", pool.max_requests),
            ] {
                if v == Some(0) {
                    return err(field, "must be at least 1 (omit it for no limit)".into());
                }
            }
            if pool.connect_timeout.is_zero() {
                return err(
                    "connectionPool.connectTimeout",
                    "must be greater than 0".into(),
                );
            }
        }
        if let Some(od) = &self.outlier_detection {
            if od.interval.is_zero() {
                return err("outlierDetection.interval", "must be greater than 0".into());
            }
            if od.base_ejection_time.is_zero() {
                return err(
                    "outlierDetection.baseEjectionTime",
                    "must be greater than 0".into(),
                );
            }
            if od.max_ejection_percent > 100 {
                return err(
                    "outlierDetection.maxEjectionPercent",
                    format!("must be between 0 and 100, got {}", od.max_ejection_percent),
                );
            }
        }
        if let Some(rb) = &self.retry_budget {
            if rb.percent_can_retry > 100 {
                return err(
                    "retryBudget.percentCanRetry",
                    format!("must be between 0 and 100, got {}", rb.percent_can_retry),
                );
            }
            // Linkerd's bounds: shorter windows are too noisy, longer ones too slow to react.
            if rb.ttl < Duration::from_secs(1) || rb.ttl > Duration::from_secs(60) {
                return err(
                    "retryBudget.ttl",
                    format!(
                        "must be between 1s and 60s, got {}",
                        humantime::format_duration(rb.ttl)
                    ),
                );
            }
        }
        Ok(())
    }
}

/// Serde for `Duration` as a humantime string ("10s", "1m 30s", "250ms").
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: {e} (write e.g. \"10s\", \"250ms\", \"1m 30s\")"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<BackendPolicySpec, serde_yaml::Error> {
        serde_yaml::from_str(yaml)
    }

    const MINIMAL: &str = "name: p\nnamespace: shop\nservice: {name: cart, namespace: shop}\n";

    #[test]
    fn minimal_policy_gets_defaults() {
        let p = parse(MINIMAL).unwrap();
        assert_eq!(p.load_balancer.kind, LoadBalancerType::LeastRequest);
        assert_eq!(p.connection_pool, None);
        assert_eq!(p.outlier_detection, None);
        assert_eq!(p.retry_budget, None);
        p.validate().unwrap();
    }

    #[test]
    fn full_policy_parses_and_round_trips() {
        let yaml = r#"
name: cart-policy
namespace: shop
service: {name: cart, namespace: shop}
loadBalancer: {type: ConsistentHash, hashHeader: x-user}
connectionPool: {maxConnections: 100, maxPendingRequests: 10, maxRequests: 200, connectTimeout: 250ms}
outlierDetection:
  consecutive5xxErrors: 3
  consecutiveGatewayErrors: 2
  interval: 5s
  baseEjectionTime: 1m 30s
  maxEjectionPercent: 50
retryBudget: {percentCanRetry: 25}
"#;
        let p = parse(yaml).unwrap();
        p.validate().unwrap();
        assert_eq!(p.load_balancer.hash_header.as_deref(), Some("x-user"));
        let pool = p.connection_pool.as_ref().unwrap();
        assert_eq!(pool.max_connections, Some(100));
        assert_eq!(pool.connect_timeout, Duration::from_millis(250));
        let od = p.outlier_detection.as_ref().unwrap();
        assert_eq!(od.consecutive_5xx_errors, 3);
        assert_eq!(od.consecutive_gateway_errors, 2);
        assert_eq!(od.base_ejection_time, Duration::from_secs(90));
        let rb = p.retry_budget.as_ref().unwrap();
        assert_eq!((rb.percent_can_retry, rb.min_retries_per_second), (25, 10));
        assert_eq!(rb.ttl, Duration::from_secs(10));
        let again = parse(&serde_yaml::to_string(&p).unwrap()).unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn empty_outlier_block_gets_istio_defaults() {
        let p = parse(&format!("{MINIMAL}outlierDetection: {{}}\n")).unwrap();
        assert_eq!(p.outlier_detection, Some(OutlierDetectionSpec::default()));
        let od = OutlierDetectionSpec::default();
        assert_eq!(
            (od.consecutive_5xx_errors, od.consecutive_gateway_errors),
            (5, 0)
        );
        assert_eq!(od.base_ejection_time, Duration::from_secs(30));
        assert_eq!(od.max_ejection_percent, 10);
    }

    #[test]
    fn unknown_fields_and_bad_durations_are_rejected() {
        let e = parse(&format!(
            "{MINIMAL}loadBalancer: {{type: LeastRequest, hashHeadr: x}}\n"
        ))
        .unwrap_err();
        assert!(e.to_string().contains("hashHeadr"), "{e}");
        let e = parse(&format!("{MINIMAL}retryBudget: {{ttl: ten seconds}}\n")).unwrap_err();
        assert!(e.to_string().contains("invalid duration"), "{e}");
        let e = parse(&format!("{MINIMAL}loadBalancer: {{type: LeastConn}}\n")).unwrap_err();
        assert!(e.to_string().contains("LeastConn"), "{e}");
    }

    fn field_of(extra: &str) -> &'static str {
        let p = parse(&format!("{MINIMAL}{extra}\n")).unwrap();
        let e = p.validate().unwrap_err();
        assert!(e.to_string().starts_with("BackendPolicy shop/p: "), "{e}");
        assert!(e.to_string().contains(e.field), "{e}");
        e.field
    }

    #[test]
    fn validation_names_the_field() {
        let cases = [
            (
                "loadBalancer: {type: ConsistentHash}",
                "loadBalancer.hashHeader",
            ),
            (
                "loadBalancer: {type: ConsistentHash, hashHeader: 'x user'}",
                "loadBalancer.hashHeader",
            ),
            (
                "loadBalancer: {type: Random, hashHeader: x-user}",
                "loadBalancer.hashHeader",
            ),
            (
                "connectionPool: {maxConnections: 0}",
                "connectionPool.maxConnections",
            ),
            (
                "connectionPool: {maxPendingRequests: 0}",
                "connectionPool.maxPendingRequests",
            ),
            (
                "connectionPool: {maxRequests: 0}",
                "connectionPool.maxRequests",
            ),
            (
                "connectionPool: {connectTimeout: 0s}",
                "connectionPool.connectTimeout",
            ),
            (
                "outlierDetection: {interval: 0s}",
                "outlierDetection.interval",
            ),
            (
                "outlierDetection: {baseEjectionTime: 0s}",
                "outlierDetection.baseEjectionTime",
            ),
            (
                "outlierDetection: {maxEjectionPercent: 101}",
                "outlierDetection.maxEjectionPercent",
            ),
            (
                "retryBudget: {percentCanRetry: 101}",
                "retryBudget.percentCanRetry",
            ),
            ("retryBudget: {ttl: 500ms}", "retryBudget.ttl"),
            ("retryBudget: {ttl: 2m}", "retryBudget.ttl"),
        ];
        for (extra, field) in cases {
            assert_eq!(field_of(extra), field, "for {extra}");
        }
        let mut p = parse(MINIMAL).unwrap();
        p.service.name.clear();
        assert_eq!(p.validate().unwrap_err().field, "service.name");
    }
}
