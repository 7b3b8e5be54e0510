//! Compiler unit tests: one file per concern, sharing the bookinfo snapshot below.

mod l7;
mod l7_examples;
mod l7_routes;
mod policies;
mod workloads_services;

use serde_json::json;

use super::fixtures::*;
use super::*;
use crate::crd::common::ConditionUpdate;

pub(super) fn bookinfo() -> Snapshot {
    Snapshot {
        namespaces: vec![ambient_ns("bookinfo"), ns("legacy", json!({}))],
        pods: vec![
            pod(
                "bookinfo",
                "reviews-v1",
                "10.0.0.1",
                json!({"app": "reviews", "version": "v1"}),
            ),
            pod(
                "bookinfo",
                "reviews-v2",
                "10.0.0.2",
                json!({"app": "reviews", "version": "v2"}),
            ),
            pod("legacy", "old", "10.0.9.9", json!({"app": "old"})),
        ],
        services: vec![
            svc(
                "bookinfo",
                "reviews",
                "10.96.0.10",
                json!({"app": "reviews"}),
                json!([{"port": 9080, "targetPort": 8080}]),
            ),
            svc(
                "legacy",
                "old",
                "10.96.0.99",
                json!({"app": "old"}),
                json!([{"port": 80}]),
            ),
        ],
        ..Default::default()
    }
}

pub(super) fn condition<'a>(
    c: &'a Compiled,
    kind: &str,
    name: &str,
    type_: &str,
) -> &'a ConditionUpdate {
    c.statuses
        .iter()
        .find(|s| s.kind == kind && s.name == name)
        .unwrap_or_else(|| panic!("no status for {kind} {name}"))
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
        .unwrap_or_else(|| panic!("{kind} {name} has no {type_} condition"))
}
