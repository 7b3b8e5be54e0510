//! The cluster view from Kubernetes: watches of the pods on this node
//! (`fieldSelector=spec.nodeName=<node>`) and of every namespace (metadata only: labels are
//! all the agent needs), each mirrored in a reflector store. Every change rebuilds the whole
//! view, debounced, and publishes it to the agent's [`LiveView`]; nothing is published until
//! both initial lists are loaded.
//!
//! Also the question the agent asks on SIGTERM: is the DaemonSet that runs it being deleted
//! (the mesh is being removed) or just rolling (an upgrade or restart)?

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::core::PartialObjectMeta;
use kube::runtime::{reflector, watcher, WatchStreamExt};
use kube::{Api, Client};
use tokio::sync::Notify;
use tracing::{info, warn};

use super::cluster::{ClusterPod, ClusterView};
use super::source::LiveView;

/// Changes closer together than this are folded into one rebuild of the view.
pub const DEBOUNCE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("--api-server {url}: not a valid URL ({why})")]
    BadUrl { url: String, why: String },
    #[error("building a Kubernetes client ({what}): {source}; run in a pod with a service account, set KUBECONFIG, or pass --api-server")]
    Client {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A client for `api_server` (no authentication: tests and the sandbox), or from the
/// in-cluster service account / kubeconfig.
pub async fn client(api_server: Option<&str>) -> Result<Client, KubeError> {
    let config = match api_server {
        Some(url) => kube::Config::new(url.parse().map_err(|e: http::uri::InvalidUri| {
            KubeError::BadUrl {
                url: url.into(),
                why: e.to_string(),
            }
        })?),
        None => kube::Config::infer().await.map_err(|e| KubeError::Client {
            what: "in-cluster config or kubeconfig",
            source: Box::new(e),
        })?,
    };
    Client::try_from(config).map_err(|e| KubeError::Client {
        what: "client from config",
        source: Box::new(e),
    })
}

/// What the agent needs of one pod; `None` for pods that are finished (their IP may already
/// belong to another pod) or not on `node`.
pub fn cluster_pod(pod: &Pod, node: &str) -> Option<ClusterPod> {
    let spec = pod.spec.as_ref()?;
    if spec.node_name.as_deref() != Some(node) {
        return None;
    }
    let status = pod.status.as_ref();
    if status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed")
    {
        return None;
    }
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().filter_map(|i| i.ip.parse().ok()).collect())
        .unwrap_or_default();
    if ips.is_empty() {
        ips = status
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse().ok())
            .into_iter()
            .collect();
    }
    let meta = &pod.metadata;
    Some(ClusterPod {
        uid: meta.uid.clone()?,
        name: meta.name.clone()?,
        namespace: meta.namespace.clone()?,
        service_account: spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
        node: node.into(),
        ips,
        labels: meta.labels.clone().unwrap_or_default(),
        host_network: spec.host_network.unwrap_or(false),
    })
}

/// The view from the two stores' contents.
pub fn view_from(
    node: &str,
    pods: &[Arc<Pod>],
    namespaces: &[Arc<PartialObjectMeta<Namespace>>],
) -> ClusterView {
    let namespaces: BTreeMap<String, BTreeMap<String, String>> = namespaces
        .iter()
        .filter_map(|ns| {
            let name = ns.metadata.name.clone()?;
            Some((name, ns.metadata.labels.clone().unwrap_or_default()))
        })
        .collect();
    let mut pods: Vec<ClusterPod> = pods.iter().filter_map(|p| cluster_pod(p, node)).collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    ClusterView {
        namespaces,
        pods,
        ..ClusterView::default()
    }
}

