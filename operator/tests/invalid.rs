//! Objects an API server must refuse: each is refused by the schema or a CEL rule, and the Rust
//! side (deserialization + `validate()`) refuses it too, with a message saying what is wrong.

mod crd_support;

use crd_support::*;
use serde_json::Value;

/// (what is wrong, kind, spec, text expected in the API server's errors, text expected in the
/// Rust errors).
const CASES: &[(&str, &str, &str, &str, &str)] = &[
    ("bad enum", "Mesh", "defaultMtlsMode: SORTOF", "SORTOF", "unknown variant `SORTOF`"),
    ("bad log level", "Mesh", "logLevel: verbose", "verbose", "unknown variant `verbose`"),
    ("maxUnavailable below 1", "Mesh", "upgrade: {maxUnavailable: 0}", "minimum", "at least 1"),
    ("bad certificate duration", "Mesh", "certificateTtl: 1d", "does not match", "not a duration"),
    ("waypoint replicas above 10", "Waypoint", "replicas: 11", "maximum", "use 1 to 10"),
    ("waypoint serves nonsense", "Waypoint", "serves: Everything", "Everything", "unknown variant"),
    (
        "weight out of range",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{backends: [{subset: {version: v1}, weight: 1001}]}]}",
        "maximum",
        "use 0 to 1000",
    ),
    (
        "weights sum to 0",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{backends: [{subset: {v: a}, weight: 0}, {subset: {v: b}, weight: 0}]}]}",
        "weights must sum to more than 0",
        "weights must sum to more than 0",
    ),
    (
        "backend with service and subset",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{backends: [{service: s, port: 80, subset: {v: a}}]}]}",
        "exactly one of service or subset",
        "exactly one of service or subset",
    ),
    (
        "backend with neither service nor subset",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{backends: [{weight: 5}]}]}",
        "exactly one of service or subset",
        "exactly one of service or subset",
    ),
    (
        "empty subset",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{backends: [{subset: {}}]}]}",
        "subset needs at least one label",
        "subset needs at least one label",
    ),
    (
        "service without port",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{backends: [{service: s}]}]}",
        "port is required with service",
        "port is required with service",
    ),
    (
        "no backends",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{backends: []}]}",
        "backends",
        "needs at least one backend",
    ),
    (
        "no rules",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: []}",
        "rules",
        "needs at least one rule",
    ),
    (
        "bad timeout duration",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{backends: [{service: s, port: 80}], timeout: 10 seconds}]}",
        "does not match",
        "not a duration",
    ),
    (
        "abort percentage above 100",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{backends: [{service: s, port: 80}], fault: {abort: {httpStatus: 503, percentage: 150}}}]}",
        "maximum",
        "use 0 to 100",
    ),
    (
        "abort status not an error",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{backends: [{service: s, port: 80}], fault: {abort: {httpStatus: 42}}}]}",
        "minimum",
        "use 200 to 599",
    ),
    (
        "empty fault",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{backends: [{service: s, port: 80}], fault: {}}]}",
        "a fault needs delay, abort or both",
        "a fault needs delay, abort or both",
    ),
    (
        "retriable-status-codes without codes",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{backends: [{service: s, port: 80}], retries: {retryOn: [retriable-status-codes]}}]}",
        "list the codes in retriableStatusCodes",
        "list the codes in retriableStatusCodes",
    ),
    (
        "unknown retryOn",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{backends: [{service: s, port: 80}], retries: {retryOn: [4xx]}}]}",
        "4xx",
        "unknown variant `4xx`",
    ),
    (
        "backoff cap below base",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{backends: [{service: s, port: 80}], retries: {backoff: {baseInterval: 1s, maxInterval: 100ms}}}]}",
        "maxInterval must not be shorter than baseInterval",
        "maxInterval must not be shorter than baseInterval",
    ),
    (
        "Present header with a value",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{matches: [{headers: [{name: x, type: Present, value: y}]}], backends: [{service: s, port: 80}]}]}",
        "value is required, except for type Present",
        "value is required, except for type Present",
    ),
    (
        "Exact header without a value",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{matches: [{headers: [{name: x}]}], backends: [{service: s, port: 80}]}]}",
        "value is required, except for type Present",
        "value is required, except for type Present",
    ),
    (
        "path prefix without leading slash",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{matches: [{path: {value: api}}], backends: [{service: s, port: 80}]}]}",
        "must start with '/'",
        "must start with '/'",
    ),
    (
        "mirror to port 0",
        "TrafficRoute",
        "{targetRef: {name: r}, rules: [{backends: [{service: s, port: 80}], mirror: {service: m, port: 0}}]}",
        "minimum",
        "not a port",
    ),
    (
        "ConsistentHash without hashHeader",
        "BackendPolicy",
        "{targetRef: {name: r}, loadBalancer: {type: ConsistentHash}}",
        "hashHeader is required with type ConsistentHash",
        "hashHeader is required with type ConsistentHash",
    ),
    (
        "hashHeader without ConsistentHash",
        "BackendPolicy",
        "{targetRef: {name: r}, loadBalancer: {hashHeader: x-user}}",
        "hashHeader is required with type ConsistentHash",
        "hashHeader is required with type ConsistentHash",
    ),
    (
        "maxEjectionPercent above 100",
        "BackendPolicy",
        "{targetRef: {name: r}, outlierDetection: {maxEjectionPercent: 101}}",
        "maximum",
        "use 0 to 100",
    ),
    (
        "bad retry budget window",
        "BackendPolicy",
        "{targetRef: {name: r}, retryBudget: {ttl: forever}}",
        "does not match",
        "not a duration",
    ),
    (
        "both selector and targetRef",
        "AuthorizationPolicy",
        "{selector: {matchLabels: {app: a}}, targetRef: {name: svc}}",
        "set selector or targetRef, not both",
        "set selector or targetRef, not both",
    ),
    ("bad action", "AuthorizationPolicy", "{action: AUDIT}", "AUDIT", "unknown variant `AUDIT`"),
    (
        "port out of range",
        "AuthorizationPolicy",
        "{rules: [{to: [{ports: [70000]}]}]}",
        "maximum",
        "not a port",
    ),
    ("bad mTLS mode", "PeerAuthentication", "{mtls: {mode: DISABLE}}", "DISABLE", "unknown variant `DISABLE`"),
];

