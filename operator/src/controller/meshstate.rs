//! The mesh state loop: caches of Namespaces, Nodes, Pods, Services and the Ambit objects
//! (kube-runtime reflectors); on any change, a debounced recompile; the result is published
//! to every node's ztunnel and every waypoint over the config stream, and (on the leader
//! only) written into the policies' status conditions.
//!
//! Nothing is published until every cache has its initial list: publishing a half-loaded
//! cluster would make proxies drop workloads they are serving.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::hash::Hash;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use ambit_core::control::proto::Target;
use ambit_core::control::resources::ResourceSet;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio::sync::{watch, Notify};
use tracing::{debug, info, warn};

use super::nack_status;
use super::status::{conditions, set_status_fresh};
use crate::compile::{self, Compiled, Snapshot, StatusOutcome};
use crate::control::{ConfigServer, WorkloadIndex};
use crate::crd::common::CommonStatus;
use crate::crd::{
    AuthorizationPolicy, BackendPolicy, Mesh, PeerAuthentication, TrafficRoute, Waypoint,
};

/// How long changes are gathered before one recompile (a rollout touches many pods at once).
const DEBOUNCE: Duration = Duration::from_millis(100);

/// Read-only caches of everything the compiler needs.
#[derive(Clone)]
pub struct Caches {
    pub namespaces: Store<Namespace>,
    pub nodes: Store<Node>,
    pub pods: Store<Pod>,
    pub services: Store<Service>,
    pub meshes: Store<Mesh>,
    pub waypoints: Store<Waypoint>,
    pub peer_authentications: Store<PeerAuthentication>,
    pub authorization_policies: Store<AuthorizationPolicy>,
    pub traffic_routes: Store<TrafficRoute>,
    pub backend_policies: Store<BackendPolicy>,
}

/// Which changes of an object can change the compiled config.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Relevant {
    /// Anything (Pods: their IP and readiness are in status; labels select them).
    Everything,
    /// Spec changes only (`metadata.generation`): the Ambit objects, whose status the
    /// operator itself writes after each compile. Without this filter every status write
    /// would trigger another full compile.
    Generation,
}

fn spawn_cache<K>(api: Api<K>, changed: Arc<Notify>, relevant: Relevant) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        // Never read by the compiler, and often the larger part of an object: dropping them
        // keeps a 10,000-pod cache small.
        .modify(|obj| {
            let meta = obj.meta_mut();
            meta.managed_fields = None;
            if let Some(a) = meta.annotations.as_mut() {
                a.remove("kubectl.kubernetes.io/last-applied-configuration");
            }
        })
        .reflect(writer);
    tokio::spawn(async move {
        futures::pin_mut!(stream);
        let mut generations: HashMap<ObjectRef<K>, i64> = HashMap::new();
        while let Some(item) = stream.next().await {
            match item {
                Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => {
                    if relevant == Relevant::Generation {
                        if let Some(generation) = obj.meta().generation {
                            let seen = generations.insert(ObjectRef::from_obj(&obj), generation);
                            if seen == Some(generation) {
                                continue;
                            }
                        }
                    }
                    changed.notify_one();
                }
                Ok(watcher::Event::Delete(obj)) => {
                    generations.remove(&ObjectRef::from_obj(&obj));
                    changed.notify_one();
                }
                // A relist: objects deleted meanwhile leave the store when it completes.
                Ok(watcher::Event::Init) => generations.clear(),
                Ok(watcher::Event::InitDone) => changed.notify_one(),
                // The watcher retries with backoff; the cache keeps its last state meanwhile.
                Err(error) => debug!(%error, "watch interrupted"),
            }
        }
    });
    reader
}

impl Caches {
    pub fn start(client: &Client, changed: Arc<Notify>) -> Caches {
        use Relevant::{Everything, Generation};
        Caches {
            namespaces: spawn_cache(Api::all(client.clone()), changed.clone(), Everything),
            nodes: spawn_cache(Api::all(client.clone()), changed.clone(), Everything),
            pods: spawn_cache(Api::all(client.clone()), changed.clone(), Everything),
            services: spawn_cache(Api::all(client.clone()), changed.clone(), Everything),
            meshes: spawn_cache(Api::all(client.clone()), changed.clone(), Generation),
            waypoints: spawn_cache(Api::all(client.clone()), changed.clone(), Generation),
            peer_authentications: spawn_cache(
                Api::all(client.clone()),
                changed.clone(),
                Generation,
            ),
            authorization_policies: spawn_cache(
                Api::all(client.clone()),
                changed.clone(),
                Generation,
            ),
            traffic_routes: spawn_cache(Api::all(client.clone()), changed.clone(), Generation),
            backend_policies: spawn_cache(Api::all(client.clone()), changed, Generation),
        }
    }

