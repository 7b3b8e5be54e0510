//! The proxy side of the config stream: subscribe, apply updates, ACK or NACK them, and
//! reconnect with exponential backoff and jitter, reporting what is held so the server
//! sends only the difference. The last good config stays in force throughout.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::SendStream;
use rand::Rng;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tracing::{info, warn};

use super::held::Held;
use super::proto::{encode, ClientMessage, LineDecoder, ServerMessage, Subscribe, Target, Update};
use super::{refused, request, ControlError, Endpoint, STREAM_PATH};
use crate::meshconfig::MeshConfig;

/// Checks a candidate config before it is applied; an `Err` NACKs it.
pub type Validator = Arc<dyn Fn(&MeshConfig) -> Result<(), String> + Send + Sync>;

pub struct StreamOptions {
    pub endpoint: Endpoint,
    pub target: Target,
    pub validate: Validator,
    /// First reconnect delay; doubles per failure up to `backoff_max` (each one jittered).
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How often to send a heartbeat.
    pub heartbeat: Duration,
    /// Silence after which the server is presumed dead and the stream reconnects.
    pub peer_timeout: Duration,
}

impl StreamOptions {
    pub fn new(endpoint: Endpoint, target: Target) -> Self {
        Self {
            endpoint,
            target,
            validate: Arc::new(|_| Ok(())),
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            heartbeat: Duration::from_secs(10),
            peer_timeout: Duration::from_secs(30),
        }
    }
}

/// What the stream has been doing, for admin endpoints and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStatus {
    pub connected: bool,
    /// Version of the config in force.
    pub version: Option<u64>,
    /// Updates applied / rejected since start.
    pub applied: u64,
    pub rejected: u64,
    /// Successful subscriptions since start (1 + reconnects).
    pub subscriptions: u64,
    /// Why the last session ended or the last update was rejected.
    pub last_error: Option<String>,
}

/// A running config stream.
pub struct ConfigStream {
    /// The config in force; changes only when a validated update was applied.
    pub config: watch::Receiver<Arc<MeshConfig>>,
    pub status: watch::Receiver<StreamStatus>,
}

struct Worker {
    opts: StreamOptions,
    held: Held,
    version: Option<u64>,
    config: Option<watch::Sender<Arc<MeshConfig>>>,
    first: Option<oneshot::Sender<watch::Receiver<Arc<MeshConfig>>>>,
    status: watch::Sender<StreamStatus>,
}

impl ConfigStream {
    /// Starts the stream and waits for the first valid config (retrying for as long as it
    /// takes). The stream runs until every receiver of `config` is dropped.
    pub async fn connect(opts: StreamOptions) -> ConfigStream {
        let (first_tx, first_rx) = oneshot::channel();
        let (status_tx, status) = watch::channel(StreamStatus::default());
        let worker = Worker {
            opts,
            held: Held::empty().expect("an empty config assembles"),
            version: None,
            config: None,
            first: Some(first_tx),
            status: status_tx,
        };
        tokio::spawn(worker.run());
        let config = first_rx
            .await
            .expect("the stream worker runs until the first config is delivered");
        ConfigStream { config, status }
    }
}

fn jittered(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.5..=1.0))
}

