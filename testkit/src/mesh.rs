//! A whole mesh on one machine: a [`Topology`], a mesh CA, one ztunnel process per node
//! and pods described in the config file ztunnel reads. Used by ztunnel's end-to-end tests
//! and by the benchmarks. Dropping it stops the ztunnels, deletes the namespaces and the
//! scratch directory.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ambit_core::ca::CertificateAuthority;
use serde_json::{json, Value};

use crate::{Child, Error, Pod, Topology};

/// A pod and how the mesh config describes it.
#[derive(Debug)]
pub struct MeshPod {
    pub pod: Pod,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// Listed as captured in the config (ztunnel serves it).
    pub captured: bool,
    /// `STRICT` / `PERMISSIVE`, or the mesh default.
    pub mtls_mode: Option<String>,
    /// Listed in the config at all (false: a pod the mesh doesn't know).
    pub listed: bool,
}

/// How to start one ztunnel.
#[derive(Clone, Debug, Default)]
pub struct ZtunnelOpts {
    /// Another config file (default: the mesh's).
    pub config: Option<PathBuf>,
    /// Another CA: (cert, key, trust domain).
    pub ca: Option<(PathBuf, PathBuf, String)>,
    pub extra_args: Vec<String>,
    /// Return as soon as the process is spawned instead of waiting for readiness.
    pub no_wait: bool,
}

pub struct Mesh {
    pub topo: Topology,
    pub dir: PathBuf,
    pub pods: Vec<MeshPod>,
    pub trust_domain: String,
    pub default_mtls_mode: String,
    pub services: Vec<Value>,
    pub policies: Vec<Value>,
    /// Leave `netns` paths out of the config (node-agent mode: namespaces arrive as fds).
    pub omit_netns: bool,
    ztunnel_cmd: Vec<OsString>,
    ztunnels: Vec<Option<Child>>,
}

impl Drop for Mesh {
    fn drop(&mut self) {
        // Processes first: they hold sockets in the namespaces.
        self.ztunnels.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn node_name(i: usize) -> String {
    format!("node-{i}")
}

impl Mesh {
    /// `ztunnel_cmd`: program and leading arguments that start a ztunnel.
    pub fn new(tag: &str, nodes: usize, ztunnel_cmd: Vec<OsString>) -> Result<Mesh, Error> {
        let topo = Topology::new(tag, nodes)?;
        let dir = std::env::temp_dir().join(topo.prefix());
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::Invalid(format!("creating {}: {e}", dir.display())))?;
        let mesh = Mesh {
            topo,
            dir,
            pods: vec![],
            trust_domain: "cluster.local".into(),
            default_mtls_mode: "PERMISSIVE".into(),
            services: vec![],
            policies: vec![],
            omit_netns: false,
            ztunnel_cmd,
            ztunnels: (0..nodes).map(|_| None).collect(),
        };
        mesh.write_ca("ca", "cluster.local")?;
        Ok(mesh)
    }

    /// Writes a new CA as `<name>.pem` / `<name>-key.pem` in the scratch dir.
    pub fn write_ca(&self, name: &str, trust_domain: &str) -> Result<(PathBuf, PathBuf), Error> {
        let ca = CertificateAuthority::generate(trust_domain, Duration::from_secs(24 * 3600))
            .map_err(|e| Error::Invalid(format!("generating CA: {e}")))?;
        let cert = self.dir.join(format!("{name}.pem"));
        let key = self.dir.join(format!("{name}-key.pem"));
        write(&cert, &ca.root_pem())?;
        write(&key, &ca.key_pem())?;
        Ok((cert, key))
    }

    /// Adds a captured pod; returns its index.
    pub fn add_pod(
        &mut self,
        node: usize,
        name: &str,
        namespace: &str,
        service_account: &str,
        labels: &[(&str, &str)],
    ) -> Result<usize, Error> {
        let pod = self.topo.add_pod(node, name)?;
        self.pods.push(MeshPod {
            pod,
            namespace: namespace.into(),
            service_account: service_account.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            captured: true,
            mtls_mode: None,
            listed: true,
        });
        Ok(self.pods.len() - 1)
    }

    pub fn pod(&self, i: usize) -> &MeshPod {
        &self.pods[i]
    }
    pub fn ip(&self, i: usize) -> Ipv4Addr {
        self.pods[i].pod.ip
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.join("mesh.yaml")
    }

    /// The config every ztunnel reads (JSON, which is YAML).
    pub fn config(&self, trust_domain: &str) -> Value {
        let workloads: Vec<Value> = self
            .pods
            .iter()
            .filter(|p| p.listed)
            .map(|p| {
                let mut w = json!({
                    "name": p.pod.name,
                    "namespace": p.namespace,
                    "serviceAccount": p.service_account,
                    "ip": p.pod.ip.to_string(),
                    "node": node_name(p.pod.node),
                    "netns": p.pod.ns.path(),
                    "labels": p.labels,
                    "captured": p.captured,
                });
                if self.omit_netns {
                    w.as_object_mut().expect("object").remove("netns");
                }
                if let Some(mode) = &p.mtls_mode {
                    w["mtlsMode"] = json!(mode);
                }
                w
            })
            .collect();
        json!({
            "trustDomain": trust_domain,
            "defaultMtlsMode": self.default_mtls_mode,
            "workloads": workloads,
            "services": self.services,
            "policies": self.policies,
        })
    }

    /// (Re)writes the config atomically, so a reloading ztunnel never reads half a file.
    pub fn write_config(&self) -> Result<(), Error> {
        self.write_config_to(&self.config_path(), &self.trust_domain.clone())
    }

    pub fn write_config_to(&self, path: &Path, trust_domain: &str) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(&self.config(trust_domain)).expect("JSON");
        let tmp = path.with_extension("tmp");
        write(&tmp, &text)?;
        std::fs::rename(&tmp, path).map_err(|e| Error::Invalid(format!("renaming config: {e}")))
    }

