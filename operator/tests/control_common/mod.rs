//! Shared by the control-plane tests: a server on loopback with the in-memory reviewer and
//! index, token and root files, and a raw stream client that speaks the protocol by hand.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::ca::CertificateAuthority;
use ambit_core::control::proto::{
    encode, ClientMessage, LineDecoder, ServerMessage, Subscribe, Update,
};
use ambit_core::control::{operator_identity, Endpoint, STREAM_PATH};
use ambit_core::meshconfig::{MeshConfig, PolicyAction, PolicySpec, WorkloadSpec};
use ambit_operator::control::{
    Caller, ConfigServer, ControlMetrics, Server, ServerConfig, StaticIndex, StaticReviewer,
};
use bytes::Bytes;
use h2::{RecvStream, SendStream};

pub const ZTUNNEL_N1: &str = "token-ztunnel-n1";
pub const ZTUNNEL_N2: &str = "token-ztunnel-n2";
pub const WAYPOINT: &str = "token-waypoint-prod-wp";

pub struct Env {
    pub dir: PathBuf,
    pub ca: Arc<CertificateAuthority>,
    pub reviewer: Arc<StaticReviewer>,
    pub index: Arc<StaticIndex>,
    pub addr: SocketAddr,
    pub publisher: ConfigServer,
    pub metrics: Arc<ControlMetrics>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    peer_timeout: Duration,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn ztunnel(node: &str) -> Caller {
    Caller {
        namespace: "ambit-system".into(),
        service_account: "ztunnel".into(),
        pod: Some(format!("ztunnel-{node}")),
        node: Some(node.into()),
    }
}

impl Env {
    pub async fn start(tag: &str) -> Env {
        Self::start_with(tag, Duration::from_secs(30)).await
    }

