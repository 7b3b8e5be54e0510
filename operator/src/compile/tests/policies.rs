//! mTLS modes, authorization policies and output determinism.

use ambit_core::meshconfig::{MtlsMode, PolicyAction};
use serde_json::json;

use super::super::conditions::*;
use super::super::fixtures::*;
use super::super::*;
use super::{bookinfo, condition};
use crate::crd::common::ConditionStatus;

#[test]
fn mtls_mode_precedence_selector_then_namespace_then_root_then_mesh() {
    let mut s = bookinfo();
    s.meshes = vec![mesh(json!({"defaultMtlsMode": "STRICT"}))];
    let mode = |s: &Snapshot, pod: &str| {
        let c = compile(s);
        c.config
            .workloads
            .iter()
            .find(|w| w.name == pod)
            .unwrap()
            .mtls_mode
            .unwrap()
    };
    assert_eq!(compile(&s).config.default_mtls_mode, MtlsMode::Strict);
    assert_eq!(mode(&s, "reviews-v1"), MtlsMode::Strict, "mesh default");

    s.peer_authentications.push(peer_auth(
        "ambit-system",
        "mesh",
        json!({"mtls": {"mode": "PERMISSIVE"}}),
        "2026-01-01T00:00:00Z",
    ));
    assert_eq!(
        mode(&s, "reviews-v1"),
        MtlsMode::Permissive,
        "root namespace beats mesh default"
    );

    s.peer_authentications.push(peer_auth(
        "bookinfo",
        "ns",
        json!({"mtls": {"mode": "STRICT"}}),
        "2026-01-01T00:00:00Z",
    ));
    assert_eq!(
        mode(&s, "reviews-v1"),
        MtlsMode::Strict,
        "namespace beats root"
    );

    s.peer_authentications.push(peer_auth(
        "bookinfo",
        "v2-only",
        json!({"selector": {"matchLabels": {"version": "v2"}}, "mtls": {"mode": "PERMISSIVE"}}),
        "2026-01-01T00:00:00Z",
    ));
    assert_eq!(
        mode(&s, "reviews-v2"),
        MtlsMode::Permissive,
        "selector beats namespace"
    );
    assert_eq!(
        mode(&s, "reviews-v1"),
        MtlsMode::Strict,
        "selector applies only to its pods"
    );

    // UNSET defers to the next level; between equals, the oldest wins.
    std::sync::Arc::make_mut(&mut s.peer_authentications[2])
        .spec
        .mtls
        .mode = crate::crd::peer_authentication::PeerMtlsMode::Unset;
    assert_eq!(mode(&s, "reviews-v2"), MtlsMode::Strict);
    s.peer_authentications.push(peer_auth(
        "bookinfo",
        "a-newer",
        json!({"mtls": {"mode": "PERMISSIVE"}}),
        "2026-02-01T00:00:00Z",
    ));
    assert_eq!(
        mode(&s, "reviews-v1"),
        MtlsMode::Strict,
        "the older namespace policy wins"
    );

    let c = compile(&s);
    assert_eq!(
        condition(&c, "PeerAuthentication", "ns", ACCEPTED).status,
        ConditionStatus::True
    );
}

#[test]
fn root_namespace_policy_with_a_selector_is_not_mesh_wide() {
    let mut s = bookinfo();
    s.peer_authentications.push(peer_auth(
        "ambit-system",
        "sel",
        json!({"selector": {"matchLabels": {"app": "reviews"}}, "mtls": {"mode": "STRICT"}}),
        "2026-01-01T00:00:00Z",
    ));
    assert_eq!(
        compile(&s).config.workloads[0].mtls_mode,
        Some(MtlsMode::Permissive)
    );
}

