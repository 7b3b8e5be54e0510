//! Writing status: conditions computed from the previous ones (transition times kept while a
//! status holds) and a merge patch of the `/status` subresource.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::Error;
use crate::crd::common::{set_condition, ConditionUpdate};

/// The previous conditions with `updates` applied.
pub fn conditions(
    previous: &[Condition],
    updates: Vec<ConditionUpdate>,
    generation: Option<i64>,
) -> Vec<Condition> {
    let mut out = previous.to_vec();
    let now = Timestamp::now();
    for update in updates {
        set_condition(&mut out, update, generation, now);
    }
    out
}

/// Replaces the status of `obj` (merge patch on `/status`), on condition that the object is
/// still at the resourceVersion the status was computed from. Several writers share some
/// objects' conditions (the Mesh: its reconciler and the config-rejection reporter); without
/// the precondition a writer working from a stale cache would put back a condition another
/// one had just changed. A conflict is `Error::Status` with `is_conflict()`: recompute from
/// the newer object (the watch delivers it) and write again.
pub async fn patch_status<K, S>(api: &Api<K>, obj: &K, status: &S) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let name = obj.meta().name.clone().unwrap_or_default();
    let body = status_patch(obj.meta().resource_version.as_deref(), status);
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map(|_| ())
        .map_err(|source| Error::Status { name, source })
}

/// The merge patch that sets `status`, conditional on `resource_version` when known.
fn status_patch<S: Serialize>(resource_version: Option<&str>, status: &S) -> serde_json::Value {
    match resource_version {
        Some(rv) => serde_json::json!({"metadata": {"resourceVersion": rv}, "status": status}),
        None => serde_json::json!({ "status": status }),
    }
}

/// Conflicts tolerated by [`set_status_fresh`] before it gives up (each means another writer
/// changed the object between our read and our write).
const FRESH_ATTEMPTS: usize = 5;

/// Reads `name` fresh, lets `next` compute its new status from it (`None`: nothing to write)
/// and writes that on condition the object did not change meanwhile; on a conflict, reads
/// again. For writers that own only part of a status (one condition) and have no cache.
/// A missing object is not an error: there is nothing to report on.
pub async fn set_status_fresh<K, S>(
    api: &Api<K>,
    name: &str,
    next: impl Fn(&K) -> Option<S>,
) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let obj = match api.get_opt(name).await {
            Ok(Some(obj)) => obj,
            Ok(None) => return Ok(()),
            Err(source) => {
                return Err(Error::Read {
                    what: format!("{}/{name}", api.resource_url()),
                    source,
                })
            }
        };
        let Some(status) = next(&obj) else {
            return Ok(());
        };
        match patch_status(api, &obj, &status).await {
            Err(e) if e.is_conflict() && attempt < FRESH_ATTEMPTS => continue,
            other => return other,
        }
    }
}
