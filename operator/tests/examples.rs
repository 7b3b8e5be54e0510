//! Every object in examples/ is valid for the API server (schema + CEL) and for the Rust types.

mod crd_support;

use crd_support::*;

const EXAMPLES: [&str; 7] = [
    "mesh.yaml",
    "waypoint.yaml",
    "canary-90-10.yaml",
    "retries.yaml",
    "faults.yaml",
    "authz.yaml",
    "strict-mtls.yaml",
];

#[test]
fn every_example_is_valid_for_the_schema_cel_and_rust_types() {
    let mut kinds = std::collections::BTreeSet::new();
    for file in EXAMPLES {
        let path = workspace_root().join("examples").join(file);
        let docs = documents(&path);
        assert!(!docs.is_empty(), "{file} has no objects");
        for obj in docs.iter().filter(|o| is_ambit(o)) {
            let name = dynamic(obj).metadata.name.unwrap_or_default();
            let kind = obj["kind"].as_str().unwrap().to_string();
            if let Err(e) = server_verdict(obj) {
                panic!("{file}: {kind}/{name} is refused by the schema or CEL rules: {e:#?}");
            }
            if let Err(e) = rust_verdict(obj) {
                panic!("{file}: {kind}/{name} is refused by the Rust types: {e:#?}");
            }
            kinds.insert(kind);
        }
    }
    // The examples cover every kind, so every schema is exercised at least once.
    let all: std::collections::BTreeSet<String> = ambit_operator::crd::all()
        .into_iter()
        .map(|c| c.spec.names.kind)
        .collect();
    assert_eq!(kinds, all);
}

#[test]
fn examples_directory_holds_only_the_listed_files() {
    let mut found: Vec<String> = std::fs::read_dir(workspace_root().join("examples"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    found.sort();
    let mut listed: Vec<String> = EXAMPLES.iter().map(|s| s.to_string()).collect();
    listed.sort();
    assert_eq!(
        found, listed,
        "add new examples to EXAMPLES so they are validated"
    );
}

#[test]
fn canary_example_splits_90_10_by_subset() {
    let docs = documents(&workspace_root().join("examples/canary-90-10.yaml"));
    let route: ambit_operator::crd::TrafficRoute = serde_json::from_value(docs[0].clone()).unwrap();
    let split = &route.spec.rules[1].backends;
    let weights: Vec<(String, i32)> = split
        .iter()
        .map(|b| (b.subset.as_ref().unwrap()["version"].clone(), b.weight))
        .collect();
    assert_eq!(weights, vec![("v1".into(), 90), ("v2".into(), 10)]);
}