#[test]
fn selector_and_namespace_policies_compile_for_ztunnel() {
    let mut s = bookinfo();
    s.authorization_policies = vec![
        authz(
            "bookinfo",
            "deny-ext",
            json!({
                "selector": {"matchLabels": {"app": "reviews"}},
                "action": "DENY",
                "rules": [{"from": [{"notNamespaces": ["bookinfo"], "ipBlocks": ["10.0.0.0/8"]}], "to": [{"ports": [8080]}]}]
            }),
        ),
        authz("bookinfo", "allow-nothing", json!({})),
    ];
    let c = compile(&s);
    let names: Vec<&str> = c.config.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["allow-nothing", "deny-ext"]);
    let deny = &c.config.policies[1];
    assert_eq!(deny.action, PolicyAction::Deny);
    assert_eq!(deny.selector["app"], "reviews");
    assert_eq!(deny.rules[0].from[0].not_namespaces, ["bookinfo"]);
    assert_eq!(deny.rules[0].from[0].ip_blocks, ["10.0.0.0/8"]);
    assert_eq!(deny.rules[0].to[0].ports, [8080]);
    assert!(c.config.policies[0].selector.is_empty() && c.config.policies[0].rules.is_empty());
    let p = condition(&c, "AuthorizationPolicy", "deny-ext", PROGRAMMED);
    assert_eq!(
        (p.status, p.reason.as_str()),
        (ConditionStatus::True, REASON_PROGRAMMED)
    );
    let status = c.statuses.iter().find(|s| s.name == "deny-ext").unwrap();
    assert_eq!(status.generation, Some(3));
}

#[test]
fn target_ref_takes_the_services_selector() {
    let mut s = bookinfo();
    s.authorization_policies = vec![authz(
        "bookinfo",
        "p",
        json!({"targetRef": {"name": "reviews"}, "rules": [{"to": [{"ports": [8080]}]}]}),
    )];
    let c = compile(&s);
    assert_eq!(c.config.policies[0].selector["app"], "reviews");
    assert_eq!(
        condition(&c, "AuthorizationPolicy", "p", RESOLVED_REFS).status,
        ConditionStatus::True
    );
}

#[test]
fn target_ref_to_a_missing_service_is_unresolved_and_not_enforced() {
    let mut s = bookinfo();
    s.authorization_policies = vec![authz(
        "bookinfo",
        "p",
        json!({"targetRef": {"name": "ghost"}}),
    )];
    let c = compile(&s);
    assert!(c.config.policies.is_empty());
    let r = condition(&c, "AuthorizationPolicy", "p", RESOLVED_REFS);
    assert_eq!(
        (r.status, r.reason.as_str()),
        (ConditionStatus::False, REASON_TARGET_NOT_FOUND)
    );
    assert!(
        r.message.contains("bookinfo/ghost does not exist"),
        "{}",
        r.message
    );
    assert_eq!(
        condition(&c, "AuthorizationPolicy", "p", ACCEPTED).status,
        ConditionStatus::True
    );
}

#[test]
fn target_ref_to_a_service_without_selector_is_not_widened_to_the_namespace() {
    let mut s = bookinfo();
    s.services.push(patch(
        svc(
            "bookinfo",
            "manual",
            "10.96.0.20",
            json!({}),
            json!([{"port": 80}]),
        ),
        json!({"spec": {"selector": null}}),
    ));
    s.authorization_policies = vec![authz(
        "bookinfo",
        "p",
        json!({"targetRef": {"name": "manual"}}),
    )];
    let c = compile(&s);
    assert!(c.config.policies.is_empty());
    assert_eq!(
        condition(&c, "AuthorizationPolicy", "p", RESOLVED_REFS).reason,
        REASON_TARGET_HAS_NO_SELECTOR
    );
}

