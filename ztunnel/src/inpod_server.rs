//! ztunnel's side of the node-agent protocol ([`ambit_core::inpod_proto`]): with
//! `--inpod-socket`, pods come only from the agent, each with its network namespace as a
//! file descriptor.
//!
//! - One agent connection at a time; a new connection replaces the old one.
//! - `add_pod` is acknowledged only once the pod's 15001/15006/15008 listeners are open.
//! - A disconnect releases nothing (a restarting agent must not cut traffic); the next
//!   connection's `snapshot_done` drops the pods it did not replay.
//! - Upgrades hand over without a gap: the new ztunnel binds the socket path anew, the agent
//!   moves to it and replays every pod (the new listeners join the old ones, SO_REUSEPORT),
//!   then leaves the old ztunnel, which on SIGTERM closes its listeners only after that.
//! - Bad input is answered with an error, counted as
//!   `ambit_tcp_connection_failures_total{reporter="node",reason="inpod_protocol_error"}`,
//!   and the connection continues; received descriptors are closed.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use ambit_core::inpod_proto::{
    decode_agent, AgentMessage, BoundSocket, InpodConn, InpodListener, Packet, PodInfo,
    ZtunnelMessage, PROTOCOL_VERSION,
};
use ambit_core::netns::Netns;
use ambit_core::Identity;
use tracing::{info, warn};

use crate::config::MtlsMode;
use crate::inpod::InpodManager;
use crate::state::Workload;

/// The node-agent server: owns the pod manager in this mode.
pub struct InpodServer {
    /// Moved to the accept thread by `run`.
    listener: Option<InpodListener>,
    manager: InpodManager,
    events: mpsc::Sender<Event>,
    inbox: mpsc::Receiver<Event>,
}

/// Asks a running [`InpodServer`] to hand the node over (see [`InpodHandle::close_listeners`]).
#[derive(Clone)]
pub struct InpodHandle {
    events: mpsc::Sender<Event>,
    bound: BoundSocket,
}

impl InpodHandle {
    /// The first step of a graceful shutdown: waits (at most `handover`) until the node agent
    /// has left this ztunnel, which it does once a newer ztunnel serves every pod (an
    /// upgrade) or once it released them (an uninstall); then closes every pod's listeners,
    /// so new connections reach the newer ztunnel only. Connections already accepted go on.
    pub async fn close_listeners(&self, handover: Duration) {
        let (done, wait) = oneshot::channel();
        if self
            .events
            .send(Event::Shutdown(handover, done))
            .await
            .is_ok()
        {
            let _ = wait.await;
        }
    }

    /// Removes the socket file, unless a newer ztunnel bound the path meanwhile.
    pub fn remove_socket(&self) {
        match self.bound.remove_if_current() {
            Ok(true) => info!("removed the node-agent socket"),
            Ok(false) => info!("the node-agent socket belongs to a newer ztunnel: left in place"),
            Err(error) => warn!(%error, "removing the node-agent socket failed"),
        }
    }
}

struct Session {
    id: u64,
    conn: Arc<InpodConn>,
    /// Pods added (or re-added) on this connection: the snapshot.
    seen: HashSet<String>,
}

/// From the socket threads to the task that owns the manager.
enum Event {
    Connected(u64, Arc<InpodConn>),
    Packet(u64, Packet),
    Closed(u64, Option<std::io::Error>),
    Shutdown(Duration, oneshot::Sender<()>),
}

impl InpodServer {
    /// Binds the socket; the manager is marked ready (pods arrive later).
    pub fn bind(path: &Path, manager: InpodManager) -> std::io::Result<(Self, InpodHandle)> {
        let listener = InpodListener::bind(path)?;
        manager.set_ready();
        info!(socket = %path.display(), "waiting for the node agent");
        let (events, inbox) = mpsc::channel::<Event>(64);
        let handle = InpodHandle {
            events: events.clone(),
            bound: listener.bound().clone(),
        };
        let server = Self {
            listener: Some(listener),
            manager,
            events,
            inbox,
        };
        Ok((server, handle))
    }

