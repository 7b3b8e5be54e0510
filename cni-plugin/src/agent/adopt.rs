//! Taking over pods a previous agent (before a restart or an upgrade) captured.
//!
//! ztunnel drops, at the end of each agent connection's replay, every pod the agent did not
//! replay. A restarted agent starts with nothing captured, so connecting first and capturing
//! afterwards would close and reopen the listeners of every pod on the node. Instead, before
//! its first connection, the agent opens the namespaces of the pods it should capture and
//! replays them too; the redirection (idempotent) is applied once ztunnel has acked.

use std::collections::HashMap;
use std::fs::File;

use tracing::{info, warn};

use super::cluster::ClusterPod;
use super::{netns_lookup, pod_info, Agent, Captured, State};
use crate::redirect;

impl Agent {
    /// When ztunnel is not connected, records every wanted pod whose namespace is found as
    /// captured (without touching it yet), so the next connection replays it. Returns them.
    pub(super) fn adopt_before_connecting(
        &self,
        st: &mut State,
        wanted: &HashMap<String, ClusterPod>,
    ) -> Vec<String> {
        if connected(st) {
            return vec![];
        }
        let mut adopted = vec![];
        for (uid, pod) in wanted {
            if st.captured.contains_key(uid) {
                continue;
            }
            let Some(ip) = pod.ips.first() else { continue };
            let Some(path) =
                netns_lookup::find_by_ip_scoped(*ip, self.opts.netns_prefix.as_deref())
            else {
                continue;
            };
            let Ok(netns) = File::open(&path) else {
                continue;
            };
            let captured = Captured {
                info: pod_info(pod, &[]),
                attachment: None,
                netns,
            };
            st.captured.insert(uid.clone(), captured);
            adopted.push(uid.clone());
        }
        adopted
    }

    /// After the connection attempt: installs (or confirms) the redirection of the adopted
    /// pods ztunnel now serves; forgets them again if ztunnel could not be reached (the
    /// reconciler captures them normally later).
    pub(super) fn finish_adoption(&self, st: &mut State, adopted: Vec<String>) {
        if adopted.is_empty() {
            return;
        }
        if !connected(st) {
            for uid in &adopted {
                st.captured.remove(uid);
            }
            return;
        }
        for uid in &adopted {
            let Some(c) = st.captured.get(uid) else {
                continue;
            };
            if let Err(e) = redirect::apply(&c.netns_path(), &self.opts.redirect) {
                warn!(pod = %uid, error = %e, "installing redirection for a running pod failed; will retry");
                self.metrics.fail("redirect_failed");
                self.release(st, uid);
                continue;
            }
            self.add_probe_snat(st, c);
            info!(pod = %uid, "pod captured (replayed to ztunnel with the others)");
        }
        self.metrics.enrolled_pods.set(st.captured.len() as i64);
    }
}

fn connected(st: &State) -> bool {
    st.ztunnel.as_ref().is_some_and(|c| !c.is_closed())
}
