//! The waypoint benchmark's world: one node with a client pod, a waypoint pod running the real
//! waypoint (a separate process) and two backend pods (`v1`, `v2` of the `api` Service).
//!
//! Each backend pod runs core's HBONE server on 15008, standing in for the destination ztunnel,
//! in front of a small HTTP app on the pod's loopback (HTTP/1.1 on 8080, HTTP/2 on 8081) that
//! answers every request with `RESPONSE_BYTES`. The apps and HBONE servers run in the bench
//! process, each backend pod on its own OS thread with a current-thread runtime.

use std::convert::Infallible;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ambit_core::ca::CertificateAuthority;
use ambit_core::certs::{CertManager, CertSlot, LocalCa};
use ambit_core::hbone::server::{serve_tls, Accepted, Handler, HboneRequest, Reject};
use ambit_core::Identity;
use ambit_testkit::{Child, Pod, Topology};
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::load::{spawn_in_netns, RESPONSE_BYTES};

pub const NS: &str = "bench";
pub const TD: &str = "cluster.local";
/// The `api` Service's VIP; port 80 → 8080 (HTTP/1.1 app), 81 → 8081 (HTTP/2 app).
pub const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const H1_PORT: u16 = 80;
pub const H2_PORT: u16 = 81;
pub const H1_APP: u16 = 8080;
pub const H2_APP: u16 = 8081;
pub const HBONE_PORT: u16 = 15008;
/// Path the ALLOW policy admits (with POST, from the client's identity); anything else is 403.
pub const ALLOWED_PATH: &str = "/api/echo";

pub fn identity(sa: &str) -> anyhow::Result<Identity> {
    Identity::new(TD, NS, sa).with_context(|| format!("SPIFFE identity for service account {sa}"))
}

/// The route (90/10 subset split with retries) and the L7 ALLOW policy the waypoint enforces.
fn l7_config() -> Value {
    json!({
        "routes": [{
            "name": "api", "namespace": NS, "service": {"name": "api", "namespace": NS},
            "rules": [{
                "name": "canary",
                "backends": [
                    {"service": "api", "subset": {"version": "v1"}, "weight": 90},
                    {"service": "api", "subset": {"version": "v2"}, "weight": 10}
                ],
                "timeout": "5s",
                "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": ["5xx", "connect-failure", "reset"],
                            "backoff": {"baseInterval": "25ms"}}
            }]
        }],
        "policies": [{
            "name": "allow-client", "namespace": NS, "selector": {"app": "api"}, "action": "ALLOW",
            "rules": [{
                "from": [{"principals": [format!("spiffe://{TD}/ns/{NS}/sa/client")]}],
                "to": [{"methods": ["POST"], "paths": ["/api/*"]}]
            }]
        }]
    })
}

/// Requests one backend app has answered.
pub type Hits = Arc<AtomicU64>;

