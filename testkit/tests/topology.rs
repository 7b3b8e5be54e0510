//! Real network namespaces: these tests need root (CI runs as root).

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_testkit::{
    contains, sweep_stale, tcp_payloads_to_port, unique_prefix, Capture, NetNs, Pod, Topology,
};

const TIMEOUT: Duration = Duration::from_secs(5);

fn netns_list() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        // `ip netns list` prints "name (id: N)" for namespaces with an id.
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

fn leftovers(prefix: &str) -> Vec<String> {
    netns_list()
        .into_iter()
        .filter(|n| n == prefix || n.starts_with(&format!("{prefix}-")))
        .collect()
}

/// Connects from `src` to `dst:port` and checks an echo round trip.
fn tcp_echo(src: &Pod, dst: &Pod, port: u16) {
    let listener = dst
        .ns
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .unwrap();
    std::thread::scope(|s| {
        let server = s.spawn(|| {
            let (mut conn, peer) = listener.accept().unwrap();
            let mut buf = [0u8; 5];
            conn.read_exact(&mut buf).unwrap();
            conn.write_all(&buf).unwrap();
            peer
        });
        let mut conn = src
            .ns
            .run(|| TcpStream::connect_timeout(&(dst.ip, port).into(), TIMEOUT))
            .unwrap_or_else(|e| panic!("{} -> {}:{port}: {e}", src.name, dst.ip));
        conn.set_read_timeout(Some(TIMEOUT)).unwrap();
        conn.write_all(b"hello").unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
        let peer = server.join().unwrap();
        // No NAT anywhere: the server sees the client pod's own IP.
        assert_eq!(peer.ip(), std::net::IpAddr::V4(src.ip));
    });
}

#[test]
fn every_pod_reaches_every_other_pod() {
    let mut topo = Topology::new("mesh", 2).unwrap();
    let pods = [
        topo.add_pod(0, "a").unwrap(),
        topo.add_pod(0, "b").unwrap(),
        topo.add_pod(1, "c").unwrap(),
        topo.add_pod(1, "d").unwrap(),
    ];
    assert_eq!(topo.nodes[0].ip, Ipv4Addr::new(172, 31, 0, 1));
    assert_eq!(topo.nodes[1].pod_cidr, (Ipv4Addr::new(10, 20, 2, 0), 24));
    assert_eq!(pods[0].ip, Ipv4Addr::new(10, 20, 1, 10));
    assert_eq!(pods[1].ip, Ipv4Addr::new(10, 20, 1, 11));
    assert_eq!(pods[3].ip, Ipv4Addr::new(10, 20, 2, 11));
    for (i, src) in pods.iter().enumerate() {
        for (j, dst) in pods.iter().enumerate() {
            if i != j {
                src.ns.ping(dst.ip, TIMEOUT).unwrap();
                tcp_echo(src, dst, 8000 + (i * 10 + j) as u16);
            }
        }
        // Pods also reach every node (kubelet-style traffic).
        for node in &topo.nodes {
            src.ns.ping(node.ip, TIMEOUT).unwrap();
        }
    }
}

#[test]
fn capture_on_fabric_sees_cross_node_payload() {
    let mut topo = Topology::new("capture", 2).unwrap();
    let a = topo.add_pod(0, "a").unwrap();
    let b = topo.add_pod(1, "b").unwrap();
    let listener = b.ns.run(|| TcpListener::bind("0.0.0.0:7000")).unwrap();
    let capture = Capture::start(&topo.fabric).unwrap();
    let needle = b"needle-in-the-fabric-0123456789";
    let mut conn =
        a.ns.run(|| TcpStream::connect_timeout(&(b.ip, 7000).into(), TIMEOUT))
            .unwrap();
    conn.write_all(needle).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let mut got = vec![0u8; needle.len()];
    server.read_exact(&mut got).unwrap();
    let frames = capture.stop();
    assert!(contains(&frames, needle), "{} frames", frames.len());
    let payloads = tcp_payloads_to_port(&frames, 7000);
    assert!(payloads.iter().any(|p| p == needle), "{payloads:?}");
    assert!(tcp_payloads_to_port(&frames, 7001).is_empty());
}

#[test]
fn drop_leaves_no_namespace_behind() {
    let mut topo = Topology::new("drop", 3).unwrap();
    let prefix = topo.prefix().to_string();
    let pods = [topo.add_pod(0, "x").unwrap(), topo.add_pod(2, "y").unwrap()];
    // Fabric, 3 nodes, 2 pods.
    assert_eq!(leftovers(&prefix).len(), 6, "{:?}", leftovers(&prefix));
    drop(topo);
    // Pods outlive the topology they were cut from without harm.
    assert_eq!(leftovers(&prefix).len(), 2);
    drop(pods);
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}

