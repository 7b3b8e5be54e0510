//! Field-by-field mapping of TrafficRoute and BackendPolicy specs onto the waypoint's compiled
//! [`RouteSpec`] and [`BackendPolicySpec`]. Pure; the caller has run the CRD's `validate()`.
//! Every result is also checked the way the waypoint will check it (`validate()` and regex
//! syntax), because the waypoint refuses a whole config with one bad route or policy in it.

use std::collections::BTreeMap;

use ambit_core::meshconfig::backend::{
    self as core_bp, ConnectionPoolSpec, LoadBalancerSpec, OutlierDetectionSpec, RetryBudgetSpec,
    ServiceTarget,
};
use ambit_core::meshconfig::route::{
    AbortFault, BackoffSpec, DelayFault, FaultSpec, HeaderChanges, HeaderMatch, MirrorSpec,
    QueryMatch, RetrySpec, RouteMatch, RouteRule, RouteSpec, ServiceRef, StringMatch,
    WeightedBackend,
};

use crate::crd::backend_policy::{self as crd_bp, LoadBalancerType};
use crate::crd::common::Duration;
use crate::crd::traffic_route::{
    self as crd, HeaderMatchType, HttpMethod, PathMatchType, QueryParamMatchType, RetryOn,
};

/// A spec that passed the CRD's checks but cannot be compiled; says what and where.
pub(super) type MapError = String;

/// TrafficRoute `ns/name` -> the waypoint's route for its target Service.
pub(super) fn route_spec(
    ns: &str,
    name: &str,
    spec: &crd::TrafficRouteSpec,
) -> Result<RouteSpec, MapError> {
    let target = &spec.target_ref.name;
    let rules = spec
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule(target, r, &format!("spec.rules[{i}]")))
        .collect::<Result<_, _>>()?;
    let route = RouteSpec {
        name: name.to_string(),
        namespace: ns.to_string(),
        service: ServiceRef {
            name: target.clone(),
            namespace: ns.to_string(),
        },
        rules,
    };
    route.validate().map_err(|e| e.to_string())?;
    check_regexes(&route)?;
    Ok(route)
}

fn rule(target: &str, r: &crd::RouteRule, at: &str) -> Result<RouteRule, MapError> {
    let retries = match &r.retries {
        None => None,
        Some(rp) => Some(retry(rp, &format!("{at}.retries"))?),
    };
    let fault = match &r.fault {
        None => None,
        Some(f) => Some(FaultSpec {
            delay: match &f.delay {
                None => None,
                Some(d) => Some(DelayFault {
                    fixed_delay: parse(&d.fixed_delay, &format!("{at}.fault.delay.fixedDelay"))?,
                    percentage: d.percentage,
                }),
            },
            abort: match &f.abort {
                None => None,
                Some(a) => Some(AbortFault {
                    http_status: int(a.http_status, &format!("{at}.fault.abort.httpStatus"))?,
                    percentage: a.percentage,
                }),
            },
        }),
    };
    let mirror = match &r.mirror {
        None => None,
        Some(m) => Some(MirrorSpec {
            backend: WeightedBackend {
                service: m.service.clone(),
                namespace: None,
                port: Some(int(m.port, &format!("{at}.mirror.port"))?),
                subset: BTreeMap::new(),
                weight: 1,
            },
            percentage: m.percentage,
        }),
    };
    Ok(RouteRule {
        name: None,
        matches: r.matches.iter().flat_map(route_matches).collect(),
        backends: r
            .backends
            .iter()
            .enumerate()
            .map(|(j, b)| backend(target, b, &format!("{at}.backends[{j}]")))
            .collect::<Result<_, _>>()?,
        timeout: opt(r.timeout.as_ref(), &format!("{at}.timeout"))?,
        retries,
        fault,
        mirror,
        request_headers: r.request_headers.as_ref().map(header_changes),
        response_headers: r.response_headers.as_ref().map(header_changes),
    })
}

/// One CRD match becomes one compiled match, or two for a `PathPrefix`: the waypoint's `prefix`
/// is a plain string prefix, but the CRD's (like Gateway API's) matches whole segments, so
/// `/api` becomes `exact: /api` or `prefix: /api/` (never `/apis`). A trailing `/` is ignored.
fn route_matches(m: &crd::RouteMatch) -> Vec<RouteMatch> {
    let base = RouteMatch {
        path: None,
        method: m.method.map(|m| method(m).to_string()),
        headers: m.headers.iter().map(header_match).collect(),
        query_params: m.query_params.iter().map(query_match).collect(),
    };
    let with_path = |p: StringMatch| RouteMatch {
        path: Some(p),
        ..base.clone()
    };
    let Some(p) = &m.path else {
        return vec![base];
    };
    match p.type_ {
        PathMatchType::Exact => vec![with_path(exact(&p.value))],
        PathMatchType::RegularExpression => vec![with_path(StringMatch {
            regex: Some(p.value.clone()),
            ..Default::default()
        })],
        PathMatchType::PathPrefix => {
            let trimmed = p.value.trim_end_matches('/');
            if trimmed.is_empty() {
                return vec![with_path(prefix("/"))];
            }
            vec![
                with_path(exact(trimmed)),
                with_path(prefix(&format!("{trimmed}/"))),
            ]
        }
    }
}

