//! In-pod traffic redirection, the way Istio ambient's in-pod mode does it.
//!
//! Everything lives inside the pod's own network namespace:
//!
//! * one nftables table, `inet ambit`, replaced atomically by a single
//!   `nft -f` transaction, with four chains:
//!   - `mangle_prerouting`: packets carrying the mesh mark (ztunnel's own
//!     spoofed-source connections to the local app, looped back over `lo`)
//!     get the connection mark;
//!   - `mangle_output` (a `route` chain, so the kernel re-routes): packets of
//!     connections with the connection mark get it as packet mark, so the
//!     app's replies to a non-local (spoofed) source are policy-routed back
//!     to the local ztunnel socket;
//!   - `nat_prerouting`: inbound TCP is redirected to the inbound plaintext
//!     port, except HBONE (15008), loopback destinations, mesh-marked
//!     packets and kubelet probes (SNATed to `probe_source_v4` by the agent);
//!   - `nat_output`: outbound TCP not leaving via `lo` and not mesh-marked is
//!     redirected to the outbound port;
//! * policy routing for IPv4 and IPv6: `fwmark connmark/mask` → table
//!   `route_table`, which holds one `local` default route via `lo`.
//!
//! [`apply`] is idempotent and [`remove`] restores the namespace exactly to
//! what it was before (checked by the tests byte for byte via [`dump`]).

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

/// The nftables table holding every rule (family `inet`).
pub const NFT_TABLE: &str = "ambit";

const NFT_HINT: &str = "is nftables installed (apt-get install nftables) and does the kernel have nf_tables with NAT (nft_nat, nft_redir, nft_ct)?";
const IP_HINT: &str = "is iproute2 installed (apt-get install iproute2)? Changing rules and routes needs CAP_NET_ADMIN";

/// Marks, ports and routing knobs of the redirection. The defaults are the
/// numbers Istio ambient users know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectConfig {
    /// Outbound capture listener (ztunnel, inside the pod namespace).
    pub outbound_port: u16,
    /// Inbound plaintext capture listener.
    pub inbound_plaintext_port: u16,
    /// Inbound HBONE listener: never redirected.
    pub hbone_port: u16,
    /// SO_MARK of the mesh's own sockets; such packets are never redirected.
    pub mesh_mark: u32,
    /// Bits of the packet / conntrack mark that Ambit owns.
    pub mesh_mark_mask: u32,
    /// Conntrack mark for connections ztunnel opened with a spoofed source.
    pub connmark: u32,
    /// Routing table holding the `local default dev lo` route.
    pub route_table: u32,
    /// Priority of the `fwmark connmark/mask lookup route_table` rule; must
    /// sort before the main table (32766).
    pub rule_priority: u32,
    /// Kubelet probes are SNATed to this address by the node agent and are
    /// not captured, so health checks keep working for enrolled pods.
    pub probe_source_v4: Option<Ipv4Addr>,
}

impl Default for RedirectConfig {
    fn default() -> Self {
        RedirectConfig {
            outbound_port: 15001,
            inbound_plaintext_port: 15006,
            hbone_port: 15008,
            mesh_mark: 0x539,
            mesh_mark_mask: 0xfff,
            connmark: 0x111,
            route_table: 100,
            rule_priority: 32764,
            probe_source_v4: Some(Ipv4Addr::new(169, 254, 7, 127)),
        }
    }
}

