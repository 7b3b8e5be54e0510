//! Server-level behaviour: HTTP/2, health and odd requests, the state file, shutdown.

mod common;

use ambit_apisim::{ApiServer, ApiServerConfig};
use common::{api_err, client_for, from, start};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use kube::ResourceExt;
use serde_json::json;

#[tokio::test]
async fn serves_http2_with_prior_knowledge() {
    let (server, _client) = start().await;
    let tcp = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let (mut h2, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("{}/api/v1/namespaces/kube-system", server.url()))
        .body(())
        .unwrap();
    let (resp, _) = h2.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let mut body = resp.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(v["metadata"]["name"], "kube-system");
}

#[tokio::test]
async fn health_and_method_errors() {
    let (server, client) = start().await;
    let text = client
        .request_text(http::Request::get("/readyz").body(vec![]).unwrap())
        .await
        .unwrap();
    assert_eq!(text, "ok");
    let del = http::Request::delete("/api/v1").body(vec![]).unwrap();
    assert_eq!(api_err(client.request_text(del).await.unwrap_err()).0, 405);
    let post_all = http::Request::post("/api/v1/configmaps")
        .header("content-type", "application/json")
        .body(br#"{"metadata":{"name":"x"}}"#.to_vec())
        .unwrap();
    assert_eq!(
        api_err(client.request_text(post_all).await.unwrap_err()).0,
        405
    );
    let garbage = http::Request::post("/api/v1/namespaces/default/configmaps")
        .header("content-type", "application/json")
        .body(b"{not json".to_vec())
        .unwrap();
    assert_eq!(
        api_err(client.request_text(garbage).await.unwrap_err()).0,
        400
    );
    let dry = http::Request::post("/api/v1/namespaces/default/configmaps?dryRun=All")
        .header("content-type", "application/json")
        .body(br#"{"metadata":{"name":"x"}}"#.to_vec())
        .unwrap();
    let (code, _, msg) = api_err(client.request_text(dry).await.unwrap_err());
    assert_eq!(code, 400);
    assert!(msg.contains("dryRun"), "{msg}");
    assert!(server.requests().iter().all(|r| r.status >= 200));
}

const CRD: &str = r#"{"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
  "metadata": {"name": "gadgets.ambit.dev"},
  "spec": {"group": "ambit.dev", "scope": "Namespaced", "names": {"plural": "gadgets", "kind": "Gadget"},
           "versions": [{"name": "v1", "served": true, "storage": true}]}}"#;

#[tokio::test]
async fn state_file_survives_a_restart() {
    let path = std::env::temp_dir().join(format!(
        "apisim-state-{}-{}.json",
        std::process::id(),
        rand_suffix()
    ));
    let config = ApiServerConfig {
        state_file: Some(path.clone()),
        ..Default::default()
    };
    let server = ApiServer::start_with("127.0.0.1:0".parse().unwrap(), config.clone())
        .await
        .unwrap();
    let store = server.store();
    store.create(serde_json::from_str(CRD).unwrap()).unwrap();
    store.create(json!({"apiVersion": "ambit.dev/v1", "kind": "Gadget", "metadata": {"name": "g", "namespace": "default"}, "spec": {"n": 1}})).unwrap();
    let client = client_for(&server);
    let cms: Api<ConfigMap> = Api::namespaced(client, "default");
    let cm = cms
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "keep"}, "data": {"a": "b"}})),
        )
        .await
        .unwrap();
    let rv = store.resource_version();
    server.shutdown().await;

    let server = ApiServer::start_with("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap();
    let client = client_for(&server);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let again = cms.get("keep").await.unwrap();
    assert_eq!(again.uid(), cm.uid());
    assert_eq!(again.resource_version(), cm.resource_version());
    let ar = ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("ambit.dev", "v1", "Gadget"),
        "gadgets",
    );
    let gadgets: Api<DynamicObject> = Api::namespaced_with(client, "default", &ar);
    assert_eq!(gadgets.get("g").await.unwrap().data["spec"]["n"], 1);
    let next = cms
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "new"}})),
        )
        .await
        .unwrap();
    assert!(
        next.resource_version().unwrap().parse::<u64>().unwrap() > rv,
        "numbering continues"
    );
    drop(server);
    let _ = std::fs::remove_file(&path);
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

#[tokio::test]
async fn shutdown_closes_the_port() {
    let (server, _client) = start().await;
    let addr = server.addr();
    server.shutdown().await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn binary_serves_and_saves_state_on_sigterm() {
    use tokio::io::AsyncBufReadExt;
    let path = std::env::temp_dir().join(format!(
        "apisim-bin-{}-{}.json",
        std::process::id(),
        rand_suffix()
    ));
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_ambit-apisim"))
        .args(["--listen", "127.0.0.1:0", "--state"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    cms.create(
        &PostParams::default(),
        &from(json!({"metadata": {"name": "saved"}})),
    )
    .await
    .unwrap();
    let pid = child.id().unwrap() as i32;
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(std::time::Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status:?}");
    let saved: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert!(saved["objects"]
        .as_array()
        .unwrap()
        .iter()
        .any(|o| o["metadata"]["name"] == "saved"));
    let _ = std::fs::remove_file(&path);
}