fn exact(v: &str) -> StringMatch {
    StringMatch {
        exact: Some(v.to_string()),
        ..Default::default()
    }
}

fn prefix(v: &str) -> StringMatch {
    StringMatch {
        prefix: Some(v.to_string()),
        ..Default::default()
    }
}

fn method(m: HttpMethod) -> &'static str {
    match m {
        HttpMethod::Get => "GET",
        HttpMethod::Head => "HEAD",
        HttpMethod::Post => "POST",
        HttpMethod::Put => "PUT",
        HttpMethod::Delete => "DELETE",
        HttpMethod::Connect => "CONNECT",
        HttpMethod::Options => "OPTIONS",
        HttpMethod::Trace => "TRACE",
        HttpMethod::Patch => "PATCH",
    }
}

fn header_match(h: &crd::HeaderMatch) -> HeaderMatch {
    let mut out = HeaderMatch {
        name: h.name.to_ascii_lowercase(),
        ..Default::default()
    };
    match h.type_ {
        HeaderMatchType::Exact => out.exact = h.value.clone(),
        HeaderMatchType::Prefix => out.prefix = h.value.clone(),
        HeaderMatchType::RegularExpression => out.regex = h.value.clone(),
        HeaderMatchType::Present => out.present = Some(true),
    }
    out
}

fn query_match(q: &crd::QueryParamMatch) -> QueryMatch {
    let mut out = QueryMatch {
        name: q.name.clone(),
        ..Default::default()
    };
    match q.type_ {
        QueryParamMatchType::Exact => out.exact = Some(q.value.clone()),
        QueryParamMatchType::RegularExpression => out.regex = Some(q.value.clone()),
    }
    out
}

/// A `subset` backend is the target Service narrowed by labels, on the port the request was
/// sent to; a `service` backend is another Service on the given port.
fn backend(target: &str, b: &crd::RouteBackend, at: &str) -> Result<WeightedBackend, MapError> {
    Ok(WeightedBackend {
        service: b.service.clone().unwrap_or_else(|| target.to_string()),
        namespace: None,
        port: b.port.map(|p| int(p, &format!("{at}.port"))).transpose()?,
        subset: b.subset.clone().unwrap_or_default(),
        weight: int(b.weight, &format!("{at}.weight"))?,
    })
}

fn retry(r: &crd::RetryPolicy, at: &str) -> Result<RetrySpec, MapError> {
    let backoff = match &r.backoff {
        None => None,
        Some(b) => Some(BackoffSpec {
            base_interval: parse(&b.base_interval, &format!("{at}.backoff.baseInterval"))?,
            max_interval: opt(
                b.max_interval.as_ref(),
                &format!("{at}.backoff.maxInterval"),
            )?,
        }),
    };
    Ok(RetrySpec {
        // The CRD counts retries after the first try (as Istio's `attempts`); the waypoint counts
        // tries, the first included.
        attempts: int::<u32>(r.attempts, &format!("{at}.attempts"))? + 1,
        per_try_timeout: opt(r.per_try_timeout.as_ref(), &format!("{at}.perTryTimeout"))?,
        retry_on: r
            .retry_on
            .iter()
            .map(|c| retry_on(*c).to_string())
            .collect(),
        retriable_status_codes: r
            .retriable_status_codes
            .iter()
            .map(|c| int(*c, &format!("{at}.retriableStatusCodes")))
            .collect::<Result<_, _>>()?,
        backoff,
    })
}

fn retry_on(c: RetryOn) -> &'static str {
    match c {
        RetryOn::FiveXx => "5xx",
        RetryOn::GatewayError => "gateway-error",
        RetryOn::ConnectFailure => "connect-failure",
        RetryOn::Reset => "reset",
        RetryOn::RetriableStatusCodes => "retriable-status-codes",
    }
}

/// Sets apply in order, so the last value of a repeated name wins; repeated adds are joined
/// with ", ", which HTTP defines as equivalent to separate header lines.
fn header_changes(m: &crd::HeaderModifier) -> HeaderChanges {
    let mut out = HeaderChanges {
        remove: m.remove.iter().map(|n| n.to_ascii_lowercase()).collect(),
        ..Default::default()
    };
    for h in &m.set {
        out.set.insert(h.name.to_ascii_lowercase(), h.value.clone());
    }
    for h in &m.add {
        out.add
            .entry(h.name.to_ascii_lowercase())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&h.value);
            })
            .or_insert_with(|| h.value.clone());
    }
    out
}

