//! The cluster path (pod discovery and the API server's pod proxy) against a fake API server:
//! the in-memory apisim does not implement pod proxying.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

use super::*;
use crate::targets::fetch;

fn pod(ns: &str, name: &str, node: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({"metadata": {"name": name, "namespace": ns, "labels": labels}, "spec": {"nodeName": node}})
}

/// Answers the three requests the cluster path makes; records every path+query.
async fn fake() -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(vec![]));
    let log = seen.clone();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            let log = log.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let pq = req
                        .uri()
                        .path_and_query()
                        .map(|p| p.to_string())
                        .unwrap_or_default();
                    log.lock().unwrap().push(pq.clone());
                    let list = |items: Vec<serde_json::Value>| json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items});
                    let (code, body) = match req.uri().path() {
                        "/api/v1/namespaces/ambit-system/pods" => (200, list(vec![pod("ambit-system", "ztunnel-x7", "node-1", json!({"app": "ztunnel"}))])),
                        "/api/v1/pods" => (200, list(vec![
                            pod("bookinfo", "waypoint-1", "node-1", json!({"ambit.dev/waypoint": "waypoint"})),
                            pod("bookinfo", "waypoint-2", "node-2", json!({"ambit.dev/waypoint": "waypoint"})),
                        ])),
                        "/api/v1/namespaces/ambit-system/pods/ztunnel-x7:15000/proxy/config_dump" => (200, json!({"node": "node-1"})),
                        _ => (404, json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "not found", "reason": "NotFound", "code": 404})),
                    };
                    let resp = http::Response::builder()
                        .status(code)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body.to_string())))
                        .unwrap();
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (url, seen)
}

#[tokio::test]
async fn ztunnels_and_waypoints_are_found_and_reached_through_the_pod_proxy() {
    let (url, seen) = fake().await;
    let c = client(&ServerSource::Url(url)).await.unwrap();
    let t = discover_targets(&c).await.unwrap();
    assert_eq!(t.nodes.len(), 1);
    assert_eq!(t.nodes[0].name, "node-1");
    assert_eq!(
        t.nodes[0].admin,
        Endpoint::PodProxy {
            namespace: "ambit-system".into(),
            pod: "ztunnel-x7".into(),
            port: 15000
        }
    );
    assert_eq!(t.waypoints.len(), 1, "one entry per Waypoint, not per pod");
    assert_eq!(
        (
            t.waypoints[0].namespace.as_str(),
            t.waypoints[0].name.as_str()
        ),
        ("bookinfo", "waypoint")
    );
    let body = fetch(Some(&c), &t.nodes[0].admin, "/config_dump")
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["node"],
        "node-1"
    );
    let err = fetch(Some(&c), &t.waypoints[0].admin, "/config_dump")
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        1,
        "an API error is a failure, not unreachable: {err}"
    );
    let seen = seen.lock().unwrap();
    assert!(
        seen.iter()
            .any(|p| p.starts_with("/api/v1/namespaces/ambit-system/pods?")
                && p.contains("labelSelector=app%3Dztunnel")),
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .any(|p| p.starts_with("/api/v1/pods?")
                && p.contains("labelSelector=ambit.dev%2Fwaypoint")),
        "{seen:?}"
    );
}
