//! `status`, `config dump`, `certs` and `top --once` against a real ztunnel (started by the
//! testkit mesh harness in a network namespace), found through a sandbox state file.
//! Needs root (CI runs as root).
mod common;

use std::sync::atomic::{AtomicBool, Ordering};

use ambit_testkit::apps::{ask_once, LineApp};
use ambit_testkit::mesh::Mesh;
use common::*;
use serde_json::json;

const VIP: &str = "10.96.0.20";

#[test]
fn status_config_dump_certs_and_top_read_a_running_ztunnel() {
    let mut m = Mesh::new(
        "ctl",
        1,
        vec![env!("CARGO_BIN_EXE_ambitctl").into(), "__ztunnel".into()],
    )
    .unwrap();
    let client = m
        .add_pod(0, "client", "default", "sa-client", &[("app", "client")])
        .unwrap();
    let server = m
        .add_pod(0, "server", "default", "sa-server", &[("app", "server")])
        .unwrap();
    m.services.push(
        json!({"name": "server", "namespace": "default", "vips": [VIP],
        "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "server"}}),
    );
    m.enroll(client).unwrap();
    m.enroll(server).unwrap();
    m.start_ztunnel(0).unwrap();
    let _app = LineApp::start(&m.pod(server).pod.ns, "server", 8080).unwrap();
    let dst = format!("{VIP}:80").parse().unwrap();
    ask_once(&m.pod(client).pod.ns, dst, "hello").expect("traffic through the mesh");

    let node = &m.topo.nodes[0];
    let state = m.dir.join("state.json");
    let write_state = |extra: Vec<serde_json::Value>| {
        let mut nodes = vec![json!({"name": "node-0", "ztunnelAdmin": "127.0.0.1:15000",
            "ztunnelMetrics": format!("{}:15020", node.ip), "netns": node.ns.path()})];
        nodes.extend(extra);
        std::fs::write(&state, json!({"nodes": nodes}).to_string()).unwrap();
    };
    write_state(vec![]);
    let st = state.to_str().unwrap();

    // status: reachable, config loaded, both pods captured, certificates valid for hours.
    let s = ambitctl(&["status", "-o", "json", "--sandbox-state", st])
        .ok()
        .json();
    assert_eq!(s["healthy"], true, "{s:#}");
    let n = &s["nodes"][0];
    assert_eq!(
        (
            n["name"].as_str(),
            n["reachable"].as_bool(),
            n["configLoaded"].as_bool()
        ),
        (Some("node-0"), Some(true), Some(true)),
        "{n:#}"
    );
    let pods: Vec<&str> = n["capturedPods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(pods.len(), 2, "{pods:?}");
    assert!(
        n["certsValidUntil"].as_str().unwrap().starts_with("20"),
        "{n:#}"
    );
    assert!(n["certsExpireInSeconds"].as_i64().unwrap() > 3600, "{n:#}");
    assert!(n["services"].as_u64().unwrap() >= 1);
    let table = ambitctl(&["status", "--sandbox-state", st]).ok();
    assert!(
        table.stdout.contains("node-0") && table.stdout.contains("up"),
        "{}",
        table.stdout
    );

    // config dump and certs.
    let dump = ambitctl(&[
        "config",
        "dump",
        "ztunnel",
        "node-0",
        "-o",
        "json",
        "--sandbox-state",
        st,
    ])
    .ok()
    .json();
    assert_eq!(dump["node"], "node-0");
    assert!(
        dump["state"]["workloads"].as_object().unwrap().len() >= 2,
        "{dump:#}"
    );
    let certs = ambitctl(&["certs", "node-0", "-o", "json", "--sandbox-state", st])
        .ok()
        .json();
    let ids: Vec<&str> = certs
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["identity"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"spiffe://cluster.local/ns/default/sa/sa-client"),
        "{ids:?}"
    );
    let table = ambitctl(&["certs", "node-0", "--sandbox-state", st]).ok();
    assert!(
        table
            .stdout
            .contains("spiffe://cluster.local/ns/default/sa/sa-server"),
        "{}",
        table.stdout
    );
    assert_eq!(
        ambitctl(&["certs", "node-9", "--sandbox-state", st]).code,
        2
    );

    // top: traffic during the interval shows up as a connection rate for the Service.
    let stop = AtomicBool::new(false);
    let (top, answered) = std::thread::scope(|sc| {
        let ns = &m.pod(client).pod.ns;
        let stop = &stop;
        let traffic = sc.spawn(move || {
            let mut ok = 0;
            while !stop.load(Ordering::SeqCst) {
                if ask_once(ns, dst, "tick").is_ok() {
                    ok += 1;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            ok
        });
        let top = ambitctl(&[
            "top",
            "--once",
            "--interval",
            "1500ms",
            "-o",
            "json",
            "--sandbox-state",
            st,
        ]);
        stop.store(true, Ordering::SeqCst);
        (top, traffic.join().unwrap())
    });
    assert!(answered > 0, "the traffic generator got no answer");
    let top = top.ok().json();
    let svc = top["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["service"] == "server.default.svc")
        .unwrap_or_else(|| panic!("{top:#}"));
    assert_eq!(svc["protocol"], "TCP");
    assert!(
        svc["connectionsPerSecond"].as_f64().unwrap() > 0.0,
        "{top:#}"
    );
    assert!(svc["bytesPerSecond"].as_f64().unwrap() > 0.0, "{top:#}");
    let table = ambitctl(&[
        "traffic",
        "--once",
        "--interval",
        "200ms",
        "--sandbox-state",
        st,
    ])
    .ok();
    assert!(table.stdout.starts_with("SERVICE"), "{}", table.stdout);

    // A node whose ztunnel does not answer: reported, and exit 3.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = closed.local_addr().unwrap().to_string();
    drop(closed);
    write_state(vec![json!({"name": "node-dead", "ztunnelAdmin": dead})]);
    let s = ambitctl(&["status", "-o", "json", "--sandbox-state", st]);
    assert_eq!(s.code, 3, "{}", s.stderr);
    let s = s.json();
    assert_eq!(s["healthy"], false);
    assert_eq!(s["nodes"][1]["reachable"], false);
    assert_eq!(s["nodes"][0]["healthy"], true);
    assert_eq!(
        ambitctl(&[
            "config",
            "dump",
            "ztunnel",
            "node-dead",
            "--sandbox-state",
            st
        ])
        .code,
        3
    );
}
