//! Phase 2 of the control-plane benchmark: from an API write to every node's proxy having
//! applied (and ACKed) a config with the change, through the real operator.
//!
//! The in-memory API server runs in this process and is filled straight through its store;
//! the operator is a child process ([`crate::cp_operator`]) whose RSS is sampled from /proc;
//! one config-stream client (core's `ConfigStream`, what ztunnel runs) per node subscribes
//! with a pod-bound ServiceAccount token that the operator checks with a TokenReview.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_apisim::{ApiServer, ApiServerConfig, ApiServerHandle};
use ambit_core::control::proto::Target;
use ambit_core::control::{operator_identity, ConfigStream, Endpoint, StreamOptions};
use ambit_core::meshconfig::MeshConfig;
use ambit_operator::crd::AuthorizationPolicy;
use anyhow::{bail, ensure, Context};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

use crate::cp_compile::CHANGE_LABEL;
use crate::cp_objects::{authorization_policy, Objects, Size};
use crate::cp_operator::OperatorProcess;
use crate::procstat;

const NS: &str = "ambit-system";
/// How long one change may take to reach every proxy before it counts as not propagated.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between changes, so each one is measured on its own (the status write that follows
/// a new policy triggers one more, no-op, recompile).
const BETWEEN_CHANGES: Duration = Duration::from_millis(250);

/// One API change and how a proxy recognises it in its config.
#[derive(Clone, Debug)]
enum Change {
    /// A pod's label set to a new value.
    PodLabel {
        namespace: String,
        pod: String,
        value: String,
    },
    /// A new AuthorizationPolicy.
    Policy { namespace: String, name: String },
}

impl Change {
    fn nth(k: usize, size: Size) -> Change {
        if k.is_multiple_of(2) {
            let i = (k * 7919 + 13) % size.pods;
            Change::PodLabel {
                namespace: size.pod_namespace(i),
                pod: Size::pod_name(i),
                value: format!("c{k}"),
            }
        } else {
            Change::Policy {
                namespace: size.pod_namespace(k % size.services),
                name: format!("bench-change-{k}"),
            }
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Change::PodLabel { .. } => "pod_label",
            Change::Policy { .. } => "authorization_policy",
        }
    }

    fn present(&self, cfg: &MeshConfig) -> bool {
        match self {
            Change::PodLabel {
                namespace,
                pod,
                value,
            } => cfg.workloads.iter().any(|w| {
                &w.name == pod
                    && &w.namespace == namespace
                    && w.labels.get(CHANGE_LABEL) == Some(value)
            }),
            Change::Policy { namespace, name } => cfg
                .policies
                .iter()
                .any(|p| &p.name == name && &p.namespace == namespace),
        }
    }

    async fn apply(&self, client: &kube::Client, size: Size, k: usize) -> anyhow::Result<()> {
        match self {
            Change::PodLabel {
                namespace,
                pod,
                value,
            } => {
                let patch = json!({"metadata": {"labels": {CHANGE_LABEL: value}}});
                Api::<Pod>::namespaced(client.clone(), namespace)
                    .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .with_context(|| format!("patching pod {namespace}/{pod}"))?;
            }
            Change::Policy { namespace, name } => {
                let obj: AuthorizationPolicy = serde_json::from_value(authorization_policy(
                    namespace,
                    name,
                    k % size.services,
                ))?;
                Api::<AuthorizationPolicy>::namespaced(client.clone(), namespace)
                    .create(&PostParams::default(), &obj)
                    .await
                    .with_context(|| format!("creating AuthorizationPolicy {namespace}/{name}"))?;
            }
        }
        Ok(())
    }
}

/// When each proxy first held each change: `seen[change][node]`.
struct Seen {
    changes: Vec<Change>,
    at: Vec<Vec<Option<Instant>>>,
}

impl Seen {
    fn record(&mut self, node: usize, cfg: &MeshConfig, now: Instant) {
        for (k, c) in self.changes.iter().enumerate() {
            if self.at[k][node].is_none() && c.present(cfg) {
                self.at[k][node] = Some(now);
            }
        }
    }
}

