//! Routing through a real waypoint process: weighted canary splits (exact over many requests,
//! changed by a config rewrite without restart or failures) and header/path matches.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::apps::HttpApp;
use common::*;
use serde_json::json;

fn split(v1: u32, v2: u32) -> serde_json::Value {
    json!({"routes": [{
    "name": "api", "namespace": NS, "service": {"name": "api", "namespace": NS},
    "rules": [
        {"name": "tagged",
         "matches": [{"headers": [{"name": "x-canary", "exact": "yes"}]}, {"path": {"prefix": "/beta/"}}],
         "backends": [{"service": "api", "subset": {"version": "v2"}}]},
        {"name": "split", "backends": [
            {"service": "api", "subset": {"version": "v1"}, "weight": v1},
            {"service": "api", "subset": {"version": "v2"}, "weight": v2}]}
    ]}]})
}

async fn two_versions(tag: &str) -> (Env, HttpApp, HttpApp) {
    let mut env = Env::new(tag).await;
    let v1 = HttpApp::start("v1").await;
    let v2 = HttpApp::start("v2").await;
    env.add_backend(
        "api-v1",
        json!({"app": "api", "version": "v1"}),
        &[(8080, v1.addr)],
    )
    .await;
    env.add_backend(
        "api-v2",
        json!({"app": "api", "version": "v2"}),
        &[(8080, v2.addr)],
    )
    .await;
    (env, v1, v2)
}

fn count(results: &[(u16, String)]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for (status, backend) in results {
        assert_eq!(*status, 200, "every request succeeds");
        *m.entry(backend.clone()).or_default() += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_split_is_exact_and_reweights_live() {
    if skip_unless_root() {
        return;
    }
    let (mut env, _v1, _v2) = two_versions("canary").await;
    env.extra = split(90, 10);
    env.start_waypoint(&[]);
    let client = env.client("client").await;

    let n = 10_000;
    let got = count(&load(&client, n, 8, |_| get("/")).await);
    let v2_share = got.get("v2").copied().unwrap_or(0) as f64 * 100.0 / n as f64;
    assert!(
        (8.0..=12.0).contains(&v2_share),
        "v2 got {v2_share}% of {n} (want 10 ± 2): {got:?}"
    );

    // Reweight 50/50 while requests are flowing: none may fail.
    let stop = Arc::new(AtomicBool::new(false));
    let mut send = client.h1(VIP).await;
    let flag = stop.clone();
    let during = tokio::spawn(async move {
        let mut statuses = vec![];
        while !flag.load(Ordering::SeqCst) {
            send.ready().await.unwrap();
            let (s, b, _) = read(send.send_request(get("/")).await.unwrap()).await;
            statuses.push((s, b));
        }
        statuses
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    env.extra = split(50, 50);
    env.write_config();
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop.store(true, Ordering::SeqCst);
    let during = during.await.unwrap();
    assert!(
        during.len() > 20,
        "traffic flowed during the reload ({})",
        during.len()
    );
    count(&during);

    let n = 4_000;
    let got = count(&load(&client, n, 8, |_| get("/")).await);
    let v2_share = got.get("v2").copied().unwrap_or(0) as f64 * 100.0 / n as f64;
    assert!(
        (46.0..=54.0).contains(&v2_share),
        "after reweight v2 got {v2_share}%: {got:?}"
    );
    assert!(
        env.waypoint.as_mut().unwrap().try_wait().unwrap().is_none(),
        "no restart"
    );
    let m = env.metrics();
    assert!(metric_sum(&m, "ambit_config_reloads_total", &[("result", "ok")]) >= 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_and_path_matches_pick_v2() {
    if skip_unless_root() {
        return;
    }
    let (mut env, _v1, _v2) = two_versions("match").await;
    env.extra = split(100, 0);
    env.start_waypoint(&[]);
    let client = env.client("client").await;
    let mut send = client.h1(VIP).await;
    for i in 0..50 {
        let tagged = i % 2 == 0;
        let req = if tagged {
            http::Request::get("/x")
                .header("host", "api.shop")
                .header("x-canary", "yes")
                .body(ambit_waypoint::body::empty())
                .unwrap()
        } else {
            get("/x")
        };
        send.ready().await.unwrap();
        let (s, b, _) = read(send.send_request(req).await.unwrap()).await;
        assert_eq!(
            (s, b.as_str()),
            (200, if tagged { "v2" } else { "v1" }),
            "request {i}"
        );
    }
    send.ready().await.unwrap();
    let (_, b, _) = read(send.send_request(get("/beta/feature")).await.unwrap()).await;
    assert_eq!(b, "v2");
    // A bad config is rejected, counted, and the last good one keeps serving.
    std::fs::write(env.dir.join("mesh.yaml"), "routes: [{name: x}]").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    send.ready().await.unwrap();
    let (s, b, _) = read(send.send_request(get("/beta/feature")).await.unwrap()).await;
    assert_eq!((s, b.as_str()), (200, "v2"));
    let m = env.metrics();
    assert!(
        metric_sum(&m, "ambit_config_reloads_total", &[("result", "error")]) >= 1.0,
        "{m}"
    );
}
