//! The server side of the config stream. Reconcilers [`ConfigServer::publish`] a compiled
//! config per target; every proxy subscribed to that target receives the difference between
//! what it holds and the new state.
//!
//! Per stream, at most one update is in flight: the next one is computed when the proxy ACKs
//! or NACKs, from the latest published state. A slow proxy therefore gets the published
//! states coalesced, and nothing queues up for it.
//!
//! Built for many proxies holding the same state: targets published together share one
//! snapshot (resources are shared, never copied per node), and the encoded update from a
//! version to the next is computed once and sent to every proxy that held that version.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambit_core::control::proto::{LineDecoder, Subscribe, Target};
use ambit_core::control::resources::{ResourceError, ResourceSet};
use ambit_core::meshconfig::MeshConfig;
use bytes::Bytes;
use h2::{RecvStream, SendStream};
use serde::Serialize;
use tokio::sync::{watch, Notify};
use tracing::{debug, info};

use super::auth::Caller;
use super::metrics::ControlMetrics;
pub use super::stream_session::Snapshot;
use super::stream_session::{Held, Session};

/// A NACK a proxy sent, kept until that proxy ACKs a later version (shown in status).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NackRecord {
    pub target: String,
    pub proxy: String,
    pub version: u64,
    pub error: String,
}

/// One open stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyStatus {
    pub target: String,
    pub proxy: String,
    pub acked_version: Option<u64>,
}

pub(super) type Targets = HashMap<Target, watch::Sender<Option<Arc<Snapshot>>>>;

pub(super) struct Inner {
    pub(super) targets: Mutex<Targets>,
    pub(super) next_version: AtomicU64,
    pub(super) next_session: AtomicU64,
    pub(super) sessions: Mutex<BTreeMap<u64, ProxyStatus>>,
    pub(super) nacks: Mutex<BTreeMap<(String, String), NackRecord>>,
    /// Signalled when a NACK is recorded or cleared.
    pub(super) nacks_changed: Notify,
    pub(super) metrics: Arc<ControlMetrics>,
    pub(super) heartbeat: Duration,
    pub(super) peer_timeout: Duration,
}

/// Publishes configs to subscribed proxies (cheap to clone).
#[derive(Clone)]
pub struct ConfigServer {
    inner: Arc<Inner>,
}

impl ConfigServer {
    pub fn new(metrics: Arc<ControlMetrics>, heartbeat: Duration, peer_timeout: Duration) -> Self {
        // Versions start at the wall clock in ms so they keep increasing across restarts.
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(1);
        Self {
            inner: Arc::new(Inner {
                targets: Mutex::new(HashMap::new()),
                next_version: AtomicU64::new(start),
                next_session: AtomicU64::new(0),
                sessions: Mutex::new(BTreeMap::new()),
                nacks: Mutex::new(BTreeMap::new()),
                nacks_changed: Notify::new(),
                metrics,
                heartbeat,
                peer_timeout,
            }),
        }
    }

    fn watch(&self, target: &Target) -> watch::Receiver<Option<Arc<Snapshot>>> {
        let mut targets = self.inner.targets.lock().expect("targets lock");
        targets
            .entry(target.clone())
            .or_insert_with(|| watch::channel(None).0)
            .subscribe()
    }

    /// Makes `cfg` the state of `target`; returns its version (unchanged when equal to the
    /// current state, which then is not sent again).
    pub fn publish(&self, target: &Target, cfg: &MeshConfig) -> Result<u64, ResourceError> {
        let resources = ResourceSet::from_config(cfg)?;
        Ok(self.publish_set(std::slice::from_ref(target), resources))
    }

