//! Lookups the compiler makes per pod and per Service, built once per compile: without them a
//! 10,000-pod cluster costs 1,000 Services x 10,000 pods selector checks, plus a scan of every
//! PeerAuthentication per pod.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;

use super::workloads::pod_is_live;
use super::Snapshot;
use crate::crd::PeerAuthentication;

pub(super) struct Index<'a> {
    /// Live pods per namespace, by name.
    live_pods: HashMap<&'a str, Vec<&'a Pod>>,
    /// PeerAuthentications per namespace, oldest first (then by name): precedence order.
    peer_authentications: HashMap<&'a str, Vec<&'a PeerAuthentication>>,
}

impl<'a> Index<'a> {
    pub(super) fn new(snapshot: &'a Snapshot) -> Self {
        let mut live_pods: HashMap<&str, Vec<&Pod>> = HashMap::new();
        for p in snapshot.pods.iter().filter(|p| pod_is_live(p)) {
            if let Some(ns) = p.metadata.namespace.as_deref() {
                live_pods.entry(ns).or_default().push(p);
            }
        }
        for pods in live_pods.values_mut() {
            pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        }
        let mut peer_authentications: HashMap<&str, Vec<&PeerAuthentication>> = HashMap::new();
        for p in &snapshot.peer_authentications {
            if let Some(ns) = p.metadata.namespace.as_deref() {
                peer_authentications.entry(ns).or_default().push(p);
            }
        }
        for list in peer_authentications.values_mut() {
            list.sort_by_key(|p| (p.creation_timestamp().map(|t| t.0), p.name_any()));
        }
        Self {
            live_pods,
            peer_authentications,
        }
    }

    pub(super) fn live_pods(&self, ns: &str) -> &[&'a Pod] {
        self.live_pods.get(ns).map_or(&[], Vec::as_slice)
    }

    pub(super) fn peer_authentications(&self, ns: &str) -> &[&'a PeerAuthentication] {
        self.peer_authentications.get(ns).map_or(&[], Vec::as_slice)
    }
}
