//! TrafficRoute -> RouteSpec: every field's mapping, and the checks the waypoint would make.

use std::time::Duration;

use ambit_core::meshconfig::route::RouteSpec;
use serde_json::{json, Value};

use super::super::conditions::*;
use super::super::*;
use super::condition;
use super::l7::{l7_snapshot, route};
use crate::crd::common::ConditionStatus;

fn compiled_route(spec: Value) -> RouteSpec {
    let mut s = l7_snapshot();
    s.traffic_routes = vec![route("r", spec, "2026-01-01T00:00:00Z")];
    let c = compile(&s);
    assert_eq!(
        condition(&c, "TrafficRoute", "r", PROGRAMMED).status,
        ConditionStatus::True,
        "{:?}",
        c.statuses
    );
    let r = c.config.routes.into_iter().next().unwrap();
    r.validate().unwrap();
    r
}

#[test]
fn every_field_maps_onto_the_waypoint_route() {
    let r = compiled_route(json!({
        "targetRef": {"kind": "Service", "name": "reviews"},
        "rules": [{
            "matches": [{
                "path": {"type": "Exact", "value": "/login"},
                "method": "POST",
                "headers": [
                    {"name": "X-Canary", "value": "yes"},
                    {"name": "x-pre", "type": "Prefix", "value": "ab"},
                    {"name": "x-re", "type": "RegularExpression", "value": "a+b"},
                    {"name": "x-any", "type": "Present"}
                ],
                "queryParams": [
                    {"name": "q", "value": "1"},
                    {"name": "r", "type": "RegularExpression", "value": "[0-9]+"}
                ]
            }],
            "backends": [
                {"subset": {"version": "v1"}, "weight": 90},
                {"service": "ratings", "port": 9080, "weight": 10},
                {"subset": {"version": "v2"}, "weight": 0}
            ],
            "timeout": "3s",
            "retries": {
                "attempts": 3, "perTryTimeout": "1s",
                "retryOn": ["5xx", "gateway-error", "connect-failure", "reset", "retriable-status-codes"],
                "retriableStatusCodes": [409, 429],
                "backoff": {"baseInterval": "10ms", "maxInterval": "100ms"}
            },
            "fault": {
                "delay": {"fixedDelay": "150ms", "percentage": 12.5},
                "abort": {"httpStatus": 503, "percentage": 5}
            },
            "mirror": {"service": "details", "port": 9080, "percentage": 25},
            "requestHeaders": {
                "set": [{"name": "X-Env", "value": "a"}, {"name": "x-env", "value": "b"}],
                "add": [{"name": "x-tag", "value": "1"}, {"name": "x-tag", "value": "2"}],
                "remove": ["X-Debug"]
            },
            "responseHeaders": {"set": [{"name": "x-served-by", "value": "wp"}]}
        }]
    }));
    let expected = json!({
        "name": "r", "namespace": "bookinfo",
        "service": {"name": "reviews", "namespace": "bookinfo"},
        "rules": [{
            "name": null,
            "matches": [{
                "path": {"exact": "/login", "prefix": null, "regex": null},
                "method": "POST",
                "headers": [
                    {"name": "x-canary", "exact": "yes", "prefix": null, "regex": null, "present": null},
                    {"name": "x-pre", "exact": null, "prefix": "ab", "regex": null, "present": null},
                    {"name": "x-re", "exact": null, "prefix": null, "regex": "a+b", "present": null},
                    {"name": "x-any", "exact": null, "prefix": null, "regex": null, "present": true}
                ],
                "queryParams": [
                    {"name": "q", "exact": "1", "regex": null},
                    {"name": "r", "exact": null, "regex": "[0-9]+"}
                ]
            }],
            "backends": [
                {"service": "reviews", "namespace": null, "port": null, "subset": {"version": "v1"}, "weight": 90},
                {"service": "ratings", "namespace": null, "port": 9080, "subset": {}, "weight": 10},
                {"service": "reviews", "namespace": null, "port": null, "subset": {"version": "v2"}, "weight": 0}
            ],
            "timeout": "3s",
            "retries": {
                "attempts": 4, "perTryTimeout": "1s",
                "retryOn": ["5xx", "gateway-error", "connect-failure", "reset", "retriable-status-codes"],
                "retriableStatusCodes": [409, 429],
                "backoff": {"baseInterval": "10ms", "maxInterval": "100ms"}
            },
            "fault": {
                "delay": {"fixedDelay": "150ms", "percentage": 12.5},
                "abort": {"httpStatus": 503, "percentage": 5.0}
            },
            "mirror": {
                "backend": {"service": "details", "namespace": null, "port": 9080, "subset": {}, "weight": 1},
                "percentage": 25.0
            },
            "requestHeaders": {"set": {"x-env": "b"}, "add": {"x-tag": "1, 2"}, "remove": ["x-debug"]},
            "responseHeaders": {"set": {"x-served-by": "wp"}, "add": {}, "remove": []}
        }]
    });
    assert_eq!(serde_json::to_value(&r).unwrap(), expected);
    let rule = &r.rules[0];
    assert_eq!(rule.timeout, Some(Duration::from_secs(3)));
    assert_eq!(
        rule.fault
            .as_ref()
            .unwrap()
            .delay
            .as_ref()
            .unwrap()
            .fixed_delay,
        Duration::from_millis(150)
    );
}

