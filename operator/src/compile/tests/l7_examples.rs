//! The shipped examples compile into a config the waypoint accepts.

use ambit_core::meshconfig::MeshConfig;
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::conditions::*;
use super::super::fixtures::*;
use super::super::*;
use super::condition;
use crate::crd::common::ConditionStatus;

const EXAMPLES: [&str; 4] = [
    include_str!("../../../../examples/waypoint.yaml"),
    include_str!("../../../../examples/canary-90-10.yaml"),
    include_str!("../../../../examples/retries.yaml"),
    include_str!("../../../../examples/faults.yaml"),
];

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("example object parses")
}

/// The example objects, plus the Bookinfo Services and pods they refer to.
fn example_snapshot() -> Snapshot {
    let mut s = Snapshot::default();
    for text in EXAMPLES {
        for doc in serde_yaml::Deserializer::from_str(text) {
            let v = Value::deserialize(doc).unwrap();
            match v["kind"].as_str().unwrap() {
                "Namespace" => s.namespaces.push(from(v)),
                "Waypoint" => s.waypoints.push(from(v)),
                "TrafficRoute" => s.traffic_routes.push(from(v)),
                "BackendPolicy" => s.backend_policies.push(from(v)),
                other => panic!("unexpected kind {other} in the examples"),
            }
        }
    }
    let ips = ["10.96.0.10", "10.96.0.11", "10.96.0.12", "10.96.0.13"];
    for (name, ip) in ["reviews", "ratings", "details", "details-shadow"]
        .into_iter()
        .zip(ips)
    {
        s.services.push(svc(
            "bookinfo",
            name,
            ip,
            json!({"app": name}),
            json!([{"port": 9080}]),
        ));
    }
    for (i, version) in ["v1", "v2"].into_iter().enumerate() {
        s.pods.push(pod(
            "bookinfo",
            &format!("reviews-{version}"),
            &format!("10.0.0.{}", i + 1),
            json!({"app": "reviews", "version": version}),
        ));
    }
    s
}

#[test]
fn examples_compile_validate_and_round_trip() {
    let c = compile(&example_snapshot());
    for st in &c.statuses {
        for cond in &st.conditions {
            assert_eq!(
                cond.status,
                ConditionStatus::True,
                "{} {}: {cond:?}",
                st.kind,
                st.name
            );
        }
    }
    let routes: Vec<&str> = c.config.routes.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(routes, ["details-chaos", "ratings", "reviews-canary"]);
    for r in &c.config.routes {
        r.validate().unwrap();
    }
    assert_eq!(c.config.backend_policies.len(), 1);
    for p in &c.config.backend_policies {
        p.validate().unwrap();
    }
    let ratings = &c.config.routes[1];
    assert_eq!(ratings.rules[0].retries.as_ref().unwrap().attempts, 4);
    assert_eq!(
        ratings.rules[0].matches.len(),
        2,
        "PathPrefix /ratings: exact + /ratings/"
    );
    assert_eq!(
        condition(&c, "TrafficRoute", "reviews-canary", PROGRAMMED).message,
        "programmed in waypoint bookinfo/waypoint"
    );

    // MeshConfig rejects unknown fields, so this also proves every field is one it knows.
    let yaml = serde_yaml::to_string(&c.config).unwrap();
    let back: MeshConfig = serde_yaml::from_str(&yaml).unwrap();
    assert_eq!(back, c.config);
}