    pub async fn wait_until_ready(&self) {
        // Errors only mean the writer was dropped (shutdown).
        let _ = self.namespaces.wait_until_ready().await;
        let _ = self.nodes.wait_until_ready().await;
        let _ = self.pods.wait_until_ready().await;
        let _ = self.services.wait_until_ready().await;
        let _ = self.meshes.wait_until_ready().await;
        let _ = self.waypoints.wait_until_ready().await;
        let _ = self.peer_authentications.wait_until_ready().await;
        let _ = self.authorization_policies.wait_until_ready().await;
        let _ = self.traffic_routes.wait_until_ready().await;
        let _ = self.backend_policies.wait_until_ready().await;
    }

    pub fn snapshot(&self) -> Snapshot {
        fn all<K: Clone + Resource>(s: &Store<K>) -> Vec<Arc<K>>
        where
            K::DynamicType: Eq + Hash + Clone,
        {
            s.state()
        }
        Snapshot {
            meshes: all(&self.meshes),
            namespaces: all(&self.namespaces),
            pods: all(&self.pods),
            services: all(&self.services),
            waypoints: all(&self.waypoints),
            peer_authentications: all(&self.peer_authentications),
            authorization_policies: all(&self.authorization_policies),
            traffic_routes: all(&self.traffic_routes),
            backend_policies: all(&self.backend_policies),
        }
    }

    /// Nodes to publish config for: every Node object and every node a pod is scheduled on.
    pub fn node_names(&self) -> BTreeSet<String> {
        let mut names: BTreeSet<String> = self
            .nodes
            .state()
            .iter()
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        names.extend(
            self.pods
                .state()
                .iter()
                .filter_map(|p| p.spec.as_ref()?.node_name.clone()),
        );
        names
    }
}

/// The CA asks it whether a ztunnel's node runs a pod with a given identity.
pub struct PodIndex(pub Store<Pod>);

impl WorkloadIndex for PodIndex {
    fn identity_on_node(&self, namespace: &str, service_account: &str, node: &str) -> bool {
        self.0.state().iter().any(|p| {
            let spec = p.spec.as_ref();
            p.metadata.namespace.as_deref() == Some(namespace)
                && spec.and_then(|s| s.node_name.as_deref()) == Some(node)
                && spec
                    .and_then(|s| s.service_account_name.as_deref())
                    .unwrap_or("default")
                    == service_account
                && p.metadata.deletion_timestamp.is_none()
        })
    }
}

/// The outcome of the last compile, for readiness and tests.
#[derive(Clone, Debug, Default)]
pub struct Published {
    pub generation: u64,
    pub nodes: usize,
    pub waypoints: usize,
    pub workloads: usize,
}

/// Runs the compile loop until the process ends. `leading` tells whether this replica writes
/// status (all replicas compile and serve config, so proxies may connect to any of them).
pub async fn run(
    client: Client,
    caches: Caches,
    changed: Arc<Notify>,
    config: ConfigServer,
    leading: watch::Receiver<bool>,
    published: watch::Sender<Published>,
) {
    caches.wait_until_ready().await;
    info!("caches loaded; compiling mesh state");
    let written = WrittenStatus::default();
    let mut nacks_reported = nack_status::Reported::new();
    let mut generation = 0;
    loop {
        generation += 1;
        // The compile is CPU work of up to a few hundred ms at 10,000 pods: off the async
        // workers, which keep serving config streams and the CA meanwhile.
        let started = Instant::now();
        let cached = caches.clone();
        let work = tokio::task::spawn_blocking(move || {
            let snapshot = cached.snapshot();
            let compiled = compile::compile(&snapshot);
            let base = ResourceSet::from_config(&compiled.config);
            (snapshot, compiled, base)
        });
        let (snapshot, compiled, base) = match work.await {
            Ok(done) => done,
            Err(error) => {
                warn!(%error, "the compile task failed; proxies keep the last config");
                changed.notified().await;
                continue;
            }
        };
        let nodes = caches.node_names();
        let published_ok = match base {
            Ok(base) => {
                // One resource set for every node (they all get the same config).
                let targets: Vec<Target> = nodes.iter().cloned().map(Target::Node).collect();
                config.publish_set(&targets, base.clone());
                let waypoints = publish_waypoints(&config, &snapshot, &compiled, &base);
                Some(waypoints)
            }
            Err(error) => {
                warn!(%error, "could not publish config; proxies keep the last one");
                None
            }
        };
        info!(
            generation,
            workloads = compiled.config.workloads.len(),
            nodes = nodes.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "mesh config compiled and published"
        );
        if let Some(waypoints) = published_ok {
            published.send_replace(Published {
                generation,
                nodes: nodes.len(),
                waypoints,
                workloads: compiled.config.workloads.len(),
            });
        }
        let waypoints = waypoint_names(&snapshot);
        if *leading.borrow() {
            write_statuses(&client, &compiled.statuses, &written).await;
            nack_status::report(&client, &config.nacks(), &waypoints, &mut nacks_reported).await;
        }
        // A proxy's NACK (or its clearing) only needs reporting, not a recompile.
        loop {
            tokio::select! {
                _ = changed.notified() => break,
                _ = config.nacks_changed() => {
                    if *leading.borrow() {
                        nack_status::report(&client, &config.nacks(), &waypoints, &mut nacks_reported).await;
                    }
                }
            }
        }
        tokio::time::sleep(DEBOUNCE).await;
    }
}

