//! ztunnel in stream mode (`--control-plane`): config and certificates from an in-process
//! operator control server, on real network namespaces. Needs root (CI runs as root).
mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_core::ca::CertificateAuthority;
use ambit_core::control::proto::Target;
use ambit_core::meshconfig::MeshConfig;
use ambit_operator::control::{
    Caller, ConfigServer, Server, ServerConfig, StaticIndex, StaticReviewer,
};
use ambit_testkit::mesh::{metric_sum, node_name, Mesh};
use ambit_testkit::Child;
use common::*;
use serde_json::json;

/// The operator's control server, listening on node 0's fabric address.
struct Operator {
    rt: tokio::runtime::Runtime,
    ca: Arc<CertificateAuthority>,
    reviewer: Arc<StaticReviewer>,
    index: Arc<StaticIndex>,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    publisher: Option<ConfigServer>,
}

impl Operator {
    fn new(m: &Mesh) -> Operator {
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
        Operator {
            rt,
            ca: Arc::new(ca),
            reviewer: Arc::new(StaticReviewer::default()),
            index: Arc::new(StaticIndex::default()),
            addr: SocketAddr::from((m.topo.nodes[0].ip, 15012)),
            task: None,
            publisher: None,
        }
    }

    fn start(&mut self, m: &Mesh) {
        let addr = self.addr;
        let deadline = Instant::now() + Duration::from_secs(10);
        // The socket is opened inside node 0's namespace and keeps living there.
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
        let _guard = self.rt.enter();
        let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
        let cfg = ServerConfig::new(
            addr,
            self.ca.clone(),
            self.reviewer.clone(),
            self.index.clone(),
        );
        let server = Server::with_listener(listener, cfg).unwrap();
        self.publisher = Some(server.publisher());
        self.task = Some(self.rt.spawn(server.serve()));
    }

    fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = self.rt.block_on(t);
        }
    }

    fn publish(&self, m: &Mesh, cfg: &MeshConfig) {
        let p = self.publisher.as_ref().expect("server running");
        for n in 0..m.topo.nodes.len() {
            p.publish(&Target::Node(node_name(n)), cfg).unwrap();
        }
    }

    fn nacks(&self) -> usize {
        self.publisher
            .as_ref()
            .map(|p| p.nacks().len())
            .unwrap_or(0)
    }
}

fn mesh_config(m: &Mesh) -> MeshConfig {
    serde_json::from_value(m.config(&m.trust_domain)).unwrap()
}