#[test]
fn l7_rules_without_a_waypoint_are_enforced_at_l4_fail_closed() {
    let mut s = bookinfo();
    let l7 = json!([{"to": [{"ports": [8080], "methods": ["GET"], "paths": ["/api/*"]}]}]);
    s.authorization_policies = vec![
        authz(
            "bookinfo",
            "allow-get",
            json!({"targetRef": {"name": "reviews"}, "rules": l7}),
        ),
        authz(
            "bookinfo",
            "deny-post",
            json!({"selector": {"matchLabels": {"app": "reviews"}}, "action": "DENY", "rules": l7}),
        ),
    ];
    let c = compile(&s);
    // Still handed to ztunnel (which fails closed on the L7 parts), never dropped.
    assert_eq!(c.config.policies.len(), 2);
    assert!(c.config.policies[0].rules[0].to[0].has_l7());
    for (name, effect) in [
        ("allow-get", "match nothing"),
        ("deny-post", "deny every connection"),
    ] {
        assert_eq!(
            condition(&c, "AuthorizationPolicy", name, ACCEPTED).status,
            ConditionStatus::True
        );
        let p = condition(&c, "AuthorizationPolicy", name, PROGRAMMED);
        assert_eq!(
            (p.status, p.reason.as_str()),
            (ConditionStatus::False, "L7RulesNotEnforceable")
        );
        assert!(
            p.message.contains("fail-closed") && p.message.contains(effect),
            "{name}: {}",
            p.message
        );
    }
    assert!(
        condition(&c, "AuthorizationPolicy", "allow-get", PROGRAMMED)
            .message
            .contains("no waypoint serves Service bookinfo/reviews")
    );
}

#[test]
fn target_ref_policies_on_waypoint_services_go_to_the_waypoint() {
    let mut s = bookinfo();
    s.waypoints = vec![waypoint("bookinfo", "wp", "Services")];
    s.services[0] = patch(
        s.services[0].clone(),
        json!({"metadata": {"labels": {"ambit.dev/use-waypoint": "wp"}}}),
    );
    s.authorization_policies = vec![authz(
        "bookinfo",
        "allow-get",
        json!({"targetRef": {"name": "reviews"}, "rules": [{"to": [{"methods": ["GET"]}]}]}),
    )];
    let c = compile(&s);
    assert!(
        c.config.policies.is_empty(),
        "ztunnel must not fail-close the waypoint's own traffic"
    );
    assert_eq!(c.waypoint_policies.len(), 1);
    assert_eq!(c.waypoint_policies[0].rules[0].to[0].methods, ["GET"]);
    let p = condition(&c, "AuthorizationPolicy", "allow-get", PROGRAMMED);
    assert_eq!(
        (p.status, p.reason.as_str()),
        (ConditionStatus::True, REASON_ENFORCED_BY_WAYPOINT)
    );
}

#[test]
fn an_invalid_policy_is_not_accepted_and_not_enforced() {
    let mut s = bookinfo();
    s.authorization_policies = vec![authz(
        "bookinfo",
        "both",
        json!({"selector": {"matchLabels": {"app": "x"}}, "targetRef": {"name": "reviews"}}),
    )];
    let c = compile(&s);
    assert!(c.config.policies.is_empty() && c.waypoint_policies.is_empty());
    let a = condition(&c, "AuthorizationPolicy", "both", ACCEPTED);
    assert_eq!(
        (a.status, a.reason.as_str()),
        (ConditionStatus::False, REASON_INVALID)
    );
    assert!(a.message.contains("not both"), "{}", a.message);
}

#[test]
fn output_does_not_depend_on_input_order_and_ztunnel_can_read_it() {
    let mut s = bookinfo();
    s.peer_authentications.push(peer_auth(
        "bookinfo",
        "ns",
        json!({"mtls": {"mode": "STRICT"}}),
        "2026-01-01T00:00:00Z",
    ));
    s.authorization_policies = vec![
        authz(
            "bookinfo",
            "b",
            json!({"action": "DENY", "rules": [{"from": [{"namespaces": ["x"]}]}]}),
        ),
        authz("bookinfo", "a", json!({"targetRef": {"name": "reviews"}})),
    ];
    let first = compile(&s);
    let mut reversed = s.clone();
    reversed.pods.reverse();
    reversed.services.reverse();
    reversed.namespaces.reverse();
    reversed.authorization_policies.reverse();
    assert_eq!(compile(&reversed), first);

    // The config survives the YAML round trip proxies use (unknown fields are refused there).
    let yaml = serde_yaml::to_string(&first.config).unwrap();
    let back: ambit_core::meshconfig::MeshConfig = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(back, first.config);
}
