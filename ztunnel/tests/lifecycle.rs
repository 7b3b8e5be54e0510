//! Start-up, readiness and self-protection of a real ztunnel process.
mod common;

use std::time::Duration;

use ambit_testkit::mesh::{metric_sum, ZtunnelOpts};
use common::*;

#[test]
fn readiness_reports_pods_that_cannot_be_captured_until_fixed() {
    let mut m = mesh("zready", 1);
    let a = m.add_pod(0, "a", "default", "sa-a", &[]).unwrap();
    let _b = m.add_pod(0, "b", "default", "sa-b", &[]).unwrap();
    m.enroll(a).unwrap();
    let mut cfg = m.config("cluster.local");
    cfg["workloads"][1]["netns"] = "/var/run/netns/ambit-no-such-namespace".into();
    std::fs::write(m.config_path(), cfg.to_string()).unwrap();
    m.start_ztunnel_with(
        0,
        ZtunnelOpts {
            no_wait: true,
            ..Default::default()
        },
    )
    .unwrap();
    let mut last = (0, String::new());
    assert!(
        eventually(Duration::from_secs(10), || {
            last = m.readiness(0).unwrap_or_default();
            last.0 == 503 && last.1.contains("1 pod(s) cannot be captured")
        }),
        "readiness must name the broken pod: {last:?}"
    );
    assert!(
        last.1.contains("default/b") && last.1.contains("ambit-no-such-namespace"),
        "{last:?}"
    );
    let dump = m.admin(0, "/config_dump").unwrap();
    assert!(dump["captureFailures"]["default/b"].is_string(), "{dump}");
    assert_eq!(
        dump["pods"].as_array().unwrap().len(),
        1,
        "the good pod is served meanwhile"
    );
    // Fixing the config makes the node ready without a restart.
    m.write_config().unwrap();
    assert!(eventually(Duration::from_secs(10), || m
        .readiness(0)
        .map(|r| r.0)
        .ok()
        == Some(200)));
    let failures = metric_sum(
        &m.metrics(0),
        "ambit_tcp_connection_failures_total",
        &[("reason", "pod_capture_failed")],
    );
    assert!(failures >= 1.0);
}

#[test]
fn mismatched_trust_domain_fails_start_with_a_clear_error() {
    let mut m = mesh("ztd", 1);
    let _a = m.add_pod(0, "a", "default", "sa-a", &[]).unwrap();
    m.write_config().unwrap();
    let (cert, key) = (m.dir.join("ca.pem"), m.dir.join("ca-key.pem"));
    let err = m
        .start_ztunnel_with(
            0,
            ZtunnelOpts {
                ca: Some((cert, key, "other.domain".into())),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("trustDomain \"cluster.local\" does not match the mesh CA's trust domain \"other.domain\""),
        "{err}"
    );
}

#[test]
fn connections_aimed_at_mesh_ports_are_refused_not_looped() {
    let mut m = mesh("zloop", 2);
    let a = m.add_pod(0, "a", "default", "sa-a", &[]).unwrap();
    let b = m.add_pod(1, "b", "default", "sa-b", &[]).unwrap();
    let u = m.add_pod(1, "u", "default", "sa-u", &[]).unwrap();
    m.pods[u].captured = false;
    m.enroll(a).unwrap();
    m.enroll(b).unwrap();
    m.start_ztunnel(0).unwrap();
    m.start_ztunnel(1).unwrap();
    let _app = serve(&m, b, 8080);
    let b_ip = m.ip(b).into();
    // Plaintext to b's own inbound listener port, and via the mesh to each mesh port.
    assert!(call(&m, u, b_ip, 15006, "loop?").is_err());
    // From inside a captured pod, straight to its own listeners over loopback and its IP.
    for port in [15001, 15006] {
        assert!(
            call(&m, a, "127.0.0.1".parse().unwrap(), port, "loop?").is_err(),
            "loopback {port}"
        );
    }
    assert!(call(&m, a, m.ip(a).into(), 15001, "loop?").is_err());
    let fds0 = std::fs::read_dir(format!("/proc/{}/fd", m.ztunnel_pid(0).unwrap()))
        .unwrap()
        .count();
    assert!(fds0 < 200, "node 0 ztunnel holds {fds0} fds");
    for port in [15001, 15006] {
        assert!(call(&m, a, b_ip, port, "loop?").is_err(), "port {port}");
    }
    let metrics = m.metrics(1);
    let refused = metric_sum(
        &metrics,
        "ambit_tcp_connections_denied_total",
        &[("reason", "destination_is_mesh_port")],
    );
    assert!(refused >= 3.0, "{metrics}");
    // No runaway: ztunnel holds a sane number of sockets and still serves.
    let fds = std::fs::read_dir(format!("/proc/{}/fd", m.ztunnel_pid(1).unwrap()))
        .unwrap()
        .count();
    assert!(fds < 200, "ztunnel holds {fds} fds");
    assert_eq!(call(&m, a, b_ip, 8080, "fine").unwrap().2, "fine");
}
