//! The periodic reconcile: re-read the cluster state, capture pods whose labels now say so
//! (finding a running pod's namespace by its IP) and release those that no longer should be.

use std::collections::HashMap;

use tracing::warn;

use super::cluster::{ClusterPod, Decision};
use super::{netns_lookup, Agent};

impl Agent {
    pub(super) fn refresh_view(&self) {
        match self.feed.read() {
            Ok(Some(view)) => {
                let mut st = self.lock();
                st.view = view;
                st.view_loaded = true;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "keeping the last good cluster state"),
        }
    }

    /// Captures pods whose labels now say so (finding the namespace of running pods by IP)
    /// and releases those whose labels no longer do or that are gone.
    pub fn reconcile(&self) {
        self.refresh_view();
        let mut st = self.lock();
        if !st.view_loaded || st.stopping {
            // Acting on a half-loaded view would release every pod it does not list yet.
            return;
        }
        let mine: Vec<ClusterPod> = st
            .view
            .pods
            .iter()
            .filter(|p| p.node == self.opts.node)
            .cloned()
            .collect();
        let wanted: HashMap<String, ClusterPod> = mine
            .into_iter()
            .filter(|p| st.view.decide(p) == Decision::Capture)
            .map(|p| (p.uid.clone(), p))
            .collect();
        let stale: Vec<String> = st
            .captured
            .keys()
            .filter(|u| !wanted.contains_key(*u))
            .cloned()
            .collect();
        for uid in stale {
            self.release(&mut st, &uid);
        }
        // Before the first connection, take over the pods a previous agent captured so the
        // snapshot ztunnel gets includes them (no listener is closed and reopened).
        let adopted = self.adopt_before_connecting(&mut st, &wanted);
        let _ = self.ensure_ztunnel(&mut st);
        self.finish_adoption(&mut st, adopted);
        for (uid, pod) in wanted {
            if st.captured.contains_key(&uid) {
                continue;
            }
            let Some(ip) = pod.ips.first() else { continue };
            let Some(netns) =
                netns_lookup::find_by_ip_scoped(*ip, self.opts.netns_prefix.as_deref())
            else {
                warn!(pod = %uid, %ip, "no network namespace holds the pod's IP yet");
                continue;
            };
            if let Err(f) = self.capture(&mut st, &pod, &netns, &[], None) {
                warn!(pod = %uid, error = %f.message, "could not capture running pod; will retry");
            }
        }
    }
}
