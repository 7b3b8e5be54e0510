//! Shared by the tests that run the real operator against the in-memory API server.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use ambit_apisim::ApiServerHandle;
use ambit_operator::leader::LeaseTimings;
use ambit_operator::runtime::Options;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
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
