//! Mesh settings every replica applies while it runs, not only the leader: each replica's CA
//! issues certificates, so each follows the Mesh's `certificateTtl`.

use futures::StreamExt;
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

use crate::control::LeafTtl;
use crate::crd::mesh::DEFAULT_MESH_NAME;
use crate::crd::Mesh;

/// Keeps `ttl` equal to the default Mesh's `certificateTtl` until the task is dropped. An
/// unparsable value keeps the last good one (the Mesh reconciler reports it on the Mesh's
/// status); certificates already issued keep their lifetime and are renewed at half-life
/// with the new one.
pub async fn follow_certificate_ttl(client: Client, ttl: LeafTtl) {
    let meshes = watcher(Api::<Mesh>::all(client), watcher::Config::default())
        .default_backoff()
        .applied_objects();
    futures::pin_mut!(meshes);
    while let Some(event) = meshes.next().await {
        let mesh = match event {
            Ok(mesh) if mesh.name_any() == DEFAULT_MESH_NAME => mesh,
            Ok(_) => continue,
            Err(error) => {
                warn!(%error, "watching the Mesh for certificateTtl; retrying");
                continue;
            }
        };
        match mesh.spec.leaf_ttl() {
            Ok(wanted) => {
                let before = ttl.set(wanted);
                if before != wanted {
                    info!(?before, now = ?wanted, "workload certificate lifetime changed (Mesh certificateTtl)");
                }
            }
            Err(error) => {
                warn!(%error, kept = ?ttl.get(), "Mesh certificateTtl is invalid; keeping the last good lifetime")
            }
        }
    }
}