fn object(kind: &str, spec: &str) -> Value {
    let spec: serde_yaml::Value = serde_yaml::from_str(spec).expect("case spec is YAML");
    let mut obj = serde_json::json!({
        "apiVersion": "ambit.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "bad", "namespace": "default"},
        "spec": serde_json::to_value(spec).unwrap(),
    });
    if kind == "Mesh" {
        obj["metadata"].as_object_mut().unwrap().remove("namespace");
    }
    obj
}

#[test]
fn invalid_objects_are_refused_by_the_schema_or_cel_and_by_rust() {
    let mut failures = Vec::new();
    for (what, kind, spec, server_says, rust_says) in CASES {
        let obj = object(kind, spec);
        match server_verdict(&obj) {
            Ok(()) => failures.push(format!("{what}: the API server would accept it")),
            Err(errs) if !errs.iter().any(|e| e.contains(server_says)) => failures.push(format!(
                "{what}: API server errors {errs:?} do not mention {server_says:?}"
            )),
            Err(_) => {}
        }
        match rust_verdict(&obj) {
            Ok(()) => failures.push(format!("{what}: validate() accepts it")),
            Err(errs) if !errs.iter().any(|e| e.contains(rust_says)) => failures.push(format!(
                "{what}: Rust errors {errs:?} do not mention {rust_says:?}"
            )),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn each_invalid_case_becomes_valid_without_its_fault() {
    // The cases differ from valid objects only in the fault they name: the smallest valid object
    // of each kind passes both checks, so a rejection above is caused by the fault itself.
    let minimal = [
        ("Mesh", "{}"),
        ("Waypoint", "{}"),
        (
            "TrafficRoute",
            "{targetRef: {name: r}, rules: [{backends: [{service: s, port: 80}]}]}",
        ),
        ("BackendPolicy", "{targetRef: {name: r}}"),
        ("AuthorizationPolicy", "{}"),
        ("PeerAuthentication", "{}"),
    ];
    for (kind, spec) in minimal {
        let obj = object(kind, spec);
        assert_eq!(server_verdict(&obj), Ok(()), "{kind} {spec}");
        assert_eq!(rust_verdict(&obj), Ok(()), "{kind} {spec}");
    }
}

#[test]
fn rust_validation_agrees_with_the_api_server_on_every_object() {
    let mut objects: Vec<Value> = CASES
        .iter()
        .map(|(_, kind, spec, _, _)| object(kind, spec))
        .collect();
    for entry in std::fs::read_dir(workspace_root().join("examples")).unwrap() {
        objects.extend(
            documents(&entry.unwrap().path())
                .into_iter()
                .filter(is_ambit),
        );
    }
    for obj in &objects {
        assert_eq!(
            server_verdict(obj).is_ok(),
            rust_verdict(obj).is_ok(),
            "server and Rust disagree on {obj}: server {:?}, rust {:?}",
            server_verdict(obj),
            rust_verdict(obj)
        );
    }
}
