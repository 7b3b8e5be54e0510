//! The sandbox's writes to the API server: the objects `helm install` and a kubelet would
//! create (CRDs, namespaces, nodes, the Mesh, pods and their status, service account tokens,
//! DaemonSet status), as plain JSON requests.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kube::Client;
use serde_json::{json, Value};

/// The operator's namespace.
pub const SYSTEM_NS: &str = "ambit-system";
pub const APP_NS: &str = "bookinfo";
/// Audience the operator accepts on proxy tokens.
const TOKEN_AUDIENCE: &str = "ambit";

async fn send(
    c: &Client,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, kube::Error> {
    let mut req = http::Request::builder().method(method.clone()).uri(path);
    let bytes = match body {
        Some(b) => {
            let ct = if method == http::Method::PATCH {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            req = req.header(http::header::CONTENT_TYPE, ct);
            serde_json::to_vec(b).expect("JSON values serialize")
        }
        None => vec![],
    };
    let req = req.body(bytes).expect("request parts are valid");
    c.request::<Value>(req).await
}

fn is_code(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

/// POST, treating "already exists" as success (re-running a step is harmless).
pub async fn create(c: &Client, path: &str, body: Value) -> anyhow::Result<()> {
    match send(c, http::Method::POST, path, Some(&body)).await {
        Ok(_) => Ok(()),
        Err(e) if is_code(&e, 409) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("POST {path}")),
    }
}

pub async fn get(c: &Client, path: &str) -> anyhow::Result<Option<Value>> {
    match send(c, http::Method::GET, path, None).await {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_code(&e, 404) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("GET {path}")),
    }
}

pub async fn patch(c: &Client, path: &str, body: Value) -> anyhow::Result<Value> {
    send(c, http::Method::PATCH, path, Some(&body))
        .await
        .with_context(|| format!("PATCH {path}"))
}

/// Polls `f` every 100 ms until it yields a value or `timeout` passes.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_err = None;
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() > deadline {
            let cause = last_err
                .map(|e| format!(" (last error: {e:#})"))
                .unwrap_or_default();
            bail!("timed out after {timeout:?} waiting for {what}{cause}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What `helm install` puts in, plus the Node objects: CRDs, namespaces, nodes, the Mesh.
pub async fn install(c: &Client, nodes: &[(String, Ipv4Addr)]) -> anyhow::Result<()> {
    for crd in ambit_operator::crd::all() {
        create(
            c,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            serde_json::to_value(crd)?,
        )
        .await?;
    }
    for ns in [SYSTEM_NS, APP_NS] {
        create(
            c,
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
        )
        .await?;
    }
    for (name, ip) in nodes {
        create(
            c,
            "/api/v1/nodes",
            json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name,
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}}}),
        )
        .await?;
        patch(c, &format!("/api/v1/nodes/{name}/status"), json!({"status": {
            "addresses": [{"type": "InternalIP", "address": ip.to_string()}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]}})).await?;
    }
    // Wait until the CRD is served before creating the Mesh.
    wait_for(
        "the Mesh CRD to be served",
        Duration::from_secs(10),
        || async { Ok(get(c, "/apis/ambit.dev/v1alpha1/meshes").await?.map(|_| ())) },
    )
    .await?;
    create(
        c,
        "/apis/ambit.dev/v1alpha1/meshes",
        json!({"apiVersion": "ambit.dev/v1alpha1", "kind": "Mesh",
        "metadata": {"name": "default"},
        "spec": {"trustDomain": "cluster.local", "defaultMtlsMode": "PERMISSIVE"}}),
    )
    .await
}

/// Waits for the operator to have installed the data plane; returns the mesh root cert.
pub async fn wait_for_dataplane(c: &Client, timeout: Duration) -> anyhow::Result<String> {
    for ds in ["ztunnel", "ambit-node-agent"] {
        let path = format!("/apis/apps/v1/namespaces/{SYSTEM_NS}/daemonsets/{ds}");
        wait_for(
            &format!("the operator to create DaemonSet {SYSTEM_NS}/{ds}"),
            timeout,
            || async { Ok(get(c, &path).await?.map(|_| ())) },
        )
        .await?;
    }
    let path = format!("/api/v1/namespaces/{SYSTEM_NS}/configmaps/ambit-ca-root-cert");
    wait_for(
        "ConfigMap ambit-system/ambit-ca-root-cert",
        timeout,
        || async {
            Ok(get(c, &path)
                .await?
                .and_then(|cm| cm["data"]["root-cert.pem"].as_str().map(String::from)))
        },
    )
    .await
}

