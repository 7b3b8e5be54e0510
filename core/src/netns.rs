//! Network namespaces by file descriptor: the in-pod model creates ztunnel's sockets inside
//! each pod's namespace. A socket keeps the namespace it was created in, so only creation
//! has to happen "inside"; everything after runs on ordinary tokio tasks.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_in_own_namespace_is_a_plain_call() {
        let me = Netns::current().unwrap();
        assert_eq!(me.run(|| 7).unwrap(), 7);
        assert_eq!(Netns::current().unwrap().inode(), me.inode());
    }
}
