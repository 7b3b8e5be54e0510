//! [`apply`], [`remove`], [`is_applied`] and [`dump`]: each runs on a thread inside the
//! pod's namespace.

use std::path::Path;

use nix::errno::Errno;

use super::cmd::command_line;
use super::{in_netns, Ns, RedirectConfig, RedirectError, NFT_TABLE};
use crate::netlink::nftables::{self, NftFamily};
use crate::netlink::route::{Change, Family, FwmarkRule, Rtnl};
use crate::netlink::NetlinkError;

const FAMILIES: [Family; 2] = [Family::V4, Family::V6];

fn fwmark_rule(cfg: &RedirectConfig, family: Family) -> FwmarkRule {
    FwmarkRule {
        family,
        mark: cfg.connmark,
        mask: cfg.mesh_mark_mask,
        priority: cfg.rule_priority,
        table: cfg.route_table,
    }
}

/// The loopback interface's index in the calling thread's namespace.
fn loopback(ns: &Ns<'_>) -> Result<u32, RedirectError> {
    nix::net::if_::if_nametoindex("lo").map_err(|errno| {
        ns.netlink(NetlinkError {
            op: "looking up the loopback interface".into(),
            errno,
        })
    })
}

/// Read from a thread inside the namespace: /proc/sys/net follows the reading thread's
/// namespace.
fn ipv6_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/lo/disable_ipv6")
        .map(|v| v.trim() == "0")
        .unwrap_or(false)
}

/// Something [`apply`] added, taken back if a later step fails.
enum Added {
    Route(Family),
    Rule(FwmarkRule),
}

/// Installs (or refreshes) redirection in the namespace at `netns`.
///
/// Idempotent: applying twice leaves exactly the state of applying once. Atomic: if a step
/// fails, the routes and rules this call added are removed again (the nftables table is
/// one transaction and either loads entirely or not at all). Routing is set up before the
/// nftables table, so by the time traffic is captured its replies can be routed back.
pub fn apply(netns: &Path, cfg: &RedirectConfig) -> Result<(), RedirectError> {
    cfg.validate()?;
    in_netns(netns, |ns| {
        let mut rtnl = Rtnl::open().map_err(|e| ns.netlink(e))?;
        let lo = loopback(ns)?;
        let mut added = Vec::new();
        let result = install(ns, cfg, &mut rtnl, lo, &mut added);
        if result.is_err() {
            for step in added.iter().rev() {
                let undone = match step {
                    Added::Route(family) => rtnl
                        .delete_local_default(*family, cfg.route_table, lo)
                        .map(drop),
                    Added::Rule(rule) => rtnl.delete_rules(rule).map(drop),
                };
                if let Err(e) = undone {
                    tracing::warn!(netns = %netns.display(), error = %e, "rolling back a half-applied redirection failed");
                }
            }
        }
        result
    })
}

fn install(
    ns: &Ns<'_>,
    cfg: &RedirectConfig,
    rtnl: &mut Rtnl,
    lo: u32,
    added: &mut Vec<Added>,
) -> Result<(), RedirectError> {
    for family in FAMILIES {
        if family == Family::V6 && !ipv6_enabled() {
            tracing::debug!(netns = %ns.path().display(), "IPv6 disabled, skipping IPv6 policy routing");
            continue;
        }
        let route = rtnl
            .ensure_local_default(family, cfg.route_table, lo)
            .map_err(|e| ns.netlink(e))?;
        if route == Change::Created {
            added.push(Added::Route(family));
        }
        let rule = fwmark_rule(cfg, family);
        if rtnl.add_rule(&rule).map_err(|e| ns.netlink(e))? == Change::Created {
            added.push(Added::Rule(rule));
        }
    }
    load_table(ns, cfg)
}

/// One `nft -f`: the cheap create script in a namespace without the table (the common case:
/// a new pod), the replacing script otherwise.
fn load_table(ns: &Ns<'_>, cfg: &RedirectConfig) -> Result<(), RedirectError> {
    let present = nftables::table_exists(NftFamily::Inet, NFT_TABLE).unwrap_or_else(|e| {
        // e.g. nf_tables not loaded yet: nft loads it, and `create` is safe either way.
        tracing::debug!(error = %e, "cannot look up the nftables table; trying to create it");
        false
    });
    if !present {
        let out = ns.run("nft", &["-f", "-"], Some(&cfg.nft_create_script()))?;
        if out.status.success() {
            return Ok(());
        }
        // Most likely someone created the table since we looked: replace it.
        tracing::debug!(stderr = %out.stderr.trim(), "creating the nftables table failed; replacing it instead");
    }
    ns.check("nft", &["-f", "-"], Some(&cfg.nft_script()))
        .map(drop)
}

/// Removes everything [`apply`] installs. Succeeds when nothing is installed. The nftables
/// table goes first, so capture stops before the routes that serve it disappear.
pub fn remove(netns: &Path, cfg: &RedirectConfig) -> Result<(), RedirectError> {
    cfg.validate()?;
    in_netns(netns, |ns| {
        match nftables::delete_table(NftFamily::Inet, NFT_TABLE) {
            Ok(_) => {}
            // Without nf_tables nobody could have installed the table.
            Err(e) if matches!(e.errno, Errno::EPROTONOSUPPORT | Errno::EOPNOTSUPP) => {
                tracing::warn!(netns = %netns.display(), error = %e, "no nf_tables in the kernel; no nftables rules to remove");
            }
            Err(e) => return Err(ns.netlink(e)),
        }
        let mut rtnl = Rtnl::open().map_err(|e| ns.netlink(e))?;
        let lo = loopback(ns)?;
        for family in FAMILIES {
            // A kernel without IPv6 cannot hold IPv6 rules or routes.
            let absent = |e: &NetlinkError| family == Family::V6 && e.errno == Errno::EAFNOSUPPORT;
            match rtnl.delete_rules(&fwmark_rule(cfg, family)) {
                Err(e) if absent(&e) => continue,
                Err(e) => return Err(ns.netlink(e)),
                Ok(_) => {}
            }
            match rtnl.delete_local_default(family, cfg.route_table, lo) {
                Err(e) if !absent(&e) => return Err(ns.netlink(e)),
                _ => {}
            }
        }
        Ok(())
    })
}

/// True when the `inet ambit` table exists in the namespace.
pub fn is_applied(netns: &Path) -> Result<bool, RedirectError> {
    in_netns(netns, |ns| {
        nftables::table_exists(NftFamily::Inet, NFT_TABLE).map_err(|e| ns.netlink(e))
    })
}

/// Everything redirection can touch, as text: `nft list ruleset`, IPv4 and IPv6 rules and
/// routes of every table, and `iptables-save` / `ip6tables-save` when installed (their
/// timestamp comments dropped so two dumps compare byte for byte). For tests and
/// debugging: it runs the real tools, not the agent's netlink code.
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
