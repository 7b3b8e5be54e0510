use std::net::Ipv4Addr;

use crate::error::Error;
use crate::netns::{sweep_stale, unique_prefix, NetNs};

/// Most nodes a topology can have (the node number is an IPv4 octet).
pub const MAX_NODES: usize = 200;
/// Most pods per node: pod IPs are 10.20.N.10 ..= 10.20.N.254.
pub const MAX_PODS_PER_NODE: u8 = 245;

/// A Kubernetes-like node layout built from network namespaces:
///
/// ```text
/// fabric ns   br0 ─┬─ n0 ══ veth ══ eth0 172.31.0.1/24   node ns 0
///                  └─ n1 ══ veth ══ eth0 172.31.0.2/24   node ns 1
/// node ns 0   cbr0 10.20.1.1/24 ─┬─ p0 ══ veth ══ eth0 10.20.1.10/24  pod ns
///                                └─ p1 ══ veth ══ eth0 10.20.1.11/24  pod ns
/// ```
///
/// Pods default-route via their node's `cbr0`; each node routes every other
/// node's pod CIDR via that node's fabric IP.
/// Addresses are fixed (every topology is isolated in its own namespaces).
/// Dropping the topology deletes the fabric and node namespaces; pods are
/// owned by the caller and deleted when their [`Pod`] is dropped.
#[derive(Debug)]
pub struct Topology {
    pub nodes: Vec<Node>,
    pub fabric: NetNs,
    prefix: String,
}

/// A node: a namespace with `eth0` on the fabric and a pod bridge `cbr0`.
#[derive(Debug)]
pub struct Node {
    pub ns: NetNs,
    /// 172.31.0.(index+1)
    pub ip: Ipv4Addr,
    /// 10.20.(index+1).0/24
    pub pod_cidr: (Ipv4Addr, u8),
    pub index: usize,
    next_pod: u8,
}

impl Node {
    /// The pods' default gateway: 10.20.(index+1).1 on `cbr0`.
    pub fn gateway(&self) -> Ipv4Addr {
        let [a, b, c, _] = self.pod_cidr.0.octets();
        Ipv4Addr::new(a, b, c, 1)
    }
}

/// A pod: a namespace whose `eth0` is a veth into its node's `cbr0`.
#[derive(Debug)]
pub struct Pod {
    pub ns: NetNs,
    /// 10.20.(node+1).(10+k) for the k-th pod of the node.
    pub ip: Ipv4Addr,
    pub node: usize,
    pub name: String,
    /// Name of the pod's veth peer in the node namespace (`p<k>`).
    pub host_veth: String,
}

impl Topology {
    /// Builds the fabric and `nodes` nodes, fully routed to each other's pod
    /// CIDRs. Sweeps namespaces left by killed test processes first.
    pub fn new(tag: &str, nodes: usize) -> Result<Topology, Error> {
        if nodes == 0 || nodes > MAX_NODES {
            return Err(Error::Invalid(format!(
                "a topology needs 1..={MAX_NODES} nodes, got {nodes}"
            )));
        }
        sweep_stale();
        let prefix = unique_prefix(tag);
        let fabric = NetNs::create(&format!("{prefix}-fab"))?;
        prepare(&fabric, false)?;
        fabric.ip_batch(&[
            // A fixed MAC so the bridge address never changes as ports join.
            "link add br0 address 02:a0:00:00:00:fe type bridge".into(),
            "link set br0 up".into(),
        ])?;
        let mut topo = Topology {
            nodes: Vec::with_capacity(nodes),
            fabric,
            prefix,
        };
        let mut fabric_cmds = Vec::new();
        for i in 0..nodes {
            let ns = NetNs::create(&format!("{}-n{i}", topo.prefix))?;
            let n = octet(i + 1);
            let node = Node {
                ns,
                ip: Ipv4Addr::new(172, 31, 0, n),
                pod_cidr: (Ipv4Addr::new(10, 20, n, 0), 24),
                index: i,
                next_pod: 0,
            };
            topo.nodes.push(node);
            let node = &topo.nodes[i];
            prepare(&node.ns, true)?;
            let mut cmds = vec![
                format!(
                    "link add eth0 type veth peer name n{i} netns {}",
                    topo.fabric.name()
                ),
                format!("addr add {}/24 dev eth0", node.ip),
                "link set eth0 up".into(),
                format!("link add cbr0 address 02:a0:00:00:{n:02x}:01 type bridge"),
                format!("addr add {}/24 dev cbr0", node.gateway()),
                "link set cbr0 up".into(),
            ];
            for j in (0..nodes).filter(|&j| j != i) {
                let m = octet(j + 1);
                cmds.push(format!("route add 10.20.{m}.0/24 via 172.31.0.{m}"));
            }
            node.ns.ip_batch(&cmds)?;
            fabric_cmds.push(format!("link set n{i} master br0"));
            fabric_cmds.push(format!("link set n{i} up"));
        }
        topo.fabric.ip_batch(&fabric_cmds)?;
        Ok(topo)
    }

