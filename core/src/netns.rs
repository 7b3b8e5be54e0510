//! Network namespaces by file descriptor: the in-pod model creates ztunnel's sockets inside
//! each pod's namespace. A socket keeps the namespace it was created in, so only creation
//! has to happen "inside"; everything after runs on ordinary tokio tasks.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

thread_local! {
    /// The namespace each thread lives in. `run` always moves the thread back before
    /// returning, so it is fixed for the thread's life and opened once, not per socket.
    static HOME: io::Result<Netns> = Netns::current();
}

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct Netns {
    fd: OwnedFd,
    inode: u64,
}

impl Netns {
    /// Opens a namespace by path (`/var/run/netns/NAME`, `/proc/PID/ns/net`).
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("opening network namespace {}: {e}", path.display()),
            )
        })?;
        Self::from_fd(file.into())
    }

    /// Takes ownership of a namespace fd (as received over SCM_RIGHTS).
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let inode = File::from(fd.try_clone()?).metadata()?.ino();
        Ok(Self { fd, inode })
    }

    /// The namespace the calling thread is in now.
    pub fn current() -> io::Result<Self> {
        Self::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Namespace identity: equal inodes mean the same namespace.
    pub fn inode(&self) -> u64 {
        self.inode
    }

    /// Runs `f` with the calling thread inside this namespace, then moves it back.
    /// `f` must not block on async work: it is for creating sockets.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> io::Result<T> {
        HOME.with(|home| {
            let home = match home {
                Ok(h) => h,
                Err(e) => return Err(io::Error::new(e.kind(), e.to_string())),
            };
            if home.inode == self.inode {
                return Ok(f());
            }
            setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            let out = f();
            if let Err(e) = setns(home.fd.as_fd(), CloneFlags::CLONE_NEWNET) {
                // A worker thread stranded in a pod's namespace would misroute every socket
                // it creates later; dying is the only safe answer.
                panic!("could not return thread to its network namespace: {e}");
            }
            Ok(out)
        })
    }

    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
            inode: self.inode,
        })
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Why [`run_in_thread`] could not run its closure.
#[derive(Debug, thiserror::Error)]
pub enum EnterError {
    #[error("opening network namespace {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("entering network namespace {path}: {source}")]
    Setns { path: PathBuf, source: nix::Error },
    #[error("starting a thread for network namespace {path}: {source}")]
    Thread { path: PathBuf, source: io::Error },
}

/// Runs `f` on a new scoped thread that first enters the network namespace at `path`; the
/// calling thread never moves. For work that runs processes (children inherit the thread's
/// namespace) or blocks, where [`Netns::run`]'s switch-and-return on the caller's thread
/// would not do. A panic in `f` is propagated with its original payload.
pub fn run_in_thread<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, EnterError> {
    let file = File::open(path).map_err(|source| EnterError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    std::thread::scope(|s| {
        let worker = std::thread::Builder::new()
            .name("netns-worker".into())
            .spawn_scoped(s, move || {
                setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| {
                    EnterError::Setns {
                        path: path.to_path_buf(),
                        source,
                    }
                })?;
                Ok(f())
            })
            .map_err(|source| EnterError::Thread {
                path: path.to_path_buf(),
                source,
            })?;
        match worker.join() {
            Ok(result) => result,
            Err(payload) => std::panic::resume_unwind(payload),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_in_thread_reports_a_missing_namespace() {
        let err = run_in_thread(Path::new("/nonexistent/netns"), || ()).unwrap_err();
        assert!(matches!(err, EnterError::Open { .. }), "{err}");
        let me = Netns::current().unwrap().inode();
        let same = run_in_thread(Path::new("/proc/self/ns/net"), || {
            Netns::current().unwrap().inode()
        })
        .unwrap();
        assert_eq!(same, me);
    }

    #[test]
    fn run_in_own_namespace_is_a_plain_call() {
        let me = Netns::current().unwrap();
        assert_eq!(me.run(|| 7).unwrap(), 7);
        assert_eq!(Netns::current().unwrap().inode(), me.inode());
    }
}
