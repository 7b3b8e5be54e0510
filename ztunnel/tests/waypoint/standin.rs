//! A stand-in L4 waypoint: core's HBONE server on `pod-ip:15008` in a pod's namespace, with
//! the pod's identity from the mesh CA. It records every CONNECT it gets, then re-originates
//! the stream over HBONE (with its own identity, from its own pod) to the endpoint its route
//! table names for the CONNECT's authority, as a real waypoint does after routing.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ambit_core::ca::CertificateAuthority;
use ambit_core::certs::{CertManager, CertSlot, LocalCa};
use ambit_core::hbone::client::{Pool, PoolConfig, PoolKey};
use ambit_core::hbone::server::{serve_tls, Accepted, Handler, HboneRequest, Reject};
use ambit_core::hbone::{splice, HBONE_PORT};
use ambit_core::netns::Netns;
use ambit_core::socket::mesh_socket;
use ambit_core::tls::{client_config, server_config};
use ambit_core::Identity;
use ambit_testkit::mesh::Mesh;
use http::StatusCode;
use tokio::net::{TcpListener, TcpStream};

/// One CONNECT the stand-in received.
#[derive(Clone, Debug)]
pub struct Seen {
    pub authority: SocketAddr,
    pub caller: String,
    pub forwarded_for: Option<SocketAddr>,
}

/// Where to relay each authority: the endpoint (`ip:port`) and its identity.
pub type Routes = HashMap<SocketAddr, (SocketAddr, Identity)>;

pub struct StandIn {
    seen: Arc<Mutex<Vec<Seen>>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl StandIn {
    /// Starts serving in pod `pod` of `m` (which must not be captured: ztunnel would own its
    /// 15008) with the pod's identity.
    pub fn start(m: &Mesh, pod: usize, routes: Routes) -> StandIn {
        let p = m.pod(pod);
        let identity = Identity::new(&m.trust_domain, &p.namespace, &p.service_account).unwrap();
        let read = |f: &str| std::fs::read_to_string(m.dir.join(f)).unwrap();
        let ca =
            CertificateAuthority::from_pem(&m.trust_domain, &read("ca.pem"), &read("ca-key.pem"))
                .unwrap();
        let listener = p
            .pod
            .ns
            .run(|| std::net::TcpListener::bind(("0.0.0.0", HBONE_PORT)))
            .expect("binding the stand-in waypoint's 15008");
        listener.set_nonblocking(true).unwrap();
        let netns = Netns::open(&p.pod.ns.path()).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let relay = rt.block_on(async {
            let certs = CertManager::new(Arc::new(LocalCa {
                ca: Arc::new(ca),
                leaf_ttl: Duration::from_secs(3600),
                extra_roots: vec![],
            }));
            Relay(Arc::new(Inner {
                seen: seen.clone(),
                routes,
                pool: Pool::new(PoolConfig::default()),
                slot: certs.slot(&identity).await.unwrap(),
                netns,
                ip: p.pod.ip.into(),
                identity,
            }))
        });
        let server_tls = server_config(relay.0.slot.clone());
        rt.spawn(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve_tls(tcp, server_tls.clone(), relay.clone()));
            }
        });
        StandIn { seen, rt: Some(rt) }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

#[derive(Clone)]
struct Relay(Arc<Inner>);

struct Inner {
    seen: Arc<Mutex<Vec<Seen>>>,
    routes: Routes,
    pool: Pool,
    slot: Arc<CertSlot>,
    netns: Netns,
    ip: IpAddr,
    identity: Identity,
}

fn unavailable(reason: &'static str) -> Reject {
    Reject {
        status: StatusCode::SERVICE_UNAVAILABLE,
        reason,
    }
}

impl Handler for Relay {
    async fn open(&self, req: HboneRequest) -> Result<Accepted, Reject> {
        let me = &self.0;
        me.seen.lock().unwrap().push(Seen {
            authority: req.authority,
            caller: req.peer_identity.to_string(),
            forwarded_for: req.forwarded_for,
        });
        let (endpoint, id) = me
            .routes
            .get(&req.authority)
            .cloned()
            .ok_or_else(|| unavailable("no_route"))?;
        let key = PoolKey {
            src_ip: me.ip,
            src_identity: me.identity.clone(),
            dst: SocketAddr::new(endpoint.ip(), HBONE_PORT),
            dst_identity: id.clone(),
        };
        let tunnel = me
            .pool
            .connect(
                &key,
                || me.netns.run(|| mesh_socket(key.dst, None))?,
                || client_config(me.slot.clone(), vec![id.clone()]),
                endpoint,
                req.forwarded_for,
            )
            .await
            .map_err(|_| unavailable("upstream_connect_failed"))?;
        // The server wants a TCP upstream: splice the tunnel onto one end of a loopback pair.
        let pair = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|_| unavailable("loopback"))?;
        let addr = pair.local_addr().map_err(|_| unavailable("loopback"))?;
        let (upstream, inner) = tokio::join!(TcpStream::connect(addr), pair.accept());
        let (upstream, (mut inner, _)) = upstream
            .and_then(|u| inner.map(|i| (u, i)))
            .map_err(|_| unavailable("loopback"))?;
        tokio::spawn(async move {
            let _ = splice(&mut inner, tunnel.send, tunnel.recv, &|_| {}, &|_| {}).await;
        });
        Ok(Accepted::uncounted(upstream))
    }
}
