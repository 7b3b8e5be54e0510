//! AuthorizationPolicy -> L4 policies for ztunnel (or, for policies attached to a Service that has
//! a waypoint, policies the waypoint enforces), with status conditions.

use std::collections::BTreeMap;

use ambit_core::meshconfig::{
    DestinationSpec, PolicyAction, PolicySpec, RuleSpec, ServiceSpec, SourceSpec,
};
use kube::ResourceExt;

use super::conditions::*;
use super::{Snapshot, StatusOutcome};
use crate::crd::authorization_policy::{
    AuthorizationAction, AuthorizationDestination, AuthorizationSource,
};
use crate::crd::common::{ConditionStatus, ConditionUpdate};
use crate::crd::{AuthorizationPolicy, Validate};

pub(super) struct Output {
    pub policies: Vec<PolicySpec>,
    pub waypoint_policies: Vec<PolicySpec>,
    pub statuses: Vec<StatusOutcome>,
}

pub(super) fn compile(snapshot: &Snapshot, services: &[ServiceSpec]) -> Output {
    let mut out = Output {
        policies: Vec::new(),
        waypoint_policies: Vec::new(),
        statuses: Vec::new(),
    };
    for ap in &snapshot.authorization_policies {
        let (placement, conditions) = compile_one(snapshot, services, ap);
        match placement {
            Placement::Ztunnel(p) => out.policies.push(p),
            Placement::Waypoint(p) => out.waypoint_policies.push(p),
            Placement::Nowhere => {}
        }
        out.statuses.push(StatusOutcome {
            kind: "AuthorizationPolicy",
            namespace: ap.namespace().unwrap_or_default(),
            name: ap.name_any(),
            generation: ap.metadata.generation,
            conditions,
        });
    }
    let key = |p: &PolicySpec| (p.namespace.clone(), p.name.clone());
    out.policies.sort_by_key(key);
    out.waypoint_policies.sort_by_key(key);
    out
}

enum Placement {
    Ztunnel(PolicySpec),
    Waypoint(PolicySpec),
    Nowhere,
}

fn cond(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    msg: impl Into<String>,
) -> ConditionUpdate {
    ConditionUpdate::new(type_, status, reason, msg)
}

