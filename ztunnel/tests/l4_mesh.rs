//! End to end on real network namespaces: two (or three) nodes, each with its own ztunnel
//! process, pods behind veth bridges, the in-pod redirection rules, real mTLS.
//! Needs root (CI runs as root).
mod common;

use std::net::IpAddr;
use std::time::Duration;

use ambit_testkit::mesh::{metric_sum, ZtunnelOpts};
use ambit_testkit::{tcp_payloads_to_port, Capture};
use common::*;
use serde_json::json;

const MARKER: &str = "plaintext-marker-7f3a9c";

#[test]
fn pod_to_pod_by_ip_and_service_vip_is_mtls_and_keeps_source_ip() {
    let mut m = mesh("l4basic", 2);
    let a = m
        .add_pod(0, "a", "default", "sa-a", &[("app", "a")])
        .unwrap();
    let b1 = m
        .add_pod(1, "b1", "default", "sa-b", &[("app", "b")])
        .unwrap();
    let b2 = m
        .add_pod(0, "b2", "default", "sa-b", &[("app", "b")])
        .unwrap();
    m.services.push(
        json!({"name": "b", "namespace": "default", "vips": ["10.96.0.10"],
        "ports": [{"port": 80, "targetPort": 8080}], "selector": {"app": "b"}}),
    );
    for p in [a, b1, b2] {
        m.enroll(p).unwrap();
    }
    m.start_ztunnel(0).unwrap();
    m.start_ztunnel(1).unwrap();
    let _app1 = serve(&m, b1, 8080);
    let _app2 = serve(&m, b2, 8080);

    let fabric = Capture::start(&m.topo.fabric).unwrap();
    let node0 = Capture::start(&m.topo.nodes[0].ns).unwrap();

    // Cross-node by pod IP.
    let (name, peer, echo) = call(&m, a, m.ip(b1).into(), 8080, MARKER).unwrap();
    assert_eq!((name.as_str(), echo.as_str()), ("b1", MARKER));
    assert_eq!(
        peer,
        m.ip(a).to_string(),
        "the app must see the caller's pod IP"
    );

    // Same node by pod IP.
    let (name, peer, _) = call(&m, a, m.ip(b2).into(), 8080, MARKER).unwrap();
    assert_eq!(
        (name.as_str(), peer.as_str()),
        ("b2", m.ip(a).to_string().as_str())
    );

    // By Service VIP: resolved by ztunnel and spread over both endpoints.
    let vip: IpAddr = "10.96.0.10".parse().unwrap();
    let mut seen = std::collections::BTreeMap::new();
    for i in 0..20 {
        let (name, peer, echo) = call(&m, a, vip, 80, &format!("{MARKER}-{i}")).unwrap();
        assert_eq!(echo, format!("{MARKER}-{i}"));
        assert_eq!(peer, m.ip(a).to_string());
        *seen.entry(name).or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "VIP traffic must reach both endpoints: {seen:?}"
    );
    assert!(
        seen.values().all(|&n| n >= 5),
        "round robin is uneven: {seen:?}"
    );

    let fabric = fabric.stop();
    let node0 = node0.stop();
    for (where_, frames) in [("inter-node link", &fabric), ("node 0 pod bridge", &node0)] {
        assert!(
            !ambit_testkit::contains(frames, MARKER.as_bytes()),
            "plaintext payload visible on the {where_}"
        );
        let tls = tcp_payloads_to_port(frames, 15008);
        assert!(!tls.is_empty(), "no HBONE traffic seen on the {where_}");
        assert!(
            tls.iter()
                .all(|p| p.len() >= 3 && matches!(p[0], 0x14..=0x17) && p[1] == 0x03),
            "non-TLS bytes sent to 15008 on the {where_}"
        );
    }
    // Nothing else than HBONE crossed the wire between the pods.
    assert!(tcp_payloads_to_port(&fabric, 8080).is_empty());

    let metrics = m.metrics(0);
    let opened = metric_sum(
        &metrics,
        "ambit_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("destination_workload", "b1"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    assert!(opened >= 1.0, "source-side metric missing:\n{metrics}");
    let vip_conns = metric_sum(
        &metrics,
        "ambit_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("destination_service", "b.default.svc"),
        ],
    );
    assert_eq!(vip_conns, 20.0);
    let received = metric_sum(
        &m.metrics(1),
        "ambit_tcp_received_bytes_total",
        &[("reporter", "destination")],
    );
    assert!(received > 0.0);
    let dump = m.admin(0, "/config_dump").unwrap();
    assert_eq!(
        dump["pods"].as_array().unwrap().len(),
        2,
        "node 0 serves a and b2: {dump}"
    );
    assert_eq!(dump["configSource"]["mode"], "file", "{dump}");
    assert_eq!(dump["configSource"]["lastError"], serde_json::Value::Null);
}