/// A Pod object as the scheduler and kubelet would leave it. Returns its uid.
#[allow(clippy::too_many_arguments)]
pub async fn create_pod(
    c: &Client,
    ns: &str,
    name: &str,
    node: &str,
    service_account: &str,
    labels: Value,
    host_network: bool,
) -> anyhow::Result<String> {
    create(c, &format!("/api/v1/namespaces/{ns}/pods"), json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "serviceAccountName": service_account, "hostNetwork": host_network,
                 "containers": [{"name": "main", "image": "ambitctl-sandbox"}]}})).await?;
    let pod = get(c, &format!("/api/v1/namespaces/{ns}/pods/{name}"))
        .await?
        .with_context(|| format!("pod {ns}/{name} vanished right after it was created"))?;
    Ok(pod["metadata"]["uid"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// The kubelet's status report once the pod's network is up.
pub async fn set_pod_running(
    c: &Client,
    ns: &str,
    name: &str,
    ip: Ipv4Addr,
    host_ip: Ipv4Addr,
) -> anyhow::Result<()> {
    patch(
        c,
        &format!("/api/v1/namespaces/{ns}/pods/{name}/status"),
        json!({"status": {
        "phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
        "hostIP": host_ip.to_string(),
        "conditions": [{"type": "Ready", "status": "True"}]}}),
    )
    .await
    .map(drop)
}

/// A projected ServiceAccount token for the operator, bound to a pod (which names the node).
pub async fn token(c: &Client, ns: &str, sa: &str, pod: &str, uid: &str) -> anyhow::Result<String> {
    let path = format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token");
    let body = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": [TOKEN_AUDIENCE], "expirationSeconds": 86400,
                 "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}}});
    let answer = send(c, http::Method::POST, &path, Some(&body))
        .await
        .with_context(|| format!("TokenRequest for {ns}/{sa} bound to pod {pod}"))?;
    answer["status"]["token"]
        .as_str()
        .map(String::from)
        .with_context(|| format!("TokenRequest for {ns}/{sa} answered without a token: {answer}"))
}

/// Plays the DaemonSet controller: every node runs the current template and is ready.
pub async fn daemonset_ready(c: &Client, name: &str, nodes: usize) -> anyhow::Result<()> {
    let path = format!("/apis/apps/v1/namespaces/{SYSTEM_NS}/daemonsets/{name}");
    let ds = get(c, &path)
        .await?
        .with_context(|| format!("DaemonSet {name} is gone"))?;
    patch(
        c,
        &format!("{path}/status"),
        json!({"status": {
        "desiredNumberScheduled": nodes, "currentNumberScheduled": nodes, "numberMisscheduled": 0,
        "numberReady": nodes, "numberAvailable": nodes, "updatedNumberScheduled": nodes,
        "observedGeneration": ds["metadata"]["generation"]}}),
    )
    .await
    .map(drop)
}

pub async fn create_service(
    c: &Client,
    ns: &str,
    name: &str,
    vip: Ipv4Addr,
    port: u16,
) -> anyhow::Result<()> {
    create(c, &format!("/api/v1/namespaces/{ns}/services"), json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}},
        "spec": {"clusterIP": vip.to_string(), "clusterIPs": [vip.to_string()], "selector": {"app": name},
                 "ports": [{"name": "http", "port": port, "targetPort": port, "protocol": "TCP"}]}})).await
}

pub async fn label_namespace(c: &Client, ns: &str, labels: Value) -> anyhow::Result<()> {
    patch(
        c,
        &format!("/api/v1/namespaces/{ns}"),
        json!({"metadata": {"labels": labels}}),
    )
    .await
    .map(drop)
}

/// `(status, reason)` of a condition in an object's status.
pub fn condition(obj: &Value, type_: &str) -> Option<(String, String)> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .map(|c| {
            (
                c["status"].as_str().unwrap_or_default().into(),
                c["reason"].as_str().unwrap_or_default().into(),
            )
        })
}

pub async fn mesh(c: &Client) -> anyhow::Result<Option<Value>> {
    get(c, "/apis/ambit.dev/v1alpha1/meshes/default").await
}