fn compile_one(
    snapshot: &Snapshot,
    services: &[ServiceSpec],
    ap: &AuthorizationPolicy,
) -> (Placement, Vec<ConditionUpdate>) {
    use ConditionStatus::{False, True};
    let ns = ap.namespace().unwrap_or_default();
    if let Some(msg) = ap.spec.problems() {
        return (
            Placement::Nowhere,
            vec![
                cond(ACCEPTED, False, REASON_INVALID, msg.clone()),
                cond(
                    PROGRAMMED,
                    False,
                    REASON_INVALID,
                    format!("not enforced: {msg}"),
                ),
            ],
        );
    }
    let accepted = cond(ACCEPTED, True, REASON_ACCEPTED, "the policy is valid");
    let mut spec = PolicySpec {
        name: ap.name_any(),
        namespace: ns.clone(),
        selector: BTreeMap::new(),
        action: match ap.spec.action {
            AuthorizationAction::Allow => PolicyAction::Allow,
            AuthorizationAction::Deny => PolicyAction::Deny,
        },
        rules: ap
            .spec
            .rules
            .iter()
            .map(|r| RuleSpec {
                from: r.from.iter().map(source).collect(),
                to: r.to.iter().map(destination).collect(),
            })
            .collect(),
    };
    let Some(target) = &ap.spec.target_ref else {
        spec.selector = ap
            .spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .unwrap_or_default();
        let resolved = cond(
            RESOLVED_REFS,
            True,
            REASON_RESOLVED,
            "no references to resolve",
        );
        let programmed = if ap.spec.has_l7() {
            l7_not_enforceable(ap, "it selects workloads by label, and only a policy attached to a Service (targetRef) reaches the Service's waypoint")
        } else {
            cond(PROGRAMMED, True, REASON_PROGRAMMED, "enforced by ztunnel")
        };
        return (
            Placement::Ztunnel(spec),
            vec![accepted, resolved, programmed],
        );
    };

    let Some(svc) = services
        .iter()
        .find(|s| s.namespace == ns && s.name == target.name)
    else {
        let why =
            if snapshot.services.iter().any(|s| {
                s.namespace().as_deref() == Some(ns.as_str()) && s.name_any() == target.name
            }) {
                "is not in an enrolled namespace or has no cluster IP"
            } else {
                "does not exist"
            };
        let msg = format!(
            "targetRef Service {ns}/{} {why}; the policy applies to nothing until it does",
            target.name
        );
        return (
            Placement::Nowhere,
            vec![
                accepted,
                cond(RESOLVED_REFS, False, REASON_TARGET_NOT_FOUND, msg.clone()),
                cond(PROGRAMMED, False, REASON_TARGET_NOT_FOUND, msg),
            ],
        );
    };
    if svc.selector.is_empty() {
        // An empty selector would mean "the whole namespace" to ztunnel: far wider than meant.
        let msg = format!(
            "targetRef Service {ns}/{} has no selector, so no workloads to protect; give it a selector or use spec.selector",
            target.name
        );
        return (
            Placement::Nowhere,
            vec![
                accepted,
                cond(
                    RESOLVED_REFS,
                    False,
                    REASON_TARGET_HAS_NO_SELECTOR,
                    msg.clone(),
                ),
                cond(PROGRAMMED, False, REASON_TARGET_HAS_NO_SELECTOR, msg),
            ],
        );
    }
    spec.selector = svc.selector.clone();
    let resolved = cond(
        RESOLVED_REFS,
        True,
        REASON_RESOLVED,
        format!("targetRef Service {ns}/{} found", target.name),
    );
    match &svc.waypoint {
        Some(wp) => (
            Placement::Waypoint(spec),
            vec![
                accepted,
                resolved,
                cond(
                    PROGRAMMED,
                    True,
                    REASON_ENFORCED_BY_WAYPOINT,
                    format!("enforced by waypoint {}/{}", wp.namespace, wp.name),
                ),
            ],
        ),
        None => {
            let programmed = if ap.spec.has_l7() {
                l7_not_enforceable(ap, &format!("no waypoint serves Service {ns}/{} (label it ambit.dev/use-waypoint=<waypoint>)", target.name))
            } else {
                cond(PROGRAMMED, True, REASON_PROGRAMMED, "enforced by ztunnel")
            };
            (
                Placement::Ztunnel(spec),
                vec![accepted, resolved, programmed],
            )
        }
    }
}

fn l7_not_enforceable(ap: &AuthorizationPolicy, why: &str) -> ConditionUpdate {
    let effect = match ap.spec.action {
        AuthorizationAction::Allow => {
            "its rules with methods, paths or hosts match nothing, so the requests they would allow are denied"
        }
        AuthorizationAction::Deny => {
            "its rules drop their methods, paths and hosts and deny every connection their L4 conditions match"
        }
    };
    cond(
        PROGRAMMED,
        ConditionStatus::False,
        REASON_L7_NOT_ENFORCEABLE,
        format!("L7 fields cannot be enforced: {why}. ztunnel enforces the policy at L4, fail-closed: {effect}"),
    )
}

fn source(s: &AuthorizationSource) -> SourceSpec {
    SourceSpec {
        principals: s.principals.clone(),
        not_principals: s.not_principals.clone(),
        namespaces: s.namespaces.clone(),
        not_namespaces: s.not_namespaces.clone(),
        ip_blocks: s.ip_blocks.clone(),
        not_ip_blocks: s.not_ip_blocks.clone(),
    }
}

fn destination(d: &AuthorizationDestination) -> DestinationSpec {
    // validate() has checked the range.
    let ports = |v: &[i32]| v.iter().filter_map(|p| u16::try_from(*p).ok()).collect();
    DestinationSpec {
        ports: ports(&d.ports),
        not_ports: ports(&d.not_ports),
        methods: d.methods.clone(),
        not_methods: d.not_methods.clone(),
        paths: d.paths.clone(),
        not_paths: d.not_paths.clone(),
        hosts: d.hosts.clone(),
        not_hosts: d.not_hosts.clone(),
    }
}
