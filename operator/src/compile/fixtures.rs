//! Small builders for the objects of a snapshot, written as the JSON the API server returns.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use serde_json::{json, Value};

use crate::crd::{AuthorizationPolicy, Mesh, PeerAuthentication, Waypoint};

fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("fixture is a valid object")
}

pub fn ambient_ns(name: &str) -> Arc<Namespace> {
    ns(name, json!({"ambit.dev/dataplane-mode": "ambient"}))
}

pub fn ns(name: &str, labels: Value) -> Arc<Namespace> {
    from(json!({"metadata": {"name": name, "labels": labels}}))
}

/// A running, ready pod on node-1 with service account `sa-<name>` and an `http` container port 8080.
pub fn pod(ns: &str, name: &str, ip: &str, labels: Value) -> Arc<Pod> {
    from(json!({
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}"), "labels": labels},
        "spec": {
            "nodeName": "node-1",
            "serviceAccountName": format!("sa-{name}"),
            "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8080}]}]
        },
        "status": {"phase": "Running", "podIP": ip, "conditions": [{"type": "Ready", "status": "True"}]}
    }))
}

/// Applies a JSON merge patch (objects merge, other values replace) to a fixture.
pub fn patch<T: serde::Serialize + serde::de::DeserializeOwned>(obj: T, p: Value) -> T {
    fn merge(a: &mut Value, b: Value) {
        match (a, b) {
            (Value::Object(a), Value::Object(b)) => {
                for (k, v) in b {
                    merge(a.entry(k).or_insert(Value::Null), v);
                }
            }
            (a, b) => *a = b,
        }
    }
    let mut v = serde_json::to_value(obj).unwrap();
    merge(&mut v, p);
    from(v)
}

pub fn svc(ns: &str, name: &str, ip: &str, selector: Value, ports: Value) -> Arc<Service> {
    from(json!({
        "metadata": {"name": name, "namespace": ns},
        "spec": {"clusterIP": ip, "clusterIPs": [ip], "selector": selector, "ports": ports}
    }))
}

pub fn waypoint(ns: &str, name: &str, serves: &str) -> Arc<Waypoint> {
    from(json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "Waypoint",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"serves": serves}
    }))
}

pub fn peer_auth(ns: &str, name: &str, spec: Value, created: &str) -> Arc<PeerAuthentication> {
    from(json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "PeerAuthentication",
        "metadata": {"name": name, "namespace": ns, "creationTimestamp": created, "generation": 1},
        "spec": spec
    }))
}

pub fn authz(ns: &str, name: &str, spec: Value) -> Arc<AuthorizationPolicy> {
    from(json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns, "generation": 3},
        "spec": spec
    }))
}

pub fn mesh(spec: Value) -> Arc<Mesh> {
    from(json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "Mesh",
        "metadata": {"name": "default"},
        "spec": spec
    }))
}
