//! Kubelet probes for captured pods.
//!
//! Probes come from the node itself. Inside a captured pod they would be redirected to
//! ztunnel's plaintext listener and, for STRICT workloads, refused. Like Istio ambient, the
//! node agent SNATs host-originated TCP to enrolled pods to a link-local address
//! ([`crate::redirect::RedirectConfig::probe_source_v4`], 169.254.7.127), which the in-pod
//! rules let straight through to the app. Only traffic from the node's own sockets
//! (`fib saddr type local`) is rewritten; pod-to-pod traffic routed through the node is not.

use std::net::Ipv4Addr;
use std::path::Path;

use crate::netlink::nftables;
use crate::redirect::{in_netns, RedirectError};

/// nftables table (in the node's namespace) holding the probe SNAT and the set of pod IPs.
pub const HOST_TABLE: &str = "ambit_host";

fn script(probe_source: Ipv4Addr, pods: &[Ipv4Addr]) -> String {
    let elements = if pods.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = pods.iter().map(ToString::to_string).collect();
        format!("\t\telements = {{ {} }}\n", list.join(", "))
    };
    format!(
        "table ip {HOST_TABLE} {{}}\n\
         delete table ip {HOST_TABLE}\n\
         table ip {HOST_TABLE} {{\n\
         \tset enrolled_pods {{\n\
         \t\ttype ipv4_addr\n\
         {elements}\
         \t}}\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tfib saddr type local ip daddr @enrolled_pods meta l4proto tcp snat to {probe_source}\n\
         \t}}\n\
         }}\n"
    )
}

/// Installs (or atomically replaces) the probe SNAT in the node namespace at `node_netns`
/// for exactly `pods`.
pub fn apply(
    node_netns: &Path,
    probe_source: Ipv4Addr,
    pods: &[Ipv4Addr],
) -> Result<(), RedirectError> {
    let script = script(probe_source, pods);
    in_netns(node_netns, |ns| {
        ns.check("nft", &["-f", "-"], Some(&script)).map(|_| ())
    })
}

/// The set of enrolled pod IPs in [`HOST_TABLE`].
const POD_SET: &str = "enrolled_pods";

/// Adds one enrolled pod's IP (idempotent), over netlink: no process. Fails (ENOENT) when
/// the table is not installed yet; [`apply`] installs it.
pub fn add_pod(node_netns: &Path, ip: Ipv4Addr) -> Result<(), RedirectError> {
    in_netns(node_netns, |ns| {
        nftables::add_element(HOST_TABLE, POD_SET, ip).map_err(|e| ns.netlink(e))
    })
}

/// Removes one pod's IP; a pod that was never added (or no table at all) is fine.
pub fn remove_pod(node_netns: &Path, ip: Ipv4Addr) -> Result<(), RedirectError> {
    in_netns(node_netns, |ns| {
        nftables::delete_element(HOST_TABLE, POD_SET, ip)
            .map(drop)
            .map_err(|e| ns.netlink(e))
    })
}

/// Removes the table entirely (uninstall); absent is fine.
pub fn remove(node_netns: &Path) -> Result<(), RedirectError> {
    let script = format!("table ip {HOST_TABLE} {{}}\ndelete table ip {HOST_TABLE}\n");
    in_netns(node_netns, |ns| {
        ns.check("nft", &["-f", "-"], Some(&script)).map(|_| ())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_lists_pods_and_snats_only_host_traffic() {
        let s = script(
            "169.254.7.127".parse().unwrap(),
            &["10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap()],
        );
        assert!(s.contains("elements = { 10.0.0.1, 10.0.0.2 }"), "{s}");
        assert!(s.contains(
            "fib saddr type local ip daddr @enrolled_pods meta l4proto tcp snat to 169.254.7.127"
        ));
        assert!(!script("169.254.7.127".parse().unwrap(), &[]).contains("elements"));
    }
}
