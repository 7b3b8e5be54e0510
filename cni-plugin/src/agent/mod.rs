//! The node agent: puts the plugin into the node's CNI config, answers the plugin, and keeps
//! every pod on its node captured exactly when its labels say so.
//!
//! For each pod to capture it hands the pod's network namespace to ztunnel first (which
//! opens the pod's listeners and acks), then installs the in-pod redirection, so traffic is
//! never redirected to listeners that do not exist yet. Releasing goes the other way round.
//! When ztunnel (re)connects, the agent replays every captured pod and marks the snapshot
//! complete, so a restarted ztunnel rebuilds exactly the right set.

mod adopt;
mod capture;
pub mod cluster;
mod gc;
pub mod health;
pub mod install;
pub mod kube_source;
pub mod netns_lookup;
mod reconcile;
mod shutdown;
pub mod source;

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_core::inpod_proto::{AgentClient, PodInfo};
use tracing::{info, warn};

use crate::agent_proto::{serve_one, AgentResponse, PluginRequest};
use crate::redirect::RedirectConfig;
use cluster::{ClusterPod, ClusterView, Decision};
use source::ClusterFeed;

#[derive(Clone, Debug)]
pub struct AgentOptions {
    pub node: String,
    /// The cluster-state file (see [`cluster`]).
    pub cluster_state: PathBuf,
    /// ztunnel's in-pod socket.
    pub ztunnel_socket: PathBuf,
    /// Where the plugin reaches the agent.
    pub plugin_socket: PathBuf,
    /// The node's network namespace (for the kubelet-probe SNAT).
    pub host_netns: PathBuf,
    pub redirect: RedirectConfig,
    /// How often to re-read the cluster state and reconcile.
    pub resync: Duration,
    /// Search only named network namespaces with this prefix for running pods (simulated
    /// nodes sharing one machine); `None` searches the whole node.
    pub netns_prefix: Option<String>,
}

/// A CNI attachment the agent captured through ADD: what GC names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct AttachmentKey {
    network: String,
    container_id: String,
    ifname: String,
}

struct Captured {
    info: PodInfo,
    /// Set when the pod was captured by CNI ADD; `None` when the reconciler captured a
    /// running pod (label change), which no runtime GC list will ever name.
    attachment: Option<AttachmentKey>,
    /// Kept open: replays to a restarted ztunnel need the namespace even after the path the
    /// runtime gave us is gone.
    netns: File,
}

impl Captured {
    fn netns_path(&self) -> PathBuf {
        use std::os::fd::AsRawFd;
        PathBuf::from(format!("/proc/self/fd/{}", self.netns.as_raw_fd()))
    }
    fn ipv4(&self) -> Option<Ipv4Addr> {
        self.info.ips.iter().find_map(|ip| match ip {
            IpAddr::V4(v4) => Some(*v4),
            IpAddr::V6(_) => None,
        })
    }
}

#[derive(Default)]
struct State {
    view: ClusterView,
    captured: HashMap<String, Captured>,
    ztunnel: Option<AgentClient>,
    /// Why the last connection attempt to ztunnel failed (for readiness).
    ztunnel_error: Option<String>,
    /// The source produced a complete view (a watch finished its initial lists). Until then
    /// the agent neither reconciles nor connects to ztunnel: an empty snapshot would make
    /// ztunnel drop the pods a previous agent captured.
    view_loaded: bool,
    /// Shutting down: nothing is captured any more.
    stopping: bool,
}

/// Why a pod could not be captured: a metric label and a message for the plugin and logs.
#[derive(Debug)]
struct Failure {
    reason: &'static str,
    message: String,
}

fn failure(reason: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        reason,
        message: message.into(),
    }
}

/// A running agent. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    opts: Arc<AgentOptions>,
    state: Arc<Mutex<State>>,
    metrics: Arc<health::AgentMetrics>,
    installed: Arc<std::sync::atomic::AtomicBool>,
    feed: Arc<ClusterFeed>,
}

fn pod_info(pod: &ClusterPod, ips: &[IpAddr]) -> PodInfo {
    PodInfo {
        uid: pod.uid.clone(),
        name: pod.name.clone(),
        namespace: pod.namespace.clone(),
        service_account: pod.service_account.clone(),
        ips: if ips.is_empty() {
            pod.ips.clone()
        } else {
            ips.to_vec()
        },
    }
}

impl Agent {
    /// Starts the plugin server, the reconciler and the ztunnel connection; returns at once.
    /// The cluster view comes from the file `opts.cluster_state`.
    pub fn start(opts: AgentOptions) -> std::io::Result<Agent> {
        let feed = ClusterFeed::file(opts.cluster_state.clone());
        Agent::start_fed(opts, feed)
    }

