//! Checks of this machine: privileges, kernel, nftables, tools, network namespaces, CNI.

use std::path::Path;
use std::process::Command;

use super::Check;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
/// Kernel modules the in-pod redirection rules need (nat chains, redirect, conntrack marks).
const MODULES: &[&str] = &["nf_tables", "nft_chain_nat", "nft_redir", "nft_ct"];

pub fn all(cni_dir: &Path) -> Vec<Check> {
    let mut out = vec![privileges(), kernel()];
    out.extend(["nft", "ip", "iptables"].map(binary));
    let nft = nft_works();
    let nft_ok = nft.status == super::Verdict::Pass;
    out.push(nft);
    out.push(modules(nft_ok));
    out.push(netns_works());
    out.push(cni(cni_dir));
    out
}

fn proc_status_field(name: &str) -> Option<String> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
}

fn privileges() -> Check {
    let euid = proc_status_field("Uid:")
        .and_then(|u| u.split_whitespace().nth(1).map(str::to_string))
        .unwrap_or_default();
    let caps = proc_status_field("CapEff:")
        .and_then(|c| u64::from_str_radix(&c, 16).ok())
        .unwrap_or(0);
    let has = |bit: u32| caps & (1 << bit) != 0;
    let name = "privileges";
    match (euid == "0", has(CAP_NET_ADMIN), has(CAP_SYS_ADMIN)) {
        (_, true, true) => {
            Check::pass(name, format!("uid {euid}, CAP_NET_ADMIN and CAP_SYS_ADMIN"))
        }
        (root, net, sys) => Check::fail(
            name,
            format!("uid {euid} (root: {root}), CAP_NET_ADMIN: {net}, CAP_SYS_ADMIN: {sys}"),
            "run as root (sudo ambitctl ...) or grant CAP_NET_ADMIN and CAP_SYS_ADMIN",
        ),
    }
}

/// `5.15.0-91-generic` → (5, 15).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn kernel() -> Check {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    match kernel_version(release) {
        Some(v) if v >= (5, 4) => Check::pass("kernel", format!("Linux {release}")),
        Some(_) => Check::warn(
            "kernel",
            format!("Linux {release} is older than 5.4, the oldest kernel Ambit is tested on"),
            "upgrade the node's kernel to 5.4 or newer",
        ),
        None => Check::warn(
            "kernel",
            format!("cannot read the kernel version ({release:?})"),
            "check /proc/sys/kernel/osrelease",
        ),
    }
}

fn which(bin: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(Into::into))
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

fn binary(bin: &str) -> Check {
    let name = format!("binary {bin}");
    match which(bin) {
        Some(p) => Check::pass(&name, p.display().to_string()),
        None => Check::fail(
            &name,
            format!("{bin} not found on PATH"),
            format!(
                "install it (Debian/Ubuntu: apt-get install {})",
                match bin {
                    "ip" => "iproute2",
                    other => other,
                }
            ),
        ),
    }
}