#[test]
fn path_prefix_matches_whole_segments() {
    let paths = |path: Value| {
        let r = compiled_route(json!({
            "targetRef": {"name": "reviews"},
            "rules": [{"matches": [{"path": path, "headers": [{"name": "x-a", "value": "1"}]}],
                       "backends": [{"subset": {"version": "v1"}}]}]
        }));
        let m = &r.rules[0].matches;
        assert!(
            m.iter().all(|m| m.headers.len() == 1),
            "other conditions are kept on every expanded match"
        );
        m.iter()
            .map(|m| {
                let p = m.path.as_ref().unwrap();
                match (&p.exact, &p.prefix, &p.regex) {
                    (Some(e), None, None) => format!("exact {e}"),
                    (None, Some(p), None) => format!("prefix {p}"),
                    (None, None, Some(r)) => format!("regex {r}"),
                    other => panic!("not one condition: {other:?}"),
                }
            })
            .collect::<Vec<_>>()
    };
    let both = ["exact /api", "prefix /api/"];
    assert_eq!(paths(json!({"type": "PathPrefix", "value": "/api"})), both);
    assert_eq!(
        paths(json!({"value": "/api/"})),
        both,
        "default type; trailing / ignored"
    );
    assert_eq!(paths(json!({"value": "/"})), ["prefix /"]);
    assert_eq!(
        paths(json!({"type": "Exact", "value": "/api"})),
        ["exact /api"]
    );
    assert_eq!(
        paths(json!({"type": "RegularExpression", "value": "/v[0-9]+/.*"})),
        ["regex /v[0-9]+/.*"]
    );
}

#[test]
fn retries_count_tries_and_keep_defaults() {
    let retries = |r: Value| {
        compiled_route(json!({
            "targetRef": {"name": "reviews"},
            "rules": [{"backends": [{"subset": {"version": "v1"}}], "retries": r}]
        }))
        .rules[0]
            .retries
            .clone()
            .unwrap()
    };
    let r = retries(json!({}));
    assert_eq!(r.attempts, 3, "2 retries by default = 3 tries");
    assert_eq!(r.retry_on, ["connect-failure", "reset", "gateway-error"]);
    assert_eq!((r.per_try_timeout, &r.backoff), (None, &None));
    let r = retries(json!({"attempts": 0, "perTryTimeout": "200ms"}));
    assert_eq!(r.attempts, 1, "0 retries: one try, per-try timeout kept");
    assert_eq!(r.per_try_timeout, Some(Duration::from_millis(200)));
    let r = retries(json!({"backoff": {}}));
    let b = r.backoff.unwrap();
    assert_eq!(
        (b.base_interval, b.max_interval),
        (Duration::from_millis(25), None)
    );
}

#[test]
fn specs_the_waypoint_would_refuse_are_not_accepted() {
    let cases = [
        (
            json!({"matches": [{"path": {"type": "RegularExpression", "value": "/(unclosed"}}],
                   "backends": [{"subset": {"version": "v1"}}]}),
            "not a valid regular expression",
        ),
        (
            json!({"matches": [{"headers": [{"name": "x-a", "type": "RegularExpression", "value": "a{2,1}"}]}],
                   "backends": [{"subset": {"version": "v1"}}]}),
            "not a valid regular expression",
        ),
        (
            json!({"backends": [{"subset": {"version": "v1"}}],
                   "requestHeaders": {"set": [{"name": "bad name", "value": "x"}]}}),
            "not a valid header name",
        ),
        (
            json!({"backends": [{"subset": {"version": "v1"}}],
                   "retries": {"backoff": {"baseInterval": "0s"}}}),
            "baseInterval must be > 0",
        ),
        (
            json!({"backends": [{"subset": {"version": "v1"}, "weight": 0}]}),
            "weight above 0",
        ),
        (
            json!({"backends": [{"service": "ratings"}]}),
            "port is required with service",
        ),
    ];
    for (rule, problem) in cases {
        let mut s = l7_snapshot();
        s.traffic_routes = vec![route(
            "bad",
            json!({"targetRef": {"name": "reviews"}, "rules": [rule]}),
            "2026-01-01T00:00:00Z",
        )];
        let c = compile(&s);
        let accepted = condition(&c, "TrafficRoute", "bad", ACCEPTED);
        assert_eq!(
            (accepted.status, accepted.reason.as_str()),
            (ConditionStatus::False, REASON_INVALID),
            "{rule}"
        );
        assert!(accepted.message.contains(problem), "{}", accepted.message);
        let programmed = condition(&c, "TrafficRoute", "bad", PROGRAMMED);
        assert_eq!(programmed.status, ConditionStatus::False);
        assert!(c.config.routes.is_empty(), "{rule}");
    }
}
