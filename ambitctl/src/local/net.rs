//! The sandbox's network: a bridge on the host (the cluster network, where the operator
//! listens), one network namespace per node on it, and pods as namespaces with a veth into
//! their node's pod bridge. Creating a pod's namespace, veth and address is the job of the
//! cluster's primary CNI plugin, which the sandbox plays here.
//!
//! ```text
//! host       asb<slot> 172.30.<slot>.254/24 ─┬─ asb<slot>n0 ══ eth0 172.30.<slot>.1   <name>-node-1
//!                                            └─ asb<slot>n1 ══ eth0 172.30.<slot>.2   <name>-node-2
//! node-1     cbr0 10.<100+slot>.1.1/24 ─── v<k> ══ eth0 10.<100+slot>.1.<10+k>        <name>-<pod>
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use ambit_testkit::NetNs;
use anyhow::{bail, Context};

use super::layout::{node_name, Layout, Net};

pub const NETNS_DIR: &str = "/var/run/netns";

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Runs `ip args...`, with `stdin` as a batch script if given.
pub fn ip(args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    run("ip", args, stdin)
}

pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {program}: is it installed?"))?;
    if let (Some(s), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows up as a failed exit status.
        let _ = pipe.write_all(s.as_bytes());
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            stdin.map(|s| format!("\ninput:\n{s}")).unwrap_or_default()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn batch(ns: &str, lines: &[String]) -> anyhow::Result<()> {
    ip(&["-n", ns, "-batch", "-"], Some(&(lines.join("\n") + "\n"))).map(drop)
}

fn sysctl(ns: &Path, key: &str, value: &str) -> anyhow::Result<()> {
    let path = Path::new("/proc/sys").join(key.replace('.', "/"));
    // /proc/sys/net resolves against the opening thread's namespace.
    ambit_core::netns::run_in_thread(ns, || std::fs::write(&path, value))?
        .with_context(|| format!("setting {key}={value} in {}", ns.display()))
}

fn prepare(ns: &Path, forward: bool) -> anyhow::Result<()> {
    sysctl(ns, "net.ipv4.conf.all.rp_filter", "0")?;
    sysctl(ns, "net.ipv4.conf.default.rp_filter", "0")?;
    if forward {
        sysctl(ns, "net.ipv4.ip_forward", "1")?;
    }
    Ok(())
}

/// Builds the bridge and the node namespaces. The returned guards delete the namespaces
/// when dropped; `local up` forgets them once the sandbox is up.
pub fn build_nodes(layout: &Layout, net: Net, nodes: usize) -> anyhow::Result<Vec<NetNs>> {
    let br = net.bridge();
    ip(
        &["-batch", "-"],
        Some(&format!(
            "link add {br} type bridge\naddr add {}/24 dev {br}\nlink set {br} up\n",
            net.host_ip()
        )),
    )
    .with_context(|| format!("creating the cluster bridge {br} on the host"))?;
    let mut out = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let ns = NetNs::create(&layout.netns(&node_name(i)))?;
        prepare(&ns.path(), true)?;
        let veth = net.node_veth(i);
        ip(
            &[
                "link",
                "add",
                &veth,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ],
            None,
        )?;
        ip(&["link", "set", &veth, "master", &br, "up"], None)?;
        let mut cmds = vec![
            format!("addr add {}/24 dev eth0", net.node_ip(i)),
            "link set eth0 up".into(),
            "link add cbr0 type bridge".into(),
            format!("addr add {}/24 dev cbr0", net.gateway(i)),
            "link set cbr0 up".into(),
        ];
        for j in (0..nodes).filter(|&j| j != i) {
            cmds.push(format!(
                "route add {} via {}",
                net.pod_cidr(j),
                net.node_ip(j)
            ));
        }
        batch(ns.name(), &cmds)?;
        // Pods (a waypoint) reach the operator on the host: the host has no routes to pod
        // CIDRs (every sandbox uses its own), so their traffic to it leaves with the node's IP.
        let nat = format!(
            "table ip ambit_sandbox_nat {{\n chain post {{\n  type nat hook postrouting priority 100;\n  ip saddr {} ip daddr {} masquerade\n }}\n}}\n",
            net.pod_supernet(),
            net.host_ip()
        );
        run(
            "ip",
            &["netns", "exec", ns.name(), "nft", "-f", "-"],
            Some(&nat),
        )
        .context("installing the node's NAT towards the host")?;
        out.push(ns);
    }
    Ok(out)
}

/// The primary CNI's part for one pod: namespace, veth into the node's `cbr0`, address,
/// default route. Returns the namespace path.
pub fn add_pod(
    layout: &Layout,
    net: Net,
    node: usize,
    k: usize,
    pod: &str,
) -> anyhow::Result<PathBuf> {
    let name = layout.netns(pod);
    ip(&["netns", "add", &name], None)?;
    let path = netns_path(&name);
    ip(&["-n", &name, "link", "set", "lo", "up"], None)?;
    prepare(&path, false)?;
    let node_ns = layout.netns(&node_name(node));
    let host_veth = format!("v{k}");
    batch(
        &node_ns,
        &[
            format!("link add {host_veth} type veth peer name eth0 netns {name}"),
            format!("link set {host_veth} master cbr0"),
            format!("link set {host_veth} up"),
        ],
    )?;
    batch(
        &name,
        &[
            format!("addr add {}/24 dev eth0", net.pod_ip(node, k)),
            "link set eth0 up".into(),
            format!("route add default via {}", net.gateway(node)),
        ],
    )?;
    Ok(path)
}

/// Deletes every namespace named `<name>-*` and the host bridge of `slot`. Returns the
/// number of namespaces deleted.
pub fn teardown(layout: &Layout, slot: Option<u8>) -> usize {
    let prefix = layout.netns_prefix();
    let mut deleted = 0;
    if let Ok(entries) = std::fs::read_dir(NETNS_DIR) {
        for e in entries.flatten() {
            let Some(n) = e.file_name().to_str().map(String::from) else {
                continue;
            };
            if n.starts_with(&prefix) && ip(&["netns", "del", &n], None).is_ok() {
                deleted += 1;
            }
        }
    }
    if let Some(s) = slot {
        let net = Net { slot: s };
        // Absent already is fine: down is idempotent.
        let _ = ip(&["link", "del", &net.bridge()], None);
        for i in 0..=crate::local::MAX_NODES {
            if link_exists(&net.node_veth(i)) {
                let _ = ip(&["link", "del", &net.node_veth(i)], None);
            }
        }
    }
    deleted
}

pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Namespaces of this sandbox still present.
pub fn remaining_netns(layout: &Layout) -> Vec<String> {
    let prefix = layout.netns_prefix();
    std::fs::read_dir(NETNS_DIR)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(String::from))
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}
