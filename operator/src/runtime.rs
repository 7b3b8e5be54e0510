//! The operator process: the mesh CA (kept in a Secret), the caches and compile loop, the
//! control-plane server (CA + config stream) on every replica, and — on the elected leader
//! only — the controllers that write to the cluster.
//!
//! Every replica serves proxies (they connect to whichever the Service picks) and reports
//! ready once it has published config; only the leader reconciles Mesh and Waypoint objects
//! and writes status. A leader that loses its lease exits, so its replacement starts clean.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ambit_core::ca::CertificateAuthority;
use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;
use kube::api::{Api, PostParams};
use kube::runtime::{watcher, Controller};
use kube::Client;
use prometheus_client::registry::Registry;
use tokio::sync::{watch, Notify};
use tracing::{info, warn};

use crate::control::{CachedReviewer, Server, ServerConfig};
use crate::controller::meshstate::{self, Caches, PodIndex, Published};
use crate::controller::{mesh, on_error, waypoint, Context, ReconcileMetrics};
use crate::crd::mesh::{Mesh, DEFAULT_MESH_NAME};
use crate::crd::Waypoint;
use crate::leader::{LeaderElector, LeaseTimings};
use crate::render::dataplane::{ControlPlane, TOKEN_AUDIENCE};

/// The Secret holding the mesh CA.
pub const CA_SECRET: &str = "ambit-ca";
/// Root lifetime: long, roots are rotated by replacing the Secret (docs/operations.md).
const ROOT_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Clone, Debug)]
pub struct Options {
    pub namespace: String,
    pub pod_name: String,
    pub listen: SocketAddr,
    pub metrics: SocketAddr,
    pub health: SocketAddr,
    pub leader_elect: bool,
    /// Where proxies reach the control plane; default `ambit-operator.<namespace>.svc:<listen port>`.
    pub control_plane_address: Option<String>,
    pub lease: LeaseTimings,
}

/// Loads the CA from its Secret, or creates it. Replicas racing to create it are safe: the API
/// server accepts one create, the others read what won.
pub async fn load_or_create_ca(
    client: &Client,
    namespace: &str,
    trust_domain: &str,
) -> anyhow::Result<CertificateAuthority> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    for _ in 0..3 {
        if let Some(secret) = secrets.get_opt(CA_SECRET).await? {
            let data = secret.data.unwrap_or_default();
            let field = |k: &str| {
                data.get(k)
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    .with_context(|| format!("Secret {namespace}/{CA_SECRET} has no {k:?}; delete it to have a new CA minted (every proxy then needs new certificates)"))
            };
            let stored_domain = field("trust-domain")?;
            if stored_domain != trust_domain {
                warn!(stored = %stored_domain, mesh = %trust_domain,
                      "the CA Secret was made for another trust domain; keeping it (changing the trust domain needs a new CA: see docs/operations.md)");
            }
            return CertificateAuthority::from_pem(
                &stored_domain,
                &field("ca-cert.pem")?,
                &field("ca-key.pem")?,
            )
            .with_context(|| format!("loading the CA from Secret {namespace}/{CA_SECRET}"));
        }
        let ca = CertificateAuthority::generate(trust_domain, ROOT_TTL)?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(CA_SECRET.into()),
                namespace: Some(namespace.into()),
                labels: Some(crate::render::labels("ca")),
                ..Default::default()
            },
            data: Some(
                [
                    ("ca-cert.pem", ca.root_pem()),
                    ("ca-key.pem", ca.key_pem()),
                    ("trust-domain", trust_domain.to_string()),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
                .collect(),
            ),
            type_: Some("Opaque".into()),
            ..Default::default()
        };
        match secrets.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                info!(trust_domain, "minted a new mesh CA");
                return Ok(ca);
            }
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e).context("storing the new CA"),
        }
    }
    anyhow::bail!("could not create or read Secret {namespace}/{CA_SECRET}")
}

