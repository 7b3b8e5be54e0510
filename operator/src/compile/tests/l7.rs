//! TrafficRoute and BackendPolicy status: Accepted, ResolvedRefs, Programmed, conflicts.

use serde_json::{json, Value};

use super::super::conditions::*;
use super::super::fixtures::*;
use super::super::*;
use super::{bookinfo, condition};
use crate::crd::common::ConditionStatus::{self, False, True};

/// Bookinfo with a waypoint `wp` (serving Services) named on the namespace, and Services
/// `ratings` and `details` besides `reviews`.
pub(super) fn l7_snapshot() -> Snapshot {
    let mut s = bookinfo();
    s.namespaces[0] = ns(
        "bookinfo",
        json!({"ambit.dev/dataplane-mode": "ambient", "ambit.dev/use-waypoint": "wp"}),
    );
    s.waypoints = vec![waypoint("bookinfo", "wp", "Services")];
    for name in ["ratings", "details"] {
        s.services.push(svc(
            "bookinfo",
            name,
            if name == "ratings" {
                "10.96.0.11"
            } else {
                "10.96.0.12"
            },
            json!({"app": name}),
            json!([{"port": 9080}]),
        ));
    }
    s
}

pub(super) fn route(name: &str, spec: Value, created: &str) -> std::sync::Arc<TrafficRoute> {
    serde_json::from_value(json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "TrafficRoute",
        "metadata": {"name": name, "namespace": "bookinfo", "creationTimestamp": created, "generation": 2},
        "spec": spec
    }))
    .expect("valid TrafficRoute fixture")
}

pub(super) fn policy(name: &str, spec: Value, created: &str) -> std::sync::Arc<BackendPolicy> {
    serde_json::from_value(json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "BackendPolicy",
        "metadata": {"name": name, "namespace": "bookinfo", "creationTimestamp": created, "generation": 4},
        "spec": spec
    }))
    .expect("valid BackendPolicy fixture")
}

fn canary(target: &str) -> Value {
    json!({"targetRef": {"name": target}, "rules": [{"backends": [
        {"subset": {"version": "v1"}, "weight": 90}, {"subset": {"version": "v2"}, "weight": 10}]}]})
}

fn status_of(
    c: &Compiled,
    kind: &str,
    name: &str,
    type_: &str,
) -> (ConditionStatus, String, String) {
    let cond = condition(c, kind, name, type_);
    (cond.status, cond.reason.clone(), cond.message.clone())
}

#[test]
fn route_with_a_waypoint_is_programmed() {
    let mut s = l7_snapshot();
    s.traffic_routes = vec![route("canary", canary("reviews"), "2026-01-01T00:00:00Z")];
    let c = compile(&s);
    assert_eq!(c.config.routes.len(), 1);
    assert_eq!(c.config.routes[0].service.name, "reviews");
    let st = c
        .statuses
        .iter()
        .find(|s| s.kind == "TrafficRoute")
        .unwrap();
    assert_eq!(st.generation, Some(2));
    assert_eq!(
        st.conditions
            .iter()
            .map(|c| (c.type_.as_str(), c.status))
            .collect::<Vec<_>>(),
        [(ACCEPTED, True), (RESOLVED_REFS, True), (PROGRAMMED, True)]
    );
    let (_, reason, msg) = status_of(&c, "TrafficRoute", "canary", PROGRAMMED);
    assert_eq!(reason, REASON_PROGRAMMED);
    assert!(msg.contains("bookinfo/wp"), "{msg}");
    let (_, _, msg) = status_of(&c, "TrafficRoute", "canary", RESOLVED_REFS);
    assert!(!msg.contains("selects no pod"), "{msg}");

    // The Service's own label works as well as the Namespace's, and wins over it.
    s.namespaces[0] = ambient_ns("bookinfo");
    s.services[0] = patch(
        s.services[0].clone(),
        json!({"metadata": {"labels": {"ambit.dev/use-waypoint": "wp"}}}),
    );
    assert_eq!(compile(&s).config.routes.len(), 1);
}

