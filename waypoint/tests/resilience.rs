//! Retries, retry budget, timeouts, faults, circuit breaking and outlier ejection through a
//! real waypoint process.

mod common;

use std::time::{Duration, Instant};

use common::apps::{Behavior, HttpApp};
use common::*;
use serde_json::{json, Value};

fn route(rule: Value) -> Value {
    json!([{"name": "api", "namespace": NS, "service": {"name": "api", "namespace": NS}, "rules": [rule]}])
}

fn policy(p: Value) -> Value {
    let mut base =
        json!({"name": "api", "namespace": NS, "service": {"name": "api", "namespace": NS}});
    for (k, v) in p.as_object().unwrap() {
        base[k] = v.clone();
    }
    json!([base])
}

/// Backends `api-0..n`, each with its own app.
async fn env_with(tag: &str, n: usize) -> (Env, Vec<HttpApp>) {
    let mut env = Env::new(tag).await;
    let mut apps = vec![];
    for i in 0..n {
        let app = HttpApp::start(&format!("api-{i}")).await;
        env.add_backend(
            &format!("api-{i}"),
            json!({"app": "api"}),
            &[(8080, app.addr)],
        )
        .await;
        apps.push(app);
    }
    (env, apps)
}

async fn timed_get(
    send: &mut hyper::client::conn::http1::SendRequest<ambit_waypoint::body::Body>,
    path: &str,
) -> (u16, Duration) {
    send.ready().await.unwrap();
    let t = Instant::now();
    let (s, _, _) = read(send.send_request(get(path)).await.unwrap()).await;
    (s, t.elapsed())
}