impl Worker {
    fn closed(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.is_closed())
    }

    async fn run(mut self) {
        let mut backoff = self.opts.backoff_min;
        loop {
            let before = self.status.borrow().subscriptions;
            let result = self.session().await;
            self.status.send_modify(|s| s.connected = false);
            if self.closed() || self.first.as_ref().is_some_and(|f| f.is_closed()) {
                return;
            }
            if self.status.borrow().subscriptions > before {
                backoff = self.opts.backoff_min;
            }
            let msg = match &result {
                Ok(()) => "the control plane closed the stream".to_string(),
                Err(e) => e.to_string(),
            };
            let wait = jittered(backoff);
            warn!(target_ = %self.opts.target, error = %msg, retry_in = ?wait, "config stream down; keeping the last good config");
            self.status.send_modify(|s| s.last_error = Some(msg));
            tokio::time::sleep(wait).await;
            backoff = (backoff * 2).min(self.opts.backoff_max);
        }
    }

    async fn session(&mut self) -> Result<(), ControlError> {
        let ep = &self.opts.endpoint;
        let token = ep.token()?;
        let send = ep.connect().await?;
        let proto = |e: h2::Error| ControlError::Protocol(e.to_string());
        let mut send = send.ready().await.map_err(proto)?;
        let (resp, mut out) = send
            .send_request(request(STREAM_PATH, &token), false)
            .map_err(proto)?;
        let subscribe = ClientMessage::Subscribe(Subscribe {
            target: self.opts.target.clone(),
            known: self.held.resources.versions(),
            last_version: self.version,
        });
        out.send_data(encode(&subscribe), false).map_err(proto)?;
        let resp = tokio::time::timeout(self.opts.peer_timeout, resp)
            .await
            .map_err(|_| ControlError::Protocol("no answer to the subscription".into()))?
            .map_err(proto)?;
        let (parts, mut body) = resp.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(refused(parts.status, body).await);
        }
        info!(target_ = %self.opts.target, known = self.held.resources.0.len(), "config stream subscribed");
        self.status.send_modify(|s| {
            s.connected = true;
            s.subscriptions += 1;
        });
        let mut decoder = LineDecoder::default();
        let mut heartbeat = tokio::time::interval(self.opts.heartbeat);
        let mut last_seen = Instant::now();
        loop {
            let deadline = last_seen + self.opts.peer_timeout;
            tokio::select! {
                chunk = body.data() => {
                    let Some(chunk) = chunk else { return Ok(()) };
                    let chunk: Bytes = chunk.map_err(proto)?;
                    let _ = body.flow_control().release_capacity(chunk.len());
                    last_seen = Instant::now();
                    decoder.push(&chunk);
                    while let Some(msg) = decoder
                        .next_message::<ServerMessage>()
                        .map_err(|e| ControlError::Protocol(e.to_string()))?
                    {
                        if let ServerMessage::Update(u) = msg {
                            self.apply(u, &mut out)?;
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    out.send_data(encode(&ClientMessage::Heartbeat), false).map_err(proto)?;
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(ControlError::Protocol(format!(
                        "no message from the control plane for {:?}", self.opts.peer_timeout
                    )));
                }
                _ = async { self.config.as_ref().expect("checked").closed().await }, if self.config.is_some() => {
                    return Ok(());
                }
            }
        }
    }

    fn apply(&mut self, u: Update, out: &mut SendStream<Bytes>) -> Result<(), ControlError> {
        let validate = self.opts.validate.clone();
        let reply = match self.held.apply(&u, |cfg| validate(cfg)) {
            Ok(cfg) => {
                info!(
                    version = u.version,
                    upserts = u.upserts.len(),
                    removes = u.removes.len(),
                    "config update applied"
                );
                self.version = Some(u.version);
                match &self.config {
                    Some(tx) => {
                        tx.send_replace(cfg);
                    }
                    None => {
                        let (tx, rx) = watch::channel(cfg);
                        self.config = Some(tx);
                        if let Some(first) = self.first.take() {
                            let _ = first.send(rx);
                        }
                    }
                }
                self.status.send_modify(|s| {
                    s.version = Some(u.version);
                    s.applied += 1;
                });
                ClientMessage::Ack { version: u.version }
            }
            Err(error) => {
                let error = error.to_string();
                warn!(version = u.version, %error, "config update rejected (NACK); keeping the last good config");
                self.status.send_modify(|s| {
                    s.rejected += 1;
                    s.last_error = Some(error.clone());
                });
                ClientMessage::Nack {
                    version: u.version,
                    error,
                }
            }
        };
        out.send_data(encode(&reply), false)
            .map_err(|e| ControlError::Protocol(e.to_string()))
    }
}
