//! Shared pieces of the node agent's Kubernetes tests: a mesh of real ztunnels in network
//! namespaces, the in-memory API server (apisim) holding the pods and namespaces, and a
//! TCP gate in front of it that can hold back or refuse the agent's connections.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ambit_apisim::{ApiServer, ApiServerHandle};
use ambit_cni::agent::kube_source;
use ambit_cni::agent::source::{ClusterFeed, ClusterSource, LiveView};
use ambit_cni::agent::{Agent, AgentOptions};
use ambit_testkit::apps::{ask_once, LineApp};
use ambit_testkit::mesh::{node_name, Mesh};
use ambit_testkit::NetNs;
use serde_json::{json, Value};

pub const MODE: &str = "ambit.dev/dataplane-mode";

/// The ztunnel binary, built next to this package's binaries by the workspace build.
pub fn ztunnel_binary() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_ambit-cni-agent")).with_file_name("ztunnel");
    assert!(
        p.exists(),
        "{} is missing: build it with `cargo build -p ambit-ztunnel` (the full test suite does)",
        p.display()
    );
    p
}

/// A mesh whose ztunnels take their pods from a node agent (namespaces arrive as fds).
pub fn agent_mesh(tag: &str, nodes: usize, pods: &[(usize, &str, &str)]) -> (Mesh, Vec<usize>) {
    let mut m = Mesh::new(tag, nodes, vec![ztunnel_binary().into()]).expect("building the mesh");
    m.omit_netns = true;
    let idx = pods
        .iter()
        .map(|(node, name, ns)| {
            m.add_pod(*node, name, ns, &format!("sa-{name}"), &[])
                .unwrap()
        })
        .collect();
    m.write_config().unwrap();
    for node in 0..nodes {
        let opts = m.agent_mode_opts(node);
        m.start_ztunnel_with(node, opts).unwrap();
    }
    (m, idx)
}

/// apisim on loopback with its own runtime (which also runs in-process agents' watches).
pub struct Api {
    // Dropped before the runtime that serves it.
    pub server: ApiServerHandle,
    pub rt: tokio::runtime::Runtime,
}