fn within(d: Duration, want: Duration, tol: f64) -> bool {
    let (lo, hi) = (want.mul_f64(1.0 - tol), want.mul_f64(1.0 + tol));
    d >= lo && d <= hi
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_failing_half() {
    if skip_unless_root() {
        return;
    }
    let (mut env, apps) = env_with("retry", 2).await;
    // Half the service fails every request: without retries ~50% would fail.
    apps[1].set(Behavior {
        fail_percent: 100,
        ..Default::default()
    });
    env.extra = json!({
        "routes": route(json!({"retries": {"attempts": 3, "retryOn": ["5xx"], "backoff": {"baseInterval": "1ms"}}})),
        "backendPolicies": policy(json!({"loadBalancer": {"type": "RoundRobin"}, "retryBudget": {"percentCanRetry": 100}})),
    });
    env.start_waypoint(&[]);
    let client = env.client("client").await;
    let n = 1000;
    let results = load(&client, n, 4, |_| get("/")).await;
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    assert!(ok * 100 >= n * 99, "{ok}/{n} succeeded");
    let failing = apps[1].hits();
    assert!(
        failing > n / 5,
        "the failing endpoint really was tried ({failing})"
    );
    let m = env.metrics();
    assert!(
        metric_sum(&m, "ambit_upstream_retries_total", &[]) >= failing as f64 * 0.9,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_budget_caps_attempts_when_everything_fails() {
    if skip_unless_root() {
        return;
    }
    let (mut env, apps) = env_with("budget", 1).await;
    apps[0].set(Behavior {
        fail_percent: 100,
        ..Default::default()
    });
    env.extra = json!({
        "routes": route(json!({"retries": {"attempts": 3, "retryOn": ["5xx"], "backoff": {"baseInterval": "1ms"}}})),
        "backendPolicies": policy(json!({"retryBudget": {"percentCanRetry": 20, "minRetriesPerSecond": 1, "ttl": "10s"}})),
    });
    env.start_waypoint(&[]);
    let client = env.client("client").await;
    let n = 300;
    let results = load(&client, n, 4, |_| get("/")).await;
    assert!(results.iter().all(|(s, _)| *s == 503));
    let attempts = apps[0].hits();
    // ≤ requests × (1 + 20%) + floor (1/s × 10 s); without a budget it would be 3 × n.
    let bound = n + n / 5 + 10;
    assert!(
        attempts <= bound,
        "{attempts} attempts for {n} requests (bound {bound})"
    );
    assert!(attempts > n, "some retries happened ({attempts})");
    let m = env.metrics();
    assert!(
        metric_sum(
            &m,
            "ambit_requests_total",
            &[("response_code", "503"), ("response_flags", "URX")]
        ) >= n as f64 * 0.5,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_try_and_overall_timeouts() {
    if skip_unless_root() {
        return;
    }
    let (mut env, apps) = env_with("timeout", 1).await;
    apps[0].set(Behavior {
        delay: Duration::from_secs(2),
        ..Default::default()
    });
    env.extra = json!({"routes": [{"name": "api", "namespace": NS, "service": {"name": "api", "namespace": NS}, "rules": [
        {"name": "pertry", "matches": [{"path": {"prefix": "/pertry"}}],
         "retries": {"attempts": 3, "perTryTimeout": "150ms", "backoff": {"baseInterval": "1ms"}}},
        {"name": "overall", "timeout": "400ms",
         "retries": {"attempts": 5, "perTryTimeout": "1s", "backoff": {"baseInterval": "1ms"}}}
    ]}]});
    env.start_waypoint(&[]);
    let client = env.client("client").await;
    let mut send = client.h1(VIP).await;
    // Warm the upstream connection so handshakes don't count against the first try.
    let (s, d) = timed_get(&mut send, "/pertry").await;
    assert_eq!(s, 504);
    assert!(
        within(d, Duration::from_millis(450), 0.2),
        "3 tries × 150 ms took {d:?}"
    );
    let before = apps[0].hits();
    let (s, d) = timed_get(&mut send, "/pertry").await;
    assert_eq!(s, 504);
    assert!(
        within(d, Duration::from_millis(450), 0.2),
        "3 tries × 150 ms took {d:?}"
    );
    assert_eq!(apps[0].hits() - before, 3, "one hit per try");
    let (s, d) = timed_get(&mut send, "/overall").await;
    assert_eq!(s, 504);
    assert!(
        within(d, Duration::from_millis(400), 0.2),
        "overall 400 ms took {d:?}"
    );
    let m = env.metrics();
    assert!(
        metric_sum(
            &m,
            "ambit_requests_total",
            &[("response_code", "504"), ("response_flags", "UT")]
        ) >= 3.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_rates_and_delays() {
    if skip_unless_root() {
        return;
    }
    let (mut env, _apps) = env_with("fault", 1).await;
    env.extra = json!({"routes": route(json!({"fault": {
        "abort": {"httpStatus": 503, "percentage": 20},
        "delay": {"fixedDelay": "100ms", "percentage": 50}}}))});
    env.start_waypoint(&[]);
    let client = env.client("client").await;
    let n = 2000;
    let conns = 40;
    let mut tasks = vec![];
    for c in 0..conns {
        let mut send = client.h1(VIP).await;
        tasks.push(tokio::spawn(async move {
            let mut out = vec![];
            for _ in (c..n).step_by(conns) {
                out.push(timed_get(&mut send, "/").await);
            }
            out
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let aborted = all.iter().filter(|(s, _)| *s == 503).count();
    let pct = aborted as f64 * 100.0 / n as f64;
    assert!((17.0..=23.0).contains(&pct), "aborted {pct}% (want 20 ± 3)");
    let m = env.metrics();
    let delayed = metric_sum(&m, "ambit_requests_total", &[("response_flags", "DI")])
        + metric_sum(&m, "ambit_requests_total", &[("response_flags", "DI,FI")]);
    let pct = delayed * 100.0 / n as f64;
    assert!((47.0..=53.0).contains(&pct), "delayed {pct}% (want 50 ± 3)");
    // Every delayed request took at least the delay; few others are that slow.
    let slow = all
        .iter()
        .filter(|(_, d)| *d >= Duration::from_millis(100))
        .count() as f64;
    assert!(
        slow >= delayed && slow <= delayed + n as f64 * 0.05,
        "slow {slow}, delayed {delayed}"
    );
    let mut delays: Vec<_> = all
        .iter()
        .filter(|(_, d)| *d >= Duration::from_millis(100))
        .map(|(_, d)| *d)
        .collect();
    delays.sort();
    let median = delays[delays.len() / 2];
    assert!(
        within(median, Duration::from_millis(110), 0.2),
        "median delayed request took {median:?}"
    );
    assert!(
        metric_sum(
            &m,
            "ambit_requests_total",
            &[("response_code", "503"), ("response_flags", "FI")]
        ) > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overflow_fails_fast_with_uo() {
    if skip_unless_root() {
        return;
    }
    let (mut env, apps) = env_with("overflow", 1).await;
    apps[0].set(Behavior {
        delay: Duration::from_millis(500),
        ..Default::default()
    });
    env.extra = json!({"backendPolicies": policy(json!({"connectionPool": {"maxRequests": 2}}))});
    env.start_waypoint(&[]);
    let client = env.client("client").await;
    let send = client.h2(VIP).await;
    let mut tasks = vec![];
    for _ in 0..10 {
        let mut send = send.clone();
        tasks.push(tokio::spawn(async move {
            send.ready().await.unwrap();
            let t = Instant::now();
            let req = http::Request::get("http://api.shop/")
                .body(ambit_waypoint::body::empty())
                .unwrap();
            let (s, _, _) = read(send.send_request(req).await.unwrap()).await;
            (s, t.elapsed())
        }));
    }
    let mut results = vec![];
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let ok = results.iter().filter(|(s, _)| *s == 200).count();
    let rejected: Vec<_> = results.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!(ok, 2, "{results:?}");
    assert_eq!(rejected.len(), 8, "{results:?}");
    assert!(
        rejected
            .iter()
            .all(|(_, d)| *d < Duration::from_millis(300)),
        "overflow answers at once: {results:?}"
    );
    let m = env.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "ambit_requests_total",
            &[("response_code", "503"), ("response_flags", "UO")]
        ),
        8.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_is_ejected_for_the_ejection_time() {
    if skip_unless_root() {
        return;
    }
    let (mut env, apps) = env_with("eject", 2).await;
    apps[1].set(Behavior {
        fail_percent: 100,
        ..Default::default()
    });
    env.extra = json!({"backendPolicies": policy(json!({
        "loadBalancer": {"type": "RoundRobin"},
        "outlierDetection": {"consecutive5xxErrors": 3, "interval": "100ms", "baseEjectionTime": "2s", "maxEjectionPercent": 50}}))});
    env.start_waypoint(&[]);
    let client = env.client("client").await;
    let mut send = client.h1(VIP).await;
    let mut fails = 0;
    let start = Instant::now();
    for _ in 0..40 {
        let (s, _) = timed_get(&mut send, "/").await;
        if s != 200 {
            fails += 1;
        }
    }
    assert_eq!(
        fails, 3,
        "three 5xx eject the endpoint, then it gets nothing"
    );
    // Still ejected: only the healthy endpoint answers until the ejection time has passed.
    while start.elapsed() < Duration::from_millis(1500) {
        let (s, _) = timed_get(&mut send, "/").await;
        assert_eq!(s, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(apps[1].hits(), 3);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for _ in 0..10 {
        timed_get(&mut send, "/").await;
    }
    assert!(
        apps[1].hits() > 3,
        "back in rotation after the ejection time"
    );
}