    pub async fn start_with(tag: &str, peer_timeout: Duration) -> Env {
        let dir = std::env::temp_dir().join(format!("ambit-control-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = Arc::new(
            CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap(),
        );
        std::fs::write(dir.join("root.pem"), ca.root_pem()).unwrap();
        let reviewer = Arc::new(StaticReviewer::default());
        reviewer.insert(ZTUNNEL_N1, ztunnel("n1"));
        reviewer.insert(ZTUNNEL_N2, ztunnel("n2"));
        reviewer.insert(
            WAYPOINT,
            Caller {
                namespace: "prod".into(),
                service_account: "wp".into(),
                pod: Some("wp-0".into()),
                node: Some("n2".into()),
            },
        );
        for t in [ZTUNNEL_N1, ZTUNNEL_N2, WAYPOINT, "bogus"] {
            std::fs::write(dir.join(t), format!("{t}\n")).unwrap();
        }
        let index = Arc::new(StaticIndex::default());
        let mut env = Env {
            dir,
            ca,
            reviewer,
            index,
            addr: "127.0.0.1:0".parse().unwrap(),
            publisher: ConfigServer::new(Default::default(), Duration::from_secs(1), peer_timeout),
            metrics: Default::default(),
            server: None,
            peer_timeout,
        };
        env.restart().await;
        env
    }

    /// Stops the server: every connection and stream closes.
    pub fn stop(&mut self) {
        if let Some(h) = self.server.take() {
            h.abort();
        }
    }

    /// (Re)starts the server on the same port, with a fresh config server (as a restarted
    /// operator has); publish again after this.
    pub async fn restart(&mut self) {
        self.stop();
        // The old listener may take a moment to go away after the abort.
        let server = loop {
            let mut cfg = ServerConfig::new(
                self.addr,
                self.ca.clone(),
                self.reviewer.clone(),
                self.index.clone(),
            );
            cfg.heartbeat = Duration::from_millis(200).min(self.peer_timeout / 3);
            cfg.peer_timeout = self.peer_timeout;
            match Server::new(cfg).await {
                Ok(s) => break s,
                Err(e) if self.addr.port() == 0 => panic!("{e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        };
        self.addr = server.local_addr().unwrap();
        self.publisher = server.publisher();
        self.metrics = server.metrics();
        self.server = Some(tokio::spawn(server.serve()));
    }

    pub fn endpoint(&self, token: &str) -> Endpoint {
        Endpoint {
            address: self.addr.to_string(),
            root_cert: self.dir.join("root.pem"),
            operator_identity: operator_identity("cluster.local").unwrap(),
            token_file: self.dir.join(token),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

pub fn workload(name: &str, node: &str, last_octet: u8) -> WorkloadSpec {
    WorkloadSpec {
        name: name.into(),
        namespace: "prod".into(),
        service_account: name.into(),
        uid: None,
        ip: IpAddr::V4(Ipv4Addr::new(10, 0, 0, last_octet)),
        node: node.into(),
        netns: None,
        labels: BTreeMap::new(),
        captured: true,
        mtls_mode: None,
        healthy: true,
        waypoint: None,
    }
}

pub fn deny_all(name: &str) -> PolicySpec {
    PolicySpec {
        name: name.into(),
        namespace: "prod".into(),
        selector: BTreeMap::new(),
        action: PolicyAction::Deny,
        rules: vec![Default::default()],
    }
}

/// A stable address per name, so a workload is the same resource in every config.
pub fn ip_octet(name: &str) -> u8 {
    (name.bytes().map(u32::from).sum::<u32>() % 250 + 1) as u8
}

/// A config with workloads `names` (all on n1).
pub fn config(names: &[&str]) -> MeshConfig {
    MeshConfig {
        trust_domain: "cluster.local".into(),
        workloads: names
            .iter()
            .map(|n| std::sync::Arc::new(workload(n, "n1", ip_octet(n))))
            .collect(),
        ..Default::default()
    }
}

/// A config stream driven by hand, to observe exactly what the server sends.
pub struct RawStream {
    pub send: SendStream<Bytes>,
    body: RecvStream,
    decoder: LineDecoder,
}

pub enum Opened {
    Stream(RawStream),
    Refused(u16, String),
}

impl RawStream {
    pub async fn open(ep: &Endpoint, sub: Subscribe) -> Opened {
        Self::try_open(ep, sub)
            .await
            .expect("the control plane is reachable")
    }

    /// Like `open`, but `None` when the server can't be reached (yet): for retry loops.
    pub async fn try_open(ep: &Endpoint, sub: Subscribe) -> Option<Opened> {
        let token = ep.token().unwrap();
        let client = ep.connect().await.ok()?;
        let mut client = client.ready().await.ok()?;
        let req = http::Request::builder()
            .method("POST")
            .uri(format!("https://ambit-operator{STREAM_PATH}"))
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .unwrap();
        let (resp, mut send) = client.send_request(req, false).ok()?;
        send.send_data(encode(&ClientMessage::Subscribe(sub)), false)
            .unwrap();
        let resp = resp.await.ok()?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        if status != 200 {
            let mut text = Vec::new();
            while let Some(Ok(c)) = body.data().await {
                text.extend_from_slice(&c);
            }
            return Some(Opened::Refused(
                status,
                String::from_utf8_lossy(&text).into_owned(),
            ));
        }
        Some(Opened::Stream(RawStream {
            send,
            body,
            decoder: LineDecoder::default(),
        }))
    }

    pub async fn subscribe(ep: &Endpoint, sub: Subscribe) -> RawStream {
        match Self::open(ep, sub).await {
            Opened::Stream(s) => s,
            Opened::Refused(status, body) => panic!("subscription refused: {status} {body}"),
        }
    }

    /// The next Update within `within` (heartbeats skipped); None on timeout.
    pub async fn update(&mut self, within: Duration) -> Option<Update> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(msg) = self.decoder.next_message::<ServerMessage>().unwrap() {
                match msg {
                    ServerMessage::Update(u) => return Some(u),
                    ServerMessage::Heartbeat => continue,
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.data())
                .await
                .ok()??;
            let chunk = chunk.ok()?;
            let _ = self.body.flow_control().release_capacity(chunk.len());
            self.decoder.push(&chunk);
        }
    }

    pub fn tell(&mut self, msg: ClientMessage) {
        self.send.send_data(encode(&msg), false).unwrap();
    }

    /// Whether the server ended the stream within `within`.
    pub async fn ended(&mut self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, self.body.data()).await {
                Err(_) => return false,
                Ok(None) | Ok(Some(Err(_))) => return true,
                Ok(Some(Ok(c))) => {
                    let _ = self.body.flow_control().release_capacity(c.len());
                }
            }
        }
    }
}

pub fn subscribe(target: &str) -> Subscribe {
    Subscribe {
        target: target.parse().unwrap(),
        known: BTreeMap::new(),
        last_version: None,
    }
}

pub fn keys(u: &Update) -> Vec<&str> {
    u.upserts.iter().map(|r| r.key.as_str()).collect()
}

/// The server's metrics in Prometheus text.
pub fn metrics_text(m: &ControlMetrics) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    m.register(&mut registry);
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
    out
}