    /// `ambit-<tag>-<pid>-<n>`: every namespace of this topology (and of its
    /// pods) starts with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Adds a pod to `node`; the caller owns it (drop deletes its namespace).
    pub fn add_pod(&mut self, node: usize, name: &str) -> Result<Pod, Error> {
        let count = self.nodes.len();
        let prefix = self.prefix.clone();
        let n = self.nodes.get_mut(node).ok_or_else(|| {
            Error::Invalid(format!(
                "node {node} does not exist (topology has {count} nodes)"
            ))
        })?;
        if name.is_empty()
            || name.len() > 40
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(Error::Invalid(format!(
                "pod name {name:?} must be 1-40 characters of [A-Za-z0-9._-]"
            )));
        }
        let k = n.next_pod;
        if k >= MAX_PODS_PER_NODE {
            return Err(Error::Invalid(format!(
                "node {node} already has {MAX_PODS_PER_NODE} pods, the most its /24 holds"
            )));
        }
        // Never reuse an index (and so an IP) even if this pod fails below.
        n.next_pod += 1;
        let [a, b, c, _] = n.pod_cidr.0.octets();
        let ip = Ipv4Addr::new(a, b, c, 10 + k);
        let ns = NetNs::create(&format!("{prefix}-n{node}-{name}"))?;
        prepare(&ns, false)?;
        let host_veth = format!("p{k}");
        n.ns.ip_batch(&[
            format!(
                "link add {host_veth} type veth peer name eth0 netns {}",
                ns.name()
            ),
            format!("link set {host_veth} master cbr0"),
            format!("link set {host_veth} up"),
        ])?;
        ns.ip_batch(&[
            format!("addr add {ip}/24 dev eth0"),
            "link set eth0 up".into(),
            format!("route add default via {}", n.gateway()),
        ])?;
        Ok(Pod {
            ns,
            ip,
            node,
            name: name.to_string(),
            host_veth,
        })
    }
}

fn octet(n: usize) -> u8 {
    u8::try_from(n).expect("node count is bounded by MAX_NODES")
}

/// Sysctls every namespace gets before any interface exists, so the
/// `default` values apply to the interfaces created afterwards.
fn prepare(ns: &NetNs, forward: bool) -> Result<(), Error> {
    let mut settings = vec![
        // Redirected / spoofed-source traffic is asymmetric by design.
        ("net.ipv4.conf.all.rp_filter", "0"),
        ("net.ipv4.conf.default.rp_filter", "0"),
    ];
    if forward {
        // New namespaces start with forwarding off.
        settings.push(("net.ipv4.ip_forward", "1"));
    }
    if std::path::Path::new("/proc/sys/net/ipv6").exists() {
        // Without this, IPv6 addresses stay "tentative" for ~1 s after link up.
        settings.push(("net.ipv6.conf.all.accept_dad", "0"));
        settings.push(("net.ipv6.conf.default.accept_dad", "0"));
    }
    for (key, value) in settings {
        ns.set_sysctl(key, value)?;
    }
    Ok(())
}
