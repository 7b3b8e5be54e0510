//! Shared setup: a server on a free loopback port and a kube client for it.
#![allow(dead_code)]

use ambit_apisim::{ApiServer, ApiServerConfig, ApiServerHandle};
use kube::Client;
use serde_json::Value;
use std::time::Duration;

pub async fn start() -> (ApiServerHandle, Client) {
    start_with(ApiServerConfig::default()).await
}

pub async fn start_with(config: ApiServerConfig) -> (ApiServerHandle, Client) {
    let server = ApiServer::start_with("127.0.0.1:0".parse().unwrap(), config)
        .await
        .expect("apisim starts");
    let client = client_for(&server);
    (server, client)
}

pub fn client_for(server: &ApiServerHandle) -> Client {
    let config = kube::Config::new(server.url().parse().expect("apisim url parses"));
    Client::try_from(config).expect("kube client for apisim")
}

/// The Status of a failed kube call.
pub fn api_err(e: kube::Error) -> (u16, String, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.reason.clone(), s.message.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

pub fn from<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("test object deserializes")
}

/// Polls `f` until it returns `Some`, for up to 10 s (generous: the machine is shared).
pub async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