fn waypoint_names(snapshot: &Snapshot) -> Vec<(String, String)> {
    snapshot
        .waypoints
        .iter()
        .filter_map(|w| Some((w.metadata.namespace.clone()?, w.metadata.name.clone()?)))
        .collect()
}

/// Each waypoint gets the mesh config plus the policies it enforces: the nodes' resources
/// (shared, not copied) with those policies appended.
fn publish_waypoints(
    config: &ConfigServer,
    snapshot: &Snapshot,
    compiled: &Compiled,
    base: &ResourceSet,
) -> usize {
    let mut count = 0;
    for wp in &snapshot.waypoints {
        let (Some(ns), Some(name)) = (wp.metadata.namespace.clone(), wp.metadata.name.clone())
        else {
            continue;
        };
        let own: Vec<_> = compiled
            .waypoint_policies
            .iter()
            .filter(|p| p.namespace == ns)
            .collect();
        let mut set = base.clone();
        let target = Target::Waypoint {
            namespace: ns,
            name,
        };
        match set.extend_list("policies", &own) {
            Ok(()) => {
                config.publish_set(std::slice::from_ref(&target), set);
                count += 1;
            }
            Err(error) => warn!(?target, %error, "could not publish waypoint config"),
        }
    }
    count
}

type ConditionKey = (String, String, String, String);
/// What this replica last wrote per (kind, namespace, name), to skip no-op status writes.
type WrittenStatus = RwLock<BTreeMap<(String, String, String), Vec<ConditionKey>>>;

fn key_of(o: &StatusOutcome) -> (String, String, String) {
    (o.kind.to_string(), o.namespace.clone(), o.name.clone())
}

fn condition_keys(o: &StatusOutcome) -> Vec<ConditionKey> {
    let mut v: Vec<_> = o
        .conditions
        .iter()
        .map(|c| {
            (
                c.type_.clone(),
                c.status.as_str().to_string(),
                c.reason.clone(),
                c.message.clone(),
            )
        })
        .collect();
    v.push((
        "observedGeneration".into(),
        o.generation.unwrap_or(0).to_string(),
        String::new(),
        String::new(),
    ));
    v
}

/// Writes each policy's conditions when they differ from what this replica last wrote.
async fn write_statuses(client: &Client, outcomes: &[StatusOutcome], written: &WrittenStatus) {
    for outcome in outcomes {
        let key = key_of(outcome);
        let wanted = condition_keys(outcome);
        if written.read().expect("status cache").get(&key) == Some(&wanted) {
            continue;
        }
        let result = match outcome.kind {
            "AuthorizationPolicy" => {
                write_one::<AuthorizationPolicy>(client, outcome, |p| {
                    p.status.as_ref().map(|s| s.conditions.clone())
                })
                .await
            }
            "PeerAuthentication" => {
                write_one::<PeerAuthentication>(client, outcome, |p| {
                    p.status.as_ref().map(|s| s.conditions.clone())
                })
                .await
            }
            "TrafficRoute" => {
                write_one::<TrafficRoute>(client, outcome, |p| {
                    p.status.as_ref().map(|s| s.conditions.clone())
                })
                .await
            }
            "BackendPolicy" => {
                write_one::<BackendPolicy>(client, outcome, |p| {
                    p.status.as_ref().map(|s| s.conditions.clone())
                })
                .await
            }
            other => {
                debug!(kind = other, "no status writer for this kind");
                continue;
            }
        };
        match result {
            Ok(()) => {
                written.write().expect("status cache").insert(key, wanted);
            }
            Err(error) => warn!(%error, "could not write status; retried on the next change"),
        }
    }
}

async fn write_one<K>(
    client: &Client,
    outcome: &StatusOutcome,
    current: impl Fn(&K) -> Option<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>,
) -> Result<(), super::Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), &outcome.namespace);
    set_status_fresh(&api, &outcome.name, |obj| {
        let previous = current(obj).unwrap_or_default();
        Some(CommonStatus {
            observed_generation: outcome.generation,
            conditions: conditions(&previous, outcome.conditions.clone(), outcome.generation),
        })
    })
    .await
}
