//! ztunnel and waypoints, end to end on real network namespaces with real ztunnels: traffic
//! for a Service or workload with a waypoint goes to the waypoint (a stand-in L4 waypoint,
//! see `waypoint/standin.rs`) with the original destination as `:authority`; an unreachable
//! waypoint fails closed; the waypoint's own traffic is not looped back to it; L7 policy
//! conditions are handled at L4. Needs root (CI runs as root).
mod common;
#[path = "waypoint/standin.rs"]
mod standin;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ambit_core::Identity;
use ambit_testkit::mesh::{metric_sum, Mesh};
use common::*;
use serde_json::{json, Value};
use standin::{Routes, StandIn};

const VIP: &str = "10.96.0.10";
const FAILED: &str = "ambit_tcp_connection_failures_total";
const OPENED: &str = "ambit_tcp_connections_opened_total";

fn id(m: &Mesh, pod: usize) -> Identity {
    let p = m.pod(pod);
    Identity::new(&m.trust_domain, &p.namespace, &p.service_account).unwrap()
}

fn svc(name: &str, vip: &str, port: u16, selector: Value, waypoint: Option<&str>) -> Value {
    let mut s = json!({"name": name, "namespace": "default", "vips": [vip],
        "ports": [{"port": port, "targetPort": 8080}], "selector": selector});
    if let Some(wp) = waypoint {
        s["waypoint"] = json!({"name": wp, "namespace": "default"});
    }
    s
}

fn waypoint_svc(name: &str, vip: &str, gateway: &str) -> Value {
    json!({"name": name, "namespace": "default", "vips": [vip],
        "ports": [{"port": 15008}], "selector": {"gateway": gateway}})
}

/// Writes the mesh's config with `patch` applied (the harness has no waypoint fields for
/// workloads), atomically like `Mesh::write_config`.
fn write_config(m: &Mesh, patch: impl FnOnce(&mut Value)) {
    let mut cfg = m.config(&m.trust_domain);
    patch(&mut cfg);
    let tmp = m.config_path().with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    std::fs::rename(&tmp, m.config_path()).unwrap();
}

type Patch<'a> = Box<dyn Fn(&mut Value) + 'a>;

fn workload<'a>(cfg: &'a mut Value, name: &str) -> &'a mut Value {
    cfg["workloads"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|w| w["name"] == name)
        .unwrap()
}

fn vip(port: u16) -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), port)
}

