//! Finding a running pod's network namespace from its IP.
//!
//! A pod that is already running when its namespace gets enrolled never passes through the
//! CNI plugin again, so the agent has no netns path for it. It finds one by looking at every
//! network namespace on the node (named ones under /var/run/netns, as container runtimes
//! create, and those of live processes under /proc) for the one that owns the pod's IP.

use std::collections::HashSet;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Directories of named network namespaces, in the order they are searched.
pub const NAMED_NETNS_DIRS: &[&str] = &["/var/run/netns", "/run/netns"];

/// Every distinct network namespace on the node except `skip_inode` (the agent's own),
/// as paths that can be opened. With `only_named`, just named namespaces with that prefix.
fn candidates(skip_inode: Option<u64>, only_named: Option<&str>) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    if let Some(i) = skip_inode {
        seen.insert(i);
    }
    let mut out = vec![];
    let mut consider = |p: PathBuf| {
        if let Ok(meta) = fs::metadata(&p) {
            if seen.insert(meta.ino()) {
                out.push(p);
            }
        }
    };
    for dir in NAMED_NETNS_DIRS {
        if let Ok(entries) = fs::read_dir(dir) {
            let mut names: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    only_named.is_none_or(|prefix| {
                        p.file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| n.starts_with(prefix))
                    })
                })
                .collect();
            names.sort();
            names.into_iter().for_each(&mut consider);
        }
    }
    if only_named.is_some() {
        return out;
    }
    if let Ok(procs) = fs::read_dir("/proc") {
        for e in procs.filter_map(Result::ok) {
            if e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                consider(e.path().join("ns/net"));
            }
        }
    }
    out
}

/// Does the namespace at `path` have `ip` on one of its interfaces?
fn owns_ip(path: &Path, ip: IpAddr) -> bool {
    let family = if ip.is_ipv4() { "-4" } else { "-6" };
    crate::redirect::in_netns(path, |ns| {
        ns.check("ip", &["-o", family, "addr", "show"], None)
    })
    .map(|out| {
        out.split_whitespace()
            .filter_map(|w| w.split('/').next())
            .any(|w| w.parse::<IpAddr>().ok() == Some(ip))
    })
    .unwrap_or(false)
}

/// The network namespace holding `ip`, if any (the agent's own namespace is never returned).
pub fn find_by_ip(ip: IpAddr) -> Option<PathBuf> {
    find_by_ip_scoped(ip, None)
}

/// Like [`find_by_ip`], optionally searching only named namespaces starting with `prefix`:
/// several simulated nodes on one machine (tests, the sandbox) reuse the same pod IPs.
pub fn find_by_ip_scoped(ip: IpAddr, prefix: Option<&str>) -> Option<PathBuf> {
    let own = fs::metadata("/proc/self/ns/net").ok().map(|m| m.ino());
    candidates(own, prefix).into_iter().find(|p| owns_ip(p, ip))
}