/// Starts node `n`'s ztunnel in stream mode and waits for readiness.
fn start_ztunnel(m: &Mesh, op: &Operator, n: usize) -> Child {
    let token = m.dir.join(format!("token-{n}"));
    std::fs::write(&token, format!("zt-token-{n}\n")).unwrap();
    let log = std::fs::File::create(m.log_path(n)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ztunnel"));
    cmd.args([
        "--node",
        &node_name(n),
        "--control-plane",
        &op.addr.to_string(),
    ])
    .arg("--root-cert")
    .arg(m.dir.join("ca.pem"))
    .arg("--token-file")
    .arg(&token)
    .env(
        "RUST_LOG",
        std::env::var("AMBIT_TEST_LOG").unwrap_or_else(|_| "info".into()),
    )
    .stdout(log.try_clone().unwrap())
    .stderr(log);
    let child = m.topo.nodes[n].ns.spawn(cmd).unwrap();
    assert!(
        eventually(Duration::from_secs(20), || matches!(
            m.readiness(n),
            Ok((200, _))
        )),
        "ztunnel {n} not ready; log:\n{}",
        m.log(n)
    );
    child
}

#[test]
fn stream_mode_carries_mtls_applies_updates_nacks_bad_ones_and_survives_operator_restarts() {
    let mut m = mesh("ctlstream", 2);
    let a = m.add_pod(0, "a", "default", "sa-a", &[]).unwrap();
    let b = m.add_pod(1, "b", "prod", "sa-b", &[("app", "b")]).unwrap();
    for p in [a, b] {
        m.enroll(p).unwrap();
    }
    let mut op = Operator::new(&m);
    for n in 0..2 {
        op.reviewer.insert(
            &format!("zt-token-{n}"),
            Caller {
                namespace: "ambit-system".into(),
                service_account: "ztunnel".into(),
                pod: Some(format!("ztunnel-{n}")),
                node: Some(node_name(n)),
            },
        );
    }
    op.index.add("default", "sa-a", &node_name(0));
    op.index.add("prod", "sa-b", &node_name(1));
    op.start(&m);
    op.publish(&m, &mesh_config(&m));
    let _z0 = start_ztunnel(&m, &op, 0);
    let _z1 = start_ztunnel(&m, &op, 1);
    let _app = serve(&m, b, 8080);
    let b_ip: IpAddr = m.ip(b).into();

    // mTLS with certificates from the operator's CA, exactly as in file mode.
    let (name, peer, _) = call(&m, a, b_ip, 8080, "hello").unwrap();
    assert_eq!((name.as_str(), peer), ("b", m.ip(a).to_string()));
    let mtls = metric_sum(
        &m.metrics(0),
        "ambit_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    assert!(mtls >= 1.0);

    // A published DENY takes effect, and its removal too.
    let allow_all = mesh_config(&m);
    m.policies.push(
        json!({"name": "deny-default", "namespace": "prod", "action": "DENY",
        "rules": [{"from": [{"namespaces": ["default"]}]}]}),
    );
    let deny = mesh_config(&m);
    op.publish(&m, &deny);
    assert!(
        eventually(Duration::from_secs(10), || call(&m, a, b_ip, 8080, "x")
            .is_err()),
        "the published DENY never took effect"
    );
    op.publish(&m, &allow_all);
    assert!(eventually(Duration::from_secs(10), || call(
        &m, a, b_ip, 8080, "x"
    )
    .is_ok()));

    // A config the state builder rejects (a workload with an invalid service account, plus
    // the DENY) is NACKed by both ztunnels; the allowing config stays in force.
    let mut bad = deny.clone();
    std::sync::Arc::make_mut(&mut bad.workloads[0]).service_account = "not a valid name".into();
    op.publish(&m, &bad);
    assert!(
        eventually(Duration::from_secs(10), || op.nacks() == 2),
        "NACKs not recorded: {:?}",
        op.publisher.as_ref().unwrap().nacks()
    );
    let err = &op.publisher.as_ref().unwrap().nacks()[0].error;
    assert!(err.contains("not a valid name"), "{err}");
    assert!(call(&m, a, b_ip, 8080, "still allowed").is_ok());
    let rejected = metric_sum(
        &m.metrics(1),
        "ambit_config_reloads_total",
        &[("result", "error")],
    );
    assert!(rejected >= 1.0);

    // The admin dump says where config comes from and that the stream is up.
    let source = &m.admin(0, "/config_dump").unwrap()["configSource"];
    assert_eq!(source["mode"], "stream", "{source}");
    assert_eq!(source["connected"], true, "{source}");
    assert_eq!(source["controlPlane"], op.addr.to_string());
    assert!(source["rejected"].as_u64().unwrap() >= 1, "{source}");

    // The operator goes away: traffic keeps flowing on the last good config.
    op.stop();
    for i in 0..5 {
        assert!(call(&m, a, b_ip, 8080, &format!("offline {i}")).is_ok());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        eventually(Duration::from_secs(10), || m
            .admin(0, "/config_dump")
            .is_ok_and(|d| d["configSource"]["connected"] == false)),
        "the dump still says connected with the operator gone"
    );
    // Back with an empty state; the reconcilers publish the DENY, which reaches both ztunnels.
    op.start(&m);
    op.publish(&m, &deny);
    assert!(
        eventually(Duration::from_secs(30), || call(&m, a, b_ip, 8080, "x")
            .is_err()),
        "config published after the restart never arrived; logs:\n{}\n{}",
        m.log(0),
        m.log(1)
    );
    assert!(m.log(1).matches("config stream subscribed").count() >= 2);
    op.stop();
}

#[test]
fn exactly_one_config_mode_is_required() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_ztunnel"))
            .args(["--node", "n"])
            .args(args)
            .env_remove("AMBIT_CONFIG")
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let err = run(&["--control-plane", "127.0.0.1:1", "--config", "x.yaml"]);
    assert!(err.contains("drop --config"), "{err}");
    let err = run(&["--config", "x.yaml"]);
    assert!(err.contains("either --control-plane"), "{err}");
    let err = run(&[
        "--control-plane",
        "127.0.0.1:1",
        "--root-cert",
        "/nonexistent.pem",
    ]);
    assert!(
        err.contains("/nonexistent.pem") && err.contains("ambit-ca-root-cert"),
        "{err}"
    );
}
