//! The node agent and the real CNI plugin on a simulated node: pods are captured by the
//! time CNI ADD returns, namespace labels capture and release running pods without
//! restarts, and ztunnel outages follow the fail-closed / fail-open setting.
mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use ambit_cni::agent::Agent;
use ambit_testkit::mesh::{metric_sum, node_name, Mesh};
use ambit_testkit::{contains, Capture};
use common::cni::*;
use common::*;
use serde_json::json;

fn write_cluster(m: &Mesh, enrolled: &[&str]) {
    let namespaces: serde_json::Map<String, serde_json::Value> = ["mesh", "plain"]
        .iter()
        .map(|ns| {
            let labels = if enrolled.contains(ns) {
                json!({"ambit.dev/dataplane-mode": "ambient"})
            } else {
                json!({})
            };
            (ns.to_string(), labels)
        })
        .collect();
    let pods: Vec<_> = m
        .pods
        .iter()
        .map(|p| json!({"uid": format!("{}/{}", p.namespace, p.pod.name), "name": p.pod.name, "namespace": p.namespace,
            "serviceAccount": p.service_account, "node": node_name(p.pod.node), "ips": [p.pod.ip.to_string()]}))
        .collect();
    let path = m.dir.join("cluster.json");
    std::fs::write(
        path.with_extension("tmp"),
        json!({"namespaces": namespaces, "pods": pods}).to_string(),
    )
    .unwrap();
    std::fs::rename(path.with_extension("tmp"), path).unwrap();
}

/// A 2-node mesh in node-agent mode: pods given as (node, name, namespace), each with service
/// account `sa-<name>`; config and cluster state written (namespace `mesh` enrolled), both
/// ztunnels up, and one agent per node.
fn agent_mesh(tag: &str, pods: &[(usize, &str, &str)]) -> (Mesh, Vec<usize>, Agent, Agent) {
    let mut m = mesh(tag, 2);
    m.omit_netns = true;
    let idx = pods
        .iter()
        .map(|(node, name, ns)| {
            m.add_pod(*node, name, ns, &format!("sa-{name}"), &[])
                .unwrap()
        })
        .collect();
    m.write_config().unwrap();
    write_cluster(&m, &["mesh"]);
    for node in 0..2 {
        let opts = m.agent_mode_opts(node);
        m.start_ztunnel_with(node, opts).unwrap();
    }
    let (agent0, agent1) = (start_agent(&m, 0), start_agent(&m, 1));
    (m, idx, agent0, agent1)
}

