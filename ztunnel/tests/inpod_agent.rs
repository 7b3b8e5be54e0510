//! Node-agent mode end to end: real ztunnel processes started with `--inpod-socket`, and the
//! test acting as the node agent with `AgentClient`, handing over each pod's network
//! namespace as a file descriptor (SCM_RIGHTS). The config lists the workloads without any
//! `netns` path. Needs root (CI runs as root).
mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use ambit_core::inpod_proto::{AgentClient, AgentMessage, InpodError, ZtunnelMessage};
use ambit_testkit::mesh::{metric_sum, Mesh};
use ambit_testkit::{tcp_payloads_to_port, Capture};
use common::*;

const MARKER: &str = "inpod-agent-marker-51c2";
const MESH_PORTS: [u16; 3] = [15001, 15006, 15008];

/// A mesh whose ztunnels run in node-agent mode, every pod's rules installed.
fn agent_mesh(tag: &str, pods: &[(usize, &str, &str)]) -> (Mesh, Vec<usize>) {
    let mut m = mesh(tag, 2);
    m.omit_netns = true;
    let idx: Vec<usize> = pods
        .iter()
        .map(|(node, name, sa)| m.add_pod(*node, name, "default", sa, &[]).unwrap())
        .collect();
    for &p in &idx {
        m.enroll(p).unwrap();
    }
    m.write_config().unwrap();
    let cfg = std::fs::read_to_string(m.config_path()).unwrap();
    assert!(!cfg.contains("netns"), "config must not name namespaces");
    for node in 0..2 {
        start(&mut m, node);
    }
    (m, idx)
}

fn start(m: &mut Mesh, node: usize) {
    let opts = m.agent_mode_opts(node);
    m.start_ztunnel_with(node, opts).unwrap();
}

fn agent(m: &Mesh, node: usize) -> AgentClient {
    AgentClient::connect(&m.inpod_socket(node)).expect("connecting to ztunnel as the agent")
}

fn add(m: &Mesh, client: &AgentClient, pod: usize) -> Result<(), InpodError> {
    let ns = m.pod(pod).pod.ns.open().unwrap();
    client.add_pod(&m.pod_info(pod), ns.as_fd())
}

/// TCP ports listening in a pod's namespace (from the kernel's table, not by connecting).
fn listening(m: &Mesh, pod: usize) -> BTreeSet<u16> {
    m.pod(pod).pod.ns.run(|| {
        let mut ports = BTreeSet::new();
        for table in ["tcp", "tcp6"] {
            let text = std::fs::read_to_string(format!("/proc/thread-self/net/{table}"))
                .unwrap_or_default();
            for line in text.lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                if cols.len() > 3 && cols[3] == "0A" {
                    if let Some((_, port)) = cols[1].rsplit_once(':') {
                        ports.insert(u16::from_str_radix(port, 16).unwrap());
                    }
                }
            }
        }
        ports
    })
}

/// Connects to `port` on the pod's own loopback from inside its namespace.
/// Connects to a listener inside the pod. ztunnel resets connections aimed at its own ports
/// at once (proxying them would loop), so a reset also proves the listener is there; only a
/// refusal means it is not.
fn connect_local(m: &Mesh, pod: usize, port: u16) -> std::io::Result<()> {
    m.pod(pod).pod.ns.run(|| {
        match TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(2),
        ) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok(()),
            other => other.map(drop),
        }
    })
}

fn captured(m: &Mesh, node: usize) -> f64 {
    metric_sum(&m.metrics(node), "ambit_captured_pods", &[])
}

