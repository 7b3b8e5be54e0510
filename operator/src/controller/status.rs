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

/// Replaces the object's status (merge patch on `/status`).
pub async fn patch_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<(), Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
    S: Serialize,
{
    let body = serde_json::json!({ "status": status });
    api.patch_status(name, &PatchParams::default(), &Patch::Merge(&body))
        .await
        .map(|_| ())
        .map_err(|source| Error::Status {
            name: name.to_string(),
            source,
        })
}
