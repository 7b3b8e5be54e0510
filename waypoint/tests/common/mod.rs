//! Test harness: one node; a client pod, a waypoint pod running the real `waypoint` binary, and
//! backend pods whose HBONE listener (core's server, standing in for the destination ztunnel)
//! forwards to test apps. The client speaks HBONE to the waypoint with core's pooled client,
//! with its own identity from the same CA.
#![allow(dead_code)]

pub mod apps;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ambit_core::ca::CertificateAuthority;
use ambit_core::certs::{CertManager, CertSlot, LocalCa};
use ambit_core::hbone::client::{Pool, PoolConfig, PoolKey};
use ambit_core::hbone::server::{serve_tls, Accepted, Handler, HboneRequest, Reject};
use ambit_core::Identity;
use ambit_testkit::{Child, NetNs, Pod, Topology};
use ambit_waypoint::body::{self, Body};
use ambit_waypoint::io::H2Io;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};

pub const NS: &str = "shop";
pub const TD: &str = "cluster.local";
/// The VIP of the `api` Service (port 80 → target 8080).
pub const VIP: &str = "10.96.0.10:80";

pub fn id(sa: &str) -> Identity {
    Identity::new(TD, NS, sa).unwrap()
}

/// A backend pod: its HBONE listener maps pod ports to loopback apps.
pub struct BackendPod {
    pub pod: Pod,
    pub name: String,
    pub labels: Value,
    pub sa: String,
    /// `Forwarded: for=` of every tunnel the pod accepted.
    pub forwarded: Arc<Mutex<Vec<Option<SocketAddr>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for BackendPod {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(Clone)]
struct Inbound {
    apps: Arc<HashMap<u16, SocketAddr>>,
    forwarded: Arc<Mutex<Vec<Option<SocketAddr>>>>,
}

impl Handler for Inbound {
    async fn open(&self, req: HboneRequest) -> Result<Accepted, Reject> {
        self.forwarded.lock().unwrap().push(req.forwarded_for);
        let Some(app) = self.apps.get(&req.authority.port()) else {
            return Err(Reject {
                status: StatusCode::SERVICE_UNAVAILABLE,
                reason: "no_app",
            });
        };
        Accepted::connect(*app).await
    }
}

pub struct Env {
    pub topo: Topology,
    pub client: Pod,
    pub wp: Pod,
    pub backends: Vec<BackendPod>,
    pub dir: PathBuf,
    pub ca: Arc<CertificateAuthority>,
    pub certs: Arc<CertManager>,
    pub waypoint: Option<Child>,
    /// Extra top-level config (routes, policies, backendPolicies, more services).
    pub extra: Value,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.waypoint = None;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn socket_in(ns: &NetNs) -> std::io::Result<tokio::net::TcpSocket> {
    let s = ns.run(|| socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None))?;
    s.set_nonblocking(true)?;
    Ok(tokio::net::TcpSocket::from_std_stream(s.into()))
}

impl Env {
    pub async fn new(tag: &str) -> Env {
        let mut topo = Topology::new(tag, 1).expect("topology (tests need root)");
        let client = topo.add_pod(0, "client").unwrap();
        let wp = topo.add_pod(0, "waypoint").unwrap();
        let dir = std::env::temp_dir().join(ambit_testkit::unique_prefix(&format!("wp-{tag}")));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Arc::new(CertificateAuthority::generate(TD, Duration::from_secs(86400)).unwrap());
        std::fs::write(dir.join("ca.pem"), ca.root_pem()).unwrap();
        std::fs::write(dir.join("ca-key.pem"), ca.key_pem()).unwrap();
        let certs = CertManager::new(Arc::new(LocalCa {
            ca: ca.clone(),
            leaf_ttl: Duration::from_secs(3600),
            extra_roots: vec![],
        }));
        Env {
            topo,
            client,
            wp,
            backends: vec![],
            dir,
            ca,
            certs,
            waypoint: None,
            extra: json!({}),
        }
    }

    pub async fn slot(&self, sa: &str) -> Arc<CertSlot> {
        CertSlot::fixed(self.certs.issue(&id(sa)).await.unwrap())
    }

