//! The synthetic cluster of the control-plane benchmark, written as the JSON objects an API
//! server stores: enrolled namespaces, pods spread over the nodes with IPs, services selecting
//! them, AuthorizationPolicies and PeerAuthentications. The same objects feed the compiler
//! directly (compile cost) and the in-memory API server (propagation), so both phases measure
//! the same cluster.

use ambit_operator::compile::{Snapshot, DATAPLANE_MODE_LABEL};
use anyhow::Context;
use serde_json::{json, Value};

/// Services per namespace (1000 services make 50 namespaces).
const SERVICES_PER_NAMESPACE: usize = 20;
/// Every fifth policy is a PeerAuthentication, the rest AuthorizationPolicies.
const PEER_AUTH_EVERY: usize = 5;

/// How big the cluster is.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Size {
    pub pods: usize,
    pub services: usize,
    pub policies: usize,
    pub nodes: usize,
}

impl Size {
    pub fn namespaces(&self) -> usize {
        self.services.div_ceil(SERVICES_PER_NAMESPACE).max(1)
    }

    /// Namespace of service `j` (its pods and policies live there too).
    fn namespace_of_service(&self, j: usize) -> String {
        format!("ns-{}", j % self.namespaces())
    }

    pub fn pod_name(i: usize) -> String {
        format!("pod-{i}")
    }

    /// Namespace of pod `i` (the namespace of the service that selects it).
    pub fn pod_namespace(&self, i: usize) -> String {
        self.namespace_of_service(i % self.services)
    }

    pub fn node_name(n: usize) -> String {
        format!("node-{n}")
    }
}

/// All objects of the cluster, by kind.
pub struct Objects {
    pub mesh: Value,
    pub nodes: Vec<Value>,
    pub namespaces: Vec<Value>,
    pub pods: Vec<Value>,
    pub services: Vec<Value>,
    pub authorization_policies: Vec<Value>,
    pub peer_authentications: Vec<Value>,
}

pub fn mesh() -> Value {
    json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "Mesh", "metadata": {"name": "default"},
        "spec": {"trustDomain": "cluster.local", "ztunnel": {"image": "bench/ztunnel:0"}}
    })
}

fn pod_ip(i: usize) -> String {
    format!("10.{}.{}.{}", 1 + i / 65536, (i / 256) % 256, i % 256)
}

pub fn node(n: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": Size::node_name(n)}})
}

/// A running, ready pod of service `svc` on `node`.
pub fn pod(ns: &str, name: &str, svc: usize, node: &str, ip: &str, sa: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}"),
                     "labels": {"app": format!("svc-{svc}")}},
        "spec": {
            "nodeName": node,
            "serviceAccountName": sa,
            "containers": [{"name": "app", "image": "bench/app:0",
                            "ports": [{"name": "http", "containerPort": 8080}]}]
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    })
}

/// An ALLOW policy for the pods of service `svc`: callers with one service account, port 8080.
pub fn authorization_policy(ns: &str, name: &str, svc: usize) -> Value {
    json!({
        "apiVersion": "ambit.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {"app": format!("svc-{svc}")}},
            "action": "ALLOW",
            "rules": [{"from": [{"principals": [format!("cluster.local/ns/{ns}/sa/sa-{}", (svc + 1) % 1000)]}],
                       "to": [{"ports": [8080]}]}]
        }
    })
}

/// Generates the cluster. Deterministic: the same size gives the same objects.
pub fn generate(size: Size) -> Objects {
    let nodes = (0..size.nodes).map(node).collect();
    let namespaces = (0..size.namespaces())
        .map(|k| {
            json!({"apiVersion": "v1", "kind": "Namespace",
                   "metadata": {"name": format!("ns-{k}"), "labels": {DATAPLANE_MODE_LABEL: "ambient"}}})
        })
        .collect();
    let pods = (0..size.pods)
        .map(|i| {
            let svc = i % size.services;
            pod(
                &size.pod_namespace(i),
                &Size::pod_name(i),
                svc,
                &Size::node_name(i % size.nodes),
                &pod_ip(i),
                &format!("sa-{svc}"),
            )
        })
        .collect();
    let services = (0..size.services)
        .map(|j| {
            let ip = format!("10.96.{}.{}", j / 256, j % 256);
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": format!("svc-{j}"), "namespace": size.namespace_of_service(j)},
                "spec": {"clusterIP": ip, "clusterIPs": [ip], "selector": {"app": format!("svc-{j}")},
                         "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
            })
        })
        .collect();
    let mut authorization_policies = Vec::new();
    let mut peer_authentications = Vec::new();
    for i in 0..size.policies {
        let svc = i % size.services;
        let ns = size.namespace_of_service(svc);
        if i % PEER_AUTH_EVERY == PEER_AUTH_EVERY - 1 {
            peer_authentications.push(json!({
                "apiVersion": "ambit.dev/v1alpha1", "kind": "PeerAuthentication",
                "metadata": {"name": format!("pa-{i}"), "namespace": ns},
                "spec": {"selector": {"matchLabels": {"app": format!("svc-{svc}")}},
                         "mtls": {"mode": "STRICT"}}
            }));
        } else {
            authorization_policies.push(authorization_policy(&ns, &format!("ap-{i}"), svc));
        }
    }
    Objects {
        mesh: mesh(),
        nodes,
        namespaces,
        pods,
        services,
        authorization_policies,
        peer_authentications,
    }
}

fn typed<T: serde::de::DeserializeOwned>(objs: &[Value]) -> anyhow::Result<Vec<T>> {
    objs.iter()
        .map(|o| {
            serde_json::from_value(o.clone())
                .with_context(|| format!("benchmark object does not parse: {o}"))
        })
        .collect()
}

impl Objects {
    /// The compiler's input, as the operator's caches would hold it.
    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        Ok(Snapshot {
            meshes: typed(std::slice::from_ref(&self.mesh))?,
            namespaces: typed(&self.namespaces)?,
            pods: typed(&self.pods)?,
            services: typed(&self.services)?,
            peer_authentications: typed(&self.peer_authentications)?,
            authorization_policies: typed(&self.authorization_policies)?,
            ..Default::default()
        })
    }

    /// Every object, in an order the API server accepts (namespaces before what is in them).
    pub fn all(&self) -> impl Iterator<Item = &Value> {
        std::iter::once(&self.mesh)
            .chain(&self.nodes)
            .chain(&self.namespaces)
            .chain(&self.services)
            .chain(&self.pods)
            .chain(&self.authorization_policies)
            .chain(&self.peer_authentications)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_the_requested_cluster_and_it_compiles() {
        let size = Size {
            pods: 200,
            services: 20,
            policies: 10,
            nodes: 5,
        };
        let objs = generate(size);
        assert_eq!(objs.pods.len(), 200);
        assert_eq!(objs.services.len(), 20);
        assert_eq!(
            objs.authorization_policies.len() + objs.peer_authentications.len(),
            10
        );
        assert_eq!(objs.peer_authentications.len(), 2);
        let compiled = ambit_operator::compile::compile(&objs.snapshot().unwrap());
        // Every pod is enrolled and every service and ALLOW policy makes it into the config.
        assert_eq!(compiled.config.workloads.len(), 200);
        assert_eq!(compiled.config.services.len(), 20);
        assert_eq!(compiled.config.policies.len(), 8);
        let nodes: std::collections::BTreeSet<_> =
            compiled.config.workloads.iter().map(|w| &w.node).collect();
        assert_eq!(nodes.len(), 5);
    }
}
