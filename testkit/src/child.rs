use std::io;
use std::process::{ChildStderr, ChildStdin, ChildStdout, ExitStatus};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long Drop waits after SIGTERM before it sends SIGKILL.
const GRACE: Duration = Duration::from_secs(2);

/// A process started with [`crate::NetNs::spawn`]. Dropping it sends SIGTERM,
/// waits up to 2 s, then SIGKILLs and reaps it, so no test leaves a process
/// (and thus a namespace) behind.
#[derive(Debug)]
pub struct Child {
    inner: std::process::Child,
    status: Option<ExitStatus>,
}

impl Child {
    pub(crate) fn new(inner: std::process::Child) -> Child {
        Child {
            inner,
            status: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.inner.id()
    }

    /// Sends SIGTERM (does not wait). No-op once the child was reaped, so a
    /// recycled pid is never signalled.
    pub fn terminate(&mut self) -> io::Result<()> {
        self.signal(Signal::SIGTERM)
    }

    /// SIGKILL and reap.
    pub fn kill_now(&mut self) -> io::Result<ExitStatus> {
        self.signal(Signal::SIGKILL)?;
        self.wait()
    }

    /// Sends SIGTERM and waits up to `grace`, then SIGKILLs; returns the exit
    /// status.
    pub fn stop(&mut self, grace: Duration) -> io::Result<ExitStatus> {
        self.terminate()?;
        match self.wait_timeout(grace)? {
            Some(status) => Ok(status),
            None => self.kill_now(),
        }
    }

    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.inner.try_wait()?;
        }
        Ok(self.status)
    }

    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let status = self.inner.wait()?;
        self.status = Some(status);
        Ok(status)
    }

    /// Polls for exit for at most `timeout`; `Ok(None)` if still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.inner.stdin.as_mut()
    }

    pub fn stdout(&mut self) -> Option<&mut ChildStdout> {
        self.inner.stdout.as_mut()
    }

    pub fn stderr(&mut self) -> Option<&mut ChildStderr> {
        self.inner.stderr.as_mut()
    }

    /// Takes the piped stdout, e.g. to read it on another thread.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.inner.stdout.take()
    }

    pub fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.inner.stderr.take()
    }

    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.inner.stdin.take()
    }

    fn signal(&mut self, sig: Signal) -> io::Result<()> {
        if self.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.inner.id())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pid out of range"))?;
        match kill(Pid::from_raw(pid), sig) {
            // Exited between try_wait and kill: it is a zombie we still own.
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(io::Error::from(e)),
        }
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if matches!(self.try_wait(), Ok(Some(_))) {
            return;
        }
        if self.stop(GRACE).is_err() {
            let _ = self.inner.kill();
            let _ = self.inner.wait();
        }
    }
}