    /// Serves agents forever. The socket is read on plain threads (blocking), so neither the
    /// data path nor this task ever waits on the agent; replies are sent without blocking.
    pub async fn run(mut self) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let tx = self.events.clone();
        std::thread::Builder::new()
            .name("inpod-accept".into())
            .spawn(move || accept_loop(listener, tx))
            .expect("spawning the node-agent accept thread");
        let mut session: Option<Session> = None;
        // Shutting down: who to tell once the listeners are closed, and until when to wait
        // for the agent to leave.
        let mut closing: Option<(tokio::time::Instant, oneshot::Sender<()>)> = None;
        loop {
            if closing.is_some() && session.is_none() {
                self.close_all().await;
                let (_, done) = closing.take().expect("checked");
                let _ = done.send(());
                // Only the agent's del_pod/snapshot could still reach us; nothing to serve.
                return;
            }
            let deadline = closing.as_ref().map(|(d, _)| *d);
            let event = tokio::select! {
                e = self.inbox.recv() => e,
                () = sleep_until_opt(deadline) => {
                    warn!("the node agent is still connected after the handover wait: closing the pods' listeners anyway");
                    session = None;
                    continue;
                }
            };
            let Some(event) = event else { return };
            match event {
                Event::Shutdown(handover, done) => {
                    info!(
                        agent_connected = session.is_some(),
                        "shutting down: the pods' listeners close once the node agent has moved on"
                    );
                    closing = Some((tokio::time::Instant::now() + handover, done));
                }
                Event::Connected(id, conn) => {
                    if let Some(old) = session.take() {
                        info!("node agent reconnected: replacing its previous connection");
                        old.conn.shutdown();
                    } else {
                        info!("node agent connected");
                    }
                    let hello = ZtunnelMessage::Hello {
                        version: PROTOCOL_VERSION,
                    };
                    match conn.send(&hello) {
                        Ok(()) => {
                            session = Some(Session {
                                id,
                                conn,
                                seen: HashSet::new(),
                            })
                        }
                        Err(error) => {
                            warn!(%error, "node agent: sending hello failed");
                            conn.shutdown();
                        }
                    }
                }
                Event::Packet(id, packet) => {
                    // Packets of a replaced connection are dropped (their fds closed).
                    let Some(s) = session.as_mut().filter(|s| s.id == id) else {
                        continue;
                    };
                    let reply = self.manager_handle(s, packet).await;
                    if let Err(error) = s.conn.send(&reply) {
                        warn!(%error, "node agent: reply failed; dropping the connection (pods stay served)");
                        s.conn.shutdown();
                        session = None;
                    }
                }
                Event::Closed(id, error) => {
                    if session.as_ref().is_some_and(|s| s.id == id) {
                        session = None;
                        let pods = self.manager.pod_uids().len();
                        match error {
                            None => info!(
                                pods,
                                "node agent disconnected; pods stay served until its next snapshot"
                            ),
                            Some(error) => {
                                warn!(%error, pods, "node agent connection failed; pods stay served until its next snapshot")
                            }
                        }
                    }
                }
            }
        }
    }

    /// Closes every pod's listeners (connections already accepted go on).
    async fn close_all(&mut self) {
        let uids = self.manager.pod_uids();
        for uid in &uids {
            self.manager.remove_pod_wait(uid).await;
        }
        info!(pods = uids.len(), "closed every pod's listeners");
    }

    fn protocol_error(&self, uid: Option<String>, message: String) -> ZtunnelMessage {
        warn!(pod = ?uid, error = %message, "node agent: bad message");
        self.manager
            .inputs()
            .metrics
            .fail("node", "inpod_protocol_error");
        ZtunnelMessage::Error { uid, message }
    }

    async fn manager_handle(&mut self, s: &mut Session, packet: Packet) -> ZtunnelMessage {
        if packet.truncated {
            return self.protocol_error(
                None,
                format!(
                    "message exceeds {} bytes",
                    ambit_core::inpod_proto::MAX_MESSAGE
                ),
            );
        }
        let msg = match decode_agent(&packet.data) {
            Ok(m) => m,
            Err((uid, message)) => return self.protocol_error(uid, message),
        };
        match msg {
            AgentMessage::AddPod(pod) => {
                if packet.fds.len() != 1 {
                    let n = packet.fds.len();
                    return self.protocol_error(
                        Some(pod.uid),
                        format!("add_pod needs exactly one file descriptor (the pod's network namespace), got {n}"),
                    );
                }
                let netns = match packet.fds.into_namespace_fd().and_then(Netns::from_fd) {
                    Ok(ns) => ns,
                    Err(e) => return self.protocol_error(Some(pod.uid), e.to_string()),
                };
                let uid = pod.uid.clone();
                let workload = match self.workload(&pod) {
                    Ok(w) => w,
                    Err(message) => return self.protocol_error(Some(uid), message),
                };
                match self.manager.add_pod(&workload, netns).await {
                    Ok(()) => {
                        s.seen.insert(uid.clone());
                        ZtunnelMessage::Ack { uid: Some(uid) }
                    }
                    Err(e) => {
                        warn!(pod = %uid, error = %e, "node agent: pod cannot be captured");
                        self.manager
                            .inputs()
                            .metrics
                            .fail("node", "pod_capture_failed");
                        ZtunnelMessage::Error {
                            uid: Some(uid),
                            message: e.to_string(),
                        }
                    }
                }
            }
            AgentMessage::DelPod { uid } => {
                if !packet.fds.is_empty() {
                    return self
                        .protocol_error(Some(uid), "del_pod carries no file descriptor".into());
                }
                s.seen.remove(&uid);
                self.manager.remove_pod_wait(&uid).await;
                ZtunnelMessage::Ack { uid: Some(uid) }
            }
            AgentMessage::SnapshotDone => {
                if !packet.fds.is_empty() {
                    return self
                        .protocol_error(None, "snapshot_done carries no file descriptor".into());
                }
                let gone: Vec<String> = self
                    .manager
                    .pod_uids()
                    .into_iter()
                    .filter(|uid| !s.seen.contains(uid))
                    .collect();
                for uid in &gone {
                    self.manager.remove_pod_wait(uid).await;
                }
                info!(
                    released = gone.len(),
                    served = s.seen.len(),
                    "node agent snapshot complete"
                );
                ZtunnelMessage::Ack { uid: None }
            }
        }
    }

    /// What the agent tells us, as a workload (labels and mTLS mode come from the config by IP).
    fn workload(&self, pod: &PodInfo) -> Result<Workload, String> {
        let Some(&ip) = pod.ips.first() else {
            return Err("add_pod needs at least one IP".into());
        };
        if pod.uid.is_empty() {
            return Err("add_pod needs a uid".into());
        }
        let state = self.manager.inputs().state();
        let identity = Identity::new(&state.trust_domain, &pod.namespace, &pod.service_account)
            .map_err(|e| format!("identity of {}/{}: {e}", pod.namespace, pod.name))?;
        Ok(Workload {
            uid: pod.uid.clone(),
            name: pod.name.clone(),
            namespace: pod.namespace.clone(),
            ip,
            node: self.manager.inputs().node.clone(),
            identity,
            labels: BTreeMap::new(),
            captured: true,
            mtls_mode: MtlsMode::default(),
            healthy: true,
            netns: None,
            waypoint: None,
        })
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn accept_loop(listener: InpodListener, tx: mpsc::Sender<Event>) {
    let mut next_id = 0u64;
    loop {
        let conn = match listener.accept() {
            Ok(c) => Arc::new(c),
            Err(error) => {
                warn!(%error, "node agent socket: accept failed");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        next_id += 1;
        let id = next_id;
        if tx
            .blocking_send(Event::Connected(id, conn.clone()))
            .is_err()
        {
            return;
        }
        let tx = tx.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("inpod-conn-{id}"))
            .spawn(move || loop {
                let event = match conn.recv() {
                    Ok(Some(packet)) => Event::Packet(id, packet),
                    Ok(None) => Event::Closed(id, None),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => Event::Closed(id, Some(e)),
                };
                let closed = matches!(event, Event::Closed(..));
                if tx.blocking_send(event).is_err() || closed {
                    return;
                }
            });
        if let Err(error) = spawned {
            warn!(%error, "node agent: cannot start a reader thread");
        }
    }
}
