//! What the agent knows about the cluster: namespaces with their labels and the pods on
//! its node. In a cluster this comes from a Kubernetes watch; tests and the sandbox write
//! it as a JSON file, which the agent re-reads when it changes (the same pattern as
//! ztunnel's file-mode config).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

/// Namespace label that opts a namespace in.
pub const DATAPLANE_MODE_LABEL: &str = "ambit.dev/dataplane-mode";
/// Its value for "captured by ztunnel".
pub const AMBIENT: &str = "ambient";
/// Pod label value (on [`DATAPLANE_MODE_LABEL`]) that opts a pod out.
pub const NONE: &str = "none";

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterView {
    /// Namespace name → its labels.
    #[serde(default)]
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    #[serde(default)]
    pub pods: Vec<ClusterPod>,
    /// Namespaces never captured (the agent's `--exclude-namespace`), whatever their labels.
    #[serde(skip)]
    pub excluded_namespaces: BTreeSet<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterPod {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(default = "default_sa")]
    pub service_account: String,
    pub node: String,
    /// Empty until the pod has been given an address.
    #[serde(default)]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub host_network: bool,
}

fn default_sa() -> String {
    "default".into()
}

/// Whether a pod should be captured, and if not, why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Capture,
    Skip(String),
}

impl ClusterView {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading cluster state {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("cluster state {}: {e}", path.display()))
    }

    pub fn pod(&self, namespace: &str, name: &str) -> Option<&ClusterPod> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    pub fn namespace_enrolled(&self, namespace: &str) -> bool {
        self.namespaces
            .get(namespace)
            .and_then(|l| l.get(DATAPLANE_MODE_LABEL))
            .is_some_and(|v| v == AMBIENT)
    }

    pub fn decide(&self, pod: &ClusterPod) -> Decision {
        if pod.host_network {
            return Decision::Skip("host-network pod".into());
        }
        if self.excluded_namespaces.contains(&pod.namespace) {
            return Decision::Skip(format!(
                "namespace {} is excluded from the mesh on this node",
                pod.namespace
            ));
        }
        if !self.namespace_enrolled(&pod.namespace) {
            return Decision::Skip(format!(
                "namespace {} is not labelled {DATAPLANE_MODE_LABEL}={AMBIENT}",
                pod.namespace
            ));
        }
        if pod
            .labels
            .get(DATAPLANE_MODE_LABEL)
            .is_some_and(|v| v == NONE)
        {
            return Decision::Skip(format!("pod opted out with {DATAPLANE_MODE_LABEL}={NONE}"));
        }
        Decision::Capture
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decides_by_namespace_label_opt_out_and_host_network() {
        let view: ClusterView = serde_json::from_str(
            r#"{"namespaces": {"mesh": {"ambit.dev/dataplane-mode": "ambient"}, "plain": {}},
                "pods": [
                  {"uid": "1", "name": "a", "namespace": "mesh", "node": "n", "ips": ["10.0.0.1"]},
                  {"uid": "2", "name": "b", "namespace": "plain", "node": "n"},
                  {"uid": "3", "name": "c", "namespace": "mesh", "node": "n", "labels": {"ambit.dev/dataplane-mode": "none"}},
                  {"uid": "4", "name": "d", "namespace": "mesh", "node": "n", "hostNetwork": true}
                ]}"#,
        )
        .unwrap();
        let d = |n| {
            view.decide(
                view.pod(if n == "b" { "plain" } else { "mesh" }, n)
                    .unwrap(),
            )
        };
        assert_eq!(d("a"), Decision::Capture);
        assert!(matches!(d("b"), Decision::Skip(r) if r.contains("not labelled")));
        assert!(matches!(d("c"), Decision::Skip(r) if r.contains("opted out")));
        assert!(matches!(d("d"), Decision::Skip(r) if r.contains("host-network")));

        let mut excluding = view.clone();
        excluding.excluded_namespaces.insert("mesh".into());
        let a = excluding.pod("mesh", "a").unwrap();
        assert!(matches!(excluding.decide(a), Decision::Skip(r) if r.contains("excluded")));
    }
}
