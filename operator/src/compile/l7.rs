//! The L7 compiler: TrafficRoutes and BackendPolicies become the routes and backend policies
//! waypoints apply, with `Accepted` / `ResolvedRefs` / `Programmed` status.
//!
//! Like Istio, L7 config only takes effect in a waypoint: an object is `Programmed` (and in the
//! config) only when its target Service is served by one. At most one object of a kind applies
//! to a Service: the oldest (then the first by name); the others are `Accepted=False`, reason
//! `Conflicted`. A backend Service that does not exist leaves the route programmed (as Gateway
//! API and Istio do): only the requests sent to it fail, with 503.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use ambit_core::meshconfig::backend::BackendPolicySpec;
use ambit_core::meshconfig::route::RouteSpec;
use ambit_core::meshconfig::{ServiceSpec, WaypointRef};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::conditions::*;
use super::l7_map::{backend_policy_spec, route_spec, MapError};
use super::services::{find_waypoint, namespace_label};
use super::workloads::pod_is_live;
use super::{selects, Snapshot, StatusOutcome, USE_WAYPOINT_LABEL};
use crate::crd::common::{ConditionStatus, ConditionUpdate};
use crate::crd::waypoint::WaypointServes;
use crate::crd::{Validate, ValidationError};

pub(super) struct Output {
    pub routes: Vec<RouteSpec>,
    pub backend_policies: Vec<BackendPolicySpec>,
    pub statuses: Vec<StatusOutcome>,
}

pub(super) fn compile(snapshot: &Snapshot, services: &[ServiceSpec]) -> Output {
    let routes = snapshot.traffic_routes.iter().map(|tr| {
        let ns = tr.namespace().unwrap_or_default();
        let rules = &tr.spec.rules;
        Candidate {
            meta: &tr.metadata,
            target: tr.spec.target_ref.name.clone(),
            compiled: check(tr.spec.validate())
                .and_then(|()| route_spec(&ns, &tr.name_any(), &tr.spec)),
            backends: rules
                .iter()
                .flat_map(|r| r.backends.iter().filter_map(|b| b.service.clone()))
                .chain(
                    rules
                        .iter()
                        .filter_map(|r| Some(r.mirror.as_ref()?.service.clone())),
                )
                .collect(),
            subsets: rules
                .iter()
                .flat_map(|r| r.backends.iter().filter_map(|b| b.subset.clone()))
                .collect(),
        }
    });
    let (mut routes, mut statuses) = place(snapshot, services, KIND_ROUTE, routes.collect());
    let policies = snapshot.backend_policies.iter().map(|bp| Candidate {
        meta: &bp.metadata,
        target: bp.spec.target_ref.name.clone(),
        compiled: check(bp.spec.validate()).and_then(|()| {
            backend_policy_spec(
                &bp.namespace().unwrap_or_default(),
                &bp.name_any(),
                &bp.spec,
            )
        }),
        backends: BTreeSet::new(),
        subsets: Vec::new(),
    });
    let (mut backend_policies, more) =
        place(snapshot, services, KIND_BACKEND_POLICY, policies.collect());
    statuses.extend(more);
    routes.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    backend_policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Output {
        routes,
        backend_policies,
        statuses,
    }
}

const KIND_ROUTE: &str = "TrafficRoute";
const KIND_BACKEND_POLICY: &str = "BackendPolicy";

fn check(errs: Vec<ValidationError>) -> Result<(), MapError> {
    match crate::crd::join_errors(&errs) {
        None => Ok(()),
        Some(message) => Err(message),
    }
}

/// One object of either kind, as far as placement and status are concerned.
struct Candidate<'a, T> {
    meta: &'a ObjectMeta,
    /// Name of the target Service, in the object's namespace.
    target: String,
    compiled: Result<T, MapError>,
    /// Other Services it sends requests to (backends, mirror).
    backends: BTreeSet<String>,
    /// Label sets narrowing the target Service's pods.
    subsets: Vec<BTreeMap<String, String>>,
}