#[test]
fn waypoint_bound_traffic_goes_through_the_waypoint_with_the_original_destination() {
    let mut m = mesh("wpvia", 2);
    let a = m.add_pod(0, "a", "default", "sa-a", &[]).unwrap();
    let b = m
        .add_pod(1, "b", "default", "sa-b", &[("app", "b")])
        .unwrap();
    let d = m
        .add_pod(1, "d", "default", "sa-d", &[("app", "d")])
        .unwrap();
    let wp = m
        .add_pod(1, "wp", "default", "waypoint", &[("gateway", "wp")])
        .unwrap();
    // The waypoint pod is not captured: it speaks HBONE itself.
    m.pods[wp].captured = false;
    m.services = vec![
        svc("b", VIP, 80, json!({"app": "b"}), Some("wp")),
        svc("b-direct", "10.96.0.11", 80, json!({"app": "b"}), None),
        svc("d", "10.96.0.12", 80, json!({"app": "d"}), None),
        waypoint_svc("wp", "10.96.0.99", "wp"),
    ];
    write_config(&m, |cfg| {
        workload(cfg, "d")["waypoint"] = json!({"name": "wp", "namespace": "default"})
    });
    for p in [a, b, d] {
        m.enroll(p).unwrap();
    }
    m.start_ztunnel(0).unwrap();
    m.start_ztunnel(1).unwrap();
    let _b_app = serve(&m, b, 8080);
    let _d_app = serve(&m, d, 8080);
    let (b_ep, d_ep) = (
        SocketAddr::new(m.ip(b).into(), 8080),
        SocketAddr::new(m.ip(d).into(), 8080),
    );
    let routes = Routes::from([(vip(80), (b_ep, id(&m, b))), (d_ep, (d_ep, id(&m, d)))]);
    let standin = StandIn::start(&m, wp, routes);
    let (a_ip, wp_ip) = (m.ip(a).to_string(), m.ip(wp).to_string());

    // Service with a waypoint: the app is reached, but from the waypoint.
    let (name, peer, echo) = call(&m, a, vip(80).ip(), 80, "via waypoint").unwrap();
    assert_eq!((name.as_str(), echo.as_str()), ("b", "via waypoint"));
    assert_eq!(peer, wp_ip, "the waypoint re-originates the connection");
    let seen = standin.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        seen[0].authority,
        vip(80),
        "authority = the original VIP:port"
    );
    assert_eq!(seen[0].caller, id(&m, a).to_string());
    assert_eq!(
        seen[0].forwarded_for.map(|f| f.ip().to_string()),
        Some(a_ip.clone())
    );

    // The same pods behind a Service without a waypoint: direct, the waypoint sees nothing.
    let (name, peer, _) = call(&m, a, "10.96.0.11".parse().unwrap(), 80, "direct").unwrap();
    assert_eq!((name.as_str(), peer.as_str()), ("b", a_ip.as_str()));
    assert_eq!(standin.seen().len(), 1);

    // A workload with a waypoint, by pod IP and behind a Service without one.
    for (dst, port) in [
        (IpAddr::from(m.ip(d)), 8080),
        ("10.96.0.12".parse().unwrap(), 80),
    ] {
        let (name, peer, _) = call(&m, a, dst, port, "to d").unwrap();
        assert_eq!((name.as_str(), peer.as_str()), ("d", wp_ip.as_str()));
        let last = standin.seen().pop().unwrap();
        assert_eq!(
            last.authority, d_ep,
            "authority = the pod, for {dst}:{port}"
        );
        assert_eq!(last.caller, id(&m, a).to_string());
    }
    assert_eq!(standin.seen().len(), 3);

    let src = m.metrics(0);
    let wp_principal = id(&m, wp).to_string();
    let via = [
        ("reporter", "source"),
        ("destination_service", "b.default.svc"),
        ("destination_workload", "wp"),
        ("destination_principal", wp_principal.as_str()),
        ("connection_security_policy", "mutual_tls"),
    ];
    assert_eq!(metric_sum(&src, OPENED, &via), 1.0, "{src}");
    let direct = [
        ("reporter", "source"),
        ("destination_service", "b-direct.default.svc"),
        ("destination_workload", "b"),
    ];
    assert_eq!(metric_sum(&src, OPENED, &direct), 1.0, "{src}");
    // The backend's ztunnel authorized and counted the waypoint as the caller.
    let dst = m.metrics(1);
    let from_wp = [
        ("reporter", "destination"),
        ("source_workload", "wp"),
        ("source_principal", wp_principal.as_str()),
        ("destination_workload", "b"),
    ];
    assert_eq!(metric_sum(&dst, OPENED, &from_wp), 1.0, "{dst}");
    let a_principal = id(&m, a).to_string();
    let from_a = [
        ("reporter", "destination"),
        ("source_principal", a_principal.as_str()),
    ];
    assert_eq!(
        metric_sum(&dst, OPENED, &from_a),
        1.0,
        "only the direct call reached a backend from a: {dst}"
    );
}

#[test]
fn an_unavailable_waypoint_fails_closed() {
    let mut m = mesh("wpdown", 2);
    let a = m.add_pod(0, "a", "default", "sa-a", &[]).unwrap();
    let b = m
        .add_pod(1, "b", "default", "sa-b", &[("app", "b")])
        .unwrap();
    let wp = m
        .add_pod(1, "wp", "default", "waypoint", &[("gateway", "wp")])
        .unwrap();
    // A "waypoint" pod where nothing listens on 15008.
    let dead = m
        .add_pod(1, "dead", "default", "waypoint", &[("gateway", "dead")])
        .unwrap();
    m.pods[wp].captured = false;
    m.pods[dead].captured = false;
    let services = vec![
        svc("b", VIP, 80, json!({"app": "b"}), Some("wp")),
        waypoint_svc("wp", "10.96.0.99", "wp"),
        waypoint_svc("dead", "10.96.0.98", "dead"),
    ];
    m.services = services.clone();
    m.enroll(a).unwrap();
    m.enroll(b).unwrap();
    m.start_ztunnel(0).unwrap();
    m.start_ztunnel(1).unwrap();
    let app = serve(&m, b, 8080);
    let b_ep = SocketAddr::new(m.ip(b).into(), 8080);
    let _standin = StandIn::start(&m, wp, Routes::from([(vip(80), (b_ep, id(&m, b)))]));
    let vip_ip = vip(80).ip();
    assert_eq!(call(&m, a, vip_ip, 80, "up").unwrap().0, "b");

    let failed = |m: &Mesh| {
        metric_sum(
            &m.metrics(0),
            FAILED,
            &[("reporter", "source"), ("reason", "waypoint_unavailable")],
        )
    };
    // Each way the waypoint can go away: the connection is reset, counted, never bypassed.
    let cases: [(&str, Patch, &str); 3] = [
        (
            "waypoint pod unhealthy",
            Box::new(|cfg| workload(cfg, "wp")["healthy"] = json!(false)),
            "its Service has no healthy endpoints",
        ),
        (
            "waypoint Service removed",
            Box::new(|cfg| cfg["services"] = json!([services[0]])),
            "its Service is not in the config",
        ),
        (
            "waypoint pod unreachable",
            Box::new(|cfg| cfg["services"][0]["waypoint"]["name"] = json!("dead")),
            "waypoint default/dead for b.default.svc unreachable",
        ),
    ];
    for (case, patch, log) in cases {
        // From a working waypoint each time, so the failure is this case's.
        write_config(&m, |_| {});
        assert!(
            eventually(Duration::from_secs(5), || call(&m, a, vip_ip, 80, "ok")
                .is_ok()),
            "{case}: traffic through the waypoint never recovered"
        );
        write_config(&m, |cfg| patch(cfg));
        assert!(
            eventually(Duration::from_secs(5), || call(&m, a, vip_ip, 80, "x")
                .is_err()),
            "{case}: the config change never took effect"
        );
        let (reached, before) = (app.accepted(), failed(&m));
        for i in 0..3 {
            let r = call(&m, a, vip_ip, 80, "must not pass");
            assert!(r.is_err(), "{case}: call {i} got through: {r:?}");
        }
        assert_eq!(
            app.accepted(),
            reached,
            "{case}: the backend received a connection"
        );
        assert!(
            failed(&m) >= before + 3.0,
            "{case}: failures not counted:\n{}",
            m.metrics(0)
        );
        assert!(
            m.log(0).contains(log),
            "{case}: log lacks {log:?}:\n{}",
            m.log(0)
        );
    }
}

