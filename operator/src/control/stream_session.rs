//! One proxy's config stream on the server: what it holds, the update in flight, and the
//! encoded updates shared between streams (see [`Snapshot::update_from`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ambit_core::control::proto::{
    encode, ClientMessage, LineDecoder, ServerMessage, Target, Update,
};
use ambit_core::control::resources::{delta, delta_between, Delta, ResourceSet};
use bytes::Bytes;
use h2::{RecvStream, SendStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::config_server::{Inner, NackRecord};

/// Encoded updates kept per snapshot (one per version proxies are coming from; usually one).
const SHARED_UPDATES: usize = 4;

#[derive(Debug)]
struct SharedUpdate {
    base: Option<u64>,
    bytes: Bytes,
    upserts: usize,
    removes: usize,
}

/// One published state, shared by every target it was published to.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub resources: Arc<ResourceSet>,
    /// Encoded updates to this snapshot by the version the proxy held (`None`: nothing).
    updates: Mutex<Vec<SharedUpdate>>,
}

impl Snapshot {
    pub fn new(version: u64, resources: Arc<ResourceSet>) -> Self {
        Self {
            version,
            resources,
            updates: Mutex::new(Vec::new()),
        }
    }

    /// The update from `base` (a snapshot the proxy ACKed, or nothing) to this one, encoded
    /// once and shared by every stream coming from the same base.
    fn update_from(&self, base: Option<&Snapshot>) -> (Bytes, usize, usize) {
        let key = base.map(|b| b.version);
        let mut updates = self.updates.lock().expect("updates lock");
        if let Some(u) = updates.iter().find(|u| u.base == key) {
            return (u.bytes.clone(), u.upserts, u.removes);
        }
        let d = match base {
            Some(b) => delta_between(&b.resources, &self.resources),
            None => delta_between(&ResourceSet::default(), &self.resources),
        };
        let (upserts, removes) = (d.upserts.len(), d.removes.len());
        let full = base.is_none_or(|b| b.resources.0.is_empty());
        let bytes = self.encode(d, full);
        if updates.len() >= SHARED_UPDATES {
            updates.remove(0);
        }
        updates.push(SharedUpdate {
            base: key,
            bytes: bytes.clone(),
            upserts,
            removes,
        });
        (bytes, upserts, removes)
    }

    fn encode(&self, d: Delta, full: bool) -> Bytes {
        encode(&ServerMessage::Update(Update {
            version: self.version,
            full,
            upserts: d.upserts,
            removes: d.removes,
        }))
    }
}

/// What a proxy holds: what it reported when subscribing, or a snapshot it ACKed.
pub(super) enum Held {
    Reported(BTreeMap<String, String>),
    Acked(Arc<Snapshot>),
}

pub(super) struct Session {
    pub(super) inner: Arc<Inner>,
    pub(super) id: u64,
    pub(super) target: Target,
    pub(super) proxy: String,
    pub(super) send: SendStream<Bytes>,
    pub(super) held: Held,
    /// The snapshot sent and awaiting ACK/NACK.
    pub(super) inflight: Option<Arc<Snapshot>>,
    pub(super) last_sent: Option<u64>,
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
    pub(super) async fn run(
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

    fn send_update(&mut self, snap: &Arc<Snapshot>) -> Result<(), String> {
        let (bytes, upserts, removes) = match &self.held {
            Held::Acked(base) => snap.update_from(Some(base)),
            Held::Reported(known) if known.is_empty() => snap.update_from(None),
            // A reconnecting proxy's own view: a difference for it alone.
            Held::Reported(known) => {
                let d = delta(known, &snap.resources);
                let counts = (d.upserts.len(), d.removes.len());
                (snap.encode(d, false), counts.0, counts.1)
            }
        };
        debug!(target = %self.target, proxy = %self.proxy, version = snap.version,
            upserts, removes, bytes = bytes.len(), "sending config update");
        self.send_data(bytes)?;
        self.inner.metrics.count_update("sent");
        self.inflight = Some(snap.clone());
        self.last_sent = Some(snap.version);
        Ok(())
    }

    fn handle(&mut self, msg: ClientMessage) {
        let inflight = self.inflight.as_ref().map(|s| s.version);
        match msg {
            ClientMessage::Heartbeat => {}
            ClientMessage::Subscribe(_) => {
                warn!(proxy = %self.proxy, "second Subscribe on one stream ignored");
            }
            ClientMessage::Ack { version } if Some(version) == inflight => {
                let sent = self.inflight.take().expect("checked");
                self.held = Held::Acked(sent);
                self.inner.metrics.count_update("ack");
                let key = (self.target.to_string(), self.proxy.clone());
                let cleared = self.inner.nacks.lock().expect("nacks lock").remove(&key);
                if cleared.is_some() {
                    self.inner.nacks_changed.notify_one();
                }
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
                self.inner.nacks_changed.notify_one();
            }
            ClientMessage::Ack { version } | ClientMessage::Nack { version, .. } => {
                debug!(proxy = %self.proxy, version, ?inflight, "stale ACK/NACK ignored");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ambit_core::meshconfig::{MeshConfig, MtlsMode};

    use super::*;

    fn snapshot(version: u64, cfg: &MeshConfig) -> Snapshot {
        Snapshot::new(version, Arc::new(ResourceSet::from_config(cfg).unwrap()))
    }

    #[test]
    fn an_update_is_encoded_once_per_base_and_shared() {
        let base = snapshot(1, &MeshConfig::default());
        let next = snapshot(
            2,
            &MeshConfig {
                default_mtls_mode: MtlsMode::Strict,
                ..Default::default()
            },
        );
        let (a, upserts, removes) = next.update_from(Some(&base));
        let (b, ..) = next.update_from(Some(&base));
        assert_eq!(a.as_ptr(), b.as_ptr(), "the second stream reuses the bytes");
        assert_eq!((upserts, removes), (1, 0));
        let text = std::str::from_utf8(&a).unwrap();
        assert!(
            text.contains(r#""full":false"#) && text.contains("STRICT"),
            "{text}"
        );
        // From nothing: the full state, a different (also shared) update.
        let (full, ..) = next.update_from(None);
        assert!(std::str::from_utf8(&full)
            .unwrap()
            .contains(r#""full":true"#));
        // Old bases are forgotten past the limit, newest kept.
        for v in 10..10 + SHARED_UPDATES as u64 {
            next.update_from(Some(&snapshot(v, &MeshConfig::default())));
        }
        assert_eq!(next.updates.lock().unwrap().len(), SHARED_UPDATES);
        assert!(next
            .updates
            .lock()
            .unwrap()
            .iter()
            .all(|u| u.base != Some(1)));
    }
}