    /// Installs the in-pod redirection rules (what the node agent does on enrollment).
    pub fn enroll(&self, i: usize) -> Result<(), Error> {
        ambit_cni::redirect::apply(&self.pods[i].pod.ns.path(), &Default::default())
            .map_err(|e| Error::Invalid(e.to_string()))
    }

    pub fn unenroll(&self, i: usize) -> Result<(), Error> {
        ambit_cni::redirect::remove(&self.pods[i].pod.ns.path(), &Default::default())
            .map_err(|e| Error::Invalid(e.to_string()))
    }

    /// Where node `node`'s ztunnel listens for the node agent in node-agent mode.
    pub fn inpod_socket(&self, node: usize) -> PathBuf {
        self.dir.join(format!("agent-{node}")).join("ztunnel.sock")
    }

    /// Options that start node `node`'s ztunnel in node-agent mode.
    pub fn agent_mode_opts(&self, node: usize) -> ZtunnelOpts {
        ZtunnelOpts {
            extra_args: vec![
                "--inpod-socket".into(),
                self.inpod_socket(node).to_string_lossy().into_owned(),
            ],
            ..Default::default()
        }
    }

    /// What the node agent would tell ztunnel about pod `i` (uid as the config's default).
    pub fn pod_info(&self, i: usize) -> ambit_core::inpod_proto::PodInfo {
        let p = &self.pods[i];
        ambit_core::inpod_proto::PodInfo {
            uid: format!("{}/{}", p.namespace, p.pod.name),
            name: p.pod.name.clone(),
            namespace: p.namespace.clone(),
            service_account: p.service_account.clone(),
            ips: vec![p.pod.ip.into()],
        }
    }

    pub fn start_ztunnel(&mut self, node: usize) -> Result<(), Error> {
        self.start_ztunnel_with(node, ZtunnelOpts::default())
    }