/// Why redirection could not be applied, removed or inspected.
#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error("invalid redirect config: {0}")]
    InvalidConfig(String),

    #[error("cannot open network namespace {netns}: {source}; pass the path of a live namespace such as /var/run/netns/NAME or /proc/PID/ns/net")]
    OpenNetns {
        netns: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot enter network namespace {netns}: {source}; setns(CLONE_NEWNET) needs CAP_SYS_ADMIN (run as root / a privileged node agent) and the path must be a network namespace")]
    EnterNetns {
        netns: PathBuf,
        #[source]
        source: nix::Error,
    },

    #[error("cannot run `{command}` in network namespace {netns}: {source}; {hint}")]
    Spawn {
        netns: PathBuf,
        command: String,
        #[source]
        source: std::io::Error,
        hint: &'static str,
    },

    #[error("`{command}` failed in network namespace {netns} ({status}): {stderr}; {hint}")]
    Command {
        netns: PathBuf,
        command: String,
        status: ExitStatus,
        stderr: String,
        hint: &'static str,
    },

    #[error("cannot start a worker thread for network namespace {netns}: {source}")]
    Thread {
        netns: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl RedirectConfig {
    /// Rejects values that would make the rules loop, collide or clobber
    /// the kernel's own routing tables.
    pub fn validate(&self) -> Result<(), RedirectError> {
        let bad = |msg: String| Err(RedirectError::InvalidConfig(msg));
        let mask = self.mesh_mark_mask;
        if mask == 0 {
            return bad("mesh_mark_mask must not be 0".into());
        }
        for (name, mark) in [("mesh_mark", self.mesh_mark), ("connmark", self.connmark)] {
            if mark == 0 || mark & !mask != 0 {
                return bad(format!(
                    "{name} {mark:#x} must be non-zero and fit inside mesh_mark_mask {mask:#x}"
                ));
            }
        }
        if self.mesh_mark == self.connmark {
            return bad(format!(
                "mesh_mark and connmark must differ (both {:#x})",
                self.connmark
            ));
        }
        let ports = [
            self.outbound_port,
            self.inbound_plaintext_port,
            self.hbone_port,
        ];
        if ports.contains(&0)
            || ports[0] == ports[1]
            || ports[0] == ports[2]
            || ports[1] == ports[2]
        {
            return bad(format!(
                "outbound, inbound plaintext and HBONE ports must be distinct and non-zero, got {ports:?}"
            ));
        }
        if matches!(self.route_table, 0 | 253..=255) {
            return bad(format!(
                "route_table {} is reserved by the kernel (0, default 253, main 254, local 255); pick e.g. 100",
                self.route_table
            ));
        }
        if self.rule_priority == 0 || self.rule_priority >= 32766 {
            return bad(format!(
                "rule_priority {} must be in 1..32766 so it is consulted before the main table",
                self.rule_priority
            ));
        }
        Ok(())
    }

    /// The `nft -f` script [`apply`] loads. It first creates and deletes the
    /// table so that loading it replaces any previous version atomically.
    pub fn nft_script(&self) -> String {
        let mask = self.mesh_mark_mask;
        let keep = !mask;
        let mesh = self.mesh_mark;
        let ct = self.connmark;
        let out = self.outbound_port;
        let inb = self.inbound_plaintext_port;
        let hbone = self.hbone_port;
        let probe_in = self
            .probe_source_v4
            .map(|ip| format!("\t\tip saddr {ip} return\n"))
            .unwrap_or_default();
        let probe_out = self
            .probe_source_v4
            .map(|ip| format!("\t\tip daddr {ip} return\n"))
            .unwrap_or_default();
        format!(
            "table inet {NFT_TABLE} {{}}
delete table inet {NFT_TABLE}
table inet {NFT_TABLE} {{
\tchain mangle_prerouting {{
\t\ttype filter hook prerouting priority mangle; policy accept;
\t\tmeta mark & {mask:#x} == {mesh:#x} ct mark set ct mark & {keep:#x} | {ct:#x}
\t}}
\tchain mangle_output {{
\t\ttype route hook output priority mangle; policy accept;
\t\tct mark & {mask:#x} == {ct:#x} meta mark set meta mark & {keep:#x} | {ct:#x}
\t}}
\tchain nat_prerouting {{
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tmeta mark & {mask:#x} == {mesh:#x} return
{probe_in}\t\tip daddr 127.0.0.1 return
\t\tip6 daddr ::1 return
\t\ttcp dport != {hbone} redirect to :{inb}
\t}}
\tchain nat_output {{
\t\ttype nat hook output priority -100; policy accept;
\t\tmeta mark & {mask:#x} == {mesh:#x} return
\t\toifname \"lo\" return
{probe_out}\t\tmeta l4proto tcp redirect to :{out}
\t}}
}}
"
        )
    }

    fn rule_selector(&self) -> [String; 6] {
        [
            "fwmark".into(),
            format!("{:#x}/{:#x}", self.connmark, self.mesh_mark_mask),
            "priority".into(),
            self.rule_priority.to_string(),
            "table".into(),
            self.route_table.to_string(),
        ]
    }
}

/// Deletes the table if present, in one transaction (no error when absent).
fn nft_remove_script() -> String {
    format!("table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn flag(self) -> &'static str {
        match self {
            Family::V4 => "-4",
            Family::V6 => "-6",
        }
    }

    fn any(self) -> &'static str {
        match self {
            Family::V4 => "0.0.0.0/0",
            Family::V6 => "::/0",
        }
    }
}

/// Installs (or refreshes) redirection in the namespace at `netns`.
/// Idempotent: applying twice leaves exactly the state of applying once.
///
/// Routing is set up before the nftables table, so by the time traffic is
/// captured its replies can already be routed back to ztunnel.
pub fn apply(netns: &Path, cfg: &RedirectConfig) -> Result<(), RedirectError> {
    cfg.validate()?;
    let script = cfg.nft_script();
    in_netns(netns, |ns| {
        for family in [Family::V4, Family::V6] {
            if family == Family::V6 && !ipv6_enabled() {
                tracing::debug!(netns = %netns.display(), "IPv6 disabled, skipping IPv6 policy routing");
                continue;
            }
            ensure_rule(ns, family, cfg)?;
            let table = cfg.route_table.to_string();
            // `replace` is idempotent and never leaves the table empty.
            local_route(ns, family, "replace", &table)?;
        }
        ns.check("nft", &["-f", "-"], Some(&script))?;
        Ok(())
    })
}

/// Removes everything [`apply`] installs. Succeeds when nothing is
/// installed. The nftables table goes first, so capture stops before the
/// routes that serve it disappear.
pub fn remove(netns: &Path, cfg: &RedirectConfig) -> Result<(), RedirectError> {
    cfg.validate()?;
    in_netns(netns, |ns| {
        match ns.run("nft", &["-f", "-"], Some(&nft_remove_script())) {
            Ok(out) if out.status.success() => {}
            Ok(out) => return Err(ns.failed("nft", &["-f", "-"], &out)),
            // Without nft nobody could have installed the table.
            Err(RedirectError::Spawn { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                tracing::warn!(netns = %netns.display(), "nft not installed; no nftables rules to remove");
            }
            Err(e) => return Err(e),
        }
        let selector = cfg.rule_selector();
        let selector: Vec<&str> = selector.iter().map(String::as_str).collect();
        let table = cfg.route_table.to_string();
        for family in [Family::V4, Family::V6] {
            let mut list = vec![family.flag(), "rule", "list"];
            list.extend_from_slice(&selector);
            let out = ns.run("ip", &list, None)?;
            if !out.status.success() {
                // A kernel without IPv6 cannot hold IPv6 rules.
                if family == Family::V6 {
                    continue;
                }
                return Err(ns.failed("ip", &list, &out));
            }
            let mut del = vec![family.flag(), "rule", "del"];
            del.extend_from_slice(&selector);
            for _ in nonempty_lines(&out.stdout) {
                ns.check("ip", &del, None)?;
            }
            let routes = ns.run(
                "ip",
                &[family.flag(), "route", "show", "table", "all"],
                None,
            )?;
            if routes.status.success() && has_local_default(&routes.stdout, &table) {
                local_route(ns, family, "del", &table)?;
            }
        }
        Ok(())
    })
}

/// True when the `inet ambit` table exists in the namespace.
pub fn is_applied(netns: &Path) -> Result<bool, RedirectError> {
    in_netns(netns, |ns| {
        let tables = ns.check("nft", &["list", "tables"], None)?;
        let wanted = format!("table inet {NFT_TABLE}");
        Ok(tables.lines().any(|l| l.trim() == wanted))
    })
}

/// Everything redirection can touch, as text: `nft list ruleset`, IPv4 and
/// IPv6 rules and routes of every table, and `iptables-save` /
/// `ip6tables-save` when installed (their timestamp comments dropped so two
/// dumps compare byte for byte).
pub fn dump(netns: &Path) -> Result<String, RedirectError> {
    in_netns(netns, |ns| {
        let mut text = String::new();
        text.push_str("### nft list ruleset\n");
        text.push_str(&ns.check("nft", &["list", "ruleset"], None)?);
        for (program, args) in [
            ("ip", &["-4", "rule", "show"][..]),
            ("ip", &["-6", "rule", "show"][..]),
            ("ip", &["-4", "route", "show", "table", "all"][..]),
            ("ip", &["-6", "route", "show", "table", "all"][..]),
            ("iptables-save", &[][..]),
            ("ip6tables-save", &[][..]),
        ] {
            text.push_str(&format!("### {}\n", command_line(program, args)));
            match ns.run(program, args, None) {
                Ok(out) if out.status.success() => {
                    for line in out.stdout.lines() {
                        if !(program.ends_with("-save") && line.starts_with('#')) {
                            text.push_str(line);
                            text.push('\n');
                        }
                    }
                }
                // E.g. a kernel without IPv6: record it, do not fail.
                Ok(out) => text.push_str(&format!("(failed: {})\n", out.stderr.trim())),
                Err(RedirectError::Spawn { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    text.push_str("(not installed)\n");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(text)
    })
}

/// Adds the fwmark rule unless present; drops duplicates left by older
/// versions or by two agents racing.
/// `ip -4|-6 route <verb> local <any> dev lo table <table>`: the route that delivers
/// connmarked replies to ztunnel's transparent sockets.
fn local_route(
    ns: &Ns<'_>,
    family: Family,
    verb: &str,
    table: &str,
) -> Result<String, RedirectError> {
    ns.check(
        "ip",
        &[
            family.flag(),
            "route",
            verb,
            "local",
            family.any(),
            "dev",
            "lo",
            "table",
            table,
        ],
        None,
    )
}

fn ensure_rule(ns: &Ns<'_>, family: Family, cfg: &RedirectConfig) -> Result<(), RedirectError> {
    let selector = cfg.rule_selector();
    let selector: Vec<&str> = selector.iter().map(String::as_str).collect();
    let mut list = vec![family.flag(), "rule", "list"];
    list.extend_from_slice(&selector);
    let present = nonempty_lines(&ns.check("ip", &list, None)?).count();
    let mut add = vec![family.flag(), "rule", "add"];
    add.extend_from_slice(&selector);
    let mut del = vec![family.flag(), "rule", "del"];
    del.extend_from_slice(&selector);
    if present == 0 {
        let out = ns.run("ip", &add, None)?;
        // Someone else added it since we looked: same end state.
        if !out.status.success() && !out.stderr.contains("File exists") {
            return Err(ns.failed("ip", &add, &out));
        }
    }
    for _ in 1..present {
        ns.check("ip", &del, None)?;
    }
    Ok(())
}

fn nonempty_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.trim().is_empty())
}

/// Looks for `local default dev lo table <table> ...` in
/// `ip route show table all` output.
fn has_local_default(routes: &str, table: &str) -> bool {
    routes.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words.len() >= 2
            && words[0] == "local"
            && words[1] == "default"
            && words.windows(2).any(|w| w == ["dev", "lo"])
            && words.windows(2).any(|w| w == ["table", table])
    })
}

/// Read from a thread inside the namespace: /proc/sys/net follows the
/// reading thread's namespace.
fn ipv6_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
        .map(|v| v.trim() == "0")
        .unwrap_or(false)
}

struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs commands from a thread that has entered the namespace; children
/// inherit the thread's namespace.
pub(crate) struct Ns<'a> {
    path: &'a Path,
}

impl Ns<'_> {
    fn run(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<Output, RedirectError> {
        tracing::debug!(netns = %self.path.display(), "running {program} {}", args.join(" "));
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_err = |source| RedirectError::Spawn {
            netns: self.path.to_path_buf(),
            command: command_line(program, args),
            source,
            hint: hint(program, ""),
        };
        let mut child = cmd.spawn().map_err(spawn_err)?;
        if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A short write shows up as a failed exit status below.
            let _ = pipe.write_all(input.as_bytes());
        }
        let out = child.wait_with_output().map_err(spawn_err)?;
        Ok(Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }

    /// Like `run`, but a non-zero exit is an error; returns stdout.
    pub(crate) fn check(
        &self,
        program: &str,
        args: &[&str],
        stdin: Option<&str>,
    ) -> Result<String, RedirectError> {
        let out = self.run(program, args, stdin)?;
        if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(self.failed(program, args, &out))
        }
    }

    fn failed(&self, program: &str, args: &[&str], out: &Output) -> RedirectError {
        let stderr = out.stderr.trim().to_string();
        RedirectError::Command {
            netns: self.path.to_path_buf(),
            command: command_line(program, args),
            status: out.status,
            hint: hint(program, &stderr),
            stderr,
        }
    }
}

fn command_line(program: &str, args: &[&str]) -> String {
    std::iter::once(program)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ")
}

fn hint(program: &str, stderr: &str) -> &'static str {
    if stderr.contains("Operation not permitted") {
        "changing firewall rules and routes needs CAP_NET_ADMIN: run as root / a privileged node agent"
    } else if program == "nft" {
        NFT_HINT
    } else if program == "ip" {
        IP_HINT
    } else {
        "is the program installed and on PATH?"
    }
}

/// Runs `f` on a scoped thread that entered the network namespace at
/// `path`; the caller's thread never changes namespace.
pub(crate) fn in_netns<T: Send>(
    path: &Path,
    f: impl FnOnce(&Ns<'_>) -> Result<T, RedirectError> + Send,
) -> Result<T, RedirectError> {
    use ambit_core::netns::{run_in_thread, EnterError};
    let netns = path.to_path_buf();
    match run_in_thread(path, || f(&Ns { path })) {
        Ok(result) => result,
        Err(EnterError::Open { source, .. }) => Err(RedirectError::OpenNetns { netns, source }),
        Err(EnterError::Setns { source, .. }) => Err(RedirectError::EnterNetns { netns, source }),
        Err(EnterError::Thread { source, .. }) => Err(RedirectError::Thread { netns, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_matches_istio_numbers() {
        let cfg = RedirectConfig::default();
        cfg.validate().unwrap();
        assert_eq!(
            (
                cfg.outbound_port,
                cfg.inbound_plaintext_port,
                cfg.hbone_port
            ),
            (15001, 15006, 15008)
        );
        assert_eq!(
            (cfg.mesh_mark, cfg.mesh_mark_mask, cfg.connmark),
            (0x539, 0xfff, 0x111)
        );
    }

    #[test]
    fn invalid_configs_are_rejected_with_a_reason() {
        let base = RedirectConfig::default();
        let cases = [
            RedirectConfig {
                mesh_mark: 0x1539,
                ..base.clone()
            },
            RedirectConfig {
                connmark: 0x539,
                ..base.clone()
            },
            RedirectConfig {
                hbone_port: 15001,
                ..base.clone()
            },
            RedirectConfig {
                route_table: 254,
                ..base.clone()
            },
            RedirectConfig {
                rule_priority: 32766,
                ..base.clone()
            },
            RedirectConfig {
                mesh_mark_mask: 0,
                ..base.clone()
            },
        ];
        for cfg in cases {
            let err = cfg.validate().unwrap_err().to_string();
            assert!(err.starts_with("invalid redirect config"), "{err}");
        }
    }

    #[test]
    fn script_replaces_the_table_atomically() {
        let script = RedirectConfig::default().nft_script();
        assert!(
            script.starts_with("table inet ambit {}\ndelete table inet ambit\ntable inet ambit {")
        );
        assert!(script.contains("tcp dport != 15008 redirect to :15006"));
        assert!(script.contains("meta l4proto tcp redirect to :15001"));
        assert!(script.contains("ip saddr 169.254.7.127 return"));
        let no_probe = RedirectConfig {
            probe_source_v4: None,
            ..RedirectConfig::default()
        }
        .nft_script();
        assert!(!no_probe.contains("169.254"));
    }

    #[test]
    fn finds_the_local_default_route() {
        let routes = "default via 10.0.0.1 dev eth0\nlocal default dev lo table 100 scope host\n";
        assert!(has_local_default(routes, "100"));
        assert!(!has_local_default(routes, "101"));
        assert!(has_local_default(
            "local default dev lo table 100 metric 1024 pref medium\n",
            "100"
        ));
        assert!(!has_local_default(
            "local 10.0.0.1 dev eth0 table local\n",
            "100"
        ));
    }
}