/// Waits for the `default` Mesh (its trust domain names the CA) and returns its spec.
async fn wait_for_mesh(client: &Client) -> anyhow::Result<Mesh> {
    let api: Api<Mesh> = Api::all(client.clone());
    let mut logged = false;
    loop {
        match api.get_opt(DEFAULT_MESH_NAME).await {
            Ok(Some(mesh)) => return Ok(mesh),
            Ok(None) if !logged => {
                info!("waiting for the Mesh named {DEFAULT_MESH_NAME:?} (helm install creates it)");
                logged = true;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "reading the Mesh; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// Runs the operator until `stop` fires (or leadership is lost: then it returns an error so
/// the process restarts clean).
pub async fn run(
    client: Client,
    opts: Options,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let reconcile_metrics = Arc::new(ReconcileMetrics::default());
    let mut registry = Registry::default();
    reconcile_metrics.register(&mut registry);
    let health = crate::health::serve(opts.health, ready.clone())
        .await
        .with_context(|| format!("health endpoint {}", opts.health))?;

    let mesh = tokio::select! {
        mesh = wait_for_mesh(&client) => mesh?,
        _ = stop.changed() => {
            health.abort();
            return Ok(());
        }
    };
    let ca = Arc::new(load_or_create_ca(&client, &opts.namespace, &mesh.spec.trust_domain).await?);
    let leaf_ttl = mesh
        .spec
        .leaf_ttl()
        .unwrap_or(ambit_core::ca::DEFAULT_LEAF_TTL);

    let changed = Arc::new(Notify::new());
    let caches = Caches::start(&client, changed.clone());
    let reviewer = Arc::new(CachedReviewer::new(
        Arc::new(crate::control::kube_review::KubeTokenReviewer::new(
            client.clone(),
            vec![TOKEN_AUDIENCE.to_string()],
        )),
        Duration::from_secs(60),
    ));
    let mut server_cfg = ServerConfig::new(
        opts.listen,
        ca.clone(),
        reviewer,
        Arc::new(PodIndex(caches.pods.clone())),
    );
    server_cfg.namespace = opts.namespace.clone();
    // The ztunnel DaemonSet runs in the operator's namespace (render/dataplane.rs).
    server_cfg.authorizer.ztunnel_namespace = opts.namespace.clone();
    server_cfg.leaf_ttl = leaf_ttl;
    let server = Server::new(server_cfg).await?;
    server.metrics().register(&mut registry);
    let publisher = server.publisher();
    let ttl_follower = tokio::spawn(crate::mesh_follow::follow_certificate_ttl(
        client.clone(),
        server.leaf_ttl(),
    ));
    let metrics_server = crate::health::serve_metrics(opts.metrics, Arc::new(registry))
        .await
        .with_context(|| format!("metrics endpoint {}", opts.metrics))?;
    let serving = tokio::spawn(server.serve());

    let (leading_tx, leading_rx) = watch::channel(!opts.leader_elect);
    let (stop_election_tx, stop_election_rx) = watch::channel(false);
    // Without election this replica always leads; the sender stays alive (held in
    // `_always_leading`) so the channel never reads as a lost lease.
    let (election, _always_leading) = if opts.leader_elect {
        let elector = LeaderElector::new(
            Api::<Lease>::namespaced(client.clone(), &opts.namespace),
            "ambit-operator",
            &opts.pod_name,
            opts.lease.clone(),
        );
        let task = tokio::spawn(elector.run(leading_tx, stop_election_rx));
        (Some(task), None)
    } else {
        (None, Some(leading_tx))
    };

    let (published_tx, mut published_rx) = watch::channel(Published::default());
    let compile = tokio::spawn(meshstate::run(
        client.clone(),
        caches,
        changed,
        publisher,
        leading_rx.clone(),
        published_tx,
    ));
    {
        let ready = ready.clone();
        tokio::spawn(async move {
            while published_rx.changed().await.is_ok() {
                if published_rx.borrow().generation > 0 {
                    ready.store(true, std::sync::atomic::Ordering::Relaxed);
                    info!("first config published; ready");
                    return;
                }
            }
        });
    }

    let address = opts.control_plane_address.clone().unwrap_or_else(|| {
        format!(
            "ambit-operator.{}.svc:{}",
            opts.namespace,
            opts.listen.port()
        )
    });
    let ctx = Context::new(
        client.clone(),
        ControlPlane {
            namespace: opts.namespace.clone(),
            address,
        },
        ca.root_pem(),
        reconcile_metrics,
        &opts.pod_name,
    );
    let mut leading = leading_rx.clone();
    let result = loop {
        // Followers wait here; the leader runs the controllers until it stops leading.
        if !*leading.borrow() {
            tokio::select! {
                _ = leading.changed() => continue,
                _ = stop.changed() => break Ok(()),
            }
        }
        info!(pod = %opts.pod_name, "leading: starting the Mesh and Waypoint controllers");
        let controllers = run_controllers(client.clone(), ctx.clone(), &opts.namespace);
        tokio::select! {
            _ = controllers => break Err(anyhow::anyhow!("controllers stopped unexpectedly")),
            _ = wait_lost(&mut leading) => break Err(anyhow::anyhow!("lost the leader lease; exiting so a fresh process takes over")),
            _ = stop.changed() => break Ok(()),
        }
    };
    let _ = stop_election_tx.send(true);
    if let Some(e) = election {
        let _ = tokio::time::timeout(Duration::from_secs(5), e).await;
    }
    compile.abort();
    ttl_follower.abort();
    serving.abort();
    health.abort();
    metrics_server.abort();
    result
}

async fn wait_lost(leading: &mut watch::Receiver<bool>) {
    while *leading.borrow() {
        if leading.changed().await.is_err() {
            return;
        }
    }
}

async fn run_controllers(client: Client, ctx: Arc<Context>, namespace: &str) {
    let managed = watcher::Config::default().labels("app.kubernetes.io/managed-by=ambit-operator");
    let meshes = Controller::new(Api::<Mesh>::all(client.clone()), watcher::Config::default())
        .owns(
            Api::<DaemonSet>::namespaced(client.clone(), namespace),
            managed.clone(),
        )
        .run(
            mesh::reconcile,
            |_obj, error, ctx| on_error(mesh::CONTROLLER, error, &ctx),
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    let waypoints = Controller::new(
        Api::<Waypoint>::all(client.clone()),
        watcher::Config::default(),
    )
    .owns(Api::<Deployment>::all(client.clone()), managed.clone())
    .owns(Api::<Service>::all(client), managed)
    .run(
        waypoint::reconcile,
        |_obj, error, ctx| on_error(waypoint::CONTROLLER, error, &ctx),
        ctx,
    )
    .for_each(|_| futures::future::ready(()));
    futures::join!(meshes, waypoints);
}