    pub fn start_ztunnel_with(&mut self, node: usize, opts: ZtunnelOpts) -> Result<(), Error> {
        if !self.config_path().exists() {
            self.write_config()?;
        }
        let (ca_cert, ca_key, td) = opts.ca.unwrap_or_else(|| {
            (
                self.dir.join("ca.pem"),
                self.dir.join("ca-key.pem"),
                self.trust_domain.clone(),
            )
        });
        let log = self.log_path(node);
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::Invalid(format!("opening {}: {e}", log.display())))?;
        let mut cmd = Command::new(&self.ztunnel_cmd[0]);
        cmd.args(&self.ztunnel_cmd[1..])
            .arg("--node")
            .arg(node_name(node))
            .arg("--config")
            .arg(opts.config.unwrap_or_else(|| self.config_path()))
            .arg("--ca-cert")
            .arg(ca_cert)
            .arg("--ca-key")
            .arg(ca_key)
            .arg("--trust-domain")
            .arg(td)
            .arg("--reload-interval")
            .arg("100ms")
            .args(&opts.extra_args)
            .env(
                "RUST_LOG",
                std::env::var("AMBIT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| Error::Invalid(e.to_string()))?)
            .stderr(out);
        let child = self.topo.nodes[node].ns.spawn(cmd)?;
        self.ztunnels[node] = Some(child);
        if opts.no_wait {
            return Ok(());
        }
        self.wait_ready(node, Duration::from_secs(20))
    }

    pub fn stop_ztunnel(&mut self, node: usize) {
        self.ztunnels[node] = None;
    }

    /// The ztunnel's exit status, if it has exited.
    pub fn ztunnel_exited(&mut self, node: usize) -> Option<std::process::ExitStatus> {
        self.ztunnels[node]
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The readiness endpoint's (status, body).
    pub fn readiness(&self, node: usize) -> Result<(u16, String), Error> {
        self.http_get(
            node,
            SocketAddr::from((self.topo.nodes[node].ip, 15021)),
            "/healthz/ready",
        )
    }

    /// Prepares CNI ADD of pod `i` for `command` (the plugin binary, or a binary that
    /// re-executes itself as the plugin), chained after a primary CNI whose result it passes on.
    pub fn cni_add(
        &self,
        i: usize,
        mut command: Command,
        agent_socket: &Path,
        failure_policy: &str,
    ) -> CniAdd {
        let p = &self.pods[i];
        let prev_result = format!(
            r#"{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"{}"}}],"ips":[{{"address":"{}/24","interface":0}}]}}"#,
            p.pod.ns.path().display(),
            p.pod.ip
        );
        let stdin = format!(
            r#"{{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"ambit-cni","agentSocket":"{}","failurePolicy":"{failure_policy}","agentTimeoutMs":5000,"prevResult":{prev_result}}}"#,
            agent_socket.display()
        );
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", format!("ctr-{}", p.pod.name))
            .env("CNI_NETNS", p.pod.ns.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/opt/cni/bin")
            .env(
                "CNI_ARGS",
                format!(
                    "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={}",
                    p.namespace, p.pod.name
                ),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        CniAdd {
            command,
            stdin,
            prev_result,
        }
    }

    pub fn ztunnel_pid(&self, node: usize) -> Option<u32> {
        self.ztunnels[node].as_ref().map(|c| c.pid())
    }

    pub fn log_path(&self, node: usize) -> PathBuf {
        self.dir.join(format!("ztunnel-{node}.log"))
    }

    pub fn log(&self, node: usize) -> String {
        std::fs::read_to_string(self.log_path(node)).unwrap_or_default()
    }

    /// Polls the readiness endpoint until it answers 200.
    pub fn wait_ready(&mut self, node: usize, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        let addr = SocketAddr::from((self.topo.nodes[node].ip, 15021));
        loop {
            if let Some(child) = self.ztunnels[node].as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(Error::Invalid(format!(
                        "ztunnel on node {node} exited with {status}; log:\n{}",
                        self.log(node)
                    )));
                }
            }
            if let Ok((200, _)) = self.http_get(node, addr, "/healthz/ready") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Invalid(format!(
                    "ztunnel on node {node} not ready after {timeout:?}; log:\n{}",
                    self.log(node)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A minimal HTTP/1.0 GET from inside a node's namespace: (status, body).
    pub fn http_get(
        &self,
        node: usize,
        addr: SocketAddr,
        path: &str,
    ) -> Result<(u16, String), Error> {
        let io = |e: std::io::Error| Error::Invalid(format!("GET http://{addr}{path}: {e}"));
        self.topo.nodes[node]
            .ns
            .run(|| -> Result<(u16, String), Error> {
                let mut s =
                    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(io)?;
                s.set_read_timeout(Some(Duration::from_secs(5)))
                    .map_err(io)?;
                write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(io)?;
                let mut resp = String::new();
                s.read_to_string(&mut resp).map_err(io)?;
                let status = resp
                    .split_whitespace()
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .ok_or_else(|| Error::Invalid(format!("bad HTTP response: {resp:?}")))?;
                let body = resp
                    .split_once("\r\n\r\n")
                    .map(|(_, b)| b.to_string())
                    .unwrap_or_default();
                Ok((status, body))
            })
    }

    /// The node's ztunnel metrics (Prometheus text).
    pub fn metrics(&self, node: usize) -> String {
        let addr = SocketAddr::from((self.topo.nodes[node].ip, 15020));
        self.http_get(node, addr, "/metrics")
            .map(|(_, b)| b)
            .unwrap_or_default()
    }

    /// An admin endpoint (localhost:15000 inside the node namespace).
    pub fn admin(&self, node: usize, path: &str) -> Result<Value, Error> {
        let (status, body) = self.http_get(node, "127.0.0.1:15000".parse().unwrap(), path)?;
        if status != 200 {
            return Err(Error::Invalid(format!(
                "admin {path}: HTTP {status}: {body}"
            )));
        }
        serde_json::from_str(&body).map_err(|e| Error::Invalid(format!("admin {path}: {e}")))
    }
}

/// A CNI ADD for one pod, prepared exactly as a container runtime performs it.
pub struct CniAdd {
    /// The plugin with only the `CNI_*` environment (and PATH), stdio piped.
    pub command: Command,
    /// The network config to write to the plugin's stdin.
    pub stdin: String,
    /// The primary CNI's result inside it, which the plugin must print unchanged.
    pub prev_result: String,
}

/// Sum of a metric's samples whose label set contains every `labels` pair.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn write(path: &Path, text: &str) -> Result<(), Error> {
    std::fs::write(path, text)
        .map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))
}
