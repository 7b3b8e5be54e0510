//! Where the proxies are: the sandbox state file, explicit flags, or (in a cluster) the
//! Kubernetes API's pod proxy.
//!
//! # Sandbox state file
//!
//! `ambitctl local up` writes it; every other command reads it. Default path
//! `/run/ambit-sandbox/state.json`, overridden by `--sandbox-state PATH` or
//! `AMBIT_SANDBOX_STATE`. JSON, camelCase:
//!
//! ```json
//! {
//!   "apiServer": "http://127.0.0.1:6443",
//!   "nodes": [
//!     { "name": "node-1", "ztunnelAdmin": "127.0.0.1:15000",
//!       "ztunnelMetrics": "10.20.0.1:15020", "netns": "ambit-sb-node-1" }
//!   ],
//!   "waypoints": [
//!     { "name": "wp", "namespace": "bookinfo", "admin": "127.0.0.1:15000",
//!       "metrics": "10.20.5.3:15020", "netns": "ambit-sb-wp" }
//!   ]
//! }
//! ```
//!
//! `netns` is a name under `/var/run/netns/` or an absolute path (`/proc/PID/ns/net`); when
//! set, ambitctl connects from inside that namespace (the admin port listens on 127.0.0.1
//! there). Every field but `name`/`namespace` and the admin address is optional; unknown
//! fields are ignored so newer sandboxes stay readable.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{usage, CliError, Result};
use crate::http_get;

pub const DEFAULT_STATE_PATH: &str = "/run/ambit-sandbox/state.json";
/// Namespace of the ztunnel DaemonSet in a cluster.
pub const SYSTEM_NAMESPACE: &str = "ambit-system";
/// Label selecting ztunnel pods (set by the operator's DaemonSet).
pub const ZTUNNEL_SELECTOR: &str = "app=ztunnel";
/// Label naming a waypoint pod's Waypoint (set by the operator).
pub const WAYPOINT_LABEL: &str = "ambit.dev/waypoint";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SandboxState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_server: Option<String>,
    #[serde(default)]
    pub nodes: Vec<NodeEntry>,
    #[serde(default)]
    pub waypoints: Vec<WaypointEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeEntry {
    pub name: String,
    pub ztunnel_admin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ztunnel_metrics: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WaypointEntry {
    pub name: String,
    pub namespace: String,
    pub admin: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

impl SandboxState {
    /// Reads the state file. `explicit`: the user named the path, so a missing file is an
    /// error; the default path missing just means "no sandbox".
    pub fn load(path: &Path, explicit: bool) -> Result<Option<SandboxState>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit => return Ok(None),
            Err(e) => {
                return Err(usage(format!(
                    "reading sandbox state {}: {e}; start the sandbox with `ambitctl local up` or fix --sandbox-state",
                    path.display()
                )))
            }
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            usage(format!(
                "sandbox state {} is not valid: {e}; see `ambitctl --help` for the format",
                path.display()
            ))
        })
    }
}

/// How to reach one HTTP endpoint of a proxy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A plain address, optionally from inside a network namespace.
    Direct {
        addr: String,
        netns: Option<PathBuf>,
    },
    /// Through the API server: `/api/v1/namespaces/NS/pods/POD:PORT/proxy/...`.
    PodProxy {
        namespace: String,
        pod: String,
        port: u16,
    },
}

impl Endpoint {
    pub fn direct(addr: &str, netns: Option<&str>) -> Self {
        Endpoint::Direct {
            addr: addr.to_string(),
            netns: netns.map(netns_path),
        }
    }

    /// The API path that proxies `path` to this pod's port.
    pub fn pod_proxy_path(namespace: &str, pod: &str, port: u16, path: &str) -> String {
        format!(
            "/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy/{}",
            path.trim_start_matches('/')
        )
    }

    pub fn describe(&self) -> String {
        match self {
            Endpoint::Direct { addr, netns: None } => addr.clone(),
            Endpoint::Direct {
                addr,
                netns: Some(ns),
            } => format!("{addr} in netns {}", ns.display()),
            Endpoint::PodProxy {
                namespace,
                pod,
                port,
            } => format!("pod {namespace}/{pod}:{port} via the API server"),
        }
    }
}

/// `NAME` → `/var/run/netns/NAME`; absolute paths stay as they are.
pub fn netns_path(s: &str) -> PathBuf {
    if s.starts_with('/') {
        PathBuf::from(s)
    } else {
        Path::new("/var/run/netns").join(s)
    }
}

/// One ztunnel to talk to.
#[derive(Clone, Debug)]
pub struct NodeTarget {
    pub name: String,
    pub admin: Endpoint,
    pub metrics: Option<Endpoint>,
}