#[test]
fn route_without_a_waypoint_says_how_to_get_one() {
    type Change = fn(&mut Snapshot);
    let cases: [(&str, Change, &str); 5] = [
        (
            "no label",
            |s| s.namespaces[0] = ambient_ns("bookinfo"),
            "no waypoint serves Service bookinfo/reviews",
        ),
        (
            "missing waypoint",
            |s| s.waypoints.clear(),
            "names Waypoint bookinfo/wp, which does not exist",
        ),
        (
            "workloads only",
            |s| s.waypoints = vec![waypoint("bookinfo", "wp", "Workloads")],
            "serves only workloads",
        ),
        (
            "opted out",
            |s| {
                s.services[0] = patch(
                    s.services[0].clone(),
                    json!({"metadata": {"labels": {"ambit.dev/use-waypoint": "none"}}}),
                );
            },
            "opts out",
        ),
        (
            "not enrolled",
            |s| s.namespaces[0] = ns("bookinfo", json!({"ambit.dev/use-waypoint": "wp"})),
            "not in the mesh",
        ),
    ];
    for (case, change, why) in cases {
        let mut s = l7_snapshot();
        s.traffic_routes = vec![route("canary", canary("reviews"), "2026-01-01T00:00:00Z")];
        change(&mut s);
        let c = compile(&s);
        assert!(c.config.routes.is_empty(), "{case}");
        assert_eq!(
            status_of(&c, "TrafficRoute", "canary", ACCEPTED).0,
            True,
            "{case}"
        );
        let (status, reason, msg) = status_of(&c, "TrafficRoute", "canary", PROGRAMMED);
        assert_eq!(
            (status, reason.as_str()),
            (False, REASON_NO_WAYPOINT),
            "{case}"
        );
        assert!(msg.contains(why), "{case}: {msg}");
        assert!(
            msg.contains("ambit.dev/use-waypoint=<waypoint>"),
            "{case}: {msg}"
        );
    }
}

#[test]
fn missing_target_and_backends_are_named() {
    let mut s = l7_snapshot();
    s.traffic_routes = vec![
        route("lost", canary("nope"), "2026-01-01T00:00:00Z"),
        route(
            "partial",
            json!({"targetRef": {"name": "reviews"}, "rules": [{
                "backends": [{"service": "gone", "port": 80, "weight": 1}, {"subset": {"version": "v1"}, "weight": 9}],
                "mirror": {"service": "shadow", "port": 80}}]}),
            "2026-01-01T00:00:00Z",
        ),
    ];
    let c = compile(&s);
    let (status, reason, msg) = status_of(&c, "TrafficRoute", "lost", RESOLVED_REFS);
    assert_eq!((status, reason.as_str()), (False, REASON_TARGET_NOT_FOUND));
    assert!(msg.contains("bookinfo/nope"), "{msg}");
    let (status, reason, _) = status_of(&c, "TrafficRoute", "lost", PROGRAMMED);
    assert_eq!((status, reason.as_str()), (False, REASON_TARGET_NOT_FOUND));

    let (status, reason, msg) = status_of(&c, "TrafficRoute", "partial", RESOLVED_REFS);
    assert_eq!((status, reason.as_str()), (False, REASON_BACKEND_NOT_FOUND));
    assert!(
        msg.contains("bookinfo/gone") && msg.contains("bookinfo/shadow"),
        "{msg}"
    );
    // As in Gateway API and Istio: the route applies; only requests to the missing backend fail.
    let (status, _, msg) = status_of(&c, "TrafficRoute", "partial", PROGRAMMED);
    assert_eq!(status, True);
    assert!(msg.contains("503"), "{msg}");
    let names: Vec<&str> = c.config.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["partial"]);
}