fn served(m: &Mesh, node: usize) -> Vec<String> {
    m.admin(node, "/config_dump").unwrap()["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["uid"].as_str().unwrap().to_string())
        .collect()
}

fn works(m: &Mesh, from: usize, to: usize, line: &str) -> bool {
    call(m, from, m.ip(to).into(), 8080, line).is_ok_and(|(_, _, echo)| echo == line)
}

#[test]
fn pods_enrolled_by_fd_carry_mtls_and_del_pod_closes_their_listeners() {
    let (m, p) = agent_mesh("iafd", &[(0, "a", "sa-a"), (1, "b", "sa-b")]);
    let (a, b) = (p[0], p[1]);
    assert_eq!(
        m.readiness(0).unwrap().0,
        200,
        "ready once the socket listens"
    );
    assert!(served(&m, 0).is_empty(), "no pod before the agent says so");

    let agent0 = agent(&m, 0);
    let agent1 = agent(&m, 1);
    for (client, pod) in [(&agent0, a), (&agent1, b)] {
        add(&m, client, pod).unwrap();
        // The ack means the listeners exist: no polling, right now.
        let ports = listening(&m, pod);
        assert!(
            MESH_PORTS.iter().all(|p| ports.contains(p)),
            "listeners missing right after the ack: {ports:?}"
        );
        for port in MESH_PORTS {
            connect_local(&m, pod, port)
                .unwrap_or_else(|e| panic!("port {port} right after the ack: {e}"));
        }
    }
    // Idempotent: the same pod and namespace again changes nothing.
    add(&m, &agent0, a).unwrap();
    assert_eq!(served(&m, 0), ["default/a"]);
    assert_eq!(captured(&m, 0), 1.0);

    let _app = serve(&m, b, 8080);
    let fabric = Capture::start(&m.topo.fabric).unwrap();
    let (name, peer, echo) = call(&m, a, m.ip(b).into(), 8080, MARKER).unwrap();
    assert_eq!((name.as_str(), echo.as_str()), ("b", MARKER));
    assert_eq!(
        peer,
        m.ip(a).to_string(),
        "the app sees the caller's pod IP"
    );
    let frames = fabric.stop();
    assert!(
        !ambit_testkit::contains(&frames, MARKER.as_bytes()),
        "plaintext on the wire"
    );
    let tls = tcp_payloads_to_port(&frames, 15008);
    assert!(!tls.is_empty(), "no HBONE traffic between the nodes");
    assert!(
        tls.iter().all(|p| p.len() >= 3 && p[1] == 0x03),
        "non-TLS bytes to 15008"
    );
    let mtls = metric_sum(
        &m.metrics(0),
        "ambit_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    assert!(mtls >= 1.0);

    // DelPod: acked only once the listeners are closed.
    agent0.del_pod("default/a").unwrap();
    let ports = listening(&m, a);
    assert!(
        MESH_PORTS.iter().all(|p| !ports.contains(p)),
        "listeners left after del_pod: {ports:?}"
    );
    let err = connect_local(&m, a, 15001).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{err}");
    assert_eq!(captured(&m, 0), 0.0);
    assert!(served(&m, 0).is_empty());
    // Unknown pods are acknowledged (DEL is idempotent).
    agent0.del_pod("default/a").unwrap();
    // The released pod's redirected traffic has nowhere to go; the other node is unaffected.
    assert!(!works(&m, a, b, "after-del"));
    assert_eq!(captured(&m, 1), 1.0);
}

#[test]
fn disconnect_keeps_pods_and_replay_after_restart_rebuilds_them_snapshot_drops_the_rest() {
    let (mut m, p) = agent_mesh(
        "iareplay",
        &[(0, "a", "sa-a"), (0, "c", "sa-c"), (1, "b", "sa-b")],
    );
    let (a, c, b) = (p[0], p[1], p[2]);
    let agent1 = agent(&m, 1);
    add(&m, &agent1, b).unwrap();
    let _app = serve(&m, b, 8080);
    {
        let agent0 = agent(&m, 0);
        add(&m, &agent0, a).unwrap();
        add(&m, &agent0, c).unwrap();
        agent0.snapshot_done().unwrap();
        assert!(works(&m, a, b, "before") && works(&m, c, b, "before"));
    }
    // The agent went away (restart, crash): nothing is released, traffic keeps flowing.
    std::thread::sleep(Duration::from_millis(200));
    assert!(works(&m, a, b, "agent-gone") && works(&m, c, b, "agent-gone"));
    assert_eq!(captured(&m, 0), 2.0);
    let held = Conn::open(&m, a, m.ip(b).into(), 8080).unwrap();

    // ztunnel restarts: it comes back empty and the agent replays.
    m.stop_ztunnel(0);
    drop(held);
    start(&mut m, 0);
    assert!(served(&m, 0).is_empty());
    let agent0 = agent(&m, 0);
    add(&m, &agent0, a).unwrap();
    add(&m, &agent0, c).unwrap();
    agent0.snapshot_done().unwrap();
    assert!(
        eventually(Duration::from_secs(10), || works(&m, a, b, "after-restart")),
        "traffic after ztunnel restart + replay; log:\n{}",
        m.log(0)
    );
    assert!(works(&m, c, b, "after-restart"));
    assert_eq!(captured(&m, 0), 2.0);

    // The agent reconnects (e.g. it restarted) and no longer knows c: c is served until the
    // snapshot is complete, then released; a is untouched.
    let inode_before = m.admin(0, "/config_dump").unwrap()["pods"][0]["netnsInode"].clone();
    let agent0 = agent(&m, 0);
    add(&m, &agent0, a).unwrap();
    assert_eq!(served(&m, 0), ["default/a", "default/c"]);
    agent0.snapshot_done().unwrap();
    assert_eq!(served(&m, 0), ["default/a"]);
    assert!(listening(&m, c).is_empty(), "c's listeners must be closed");
    assert_eq!(captured(&m, 0), 1.0);
    assert_eq!(
        m.admin(0, "/config_dump").unwrap()["pods"][0]["netnsInode"],
        inode_before
    );
    assert!(works(&m, a, b, "after-snapshot"));
    // The config file still names c, but in agent mode file reconciliation adds nothing.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(served(&m, 0), ["default/a"]);
}

#[test]
fn bad_input_is_answered_with_errors_and_the_connection_survives() {
    let (m, p) = agent_mesh("iabad", &[(0, "a", "sa-a"), (1, "b", "sa-b")]);
    let a = p[0];
    let client = agent(&m, 0);
    let pid = m.ztunnel_pid(0).unwrap();
    let ns = m.pod(a).pod.ns.open().unwrap();
    let ns_link = std::fs::read_link(format!("/proc/self/fd/{}", {
        use std::os::fd::AsRawFd;
        ns.as_raw_fd()
    }))
    .unwrap();
    let ztunnel_holds_ns = || {
        std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|t| *t == ns_link)
            .count()
    };
    let expect_error = |want_uid: Option<&str>, what: &str| match client.recv().unwrap() {
        ZtunnelMessage::Error { uid, message } => {
            assert_eq!(uid.as_deref(), want_uid, "{what}: {message}");
            message
        }
        other => panic!("{what}: expected an error, got {other:?}"),
    };

    client.send_raw(b"{not json", &[]).unwrap();
    expect_error(None, "invalid JSON");
    client
        .send_raw(br#"{"type":"reboot_node","uid":"x"}"#, &[])
        .unwrap();
    expect_error(Some("x"), "unknown type");

    let add_json = serde_json::to_vec(&AgentMessage::AddPod(m.pod_info(a))).unwrap();
    client.send_raw(&add_json, &[]).unwrap();
    let msg = expect_error(Some("default/a"), "add_pod without fd");
    assert!(msg.contains("exactly one file descriptor"), "{msg}");

    client
        .send_raw(&add_json, &[ns.as_fd(), ns.as_fd()])
        .unwrap();
    let msg = expect_error(Some("default/a"), "add_pod with two fds");
    assert!(msg.contains("got 2"), "{msg}");
    assert_eq!(ztunnel_holds_ns(), 0, "the two received fds must be closed");

    let not_ns = std::fs::File::open(m.config_path()).unwrap();
    let err = client.add_pod(&m.pod_info(a), not_ns.as_fd()).unwrap_err();
    assert!(err.to_string().contains("not a network namespace"), "{err}");

    let mut no_ip = m.pod_info(a);
    no_ip.ips.clear();
    assert!(client.add_pod(&no_ip, ns.as_fd()).is_err());
    assert_eq!(ztunnel_holds_ns(), 0);
    assert!(served(&m, 0).is_empty());

    // Same connection, good request.
    client.add_pod(&m.pod_info(a), ns.as_fd()).unwrap();
    assert_eq!(served(&m, 0), ["default/a"]);
    assert_eq!(
        ztunnel_holds_ns(),
        1,
        "ztunnel keeps exactly one handle on the pod"
    );

    let errors = metric_sum(
        &m.metrics(0),
        "ambit_tcp_connection_failures_total",
        &[("reporter", "node"), ("reason", "inpod_protocol_error")],
    );
    assert!(errors >= 6.0, "protocol errors counted: {errors}");
    assert_eq!(m.readiness(0).unwrap().0, 200, "ztunnel is alive and ready");
}
