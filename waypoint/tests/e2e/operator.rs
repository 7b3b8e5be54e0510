//! The operator's control server (CA + config stream), in-process on node 0's address, with a
//! static token table and pod index; ztunnels started in stream mode against it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_core::ca::CertificateAuthority;
use ambit_core::control::proto::Target;
use ambit_core::meshconfig::MeshConfig;
use ambit_operator::control::{
    Caller, ConfigServer, Server, ServerConfig, StaticIndex, StaticReviewer,
};
use ambit_testkit::mesh::Mesh;
use ambit_testkit::Child;
use serde_json::Value;

use crate::harness::{mesh_config, node, ztunnel_cmd, NS, WP};

pub fn waypoint_target() -> Target {
    Target::Waypoint {
        namespace: NS.into(),
        name: WP.into(),
    }
}

pub struct Operator {
    /// Its own runtime, so the server keeps answering while the test thread blocks.
    rt: Option<tokio::runtime::Runtime>,
    ca: Arc<CertificateAuthority>,
    reviewer: Arc<StaticReviewer>,
    index: Arc<StaticIndex>,
    pub addr: SocketAddr,
    publisher: Option<ConfigServer>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Operator {
    fn drop(&mut self) {
        // Dropping a runtime inside the test's async context would panic.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Operator {
    /// The server for node 0's address, port 15012 (not serving until [`Operator::serve`]).
    /// Every pod's identity is indexed on its node, so each ztunnel may get certificates for
    /// its own pods only.
    pub fn new(m: &Mesh) -> Operator {
        let ca = CertificateAuthority::from_pem(
            "cluster.local",
            &std::fs::read_to_string(m.dir.join("ca.pem")).unwrap(),
            &std::fs::read_to_string(m.dir.join("ca-key.pem")).unwrap(),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let index = Arc::new(StaticIndex::default());
        for p in &m.pods {
            index.add(&p.namespace, &p.service_account, &node(p.pod.node));
        }
        Operator {
            rt: Some(rt),
            ca: Arc::new(ca),
            reviewer: Arc::new(StaticReviewer::default()),
            index,
            addr: SocketAddr::from((m.topo.nodes[0].ip, 15012)),
            publisher: None,
            task: None,
        }
    }

    /// Binds (inside node 0's namespace) and serves.
    pub fn serve(&mut self, m: &Mesh) {
        let addr = self.addr;
        let deadline = Instant::now() + Duration::from_secs(10);
        let std_listener = loop {
            match m.topo.nodes[0].ns.run(|| std::net::TcpListener::bind(addr)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("binding {addr}: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("binding {addr}: {e}"),
            }
        };
        std_listener.set_nonblocking(true).unwrap();
        let rt = self.rt.as_ref().expect("runtime");
        let _guard = rt.enter();
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        let cfg = ServerConfig::new(
            addr,
            self.ca.clone(),
            self.reviewer.clone(),
            self.index.clone(),
        );
        let server = Server::with_listener(listener, cfg).unwrap();
        self.publisher = Some(server.publisher());
        self.task = Some(rt.spawn(server.serve()));
    }

    /// Stops serving; dropping the server closes every connection.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    pub fn publish(&self, target: &Target, cfg: &MeshConfig) {
        let p = self.publisher.as_ref().expect("serving");
        p.publish(target, cfg).unwrap();
    }

    /// The same config for both nodes and the waypoint.
    pub fn publish_all(&self, m: &Mesh, extra: &Value) {
        let cfg = mesh_config(m, extra);
        for n in 0..m.topo.nodes.len() {
            self.publish(&Target::Node(node(n)), &cfg);
        }
        self.publish(&waypoint_target(), &cfg);
    }

    /// `target: error` of each recorded NACK.
    pub fn nacks(&self) -> Vec<String> {
        self.publisher
            .as_ref()
            .expect("serving")
            .nacks()
            .into_iter()
            .map(|n| format!("{}: {}", n.target, n.error))
            .collect()
    }

    fn token(&self, m: &Mesh, name: &str, caller: Caller) -> PathBuf {
        let token = format!("{name}-token");
        self.reviewer.insert(&token, caller);
        let path = m.dir.join(&token);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        path
    }

    /// A token file for the waypoint pod's ServiceAccount.
    pub fn waypoint_token(&self, m: &Mesh) -> PathBuf {
        let caller = Caller {
            namespace: NS.into(),
            service_account: WP.into(),
            pod: Some("waypoint-0".into()),
            node: Some(node(1)),
        };
        self.token(m, "waypoint", caller)
    }

    /// Starts node `n`'s ztunnel in stream mode and waits for its readiness.
    pub fn start_ztunnel(&self, m: &Mesh, n: usize) -> Child {
        let caller = Caller {
            namespace: "ambit-system".into(),
            service_account: "ztunnel".into(),
            pod: Some(format!("ztunnel-{n}")),
            node: Some(node(n)),
        };
        let token = self.token(m, &format!("ztunnel-{n}"), caller);
        let log = std::fs::File::create(m.log_path(n)).unwrap();
        let argv = ztunnel_cmd();
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .args([
                "--node",
                &node(n),
                "--control-plane",
                &self.addr.to_string(),
            ])
            .arg("--root-cert")
            .arg(m.dir.join("ca.pem"))
            .arg("--token-file")
            .arg(token)
            .env(
                "RUST_LOG",
                std::env::var("AMBIT_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let mut child = m.topo.nodes[n].ns.spawn(cmd).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !matches!(m.readiness(n), Ok((200, _))) {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("ztunnel {n} exited with {status}:\n{}", m.log(n));
            }
            assert!(
                Instant::now() < deadline,
                "ztunnel {n} not ready:\n{}",
                m.log(n)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }
}
