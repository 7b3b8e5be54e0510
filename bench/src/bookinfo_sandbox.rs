//! The Bookinfo benchmark's sandbox, driven as a user drives it: the `ambitctl` binary as a
//! subprocess (`local up`, `apply -f`, `local status`, `local down`). Dropping the guard tears
//! the sandbox down, also when the benchmark fails or panics.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use serde_json::Value;

/// Where the sandbox puts network namespaces (`ip netns`).
const NETNS_DIR: &str = "/run/netns";
/// productpage's Service (ClusterIP and port) in the sandbox's demo app.
pub const PRODUCTPAGE_VIP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 96, 0, 10)), 9080);
/// The demo app's Services and the pods behind each (the sandbox's layout, `ambitctl local`).
const SERVICES: &[(&str, Ipv4Addr, &[&str])] = &[
    (
        "productpage",
        Ipv4Addr::new(10, 96, 0, 10),
        &["productpage-v1"],
    ),
    ("details", Ipv4Addr::new(10, 96, 0, 11), &["details-v1"]),
    (
        "reviews",
        Ipv4Addr::new(10, 96, 0, 12),
        &["reviews-v1", "reviews-v2", "reviews-v3"],
    ),
    ("ratings", Ipv4Addr::new(10, 96, 0, 13), &["ratings-v1"]),
];
/// The table the kube-proxy stand-in installs in each node namespace.
const KUBE_PROXY_TABLE: &str = "ambit_bench_kube_proxy";

pub struct Sandbox {
    pub name: String,
    ambitctl: PathBuf,
    state_file: PathBuf,
    state: Value,
}

