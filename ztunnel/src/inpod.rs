//! The in-pod model: one ztunnel serves every captured pod on its node by opening that pod's
//! listeners inside the pod's own network namespace, with the pod's own identity.
//!
//! Pods arrive as (workload, namespace fd). In file mode the namespace comes from the
//! config's `netns` path; in a cluster the node agent sends the fd over a Unix socket
//! (see [`crate::inpod_server`]).

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ambit_core::netns::Netns;
use ambit_core::socket::inpod_listener;
use ambit_core::tls::server_config;
use serde::Serialize;
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::proxy::{
    inbound, inbound_plain, outbound, PodContext, ProxyInputs, HBONE_PORT, INBOUND_PLAINTEXT_PORT,
    OUTBOUND_PORT,
};
use crate::state::{ProxyState, Workload};

#[derive(Debug, thiserror::Error)]
pub enum InpodError {
    #[error("pod {uid}: {source}")]
    Netns { uid: String, source: std::io::Error },
    #[error("pod {uid}: certificate for {identity}: {source}")]
    Cert {
        uid: String,
        identity: String,
        source: ambit_core::certs::CertError,
    },
    #[error("pod {uid}: opening listeners in its network namespace: {source} (ztunnel needs CAP_SYS_ADMIN to enter pod namespaces, and nothing else may hold ports 15001/15006/15008 there)")]
    Listen { uid: String, source: std::io::Error },
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    pub uid: String,
    pub ip: std::net::IpAddr,
    pub identity: String,
    pub netns_inode: u64,
    pub listeners: Vec<u16>,
}

