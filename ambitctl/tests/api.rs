//! `apply` / `get` / `delete` / `status` warnings against an in-process API server
//! (ambit-apisim), through the real binary.
mod common;

use common::*;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::json;

/// Installs the CRDs and the example objects; returns how many example objects there are.
fn install(api: &ApiSim) -> usize {
    let crds = ambitctl(&["apply", "-f", &repo("crds"), "--server", &api.url]).ok();
    let lines: Vec<&str> = crds.stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{}", crds.stdout);
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("customresourcedefinition/") && l.ends_with(" created")),
        "{}",
        crds.stdout
    );

    let out = ambitctl(&[
        "apply",
        "-f",
        &fixture("namespaces.yaml"),
        "-f",
        &repo("examples"),
        "--server",
        &api.url,
        "-o",
        "json",
    ])
    .ok();
    let results = out.json();
    let results = results.as_array().unwrap();
    assert!(
        results.iter().all(|r| r["result"] == "created"),
        "{results:?}"
    );
    assert!(results.iter().any(|r| r["kind"] == "TrafficRoute"
        && r["name"] == "reviews-canary"
        && r["namespace"] == "bookinfo"));
    results.len() - 2
}

#[test]
fn apply_get_delete_round_trip_against_the_api_server() {
    let api = ApiSim::start();
    let n = install(&api);
    assert!(n >= 6, "the examples hold one object of each kind at least");

    // Re-applying the same files changes nothing.
    let again = ambitctl(&["apply", "-f", &repo("examples"), "--server", &api.url]).ok();
    assert_eq!(again.stdout.lines().count(), n);
    assert!(
        again.stdout.lines().all(|l| l.ends_with(" unchanged")),
        "{}",
        again.stdout
    );

    // A changed object is configured (stdin, and -n for an object without a namespace).
    let changed = std::fs::read_to_string(repo("examples/canary-90-10.yaml"))
        .unwrap()
        .replace("timeout: 5s", "timeout: 7s")
        .replace("  namespace: bookinfo\n", "");
    let out = ambitctl_stdin(
        &["apply", "-f", "-", "-n", "bookinfo", "--server", &api.url],
        Some(&changed),
    )
    .ok();
    assert_eq!(out.stdout.trim(), "trafficroute/reviews-canary configured");

    // Table, JSON and YAML.
    let table = ambitctl(&["get", "tr", "-n", "bookinfo", "--server", &api.url]).ok();
    let header = table.stdout.lines().next().unwrap().to_string();
    for col in ["NAME", "TARGET", "RULES", "CONDITIONS", "AGE"] {
        assert!(header.contains(col), "{header}");
    }
    assert!(table.stdout.contains("reviews-canary"), "{}", table.stdout);
    let list = ambitctl(&[
        "get",
        "trafficroutes.ambit.dev",
        "-A",
        "-o",
        "json",
        "--server",
        &api.url,
    ])
    .ok()
    .json();
    assert_eq!(list["kind"], "List");
    let items = list["items"].as_array().unwrap();
    assert!(items
        .iter()
        .all(|i| i["kind"] == "TrafficRoute" && i["apiVersion"] == "ambit.dev/v1alpha1"));
    let canary = items
        .iter()
        .find(|i| i["metadata"]["name"] == "reviews-canary")
        .unwrap();
    assert_eq!(canary["spec"]["rules"][1]["timeout"], "7s");
    let yaml = ambitctl(&[
        "get",
        "TrafficRoute",
        "reviews-canary",
        "-n",
        "bookinfo",
        "-o",
        "yaml",
        "--server",
        &api.url,
    ])
    .ok();
    let v: serde_json::Value = serde_yaml::from_str(&yaml.stdout).unwrap();
    assert_eq!(v["spec"]["targetRef"]["name"], "reviews");
    let mesh = ambitctl(&["get", "mesh", "--server", &api.url]).ok();
    assert!(
        mesh.stdout.contains("TRUST DOMAIN") && mesh.stdout.contains("default"),
        "{}",
        mesh.stdout
    );
    let ns = ambitctl(&["get", "ns", "bookinfo", "--server", &api.url]).ok();
    assert!(
        ns.stdout.contains("ambient"),
        "the namespace's dataplane mode shows: {}",
        ns.stdout
    );

    // Delete by kind and name, and by file.
    let del = ambitctl(&[
        "delete",
        "tr",
        "reviews-canary",
        "-n",
        "bookinfo",
        "--server",
        &api.url,
    ])
    .ok();
    assert_eq!(del.stdout.trim(), "trafficroute/reviews-canary deleted");
    let gone = ambitctl(&[
        "get",
        "tr",
        "reviews-canary",
        "-n",
        "bookinfo",
        "--server",
        &api.url,
    ]);
    assert_eq!(gone.code, 1, "{}", gone.stderr);
    assert!(gone.stderr.contains("not found"), "{}", gone.stderr);
    let del = ambitctl(&[
        "delete",
        "-f",
        &repo("examples/authz.yaml"),
        "--server",
        &api.url,
    ])
    .ok();
    assert!(
        del.stdout.lines().all(|l| l.ends_with(" deleted")),
        "{}",
        del.stdout
    );
    let again = ambitctl(&[
        "delete",
        "tr",
        "reviews-canary",
        "-n",
        "bookinfo",
        "--server",
        &api.url,
    ]);
    assert_eq!(again.code, 1);
    ambitctl(&[
        "delete",
        "tr",
        "reviews-canary",
        "-n",
        "bookinfo",
        "--ignore-not-found",
        "--server",
        &api.url,
    ])
    .ok();
}

