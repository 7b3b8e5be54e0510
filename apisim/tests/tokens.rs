//! ServiceAccount TokenRequest and TokenReview, as the operator uses them to authenticate
//! ztunnels (including the node the bound pod runs on).

mod common;

use common::{api_err, from, start};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenReview};
use k8s_openapi::api::core::v1::{Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};
use kube::ResourceExt;
use serde_json::json;
use std::time::Duration;

async fn review(client: &kube::Client, token: &str, audiences: Option<Vec<&str>>) -> TokenReview {
    let reviews: Api<TokenReview> = Api::all(client.clone());
    let tr: TokenReview = from(json!({"spec": {"token": token, "audiences": audiences}}));
    reviews.create(&PostParams::default(), &tr).await.unwrap()
}

#[tokio::test]
async fn token_request_and_review_with_pod_and_node() {
    let (server, client) = start().await;
    let nodes: Api<Node> = Api::all(client.clone());
    let node = nodes
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "node-1"}})),
        )
        .await
        .unwrap();
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "kube-system");
    let sa = sas
        .create(
            &PostParams::default(),
            &from(json!({"metadata": {"name": "ztunnel"}})),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    let pod = pods
        .create(&PostParams::default(), &from(json!({"metadata": {"name": "ztunnel-abc"}, "spec": {"nodeName": "node-1", "serviceAccountName": "ztunnel", "containers": [{"name": "z", "image": "z"}]}})))
        .await
        .unwrap();

    let req: TokenRequest = from(
        json!({"spec": {"audiences": ["ambit"], "expirationSeconds": 3600,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "ztunnel-abc", "uid": pod.uid().unwrap()}}}),
    );
    let issued = sas
        .create_token_request("ztunnel", &PostParams::default(), &req)
        .await
        .unwrap();
    let token = issued.status.unwrap().token;
    assert!(!token.is_empty());

    let r = review(&client, &token, Some(vec!["ambit"]))
        .await
        .status
        .unwrap();
    assert_eq!(r.authenticated, Some(true), "{r:?}");
    let user = r.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:kube-system:ztunnel")
    );
    assert_eq!(user.uid, sa.uid());
    assert!(user
        .groups
        .unwrap()
        .contains(&"system:serviceaccounts:kube-system".to_string()));
    let extra = user.extra.unwrap();
    assert_eq!(
        extra["authentication.kubernetes.io/pod-name"],
        vec!["ztunnel-abc"]
    );
    assert_eq!(
        extra["authentication.kubernetes.io/pod-uid"],
        vec![pod.uid().unwrap()]
    );
    assert_eq!(
        extra["authentication.kubernetes.io/node-name"],
        vec!["node-1"]
    );
    assert_eq!(
        extra["authentication.kubernetes.io/node-uid"],
        vec![node.uid().unwrap()]
    );
    assert_eq!(r.audiences.unwrap(), vec!["ambit"]);

    // Wrong audience, unknown token: not authenticated, with an error.
    let r = review(&client, &token, None).await.status.unwrap();
    assert_eq!(r.authenticated, Some(false));
    assert!(r.error.unwrap().contains("audience"));
    let r = review(&client, "nonsense", Some(vec!["ambit"]))
        .await
        .status
        .unwrap();
    assert_eq!(r.authenticated, Some(false));
    assert!(r.error.is_some());

    // Deleting the bound pod invalidates the token.
    pods.delete("ztunnel-abc", &DeleteParams::default())
        .await
        .unwrap();
    let r = review(&client, &token, Some(vec!["ambit"]))
        .await
        .status
        .unwrap();
    assert_eq!(r.authenticated, Some(false));

    // In-process minting, and expiry.
    let short = server
        .store()
        .mint_token("kube-system", "ztunnel", None, Duration::from_millis(300))
        .unwrap();
    let r = review(&client, &short, None).await.status.unwrap();
    assert_eq!(r.authenticated, Some(true));
    assert!(
        r.user.unwrap().extra.unwrap_or_default().is_empty(),
        "unbound tokens carry no pod claims"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let r = review(&client, &short, None).await.status.unwrap();
    assert_eq!(r.authenticated, Some(false));
    assert!(r.error.unwrap().contains("expired"));
}

#[tokio::test]
async fn token_request_validation() {
    let (_server, client) = start().await;
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    // Every namespace has a `default` ServiceAccount.
    let req: TokenRequest = from(json!({"spec": {"audiences": [], "expirationSeconds": 60}}));
    let (code, _, msg) = api_err(
        sas.create_token_request("default", &PostParams::default(), &req)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422, "{msg}");
    let req: TokenRequest = from(json!({"spec": {"audiences": []}}));
    let ok = sas
        .create_token_request("default", &PostParams::default(), &req)
        .await
        .unwrap();
    assert!(ok.status.unwrap().expiration_timestamp.0 > k8s_openapi::jiff::Timestamp::now());
    assert_eq!(
        api_err(
            sas.create_token_request("ghost", &PostParams::default(), &req)
                .await
                .unwrap_err()
        )
        .0,
        404
    );
    let bound: TokenRequest = from(
        json!({"spec": {"audiences": [], "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "ghost"}}}),
    );
    assert_eq!(
        api_err(
            sas.create_token_request("default", &PostParams::default(), &bound)
                .await
                .unwrap_err()
        )
        .0,
        404
    );
}
