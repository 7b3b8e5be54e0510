//! Where a sandbox lives: its name, state directory, address slot, network namespace and
//! interface names, and the addresses of its nodes and pods.
//!
//! Several sandboxes may run side by side (tests do), so everything visible outside a
//! sandbox's own namespaces is unique per sandbox: namespace names start with `<name>-`, and
//! the host-side addresses come from a *slot* claimed atomically under [`SLOTS_DIR`].

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};

pub const DEFAULT_NAME: &str = "ambit-sb";
/// The default sandbox's state dir (where `ambitctl status/get` look without flags).
pub const DEFAULT_DIR: &str = "/run/ambit-sandbox";
/// One file per claimed slot, holding the sandbox name.
pub const SLOTS_DIR: &str = "/run/ambit-sandbox-slots";
/// Slots 0..MAX_SLOTS: fabric 172.30.<slot>.0/24, pods 10.<100+slot>.<node>.0/24.
pub const MAX_SLOTS: u8 = 100;
/// Environment variable every sandbox process carries (value: the sandbox name), so
/// `local down` finds them even when a crashed `local up` never wrote their pid files.
pub const MARKER_ENV: &str = "AMBIT_SANDBOX";

#[derive(Clone, Debug)]
pub struct Layout {
    pub name: String,
    pub dir: PathBuf,
}

impl Layout {
    pub fn new(name: &str) -> anyhow::Result<Layout> {
        let ok = (1..=20).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !ok {
            bail!(
                "sandbox name {name:?} must be 1-20 characters of [a-z0-9-] starting with a letter"
            );
        }
        let dir = if name == DEFAULT_NAME {
            PathBuf::from(DEFAULT_DIR)
        } else {
            PathBuf::from(format!("{DEFAULT_DIR}.{name}"))
        };
        Ok(Layout {
            name: name.into(),
            dir,
        })
    }

    pub fn state_file(&self) -> PathBuf {
        self.dir.join("state.json")
    }
    pub fn log(&self, process: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{process}.log"))
    }
    pub fn pid_dir(&self) -> PathBuf {
        self.dir.join("pids")
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.dir.join("nodes").join(node)
    }
    /// Every network namespace of this sandbox starts with this.
    pub fn netns_prefix(&self) -> String {
        format!("{}-", self.name)
    }
    pub fn netns(&self, what: &str) -> String {
        format!("{}-{what}", self.name)
    }

    /// Claims the lowest free address slot (atomic create), or returns the one already held.
    pub fn claim_slot(&self) -> anyhow::Result<u8> {
        if let Some(s) = self.slot() {
            return Ok(s);
        }
        // The last sandbox's `down` removes the directory; one racing with us may remove it
        // between our create_dir_all and our claim, so a vanished directory means "again".
        for _attempt in 0..5 {
            std::fs::create_dir_all(SLOTS_DIR).with_context(|| format!("creating {SLOTS_DIR}"))?;
            for s in 0..MAX_SLOTS {
                let path = Path::new(SLOTS_DIR).join(s.to_string());
                match std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                {
                    Ok(mut f) => {
                        f.write_all(self.name.as_bytes())?;
                        return Ok(s);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) => {
                        return Err(e).with_context(|| format!("claiming {}", path.display()))
                    }
                }
            }
            if Path::new(SLOTS_DIR).is_dir() {
                break;
            }
        }
        bail!("all {MAX_SLOTS} sandbox slots in {SLOTS_DIR} are taken: run `ambitctl local down --name NAME` for sandboxes you no longer need")
    }

    /// The slot this sandbox holds, if any.
    pub fn slot(&self) -> Option<u8> {
        let entries = std::fs::read_dir(SLOTS_DIR).ok()?;
        entries.flatten().find_map(|e| {
            let owner = std::fs::read_to_string(e.path()).ok()?;
            (owner == self.name)
                .then(|| e.file_name().to_str()?.parse().ok())
                .flatten()
        })
    }

    /// Frees the slot; the last sandbox out removes the slots directory too, so `down`
    /// leaves no file behind.
    pub fn release_slot(&self) {
        if let Some(s) = self.slot() {
            let _ = std::fs::remove_file(Path::new(SLOTS_DIR).join(s.to_string()));
        }
        // Fails (and is meant to) while another sandbox holds a slot.
        let _ = std::fs::remove_dir(SLOTS_DIR);
    }
}

/// Addresses and host interface names of one slot.
#[derive(Clone, Copy, Debug)]
pub struct Net {
    pub slot: u8,
}

impl Net {
    /// The host's address on the cluster bridge: the operator listens here.
    pub fn host_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(172, 30, self.slot, 254)
    }
    pub fn bridge(&self) -> String {
        format!("asb{}", self.slot)
    }
    pub fn node_veth(&self, node: usize) -> String {
        format!("asb{}n{node}", self.slot)
    }
    /// Node `i` (0-based) is `172.30.<slot>.<i+1>`.
    pub fn node_ip(&self, node: usize) -> Ipv4Addr {
        Ipv4Addr::new(172, 30, self.slot, octet(node + 1))
    }
    fn pod_octet(&self) -> u8 {
        100 + self.slot
    }
    /// All pod addresses of the sandbox (for the NAT towards the host).
    pub fn pod_supernet(&self) -> String {
        format!("10.{}.0.0/16", self.pod_octet())
    }
    pub fn pod_cidr(&self, node: usize) -> String {
        format!("10.{}.{}.0/24", self.pod_octet(), node + 1)
    }
    pub fn gateway(&self, node: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.pod_octet(), octet(node + 1), 1)
    }
    /// The `k`-th pod of `node`.
    pub fn pod_ip(&self, node: usize, k: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, self.pod_octet(), octet(node + 1), octet(10 + k))
    }
}

pub fn node_name(i: usize) -> String {
    format!("node-{}", i + 1)
}

fn octet(n: usize) -> u8 {
    u8::try_from(n).expect("node and pod counts are bounded by the CLI")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_dirs() {
        assert_eq!(Layout::new("ambit-sb").unwrap().dir, Path::new(DEFAULT_DIR));
        assert_eq!(
            Layout::new("t1").unwrap().dir,
            Path::new("/run/ambit-sandbox.t1")
        );
        for bad in ["", "Bad", "1x", "a_b", "a.b", "abcdefghijklmnopqrstu"] {
            assert!(Layout::new(bad).is_err(), "{bad}");
        }
        assert_eq!(Layout::new("x").unwrap().netns("node-1"), "x-node-1");
    }

    #[test]
    fn addresses_depend_on_the_slot() {
        let (a, b) = (Net { slot: 0 }, Net { slot: 7 });
        assert_eq!(a.node_ip(0).to_string(), "172.30.0.1");
        assert_eq!(b.host_ip().to_string(), "172.30.7.254");
        assert_eq!(b.pod_ip(1, 2).to_string(), "10.107.2.12");
        assert_eq!(b.gateway(1).to_string(), "10.107.2.1");
        assert_eq!(b.pod_cidr(0), "10.107.1.0/24");
        assert_ne!(a.pod_ip(0, 0), b.pod_ip(0, 0));
    }
}
