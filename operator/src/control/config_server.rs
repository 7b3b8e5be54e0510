//! The server side of the config stream. Reconcilers [`ConfigServer::publish`] a compiled
//! config per target; every proxy subscribed to that target receives the difference between
//! what it holds and the new state.
//!
//! Per stream, at most one update is in flight: the next one is computed when the proxy ACKs
//! or NACKs, from the latest published state. A slow proxy therefore gets the published
//! states coalesced, and nothing queues up for it.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ambit_core::control::proto::{
    encode, ClientMessage, LineDecoder, ServerMessage, Subscribe, Target, Update,
};
use ambit_core::control::resources::{delta, ResourceError, ResourceSet};
use ambit_core::meshconfig::MeshConfig;
use bytes::Bytes;
use h2::{RecvStream, SendStream};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::auth::Caller;
use super::metrics::ControlMetrics;

/// One published state of a target.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub resources: ResourceSet,
}

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

type Targets = HashMap<Target, watch::Sender<Option<Arc<Snapshot>>>>;

struct Inner {
    targets: Mutex<Targets>,
    next_version: AtomicU64,
    next_session: AtomicU64,
    sessions: Mutex<BTreeMap<u64, ProxyStatus>>,
    nacks: Mutex<BTreeMap<(String, String), NackRecord>>,
    metrics: Arc<ControlMetrics>,
    heartbeat: Duration,
    peer_timeout: Duration,
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
        let mut targets = self.inner.targets.lock().expect("targets lock");
        let tx = targets
            .entry(target.clone())
            .or_insert_with(|| watch::channel(None).0);
        if let Some(cur) = tx.borrow().as_ref() {
            if cur.resources == resources {
                return Ok(cur.version);
            }
        }
        let version = self.inner.next_version.fetch_add(1, Ordering::SeqCst) + 1;
        tx.send_replace(Some(Arc::new(Snapshot { version, resources })));
        debug!(%target, version, "config published");
        Ok(version)
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
            acked: sub.known,
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

struct Session {
    inner: Arc<Inner>,
    id: u64,
    target: Target,
    proxy: String,
    send: SendStream<Bytes>,
    /// What the proxy holds (reported at subscribe, then as ACKed).
    acked: BTreeMap<String, String>,
    /// The update awaiting ACK/NACK and what the proxy holds once it is applied.
    inflight: Option<(u64, BTreeMap<String, String>)>,
    last_sent: Option<u64>,
}

/// Reads the proxy's messages on their own task so a half-read line never gets lost.
fn spawn_reader(
    mut decoder: LineDecoder,
    mut body: RecvStream,
) -> (
    mpsc::Receiver<Result<ClientMessage, String>>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::channel(8);
    let task = tokio::spawn(async move {
        loop {
            loop {
                match decoder.next_message::<ClientMessage>() {
                    Ok(Some(m)) => {
                        if tx.send(Ok(m)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string())).await;
                        return;
                    }
                }
            }
            match body.data().await {
                Some(Ok(chunk)) => {
                    let _ = body.flow_control().release_capacity(chunk.len());
                    decoder.push(&chunk);
                }
                Some(Err(e)) => {
                    let _ = tx.send(Err(e.to_string())).await;
                    return;
                }
                None => return,
            }
        }
    });
    (rx, task)
}

impl Session {
    async fn run(
        &mut self,
        latest: watch::Receiver<Option<Arc<Snapshot>>>,
        decoder: LineDecoder,
        body: RecvStream,
    ) -> String {
        let (incoming, reader) = spawn_reader(decoder, body);
        let end = self.exchange(latest, incoming).await;
        // Both directions end together: the proxy sees the reset and reconnects.
        reader.abort();
        self.send.send_reset(h2::Reason::CANCEL);
        end
    }

    async fn exchange(
        &mut self,
        mut latest: watch::Receiver<Option<Arc<Snapshot>>>,
        mut incoming: mpsc::Receiver<Result<ClientMessage, String>>,
    ) -> String {
        let mut heartbeat = tokio::time::interval(self.inner.heartbeat);
        let mut last_seen = Instant::now();
        latest.mark_changed();
        loop {
            let deadline = last_seen + self.inner.peer_timeout;
            tokio::select! {
                changed = latest.changed(), if self.inflight.is_none() => {
                    if changed.is_err() {
                        return "config server dropped".into();
                    }
                    let snap = latest.borrow_and_update().clone();
                    if let Some(snap) = snap {
                        if self.last_sent != Some(snap.version) {
                            if let Err(e) = self.send_update(&snap) {
                                return e;
                            }
                        }
                    }
                }
                msg = incoming.recv() => match msg {
                    None => return "proxy closed the stream".into(),
                    Some(Err(e)) => return format!("bad message from proxy: {e}"),
                    Some(Ok(m)) => {
                        last_seen = Instant::now();
                        self.handle(m);
                    }
                },
                _ = heartbeat.tick() => {
                    if let Err(e) = self.send_data(encode(&ServerMessage::Heartbeat)) {
                        return e;
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return format!("no message from the proxy for {:?}", self.inner.peer_timeout);
                }
            }
        }
    }

    fn send_data(&mut self, b: Bytes) -> Result<(), String> {
        self.send
            .send_data(b, false)
            .map_err(|e| format!("sending to the proxy: {e}"))
    }

    fn send_update(&mut self, snap: &Snapshot) -> Result<(), String> {
        let d = delta(&self.acked, &snap.resources);
        let update = Update {
            version: snap.version,
            full: self.acked.is_empty(),
            upserts: d.upserts,
            removes: d.removes,
        };
        debug!(target = %self.target, proxy = %self.proxy, version = update.version,
            upserts = update.upserts.len(), removes = update.removes.len(), "sending config update");
        self.send_data(encode(&ServerMessage::Update(update)))?;
        self.inner.metrics.count_update("sent");
        self.inflight = Some((snap.version, snap.resources.versions()));
        self.last_sent = Some(snap.version);
        Ok(())
    }

    fn handle(&mut self, msg: ClientMessage) {
        let inflight = self.inflight.as_ref().map(|(v, _)| *v);
        match msg {
            ClientMessage::Heartbeat => {}
            ClientMessage::Subscribe(_) => {
                warn!(proxy = %self.proxy, "second Subscribe on one stream ignored");
            }
            ClientMessage::Ack { version } if Some(version) == inflight => {
                let (_, held) = self.inflight.take().expect("checked");
                self.acked = held;
                self.inner.metrics.count_update("ack");
                let key = (self.target.to_string(), self.proxy.clone());
                self.inner.nacks.lock().expect("nacks lock").remove(&key);
                if let Some(s) = self
                    .inner
                    .sessions
                    .lock()
                    .expect("sessions lock")
                    .get_mut(&self.id)
                {
                    s.acked_version = Some(version);
                }
            }
            ClientMessage::Nack { version, error } if Some(version) == inflight => {
                self.inflight = None;
                self.inner.metrics.count_update("nack");
                warn!(target = %self.target, proxy = %self.proxy, version, %error, "proxy rejected config (NACK)");
                let record = NackRecord {
                    target: self.target.to_string(),
                    proxy: self.proxy.clone(),
                    version,
                    error,
                };
                let key = (record.target.clone(), record.proxy.clone());
                self.inner
                    .nacks
                    .lock()
                    .expect("nacks lock")
                    .insert(key, record);
            }
            ClientMessage::Ack { version } | ClientMessage::Nack { version, .. } => {
                debug!(proxy = %self.proxy, version, ?inflight, "stale ACK/NACK ignored");
            }
        }
    }
}