#[test]
fn subset_without_pods_resolves_but_says_so() {
    let mut s = l7_snapshot();
    s.traffic_routes = vec![route(
        "v3",
        json!({"targetRef": {"name": "reviews"}, "rules": [
            {"backends": [{"subset": {"version": "v3"}}, {"subset": {"version": "v1"}}]},
            {"backends": [{"subset": {"version": "v3"}}]}]}),
        "2026-01-01T00:00:00Z",
    )];
    let c = compile(&s);
    let (status, _, msg) = status_of(&c, "TrafficRoute", "v3", RESOLVED_REFS);
    assert_eq!(status, True);
    assert!(msg.contains("subset {version=v3} selects no pod"), "{msg}");
    assert!(!msg.contains("version=v1"), "{msg}");
    assert_eq!(c.config.routes.len(), 1);
}

#[test]
fn oldest_route_per_service_wins_the_rest_conflict() {
    let mut s = l7_snapshot();
    s.traffic_routes = vec![
        route("b-newer", canary("reviews"), "2026-03-01T00:00:00Z"),
        route("z-oldest", canary("reviews"), "2026-01-01T00:00:00Z"),
        route("a-tie", canary("reviews"), "2026-03-01T00:00:00Z"),
        // Invalid objects never win, however old.
        route(
            "ancient-invalid",
            json!({"targetRef": {"name": "reviews"}, "rules": [{"backends": [{"subset": {}}]}]}),
            "2020-01-01T00:00:00Z",
        ),
        route("other-service", canary("ratings"), "2026-05-01T00:00:00Z"),
    ];
    let c = compile(&s);
    let names: Vec<&str> = c.config.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["other-service", "z-oldest"], "sorted by name");
    for loser in ["a-tie", "b-newer"] {
        let (status, reason, msg) = status_of(&c, "TrafficRoute", loser, ACCEPTED);
        assert_eq!(
            (status, reason.as_str()),
            (False, REASON_CONFLICTED),
            "{loser}"
        );
        assert!(msg.contains("bookinfo/z-oldest"), "{msg}");
        let (status, reason, _) = status_of(&c, "TrafficRoute", loser, PROGRAMMED);
        assert_eq!((status, reason.as_str()), (False, REASON_CONFLICTED));
    }
    assert_eq!(
        status_of(&c, "TrafficRoute", "ancient-invalid", ACCEPTED).1,
        REASON_INVALID
    );

    // Deleting the winner promotes the next oldest, ties broken by name.
    s.traffic_routes
        .retain(|r| r.metadata.name.as_deref() != Some("z-oldest"));
    let c = compile(&s);
    assert_eq!(status_of(&c, "TrafficRoute", "a-tie", PROGRAMMED).0, True);
    assert_eq!(
        status_of(&c, "TrafficRoute", "b-newer", ACCEPTED).1,
        REASON_CONFLICTED
    );
}