impl<T> Candidate<'_, T> {
    fn ns(&self) -> String {
        self.meta.namespace.clone().unwrap_or_default()
    }
    fn name(&self) -> String {
        self.meta.name.clone().unwrap_or_default()
    }
}

fn place<T>(
    snapshot: &Snapshot,
    services: &[ServiceSpec],
    kind: &'static str,
    candidates: Vec<Candidate<'_, T>>,
) -> (Vec<T>, Vec<StatusOutcome>) {
    // The winner per target Service among the valid objects: oldest, then first by name.
    let mut winners: BTreeMap<(String, String), (Option<Timestamp>, String)> = BTreeMap::new();
    for c in candidates.iter().filter(|c| c.compiled.is_ok()) {
        let age = (c.meta.creation_timestamp.as_ref().map(|t| t.0), c.name());
        let slot = winners
            .entry((c.ns(), c.target.clone()))
            .or_insert(age.clone());
        if age < *slot {
            *slot = age;
        }
    }
    let mut out = Vec::new();
    let mut statuses = Vec::new();
    for c in candidates {
        let (ns, name) = (c.ns(), c.name());
        let resolved = resolved_refs(snapshot, &ns, &c);
        let target_found = resolved.reason != REASON_TARGET_NOT_FOUND;
        let (accepted, compiled) = match c.compiled {
            Err(msg) => (
                cond(ACCEPTED, False, REASON_INVALID, msg),
                Err((
                    REASON_INVALID,
                    "the spec is invalid (see Accepted)".to_string(),
                )),
            ),
            Ok(spec) => {
                let winner = &winners[&(ns.clone(), c.target.clone())].1;
                if *winner != name {
                    let msg = format!(
                        "{kind} {ns}/{winner} already applies to Service {ns}/{}; only one {kind} per Service takes effect (the oldest, then the first by name): merge this one into it, or delete one of them",
                        c.target
                    );
                    (
                        cond(ACCEPTED, False, REASON_CONFLICTED, msg),
                        Err((
                            REASON_CONFLICTED,
                            "conflicts with another object (see Accepted)".to_string(),
                        )),
                    )
                } else {
                    (
                        cond(ACCEPTED, True, REASON_ACCEPTED, "the spec is valid"),
                        Ok(spec),
                    )
                }
            }
        };
        let programmed = match compiled {
            Err((reason, why)) => cond(PROGRAMMED, False, reason, format!("not programmed: {why}")),
            Ok(_) if !target_found => cond(
                PROGRAMMED,
                False,
                REASON_TARGET_NOT_FOUND,
                format!("not programmed: target Service {ns}/{} does not exist", c.target),
            ),
            Ok(spec) => match waypoint_for(snapshot, services, &ns, &c.target) {
                Err(why) => cond(
                    PROGRAMMED,
                    False,
                    REASON_NO_WAYPOINT,
                    format!(
                        "not programmed: {why}. {kind} only takes effect in a waypoint: label the Service or its Namespace with {USE_WAYPOINT_LABEL}=<waypoint>"
                    ),
                ),
                Ok(wp) => {
                    out.push(spec);
                    let mut msg = format!("programmed in waypoint {}/{}", wp.namespace, wp.name);
                    if resolved.reason == REASON_BACKEND_NOT_FOUND {
                        msg.push_str("; requests sent to the missing backend Services fail with 503 until they exist");
                    }
                    cond(PROGRAMMED, True, REASON_PROGRAMMED, msg)
                }
            },
        };
        statuses.push(StatusOutcome {
            kind,
            namespace: ns,
            name,
            generation: c.meta.generation,
            conditions: vec![accepted, resolved, programmed],
        });
    }
    (out, statuses)
}

use ConditionStatus::{False, True};

fn cond(
    type_: &str,
    status: ConditionStatus,
    reason: &str,
    msg: impl Into<String>,
) -> ConditionUpdate {
    ConditionUpdate::new(type_, status, reason, msg)
}

fn find_service<'a>(snapshot: &'a Snapshot, ns: &str, name: &str) -> Option<&'a Service> {
    snapshot
        .services
        .iter()
        .find(|s| s.metadata.namespace.as_deref() == Some(ns) && s.name_any() == name)
        .map(Arc::as_ref)
}