/// One waypoint to talk to.
#[derive(Clone, Debug)]
pub struct WaypointTarget {
    pub namespace: String,
    pub name: String,
    pub admin: Endpoint,
    pub metrics: Option<Endpoint>,
}

/// Every proxy a command may talk to.
#[derive(Clone, Debug, Default)]
pub struct Targets {
    pub nodes: Vec<NodeTarget>,
    pub waypoints: Vec<WaypointTarget>,
    /// Extra metrics endpoints from `--metrics ADDR` (for `top`).
    pub extra_metrics: Vec<Endpoint>,
}

/// Splits `KEY=VALUE` flags.
pub fn parse_pair(s: &str) -> std::result::Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("expected NAME=ADDR, got {s:?}"))
}

impl Targets {
    pub fn from_state(state: &SandboxState) -> Self {
        let nodes = state
            .nodes
            .iter()
            .map(|n| NodeTarget {
                name: n.name.clone(),
                admin: Endpoint::direct(&n.ztunnel_admin, n.netns.as_deref()),
                metrics: n
                    .ztunnel_metrics
                    .as_deref()
                    .map(|m| Endpoint::direct(m, n.netns.as_deref())),
            })
            .collect();
        let waypoints = state
            .waypoints
            .iter()
            .map(|w| WaypointTarget {
                namespace: w.namespace.clone(),
                name: w.name.clone(),
                admin: Endpoint::direct(&w.admin, w.netns.as_deref()),
                metrics: w
                    .metrics
                    .as_deref()
                    .map(|m| Endpoint::direct(m, w.netns.as_deref())),
            })
            .collect();
        Targets {
            nodes,
            waypoints,
            extra_metrics: vec![],
        }
    }

    /// Adds `--ztunnel-admin NODE=ADDR` flags (overriding a state-file node of that name).
    pub fn add_flag_nodes(&mut self, pairs: &[(String, String)]) {
        for (node, addr) in pairs {
            self.nodes.retain(|n| &n.name != node);
            self.nodes.push(NodeTarget {
                name: node.clone(),
                admin: Endpoint::direct(addr, None),
                metrics: None,
            });
        }
    }

    pub fn node(&self, name: &str) -> Result<&NodeTarget> {
        self.nodes.iter().find(|n| n.name == name).ok_or_else(|| {
            let known: Vec<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
            usage(format!("no node {name:?}; known nodes: {known:?}"))
        })
    }

    pub fn waypoint(&self, ns_name: &str) -> Result<&WaypointTarget> {
        let (ns, name) = ns_name
            .split_once('/')
            .ok_or_else(|| usage(format!("expected NAMESPACE/NAME, got {ns_name:?}")))?;
        self.waypoints
            .iter()
            .find(|w| w.namespace == ns && w.name == name)
            .ok_or_else(|| {
                let known: Vec<String> = self
                    .waypoints
                    .iter()
                    .map(|w| format!("{}/{}", w.namespace, w.name))
                    .collect();
                usage(format!(
                    "no waypoint {ns_name:?}; known waypoints: {known:?}"
                ))
            })
    }
}

/// Fetches `path` from `ep` (GET), returning the body of a 200 answer.
pub async fn fetch(client: Option<&kube::Client>, ep: &Endpoint, path: &str) -> Result<String> {
    match ep {
        Endpoint::Direct { addr, netns } => {
            let (addr, path2) = (addr.clone(), path.to_string());
            let run = move || http_get::get(&addr, &path2);
            let res = match netns {
                None => tokio::task::spawn_blocking(run).await,
                Some(ns) => {
                    let ns = ns.clone();
                    tokio::task::spawn_blocking(move || {
                        ambit_core::netns::run_in_thread(&ns, run)
                            .map_err(|e| http_get::GetError::Unreachable(e.to_string()))
                            .and_then(|r| r)
                    })
                    .await
                }
            }
            .map_err(|e| CliError::Failed(format!("fetch task failed: {e}")))?;
            res.map_err(|e| e.into_cli(&ep.describe(), path))
        }
        Endpoint::PodProxy {
            namespace,
            pod,
            port,
        } => {
            let client = client.ok_or_else(|| {
                CliError::Unreachable(format!(
                    "{} needs the API server, and none is configured",
                    ep.describe()
                ))
            })?;
            let req = http::Request::get(Endpoint::pod_proxy_path(namespace, pod, *port, path))
                .body(Vec::new())
                .map_err(|e| CliError::Failed(format!("building request: {e}")))?;
            client.request_text(req).await.map_err(|e| {
                crate::error::from_kube(&format!("GET {path} from {}", ep.describe()), e)
            })
        }
    }
}