#[test]
fn backend_policy_maps_every_field() {
    let mut s = l7_snapshot();
    s.backend_policies = vec![policy(
        "ratings",
        json!({
            "targetRef": {"name": "ratings"},
            "loadBalancer": {"type": "ConsistentHash", "hashHeader": "X-User"},
            "connectionPool": {"maxConnections": 100, "maxPendingRequests": 50, "maxRequests": 200, "connectTimeout": "2s"},
            "outlierDetection": {"consecutive5xxErrors": 4, "consecutiveGatewayErrors": 3, "interval": "5s",
                                 "baseEjectionTime": "1m", "maxEjectionPercent": 50},
            "retryBudget": {"percentCanRetry": 25, "minRetriesPerSecond": 7, "ttl": "20s"}
        }),
        "2026-01-01T00:00:00Z",
    )];
    let c = compile(&s);
    assert_eq!(
        status_of(&c, "BackendPolicy", "ratings", PROGRAMMED).0,
        True
    );
    let p = &c.config.backend_policies[0];
    p.validate().unwrap();
    assert_eq!(
        serde_json::to_value(p).unwrap(),
        json!({
            "name": "ratings", "namespace": "bookinfo",
            "service": {"name": "ratings", "namespace": "bookinfo"},
            "loadBalancer": {"type": "ConsistentHash", "hashHeader": "x-user"},
            "connectionPool": {"maxConnections": 100, "maxPendingRequests": 50, "maxRequests": 200, "connectTimeout": "2s"},
            "outlierDetection": {"consecutive5xxErrors": 4, "consecutiveGatewayErrors": 3, "interval": "5s",
                                 "baseEjectionTime": "1m", "maxEjectionPercent": 50},
            "retryBudget": {"percentCanRetry": 25, "minRetriesPerSecond": 7, "ttl": "20s"}
        })
    );

    // CRD defaults: LeastRequest, connect timeout 10s, the CRD's outlier and budget defaults.
    s.backend_policies = vec![policy(
        "ratings",
        json!({"targetRef": {"name": "ratings"}, "connectionPool": {}, "outlierDetection": {}, "retryBudget": {}}),
        "2026-01-01T00:00:00Z",
    )];
    let c = compile(&s);
    assert_eq!(
        serde_json::to_value(&c.config.backend_policies[0]).unwrap(),
        json!({
            "name": "ratings", "namespace": "bookinfo",
            "service": {"name": "ratings", "namespace": "bookinfo"},
            "loadBalancer": {"type": "LeastRequest"},
            "connectionPool": {"connectTimeout": "10s"},
            "outlierDetection": {"consecutive5xxErrors": 5, "consecutiveGatewayErrors": 5, "interval": "10s",
                                 "baseEjectionTime": "30s", "maxEjectionPercent": 10},
            "retryBudget": {"percentCanRetry": 20, "minRetriesPerSecond": 10, "ttl": "10s"}
        })
    );
}

#[test]
fn backend_policy_status_follows_the_route_rules() {
    let mut s = l7_snapshot();
    s.backend_policies = vec![
        policy(
            "old",
            json!({"targetRef": {"name": "ratings"}}),
            "2026-01-01T00:00:00Z",
        ),
        policy(
            "new",
            json!({"targetRef": {"name": "ratings"}}),
            "2026-02-01T00:00:00Z",
        ),
        policy(
            "lost",
            json!({"targetRef": {"name": "nope"}}),
            "2026-01-01T00:00:00Z",
        ),
        // Valid to the schema, refused by the waypoint: no silent drop, a status saying why.
        policy(
            "short-ttl",
            json!({"targetRef": {"name": "details"}, "retryBudget": {"ttl": "500ms"}}),
            "2026-01-01T00:00:00Z",
        ),
        policy(
            "bad-hash",
            json!({"targetRef": {"name": "details"}, "loadBalancer": {"type": "ConsistentHash"}}),
            "2026-01-01T00:00:00Z",
        ),
    ];
    let c = compile(&s);
    let names: Vec<&str> = c
        .config
        .backend_policies
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(names, ["old"]);
    let st = c
        .statuses
        .iter()
        .find(|s| s.kind == "BackendPolicy" && s.name == "old")
        .unwrap();
    assert_eq!(st.generation, Some(4));
    assert_eq!(
        status_of(&c, "BackendPolicy", "new", ACCEPTED).1,
        REASON_CONFLICTED
    );
    assert_eq!(
        status_of(&c, "BackendPolicy", "lost", RESOLVED_REFS).1,
        REASON_TARGET_NOT_FOUND
    );
    let (status, reason, msg) = status_of(&c, "BackendPolicy", "short-ttl", ACCEPTED);
    assert_eq!((status, reason.as_str()), (False, REASON_INVALID));
    assert!(msg.contains("retryBudget.ttl"), "{msg}");
    let (_, _, msg) = status_of(&c, "BackendPolicy", "bad-hash", ACCEPTED);
    assert!(msg.contains("hashHeader"), "{msg}");

    s.namespaces[0] = ambient_ns("bookinfo");
    let c = compile(&s);
    assert!(c.config.backend_policies.is_empty());
    let (status, reason, msg) = status_of(&c, "BackendPolicy", "old", PROGRAMMED);
    assert_eq!((status, reason.as_str()), (False, REASON_NO_WAYPOINT));
    assert!(msg.contains("ambit.dev/use-waypoint=<waypoint>"), "{msg}");
}