    /// [`Agent::start`] with the cluster view from `feed` (`opts.cluster_state` is unused).
    pub fn start_fed(opts: AgentOptions, feed: ClusterFeed) -> std::io::Result<Agent> {
        if let Some(dir) = opts.plugin_socket.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let _ = std::fs::remove_file(&opts.plugin_socket);
        let listener = UnixListener::bind(&opts.plugin_socket)?;
        let agent = Agent {
            opts: Arc::new(opts),
            state: Arc::new(Mutex::new(State {
                view_loaded: !feed.needs_initial_load(),
                ..State::default()
            })),
            metrics: Arc::default(),
            installed: Arc::default(),
            feed: Arc::new(feed),
        };
        let a = agent.clone();
        std::thread::Builder::new()
            .name("plugin-server".into())
            .spawn(move || a.serve_plugin(listener))?;
        let a = agent.clone();
        std::thread::Builder::new()
            .name("reconciler".into())
            .spawn(move || {
                let mut seen = 0;
                loop {
                    a.reconcile();
                    seen = a.feed.wait(seen, a.opts.resync);
                }
            })?;
        Ok(agent)
    }

    /// UIDs of the pods currently captured.
    pub fn captured(&self) -> Vec<String> {
        let mut v: Vec<String> = self.lock().captured.keys().cloned().collect();
        v.sort();
        v
    }

    pub fn ztunnel_connected(&self) -> bool {
        self.lock().ztunnel.is_some()
    }

    pub fn metrics(&self) -> &health::AgentMetrics {
        &self.metrics
    }

    /// Called by whoever installs the plugin into the node's CNI config.
    pub fn set_installed(&self, installed: bool) {
        self.installed
            .store(installed, std::sync::atomic::Ordering::Release);
    }