#[test]
fn panic_inside_a_topology_still_cleans_up() {
    let prefix = std::sync::Mutex::new(String::new());
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut topo = Topology::new("panic", 2).unwrap();
        *prefix.lock().unwrap() = topo.prefix().to_string();
        let pod = topo.add_pod(1, "p").unwrap();
        // The panic crosses NetNs::run with its payload intact.
        pod.ns.run(|| panic!("boom inside the pod"));
    }));
    let payload = result.unwrap_err();
    assert_eq!(payload.downcast_ref::<&str>(), Some(&"boom inside the pod"));
    let prefix = prefix.into_inner().unwrap();
    assert!(!prefix.is_empty());
    assert_eq!(leftovers(&prefix), Vec::<String>::new());
}

#[test]
fn sweep_removes_namespaces_of_dead_processes_only() {
    let mut dead = Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    let stale = format!("ambit-sweep-{dead_pid}-0-fab");
    let live = format!("{}-fab", unique_prefix("sweep"));
    // Guards only for cleanup if the test fails; sweep must do the work.
    let _stale = NetNs::create(&stale).unwrap();
    let _live = NetNs::create(&live).unwrap();
    sweep_stale();
    let names = netns_list();
    assert!(!names.contains(&stale), "{stale} survived the sweep");
    assert!(
        names.contains(&live),
        "{live} was swept while its process lives"
    );
}

#[test]
fn netns_basics() {
    let ns = NetNs::create(&unique_prefix("basics")).unwrap();
    assert_eq!(
        ns.path(),
        std::path::Path::new("/var/run/netns").join(ns.name())
    );
    // A new namespace has only lo, and it is up.
    let links = ns.exec(&["ip", "-o", "link"]).unwrap();
    assert_eq!(links.lines().count(), 1, "{links}");
    assert!(links.contains("lo:") && links.contains("UP"), "{links}");
    // Errors carry the command and its stderr.
    let err = ns
        .exec(&["ip", "link", "show", "nosuchdev"])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("ip netns exec") && err.contains("nosuchdev"),
        "{err}"
    );
    assert!(err.contains("does not exist"), "{err}");
    // Sysctls written from a setns'd thread land in that namespace only.
    ns.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(ns.sysctl("net.ipv4.ip_forward").unwrap(), "1");
    let seen = ns.exec(&["sysctl", "-n", "net.ipv4.ip_forward"]).unwrap();
    assert_eq!(seen.trim(), "1");
    let other = NetNs::create(&unique_prefix("basics")).unwrap();
    assert_eq!(other.sysctl("net.ipv4.ip_forward").unwrap(), "0");
    // The caller's thread never moves.
    let before = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
    let inside = ns.run(|| std::fs::read_link("/proc/thread-self/ns/net").unwrap());
    assert_ne!(before, inside);
    assert_eq!(
        std::fs::read_link("/proc/thread-self/ns/net").unwrap(),
        before
    );
}

#[test]
fn spawn_runs_inside_and_guard_stops_the_child() {
    let mut topo = Topology::new("spawn", 1).unwrap();
    let pod = topo.add_pod(0, "a").unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["-o", "-4", "addr"])
        .env("AMBIT_TEST", "1")
        .stdout(Stdio::piped());
    let mut child = pod.ns.spawn(cmd).unwrap();
    let mut out = String::new();
    child.stdout().unwrap().read_to_string(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(out.contains("10.20.1.10/24"), "{out}");

    // Env settings survive.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "echo $AMBIT_TEST"])
        .env("AMBIT_TEST", "kept")
        .stdout(Stdio::piped());
    let mut child = pod.ns.spawn(cmd).unwrap();
    let mut out = String::new();
    child.stdout().unwrap().read_to_string(&mut out).unwrap();
    assert_eq!(out.trim(), "kept");

    // Drop: SIGTERM is enough for sleep, well within the 2 s grace.
    let mut cmd = Command::new("sleep");
    cmd.arg("100");
    let child = pod.ns.spawn(cmd).unwrap();
    let pid = child.pid();
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    let start = Instant::now();
    drop(child);
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

    // A child that ignores SIGTERM is SIGKILLed after the grace period.
    let mut cmd = Command::new("sh");
    cmd.args(["-c", "trap '' TERM; while :; do sleep 0.05; done"]);
    let mut child = pod.ns.spawn(cmd).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let start = Instant::now();
    let status = child.stop(Duration::from_millis(300)).unwrap();
    assert!(!status.success());
    assert!(start.elapsed() >= Duration::from_millis(300));

    let mut cmd = Command::new("sleep");
    cmd.arg("100");
    let mut child = pod.ns.spawn(cmd).unwrap();
    assert!(child.try_wait().unwrap().is_none());
    child.kill_now().unwrap();
    assert!(child.try_wait().unwrap().is_some());
}
