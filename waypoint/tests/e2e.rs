//! The full L7 path, end to end, on real network namespaces (root; CI runs as root): client
//! pod -> source ztunnel (captures; the Service has a waypoint) -> HBONE -> the real waypoint
//! binary -> HBONE with the waypoint's identity -> destination ztunnel -> backend pods.
//! Config from files (ztunnels and waypoint), and from the operator's control server
//! in-process (stream mode for all three).
#[path = "e2e/apps.rs"]
mod apps;
#[path = "e2e/harness.rs"]
mod harness;
#[path = "e2e/operator.rs"]
mod operator;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::time::Duration;

use ambit_testkit::mesh::metric_sum;
use apps::*;
use harness::*;

const OPENED: &str = "ambit_tcp_connections_opened_total";

/// Not a test: the end-to-end tests re-execute this binary as a ztunnel (see
/// [`harness::ztunnel_cmd`]). Run on its own, it does nothing.
#[test]
#[ignore = "entry point of the ztunnel processes the end-to-end tests start"]
fn ztunnel_main() {
    ztunnel_entry();
}

fn skip_unless_root() -> bool {
    if !ambit_testkit::is_root() {
        eprintln!("skipping: needs root (network namespaces)");
        return true;
    }
    false
}

fn vip(ip: &str) -> SocketAddr {
    SocketAddr::new(ip.parse().unwrap(), 80)
}

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