#[test]
fn foreign_trust_domain_and_forged_identities_are_refused() {
    let mut m = mesh("l4idents", 3);
    let b = m.add_pod(0, "b", "default", "sa-b", &[]).unwrap();
    let e = m.add_pod(1, "e", "default", "sa-e", &[]).unwrap();
    let f = m.add_pod(2, "f", "default", "sa-f", &[]).unwrap();
    for p in [b, e, f] {
        m.enroll(p).unwrap();
    }
    m.write_config().unwrap();
    m.start_ztunnel(0).unwrap();
    let real_root = m.dir.join("ca.pem").to_string_lossy().to_string();
    // Node 1: a CA of another trust domain, which even trusts our root.
    let (cert, key) = m.write_ca("evil", "evil.example").unwrap();
    let evil_cfg = m.dir.join("evil.yaml");
    m.write_config_to(&evil_cfg, "evil.example").unwrap();
    m.start_ztunnel_with(
        1,
        ZtunnelOpts {
            config: Some(evil_cfg),
            ca: Some((cert, key, "evil.example".into())),
            extra_args: vec!["--extra-root".into(), real_root.clone()],
            ..Default::default()
        },
    )
    .unwrap();
    // Node 2: a forged CA claiming our trust domain.
    let (cert, key) = m.write_ca("forged", "cluster.local").unwrap();
    m.start_ztunnel_with(
        2,
        ZtunnelOpts {
            config: None,
            ca: Some((cert, key, "cluster.local".into())),
            extra_args: vec!["--extra-root".into(), real_root],
            ..Default::default()
        },
    )
    .unwrap();
    let app = serve(&m, b, 8080);
    for from in [e, f] {
        let r = call(&m, from, m.ip(b).into(), 8080, "let me in");
        assert!(r.is_err(), "pod {from} got through: {r:?}");
    }
    assert_eq!(app.accepted(), 0, "the app must never see a refused caller");
    let refused = metric_sum(
        &m.metrics(0),
        "ambit_tcp_connection_failures_total",
        &[
            ("reporter", "destination"),
            ("reason", "tls_handshake_failed"),
        ],
    );
    assert!(refused >= 2.0, "handshake refusals not counted: {refused}");
    assert!(m.log(0).contains("mTLS handshake refused"), "{}", m.log(0));
}

#[test]
fn policy_denies_and_counts_and_reloads_without_restart() {
    let mut m = mesh("l4authz", 2);
    let a = m.add_pod(0, "a", "default", "sa-a", &[]).unwrap();
    let d = m.add_pod(0, "d", "dev", "sa-d", &[]).unwrap();
    let b = m.add_pod(1, "b", "prod", "sa-b", &[("app", "b")]).unwrap();
    for p in [a, d, b] {
        m.enroll(p).unwrap();
    }
    m.start_ztunnel(0).unwrap();
    m.start_ztunnel(1).unwrap();
    let _app = serve(&m, b, 8080);
    let b_ip: IpAddr = m.ip(b).into();
    assert!(
        call(&m, d, b_ip, 8080, "before").is_ok(),
        "no policy: allowed"
    );

    m.policies.push(json!({"name": "deny-dev", "namespace": "prod", "selector": {"app": "b"},
        "action": "DENY", "rules": [{"from": [{"namespaces": ["dev"]}], "to": [{"ports": [8080]}]}]}));
    m.write_config().unwrap();
    assert!(
        eventually(Duration::from_secs(5), || call(&m, d, b_ip, 8080, "x")
            .is_err()),
        "the DENY policy never took effect"
    );
    assert!(
        call(&m, a, b_ip, 8080, "still fine").is_ok(),
        "other callers are unaffected"
    );
    let denied = metric_sum(
        &m.metrics(1),
        "ambit_tcp_connections_denied_total",
        &[
            ("reporter", "destination"),
            ("reason", "denied_by_policy"),
            ("source_principal", "spiffe://cluster.local/ns/dev/sa/sa-d"),
        ],
    );
    assert!(denied >= 1.0);
    let src_side = metric_sum(
        &m.metrics(0),
        "ambit_tcp_connections_denied_total",
        &[("reporter", "source"), ("reason", "denied_by_policy")],
    );
    assert!(
        src_side >= 1.0,
        "the caller's ztunnel reports the refusal too"
    );

    // A broken config is rejected; the last good one keeps serving.
    std::fs::write(m.config_path(), "workloads: [this is not a workload]").unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        metric_sum(
            &m.metrics(1),
            "ambit_config_reloads_total",
            &[("result", "error")],
        ) >= 1.0
    }));
    assert!(call(&m, a, b_ip, 8080, "after bad config").is_ok());
    assert!(
        call(&m, d, b_ip, 8080, "x").is_err(),
        "policy from the last good config still applies"
    );
    assert!(m.log(1).contains("keeping last good config"));
}