fn resolved_refs<T>(snapshot: &Snapshot, ns: &str, c: &Candidate<'_, T>) -> ConditionUpdate {
    let Some(target) = find_service(snapshot, ns, &c.target) else {
        return cond(
            RESOLVED_REFS,
            False,
            REASON_TARGET_NOT_FOUND,
            format!("targetRef Service {ns}/{} does not exist", c.target),
        );
    };
    let missing: Vec<String> = c
        .backends
        .iter()
        .filter(|b| find_service(snapshot, ns, b).is_none())
        .map(|b| format!("{ns}/{b}"))
        .collect();
    if !missing.is_empty() {
        return cond(
            RESOLVED_REFS,
            False,
            REASON_BACKEND_NOT_FOUND,
            format!("backend Service {} does not exist", missing.join(", ")),
        );
    }
    let mut msg = format!("Service {ns}/{} found", c.target);
    if !c.backends.is_empty() {
        let names: Vec<&str> = c.backends.iter().map(String::as_str).collect();
        msg.push_str(&format!(", and backend Service {}", names.join(", ")));
    }
    let selector = target
        .spec
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_default();
    // A set: the same subset often appears in several rules.
    let empty: BTreeSet<String> = c
        .subsets
        .iter()
        .filter(|subset| {
            !snapshot.pods.iter().any(|p| {
                p.namespace().as_deref() == Some(ns)
                    && pod_is_live(p)
                    && !selector.is_empty()
                    && selects(&selector, p.labels())
                    && selects(subset, p.labels())
            })
        })
        .map(|s| {
            let labels: Vec<String> = s.iter().map(|(k, v)| format!("{k}={v}")).collect();
            format!("{{{}}}", labels.join(","))
        })
        .collect();
    if !empty.is_empty() {
        msg.push_str(&format!(
            "; subset {} selects no pod of the Service yet (its requests fail with 503 until one runs)",
            empty.into_iter().collect::<Vec<_>>().join(", ")
        ));
    }
    cond(RESOLVED_REFS, True, REASON_RESOLVED, msg)
}

/// The waypoint serving the Service, or why there is none (for the `NoWaypoint` message).
fn waypoint_for(
    snapshot: &Snapshot,
    services: &[ServiceSpec],
    ns: &str,
    name: &str,
) -> Result<WaypointRef, String> {
    let compiled = services
        .iter()
        .find(|s| s.namespace == ns && s.name == name);
    if let Some(wp) = compiled.and_then(|s| s.waypoint.clone()) {
        return Ok(wp);
    }
    if compiled.is_none() {
        return Err(format!(
            "Service {ns}/{name} is not in the mesh (its namespace is not labelled ambit.dev/dataplane-mode=ambient, or it has no cluster IP)"
        ));
    }
    let svc_label =
        find_service(snapshot, ns, name).and_then(|s| s.labels().get(USE_WAYPOINT_LABEL).cloned());
    let label = svc_label
        .clone()
        .or_else(|| namespace_label(snapshot, ns, USE_WAYPOINT_LABEL));
    let on = if svc_label.is_some() {
        "Service"
    } else {
        "Namespace"
    };
    Err(match label.as_deref() {
        None => format!("no waypoint serves Service {ns}/{name}"),
        Some("none") => format!("Service {ns}/{name} opts out of its Namespace's waypoint ({USE_WAYPOINT_LABEL}=none)"),
        Some(wp) => match find_waypoint(snapshot, ns, wp) {
            None => format!("the {on}'s label {USE_WAYPOINT_LABEL}={wp} names Waypoint {ns}/{wp}, which does not exist"),
            Some(w) if !matches!(w.spec.serves, WaypointServes::Services | WaypointServes::All) => format!(
                "Waypoint {ns}/{wp} serves only workloads; set its spec.serves to Services or All"
            ),
            // The Service fronts a waypoint itself: waypoints never route their own traffic.
            Some(_) => format!("Service {ns}/{name} is a waypoint's own Service"),
        },
    })
}
