//! The full L7 path on real network namespaces: a client pod on node 0, real ztunnels on both
//! nodes (this test binary re-executed as ztunnel, running ztunnel's `main` verbatim: cargo
//! only builds the `waypoint` binary for this crate's tests), the real `waypoint` binary in its
//! own, uncaptured pod on node 1, and HTTP apps in captured backend pods on node 1.

use std::ffi::OsString;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_core::meshconfig::MeshConfig;
use ambit_core::Identity;
use ambit_testkit::mesh::{node_name, Mesh};
use ambit_testkit::Child;
use serde_json::{json, Value};

use crate::apps::get_in;

pub const NS: &str = "default";
pub const API_VIP: &str = "10.96.0.10";
pub const FLAKY_VIP: &str = "10.96.0.11";
/// The waypoint's name and service account (the operator makes them equal).
pub const WP: &str = "waypoint";

/// Argv that makes this test binary run `ztunnel_main` with the arguments after `--`.
pub fn ztunnel_cmd() -> Vec<OsString> {
    let exe = std::env::current_exe().expect("the test binary's path");
    let args = [
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads",
        "1",
        "ztunnel_main",
        "--",
    ];
    std::iter::once(exe.into_os_string())
        .chain(args.iter().map(OsString::from))
        .collect()
}

/// Runs ztunnel when this binary was started by [`ztunnel_cmd`] (arguments after `--`).
pub fn ztunnel_entry() {
    let args: Vec<OsString> = std::env::args_os().collect();
    let Some(at) = args.iter().position(|a| a == "--") else {
        return;
    };
    let rest = args[at + 1..].to_vec();
    if rest.is_empty() {
        return;
    }
    if let Err(e) = ambit_ztunnel::cli::main_with_args(rest) {
        eprintln!("ztunnel: {e:#}");
        std::process::exit(1);
    }
}

pub fn id(sa: &str) -> Identity {
    Identity::new("cluster.local", NS, sa).unwrap()
}

/// Pods of the scenario (indices into `mesh.pods`).
pub struct Pods {
    pub client: usize,
    pub wp: usize,
    pub v1: usize,
    pub v2: usize,
    pub flaky_ok: usize,
    pub flaky_bad: usize,
}

/// Builds the mesh: pods, Services (`api` and `flaky` use the waypoint), the 90/10 route,
/// the retrying route, a generous retry budget for `flaky`, and an L7 DENY of `POST /admin`
/// from the client. Captured pods are enrolled.
pub fn scenario(tag: &str) -> (Mesh, Pods) {
    let mut m = Mesh::new(tag, 2, ztunnel_cmd()).expect("building the mesh (needs root)");
    let client = m.add_pod(0, "client", NS, "client", &[]).unwrap();
    let wp = m
        .add_pod(1, "waypoint", NS, WP, &[("ambit.dev/waypoint", WP)])
        .unwrap();
    // The waypoint speaks HBONE itself; capturing it would loop its traffic.
    m.pods[wp].captured = false;
    let mut backend = |name: &str, labels: &[(&str, &str)]| {
        m.add_pod(1, name, NS, &format!("sa-{name}"), labels)
            .unwrap()
    };
    let v1 = backend("api-v1", &[("app", "api"), ("version", "v1")]);
    let v2 = backend("api-v2", &[("app", "api"), ("version", "v2")]);
    let flaky_ok = backend("flaky-ok", &[("app", "flaky")]);
    let flaky_bad = backend("flaky-bad", &[("app", "flaky")]);
    let waypoint = json!({"name": WP, "namespace": NS});
    let svc = |name: &str, vip: &str, app: &str| {
        json!({"name": name, "namespace": NS, "vips": [vip], "ports": [{"port": 80, "targetPort": 8080}],
            "selector": {"app": app}, "waypoint": waypoint})
    };
    m.services = vec![
        svc("api", API_VIP, "api"),
        svc("flaky", FLAKY_VIP, "flaky"),
        json!({"name": WP, "namespace": NS, "vips": ["10.96.0.99"], "ports": [{"port": 15008}],
            "selector": {"ambit.dev/waypoint": WP}}),
    ];
    m.policies = vec![json!({
        "name": "deny-admin-writes", "namespace": NS, "selector": {"app": "api"}, "action": "DENY",
        "rules": [{"from": [{"principals": [id("client").to_string()]}],
                   "to": [{"methods": ["POST"], "paths": ["/admin"]}]}]
    })];
    for p in [client, v1, v2, flaky_ok, flaky_bad] {
        m.enroll(p).unwrap();
    }
    let pods = Pods {
        client,
        wp,
        v1,
        v2,
        flaky_ok,
        flaky_bad,
    };
    (m, pods)
}