    /// Adds a backend pod with `labels`, serving `apps` (pod port → loopback app).
    pub async fn add_backend(
        &mut self,
        name: &str,
        labels: Value,
        apps: &[(u16, SocketAddr)],
    ) -> usize {
        let pod = self.topo.add_pod(0, name).unwrap();
        let sa = format!("sa-{name}");
        let slot = self.slot(&sa).await;
        let tls = ambit_core::tls::server_config(slot);
        let std_listener = pod
            .ns
            .run(|| std::net::TcpListener::bind("0.0.0.0:15008"))
            .unwrap();
        std_listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        let forwarded = Arc::new(Mutex::new(vec![]));
        let handler = Inbound {
            apps: Arc::new(apps.iter().copied().collect()),
            forwarded: forwarded.clone(),
        };
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (tls, handler) = (tls.clone(), handler.clone());
                tokio::spawn(async move {
                    let _ = serve_tls(tcp, tls, handler).await;
                });
            }
        });
        self.backends.push(BackendPod {
            pod,
            name: name.to_string(),
            labels,
            sa,
            forwarded,
            task,
        });
        self.backends.len() - 1
    }

    pub fn config(&self) -> Value {
        let mut workloads = vec![
            json!({"name": "client", "namespace": NS, "serviceAccount": "client", "ip": self.client.ip.to_string(), "node": "node-0"}),
            json!({"name": "waypoint", "namespace": NS, "serviceAccount": "waypoint", "ip": self.wp.ip.to_string(), "node": "node-0", "labels": {"app": "waypoint"}}),
        ];
        for b in &self.backends {
            workloads.push(json!({"name": b.name, "namespace": NS, "serviceAccount": b.sa, "ip": b.pod.ip.to_string(), "node": "node-0", "labels": b.labels}));
        }
        let mut cfg = json!({
            "trustDomain": TD,
            "workloads": workloads,
            "services": [
                {"name": "api", "namespace": NS, "vips": ["10.96.0.10"], "ports": [{"port": 80, "targetPort": 8080}, {"port": 9000}],
                 "selector": {"app": "api"}, "waypoint": {"name": "waypoint", "namespace": NS}},
                {"name": "mirror", "namespace": NS, "vips": ["10.96.0.11"], "ports": [{"port": 80, "targetPort": 8080}],
                 "selector": {"app": "mirror"}},
                {"name": "waypoint", "namespace": NS, "vips": ["10.96.0.2"], "ports": [{"port": 15008}], "selector": {"app": "waypoint"}}
            ],
        });
        for (k, v) in self.extra.as_object().unwrap() {
            cfg[k] = v.clone();
        }
        cfg
    }

    pub fn write_config(&self) {
        let path = self.dir.join("mesh.yaml");
        let tmp = self.dir.join("mesh.yaml.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&self.config()).unwrap()).unwrap();
        // Rename so the waypoint never reads a half-written file.
        std::fs::rename(tmp, path).unwrap();
    }

    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("access.log")).unwrap_or_default()
    }

    pub fn waypoint_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("waypoint.log")).unwrap_or_default()
    }

    pub fn start_waypoint(&mut self, extra_args: &[&str]) {
        self.write_config();
        let out = std::fs::File::create(self.dir.join("access.log")).unwrap();
        let err = std::fs::File::create(self.dir.join("waypoint.log")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_waypoint"));
        cmd.args([
            "--name",
            "waypoint",
            "--namespace",
            NS,
            "--reload-interval",
            "100ms",
            "--access-log",
        ])
        .arg("--config")
        .arg(self.dir.join("mesh.yaml"))
        .arg("--ca-cert")
        .arg(self.dir.join("ca.pem"))
        .arg("--ca-key")
        .arg(self.dir.join("ca-key.pem"))
        .args(extra_args)
        .env(
            "RUST_LOG",
            std::env::var("AMBIT_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
        self.waypoint = Some(self.wp.ns.spawn(cmd).unwrap());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = self.http_get(15021, "/healthz/ready") {
                return;
            }
            if let Some(status) = self.waypoint.as_mut().unwrap().try_wait().unwrap() {
                panic!("waypoint exited with {status}:\n{}", self.waypoint_log());
            }
            assert!(
                Instant::now() < deadline,
                "waypoint not ready:\n{}",
                self.waypoint_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A plain HTTP/1.0 GET to the waypoint pod from the client pod (metrics, readiness).
    pub fn http_get(&self, port: u16, path: &str) -> std::io::Result<(u16, String)> {
        let addr = SocketAddr::new(IpAddr::V4(self.wp.ip), port);
        let path = path.to_string();
        self.client.ns.run(move || {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
            let body = out
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_string())
                .unwrap_or_default();
            Ok((status, body))
        })
    }

    pub fn metrics(&self) -> String {
        self.http_get(15020, "/metrics").unwrap().1
    }

    pub async fn client(&self, sa: &str) -> Client {
        Client {
            pool: Pool::new(PoolConfig::default()),
            slot: self.slot(sa).await,
            ns: self.client.ns.path(),
            src: SocketAddr::new(IpAddr::V4(self.client.ip), 40000),
            wp: self.wp.ip,
        }
    }
}

/// The calling side: a pod's ztunnel, as far as the waypoint can tell.
pub struct Client {
    pub pool: Pool,
    pub slot: Arc<CertSlot>,
    ns: PathBuf,
    pub src: SocketAddr,
    wp: Ipv4Addr,
}

impl Client {
    pub async fn tunnel(
        &self,
        authority: &str,
    ) -> Result<H2Io, ambit_core::hbone::client::HboneError> {
        let key = PoolKey {
            src_ip: self.src.ip(),
            src_identity: self.slot.identity().clone(),
            dst: SocketAddr::new(IpAddr::V4(self.wp), 15008),
            dst_identity: id("waypoint"),
        };
        let ns = self.ns.clone();
        let t = self
            .pool
            .connect(
                &key,
                move || {
                    let s = ambit_core::netns::run_in_thread(&ns, || {
                        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                    })
                    .map_err(std::io::Error::other)??;
                    s.set_nonblocking(true)?;
                    Ok(tokio::net::TcpSocket::from_std_stream(s.into()))
                },
                || ambit_core::tls::client_config(self.slot.clone(), vec![id("waypoint")]),
                authority.parse().unwrap(),
                Some(self.src),
            )
            .await?;
        Ok(H2Io::client(t))
    }

    pub async fn h1(&self, authority: &str) -> hyper::client::conn::http1::SendRequest<Body> {
        let io = self.tunnel(authority).await.unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .unwrap();
        tokio::spawn(conn.with_upgrades());
        send
    }

    pub async fn h2(&self, authority: &str) -> hyper::client::conn::http2::SendRequest<Body> {
        let io = self.tunnel(authority).await.unwrap();
        let (send, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .unwrap();
        tokio::spawn(conn);
        send
    }
}

pub fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header("host", "api.shop")
        .body(body::empty())
        .unwrap()
}

/// Status, `x-backend` header and body of a response.
pub async fn read(resp: Response<Incoming>) -> (u16, String, Bytes) {
    let status = resp.status().as_u16();
    let backend = resp
        .headers()
        .get("x-backend")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (status, backend, body)
}

/// Sends `n` GETs over `conns` keep-alive HTTP/1.1 tunnels; returns (status, backend) of each.
pub async fn load(
    client: &Client,
    n: usize,
    conns: usize,
    make: impl Fn(usize) -> Request<Body> + Send + Sync + 'static,
) -> Vec<(u16, String)> {
    let make = Arc::new(make);
    let mut tasks = vec![];
    for c in 0..conns {
        let mut send = client.h1(VIP).await;
        let make = make.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = vec![];
            for i in (c..n).step_by(conns) {
                send.ready().await.unwrap();
                let resp = send.send_request(make(i)).await.unwrap();
                let (s, b, _) = read(resp).await;
                out.push((s, b));
            }
            out
        }));
    }
    let mut all = vec![];
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// Sum of a metric's samples whose labels include all of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    ambit_testkit::mesh::metric_sum(text, name, labels)
}

pub fn skip_unless_root() -> bool {
    if !ambit_testkit::is_root() {
        eprintln!("skipping: needs root (network namespaces)");
        return true;
    }
    false
}