#[test]
fn strict_refuses_plaintext_permissive_accepts_unenrolled_untouched() {
    let mut m = mesh("l4modes", 2);
    let a = m.add_pod(0, "a", "default", "sa-a", &[]).unwrap();
    let u = m.add_pod(0, "u", "legacy", "default", &[]).unwrap();
    let s = m.add_pod(1, "s", "default", "sa-s", &[]).unwrap();
    let p = m.add_pod(1, "p", "default", "sa-p", &[]).unwrap();
    m.pods[u].captured = false;
    m.pods[s].mtls_mode = Some("STRICT".into());
    m.pods[p].mtls_mode = Some("PERMISSIVE".into());
    let untouched = ambit_cni::redirect::dump(&m.pod(u).pod.ns.path()).unwrap();
    let p_before = ambit_cni::redirect::dump(&m.pod(p).pod.ns.path()).unwrap();
    for x in [a, s, p] {
        m.enroll(x).unwrap();
    }
    m.start_ztunnel(0).unwrap();
    m.start_ztunnel(1).unwrap();
    let s_app = serve(&m, s, 8080);
    let _p_app = serve(&m, p, 8080);
    let _u_app = serve(&m, u, 8080);

    // Plaintext from outside the mesh.
    assert!(
        call(&m, u, m.ip(s).into(), 8080, "plain").is_err(),
        "STRICT accepted plaintext"
    );
    assert_eq!(s_app.accepted(), 0);
    let (_, peer, echo) = call(&m, u, m.ip(p).into(), 8080, "plain").unwrap();
    assert_eq!(
        (peer, echo.as_str()),
        (m.ip(u).to_string(), "plain"),
        "PERMISSIVE keeps the source IP"
    );
    // mTLS into the STRICT pod works.
    assert_eq!(call(&m, a, m.ip(s).into(), 8080, "mtls").unwrap().2, "mtls");
    let refused = metric_sum(
        &m.metrics(1),
        "ambit_tcp_connections_denied_total",
        &[("reason", "plaintext_in_strict_mode")],
    );
    assert!(refused >= 1.0);
    // A captured pod calling an un-enrolled one passes through in plaintext.
    let (name, peer, _) = call(&m, a, m.ip(u).into(), 8080, "to legacy").unwrap();
    assert_eq!((name.as_str(), peer), ("u", m.ip(a).to_string()));
    let pass = metric_sum(
        &m.metrics(0),
        "ambit_tcp_connections_opened_total",
        &[
            ("destination_workload", "u"),
            ("connection_security_policy", "none"),
        ],
    );
    assert!(pass >= 1.0);
    // The un-enrolled pod's namespace was never touched.
    assert_eq!(
        ambit_cni::redirect::dump(&m.pod(u).pod.ns.path()).unwrap(),
        untouched
    );
    // Removing a pod's rules restores its namespace exactly.
    m.unenroll(p).unwrap();
    assert_eq!(
        ambit_cni::redirect::dump(&m.pod(p).pod.ns.path()).unwrap(),
        p_before
    );
}

#[test]
fn certificate_rotation_never_drops_a_long_lived_connection() {
    let mut m = mesh("l4rotate", 2);
    let a = m.add_pod(0, "a", "default", "sa-a", &[]).unwrap();
    let b = m.add_pod(1, "b", "default", "sa-b", &[]).unwrap();
    m.enroll(a).unwrap();
    m.enroll(b).unwrap();
    let short = ZtunnelOpts {
        extra_args: vec!["--leaf-ttl".into(), "3s".into()],
        ..Default::default()
    };
    m.start_ztunnel_with(0, short.clone()).unwrap();
    m.start_ztunnel_with(1, short).unwrap();
    let _app = serve(&m, b, 8080);
    let serial = |m: &ambit_testkit::mesh::Mesh| {
        m.admin(0, "/certs").unwrap()[0]["serial"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let first = serial(&m);
    let mut conn = Conn::open(&m, a, m.ip(b).into(), 8080).unwrap();
    // 8 s: more than two rotations, and well past the first certificate's expiry.
    for i in 0..32 {
        let (_, _, echo) = conn
            .ask(&format!("tick {i}"))
            .unwrap_or_else(|e| panic!("dropped at tick {i}: {e}"));
        assert_eq!(echo, format!("tick {i}"));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_ne!(serial(&m), first, "the certificate was never rotated");
    assert!(m.log(0).contains("rotated workload certificate"));
    // New connections keep working with the new certificates.
    assert_eq!(
        call(&m, a, m.ip(b).into(), 8080, "fresh").unwrap().2,
        "fresh"
    );
}