/// Largest RSS of the operator, sampled every 100 ms on a thread.
struct RssSampler {
    stop: Arc<AtomicBool>,
    max: Arc<Mutex<(f64, f64)>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(Mutex::new((0.0, 0.0)));
        let (s, m) = (stop.clone(), max.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok((rss, anon)) = procstat::memory_mb(pid) {
                    let mut m = m.lock().expect("rss lock");
                    m.0 = f64::max(m.0, rss);
                    m.1 = f64::max(m.1, anon);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self {
            stop,
            max,
            thread: Some(thread),
        }
    }

    fn max(&self) -> (f64, f64) {
        *self.max.lock().expect("rss lock")
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `limit`.
async fn eventually<T>(
    what: &str,
    limit: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Loads the cluster into the API server's store (CRDs first).
fn load(server: &ApiServerHandle, objs: &Objects, size: Size) -> anyhow::Result<()> {
    let store = server.store();
    for crd in ambit_operator::crd::all() {
        store
            .create(serde_json::to_value(crd)?)
            .map_err(|e| anyhow::anyhow!("registering a CRD: {e:?}"))?;
    }
    let system = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}});
    for obj in std::iter::once(&system).chain(objs.all()) {
        store
            .create(obj.clone())
            .map_err(|e| anyhow::anyhow!("loading {}: {e:?}", obj["metadata"]))?;
    }
    // The ztunnel pod of each node: what the proxies' tokens are bound to.
    for n in 0..size.nodes {
        let node = Size::node_name(n);
        let mut pod =
            crate::cp_objects::pod(NS, &format!("ztunnel-{node}"), 0, &node, "", "ztunnel");
        pod["metadata"]["labels"] = json!({"app": "ztunnel"});
        pod["status"] = json!({"phase": "Running"});
        store
            .create(pod)
            .map_err(|e| anyhow::anyhow!("creating the ztunnel pod of {node}: {e:?}"))?;
    }
    Ok(())
}

/// A pod-bound token for `ztunnel-<node>`, with the audience the operator reviews for.
async fn token(client: &kube::Client, node: &str) -> anyhow::Result<String> {
    let req = TokenRequest {
        spec: TokenRequestSpec {
            audiences: vec![ambit_operator::render::dataplane::TOKEN_AUDIENCE.into()],
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(format!("ztunnel-{node}")),
                uid: None,
            }),
            expiration_seconds: Some(3600),
        },
        ..Default::default()
    };
    let answer = Api::<ServiceAccount>::namespaced(client.clone(), NS)
        .create_token_request("ztunnel", &PostParams::default(), &req)
        .await
        .with_context(|| format!("TokenRequest for the ztunnel of {node}"))?;
    answer
        .status
        .map(|s| s.token)
        .context("TokenRequest answered without a token")
}

fn rss_now(pid: u32) -> anyhow::Result<Value> {
    let (rss, anon) = procstat::memory_mb(pid)?;
    Ok(json!({"rss_mb": crate::stats::round(rss, 1), "anon_mb": crate::stats::round(anon, 1)}))
}

