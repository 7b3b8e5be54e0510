//! The in-pod redirection rules against real namespaces (needs root and
//! nftables, like CI).

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::{Duration, Instant};

use ambit_cni::redirect::{apply, dump, is_applied, remove, RedirectConfig, RedirectError};
use ambit_testkit::{parse_tcp, unique_prefix, Capture, NetNs, Topology};
use nix::sys::socket::{getsockopt, sockopt};
use socket2::{Domain, Socket, Type};

const TIMEOUT: Duration = Duration::from_secs(5);

fn cfg() -> RedirectConfig {
    RedirectConfig::default()
}

fn listen(ns: &NetNs, port: u16) -> TcpListener {
    let l = ns
        .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)))
        .unwrap_or_else(|e| panic!("bind {port} in {}: {e}", ns.name()));
    l.set_nonblocking(true).unwrap();
    l
}

/// Accepts one connection within `timeout`, or None.
fn accept_within(l: &TcpListener, timeout: Duration) -> Option<(TcpStream, SocketAddr)> {
    let deadline = Instant::now() + timeout;
    loop {
        match l.accept() {
            Ok((s, peer)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(TIMEOUT)).unwrap();
                return Some((s, peer));
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

fn accept(l: &TcpListener) -> (TcpStream, SocketAddr) {
    accept_within(l, TIMEOUT).expect("no connection arrived")
}

fn assert_idle(l: &TcpListener, what: &str) {
    if let Some((_, peer)) = accept_within(l, Duration::from_millis(200)) {
        panic!("{what} unexpectedly got a connection from {peer}");
    }
}

fn connect(ns: &NetNs, to: SocketAddrV4) -> TcpStream {
    let s = ns
        .run(|| TcpStream::connect_timeout(&to.into(), TIMEOUT))
        .unwrap_or_else(|e| panic!("connect from {} to {to}: {e}", ns.name()));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

/// SO_ORIGINAL_DST of an accepted (redirected) connection.
fn original_dst(s: &TcpStream) -> SocketAddrV4 {
    let sa = getsockopt(&s.as_fd(), sockopt::OriginalDst).unwrap();
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}

/// Sends a few bytes one way and back, so both ends are really connected.
fn echo(client: &mut TcpStream, server: &mut TcpStream) {
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    server.write_all(b"pong").unwrap();
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}

#[test]
fn apply_then_remove_restores_the_namespace_byte_for_byte() {
    let mut topo = Topology::new("redir_a", 1).unwrap();
    let pod = topo.add_pod(0, "a").unwrap();
    let path = pod.ns.path();
    let before = dump(&path).unwrap();
    apply(&path, &cfg()).unwrap();
    let applied = dump(&path).unwrap();
    assert_ne!(before, applied);
    assert!(applied.contains("table inet ambit"), "{applied}");
    assert!(
        applied.contains("fwmark 0x111/0xfff lookup 100"),
        "{applied}"
    );
    assert_eq!(
        applied.matches("local default dev lo table 100").count(),
        2,
        "one IPv4 and one IPv6 local route: {applied}"
    );
    remove(&path, &cfg()).unwrap();
    assert_eq!(before, dump(&path).unwrap());
    // Removing twice is fine too.
    remove(&path, &cfg()).unwrap();
    assert_eq!(before, dump(&path).unwrap());
}

#[test]
fn apply_is_idempotent_and_is_applied_tracks_state() {
    let mut topo = Topology::new("redir_b", 1).unwrap();
    let pod = topo.add_pod(0, "a").unwrap();
    let path = pod.ns.path();
    assert!(!is_applied(&path).unwrap());
    apply(&path, &cfg()).unwrap();
    assert!(is_applied(&path).unwrap());
    let once = dump(&path).unwrap();
    apply(&path, &cfg()).unwrap();
    apply(&path, &cfg()).unwrap();
    assert_eq!(once, dump(&path).unwrap());
    assert!(is_applied(&path).unwrap());
    remove(&path, &cfg()).unwrap();
    assert!(!is_applied(&path).unwrap());
}

#[test]
fn remove_on_a_never_enrolled_namespace_succeeds() {
    let ns = NetNs::create(&unique_prefix("redir_c")).unwrap();
    let before = dump(&ns.path()).unwrap();
    remove(&ns.path(), &cfg()).unwrap();
    assert!(!is_applied(&ns.path()).unwrap());
    assert_eq!(before, dump(&ns.path()).unwrap());
}

#[test]
fn namespace_without_ipv6_is_tolerated() {
    let ns = NetNs::create(&unique_prefix("redir_nov6")).unwrap();
    if ns
        .set_sysctl("net.ipv6.conf.all.disable_ipv6", "1")
        .is_err()
    {
        return; // kernel without IPv6: the default path covers it
    }
    ns.set_sysctl("net.ipv6.conf.lo.disable_ipv6", "1").unwrap();
    let before = dump(&ns.path()).unwrap();
    apply(&ns.path(), &cfg()).unwrap();
    let applied = dump(&ns.path()).unwrap();
    assert_eq!(
        applied.matches("local default dev lo table 100").count(),
        1,
        "{applied}"
    );
    remove(&ns.path(), &cfg()).unwrap();
    assert_eq!(before, dump(&ns.path()).unwrap());
}

#[test]
fn proc_pid_paths_work_and_errors_are_explained() {
    let mut topo = Topology::new("redir_proc", 1).unwrap();
    let pod = topo.add_pod(0, "a").unwrap();
    let mut sleeper = Command::new("sleep");
    sleeper.arg("30");
    let child = pod.ns.spawn(sleeper).unwrap();
    let proc_path = std::path::PathBuf::from(format!("/proc/{}/ns/net", child.pid()));
    apply(&proc_path, &cfg()).unwrap();
    assert!(is_applied(&pod.ns.path()).unwrap());
    remove(&proc_path, &cfg()).unwrap();
    assert!(!is_applied(&pod.ns.path()).unwrap());

    let missing = std::path::Path::new("/var/run/netns/ambit-does-not-exist");
    let err = apply(missing, &cfg()).unwrap_err();
    assert!(matches!(err, RedirectError::OpenNetns { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("ambit-does-not-exist") && msg.contains("/proc/PID/ns/net"),
        "{msg}"
    );

    let bad = RedirectConfig {
        connmark: 0x1000,
        ..cfg()
    };
    assert!(matches!(
        apply(&pod.ns.path(), &bad),
        Err(RedirectError::InvalidConfig(_))
    ));
}

#[test]
fn traffic_is_redirected_as_specified() {
    let mut topo = Topology::new("redir_d", 1).unwrap();
    let a = topo.add_pod(0, "a").unwrap();
    let b = topo.add_pod(0, "b").unwrap();
    apply(&a.ns.path(), &cfg()).unwrap();

    let outbound = listen(&a.ns, 15001);
    let inbound = listen(&a.ns, 15006);
    let hbone = listen(&a.ns, 15008);
    let app_a = listen(&a.ns, 8080);
    let app_b = listen(&b.ns, 8080);
    let b_app = SocketAddrV4::new(b.ip, 8080);
    let a_app = SocketAddrV4::new(a.ip, 8080);

    // Outbound TCP from A lands on A's 15001, not on B.
    let mut client = connect(&a.ns, b_app);
    let (mut server, peer) = accept(&outbound);
    assert_eq!(original_dst(&server), b_app);
    assert_eq!(peer.ip(), IpAddr::V4(a.ip));
    echo(&mut client, &mut server);
    assert_idle(&app_b, "B's app (outbound should be captured)");

    // The mesh's own sockets (SO_MARK 0x539) go straight to B.
    let mut marked =
        a.ns.run(|| -> std::io::Result<TcpStream> {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            s.set_mark(0x539)?;
            s.connect_timeout(&b_app.into(), TIMEOUT)?;
            Ok(s.into())
        })
        .unwrap();
    marked.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (mut server, peer) = accept(&app_b);
    assert_eq!(peer.ip(), IpAddr::V4(a.ip));
    echo(&mut marked, &mut server);
    assert_idle(&outbound, "A's 15001 (marked traffic must bypass)");

    // Inbound TCP to A:8080 lands on 15006 with the original destination.
    let mut client = connect(&b.ns, a_app);
    let (mut server, peer) = accept(&inbound);
    assert_eq!(original_dst(&server), a_app);
    assert_eq!(peer.ip(), IpAddr::V4(b.ip));
    echo(&mut client, &mut server);
    assert_idle(&app_a, "A's app (inbound should be captured)");

    // HBONE is never redirected.
    let mut client = connect(&b.ns, SocketAddrV4::new(a.ip, 15008));
    let (mut server, peer) = accept(&hbone);
    assert_eq!(peer.ip(), IpAddr::V4(b.ip));
    echo(&mut client, &mut server);
    assert_idle(&inbound, "A's 15006 (HBONE must bypass)");

    // Kubelet probes, SNATed by the node agent to 169.254.7.127, reach the
    // app directly.
    let node = &topo.nodes[0].ns;
    node.exec(&["ip", "addr", "add", "169.254.7.127/32", "dev", "cbr0"])
        .unwrap();
    let mut probe = node
        .run(|| -> std::io::Result<TcpStream> {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            s.bind(&SocketAddrV4::new(Ipv4Addr::new(169, 254, 7, 127), 0).into())?;
            s.connect_timeout(&a_app.into(), TIMEOUT)?;
            Ok(s.into())
        })
        .unwrap();
    probe.set_read_timeout(Some(TIMEOUT)).unwrap();
    let (mut server, peer) = accept(&app_a);
    assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::new(169, 254, 7, 127)));
    echo(&mut probe, &mut server);
    assert_idle(&inbound, "A's 15006 (probes must bypass)");

    // Loopback traffic inside the pod is left alone.
    let mut client = connect(&a.ns, SocketAddrV4::new(Ipv4Addr::LOCALHOST, 8080));
    let (mut server, _) = accept(&app_a);
    echo(&mut client, &mut server);

    // After removal, nothing is captured any more.
    remove(&a.ns.path(), &cfg()).unwrap();
    let mut client = connect(&a.ns, b_app);
    let (mut server, _) = accept(&app_b);
    echo(&mut client, &mut server);
    assert_idle(&outbound, "A's 15001 after removal");
}

/// A ztunnel-like socket in A (mesh mark, IP_TRANSPARENT, bound to B's IP)
/// connecting to A's own app: the app must see B as the peer, and its
/// replies must come back to that socket instead of leaving for B.
fn spoofed_connect(
    a: &NetNs,
    a_ip: Ipv4Addr,
    b_ip: Ipv4Addr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    a.run(|| {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.set_mark(0x539)?;
        s.set_ip_transparent(true)?;
        s.bind(&SocketAddrV4::new(b_ip, 0).into())?;
        s.connect_timeout(&SocketAddrV4::new(a_ip, 9090).into(), timeout)?;
        let s: TcpStream = s.into();
        s.set_read_timeout(Some(TIMEOUT))?;
        Ok(s)
    })
}

#[test]
fn spoofed_source_inbound_path_works() {
    let mut topo = Topology::new("redir_e", 1).unwrap();
    let a = topo.add_pod(0, "a").unwrap();
    let b = topo.add_pod(0, "b").unwrap();
    let app = listen(&a.ns, 9090);

    // Control: without the connmark/policy-route rules the app's SYN-ACK
    // leaves for the real B, which resets it, so the connect fails.
    let err = spoofed_connect(&a.ns, a.ip, b.ip, Duration::from_millis(500));
    assert!(err.is_err(), "spoofed connect worked without rules");
    while accept_within(&app, Duration::from_millis(10)).is_some() {}

    apply(&a.ns.path(), &cfg()).unwrap();
    // Watch the node side of A's veth: replies must not leave the pod.
    let capture = Capture::start(&topo.nodes[0].ns).unwrap();
    let mut tunnel = spoofed_connect(&a.ns, a.ip, b.ip, TIMEOUT).unwrap();
    let (mut conn, peer) = accept(&app);
    assert_eq!(
        peer.ip(),
        IpAddr::V4(b.ip),
        "the app must see B as the peer"
    );
    assert_eq!(peer, tunnel.local_addr().unwrap());
    echo(&mut tunnel, &mut conn);
    drop((tunnel, conn));
    let frames = capture.stop();
    let leaked: Vec<_> = frames
        .iter()
        .filter_map(|f| parse_tcp(f))
        .filter(|s| s.src_port == 9090 || s.dst_port == 9090)
        .map(|s| format!("{}:{} -> {}:{}", s.src, s.src_port, s.dst, s.dst_port))
        .collect();
    assert!(leaked.is_empty(), "app traffic left the pod: {leaked:?}");
}
