use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::child::Child;
use crate::error::{command_hint, Error};

/// Where `ip netns` keeps its named namespaces (bind mounts).
pub const NETNS_DIR: &str = "/var/run/netns";

/// A named network namespace (`ip netns add`) that is deleted when dropped.
///
/// Dropping only unmounts the name: the kernel frees the namespace (and the
/// veths in it) once no process, thread or socket still holds it.
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `/var/run/netns/<name>` and brings `lo` up inside it.
    pub fn create(name: &str) -> Result<NetNs, Error> {
        validate_name(name)?;
        run_ip(&["netns", "add", name], None)?;
        // Guard first, so a failure below still deletes the namespace.
        let ns = NetNs {
            name: name.to_string(),
        };
        run_ip(&["-n", name, "link", "set", "lo", "up"], None)?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/var/run/netns/<name>`: usable with setns, `ip netns exec` and nsenter.
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Opens the namespace file, e.g. to pass it over SCM_RIGHTS the way the
    /// node agent hands pods to ztunnel.
    pub fn open(&self) -> Result<File, Error> {
        let path = self.path();
        File::open(&path).map_err(|source| Error::OpenNs { path, source })
    }

    /// Runs `ip netns exec <name> args...` and returns its stdout.
    pub fn exec(&self, args: &[&str]) -> Result<String, Error> {
        if args.is_empty() {
            return Err(Error::Invalid("NetNs::exec needs a program to run".into()));
        }
        let mut full = vec!["netns", "exec", self.name.as_str()];
        full.extend_from_slice(args);
        run_ip(&full, None)
    }

    /// Runs `ip -n <name> -batch -` with one `ip` command per line (without
    /// the leading `ip`); much faster than one process per command.
    pub fn ip_batch(&self, lines: &[String]) -> Result<String, Error> {
        let script = lines.join("\n") + "\n";
        run_ip(&["-n", &self.name, "-batch", "-"], Some(&script))
    }

    /// Runs `f` on a fresh thread that first entered this namespace; the
    /// caller's thread never changes namespace. Sockets created by `f` stay
    /// in this namespace for their whole life, whichever thread uses them.
    ///
    /// Panics if the namespace cannot be entered (see [`NetNs::try_run`]);
    /// a panic inside `f` is propagated with its original payload.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match self.try_run(f) {
            Ok(v) => v,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`NetNs::run`], but returns an error instead of panicking when
    /// the namespace cannot be entered.
    pub fn try_run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
        in_netns(&self.path(), f)
    }

    /// Spawns `cmd` inside this namespace and returns a guard that stops it.
    ///
    /// The command is spawned from a thread that entered the namespace, so
    /// the child inherits it while every setting of `cmd` (env, cwd, stdio,
    /// uid...) is kept as is. Unlike `ip netns exec`, `/sys` and
    /// `/etc/netns/<name>` are not remounted for the child.
    pub fn spawn(&self, mut cmd: Command) -> Result<Child, Error> {
        let ns = self.name.clone();
        let program = cmd.get_program().to_string_lossy().into_owned();
        let child = self.try_run(move || cmd.spawn())?;
        child.map(Child::new).map_err(|source| Error::Io {
            what: format!("spawning `{program}`"),
            ns,
            source,
        })
    }

    /// Writes `/proc/sys/<key with dots as slashes>` inside this namespace,
    /// e.g. `set_sysctl("net.ipv4.ip_forward", "1")`.
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<(), Error> {
        let path = sysctl_path(key)?;
        // /proc/sys/net resolves against the opening *thread's* namespace.
        self.try_run(|| std::fs::write(&path, value))?
            .map_err(|source| Error::Io {
                what: format!("setting sysctl {key}={value}"),
                ns: self.name.clone(),
                source,
            })
    }

    /// Reads a sysctl inside this namespace (trailing newline trimmed).
    pub fn sysctl(&self, key: &str) -> Result<String, Error> {
        let path = sysctl_path(key)?;
        let value = self
            .try_run(|| std::fs::read_to_string(&path))?
            .map_err(|source| Error::Io {
                what: format!("reading sysctl {key}"),
                ns: self.name.clone(),
                source,
            })?;
        Ok(value.trim_end().to_string())
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `f` on a scoped thread that entered the network namespace at `path`.
pub(crate) fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    use ambit_core::netns::{run_in_thread, EnterError};
    run_in_thread(path, f).map_err(|e| match e {
        EnterError::Open { path, source } => Error::OpenNs { path, source },
        EnterError::Setns { path, source } => Error::Setns { path, source },
        EnterError::Thread { path, source } => Error::Io {
            what: "spawning a thread".into(),
            ns: path.display().to_string(),
            source,
        },
    })
}

/// Runs `ip args...` (in the caller's namespace) and returns stdout.
pub(crate) fn run_ip(args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let command = || {
        let mut c = format!("ip {}", args.join(" "));
        if let Some(script) = stdin {
            c.push_str(" <<EOF\n");
            c.push_str(script);
            c.push_str("EOF");
        }
        c
    };
    let mut cmd = Command::new("ip");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| Error::Spawn {
        command: command(),
        source,
    })?;
    if let (Some(script), Some(mut pipe)) = (stdin, child.stdin.take()) {
        // A write error shows up as a failed exit status below.
        let _ = pipe.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| Error::Spawn {
        command: command(),
        source,
    })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(Error::Command {
            command: command(),
            status: out.status,
            hint: command_hint(&stderr),
            stderr,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn validate_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "network namespace name {name:?} must be 1-200 characters of [A-Za-z0-9._-]"
        )))
    }
}

fn sysctl_path(key: &str) -> Result<PathBuf, Error> {
    if key.is_empty() || key.contains("..") || key.contains('/') || !key.starts_with("net.") {
        return Err(Error::Invalid(format!(
            "sysctl key {key:?} must look like net.ipv4.ip_forward (only net.* is per namespace)"
        )));
    }
    Ok(Path::new("/proc/sys").join(key.replace('.', "/")))
}

/// True when running with effective uid 0 (what namespaces need).
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `ambit-<tag>-<pid>-<counter>`: unique across parallel test processes, and
/// the pid lets [`sweep_stale`] find namespaces left by a killed process.
/// Characters of `tag` other than `[A-Za-z0-9_]` become `_` so the name
/// parses unambiguously.
pub fn unique_prefix(tag: &str) -> String {
    let mut tag: String = tag
        .chars()
        .take(24)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if tag.is_empty() {
        tag.push('t');
    }
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("ambit-{tag}-{}-{n}", std::process::id())
}

/// Deletes namespaces named `ambit-<tag>-<pid>-<counter>[-...]` whose pid is
/// no longer alive (a test killed with SIGKILL never runs its Drop guards).
/// Errors are ignored: another process may be sweeping at the same time.
pub fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(pid) = owner_pid(name) {
            if !pid_alive(pid) {
                let _ = run_ip(&["netns", "del", name], None);
            }
        }
    }
}

/// The pid embedded by [`unique_prefix`], if `name` has that shape.
pub(crate) fn owner_pid(name: &str) -> Option<u32> {
    let mut parts = name.strip_prefix("ambit-")?.split('-');
    let tag = parts.next()?;
    let pid = parts.next()?.parse::<u32>().ok()?;
    parts.next()?.parse::<u64>().ok()?;
    (!tag.is_empty() && pid > 0).then_some(pid)
}

fn pid_alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie (killed, not yet reaped by nextest) is as good as dead.
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(e) => e.kind() != std::io::ErrorKind::NotFound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_round_trips_pid() {
        let p = unique_prefix("my-test tag");
        assert!(p.starts_with("ambit-my_test_tag-"), "{p}");
        assert_eq!(owner_pid(&p), Some(std::process::id()));
        assert_eq!(
            owner_pid(&format!("{p}-n0-pod_a")),
            Some(std::process::id())
        );
        assert_ne!(unique_prefix("x"), unique_prefix("x"));
    }

    #[test]
    fn foreign_names_are_not_swept() {
        assert_eq!(owner_pid("ambit-sandbox-node1"), None);
        assert_eq!(owner_pid("other-x-1-2"), None);
        assert_eq!(owner_pid("ambit-x-12"), None);
        assert_eq!(owner_pid("ambit--12-3"), None);
    }

    #[test]
    fn liveness() {
        assert!(pid_alive(std::process::id()));
        assert!(!pid_alive(u32::MAX - 1));
    }
}