/// Runs `ambitctl args...`; its stdout, or an error with its stderr.
fn ambitctl(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(bin)
        .args(args)
        // The error, not a backtrace, is what the report should show.
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} {}", bin.display(), args.join(" ")))?;
    if !out.status.success() {
        // `-o json` summaries say which check failed; keep the short fields of one.
        let summary: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let checks: serde_json::Map<String, Value> = summary
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| !v.is_array() && v.to_string().len() < 300)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        bail!(
            "`ambitctl {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
            if checks.is_empty() {
                String::new()
            } else {
                format!("\nsummary: {}", Value::Object(checks))
            }
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Sandbox {
    /// `ambitctl local up --name NAME`. The guard exists before `up` runs, so whatever `up`
    /// leaves behind is removed when it is dropped.
    pub fn up(bin: &Path, name: &str, nodes: u16) -> anyhow::Result<Sandbox> {
        if !bin.exists() {
            bail!(
                "{} is missing: build the sandbox's binaries first (`cargo build --release --bins`), or pass --ambitctl PATH",
                bin.display()
            );
        }
        let mut sb = Sandbox {
            name: name.into(),
            ambitctl: bin.to_path_buf(),
            state_file: PathBuf::from(format!("/run/ambit-sandbox.{name}/state.json")),
            state: Value::Null,
        };
        let nodes = nodes.to_string();
        // `up` checks the mesh with its default number of demo requests (enough to reach all
        // three reviews versions). One retry: the sandbox's own check is what ambitctl's tests
        // cover; here a transient miss on a loaded machine should not void a long benchmark.
        let mut attempt = 0;
        loop {
            attempt += 1;
            // A sandbox of this name left by a killed run (or the failed try) makes `up` refuse.
            let _ = ambitctl(bin, &["local", "down", "--name", name]);
            match ambitctl(
                bin,
                &[
                    "local", "up", "--name", name, "--nodes", &nodes, "-o", "json",
                ],
            ) {
                Ok(_) => break,
                Err(e) if attempt < 2 => {
                    eprintln!("bookinfo: warning: `local up` failed, trying once more: {e:#}")
                }
                Err(e) => return Err(e),
            }
        }
        let text = std::fs::read_to_string(&sb.state_file)
            .with_context(|| format!("reading {}", sb.state_file.display()))?;
        sb.state = serde_json::from_str(&text).context("the sandbox state file")?;
        Ok(sb)
    }

    fn ctl(&self, args: &[&str]) -> anyhow::Result<String> {
        let state = self.state_file.to_string_lossy().into_owned();
        // A global flag, accepted after the subcommand.
        let mut all = args.to_vec();
        all.extend_from_slice(&["--sandbox-state", state.as_str()]);
        ambitctl(&self.ambitctl, &all)
    }

    /// `ambitctl apply -f` of `yaml` (written to a file next to the sandbox's state).
    pub fn apply(&self, what: &str, yaml: &str) -> anyhow::Result<()> {
        let file = self.state_file.with_file_name(format!("bench-{what}.yaml"));
        std::fs::write(&file, yaml).with_context(|| format!("writing {}", file.display()))?;
        self.ctl(&["apply", "--force-conflicts", "-f", &file.to_string_lossy()])
            .map(drop)
    }

    /// Sets the `bookinfo` Namespace's two mesh labels with `ambitctl apply`.
    pub fn label_namespace(&self, dataplane_mode: &str, use_waypoint: &str) -> anyhow::Result<()> {
        let yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: bookinfo\n  labels:\n    \
             ambit.dev/dataplane-mode: {dataplane_mode}\n    ambit.dev/use-waypoint: {use_waypoint}\n"
        );
        self.apply("namespace", &yaml)
    }

    /// `ambitctl local status -o json`.
    pub fn status(&self) -> anyhow::Result<Value> {
        let out = ambitctl(
            &self.ambitctl,
            &["local", "status", "--name", &self.name, "-o", "json"],
        )?;
        serde_json::from_str(&out).context("`local status -o json` output")
    }

    /// Pods the ztunnels hold, over all nodes (unreachable nodes count none).
    pub fn captured_pods(&self) -> anyhow::Result<usize> {
        let s = self.status()?;
        Ok(s["capturedPods"]
            .as_object()
            .into_iter()
            .flat_map(|m| m.values())
            .filter_map(Value::as_array)
            .map(Vec::len)
            .sum())
    }

    /// (process name, pid) of every sandbox process, from its pid files.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let dir = self.state_file.with_file_name("pids");
        let mut out: Vec<(String, u32)> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.strip_suffix(".pid")?.to_string();
                let pid = std::fs::read_to_string(e.path())
                    .ok()?
                    .trim()
                    .parse()
                    .ok()?;
                Some((name, pid))
            })
            .collect();
        out.sort();
        out
    }

    fn pod(&self, name: &str) -> anyhow::Result<&Value> {
        self.state["sandbox"]["pods"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name)
            .with_context(|| format!("pod {name} is not in {}", self.state_file.display()))
    }

    pub fn client_netns(&self) -> anyhow::Result<PathBuf> {
        let ns = self.pod("client")?["netns"]
            .as_str()
            .context("client netns")?;
        Ok(Path::new(NETNS_DIR).join(ns))
    }

    fn node_netns(&self) -> Vec<String> {
        self.state["nodes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|n| n["netns"].as_str().map(String::from))
            .collect()
    }

    /// Sum of a ztunnel counter over every node's metrics endpoint (`:15020`).
    pub fn ztunnel_metric(&self, name: &str, labels: &[(&str, &str)]) -> anyhow::Result<f64> {
        let mut sum = 0.0;
        for n in self.state["nodes"].as_array().into_iter().flatten() {
            let addr = n["ztunnelMetrics"]
                .as_str()
                .or(n["ztunnel_metrics"].as_str())
                .context("node without a ztunnel metrics address in the state file")?;
            let text = http_get(addr, "/metrics")?;
            sum += ambit_testkit::mesh::metric_sum(&text, name, labels);
        }
        Ok(sum)
    }

    /// Sets `net.ipv4.tcp_tw_reuse=1` in every pod's network namespace. The demo app opens a
    /// new connection for every upstream call, so at hundreds of pages per second a pod holds
    /// tens of thousands of TIME_WAIT sockets and `connect()` spends its time searching for a
    /// free port (measured: productpage at 40 % of a core for 250 pages/s, mesh or not).
    /// Reuse lets new connections take over TIME_WAIT ports, as high-rate clients are tuned.
    pub fn tune_pods(&self) -> anyhow::Result<usize> {
        let mut n = 0;
        let pods = self.state["sandbox"]["pods"]
            .as_array()
            .into_iter()
            .flatten();
        let waypoints = self.state["waypoints"].as_array().into_iter().flatten();
        for ns in pods.chain(waypoints).filter_map(|p| p["netns"].as_str()) {
            let out = Command::new("ip")
                .args([
                    "netns",
                    "exec",
                    ns,
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.tcp_tw_reuse=1",
                ])
                .output()
                .context("running `ip netns exec ... sysctl` (install procps)")?;
            if !out.status.success() {
                bail!(
                    "setting net.ipv4.tcp_tw_reuse in {ns}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            n += 1;
        }
        Ok(n)
    }

    /// What kube-proxy does in a cluster without a mesh: DNAT from each Service VIP to its
    /// pods (random choice), in every node's namespace. The sandbox has no kube-proxy because
    /// ztunnel resolves VIPs for captured pods; pods released from the mesh need this.
    pub fn install_kube_proxy(&self) -> anyhow::Result<()> {
        let mut rules = String::new();
        for (_, vip, pods) in SERVICES {
            let ips = pods
                .iter()
                .map(|p| Ok(self.pod(p)?["ip"].as_str().context("pod ip")?.to_string()))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let to = match ips.as_slice() {
                [one] => one.clone(),
                many => {
                    let map: Vec<String> = many
                        .iter()
                        .enumerate()
                        .map(|(i, ip)| format!("{i} : {ip}"))
                        .collect();
                    format!(
                        "numgen random mod {} map {{ {} }}",
                        many.len(),
                        map.join(", ")
                    )
                }
            };
            rules.push_str(&format!(
                "    ip daddr {vip} tcp dport {} dnat to {to}\n",
                PRODUCTPAGE_VIP.port()
            ));
        }
        let script = format!(
            "table ip {KUBE_PROXY_TABLE} {{\n  chain services {{\n    type nat hook prerouting priority dstnat; policy accept;\n{rules}  }}\n}}\n"
        );
        for ns in self.node_netns() {
            nft(&ns, &script)?;
        }
        Ok(())
    }

    pub fn remove_kube_proxy(&self) {
        for ns in self.node_netns() {
            let _ = nft(&ns, &format!("delete table ip {KUBE_PROXY_TABLE}\n"));
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        eprintln!("tearing down sandbox {}", self.name);
        if let Err(e) = ambitctl(&self.ambitctl, &["local", "down", "--name", &self.name]) {
            eprintln!("warning: {e:#}");
        }
    }
}

fn nft(netns: &str, script: &str) -> anyhow::Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", netns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running `ip netns exec ... nft` (install nftables)")?;
    child
        .stdin
        .take()
        .context("nft stdin")?
        .write_all(script.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "nft in {netns} failed: {}\nscript:\n{script}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A plain HTTP/1.0 GET (the metrics endpoints answer and close).
fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let sock: SocketAddr = addr.parse().with_context(|| format!("address {addr}"))?;
    let mut s = TcpStream::connect_timeout(&sock, Duration::from_secs(5))
        .with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)
        .with_context(|| format!("reading {addr}{path}"))?;
    match body.split_once("\r\n\r\n") {
        Some((head, rest)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(rest.to_string())
        }
        _ => bail!(
            "GET {addr}{path}: unexpected answer {:?}",
            body.lines().next()
        ),
    }
}
