//! The node agent binary in `--kube` mode on SIGTERM: a restart or upgrade (its DaemonSet
//! stays) leaves the plugin chained and pods captured; a restarted agent takes the pods
//! over without ztunnel ever dropping them, and acts on nothing before its initial lists
//! are loaded; an API server it cannot reach at shutdown leaves everything in place; and
//! removal (the DaemonSet is being deleted) leaves the node as it was before the mesh.
mod kube_harness;

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ambit_testkit::mesh::{node_name, Mesh};
use ambit_testkit::Child;
use kube_harness::*;
use serde_json::Value;

const KINDNET: &str = r#"{
  "cniVersion": "0.3.1",
  "name": "kindnet",
  "plugins": [
    {"type": "ptp", "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;

const HEALTH: &str = "127.0.0.1:15022";

/// Starts `ambit-cni-agent run --kube` inside node 0's namespace, logging to `log`.
fn spawn_agent(m: &Mesh, url: &str, log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambit-cni-agent"));
    cmd.arg("--cni-conf-dir")
        .arg(m.dir.join("net.d"))
        .arg("--cni-bin-dir")
        .arg(m.dir.join("bin"))
        .args([
            "run",
            "--node",
            &node_name(0),
            "--kube",
            "--api-server",
            url,
        ])
        .args(["--daemonset", "ambit-system/ambit-node-agent"])
        .arg("--ztunnel-socket")
        .arg(m.inpod_socket(0))
        .arg("--plugin-socket")
        .arg(plugin_socket(m, 0))
        .arg("--plugin-binary")
        .arg(env!("CARGO_BIN_EXE_ambit-cni"))
        .args(["--resync", "200ms", "--health-addr", HEALTH])
        .args(["--netns-prefix", m.topo.prefix()])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    m.topo.nodes[0].ns.spawn(cmd).unwrap()
}

fn readiness(m: &Mesh) -> (u16, String) {
    let addr: SocketAddr = HEALTH.parse().unwrap();
    m.http_get(0, addr, "/healthz/ready")
        .unwrap_or((0, "no answer".into()))
}

/// SIGTERM, then the exit status within 15 s.
fn sigterm(agent: &mut Child) -> std::process::ExitStatus {
    agent.terminate().unwrap();
    wait_exit(agent)
}

fn wait_exit(agent: &mut Child) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = agent.try_wait().unwrap() {
            return status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not exit"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn plugin_types(m: &Mesh) -> Vec<String> {
    let text = std::fs::read_to_string(m.dir.join("net.d/10-kindnet.conflist")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn sigterm_keeps_the_node_meshed_on_restart_and_cleans_it_on_removal() {
    let (m, pods) = agent_mesh(
        "cniuninst",
        1,
        &[(0, "a", "mesh"), (0, "c", "mesh"), (0, "s", "plain")],
    );
    let [a, c, s] = pods[..] else { unreachable!() };
    let pristine = [dump(&m, a), dump(&m, c)];
    let s_pristine = dump(&m, s);
    std::fs::create_dir_all(m.dir.join("net.d")).unwrap();
    std::fs::write(m.dir.join("net.d/10-kindnet.conflist"), KINDNET).unwrap();
    let api = Api::start();
    api.namespace("mesh", &[(MODE, "ambient")]);
    api.namespace("plain", &[]);
    api.pod(&m, s, &[], false);
    let mut uids = vec![api.pod(&m, a, &[], false), api.pod(&m, c, &[], false)];
    uids.sort();
    api.agent_daemonset();
    let _app = serve(&m, c, 8080);
    let (url, gate) = gate(&api, &m.topo.nodes[0].ns, api.server.addr());
    gate.store(PASS, Ordering::SeqCst);

    // First run: both pods captured, the plugin chained with the excluded namespaces.
    let log1 = m.dir.join("agent-1.log");
    let mut agent = spawn_agent(&m, &url, &log1);
    assert!(
        eventually(Duration::from_secs(20), || readiness(&m).0 == 200
            && served(&m, 0) == uids),
        "{:?} {:?}\n{}",
        readiness(&m),
        served(&m, 0),
        read_log(&log1)
    );
    assert_eq!(plugin_types(&m), ["ptp", "portmap", "ambit-cni"]);
    let conf = std::fs::read_to_string(m.dir.join("net.d/10-kindnet.conflist")).unwrap();
    assert!(conf.contains("\"excludeNamespaces\""), "{conf}");
    assert!(m.dir.join("bin/ambit-cni").exists());
    let captured = [dump(&m, a), dump(&m, c)];
    assert_ne!(captured, pristine);

    // Restart (the DaemonSet stays): everything stays in place.
    assert!(sigterm(&mut agent).success());
    let text = read_log(&log1);
    assert!(text.contains("restart or upgrade"), "{text}");
    assert_eq!(plugin_types(&m), ["ptp", "portmap", "ambit-cni"]);
    assert!(m.dir.join("bin/ambit-cni").exists());
    assert_eq!([dump(&m, a), dump(&m, c)], captured);
    assert_eq!(served(&m, 0), uids, "ztunnel keeps serving the pods");

    // A new agent whose API server does not answer yet: it must not act, nor hand ztunnel
    // an empty snapshot; traffic keeps flowing while it loads and takes the pods over.
    gate.store(HOLD, Ordering::SeqCst);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let (ns, dst) = (m.pod(a).pod.ns.path(), SocketAddr::from((m.ip(c), 8080)));
        std::thread::spawn(move || {
            let ns = ambit_core::netns::Netns::open(&ns).unwrap();
            while !stop.load(Ordering::SeqCst) {
                let answered = ns
                    .run(|| ask(dst))
                    .ok()
                    .flatten()
                    .is_some_and(|l| l == "ping");
                let n = if answered { &ok } else { &failed };
                n.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let log2 = m.dir.join("agent-2.log");
    let mut agent = spawn_agent(&m, &url, &log2);
    std::thread::sleep(Duration::from_millis(1500));
    let (status, body) = readiness(&m);
    assert!(
        status == 503 && body.contains("initial Kubernetes lists"),
        "{status} {body}"
    );
    assert_eq!(served(&m, 0), uids, "nothing was dropped while loading");
    assert_eq!([dump(&m, a), dump(&m, c)], captured);
    gate.store(PASS, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(20), || readiness(&m).0 == 200),
        "{:?}\n{}",
        readiness(&m),
        read_log(&log2)
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    traffic.join().unwrap();
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert!(
        ok > 20 && failed == 0,
        "{ok} requests answered, {failed} failed"
    );
    let ztunnel_log = strip_ansi(&m.log(0));
    let snapshots: Vec<&str> = ztunnel_log
        .lines()
        .filter(|l| l.contains("node agent snapshot complete"))
        .collect();
    assert!(snapshots.len() >= 2, "{ztunnel_log}");
    assert!(
        snapshots.iter().all(|l| l.contains("released=0")),
        "ztunnel never dropped a pod:\n{}",
        snapshots.join("\n")
    );
    assert_eq!([dump(&m, a), dump(&m, c)], captured, "no rule duplicated");

    // The mesh is removed but the API server cannot be reached: keep everything.
    api.server
        .store()
        .delete(
            "apps/v1",
            "DaemonSet",
            Some("ambit-system"),
            "ambit-node-agent",
        )
        .unwrap();
    gate.store(REFUSE, Ordering::SeqCst);
    assert!(sigterm(&mut agent).success());
    let text = read_log(&log2);
    assert!(text.contains("leaving the plugin chained"), "{text}");
    assert_eq!(plugin_types(&m), ["ptp", "portmap", "ambit-cni"]);
    assert_eq!([dump(&m, a), dump(&m, c)], captured);
    assert_eq!(served(&m, 0), uids);

    // The DaemonSet terminating: SIGTERM uninstalls from the node, even when it comes while
    // the agent is still loading its lists (it waits for them and takes the pods over first).
    gate.store(HOLD, Ordering::SeqCst);
    let ds = api
        .server
        .store()
        .get(
            "apps/v1",
            "DaemonSet",
            Some("ambit-system"),
            "ambit-node-agent",
        )
        .unwrap();
    assert!(ds["metadata"]["deletionTimestamp"].is_string(), "{ds}");
    // A pod an earlier agent captured and whose namespace lost its label while no agent ran:
    // the agents never saw it captured, the uninstall still removes its rules.
    m.enroll(s).unwrap();
    assert_ne!(dump(&m, s), s_pristine);
    let log3 = m.dir.join("agent-3.log");
    let mut agent = spawn_agent(&m, &url, &log3);
    assert!(eventually(Duration::from_secs(20), || readiness(&m).0 == 503));
    agent.terminate().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    gate.store(PASS, Ordering::SeqCst);
    assert!(wait_exit(&mut agent).success());
    let text = read_log(&log3);
    assert!(
        text.contains("is being deleted") && text.contains("uninstalled from the node"),
        "{text}"
    );
    let conf: Value = serde_json::from_str(
        &std::fs::read_to_string(m.dir.join("net.d/10-kindnet.conflist")).unwrap(),
    )
    .unwrap();
    assert_eq!(conf, serde_json::from_str::<Value>(KINDNET).unwrap());
    assert!(!m.dir.join("bin/ambit-cni").exists());
    assert!(
        !plugin_socket(&m, 0).exists(),
        "the agent removes its socket"
    );
    assert_eq!([dump(&m, a), dump(&m, c)], pristine);
    assert_eq!(dump(&m, s), s_pristine, "leftover redirection is swept too");
    assert!(text.contains("swept=1"), "{text}");
    assert!(
        served(&m, 0).is_empty(),
        "ztunnel got del_pod for every pod"
    );
    let tables = m.topo.nodes[0].ns.exec(&["nft", "list", "tables"]).unwrap();
    assert!(!tables.contains("ambit_host"), "{tables}");
    assert_eq!(
        call(&m, a, m.ip(c).into(), 8080, "plain again").unwrap(),
        "plain again"
    );
}

/// One request on a new connection (from the calling thread's namespace); the echoed line.
fn ask(dst: SocketAddr) -> Option<String> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::net::TcpStream::connect_timeout(&dst, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(1000))).ok()?;
    s.write_all(b"ping\n").ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    // The line app answers "<server> <peer> <echo>".
    line.trim_end().splitn(3, ' ').nth(2).map(String::from)
}

/// An agent's log without terminal colour codes.
fn read_log(path: &Path) -> String {
    strip_ansi(&std::fs::read_to_string(path).unwrap_or_default())
}

/// The log without terminal colour codes.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(ch) = chars.next() {
        if ch == '\x1b' {
            // Skip to the end of the escape sequence (a letter).
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}