/// Invokes the plugin exactly as a container runtime does. Returns (exit ok, stdout, stderr).
fn cni_add(m: &Mesh, pod: usize, policy: &str) -> (bool, String, String) {
    let add = m.cni_add(
        pod,
        Command::new(cni_binary()),
        &plugin_socket(m, m.pod(pod).pod.node),
        policy,
    );
    let prev = add.prev_result;
    let mut child = { add.command }.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(add.stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        !out.status.success() || String::from_utf8_lossy(&out.stdout) == prev,
        "prevResult must pass through unchanged"
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

fn dump(m: &Mesh, pod: usize) -> String {
    ambit_cni::redirect::dump(&m.pod(pod).pod.ns.path()).unwrap()
}

#[test]
fn new_pods_are_captured_by_the_time_add_returns_and_labels_capture_and_release_running_pods() {
    let (m, pods, agent0, _agent1) = agent_mesh(
        "cniagent",
        &[(0, "a", "mesh"), (1, "b", "mesh"), (0, "p", "plain")],
    );
    let [a, b, p] = pods[..] else { unreachable!() };
    let _app = serve(&m, b, 8080);
    let p_pristine = dump(&m, p);

    // New pods in an enrolled namespace: captured when ADD returns, traffic is mTLS at once.
    for pod in [b, a] {
        let (ok, _, err) = cni_add(&m, pod, "closed");
        assert!(ok, "ADD failed: {err}");
    }
    let wire = Capture::start(&m.topo.fabric).unwrap();
    let answer = call(&m, a, m.ip(b).into(), 8080, "secret-after-add").unwrap();
    assert_eq!(answer.2, "secret-after-add");
    assert!(
        !contains(&wire.stop(), b"secret-after-add"),
        "traffic right after ADD must be encrypted"
    );

    // A pod in a plain namespace: ADD succeeds, nothing is touched.
    let (ok, _, _) = cni_add(&m, p, "closed");
    assert!(ok);
    assert_eq!(dump(&m, p), p_pristine);
    let before = metric_sum(
        &m.metrics(1),
        "ambit_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    call(&m, p, m.ip(b).into(), 8080, "plain").unwrap();
    let after = metric_sum(
        &m.metrics(1),
        "ambit_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    assert_eq!(before, after, "an un-enrolled pod's traffic is not mTLS");

    // Labelling the namespace captures the running pod, without restarting it.
    write_cluster(&m, &["mesh", "plain"]);
    assert!(
        eventually(Duration::from_secs(10), || agent0
            .captured()
            .contains(&"plain/p".to_string())),
        "{:?}",
        agent0.captured()
    );
    call(&m, p, m.ip(b).into(), 8080, "now meshed").unwrap();
    let meshed = metric_sum(
        &m.metrics(1),
        "ambit_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    assert!(meshed > after, "the labelled pod's traffic is mTLS now");

    // Removing the label releases it and leaves its namespace exactly as it was.
    write_cluster(&m, &["mesh"]);
    assert!(eventually(Duration::from_secs(10), || !agent0
        .captured()
        .contains(&"plain/p".to_string())));
    assert_eq!(dump(&m, p), p_pristine);
    assert_eq!(
        call(&m, p, m.ip(b).into(), 8080, "released").unwrap().2,
        "released"
    );
}

#[test]
fn ztunnel_outages_follow_the_failure_policy_and_restarts_lose_no_pod() {
    let (mut m, pods, agent0, _agent1) = agent_mesh(
        "cnifail",
        &[
            (0, "a", "mesh"),
            (1, "b", "mesh"),
            (0, "c", "mesh"),
            (0, "d", "mesh"),
        ],
    );
    let [a, b, c, d] = pods[..] else {
        unreachable!()
    };
    let _app = serve(&m, b, 8080);
    for pod in [a, b] {
        assert!(cni_add(&m, pod, "closed").0);
    }
    assert!(call(&m, a, m.ip(b).into(), 8080, "up").is_ok());

    // ztunnel down on node 0.
    m.stop_ztunnel(0);
    let c_pristine = dump(&m, c);
    let (ok, out, _) = cni_add(&m, c, "closed");
    assert!(!ok, "fail-closed must fail the pod");
    assert!(
        out.contains("\"code\":11") || out.contains("\"code\": 11"),
        "{out}"
    );
    assert_eq!(dump(&m, c), c_pristine, "a refused pod is left untouched");
    let (ok, _, err) = cni_add(&m, d, "open");
    assert!(ok, "fail-open lets the pod start");
    assert!(err.contains("uncaptured"), "{err}");
    // The agent says why over its health endpoint and metrics.
    let health = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let health_addr = health.local_addr().unwrap();
    ambit_cni::agent::health::serve(health, agent0.clone());
    agent0.set_installed(true);
    let (status, body) = http_get(health_addr, "/healthz/ready");
    assert!(
        status.contains("503") && body.contains("ztunnel is not reachable"),
        "{status} {body}"
    );
    let metrics = http_get(health_addr, "/metrics").1;
    let failures = metric_sum(
        &metrics,
        "ambit_cni_enrollment_failures_total",
        &[("reason", "ztunnel_unreachable")],
    );
    assert!(failures >= 2.0, "{metrics}");
    let adds = metric_sum(
        &metrics,
        "ambit_cni_plugin_request_duration_seconds_count",
        &[("request", "add"), ("result", "captured")],
    );
    assert!(adds >= 1.0, "{metrics}");

    // ztunnel back: the agent replays a and captures d, which started uncaptured.
    let opts = m.agent_mode_opts(0);
    m.start_ztunnel_with(0, opts).unwrap();
    assert!(
        eventually(Duration::from_secs(15), || {
            let got = agent0.captured();
            got.contains(&"mesh/a".to_string()) && got.contains(&"mesh/d".to_string())
        }),
        "{:?}",
        agent0.captured()
    );
    assert!(eventually(Duration::from_secs(10), || call(
        &m,
        a,
        m.ip(b).into(),
        8080,
        "again"
    )
    .is_ok()));
    assert!(http_get(health_addr, "/healthz/ready").0.contains("200"));
    assert!(
        metric_sum(
            &http_get(health_addr, "/metrics").1,
            "ambit_cni_enrolled_pods",
            &[]
        ) >= 2.0
    );
    assert!(eventually(Duration::from_secs(10), || call(
        &m,
        d,
        m.ip(b).into(),
        8080,
        "d too"
    )
    .is_ok()));
    let dump0 = m.admin(0, "/config_dump").unwrap();
    assert!(dump0["pods"].as_array().unwrap().len() >= 3, "{dump0}");

    // A restarted agent re-applies nothing twice.
    let before = dump(&m, a);
    let again = start_agent_again(&m);
    again.reconcile();
    assert_eq!(
        dump(&m, a),
        before,
        "no duplicate rules after an agent restart"
    );
}

fn http_get(addr: std::net::SocketAddr, path: &str) -> (String, String) {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    (
        head.lines().next().unwrap_or_default().to_string(),
        body.to_string(),
    )
}

fn start_agent_again(m: &Mesh) -> Agent {
    // A second agent instance on node 0, as after a restart (same sockets).
    start_agent(m, 0)
}

#[test]
fn ztunnel_restart_under_load_recaptures_every_pod_and_reports_the_gap() {
    let (mut m, pods, agent0, _agent1) = agent_mesh(
        "cnirestart",
        &[(0, "a", "mesh"), (1, "b", "mesh"), (0, "e", "mesh")],
    );
    let [a, b, e] = pods[..] else { unreachable!() };
    let _app = serve(&m, b, 8080);
    for pod in [a, b, e] {
        assert!(cni_add(&m, pod, "closed").0);
    }

    // A client loops requests while node 0's ztunnel is killed and restarted.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let successes = std::sync::Arc::new(std::sync::Mutex::new(Vec::<std::time::Instant>::new()));
    let (ns_path, dst) = (
        m.pod(a).pod.ns.path(),
        std::net::SocketAddr::from((m.ip(b), 8080)),
    );
    let client = {
        let (stop, successes) = (stop.clone(), successes.clone());
        std::thread::spawn(move || {
            let ns = ambit_core::netns::Netns::open(&ns_path).unwrap();
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let ok = ns
                    .run(|| std::net::TcpStream::connect_timeout(&dst, Duration::from_millis(500)))
                    .ok()
                    .and_then(|r| r.ok())
                    .and_then(|mut s| {
                        use std::io::{BufRead, BufReader};
                        s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
                        s.write_all(b"ping\n").ok()?;
                        let mut line = String::new();
                        BufReader::new(s)
                            .read_line(&mut line)
                            .ok()
                            .filter(|n| *n > 0)
                    })
                    .is_some();
                if ok {
                    successes.lock().unwrap().push(std::time::Instant::now());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    m.stop_ztunnel(0);
    let opts = m.agent_mode_opts(0);
    m.start_ztunnel_with(0, opts).unwrap();
    let recovered = eventually(Duration::from_secs(15), || {
        let dump = m.admin(0, "/config_dump").unwrap();
        dump["pods"].as_array().map(|p| p.len()) == Some(2)
    });
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    client.join().unwrap();
    assert!(
        recovered,
        "every pod of node 0 is served again: {}",
        m.admin(0, "/config_dump").unwrap()
    );
    assert_eq!(
        agent0.captured(),
        vec!["mesh/a".to_string(), "mesh/e".to_string()]
    );
    let times = successes.lock().unwrap().clone();
    let gap = times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default();
    let after = times.last().copied();
    eprintln!(
        "ztunnel restart under load: {} successful requests, longest gap {gap:?}",
        times.len()
    );
    assert!(
        after.is_some_and(|t| t.elapsed() < Duration::from_secs(2)),
        "requests succeed again after the restart"
    );
    assert!(gap < Duration::from_secs(15), "gap {gap:?}");
}