    /// Ready: the plugin is in the CNI config and ztunnel is connected. Only reports: the
    /// reconciler (every `--resync`) and plugin requests are what reconnect, so a readiness
    /// probe never triggers a replay of every pod to ztunnel.
    pub fn ready(&self) -> Result<(), String> {
        if !self.installed.load(std::sync::atomic::Ordering::Acquire) {
            return Err("the CNI plugin is not installed in the node's CNI config yet".into());
        }
        let st = self.lock();
        if !st.view_loaded {
            return Err("waiting for the initial Kubernetes lists of pods and namespaces".into());
        }
        match &st.ztunnel {
            Some(client) if !client.is_closed() => Ok(()),
            Some(_) => Err(
                "ztunnel closed the in-pod connection; the agent reconnects at its next resync"
                    .into(),
            ),
            None => Err(st
                .ztunnel_error
                .clone()
                .unwrap_or_else(|| "not connected to ztunnel yet".into())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn serve_plugin(&self, listener: UnixListener) {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let agent = self.clone();
            std::thread::spawn(move || {
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = serve_one(&conn, |req| agent.handle(req));
            });
        }
    }

    /// Answers one plugin request, recording how long it took.
    pub fn handle(&self, req: PluginRequest) -> AgentResponse {
        let started = Instant::now();
        let request = match &req {
            PluginRequest::Add { .. } => "add",
            PluginRequest::Check { .. } => "check",
            PluginRequest::Del { .. } => "del",
            PluginRequest::Status => "status",
            PluginRequest::Gc { .. } => "gc",
        };
        let response = self.answer(req);
        let result = match &response {
            AgentResponse::Captured => "captured",
            AgentResponse::Skipped { .. } => "skipped",
            AgentResponse::Ok => "ok",
            AgentResponse::Error { .. } => "error",
        };
        self.metrics.observe(request, result, started.elapsed());
        response
    }

    fn answer(&self, req: PluginRequest) -> AgentResponse {
        match req {
            PluginRequest::Add {
                network,
                container_id,
                ifname,
                netns,
                pod_namespace,
                pod_name,
                ips,
                ..
            } => {
                let attachment = AttachmentKey {
                    network,
                    container_id,
                    ifname,
                };
                self.on_add(
                    &pod_namespace,
                    &pod_name,
                    Path::new(&netns),
                    &ips,
                    attachment,
                )
            }
            PluginRequest::Check {
                pod_namespace,
                pod_name,
                ..
            } => {
                let st = self.lock();
                match st.view.pod(&pod_namespace, &pod_name) {
                    Some(p)
                        if st.view.decide(p) == Decision::Capture
                            && !st.captured.contains_key(&p.uid) =>
                    {
                        AgentResponse::Error {
                            message: format!(
                                "pod {pod_namespace}/{pod_name} should be captured but is not"
                            ),
                            retryable: true,
                        }
                    }
                    _ => AgentResponse::Ok,
                }
            }
            PluginRequest::Del {
                pod_namespace,
                pod_name,
                ..
            } => {
                let mut st = self.lock();
                let uid = match (pod_namespace, pod_name) {
                    (Some(ns), Some(name)) => st.view.pod(&ns, &name).map(|p| p.uid.clone()),
                    _ => None,
                };
                if let Some(uid) = uid {
                    self.release(&mut st, &uid);
                }
                AgentResponse::Ok
            }
            PluginRequest::Status => {
                let mut st = self.lock();
                match self.ensure_ztunnel(&mut st) {
                    Ok(()) => AgentResponse::Ok,
                    Err(e) => AgentResponse::Error {
                        message: e,
                        retryable: true,
                    },
                }
            }
            PluginRequest::Gc {
                network,
                valid_attachments,
            } => self.gc(&network, &valid_attachments),
        }
    }

    fn on_add(
        &self,
        namespace: &str,
        name: &str,
        netns: &Path,
        ips: &[IpAddr],
        attachment: AttachmentKey,
    ) -> AgentResponse {
        // The pod exists in the API before the runtime calls CNI, but our view may lag a
        // little behind: give it a moment.
        let deadline = Instant::now() + Duration::from_secs(1);
        let mut first = true;
        loop {
            let mut st = self.lock();
            if let Some(pod) = st.view.pod(namespace, name).cloned() {
                return match st.view.decide(&pod) {
                    Decision::Skip(reason) => AgentResponse::Skipped { reason },
                    // Being removed from the node: capturing now would leave rules behind.
                    Decision::Capture if st.stopping => AgentResponse::Error {
                        message: "the node agent is shutting down".into(),
                        retryable: true,
                    },
                    Decision::Capture => {
                        match self.capture(&mut st, &pod, netns, ips, Some(attachment)) {
                            Ok(()) => AgentResponse::Captured,
                            Err(f) => AgentResponse::Error {
                                message: f.message,
                                retryable: true,
                            },
                        }
                    }
                };
            }
            if !st.view.namespace_enrolled(namespace) && Instant::now() > deadline {
                return AgentResponse::Skipped {
                    reason: format!("namespace {namespace} is not enrolled"),
                };
            }
            if Instant::now() > deadline {
                self.metrics.fail("pod_unknown");
                return AgentResponse::Error {
                    message: format!("pod {namespace}/{name} is not known to the node agent yet"),
                    retryable: true,
                };
            }
            drop(st);
            // Re-read at once (the file may have changed since the last resync), then poll.
            if !first {
                std::thread::sleep(Duration::from_millis(10));
            }
            first = false;
            self.refresh_view();
        }
    }

    fn ensure_ztunnel(&self, st: &mut State) -> Result<(), String> {
        if !st.view_loaded {
            return Err(
                "the node agent is still loading the cluster view; it connects to ztunnel after"
                    .into(),
            );
        }
        match &st.ztunnel {
            Some(client) if client.is_closed() => {
                // ztunnel restarted or crashed: reconnect below, which replays every pod.
                warn!("ztunnel closed the in-pod connection");
                st.ztunnel = None;
            }
            // An upgrade: a new ztunnel bound the socket path beside the running one. Keep
            // the old connection until the new one has every pod, then leave the old
            // ztunnel, which closes its listeners only after that.
            Some(client) if client.superseded() => {
                info!("a new ztunnel is listening: moving the pods to it");
                if let Err(why) = self.connect_and_replay(st) {
                    // The old ztunnel still serves every pod: keep it, try again next round.
                    warn!(error = %why, "moving to the new ztunnel failed; staying with the old one");
                }
                return Ok(());
            }
            Some(_) => return Ok(()),
            None => {}
        }
        self.connect_and_replay(st)
    }

    /// Connects to whichever ztunnel listens at the socket path now, replays every captured
    /// pod and makes it the connection in use (dropping the previous one, if any).
    fn connect_and_replay(&self, st: &mut State) -> Result<(), String> {
        let client = AgentClient::connect(&self.opts.ztunnel_socket).map_err(|e| {
            let why = format!(
                "ztunnel is not reachable at {}: {e}",
                self.opts.ztunnel_socket.display()
            );
            st.ztunnel_error = Some(why.clone());
            why
        })?;
        // A (re)connected ztunnel learns every pod we capture, then that the list is complete.
        let replay = st
            .captured
            .values()
            .try_for_each(|c| {
                client
                    .add_pod(&c.info, c.netns.as_fd())
                    .map_err(|e| format!("replaying pod {} to ztunnel: {e}", c.info.uid))
            })
            .and_then(|()| {
                client
                    .snapshot_done()
                    .map_err(|e| format!("ending the replay to ztunnel: {e}"))
            });
        if let Err(why) = replay {
            st.ztunnel_error = Some(why.clone());
            return Err(why);
        }
        st.ztunnel_error = None;
        info!(
            pods = st.captured.len(),
            "connected to ztunnel and replayed captured pods"
        );
        st.ztunnel = Some(client);
        Ok(())
    }
}
