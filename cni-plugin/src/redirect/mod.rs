//! In-pod traffic redirection, the way Istio ambient's in-pod mode does it.
//!
//! Everything lives inside the pod's own network namespace:
//!
//! * one nftables table, `inet ambit`, loaded by a single `nft -f` transaction (created
//!   outright in a fresh namespace, replaced atomically otherwise), with four chains:
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
//! [`apply`] is idempotent and atomic (a failure removes whatever it added), and [`remove`]
//! restores the namespace exactly to what it was before (checked by the tests byte for byte
//! via [`dump`]).
//!
//! Cost per pod: the rules and routes go over netlink from the thread that entered the
//! namespace and the nftables table is one `nft -f` process, so applying redirection to a
//! fresh pod runs one process (it used to run seven: `ip rule list/add` and `ip route
//! replace` per IP family, then `nft`). [`remove`] and [`is_applied`] run none.

mod cmd;
mod ops;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::ExitStatus;

pub(crate) use cmd::{in_netns, Ns};
pub use ops::{apply, dump, is_applied, remove};

use crate::netlink::NetlinkError;

/// The nftables table holding every rule (family `inet`).
pub const NFT_TABLE: &str = "ambit";

const NFT_HINT: &str = "is nftables installed (apt-get install nftables) and does the kernel have nf_tables with NAT (nft_nat, nft_redir, nft_ct)?";
const IP_HINT: &str = "is iproute2 installed (apt-get install iproute2)? Changing rules and routes needs CAP_NET_ADMIN";
const NETLINK_HINT: &str = "the node agent needs CAP_NET_ADMIN, and the kernel policy routing (CONFIG_IP_MULTIPLE_TABLES) and nf_tables";

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

    #[error("netlink request failed in network namespace {netns}: {source}; {hint}")]
    Netlink {
        netns: PathBuf,
        #[source]
        source: NetlinkError,
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

    /// The `nft -f` script that replaces the table atomically wherever it is: it first
    /// creates and deletes the table, so loading it replaces any previous version. Deleting
    /// a table makes the kernel wait for an RCU grace period when `nft` closes its socket
    /// (10–20 ms here), so [`apply`] uses it only when the table is already there.
    pub fn nft_script(&self) -> String {
        format!(
            "table inet {NFT_TABLE} {{}}\ndelete table inet {NFT_TABLE}\n{}",
            self.nft_table()
        )
    }

    /// The `nft -f` script for a namespace without the table: `create` fails the whole
    /// transaction (and changes nothing) if the table appeared meanwhile.
    pub fn nft_create_script(&self) -> String {
        format!("create table inet {NFT_TABLE}\n{}", self.nft_table())
    }

    fn nft_table(&self) -> String {
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
            "table inet {NFT_TABLE} {{
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
    fn create_script_fails_rather_than_duplicate_rules() {
        let cfg = RedirectConfig::default();
        let create = cfg.nft_create_script();
        assert!(create.starts_with("create table inet ambit\ntable inet ambit {"));
        assert!(!create.contains("delete"));
        // Both scripts load the same table.
        assert!(cfg
            .nft_script()
            .ends_with(&create["create table inet ambit\n".len()..]));
    }
}
