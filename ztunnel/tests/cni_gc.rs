//! CNI GC with the real plugin binary, a real node agent and real ztunnels: attachments the
//! runtime no longer lists are released exactly like DEL (redirection gone, ztunnel no
//! longer serving the pod, metrics down), listed ones and other networks are untouched.
mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use ambit_testkit::mesh::{metric_sum, node_name, Mesh};
use ambit_testkit::{contains, Capture};
use common::cni::*;
use common::*;
use serde_json::json;

const NETWORK: &str = "k8s-pod-network";
const OTHER_NETWORK: &str = "other-net";

/// Namespace `mesh` enrolled; pods listed without IPs, as the API shows them before CNI ADD
/// returned, so only ADD captures them and the reconciler never re-captures a released one.
fn write_cluster(m: &Mesh) {
    let pods: Vec<_> = m
        .pods
        .iter()
        .map(|p| {
            json!({"uid": format!("{}/{}", p.namespace, p.pod.name), "name": p.pod.name,
            "namespace": p.namespace, "serviceAccount": p.service_account,
            "node": node_name(p.pod.node), "ips": []})
        })
        .collect();
    let doc =
        json!({"namespaces": {"mesh": {"ambit.dev/dataplane-mode": "ambient"}}, "pods": pods});
    std::fs::write(m.dir.join("cluster.json"), doc.to_string()).unwrap();
}

/// Runs `input` through the plugin binary; returns (exit ok, stdout + stderr).
fn run_plugin(mut cmd: Command, input: &str) -> (bool, String) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// CNI ADD of `pod` through the plugin, on network `network`.
fn add(m: &Mesh, pod: usize, network: &str) {
    let node = m.pod(pod).pod.node;
    let add = m.cni_add(
        pod,
        Command::new(cni_binary()),
        &plugin_socket(m, node),
        "closed",
    );
    let stdin = add.stdin.replace(
        &format!("\"name\":\"{NETWORK}\""),
        &format!("\"name\":\"{network}\""),
    );
    assert!(stdin.contains(network), "{stdin}");
    let (ok, out) = run_plugin(add.command, &stdin);
    assert!(ok, "ADD of {} failed: {out}", m.pod(pod).pod.name);
}

/// CNI GC on node 0's agent for `network`, listing the pods in `valid` as still attached.
fn gc(m: &Mesh, network: &str, valid: &[usize]) {
    let valid: Vec<_> = valid
        .iter()
        .map(|&i| json!({"containerID": format!("ctr-{}", m.pod(i).pod.name), "ifname": "eth0"}))
        .collect();
    let conf = json!({"cniVersion": "1.1.0", "name": network, "type": "ambit-cni",
        "agentSocket": plugin_socket(m, 0), "cni.dev/valid-attachments": valid});
    let mut cmd = Command::new(cni_binary());
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", "GC")
        .env("CNI_PATH", "/opt/cni/bin");
    let (ok, out) = run_plugin(cmd, &conf.to_string());
    assert!(ok, "GC failed: {out}");
}

fn dump(m: &Mesh, pod: usize) -> String {
    ambit_cni::redirect::dump(&m.pod(pod).pod.ns.path()).unwrap()
}

fn ztunnel_pods(m: &Mesh, node: usize) -> Vec<String> {
    let dump = m.admin(node, "/config_dump").unwrap();
    let mut uids: Vec<String> = dump["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["uid"].as_str().unwrap_or_default().to_string())
        .collect();
    uids.sort();
    uids
}

fn mtls_accepted(m: &Mesh) -> f64 {
    metric_sum(
        &m.metrics(1),
        "ambit_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
        ],
    )
}

#[test]
fn gc_releases_unlisted_attachments_of_its_network_only() {
    let mut m = mesh("cnigc", 2);
    m.omit_netns = true;
    let mut pod = |node, name: &str| {
        m.add_pod(node, name, "mesh", &format!("sa-{name}"), &[])
            .unwrap()
    };
    let (a, g, o, b) = (pod(0, "a"), pod(0, "g"), pod(0, "o"), pod(1, "b"));
    m.write_config().unwrap();
    write_cluster(&m);
    for node in 0..2 {
        let opts = m.agent_mode_opts(node);
        m.start_ztunnel_with(node, opts).unwrap();
    }
    let (agent0, _agent1) = (start_agent(&m, 0), start_agent(&m, 1));
    let _app = serve(&m, b, 8080);
    let pristine: Vec<String> = [a, g, o].iter().map(|&p| dump(&m, p)).collect();

    add(&m, b, NETWORK);
    add(&m, a, NETWORK);
    add(&m, g, NETWORK);
    add(&m, o, OTHER_NETWORK);
    assert_eq!(agent0.captured(), ["mesh/a", "mesh/g", "mesh/o"]);
    for p in [a, g] {
        call(&m, p, m.ip(b).into(), 8080, "before gc").unwrap();
    }

    // The runtime still knows a (and o, on the other network): g's DEL was lost.
    gc(&m, NETWORK, &[a]);
    assert_eq!(agent0.captured(), ["mesh/a", "mesh/o"]);
    assert_eq!(dump(&m, g), pristine[1], "g's namespace is as before ADD");
    assert!(
        eventually(Duration::from_secs(5), || ztunnel_pods(&m, 0)
            == ["mesh/a", "mesh/o"]),
        "ztunnel still serves {:?}",
        ztunnel_pods(&m, 0)
    );
    assert_eq!(
        metric_sum(&m.metrics(0), "ambit_captured_pods", &[]),
        2.0,
        "ztunnel's gauge"
    );
    let agent_metrics = agent0.metrics().encode();
    assert_eq!(
        metric_sum(&agent_metrics, "ambit_cni_enrolled_pods", &[]),
        2.0
    );
    assert_eq!(
        metric_sum(
            &agent_metrics,
            "ambit_cni_gc_released_attachments_total",
            &[]
        ),
        1.0,
        "{agent_metrics}"
    );

    // The listed pod still goes through the mesh, encrypted.
    let before = mtls_accepted(&m);
    let wire = Capture::start(&m.topo.fabric).unwrap();
    let answer = call(&m, a, m.ip(b).into(), 8080, "secret-after-gc").unwrap();
    assert_eq!(answer.2, "secret-after-gc");
    assert!(
        !contains(&wire.stop(), b"secret-after-gc"),
        "a's traffic is mTLS"
    );
    assert!(mtls_accepted(&m) > before);
    // The released one talks plaintext now, like any pod outside the mesh.
    let before = mtls_accepted(&m);
    assert_eq!(
        call(&m, g, m.ip(b).into(), 8080, "released").unwrap().2,
        "released"
    );
    assert_eq!(mtls_accepted(&m), before, "g is no longer captured");

    // Another network's GC leaves this network's pods alone; its own list is honoured,
    // and an empty list releases every attachment it has.
    gc(&m, OTHER_NETWORK, &[o]);
    assert_eq!(agent0.captured(), ["mesh/a", "mesh/o"]);
    gc(&m, OTHER_NETWORK, &[]);
    assert_eq!(agent0.captured(), ["mesh/a"]);
    assert_eq!(dump(&m, o), pristine[2]);
    assert_ne!(dump(&m, a), pristine[0], "a keeps its redirection");
    assert!(eventually(Duration::from_secs(5), || ztunnel_pods(&m, 0) == ["mesh/a"]));
}