/// Share of `want` among the backends in `results`, in percent; every status must be 200.
fn share(results: &[(u16, String)], want: &str) -> f64 {
    let bad: Vec<_> = results.iter().filter(|r| r.0 != 200).take(5).collect();
    assert!(bad.is_empty(), "non-200 answers, e.g. {bad:?}");
    100.0 * results.iter().filter(|r| r.1 == want).count() as f64 / results.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_mode_split_retries_l7_deny_and_identities_end_to_end() {
    if skip_unless_root() {
        return;
    }
    let (mut m, pods) = scenario("wpe2e");
    write_config(&m, &l7((90, 10)));
    m.start_ztunnel(0).unwrap();
    m.start_ztunnel(1).unwrap();
    let ns = |i: usize| &m.pod(i).pod.ns;
    let _v1 = App::start(ns(pods.v1), "api-v1", 8080);
    let _v2 = App::start(ns(pods.v2), "api-v2", 8080);
    let flaky_ok = App::start(ns(pods.flaky_ok), "flaky-ok", 8080);
    let flaky_bad = App::start(ns(pods.flaky_bad), "flaky-bad", 8080);
    let config = m.config_path().into_os_string();
    let ca = |f: &str| m.dir.join(f).into_os_string();
    let mut args = os(&["--reload-interval", "100ms", "--config"]);
    args.extend([
        config,
        "--ca-cert".into(),
        ca("ca.pem"),
        "--ca-key".into(),
        ca("ca-key.pem"),
    ]);
    let _wp = start_waypoint(&m, &pods, &args);
    let client_ns = ns(pods.client);
    let (client_ip, wp_ip) = (m.ip(pods.client).to_string(), m.ip(pods.wp).to_string());

    // 90/10 subset split, measured at the client.
    let results = load(client_ns, vip(API_VIP), 2000, 4).await;
    let v2 = share(&results, "api-v2");
    eprintln!("split over {} requests: v2 {v2:.1}%", results.len());
    assert!((v2 - 10.0).abs() <= 3.0, "v2 got {v2:.1}% (want 10 ± 3)");
    assert!((share(&results, "api-v1") + v2 - 100.0).abs() < 1e-9);

    // The app's TCP peer is the waypoint; Forwarded / X-Forwarded-For name the client.
    let mut conn = connect(client_ns, vip(API_VIP)).await;
    let a = send(&mut conn, "GET", "/who").await;
    assert_eq!(a.status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(seen["peer"], wp_ip.as_str(), "{seen}");
    let fwd = seen["forwarded"].as_str().unwrap_or_default();
    assert!(fwd.starts_with(&format!("for=\"{client_ip}:")), "{seen}");
    assert_eq!(seen["xForwardedFor"], client_ip.as_str(), "{seen}");

    // The destination ztunnel saw the waypoint as the caller, never the client; the source
    // ztunnel sent the client's traffic to the waypoint over mTLS.
    let (wp_id, client_id) = (id(WP).to_string(), id("client").to_string());
    let dst = m.metrics(1);
    for backend in ["api-v1", "api-v2"] {
        let from_wp = [
            ("reporter", "destination"),
            ("source_principal", wp_id.as_str()),
            ("destination_workload", backend),
        ];
        assert!(
            metric_sum(&dst, OPENED, &from_wp) >= 1.0,
            "{backend}: {dst}"
        );
    }
    let from_client = [
        ("reporter", "destination"),
        ("source_principal", client_id.as_str()),
    ];
    assert_eq!(metric_sum(&dst, OPENED, &from_client), 0.0, "{dst}");
    let to_wp = [
        ("reporter", "source"),
        ("source_principal", client_id.as_str()),
        ("destination_principal", wp_id.as_str()),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert!(
        metric_sum(&m.metrics(0), OPENED, &to_wp) >= 1.0,
        "{}",
        m.metrics(0)
    );

    // A retry policy masks an endpoint that fails every request.
    flaky_bad
        .fail
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let results = load(client_ns, vip(FLAKY_VIP), 200, 2).await;
    let failed: Vec<_> = results.iter().filter(|r| r.0 != 200).collect();
    assert!(
        failed.is_empty(),
        "{failed:?}; waypoint access log: {:#?}",
        failed_requests(&m)
    );
    assert_eq!(share(&results, "flaky-ok"), 100.0);
    assert!(
        flaky_bad.hits() >= 1,
        "the failing endpoint was never tried"
    );
    assert!(flaky_ok.hits() >= 200);
    let wpm = waypoint_metrics(&m, &pods);
    let retries = metric_sum(&wpm, "ambit_upstream_retries_total", &[]);
    eprintln!(
        "flaky: {} failures at flaky-bad, {retries} retries",
        flaky_bad.hits()
    );
    assert!(
        retries >= flaky_bad.hits() as f64,
        "retries {retries}:\n{wpm}"
    );

    // L7 authorization: POST /admin from the client is denied by the waypoint with 403.
    let denied = send(&mut conn, "POST", "/admin").await;
    assert_eq!(
        (denied.status, denied.reason.as_str()),
        (403, "denied_by_policy")
    );
    assert_eq!(send(&mut conn, "GET", "/admin").await.status, 200);
    assert_eq!(send(&mut conn, "POST", "/orders").await.status, 200);
    let rbac = [("response_code", "403"), ("response_flags", "RBAC")];
    assert_eq!(
        metric_sum(&waypoint_metrics(&m, &pods), "ambit_requests_total", &rbac),
        1.0
    );

    // The admin page shows what it serves, in the shape ambitctl reads.
    let dump = waypoint_admin(&m, &pods, "/config_dump");
    assert_eq!(dump["configSource"]["kind"], "file", "{dump}");
    let routes: Vec<&str> = dump["routes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(routes, ["api", "flaky"], "{dump}");
    let api = dump["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "api");
    assert_eq!(api.unwrap()["route"], "default/api", "{dump}");
    let backends = dump["backends"].as_array().unwrap();
    let flaky = backends
        .iter()
        .find(|b| b["name"].as_str().unwrap().starts_with("default/flaky:80"))
        .unwrap_or_else(|| panic!("no flaky backend: {dump}"));
    let eps: Vec<&str> = flaky["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["workload"].as_str().unwrap())
        .collect();
    assert_eq!(eps.len(), 2, "{flaky}");
    assert!(flaky["endpoints"][0]["ejected"].is_boolean(), "{flaky}");
    let certs = waypoint_admin(&m, &pods, "/certs");
    assert_eq!(certs[0]["identity"], wp_id.as_str());
    assert!(certs[0]["expiresInSeconds"].as_i64().unwrap() > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_mode_waits_for_its_first_config_applies_updates_and_nacks_bad_ones() {
    if skip_unless_root() {
        return;
    }
    let (m, pods) = scenario("wpe2es");
    let mut op = operator::Operator::new(&m);
    let ns = |i: usize| &m.pod(i).pod.ns;
    let _v1 = App::start(ns(pods.v1), "api-v1", 8080);
    let _v2 = App::start(ns(pods.v2), "api-v2", 8080);

    // Readiness waits for the first config: with the operator not up yet the waypoint keeps
    // retrying and opens no port; once it serves, the waypoint becomes ready.
    let token = op.waypoint_token(&m);
    let mut args = os(&["--control-plane", &op.addr.to_string(), "--root-cert"]);
    args.extend([
        m.dir.join("ca.pem").into(),
        "--token-file".into(),
        token.into(),
    ]);
    let mut wp = spawn_waypoint(&m, &pods, &args);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(waypoint_readiness(&m, &pods), None, "{}", waypoint_log(&m));
    assert!(wp.try_wait().unwrap().is_none(), "{}", waypoint_log(&m));
    assert!(
        waypoint_log(&m).contains("config stream down"),
        "{}",
        waypoint_log(&m)
    );
    op.serve(&m);
    op.publish_all(&m, &l7((90, 10)));
    wait_waypoint_ready(&m, &pods, &mut wp, Duration::from_secs(30));
    let _z0 = op.start_ztunnel(&m, 0);
    let _z1 = op.start_ztunnel(&m, 1);
    let client_ns = ns(pods.client);

    // Config and certificates from the operator: the split works through the waypoint.
    let results = load(client_ns, vip(API_VIP), 400, 2).await;
    let v2 = share(&results, "api-v2");
    assert!(
        v2 > 2.0 && v2 < 25.0,
        "v2 got {v2:.1}% of 400 (want about 10)"
    );
    let dump = waypoint_admin(&m, &pods, "/config_dump");
    let src = &dump["configSource"];
    assert_eq!(src["kind"], "controlPlane", "{dump}");
    assert_eq!(src["connected"], true, "{dump}");
    assert_eq!(src["target"], format!("waypoint/{NS}/{WP}"), "{dump}");
    let certs = waypoint_admin(&m, &pods, "/certs");
    assert_eq!(certs[0]["identity"], id(WP).to_string());

    // A hot update: everything to v2. A connection opened before it keeps working.
    let mut conn = connect(client_ns, vip(API_VIP)).await;
    assert_eq!(send(&mut conn, "GET", "/").await.status, 200);
    let version_before = dump["version"].as_u64().unwrap();
    op.publish(
        &operator::waypoint_target(),
        &mesh_config(&m, &l7((0, 100))),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let a = send(&mut conn, "GET", "/").await;
        assert_eq!(a.status, 200);
        if load(client_ns, vip(API_VIP), 20, 1)
            .await
            .iter()
            .all(|r| r.1 == "api-v2")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the update never applied:\n{}",
            waypoint_log(&m)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dump = waypoint_admin(&m, &pods, "/config_dump");
    assert!(dump["version"].as_u64().unwrap() > version_before, "{dump}");

    // A config the waypoint rejects (a route to an unknown Service) is NACKed, and the last
    // good config stays in force.
    let mut bad = l7((100, 0));
    bad["routes"][1]["service"]["name"] = "nope".into();
    op.publish(&operator::waypoint_target(), &mesh_config(&m, &bad));
    let nacked = || op.nacks().iter().any(|n| n.contains("default/nope"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !nacked() {
        assert!(
            std::time::Instant::now() < deadline,
            "no NACK recorded: {:?}",
            op.nacks()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let results = load(client_ns, vip(API_VIP), 50, 1).await;
    assert_eq!(share(&results, "api-v2"), 100.0);
    let wpm = waypoint_metrics(&m, &pods);
    assert!(
        metric_sum(&wpm, "ambit_config_reloads_total", &[("result", "error")]) >= 1.0,
        "{wpm}"
    );
    let dump = waypoint_admin(&m, &pods, "/config_dump");
    assert_eq!(dump["configSource"]["rejected"], 1, "{dump}");

    // The L7 DENY travels through the stream too.
    assert_eq!(send(&mut conn, "POST", "/admin").await.status, 403);

    // The operator goes away: the waypoint reports the stream down and keeps serving.
    op.stop();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while waypoint_admin(&m, &pods, "/config_dump")["configSource"]["connected"] != false {
        assert!(std::time::Instant::now() < deadline, "{}", waypoint_log(&m));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let results = load(client_ns, vip(API_VIP), 50, 1).await;
    assert_eq!(share(&results, "api-v2"), 100.0);
    assert_eq!(send(&mut conn, "POST", "/admin").await.status, 403);
}
