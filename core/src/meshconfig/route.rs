//! Compiled L7 routes: what the operator makes of a TrafficRoute and what a waypoint applies.
//!
//! A [`RouteSpec`] is attached to one Service. Its rules are tried in order; the first whose
//! matches accept a request decides the backends, timeout, retries, faults, mirror and header
//! changes. A request matching no rule goes to the Service itself (all its endpoints).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteSpec {
    pub name: String,
    pub namespace: String,
    /// The Service whose traffic this route handles.
    pub service: ServiceRef,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceRef {
    pub name: String,
    pub namespace: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteRule {
    /// Optional rule name (shows in metrics as `route=<route>.<rule>`); defaults to its index.
    #[serde(default)]
    pub name: Option<String>,
    /// The rule applies when any match accepts the request (no matches: every request).
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    /// Weighted destinations; empty means the route's own Service.
    #[serde(default)]
    pub backends: Vec<WeightedBackend>,
    /// Overall time for a response (headers), retries included.
    #[serde(default, with = "opt_duration")]
    pub timeout: Option<Duration>,
    #[serde(default)]
    pub retries: Option<RetrySpec>,
    #[serde(default)]
    pub fault: Option<FaultSpec>,
    #[serde(default)]
    pub mirror: Option<MirrorSpec>,
    #[serde(default)]
    pub request_headers: Option<HeaderChanges>,
    #[serde(default)]
    pub response_headers: Option<HeaderChanges>,
}

/// All the conditions set in one match must hold.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteMatch {
    #[serde(default)]
    pub path: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<String>,
    #[serde(default)]
    pub headers: Vec<HeaderMatch>,
    #[serde(default)]
    pub query_params: Vec<QueryMatch>,
}