#[test]
fn the_waypoints_own_traffic_is_not_sent_back_to_it() {
    let mut m = mesh("wpself", 2);
    let a = m.add_pod(0, "a", "default", "sa-a", &[]).unwrap();
    let b = m
        .add_pod(1, "b", "default", "sa-b", &[("app", "b")])
        .unwrap();
    // Captured this time, so its outbound goes through ztunnel like any pod's.
    let wp = m
        .add_pod(0, "wp", "default", "waypoint", &[("gateway", "wp")])
        .unwrap();
    m.services = vec![
        svc("b", VIP, 80, json!({"app": "b"}), Some("wp")),
        waypoint_svc("wp", "10.96.0.99", "wp"),
    ];
    for p in [a, b, wp] {
        m.enroll(p).unwrap();
    }
    m.start_ztunnel(0).unwrap();
    m.start_ztunnel(1).unwrap();
    let app = serve(&m, b, 8080);

    let (name, peer, _) = call(&m, wp, vip(80).ip(), 80, "upstream").unwrap();
    assert_eq!((name, peer), ("b".to_string(), m.ip(wp).to_string()));
    let direct = [
        ("reporter", "source"),
        ("source_workload", "wp"),
        ("destination_service", "b.default.svc"),
        ("destination_workload", "b"),
    ];
    assert_eq!(metric_sum(&m.metrics(0), OPENED, &direct), 1.0);

    // Anyone else's traffic to the Service does go to the waypoint pod, whose 15008 here is
    // ztunnel's own (which refuses to relay): so it fails, and the backend sees nothing new.
    assert!(call(&m, a, vip(80).ip(), 80, "x").is_err());
    assert_eq!(app.accepted(), 1);
    let refused = metric_sum(
        &m.metrics(0),
        "ambit_tcp_connections_denied_total",
        &[
            ("reporter", "destination"),
            ("reason", "destination_not_local"),
        ],
    );
    assert!(
        refused >= 1.0,
        "a's connection never reached the waypoint pod"
    );
}

#[test]
fn allow_policy_with_l7_conditions_denies_at_l4() {
    let mut m = mesh("wpl7", 1);
    let a = m.add_pod(0, "a", "default", "sa-a", &[]).unwrap();
    let b = m
        .add_pod(0, "b", "default", "sa-b", &[("app", "b")])
        .unwrap();
    let a_principal = id(&m, a).to_string();
    let rule = |methods: bool| {
        let mut to = json!({"ports": [8080]});
        if methods {
            to["methods"] = json!(["GET"]);
        }
        json!({"name": "allow-a", "namespace": "default", "selector": {"app": "b"},
            "action": "ALLOW", "rules": [{"from": [{"principals": [a_principal]}], "to": [to]}]})
    };
    m.policies = vec![rule(true)];
    m.enroll(a).unwrap();
    m.enroll(b).unwrap();
    m.start_ztunnel(0).unwrap();
    let app = serve(&m, b, 8080);
    let b_ip = IpAddr::from(m.ip(b));
    assert!(
        call(&m, a, b_ip, 8080, "GET /").is_err(),
        "ztunnel can't see the method"
    );
    assert_eq!(app.accepted(), 0);
    let denied = metric_sum(
        &m.metrics(0),
        "ambit_tcp_connections_denied_total",
        &[("reporter", "destination"), ("reason", "denied_by_policy")],
    );
    assert!(denied >= 1.0);
    // The same rule without the L7 condition admits a: the condition was the reason.
    m.policies = vec![rule(false)];
    m.write_config().unwrap();
    assert!(eventually(Duration::from_secs(5), || call(
        &m, a, b_ip, 8080, "x"
    )
    .is_ok()));
}
