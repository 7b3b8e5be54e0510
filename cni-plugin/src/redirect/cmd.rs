//! Running `nft` (and, for [`super::dump`], `ip` and `iptables-save`) inside a namespace:
//! the thread that entered it spawns the process, which inherits the namespace.

use std::io::Write;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use super::{RedirectError, IP_HINT, NETLINK_HINT, NFT_HINT};
use crate::netlink::NetlinkError;

pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

/// Runs commands from a thread that has entered the namespace; children
/// inherit the thread's namespace.
pub(crate) struct Ns<'a> {
    path: &'a Path,
}

impl Ns<'_> {
    pub(crate) fn path(&self) -> &Path {
        self.path
    }

    pub(crate) fn run(
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

    pub(crate) fn failed(&self, program: &str, args: &[&str], out: &Output) -> RedirectError {
        let stderr = out.stderr.trim().to_string();
        RedirectError::Command {
            netns: self.path.to_path_buf(),
            command: command_line(program, args),
            status: out.status,
            hint: hint(program, &stderr),
            stderr,
        }
    }

    /// A failed netlink request in this namespace.
    pub(crate) fn netlink(&self, source: NetlinkError) -> RedirectError {
        let hint = if source.errno == nix::errno::Errno::EPERM {
            "changing rules and routes needs CAP_NET_ADMIN: run as root / a privileged node agent"
        } else {
            NETLINK_HINT
        };
        RedirectError::Netlink {
            netns: self.path.to_path_buf(),
            source,
            hint,
        }
    }
}

pub(crate) fn command_line(program: &str, args: &[&str]) -> String {
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
