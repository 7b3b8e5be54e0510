//! The agent finds a running pod's namespace from its IP.
use std::os::unix::fs::MetadataExt;

use ambit_cni::agent::netns_lookup::find_by_ip;
use ambit_testkit::Topology;

#[test]
fn finds_a_running_pods_namespace_by_ip_and_nothing_for_unknown_ips() {
    let mut topo = Topology::new("nslookup", 1).unwrap();
    let _a = topo.add_pod(0, "a").unwrap();
    let b = topo.add_pod(0, "b").unwrap();
    // Every topology reuses the same pod IPs and tests run in parallel, so search for an
    // address unique to this process rather than b's topology IP.
    let pid = std::process::id();
    let unique = format!("10.123.{}.{}", (pid >> 8) % 250 + 1, pid % 250 + 1);
    b.ns.exec(&["ip", "addr", "add", &format!("{unique}/32"), "dev", "eth0"])
        .unwrap();
    let found = find_by_ip(unique.parse().unwrap()).expect("pod b's namespace");
    let inode = |p: &std::path::Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(inode(&found), inode(&b.ns.path()));
    assert!(find_by_ip("10.99.99.99".parse().unwrap()).is_none());
}
