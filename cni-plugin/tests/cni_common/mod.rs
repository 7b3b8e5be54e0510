//! Shared helpers for the `ambit-cni` tests: a temp dir, a fake node agent
//! on a Unix socket, and running the real binary the way a runtime does.
#![allow(dead_code)]

use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use ambit_cni::agent_proto::{serve_one, AgentResponse, PluginRequest};
use serde_json::Value;

/// A unique directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let p = std::env::temp_dir().join(format!(
            "ambit-cni-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

type Handler = dyn Fn(&PluginRequest) -> AgentResponse + Send + Sync;

/// A node agent stand-in: serves every connection with `handler` after
/// `delay`, recording the requests.
pub struct FakeAgent {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub requests: Arc<Mutex<Vec<PluginRequest>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeAgent {
    pub fn start(
        delay: Duration,
        handler: impl Fn(&PluginRequest) -> AgentResponse + Send + Sync + 'static,
    ) -> FakeAgent {
        let dir = TempDir::new("agent");
        let socket = dir.path().join("cni-agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, stop2) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let (reqs, handler) = (reqs.clone(), handler.clone());
                // One thread per connection so a slow answer does not hold
                // up the next test call.
                std::thread::spawn(move || {
                    let _ = serve_one(&conn, |req| {
                        reqs.lock().unwrap().push(req.clone());
                        std::thread::sleep(delay);
                        handler(&req)
                    });
                });
            }
        });
        FakeAgent {
            dir,
            socket,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    pub fn answering(resp: AgentResponse) -> FakeAgent {
        FakeAgent::start(Duration::ZERO, move |_| resp.clone())
    }

    pub fn requests(&self) -> Vec<PluginRequest> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A socket path where nothing listens.
pub fn dead_socket(dir: &TempDir) -> PathBuf {
    dir.path().join("nobody-home.sock")
}

pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    /// The error result; asserts the spec's shape and a non-zero exit.
    pub fn error(&self) -> Value {
        assert_ne!(self.code, Some(0), "expected failure: {self:?}");
        let v: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("error result is not JSON ({e}): {self:?}"));
        assert!(v["cniVersion"].is_string(), "{v}");
        assert!(v["code"].is_u64(), "{v}");
        assert!(v["msg"].is_string(), "{v}");
        assert!(v["details"].is_string(), "{v}");
        v
    }
    pub fn error_code(&self) -> u64 {
        self.error()["code"].as_u64().unwrap()
    }
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Run the real binary like a runtime: a clean environment (PATH kept),
/// `env`, and `stdin`.
pub fn run_plugin(env: &[(&str, &str)], stdin: &str) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambit-cni"));
    cmd.env_clear();
    if let Some(path) = std::env::var_os("PATH") {
        cmd.env("PATH", path);
    }
    cmd.envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().unwrap();
    Run {
        code: status.code(),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: String::from_utf8(stderr).unwrap(),
    }
}

pub const CONTAINER_ID: &str = "3f6940ab5ab43bc522569d15b23f8c1bbde1d7678b080398506924fc01d72755";
pub const NETNS: &str = "/var/run/netns/cni-1c2d3e4f-0000-1111-2222-333344445555";
pub const POD_UID: &str = "8b1f2a9e-5c6d-4e7f-8a9b-0c1d2e3f4a5b";

pub fn cni_args(ns: &str, name: &str) -> String {
    format!(
        "IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};K8S_POD_INFRA_CONTAINER_ID={CONTAINER_ID};K8S_POD_UID={POD_UID}"
    )
}

/// The environment of a pod-level command (ADD/CHECK/DEL).
pub fn pod_env<'a>(command: &'a str, args: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", CONTAINER_ID),
        ("CNI_NETNS", NETNS),
        ("CNI_IFNAME", "eth0"),
        ("CNI_ARGS", args),
        ("CNI_PATH", "/opt/cni/bin"),
    ]
}

/// A realistic result from the primary plugin, in the shape of `version`
/// (0.3.x/0.4.0 carry `ips[].version`; 1.x does not). Deliberately odd
/// formatting so a re-serialization would show.
pub fn prev_result(version: &str) -> String {
    let v4_version = if version.starts_with("0.") {
        "\"version\": \"4\",  "
    } else {
        ""
    };
    let v6_version = if version.starts_with("0.") {
        "\"version\": \"6\", "
    } else {
        ""
    };
    format!(
        r#"{{
    "cniVersion": "{version}",
    "interfaces": [
      {{ "name": "cni0", "mac": "0a:58:0a:f4:00:01" }},
      {{ "name": "veth5b3c1a2e", "mac": "a2:11:5e:90:3c:7d" }},
      {{ "name": "eth0", "mac": "0a:58:0a:f4:00:07", "sandbox": "{NETNS}" }}
    ],
    "ips": [
      {{ {v4_version}"address": "10.244.0.7/24", "gateway": "10.244.0.1", "interface": 2 }},
      {{ {v6_version}"address": "fd00:10:244::7/64", "gateway": "fd00:10:244::1", "interface": 2 }}
    ],
    "routes": [ {{ "dst": "0.0.0.0/0", "gw": "10.244.0.1" }}, {{"dst":"::/0"}} ],
    "dns": {{ "nameservers": ["10.96.0.10"], "search": ["default.svc.cluster.local", "svc.cluster.local"], "options": ["ndots:5"] }},
    "unicode": "caf\u00e9 ✓", "big": 1.50e3
  }}"#
    )
}

/// The network config the runtime hands us for `version`, with
/// `extra` Ambit fields (a JSON fragment ending in a comma, or "").
pub fn net_conf(version: &str, socket: &Path, extra: &str, prev: Option<&str>) -> String {
    let prev = prev
        .map(|p| format!(",\n  \"prevResult\": {p}"))
        .unwrap_or_default();
    format!(
        r#"{{
  "cniVersion": "{version}",
  "name": "k8s-pod-network",
  "type": "ambit-cni",
  "agentSocket": "{}",
  {extra}
  "agentTimeoutMs": 500{prev}
}}"#,
        socket.display()
    )
}