/// A backend pod's HBONE server and app. Dropping it stops its thread.
struct Backend {
    pod: Pod,
    sa: String,
    version: &'static str,
    hits: Hits,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

pub struct Env {
    // Field order is drop order: the waypoint process and backends go before the namespaces.
    waypoint: Option<Child>,
    backends: Vec<Backend>,
    pub client: Pod,
    pub wp: Pod,
    _topo: Topology,
    pub dir: PathBuf,
    pub client_slot: Arc<CertSlot>,
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut w) = self.waypoint.take() {
            let _ = w.stop(Duration::from_secs(5));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How to run the waypoint: re-execute this binary (`ambit-bench waypoint-proxy`) or a
/// separately built `waypoint` binary.
pub fn waypoint_command(bin: Option<&PathBuf>) -> anyhow::Result<Command> {
    Ok(match bin {
        Some(b) => Command::new(b),
        None => {
            let mut c = Command::new(std::env::current_exe().context("locating the bench binary")?);
            c.arg("waypoint-proxy");
            c
        }
    })
}

impl Env {
    /// Builds the pods, the CA and the backends, and writes the mesh config.
    pub fn build() -> anyhow::Result<Env> {
        if !ambit_testkit::is_root() {
            bail!("the waypoint benchmark builds network namespaces: run it as root");
        }
        let mut topo = Topology::new("wpbench", 1).context("building the topology")?;
        let client = topo.add_pod(0, "client")?;
        let wp = topo.add_pod(0, "waypoint")?;
        let dir = std::env::temp_dir().join(ambit_testkit::unique_prefix("wpbench"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let ca = Arc::new(CertificateAuthority::generate(
            TD,
            Duration::from_secs(86400),
        )?);
        std::fs::write(dir.join("ca.pem"), ca.root_pem())?;
        std::fs::write(dir.join("ca-key.pem"), ca.key_pem())?;
        let certs = CertManager::new(Arc::new(LocalCa {
            ca,
            leaf_ttl: Duration::from_secs(86400),
            extra_roots: vec![],
        }));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let issue = |sa: &str| -> anyhow::Result<Arc<CertSlot>> {
            let id = identity(sa)?;
            let cert = rt
                .block_on(certs.issue(&id))
                .with_context(|| format!("issuing a certificate for {id}"))?;
            Ok(CertSlot::fixed(cert))
        };
        let client_slot = issue("client")?;
        let mut backends = vec![];
        for version in ["v1", "v2"] {
            let pod = topo.add_pod(0, &format!("api-{version}"))?;
            let sa = format!("api-{version}");
            backends.push(start_backend(pod, sa.clone(), version, issue(&sa)?)?);
        }
        let env = Env {
            waypoint: None,
            backends,
            client,
            wp,
            _topo: topo,
            dir,
            client_slot,
        };
        env.write_config()?;
        Ok(env)
    }

    fn config(&self) -> Value {
        let mut workloads = vec![
            json!({"name": "client", "namespace": NS, "serviceAccount": "client",
                   "ip": self.client.ip.to_string(), "node": "node-0", "labels": {"app": "client"}}),
            json!({"name": "waypoint", "namespace": NS, "serviceAccount": "waypoint",
                   "ip": self.wp.ip.to_string(), "node": "node-0", "labels": {"app": "waypoint"}}),
        ];
        for b in &self.backends {
            workloads.push(
                json!({"name": b.pod.name, "namespace": NS, "serviceAccount": b.sa,
                "ip": b.pod.ip.to_string(), "node": "node-0",
                "labels": {"app": "api", "version": b.version}}),
            );
        }
        let mut cfg = json!({
            "trustDomain": TD,
            "workloads": workloads,
            "services": [
                {"name": "api", "namespace": NS, "vips": [VIP.to_string()],
                 "ports": [{"port": H1_PORT, "targetPort": H1_APP}, {"port": H2_PORT, "targetPort": H2_APP}],
                 "selector": {"app": "api"}, "waypoint": {"name": "waypoint", "namespace": NS}},
                {"name": "waypoint", "namespace": NS, "vips": ["10.96.0.2"],
                 "ports": [{"port": HBONE_PORT}], "selector": {"app": "waypoint"}}
            ],
        });
        for (k, v) in l7_config().as_object().expect("object") {
            cfg[k] = v.clone();
        }
        cfg
    }

    fn write_config(&self) -> anyhow::Result<()> {
        let text = serde_json::to_vec_pretty(&self.config())?;
        let path = self.dir.join("mesh.yaml");
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Starts the waypoint in its pod and waits until it is ready.
    pub fn start_waypoint(
        &mut self,
        mut cmd: Command,
        worker_threads: usize,
    ) -> anyhow::Result<u32> {
        let log = std::fs::File::create(self.dir.join("waypoint.log"))?;
        cmd.args(["--name", "waypoint", "--namespace", NS])
            .arg("--config")
            .arg(self.dir.join("mesh.yaml"))
            .arg("--ca-cert")
            .arg(self.dir.join("ca.pem"))
            .arg("--ca-key")
            .arg(self.dir.join("ca-key.pem"))
            .arg(format!("--worker-threads={worker_threads}"))
            .env(
                "RUST_LOG",
                std::env::var("AMBIT_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = self.wp.ns.spawn(cmd).context("spawning the waypoint")?;
        let pid = child.pid();
        self.waypoint = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = self.http_get(15021, "/healthz/ready") {
                return Ok(pid);
            }
            let w = self.waypoint.as_mut().expect("just set");
            if let Some(status) = w.try_wait()? {
                bail!("the waypoint exited with {status}; log:\n{}", self.log());
            }
            if Instant::now() > deadline {
                bail!(
                    "the waypoint was not ready within 20 s; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("waypoint.log")).unwrap_or_default()
    }

    /// A plain HTTP/1.0 GET from the client pod to the waypoint pod's admin ports.
    fn http_get(&self, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
        let addr = SocketAddr::from((self.wp.ip, port));
        let owned = path.to_string();
        self.client
            .ns
            .try_run(move || -> std::io::Result<(u16, String)> {
                let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                write!(s, "GET {owned} HTTP/1.0\r\nHost: x\r\n\r\n")?;
                let mut out = String::new();
                s.read_to_string(&mut out)?;
                let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
                let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_string());
                Ok((status, body.unwrap_or_default()))
            })?
            .with_context(|| format!("GET http://{addr}{path}"))
    }

    /// The waypoint's Prometheus metrics text.
    pub fn metrics(&self) -> anyhow::Result<String> {
        match self.http_get(15020, "/metrics")? {
            (200, body) => Ok(body),
            (status, _) => bail!("waypoint metrics answered {status}"),
        }
    }

    /// (pod IP, identity, request counter) of the `v1` or `v2` backend.
    pub fn backend(&self, version: &str) -> anyhow::Result<(Ipv4Addr, Identity, Hits)> {
        let b = self
            .backends
            .iter()
            .find(|b| b.version == version)
            .ok_or_else(|| anyhow!("no backend {version}"))?;
        Ok((b.pod.ip, identity(&b.sa)?, b.hits.clone()))
    }
}

/// The destination ztunnel's stand-in: every CONNECT to `<pod ip>:<port>` goes to the app on
/// the pod's loopback at that port.
#[derive(Clone)]
struct Inbound;

impl Handler for Inbound {
    async fn open(&self, req: HboneRequest) -> Result<Accepted, Reject> {
        let port = req.authority.port();
        if port != H1_APP && port != H2_APP {
            return Err(Reject {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: "no_app",
            });
        }
        let upstream = tokio::net::TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port)))
            .await
            .map_err(|_| Reject {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: "upstream_connect_failed",
            })?;
        let _ = upstream.set_nodelay(true);
        Ok(Accepted {
            upstream,
            sent: Box::new(|_| {}),
            received: Box::new(|_| {}),
            done: Box::new(|_| {}),
        })
    }
}

fn start_backend(
    pod: Pod,
    sa: String,
    version: &'static str,
    slot: Arc<CertSlot>,
) -> anyhow::Result<Backend> {
    let hits: Hits = Arc::default();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
    let counter = hits.clone();
    let thread = spawn_in_netns(&pod.ns.path(), &format!("backend-{version}"), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let listeners =
                (|| Ok::<_, std::io::Error>((bind(HBONE_PORT)?, bind(H1_APP)?, bind(H2_APP)?)))();
            let (hbone, h1, h2) = match listeners {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("backend {version} listeners: {e}")));
                    return Ok(());
                }
            };
            let _ = ready_tx.send(Ok(()));
            let tls = ambit_core::tls::server_config(slot);
            tokio::spawn(async move {
                loop {
                    let Ok((tcp, _)) = hbone.accept().await else {
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(serve_tls(tcp, tls.clone(), Inbound));
                }
            });
            tokio::spawn(serve_app(h1, false, version, counter.clone()));
            tokio::spawn(serve_app(h2, true, version, counter));
            let _ = stop_rx.await;
            Ok(())
        })
    })?;
    ready_rx
        .recv()
        .map_err(|_| anyhow!("backend {version} thread died before listening"))??;
    Ok(Backend {
        pod,
        sa,
        version,
        hits,
        stop: Some(stop_tx),
        thread: Some(thread),
    })
}

/// Reads each request's body and answers `RESPONSE_BYTES` (HTTP/1.1 keep-alive, or HTTP/2
/// with prior knowledge).
async fn serve_app(listener: tokio::net::TcpListener, h2: bool, version: &'static str, hits: Hits) {
    let body = Bytes::from(vec![b'r'; RESPONSE_BYTES]);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (body, hits) = (body.clone(), hits.clone());
        let svc = service_fn(move |req: http::Request<Incoming>| {
            let (body, hits) = (body.clone(), hits.clone());
            async move {
                let _ = req.into_body().collect().await;
                hits.fetch_add(1, Ordering::Relaxed);
                Ok::<_, Infallible>(
                    Response::builder()
                        .header("x-backend", version)
                        .body(Full::new(body))
                        .expect("static response"),
                )
            }
        });
        let io = TokioIo::new(tcp);
        tokio::spawn(async move {
            if h2 {
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(io, svc)
                    .await;
            } else {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, svc)
                    .await;
            }
        });
    }
}

fn bind(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::IPV4,
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())?;
    s.listen(4096)?;
    tokio::net::TcpListener::from_std(s.into())
}
