//! Where the agent's cluster view comes from: a JSON file re-read every resync (tests, the
//! sandbox) or a live view kept up to date by the Kubernetes watch ([`super::kube_source`]).
//! The agent itself stays synchronous; the live view is a value plus a change counter that
//! the reconciler can block on.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::cluster::ClusterView;

/// The latest complete cluster view, published by a watch. `None` until the initial lists
/// are loaded: a half-loaded view would make the agent release every pod it does not see.
#[derive(Default)]
pub struct LiveView {
    state: Mutex<(Option<ClusterView>, u64)>,
    changed: Condvar,
}

impl LiveView {
    pub fn new() -> Arc<LiveView> {
        Arc::default()
    }

    /// Replaces the view (a no-op when nothing changed) and wakes the reconciler.
    pub fn publish(&self, view: ClusterView) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0.as_ref() == Some(&view) {
            return;
        }
        st.0 = Some(view);
        st.1 += 1;
        self.changed.notify_all();
    }

    /// The current view, or `None` while the initial lists are still loading.
    pub fn get(&self) -> Option<ClusterView> {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// The number of views published so far.
    pub fn generation(&self) -> u64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Blocks until a view newer than generation `seen` is published or `timeout` passes;
    /// returns the current generation.
    pub fn wait_newer(&self, seen: u64, timeout: Duration) -> u64 {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (st, _) = self
            .changed
            .wait_timeout_while(st, timeout, |s| s.1 <= seen)
            .unwrap_or_else(|p| p.into_inner());
        st.1
    }
}

/// The source of the cluster view.
#[derive(Clone)]
pub enum ClusterSource {
    /// A JSON file (see [`super::cluster`]), re-read every resync; a bad file keeps the
    /// last good view.
    File(PathBuf),
    /// A view published by a watch.
    Live(Arc<LiveView>),
}

/// What feeds the agent's decisions besides [`super::AgentOptions`].
#[derive(Clone)]
pub struct ClusterFeed {
    pub source: ClusterSource,
    /// Namespaces whose pods are never captured, whatever their labels.
    pub exclude_namespaces: BTreeSet<String>,
}

impl ClusterFeed {
    /// The file source with no excluded namespace (what [`super::Agent::start`] uses).
    pub fn file(path: PathBuf) -> ClusterFeed {
        ClusterFeed {
            source: ClusterSource::File(path),
            exclude_namespaces: BTreeSet::new(),
        }
    }

    /// Reads the current view: `Ok(None)` while a live source is still loading, `Err` when
    /// the file cannot be read or parsed.
    pub(super) fn read(&self) -> Result<Option<ClusterView>, String> {
        let mut view = match &self.source {
            ClusterSource::File(path) => ClusterView::load(path)?,
            ClusterSource::Live(live) => match live.get() {
                Some(v) => v,
                None => return Ok(None),
            },
        };
        view.excluded_namespaces = self.exclude_namespaces.clone();
        Ok(Some(view))
    }

    /// Whether the source can act before it has produced a view: a file is read as it is (a
    /// missing file is an empty cluster); a watch must finish its initial lists first.
    pub(super) fn needs_initial_load(&self) -> bool {
        matches!(self.source, ClusterSource::Live(_))
    }

    /// Waits before the next reconcile: `resync` for a file, until a new view (or at most
    /// `resync`) for a live source. Takes and returns the last generation seen.
    pub(super) fn wait(&self, seen: u64, resync: Duration) -> u64 {
        match &self.source {
            ClusterSource::File(_) => {
                std::thread::sleep(resync);
                seen
            }
            ClusterSource::Live(live) => live.wait_newer(seen, resync),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_view_is_none_until_published_and_wakes_waiters_only_on_change() {
        let live = LiveView::new();
        assert_eq!(live.get(), None);
        let feed = ClusterFeed {
            source: ClusterSource::Live(live.clone()),
            exclude_namespaces: ["kube-system".to_string()].into(),
        };
        assert_eq!(feed.read(), Ok(None));
        assert_eq!(
            feed.wait(0, Duration::from_millis(20)),
            0,
            "times out unchanged"
        );

        let waiter = {
            let feed = feed.clone();
            std::thread::spawn(move || feed.wait(0, Duration::from_secs(30)))
        };
        let mut view = ClusterView::default();
        view.namespaces.insert("mesh".into(), Default::default());
        live.publish(view.clone());
        assert_eq!(waiter.join().unwrap(), 1, "a publish wakes the reconciler");
        live.publish(view.clone());
        assert_eq!(live.generation(), 1, "an identical view is not a change");

        let read = feed.read().unwrap().unwrap();
        assert!(read.namespaces.contains_key("mesh"));
        assert!(read.excluded_namespaces.contains("kube-system"));
    }
}
