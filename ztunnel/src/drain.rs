//! Counting the connections ztunnel proxies, so a terminating ztunnel can let them finish
//! (after it closed its listeners) instead of cutting them.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, Notify};

pub struct ConnTracker {
    active: AtomicUsize,
    idle: Notify,
    draining: watch::Sender<bool>,
}

impl Default for ConnTracker {
    fn default() -> Self {
        Self {
            active: AtomicUsize::new(0),
            idle: Notify::new(),
            draining: watch::Sender::new(false),
        }
    }
}

/// Held by a connection's task for its lifetime.
pub struct ConnGuard(Arc<ConnTracker>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl ConnTracker {
    pub fn track(self: &Arc<Self>) -> ConnGuard {
        self.active.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.clone())
    }

    /// From now on, connections that can end gracefully (HBONE: GOAWAY) should.
    pub fn start_drain(&self) {
        self.draining.send_replace(true);
    }

    /// Resolves once the drain has started.
    pub fn draining(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.draining.subscribe();
        async move {
            // An error means the tracker is gone: so is the process, drain.
            let _ = rx.wait_for(|d| *d).await;
        }
    }

    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Waits until no connection is open or `timeout` passed; returns how many are still open.
    pub async fn wait_idle(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a last connection closing in between wakes us.
            let idle = self.idle.notified();
            let open = self.active();
            if open == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return self.active();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_the_last_connection_and_no_longer_than_the_timeout() {
        let t = Arc::new(ConnTracker::default());
        assert_eq!(t.wait_idle(Duration::from_secs(5)).await, 0);
        let a = t.track();
        let b = t.track();
        assert_eq!(t.wait_idle(Duration::from_millis(20)).await, 2);
        let waiter = tokio::spawn({
            let t = t.clone();
            async move { t.wait_idle(Duration::from_secs(30)).await }
        });
        drop(a);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "one connection is still open");
        drop(b);
        assert_eq!(waiter.await.unwrap(), 0);
    }

    #[tokio::test]
    async fn draining_resolves_for_waiters_old_and_new() {
        let t = Arc::new(ConnTracker::default());
        let early = tokio::spawn(t.draining());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!early.is_finished());
        t.start_drain();
        early.await.unwrap();
        tokio::time::timeout(Duration::from_secs(5), t.draining())
            .await
            .expect("a waiter that comes after the start resolves at once");
    }
}
