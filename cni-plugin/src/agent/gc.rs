//! CNI GC: the runtime lists every attachment of a network that is still valid; the agent
//! releases the pods it captured through ADD on that network whose attachment is not listed
//! (their DEL was lost, e.g. the runtime crashed), exactly as DEL would.

use std::collections::HashSet;

use tracing::info;

use super::{Agent, AttachmentKey};
use crate::agent_proto::{AgentResponse, Attachment};

/// The captured attachments of `network` that `valid` does not name. Pods captured by the
/// reconciler (no attachment) and attachments of other networks are never stale here.
pub(super) fn stale<'a>(
    captured: impl Iterator<Item = (&'a String, Option<&'a AttachmentKey>)>,
    network: &str,
    valid: &[Attachment],
) -> Vec<(String, AttachmentKey)> {
    let valid: HashSet<(&str, &str)> = valid
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    let mut out: Vec<(String, AttachmentKey)> = captured
        .filter_map(|(uid, a)| {
            let a = a?;
            let listed = valid.contains(&(a.container_id.as_str(), a.ifname.as_str()));
            (a.network == network && !listed).then(|| (uid.clone(), a.clone()))
        })
        .collect();
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out
}

impl Agent {
    /// Releases every stale attachment of `network`. An empty list releases all of them: it
    /// is the runtime's explicit statement that none is valid (the plugin refuses to send a
    /// missing list as empty).
    pub(super) fn gc(&self, network: &str, valid: &[Attachment]) -> AgentResponse {
        let mut st = self.lock();
        let stale = stale(
            st.captured
                .iter()
                .map(|(uid, c)| (uid, c.attachment.as_ref())),
            network,
            valid,
        );
        for (uid, a) in &stale {
            info!(
                pod = %uid,
                network,
                container_id = %a.container_id,
                ifname = %a.ifname,
                "CNI GC: releasing an attachment the runtime no longer lists"
            );
            self.release(&mut st, uid);
            self.metrics.gc_released.inc();
        }
        info!(
            network,
            valid = valid.len(),
            released = stale.len(),
            "CNI GC done"
        );
        AgentResponse::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(network: &str, id: &str) -> AttachmentKey {
        AttachmentKey {
            network: network.into(),
            container_id: id.into(),
            ifname: "eth0".into(),
        }
    }

    fn listed(id: &str, ifname: &str) -> Attachment {
        Attachment {
            container_id: id.into(),
            ifname: ifname.into(),
        }
    }

    #[test]
    fn only_unlisted_attachments_of_the_same_network_are_stale() {
        let pods: Vec<(String, Option<AttachmentKey>)> = vec![
            ("ns/a".into(), Some(key("net", "ca"))),
            ("ns/b".into(), Some(key("net", "cb"))),
            ("ns/c".into(), Some(key("other", "cc"))),
            ("ns/d".into(), None),
        ];
        let iter = || pods.iter().map(|(u, a)| (u, a.as_ref()));
        let ids = |v: Vec<(String, AttachmentKey)>| -> Vec<String> {
            v.into_iter().map(|(u, _)| u).collect()
        };
        assert_eq!(ids(stale(iter(), "net", &[listed("ca", "eth0")])), ["ns/b"]);
        // Same container, other interface: not the same attachment.
        assert_eq!(
            ids(stale(
                iter(),
                "net",
                &[listed("ca", "net1"), listed("cb", "eth0")]
            )),
            ["ns/a"]
        );
        // An empty list is the runtime saying none is valid.
        assert_eq!(ids(stale(iter(), "net", &[])), ["ns/a", "ns/b"]);
        assert_eq!(ids(stale(iter(), "other", &[])), ["ns/c"]);
        assert!(stale(iter(), "unknown", &[]).is_empty());
    }
}