/// Drives one watch stream, waking the publisher on every event. Errors are retried by the
/// watcher's backoff; the store keeps its last complete state meanwhile.
async fn drive<S, T>(what: &'static str, stream: S, changed: Arc<Notify>)
where
    S: Stream<Item = Result<T, watcher::Error>>,
{
    let mut stream = std::pin::pin!(stream);
    while let Some(event) = stream.next().await {
        match event {
            Ok(_) => changed.notify_one(),
            Err(e) => warn!(watch = what, error = %e, "Kubernetes watch failed; retrying"),
        }
    }
}

/// Keeps `live` equal to the pods on `node` and all namespaces. Runs until the runtime stops.
pub async fn watch(client: Client, node: String, live: Arc<LiveView>) {
    let changed = Arc::new(Notify::new());
    let (pod_store, pod_writer) = reflector::store::<Pod>();
    let (ns_store, ns_writer) = reflector::store::<PartialObjectMeta<Namespace>>();
    let pods = watcher(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
    );
    let namespaces = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client),
        watcher::Config::default(),
    );
    tokio::spawn(drive(
        "pods",
        reflector(pod_writer, pods).default_backoff(),
        changed.clone(),
    ));
    tokio::spawn(drive(
        "namespaces",
        reflector(ns_writer, namespaces).default_backoff(),
        changed.clone(),
    ));
    let (p, n) = tokio::join!(pod_store.wait_until_ready(), ns_store.wait_until_ready());
    if p.is_err() || n.is_err() {
        warn!(
            "a Kubernetes watch stopped before its initial list; the cluster view stays unloaded"
        );
        return;
    }
    info!(
        pods = pod_store.state().len(),
        namespaces = ns_store.state().len(),
        "initial Kubernetes lists loaded"
    );
    loop {
        live.publish(view_from(&node, &pod_store.state(), &ns_store.state()));
        changed.notified().await;
        tokio::time::sleep(DEBOUNCE).await;
    }
}

/// The state of the DaemonSet running the agent, as seen at shutdown.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DaemonSetState {
    /// Present and not being deleted: a restart or rolling upgrade.
    Running,
    /// Marked for deletion (foreground deletion of the data plane) or already gone.
    Removed(String),
}

/// Reads the agent's DaemonSet `namespace/name`. An error (API unreachable, forbidden)
/// means "unknown": the caller must keep everything in place.
pub async fn daemonset_state(
    client: Client,
    namespace: &str,
    name: &str,
) -> Result<DaemonSetState, kube::Error> {
    let api: Api<DaemonSet> = Api::namespaced(client, namespace);
    Ok(match api.get_opt(name).await? {
        None => DaemonSetState::Removed(format!("DaemonSet {namespace}/{name} is gone")),
        Some(ds) if ds.metadata.deletion_timestamp.is_some() => {
            DaemonSetState::Removed(format!("DaemonSet {namespace}/{name} is being deleted"))
        }
        Some(_) => DaemonSetState::Running,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Arc<Pod> {
        Arc::new(serde_json::from_value(value).unwrap())
    }

    #[test]
    fn builds_the_view_from_pod_specs_and_statuses() {
        let pods = [
            pod(
                json!({"metadata": {"name": "a", "namespace": "mesh", "uid": "u-a", "labels": {"app": "a"}},
                "spec": {"nodeName": "n1", "serviceAccountName": "sa-a", "containers": []},
                "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}}),
            ),
            pod(
                json!({"metadata": {"name": "h", "namespace": "mesh", "uid": "u-h"},
                "spec": {"nodeName": "n1", "hostNetwork": true, "containers": []},
                "status": {"podIP": "192.168.0.1"}}),
            ),
            pod(
                json!({"metadata": {"name": "done", "namespace": "mesh", "uid": "u-d"},
                "spec": {"nodeName": "n1", "containers": []},
                "status": {"phase": "Succeeded", "podIPs": [{"ip": "10.0.0.9"}]}}),
            ),
            pod(
                json!({"metadata": {"name": "other", "namespace": "mesh", "uid": "u-o"},
                "spec": {"nodeName": "n2", "containers": []}}),
            ),
            pod(
                json!({"metadata": {"name": "new", "namespace": "mesh", "uid": "u-n"},
                "spec": {"nodeName": "n1", "containers": []}}),
            ),
        ];
        let ns: Arc<PartialObjectMeta<Namespace>> = Arc::new(
            serde_json::from_value(
                json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata",
                "metadata": {"name": "mesh", "labels": {"ambit.dev/dataplane-mode": "ambient"}}}),
            )
            .unwrap(),
        );
        let view = view_from("n1", &pods, &[ns]);
        assert!(view.namespace_enrolled("mesh"));
        let names: Vec<&str> = view.pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["a", "h", "new"],
            "finished pods and other nodes' pods are left out"
        );
        let a = view.pod("mesh", "a").unwrap();
        assert_eq!(a.uid, "u-a");
        assert_eq!(a.service_account, "sa-a");
        assert_eq!(
            a.ips,
            [
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "fd00::1".parse().unwrap()
            ]
        );
        assert_eq!(a.labels.get("app").map(String::as_str), Some("a"));
        let h = view.pod("mesh", "h").unwrap();
        assert!(h.host_network);
        assert_eq!(h.service_account, "default");
        assert_eq!(
            h.ips,
            ["192.168.0.1".parse::<IpAddr>().unwrap()],
            "podIP when podIPs is absent"
        );
        assert!(view.pod("mesh", "new").unwrap().ips.is_empty());
    }
}