/// Exactly one of the fields is set.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderMatch {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
    /// `true`: the header must be present (any value); `false`: it must be absent.
    #[serde(default)]
    pub present: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct QueryMatch {
    pub name: String,
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WeightedBackend {
    /// A Service in the route's namespace unless `namespace` says otherwise.
    pub service: String,
    #[serde(default)]
    pub namespace: Option<String>,
    /// Service port; defaults to the port the request was sent to.
    #[serde(default)]
    pub port: Option<u16>,
    /// Labels that narrow the Service's endpoints (the canary case).
    #[serde(default)]
    pub subset: BTreeMap<String, String>,
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetrySpec {
    /// Total tries including the first.
    pub attempts: u32,
    #[serde(default, with = "opt_duration")]
    pub per_try_timeout: Option<Duration>,
    /// Conditions: `5xx`, `gateway-error`, `connect-failure`, `reset`, `retriable-status-codes`.
    #[serde(default = "default_retry_on")]
    pub retry_on: Vec<String>,
    /// Used with `retriable-status-codes`.
    #[serde(default)]
    pub retriable_status_codes: Vec<u16>,
    #[serde(default)]
    pub backoff: Option<BackoffSpec>,
}

fn default_retry_on() -> Vec<String> {
    vec![
        "connect-failure".into(),
        "reset".into(),
        "gateway-error".into(),
    ]
}

/// Known `retryOn` conditions.
pub const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "connect-failure",
    "reset",
    "retriable-status-codes",
];

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BackoffSpec {
    #[serde(with = "humantime_serde_compat")]
    pub base_interval: Duration,
    #[serde(default, with = "opt_duration")]
    pub max_interval: Option<Duration>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    #[serde(default)]
    pub delay: Option<DelayFault>,
    #[serde(default)]
    pub abort: Option<AbortFault>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DelayFault {
    #[serde(with = "humantime_serde_compat")]
    pub fixed_delay: Duration,
    /// Share of requests delayed, 0..=100.
    pub percentage: f64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AbortFault {
    pub http_status: u16,
    /// Share of requests aborted, 0..=100.
    pub percentage: f64,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MirrorSpec {
    pub backend: WeightedBackend,
    /// Share of requests copied, 0..=100 (default 100).
    #[serde(default = "hundred")]
    pub percentage: f64,
}

fn hundred() -> f64 {
    100.0
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HeaderChanges {
    /// Replace (or create) these headers.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Append these values.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A route that cannot be served, naming where it is wrong.
#[derive(Debug, thiserror::Error)]
#[error("route {route}: {field}: {problem}")]
pub struct RouteError {
    /// `namespace/name`.
    pub route: String,
    /// Path of the field, e.g. `rules[0].retries.attempts`.
    pub field: String,
    pub problem: String,
}

impl RouteSpec {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Checks what serde cannot: one-of fields, ranges, weights, known conditions. Regex syntax
    /// is checked by the waypoint when it compiles the route.
    pub fn validate(&self) -> Result<(), RouteError> {
        let err = |field: String, problem: &str| RouteError {
            route: self.key(),
            field,
            problem: problem.to_string(),
        };
        for (i, rule) in self.rules.iter().enumerate() {
            let at = |f: &str| format!("rules[{i}].{f}");
            for (j, m) in rule.matches.iter().enumerate() {
                if let Some(p) = &m.path {
                    let n = [&p.exact, &p.prefix, &p.regex]
                        .iter()
                        .filter(|v| v.is_some())
                        .count();
                    if n != 1 {
                        return Err(err(
                            at(&format!("matches[{j}].path")),
                            "set exactly one of exact, prefix, regex",
                        ));
                    }
                }
                for (k, h) in m.headers.iter().enumerate() {
                    let n = [
                        h.exact.is_some(),
                        h.prefix.is_some(),
                        h.regex.is_some(),
                        h.present.is_some(),
                    ]
                    .iter()
                    .filter(|v| **v)
                    .count();
                    if n != 1 || http::HeaderName::from_bytes(h.name.as_bytes()).is_err() {
                        return Err(err(
                            at(&format!("matches[{j}].headers[{k}]")),
                            "needs a valid header name and exactly one of exact, prefix, regex, present",
                        ));
                    }
                }
                for (k, q) in m.query_params.iter().enumerate() {
                    if q.exact.is_some() == q.regex.is_some() {
                        return Err(err(
                            at(&format!("matches[{j}].queryParams[{k}]")),
                            "set exactly one of exact, regex",
                        ));
                    }
                }
                if let Some(method) = &m.method {
                    if http::Method::from_bytes(method.as_bytes()).is_err() {
                        return Err(err(
                            at(&format!("matches[{j}].method")),
                            "not an HTTP method",
                        ));
                    }
                }
            }
            if !rule.backends.is_empty() && rule.backends.iter().all(|b| b.weight == 0) {
                return Err(err(
                    at("backends"),
                    "all weights are 0; at least one must be positive",
                ));
            }
            if let Some(r) = &rule.retries {
                if r.attempts == 0 {
                    return Err(err(
                        at("retries.attempts"),
                        "must be at least 1 (the first try)",
                    ));
                }
                if let Some(bad) = r.retry_on.iter().find(|c| !RETRY_ON.contains(&c.as_str())) {
                    return Err(err(
                        at("retries.retryOn"),
                        &format!("unknown condition {bad:?}; known: {}", RETRY_ON.join(", ")),
                    ));
                }
                if let Some(b) = &r.backoff {
                    if b.base_interval.is_zero()
                        || b.max_interval.is_some_and(|m| m < b.base_interval)
                    {
                        return Err(err(
                            at("retries.backoff"),
                            "baseInterval must be > 0 and maxInterval >= baseInterval",
                        ));
                    }
                }
            }
            if let Some(f) = &rule.fault {
                if let Some(d) = &f.delay {
                    if !(0.0..=100.0).contains(&d.percentage) {
                        return Err(err(at("fault.delay.percentage"), "must be within 0..=100"));
                    }
                }
                if let Some(a) = &f.abort {
                    if !(0.0..=100.0).contains(&a.percentage) {
                        return Err(err(at("fault.abort.percentage"), "must be within 0..=100"));
                    }
                    if !(200..=599).contains(&a.http_status) {
                        return Err(err(
                            at("fault.abort.httpStatus"),
                            "must be within 200..=599",
                        ));
                    }
                }
            }
            if let Some(m) = &rule.mirror {
                if !(0.0..=100.0).contains(&m.percentage) {
                    return Err(err(at("mirror.percentage"), "must be within 0..=100"));
                }
            }
            for (which, hc) in [
                ("requestHeaders", &rule.request_headers),
                ("responseHeaders", &rule.response_headers),
            ] {
                let Some(hc) = hc else { continue };
                let names = hc.set.keys().chain(hc.add.keys()).chain(hc.remove.iter());
                for name in names {
                    if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                        return Err(err(
                            at(which),
                            &format!("{name:?} is not a valid header name"),
                        ));
                    }
                }
                for value in hc.set.values().chain(hc.add.values()) {
                    if http::HeaderValue::from_str(value).is_err() {
                        return Err(err(
                            at(which),
                            &format!("{value:?} is not a valid header value"),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// Durations as humantime strings (`"250ms"`, `"2s"`), like `backend.rs`.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&super::format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| super::parse_duration(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

fn format_duration(d: Duration) -> String {
    humantime::format_duration(d).to_string()
}

/// Humantime durations, as in the rest of the mesh config: `"250ms"`, `"2s"`, `"1m 30s"`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("duration {s:?}: {e} (e.g. \"250ms\", \"2s\")"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTE: &str = r#"{
      "name": "reviews", "namespace": "shop",
      "service": {"name": "reviews", "namespace": "shop"},
      "rules": [
        {"name": "tagged",
         "matches": [{"headers": [{"name": "x-canary", "exact": "yes"}], "path": {"prefix": "/api"}}],
         "backends": [{"service": "reviews", "subset": {"version": "v2"}}]},
        {"backends": [
           {"service": "reviews", "subset": {"version": "v1"}, "weight": 90},
           {"service": "reviews", "subset": {"version": "v2"}, "weight": 10}],
         "timeout": "2s",
         "retries": {"attempts": 3, "perTryTimeout": "250ms", "retryOn": ["5xx"], "backoff": {"baseInterval": "10ms"}},
         "fault": {"abort": {"httpStatus": 503, "percentage": 20}, "delay": {"fixedDelay": "100ms", "percentage": 50}}}
      ]}"#;

    #[test]
    fn parses_and_validates() {
        let r: RouteSpec = serde_json::from_str(ROUTE).unwrap();
        r.validate().unwrap();
        assert_eq!(r.rules[1].timeout, Some(Duration::from_secs(2)));
        let retries = r.rules[1].retries.as_ref().unwrap();
        assert_eq!(retries.per_try_timeout, Some(Duration::from_millis(250)));
        assert_eq!(r.rules[0].backends[0].weight, 1);
        let back: RouteSpec = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn errors_name_route_and_field() {
        let mut r: RouteSpec = serde_json::from_str(ROUTE).unwrap();
        r.rules[1].retries.as_mut().unwrap().retry_on = vec!["sometimes".into()];
        let e = r.validate().unwrap_err().to_string();
        assert!(
            e.contains("shop/reviews") && e.contains("rules[1].retries.retryOn"),
            "{e}"
        );
        let mut r: RouteSpec = serde_json::from_str(ROUTE).unwrap();
        r.rules[0].matches[0].path = Some(StringMatch::default());
        let e = r.validate().unwrap_err().to_string();
        assert!(e.contains("rules[0].matches[0].path"), "{e}");
        assert!(serde_json::from_str::<RouteSpec>(
            r#"{"name": "a", "namespace": "b", "service": {"name": "a", "namespace": "b"}, "bogus": 1}"#
        ).is_err());
        assert!(parse_duration("10").is_err());
        assert_eq!(
            parse_duration("1s 500ms").unwrap(),
            Duration::from_millis(1500)
        );
    }
}
