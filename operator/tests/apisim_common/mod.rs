//! Shared by the tests that run the real operator against the in-memory API server.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ambit_apisim::{ApiServer, ApiServerHandle};
use ambit_core::control::{operator_identity, Endpoint};
use ambit_operator::crd::Mesh;
use ambit_operator::leader::LeaseTimings;
use ambit_operator::runtime::Options;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::Client;
use serde_json::{json, Value};

/// The operator's own client says who it is, so its calls can be told from the test's.
pub const OPERATOR_AGENT: &str = "ambit-operator-under-test";

pub fn client_for(server: &ApiServerHandle) -> Client {
    Client::try_from(kube::Config::new(server.url().parse().unwrap())).unwrap()
}

pub fn operator_client(server: &ApiServerHandle) -> Client {
    let mut config = kube::Config::new(server.url().parse().unwrap());
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(OPERATOR_AGENT),
    ));
    Client::try_from(config).unwrap()
}

/// Polls `f` until it returns `Some`, for up to 20 s (the machine is shared and noisy).
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An in-memory API server with the Ambit CRDs and `namespaces` installed, and a client for it.
pub async fn api_with(namespaces: &[(&str, Value)]) -> (ApiServerHandle, Client) {
    let server = ApiServer::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let client = client_for(&server);
    install(&client, namespaces).await;
    (server, client)
}

/// Creates the Mesh named `default` with `spec` (`{}`: every default).
pub async fn create_mesh(client: &Client, spec: Value) -> Mesh {
    let mesh: Mesh =
        serde_json::from_value(json!({"apiVersion": "ambit.dev/v1alpha1", "kind": "Mesh",
        "metadata": {"name": "default"}, "spec": spec}))
        .unwrap();
    Api::<Mesh>::all(client.clone())
        .create(&PostParams::default(), &mesh)
        .await
        .unwrap()
}

/// The Ambit CRDs and the given namespaces (with labels).
pub async fn install(client: &Client, namespaces: &[(&str, Value)]) {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in ambit_operator::crd::all() {
        api.create(&PostParams::default(), &crd).await.unwrap();
    }
    let ns: Api<Namespace> = Api::all(client.clone());
    for (name, labels) in namespaces {
        let obj = json!({"metadata": {"name": name, "labels": labels}});
        ns.create(
            &PostParams::default(),
            &serde_json::from_value(obj).unwrap(),
        )
        .await
        .unwrap();
    }
}

pub fn options(listen: std::net::SocketAddr) -> Options {
    Options {
        namespace: "ambit-system".into(),
        pod_name: "op-0".into(),
        listen,
        metrics: "127.0.0.1:0".parse().unwrap(),
        health: "127.0.0.1:0".parse().unwrap(),
        leader_elect: true,
        control_plane_address: Some("ambit-operator.ambit-system.svc:15012".into()),
        lease: LeaseTimings {
            lease_duration: Duration::from_secs(3),
            renew_deadline: Duration::from_secs(2),
            retry_period: Duration::from_millis(300),
        },
    }
}

pub fn free_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

pub async fn pod(
    client: &Client,
    ns: &str,
    name: &str,
    node: &str,
    sa: &str,
    ip: &str,
    labels: serde_json::Value,
) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let obj = json!({
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"nodeName": node, "serviceAccountName": sa,
                 "containers": [{"name": "app", "image": "demo", "ports": [{"name": "http", "containerPort": 9080}]}]},
    });
    api.create(
        &PostParams::default(),
        &serde_json::from_value(obj).unwrap(),
    )
    .await
    .unwrap();
    let status = json!({"status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
        "conditions": [{"type": "Ready", "status": "True"}]}});
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
}

/// A token for `ns/sa` bound to `pod`, with the audience proxies use, written to a file.
pub async fn token_file(client: &Client, dir: &Path, ns: &str, sa: &str, pod: &str) -> PathBuf {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    // The operator may be creating it at the same moment (a waypoint's ServiceAccount).
    let obj = json!({"metadata": {"name": sa, "namespace": ns}});
    match sas
        .create(
            &PostParams::default(),
            &serde_json::from_value(obj).unwrap(),
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating ServiceAccount {ns}/{sa}: {e}"),
    }
    let request = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"audiences": ["ambit"], "expirationSeconds": 3600,
                 "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod}}});
    let tr: TokenRequest = sas
        .create_subresource("token", sa, &PostParams::default(), &request)
        .await
        .unwrap();
    let path = dir.join(format!("{sa}.token"));
    std::fs::write(&path, tr.status.unwrap().token).unwrap();
    path
}

/// The ztunnel DaemonSet's pod on `node` (`ambit-system/ztunnel-<node>`, ServiceAccount
/// `ztunnel`), running at `ip`: the pod a ztunnel's token is bound to.
pub async fn ztunnel_pod(client: &Client, node: &str, ip: &str) {
    let name = format!("ztunnel-{node}");
    pod(
        client,
        "ambit-system",
        &name,
        node,
        "ztunnel",
        ip,
        json!({"app": "ztunnel"}),
    )
    .await;
}

/// What a ztunnel on `pod`'s node is given by its DaemonSet: the root certificate (from the
/// ConfigMap the operator writes, waited for) and a projected token, as files in `dir`.
pub async fn ztunnel_endpoint(
    client: &Client,
    dir: &Path,
    listen: SocketAddr,
    pod: &str,
) -> Endpoint {
    let root = eventually("root cert ConfigMap", || async {
        Api::<ConfigMap>::namespaced(client.clone(), "ambit-system")
            .get_opt("ambit-ca-root-cert")
            .await
            .unwrap()
    })
    .await;
    let root_path = dir.join("root-cert.pem");
    std::fs::write(&root_path, &root.data.unwrap()["root-cert.pem"]).unwrap();
    Endpoint {
        address: listen.to_string(),
        root_cert: root_path,
        operator_identity: operator_identity("cluster.local").unwrap(),
        token_file: token_file(client, dir, "ambit-system", "ztunnel", pod).await,
        connect_timeout: Duration::from_secs(5),
    }
}
