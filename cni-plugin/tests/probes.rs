//! Kubelet probes reach captured pods through the node's probe SNAT, and nothing else does.
use std::net::SocketAddr;

use ambit_cni::{probes, redirect};
use ambit_testkit::apps::{ask_once, LineApp};
use ambit_testkit::Topology;

#[test]
fn host_probes_bypass_capture_and_pod_traffic_does_not() {
    let mut topo = Topology::new("probes", 1).unwrap();
    let a = topo.add_pod(0, "a").unwrap();
    let b = topo.add_pod(0, "b").unwrap();
    let node = &topo.nodes[0];
    let cfg = redirect::RedirectConfig::default();
    let probe_ip = cfg.probe_source_v4.unwrap();
    // No table yet: removing is a no-op, adding says so (the agent then installs the table).
    probes::remove_pod(&node.ns.path(), a.ip).unwrap();
    let err = probes::add_pod(&node.ns.path(), a.ip)
        .unwrap_err()
        .to_string();
    assert!(err.contains("No such file or directory"), "{err}");
    redirect::apply(&a.ns.path(), &cfg).unwrap();
    let _app = LineApp::start(&a.ns, "a", 8080).unwrap();
    let target = SocketAddr::from((a.ip, 8080));

    // Captured, and no ztunnel listens on 15006: everything inbound is refused.
    assert!(
        ask_once(&node.ns, target, "probe").is_err(),
        "the kubelet got through without the SNAT"
    );

    probes::apply(&node.ns.path(), probe_ip, &[a.ip]).unwrap();
    let answer = ask_once(&node.ns, target, "probe").unwrap();
    assert_eq!(
        answer.peer,
        probe_ip.to_string(),
        "the app sees the probe address"
    );
    // Pod-to-pod traffic is still captured (refused here, as nothing serves 15006).
    assert!(
        ask_once(&b.ns, target, "sneak").is_err(),
        "pod traffic must not be SNATed past capture"
    );

    // Idempotent add; remove takes the pod out again.
    probes::add_pod(&node.ns.path(), a.ip).unwrap();
    probes::remove_pod(&node.ns.path(), a.ip).unwrap();
    probes::remove_pod(&node.ns.path(), a.ip).unwrap();
    assert!(ask_once(&node.ns, target, "probe").is_err());
    probes::add_pod(&node.ns.path(), a.ip).unwrap();
    assert!(ask_once(&node.ns, target, "probe").is_ok());
    // The netlink element matches what `nft` itself would list.
    let set = node
        .ns
        .exec(&[
            "nft",
            "list",
            "set",
            "ip",
            probes::HOST_TABLE,
            "enrolled_pods",
        ])
        .unwrap();
    assert!(set.contains(&format!("elements = {{ {} }}", a.ip)), "{set}");

    // Uninstall leaves no table behind, and is idempotent.
    probes::remove(&node.ns.path()).unwrap();
    probes::remove(&node.ns.path()).unwrap();
    let ruleset = node.ns.exec(&["nft", "list", "ruleset"]).unwrap();
    assert!(!ruleset.contains(probes::HOST_TABLE), "{ruleset}");
}