struct RunningPod {
    ctx: Arc<PodContext>,
    source: Option<std::path::PathBuf>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for RunningPod {
    fn drop(&mut self) {
        // Stops accepting; connections already open finish on their own tasks.
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub struct InpodManager {
    inputs: Arc<ProxyInputs>,
    pods: HashMap<String, RunningPod>,
    failures: Arc<RwLock<BTreeMap<String, String>>>,
    status: Arc<RwLock<Vec<PodStatus>>>,
    ready: Arc<AtomicBool>,
}

impl InpodManager {
    pub fn new(inputs: Arc<ProxyInputs>) -> Self {
        Self {
            inputs,
            pods: HashMap::new(),
            failures: Arc::default(),
            status: Arc::default(),
            ready: Arc::default(),
        }
    }

    /// Live view of served pods, for the admin endpoint.
    pub fn status(&self) -> Arc<RwLock<Vec<PodStatus>>> {
        self.status.clone()
    }
    /// Pods that should be captured but could not be, with why (retried every 2 s).
    pub fn failures(&self) -> Arc<RwLock<BTreeMap<String, String>>> {
        self.failures.clone()
    }
    /// True once the first reconcile has finished.
    pub fn ready(&self) -> Arc<AtomicBool> {
        self.ready.clone()
    }

    fn publish(&self) {
        let mut pods: Vec<PodStatus> = self
            .pods
            .values()
            .map(|p| PodStatus {
                uid: p.ctx.uid.clone(),
                ip: p.ctx.ip,
                identity: p.ctx.identity.to_string(),
                netns_inode: p.ctx.netns.inode(),
                listeners: vec![OUTBOUND_PORT, INBOUND_PLAINTEXT_PORT, HBONE_PORT],
            })
            .collect();
        pods.sort_by(|a, b| a.uid.cmp(&b.uid));
        self.inputs.metrics.captured_pods.set(pods.len() as i64);
        *self.status.write().expect("status lock poisoned") = pods;
    }

    /// Starts serving a pod. Idempotent for the same pod, namespace and identity.
    pub async fn add_pod(&mut self, w: &Workload, netns: Netns) -> Result<(), InpodError> {
        if let Some(p) = self.pods.get(&w.uid) {
            if p.ctx.ip == w.ip
                && p.ctx.identity == w.identity
                && p.ctx.netns.inode() == netns.inode()
            {
                return Ok(());
            }
            // Wait for the old listeners to close: the new ones may bind the same ports in
            // the same namespace.
            self.remove_pod_wait(&w.uid).await;
        }
        let uid = w.uid.clone();
        let cert = self
            .inputs
            .certs
            .slot(&w.identity)
            .await
            .map_err(|source| InpodError::Cert {
                uid: uid.clone(),
                identity: w.identity.to_string(),
                source,
            })?;
        let any = |port| SocketAddr::from(([0, 0, 0, 0], port));
        let listeners = netns
            .run(|| -> std::io::Result<_> {
                Ok((
                    inpod_listener(any(OUTBOUND_PORT))?,
                    inpod_listener(any(INBOUND_PLAINTEXT_PORT))?,
                    inpod_listener(any(HBONE_PORT))?,
                ))
            })
            .and_then(|r| r)
            .map_err(|source| InpodError::Listen {
                uid: uid.clone(),
                source,
            })?;
        let ctx = Arc::new(PodContext {
            uid: uid.clone(),
            ip: w.ip,
            identity: w.identity.clone(),
            netns,
            server_tls: server_config(cert.clone()),
            cert,
        });
        let (out, plain, hbone) = listeners;
        let inputs = &self.inputs;
        let tasks = vec![
            tokio::spawn(outbound::serve(out, ctx.clone(), inputs.clone())),
            tokio::spawn(inbound_plain::serve(plain, ctx.clone(), inputs.clone())),
            tokio::spawn(inbound::serve(hbone, ctx.clone(), inputs.clone())),
        ];
        info!(pod = %uid, ip = %w.ip, identity = %w.identity, "pod captured: listeners open in its namespace");
        self.pods.insert(
            uid,
            RunningPod {
                ctx,
                source: w.netns.clone(),
                tasks,
            },
        );
        self.publish();
        Ok(())
    }

    pub fn remove_pod(&mut self, uid: &str) -> bool {
        let removed = self.pods.remove(uid).is_some();
        if removed {
            info!(pod = %uid, "pod released: listeners closed");
            self.publish();
        }
        removed
    }

    /// Like [`Self::remove_pod`], but returns only once the pod's listeners are closed.
    pub async fn remove_pod_wait(&mut self, uid: &str) -> bool {
        let Some(mut pod) = self.pods.remove(uid) else {
            return false;
        };
        let tasks = std::mem::take(&mut pod.tasks);
        drop(pod);
        for t in tasks {
            t.abort();
            // The accept loop owns the listener; once the task is gone, so is the socket.
            let _ = t.await;
        }
        info!(pod = %uid, "pod released: listeners closed");
        self.publish();
        true
    }

    pub fn inputs(&self) -> &Arc<ProxyInputs> {
        &self.inputs
    }

    /// Uids of the pods served now.
    pub fn pod_uids(&self) -> Vec<String> {
        self.pods.keys().cloned().collect()
    }

    /// Marks the manager ready without a file-mode reconcile (node-agent mode: ready once
    /// the agent socket listens; pods arrive later).
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Release);
    }

    /// File mode: serve exactly the captured local workloads that name a namespace.
    pub async fn reconcile(&mut self, state: &ProxyState) {
        let node = self.inputs.node.clone();
        let mut failures = BTreeMap::new();
        let desired: HashMap<&str, &Arc<Workload>> = state
            .local_workloads(&node)
            .filter(|w| {
                if w.netns.is_none() {
                    failures.insert(
                        w.uid.clone(),
                        "no `netns` in the config: in file mode every captured pod on this node needs its namespace path".to_string(),
                    );
                }
                w.netns.is_some()
            })
            .map(|w| (w.uid.as_str(), w))
            .collect();
        let stale: Vec<String> = self
            .pods
            .iter()
            // Pods handed over by the node agent (no path) are not file mode's to release.
            .filter(|(_, p)| p.source.is_some())
            .filter(|(uid, p)| match desired.get(uid.as_str()) {
                None => true,
                Some(w) => w.ip != p.ctx.ip || w.identity != p.ctx.identity || w.netns != p.source,
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in stale {
            self.remove_pod(&uid);
        }
        for (uid, w) in desired {
            if self.pods.contains_key(uid) {
                continue;
            }
            let path = w.netns.as_ref().expect("filtered above");
            let result = match Netns::open(path) {
                Ok(ns) => self.add_pod(w, ns).await,
                Err(source) => Err(InpodError::Netns {
                    uid: uid.to_string(),
                    source,
                }),
            };
            if let Err(e) = result {
                self.inputs.metrics.fail("node", "pod_capture_failed");
                failures.insert(uid.to_string(), e.to_string());
            }
        }
        for (uid, why) in &failures {
            if self
                .failures
                .read()
                .expect("failures lock poisoned")
                .get(uid)
                != Some(why)
            {
                error!(pod = %uid, error = %why, "pod cannot be captured");
            }
        }
        *self.failures.write().expect("failures lock poisoned") = failures;
        self.ready.store(true, Ordering::Release);
    }

    /// Drives file-mode reconciliation: on every config change, and every few seconds while
    /// some pod failed to be captured.
    pub async fn run_file_mode(mut self) {
        let mut rx = self.inputs.state.clone();
        loop {
            let state = rx.borrow_and_update().clone();
            self.reconcile(&state).await;
            let retry = !self
                .failures
                .read()
                .expect("failures lock poisoned")
                .is_empty();
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep(Duration::from_secs(2)), if retry => {}
            }
        }
    }
}