    /// Makes `resources` the state of every target in `targets`, as one shared snapshot.
    /// Targets already holding the same state keep theirs (and are not sent anything).
    /// Returns the version the targets hold now (the new one if any target changed).
    pub fn publish_set(&self, targets: &[Target], resources: ResourceSet) -> u64 {
        let resources = Arc::new(resources);
        let mut fresh: Option<Arc<Snapshot>> = None;
        let mut unchanged_version = None;
        // Targets published together usually hold one shared state: compare it once.
        let mut compared: HashMap<*const ResourceSet, bool> = HashMap::new();
        let mut map = self.inner.targets.lock().expect("targets lock");
        for target in targets {
            let tx = map
                .entry(target.clone())
                .or_insert_with(|| watch::channel(None).0);
            if let Some(cur) = tx.borrow().as_ref() {
                let same = *compared
                    .entry(Arc::as_ptr(&cur.resources))
                    .or_insert_with(|| cur.resources.same_versions(&resources));
                if same {
                    unchanged_version.get_or_insert(cur.version);
                    continue;
                }
            }
            let snap = fresh.get_or_insert_with(|| {
                let version = self.inner.next_version.fetch_add(1, Ordering::SeqCst) + 1;
                Arc::new(Snapshot::new(version, resources.clone()))
            });
            tx.send_replace(Some(snap.clone()));
            debug!(%target, version = snap.version, "config published");
        }
        match (fresh, unchanged_version) {
            (Some(snap), _) => snap.version,
            (None, Some(v)) => v,
            (None, None) => self.inner.next_version.load(Ordering::SeqCst),
        }
    }

    /// The latest published version of `target`.
    pub fn version(&self, target: &Target) -> Option<u64> {
        let targets = self.inner.targets.lock().expect("targets lock");
        targets
            .get(target)
            .and_then(|tx| tx.borrow().as_ref().map(|s| s.version))
    }

    /// Open streams.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        let sessions = self.inner.sessions.lock().expect("sessions lock");
        sessions.values().cloned().collect()
    }

    /// Resolves when a NACK has been recorded or cleared since the last call returned.
    pub async fn nacks_changed(&self) {
        self.inner.nacks_changed.notified().await;
    }

    /// Outstanding NACKs (proxies running an older config than published).
    pub fn nacks(&self) -> Vec<NackRecord> {
        let nacks = self.inner.nacks.lock().expect("nacks lock");
        nacks.values().cloned().collect()
    }

    /// Serves one subscribed stream until the proxy goes away or stops answering.
    pub(crate) async fn serve_stream(
        &self,
        caller: Caller,
        sub: Subscribe,
        decoder: LineDecoder,
        body: RecvStream,
        send: SendStream<Bytes>,
    ) {
        let id = self.inner.next_session.fetch_add(1, Ordering::SeqCst);
        let proxy = caller
            .pod
            .clone()
            .map(|p| format!("{}/{p}", caller.namespace))
            .unwrap_or_else(|| caller.to_string());
        let target = sub.target.clone();
        let guard = SessionGuard::open(self.inner.clone(), id, &target, &proxy);
        info!(%target, %proxy, known = sub.known.len(), last_version = ?sub.last_version, "proxy subscribed");
        let mut session = Session {
            inner: self.inner.clone(),
            id,
            target,
            proxy,
            send,
            held: Held::Reported(sub.known),
            inflight: None,
            last_sent: None,
        };
        let end = session.run(self.watch(&sub.target), decoder, body).await;
        info!(target = %session.target, proxy = %session.proxy, reason = %end, "config stream ended");
        drop(guard);
    }
}

struct SessionGuard {
    inner: Arc<Inner>,
    id: u64,
}

impl SessionGuard {
    fn open(inner: Arc<Inner>, id: u64, target: &Target, proxy: &str) -> Self {
        inner.metrics.connected_proxies.inc();
        inner.sessions.lock().expect("sessions lock").insert(
            id,
            ProxyStatus {
                target: target.to_string(),
                proxy: proxy.to_string(),
                acked_version: None,
            },
        );
        Self { inner, id }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.inner.metrics.connected_proxies.dec();
        self.inner
            .sessions
            .lock()
            .expect("sessions lock")
            .remove(&self.id);
    }
}