fn run(cmd: &str, args: &[&str]) -> Result<String, String> {
    let bin = which(cmd).ok_or_else(|| format!("{cmd} not found"))?;
    let out = Command::new(bin)
        .args(args)
        .output()
        .map_err(|e| format!("running {cmd}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{cmd} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn nft_works() -> Check {
    match run("nft", &["list", "tables"]) {
        Ok(_) => Check::pass("nftables", "`nft list tables` works"),
        Err(e) => Check::fail(
            "nftables",
            e,
            "the kernel needs nf_tables (modprobe nf_tables) and nft needs CAP_NET_ADMIN",
        ),
    }
}

/// Where a kernel module is: loaded, built in, loadable, or nowhere to be seen.
pub fn module_state(
    name: &str,
    proc_modules: &str,
    builtin: &str,
    dep: &str,
) -> Option<&'static str> {
    let file = format!("/{name}.ko");
    if proc_modules
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
    {
        Some("loaded")
    } else if builtin.lines().any(|l| l.contains(&file)) {
        Some("built-in")
    } else if dep
        .lines()
        .any(|l| l.split(':').next().is_some_and(|p| p.contains(&file)))
    {
        Some("loadable")
    } else {
        None
    }
}

/// `nft_ok`: `nft list tables` worked, which proves nf_tables is in the kernel.
fn modules(nft_ok: bool) -> Check {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let dir = Path::new("/lib/modules").join(release.trim());
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    let loaded = read(Path::new("/proc/modules"));
    let builtin = read(&dir.join("modules.builtin"));
    let dep = read(&dir.join("modules.dep"));
    let mut found = vec![];
    let mut missing = vec![];
    for m in MODULES {
        match module_state(m, &loaded, &builtin, &dep) {
            Some(s) => found.push(format!("{m} {s}")),
            None if *m == "nf_tables" && nft_ok => found.push(format!("{m} present (nft works)")),
            None => missing.push(*m),
        }
    }
    if missing.is_empty() {
        return Check::pass("kernel modules", found.join(", "));
    }
    if builtin.is_empty() && dep.is_empty() {
        // No module index (containers often lack /lib/modules): cannot tell built-in from absent.
        return Check::warn(
            "kernel modules",
            format!(
                "{} not loaded, and {} is missing so built-ins cannot be listed ({})",
                missing.join(", "),
                dir.display(),
                found.join(", ")
            ),
            "if redirection fails, load them: modprobe nft_chain_nat nft_redir nft_ct",
        );
    }
    Check::fail(
        "kernel modules",
        format!("missing: {}", missing.join(", ")),
        "use a kernel with nftables NAT support (CONFIG_NFT_NAT, CONFIG_NFT_REDIR, CONFIG_NFT_CT)",
    )
}

fn netns_list() -> String {
    run("ip", &["netns", "list"]).unwrap_or_default()
}

fn netns_works() -> Check {
    let name = format!(
        "ambitctl-check-{}-{:x}",
        std::process::id(),
        rand::random::<u32>()
    );
    let result = run("ip", &["netns", "add", &name]).and_then(|_| {
        let inside = run("ip", &["netns", "exec", &name, "ip", "link", "show", "lo"]);
        let deleted = run("ip", &["netns", "delete", &name]);
        inside?;
        deleted?;
        Ok(())
    });
    let leftover = netns_list()
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name.as_str()));
    match (result, leftover) {
        (Ok(()), false) => Check::pass("network namespaces", format!("created and deleted {name}")),
        (Ok(()), true) => Check::fail(
            "network namespaces",
            format!("{name} still exists after delete"),
            format!("remove it: ip netns delete {name}"),
        ),
        (Err(e), _) => {
            let _ = run("ip", &["netns", "delete", &name]);
            Check::fail(
                "network namespaces",
                e,
                "ambitctl needs root (or CAP_SYS_ADMIN) and a kernel with network namespaces",
            )
        }
    }
}

fn cni(dir: &Path) -> Check {
    let name = "cni config";
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Check::warn(
            name,
            format!("{} does not exist: not a Kubernetes node", dir.display()),
            "fine for the sandbox; on a node, pass --cni-conf-dir where your primary CNI writes its config",
        );
    };
    let mut lists: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "conflist"))
        .collect();
    lists.sort();
    let Some(first) = lists.first() else {
        return Check::warn(
            name,
            format!("no .conflist in {}", dir.display()),
            "install the cluster's primary CNI first; Ambit chains after it",
        );
    };
    // The runtime uses the first file in lexical order.
    let text = std::fs::read_to_string(first).unwrap_or_default();
    let chained = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["plugins"].as_array().cloned())
        .is_some_and(|ps| ps.iter().any(|p| p["type"] == "ambit-cni"));
    if chained {
        Check::pass(name, format!("{} chains ambit-cni", first.display()))
    } else {
        Check::warn(
            name,
            format!("{} does not chain ambit-cni yet", first.display()),
            "the node agent adds it when the mesh is installed; on a mesh node check the ambit-cni-agent logs",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("5.15.0-91-generic"), Some((5, 15)));
        assert_eq!(kernel_version("6.1.0-13-amd64"), Some((6, 1)));
        assert_eq!(kernel_version("garbage"), None);
    }

    #[test]
    fn modules_are_found_loaded_builtin_or_loadable() {
        let proc = "nf_tables 274432 5 nft_ct, Live 0x0\n";
        let builtin = "kernel/net/netfilter/nft_ct.ko\n";
        let dep = "kernel/net/netfilter/nft_redir.ko: kernel/net/netfilter/nf_tables.ko\n";
        assert_eq!(
            module_state("nf_tables", proc, builtin, dep),
            Some("loaded")
        );
        assert_eq!(module_state("nft_ct", proc, builtin, dep), Some("built-in"));
        assert_eq!(
            module_state("nft_redir", proc, builtin, dep),
            Some("loadable")
        );
        assert_eq!(module_state("nft_tproxy", proc, builtin, dep), None);
    }

    #[test]
    fn cni_dir_states() {
        let d = std::env::temp_dir().join(format!("ambitctl-cni-{}", std::process::id()));
        assert_eq!(cni(&d).status, super::super::Verdict::Warn);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("10-net.conflist"),
            r#"{"plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        assert!(cni(&d).message.contains("does not chain"));
        std::fs::write(
            d.join("10-net.conflist"),
            r#"{"plugins":[{"type":"bridge"},{"type":"ambit-cni"}]}"#,
        )
        .unwrap();
        assert_eq!(cni(&d).status, super::super::Verdict::Pass);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