/// Routes and backend policies (the harness's config has neither).
pub fn l7(split: (u32, u32)) -> Value {
    json!({
        "routes": [
            {"name": "api", "namespace": NS, "service": {"name": "api", "namespace": NS}, "rules": [
                {"name": "canary", "backends": [
                    {"service": "api", "subset": {"version": "v1"}, "weight": split.0},
                    {"service": "api", "subset": {"version": "v2"}, "weight": split.1}]}]},
            {"name": "flaky", "namespace": NS, "service": {"name": "flaky", "namespace": NS}, "rules": [
                {"backends": [{"service": "flaky"}], "timeout": "5s",
                 "retries": {"attempts": 3, "perTryTimeout": "1s", "retryOn": ["5xx"]}}]}
        ],
        "backendPolicies": [
            {"name": "flaky", "namespace": NS, "service": {"name": "flaky", "namespace": NS},
             "retryBudget": {"percentCanRetry": 100, "minRetriesPerSecond": 100}}
        ]
    })
}

/// The mesh's config plus `extra` top-level fields.
pub fn config(m: &Mesh, extra: &Value) -> Value {
    let mut cfg = m.config(&m.trust_domain);
    for (k, v) in extra.as_object().unwrap() {
        cfg[k] = v.clone();
    }
    cfg
}

pub fn mesh_config(m: &Mesh, extra: &Value) -> MeshConfig {
    serde_json::from_value(config(m, extra)).unwrap()
}

/// Writes the config file ztunnels and the waypoint read, atomically.
pub fn write_config(m: &Mesh, extra: &Value) {
    let tmp = m.config_path().with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&config(m, extra)).unwrap()).unwrap();
    std::fs::rename(&tmp, m.config_path()).unwrap();
}

/// Access-log lines (JSON) of requests the waypoint answered with a status other than 200.
pub fn failed_requests(m: &Mesh) -> Vec<String> {
    std::fs::read_to_string(m.dir.join("access.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.contains("\"response_code\":200"))
        .map(str::to_string)
        .collect()
}

pub fn waypoint_log(m: &Mesh) -> String {
    std::fs::read_to_string(m.dir.join("waypoint.log")).unwrap_or_default()
}

/// Starts the real waypoint binary in its pod with `args` (plus name, namespace, trust domain)
/// and waits until its readiness answers 200.
pub fn start_waypoint(m: &Mesh, pods: &Pods, args: &[OsString]) -> Child {
    let mut child = spawn_waypoint(m, pods, args);
    wait_waypoint_ready(m, pods, &mut child, Duration::from_secs(30));
    child
}

pub fn spawn_waypoint(m: &Mesh, pods: &Pods, args: &[OsString]) -> Child {
    let log = std::fs::File::create(m.dir.join("waypoint.log")).unwrap();
    let access = std::fs::File::create(m.dir.join("access.log")).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_waypoint"));
    cmd.args([
        "--name",
        WP,
        "--namespace",
        NS,
        "--trust-domain",
        "cluster.local",
    ])
    .arg("--access-log")
    .args(args)
    .env(
        "RUST_LOG",
        std::env::var("AMBIT_TEST_LOG").unwrap_or_else(|_| "info".into()),
    )
    .stdin(Stdio::null())
    .stdout(access)
    .stderr(log);
    m.pod(pods.wp).pod.ns.spawn(cmd).unwrap()
}

/// The waypoint's readiness answer (status), or `None` when nothing listens.
pub fn waypoint_readiness(m: &Mesh, pods: &Pods) -> Option<u16> {
    let p = &m.pod(pods.wp).pod;
    let ready = SocketAddr::new(IpAddr::V4(p.ip), 15021);
    m.http_get(p.node, ready, "/healthz/ready")
        .ok()
        .map(|r| r.0)
}

pub fn wait_waypoint_ready(m: &Mesh, pods: &Pods, child: &mut Child, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while waypoint_readiness(m, pods) != Some(200) {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("waypoint exited with {status}:\n{}", waypoint_log(m));
        }
        assert!(
            Instant::now() < deadline,
            "waypoint not ready:\n{}",
            waypoint_log(m)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The waypoint's admin page (localhost:15000 inside its pod) as JSON.
pub fn waypoint_admin(m: &Mesh, pods: &Pods, path: &str) -> Value {
    let (status, body) = get_in(
        &m.pod(pods.wp).pod.ns,
        "127.0.0.1:15000".parse().unwrap(),
        path,
    )
    .unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

pub fn waypoint_metrics(m: &Mesh, pods: &Pods) -> String {
    let p = &m.pod(pods.wp).pod;
    m.http_get(p.node, SocketAddr::new(IpAddr::V4(p.ip), 15020), "/metrics")
        .unwrap()
        .1
}

pub fn node(i: usize) -> String {
    node_name(i)
}