/// Regex syntax, as the waypoint compiles it (anchored to the whole value).
fn check_regexes(route: &RouteSpec) -> Result<(), MapError> {
    for (i, r) in route.rules.iter().enumerate() {
        for m in &r.matches {
            let regexes = m
                .path
                .iter()
                .filter_map(|p| p.regex.as_ref())
                .chain(m.headers.iter().filter_map(|h| h.regex.as_ref()))
                .chain(m.query_params.iter().filter_map(|q| q.regex.as_ref()));
            for re in regexes {
                if let Err(e) = regex::Regex::new(&format!("^(?:{re})$")) {
                    return Err(format!(
                        "spec.rules[{i}].matches: {re:?} is not a valid regular expression (RE2 syntax): {e}"
                    ));
                }
            }
        }
    }
    Ok(())
}

/// BackendPolicy `ns/name` -> the waypoint's policy for its target Service.
pub(super) fn backend_policy_spec(
    ns: &str,
    name: &str,
    spec: &crd_bp::BackendPolicySpec,
) -> Result<core_bp::BackendPolicySpec, MapError> {
    let connection_pool = match &spec.connection_pool {
        None => None,
        Some(p) => {
            let at = "spec.connectionPool";
            let limit = |v: Option<i32>, f: &str| {
                v.map(|v| int::<u32>(v, &format!("{at}.{f}"))).transpose()
            };
            Some(ConnectionPoolSpec {
                max_connections: limit(p.max_connections, "maxConnections")?,
                max_pending_requests: limit(p.max_pending_requests, "maxPendingRequests")?,
                max_requests: limit(p.max_requests, "maxRequests")?,
                connect_timeout: opt(p.connect_timeout.as_ref(), &format!("{at}.connectTimeout"))?
                    .unwrap_or_else(core_bp::default_connect_timeout),
            })
        }
    };
    let outlier_detection = match &spec.outlier_detection {
        None => None,
        Some(o) => {
            let at = "spec.outlierDetection";
            Some(OutlierDetectionSpec {
                consecutive_5xx_errors: int(
                    o.consecutive5xx_errors,
                    &format!("{at}.consecutive5xxErrors"),
                )?,
                consecutive_gateway_errors: int(
                    o.consecutive_gateway_errors,
                    &format!("{at}.consecutiveGatewayErrors"),
                )?,
                interval: parse(&o.interval, &format!("{at}.interval"))?,
                base_ejection_time: parse(
                    &o.base_ejection_time,
                    &format!("{at}.baseEjectionTime"),
                )?,
                max_ejection_percent: int(
                    o.max_ejection_percent,
                    &format!("{at}.maxEjectionPercent"),
                )?,
            })
        }
    };
    let retry_budget = match &spec.retry_budget {
        None => None,
        Some(b) => Some(RetryBudgetSpec {
            percent_can_retry: int(b.percent_can_retry, "spec.retryBudget.percentCanRetry")?,
            min_retries_per_second: int(
                b.min_retries_per_second,
                "spec.retryBudget.minRetriesPerSecond",
            )?,
            ttl: parse(&b.ttl, "spec.retryBudget.ttl")?,
        }),
    };
    let policy = core_bp::BackendPolicySpec {
        name: name.to_string(),
        namespace: ns.to_string(),
        service: ServiceTarget {
            name: spec.target_ref.name.clone(),
            namespace: ns.to_string(),
        },
        load_balancer: LoadBalancerSpec {
            kind: match spec.load_balancer.type_ {
                LoadBalancerType::RoundRobin => core_bp::LoadBalancerType::RoundRobin,
                LoadBalancerType::LeastRequest => core_bp::LoadBalancerType::LeastRequest,
                LoadBalancerType::Random => core_bp::LoadBalancerType::Random,
                LoadBalancerType::ConsistentHash => core_bp::LoadBalancerType::ConsistentHash,
            },
            hash_header: spec
                .load_balancer
                .hash_header
                .as_ref()
                .map(|h| h.to_ascii_lowercase()),
        },
        connection_pool,
        outlier_detection,
        retry_budget,
    };
    policy.validate().map_err(|e| e.to_string())?;
    Ok(policy)
}

fn parse(d: &Duration, at: &str) -> Result<std::time::Duration, MapError> {
    d.parse(at).map_err(|e| e.to_string())
}

fn opt(d: Option<&Duration>, at: &str) -> Result<Option<std::time::Duration>, MapError> {
    d.map(|d| parse(d, at)).transpose()
}

/// Integer fields the schema bounds; out of range only if the API server let a bad value by.
fn int<T: TryFrom<i32>>(v: i32, at: &str) -> Result<T, MapError> {
    T::try_from(v).map_err(|_| format!("{at}: {v} is out of range"))
}