/// Runs the propagation phase; returns its JSON.
pub async fn run(objs: &Objects, size: Size, changes: usize) -> anyhow::Result<Value> {
    let dir = std::env::temp_dir().join(format!("ambit-bench-cp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let result = run_in(objs, size, changes, &dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_in(
    objs: &Objects,
    size: Size,
    changes: usize,
    dir: &std::path::Path,
) -> anyhow::Result<Value> {
    let server = ApiServer::start_with(
        "127.0.0.1:0".parse()?,
        ApiServerConfig {
            // The operator's watches must not fall behind while it lists 10,000 pods.
            watch_buffer: 65_536,
            history_limit: 65_536,
            request_log_limit: 16,
            ..Default::default()
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("starting the in-memory API server: {e}"))?;
    load(&server, objs, size)?;
    let client = kube::Client::try_from(kube::Config::new(server.url().parse()?))?;

    let start = Instant::now();
    let mut operator = OperatorProcess::spawn(&server.url())?;
    let pid = operator.pid();
    let sampler = RssSampler::start(pid);
    let store = server.store();
    let root = eventually(
        "the operator's root certificate ConfigMap",
        CHANGE_TIMEOUT,
        || {
            store
                .get("v1", "ConfigMap", Some(NS), "ambit-ca-root-cert")?
                .pointer("/data/root-cert.pem")?
                .as_str()
                .map(String::from)
        },
    )
    .await?;
    eventually("the ztunnel ServiceAccount", CHANGE_TIMEOUT, || {
        store.get("v1", "ServiceAccount", Some(NS), "ztunnel")
    })
    .await?;
    operator.check_running()?;
    std::fs::write(dir.join("root.pem"), root)?;

    // Every node's proxy subscribes and waits for its first (full) config.
    let seen = Arc::new(Mutex::new(Seen {
        changes: Vec::new(),
        at: Vec::new(),
    }));
    let mut clients = tokio::task::JoinSet::new();
    let connect_start = Instant::now();
    for n in 0..size.nodes {
        let node = Size::node_name(n);
        let token_file = dir.join(format!("token-{node}"));
        std::fs::write(&token_file, token(&client, &node).await?)?;
        let endpoint = Endpoint {
            address: operator.listen.to_string(),
            root_cert: dir.join("root.pem"),
            operator_identity: operator_identity("cluster.local")?,
            token_file,
            connect_timeout: Duration::from_secs(10),
        };
        let opts = StreamOptions::new(endpoint, Target::Node(node));
        let seen = seen.clone();
        clients.spawn(async move {
            let stream = ConfigStream::connect(opts).await;
            let mut config = stream.config.clone();
            let first = config.borrow_and_update().clone();
            let ready = (Instant::now(), first.workloads.len());
            // Keeps the stream (and its ACKs) going after the first config.
            tokio::spawn(async move {
                let _stream = stream;
                while config.changed().await.is_ok() {
                    let cfg = config.borrow_and_update().clone();
                    let now = Instant::now();
                    seen.lock().expect("seen lock").record(n, &cfg, now);
                }
            });
            ready
        });
    }
    let initial = tokio::time::timeout(Duration::from_secs(300), clients.join_all())
        .await
        .context("the proxies did not all get their first config within 300 s")?;
    let initial_sync = initial
        .iter()
        .map(|(t, _)| t.duration_since(connect_start))
        .max()
        .unwrap_or_default();
    let synced = initial
        .iter()
        .map(|(t, _)| t.duration_since(start))
        .max()
        .unwrap_or_default();
    let expected_workloads = objs.pods.len();
    ensure!(
        initial.iter().all(|(_, w)| *w == expected_workloads),
        "a proxy's first config did not hold all {expected_workloads} workloads"
    );
    operator.check_running()?;
    eprintln!(
        "  all {} proxies hold the full config after {:.1} s",
        size.nodes,
        initial_sync.as_secs_f64()
    );
    let after_initial = rss_now(pid)?;
    let cpu_before = procstat::cpu_seconds(pid)?;

    let mut samples_ns = Vec::new();
    let mut per_change = Vec::new();
    let mut propagated = 0;
    let mut missing = 0;
    let changes_start = Instant::now();
    for k in 0..changes {
        let change = Change::nth(k, size);
        {
            let mut s = seen.lock().expect("seen lock");
            s.changes.push(change.clone());
            s.at.push(vec![None; size.nodes]);
        }
        tokio::time::sleep(BETWEEN_CHANGES).await;
        let t0 = Instant::now();
        change.apply(&client, size, k).await?;
        let all = eventually("a change to reach every proxy", CHANGE_TIMEOUT, || {
            let s = seen.lock().expect("seen lock");
            s.at[k].iter().all(Option::is_some).then_some(())
        })
        .await;
        let times: Vec<u64> = {
            let s = seen.lock().expect("seen lock");
            s.at[k]
                .iter()
                .flatten()
                .map(|t| t.duration_since(t0).as_nanos() as u64)
                .collect()
        };
        if all.is_ok() {
            propagated += 1;
        }
        missing += size.nodes - times.len();
        let first = times.iter().min().copied().unwrap_or(0);
        let last = times.iter().max().copied().unwrap_or(0);
        per_change.push(json!({
            "kind": change.kind(),
            "first_proxy_ms": crate::stats::round(first as f64 / 1e6, 1),
            "last_proxy_ms": crate::stats::round(last as f64 / 1e6, 1),
            "proxies": times.len(),
        }));
        samples_ns.extend(times);
        operator.check_running()?;
    }
    let change_phase = changes_start.elapsed();
    let cpu = procstat::cpu_seconds(pid)? - cpu_before;
    let at_end = rss_now(pid)?;
    let (max_rss, max_anon) = sampler.max();
    drop(sampler);
    let pcts = crate::stats::percentiles(&mut samples_ns);
    let ms = |us: f64| crate::stats::round(us / 1e3, 1);

    Ok(json!({
        "proxies": size.nodes,
        "operator_start_to_all_synced_s": crate::stats::round(synced.as_secs_f64(), 2),
        "initial_sync_all_proxies_s": crate::stats::round(initial_sync.as_secs_f64(), 2),
        "changes": changes,
        "changes_propagated": propagated,
        "missing_samples": missing,
        "samples": samples_ns.len(),
        "latency_ms": {
            "p50": ms(pcts.p50_us), "p90": ms(pcts.p90_us), "p99": ms(pcts.p99_us), "max": ms(pcts.max_us),
        },
        "per_change": per_change,
        "operator_memory": {
            "max_rss_mb": crate::stats::round(max_rss, 1),
            "max_anon_mb": crate::stats::round(max_anon, 1),
            "after_initial_sync": after_initial,
            "at_end": at_end,
        },
        "operator_cpu_s_during_changes": crate::stats::round(cpu, 2),
        "change_phase_s": crate::stats::round(change_phase.as_secs_f64(), 1),
    }))
}