#[test]
fn invalid_objects_are_refused_client_side_with_file_and_field() {
    let api = ApiSim::start();
    install(&api);
    let bad = fixture("invalid-route.yaml");
    let out = ambitctl(&[
        "apply",
        "-f",
        &fixture("namespaces.yaml"),
        "-f",
        &bad,
        "--server",
        &api.url,
    ]);
    assert_eq!(out.code, 1, "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("{bad} document 1 (TrafficRoute/broken-route)")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("spec.rules[0].backends"),
        "{}",
        out.stderr
    );
    assert!(
        out.stdout.is_empty(),
        "nothing is applied when any document is invalid: {}",
        out.stdout
    );
    let get = ambitctl(&[
        "get",
        "tr",
        "broken-route",
        "-n",
        "bookinfo",
        "--server",
        &api.url,
    ]);
    assert_eq!(get.code, 1, "the object must not exist: {}", get.stdout);
    // Usage errors: unknown kind, no -f.
    assert_eq!(ambitctl(&["get", "gateways", "--server", &api.url]).code, 2);
    assert_eq!(ambitctl(&["apply"]).code, 2);
}

#[test]
fn unreachable_api_server_exits_3() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let get = ambitctl(&["get", "tr", "-A", "--server", &url]);
    assert_eq!(get.code, 3, "{}", get.stderr);
    assert!(
        get.stderr.contains("cannot reach the API server"),
        "{}",
        get.stderr
    );
    let apply = ambitctl(&["apply", "-f", &repo("examples/mesh.yaml"), "--server", &url]);
    assert_eq!(apply.code, 3, "{}", apply.stderr);
    let status = ambitctl(&["status", "-o", "json", "--server", &url]);
    assert_eq!(status.code, 3);
    assert_eq!(status.json()["apiServer"]["reachable"], false);
}

#[test]
fn status_warns_about_objects_that_cannot_be_enforced() {
    let api = ApiSim::start();
    install(&api);
    let status = ambitctl(&["status", "-o", "json", "--server", &api.url])
        .ok()
        .json();
    assert_eq!(status["healthy"], true);
    assert_eq!(status["warnings"].as_array().unwrap().len(), 0, "{status}");

    // What the operator writes when a waypoint-less namespace has L7 rules.
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("ambit.dev", "v1alpha1", "AuthorizationPolicy"),
        "authorizationpolicies",
    );
    let client = api.client();
    let name = {
        let list = ambitctl(&["get", "ap", "-A", "-o", "json", "--server", &api.url])
            .ok()
            .json();
        let first = list["items"][0].clone();
        (
            first["metadata"]["namespace"].as_str().unwrap().to_string(),
            first["metadata"]["name"].as_str().unwrap().to_string(),
        )
    };
    let aps: Api<DynamicObject> = Api::namespaced_with(client, &name.0, &ar);
    let patch = json!({"status": {"conditions": [
        {"type": "Accepted", "status": "True", "reason": "Accepted", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "Programmed", "status": "False", "reason": "L7RulesNotEnforceable", "message": "no waypoint serves this namespace; L7 rules cannot be enforced", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
    api.rt
        .block_on(aps.patch_status(&name.1, &PatchParams::default(), &Patch::Merge(&patch)))
        .unwrap();

    let status = ambitctl(&["status", "-o", "json", "--server", &api.url])
        .ok()
        .json();
    let w = &status["warnings"][0];
    assert_eq!(w["kind"], "AuthorizationPolicy");
    assert_eq!(w["name"], name.1.as_str());
    assert_eq!(w["condition"], "Programmed=False");
    assert_eq!(w["reason"], "L7RulesNotEnforceable");
    let table = ambitctl(&["status", "--server", &api.url]).ok();
    assert!(
        table.stdout.contains("WARNING  AuthorizationPolicy/")
            && table.stdout.contains("no waypoint serves"),
        "{}",
        table.stdout
    );
    assert_eq!(
        ambitctl(&["status", "--fail-on-warnings", "--server", &api.url]).code,
        1
    );
    let get = ambitctl(&["get", "ap", &name.1, "-n", &name.0, "--server", &api.url]).ok();
    assert!(
        get.stdout
            .contains("Programmed=False(L7RulesNotEnforceable)"),
        "{}",
        get.stdout
    );
}