impl Api {
    pub fn start() -> Api {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = rt
            .block_on(ApiServer::start("127.0.0.1:0".parse().unwrap()))
            .expect("starting apisim");
        Api { server, rt }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Creates or replaces namespace `name` with exactly `labels`.
    pub fn namespace(&self, name: &str, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let store = self.server.store();
        let mut ns = store.get("v1", "Namespace", None, name).unwrap_or_else(
            || json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        );
        ns["metadata"]["labels"] = Value::Object(labels);
        store.upsert(ns).unwrap();
    }

    /// Creates mesh pod `i` as a pod on its node (running with its IP unless `no_ip`, as
    /// before the runtime's CNI ADD), with `labels`. Returns its uid.
    pub fn pod(&self, m: &Mesh, i: usize, labels: &[(&str, &str)], no_ip: bool) -> String {
        let p = m.pod(i);
        let labels: serde_json::Map<String, Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let status = if no_ip {
            json!({"phase": "Pending"})
        } else {
            let ip = p.pod.ip.to_string();
            json!({"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]})
        };
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": p.pod.name, "namespace": p.namespace, "labels": labels},
            "spec": {"nodeName": node_name(p.pod.node), "serviceAccountName": p.service_account,
                     "containers": [{"name": "app", "image": "app"}]},
            "status": status,
        });
        let created = self.server.store().create(pod).unwrap();
        created["metadata"]["uid"].as_str().unwrap().to_string()
    }

    /// The agent's DaemonSet `ambit-system/ambit-node-agent`, held by a finalizer so that
    /// deleting it leaves it terminating (as foreground deletion does).
    pub fn agent_daemonset(&self) {
        self.namespace("ambit-system", &[]);
        let ds = json!({
            "apiVersion": "apps/v1", "kind": "DaemonSet",
            "metadata": {"name": "ambit-node-agent", "namespace": "ambit-system",
                         "finalizers": ["ambit.dev/test-hold"]},
            "spec": {"selector": {"matchLabels": {"app": "a"}},
                     "template": {"metadata": {"labels": {"app": "a"}},
                                  "spec": {"containers": [{"name": "a", "image": "a"}]}}},
        });
        self.server.store().create(ds).unwrap();
    }

    /// Starts an in-process agent for `node` fed by a watch of this API server.
    pub fn start_agent(&self, m: &Mesh, node: usize, exclude: &[&str]) -> Agent {
        let client = self
            .rt
            .block_on(kube_source::client(Some(&self.url())))
            .unwrap();
        let live = LiveView::new();
        self.rt
            .spawn(kube_source::watch(client, node_name(node), live.clone()));
        Agent::start_fed(
            AgentOptions {
                node: node_name(node),
                cluster_state: PathBuf::new(),
                ztunnel_socket: m.inpod_socket(node),
                plugin_socket: plugin_socket(m, node),
                host_netns: m.topo.nodes[node].ns.path(),
                redirect: Default::default(),
                resync: Duration::from_millis(200),
                netns_prefix: Some(m.topo.prefix().to_string()),
            },
            ClusterFeed {
                source: ClusterSource::Live(live),
                exclude_namespaces: exclude.iter().map(|s| s.to_string()).collect(),
            },
        )
        .unwrap()
    }
}

pub fn plugin_socket(m: &Mesh, node: usize) -> PathBuf {
    m.dir.join(format!("agent-{node}.sock"))
}

/// What a gated connection does: wait, pass through, or get closed at once.
pub const HOLD: u8 = 0;
pub const PASS: u8 = 1;
pub const REFUSE: u8 = 2;

/// A TCP proxy in front of `upstream`, listening on 127.0.0.1 inside `ns`, whose new
/// connections wait while the gate is [`HOLD`] (an API server that does not answer yet),
/// pass when [`PASS`], and are closed when [`REFUSE`] (which also cuts the open ones: an
/// unreachable API server). Returns its URL and the gate.
pub fn gate(api: &Api, ns: &NetNs, upstream: SocketAddr) -> (String, Arc<AtomicU8>) {
    let gate = Arc::new(AtomicU8::new(HOLD));
    let std_listener = ns
        .run(|| std::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}", std_listener.local_addr().unwrap());
    let g = gate.clone();
    api.rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                continue;
            };
            let g = g.clone();
            tokio::spawn(async move {
                while g.load(Ordering::SeqCst) == HOLD {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if g.load(Ordering::SeqCst) == REFUSE {
                    return;
                }
                let Ok(mut up) = tokio::net::TcpStream::connect(upstream).await else {
                    return;
                };
                let refused = async {
                    while g.load(Ordering::SeqCst) != REFUSE {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                };
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut conn, &mut up) => {}
                    _ = refused => {}
                }
            });
        }
    });
    (url, gate)
}

pub fn serve(m: &Mesh, pod: usize, port: u16) -> LineApp {
    let p = &m.pod(pod).pod;
    LineApp::start(&p.ns, &p.name, port).expect("app listener")
}

/// One request from inside pod `from`; returns the echoed line.
pub fn call(m: &Mesh, from: usize, ip: IpAddr, port: u16, line: &str) -> std::io::Result<String> {
    ask_once(&m.pod(from).pod.ns, (ip, port).into(), line).map(|a| a.echo)
}

/// Retries `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Everything redirection-related in pod `i`'s namespace (nft ruleset, rules, routes).
pub fn dump(m: &Mesh, i: usize) -> String {
    ambit_cni::redirect::dump(&m.pod(i).pod.ns.path()).unwrap()
}

/// UIDs of the pods node `node`'s ztunnel serves.
pub fn served(m: &Mesh, node: usize) -> Vec<String> {
    let dump = m.admin(node, "/config_dump").unwrap();
    let mut uids: Vec<String> = dump["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["uid"].as_str().map(String::from))
        .collect();
    uids.sort();
    uids
}
