//! Config a proxy rejected (NACK), reported where users look: condition `ConfigAccepted` on
//! the Mesh for the nodes' ztunnels, and on each Waypoint for its own proxies. Written by the
//! leader when what it would say changes; the proxies keep their last good config meanwhile.

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::Api;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tracing::warn;

use super::status::{conditions, set_status_fresh};
use crate::control::NackRecord;
use crate::crd::common::{ConditionStatus as S, ConditionUpdate};
use crate::crd::mesh::DEFAULT_MESH_NAME;
use crate::crd::{Mesh, Waypoint};

pub const CONFIG_ACCEPTED: &str = "ConfigAccepted";
/// Rejections named in one message; the rest are counted.
const LISTED: usize = 3;

/// What this replica last wrote, per object (`"mesh"` or `"waypoint/<ns>/<name>"`).
pub type Reported = BTreeMap<String, ConditionUpdate>;

fn condition(nacks: &[&NackRecord], proxies: &str) -> ConditionUpdate {
    if nacks.is_empty() {
        return ConditionUpdate::new(
            CONFIG_ACCEPTED,
            S::True,
            "Accepted",
            format!("no {proxies} rejected its config"),
        );
    }
    let mut listed: Vec<String> = nacks
        .iter()
        .take(LISTED)
        .map(|n| {
            format!(
                "{} ({}) rejected version {}: {}",
                n.proxy, n.target, n.version, n.error
            )
        })
        .collect();
    if nacks.len() > LISTED {
        listed.push(format!("and {} more", nacks.len() - LISTED));
    }
    ConditionUpdate::new(
        CONFIG_ACCEPTED,
        S::False,
        "Rejected",
        format!(
            "{}; they keep their last good config (fix the object the error names)",
            listed.join("; ")
        ),
    )
}

/// Writes `ConfigAccepted` on the Mesh and on every Waypoint in `waypoints` (namespace, name)
/// whose message changed since the last call.
pub async fn report(
    client: &Client,
    nacks: &[NackRecord],
    waypoints: &[(String, String)],
    reported: &mut Reported,
) {
    let nodes: Vec<&NackRecord> = nacks
        .iter()
        .filter(|n| n.target.starts_with("node/"))
        .collect();
    let mut wanted = vec![("mesh".to_string(), condition(&nodes, "ztunnel"))];
    for (ns, name) in waypoints {
        let target = format!("waypoint/{ns}/{name}");
        let own: Vec<&NackRecord> = nacks.iter().filter(|n| n.target == target).collect();
        wanted.push((target, condition(&own, "waypoint proxy")));
    }
    for (key, update) in wanted {
        if reported.get(&key) == Some(&update) {
            continue;
        }
        let written = match key.split('/').collect::<Vec<_>>()[..] {
            ["waypoint", ns, name] => {
                let api: Api<Waypoint> = Api::namespaced(client.clone(), ns);
                set(&api, name, &update, |w| {
                    w.status.as_ref().map(|s| s.conditions.clone())
                })
                .await
            }
            _ => {
                let api: Api<Mesh> = Api::all(client.clone());
                set(&api, DEFAULT_MESH_NAME, &update, |m| {
                    m.status.as_ref().map(|s| s.conditions.clone())
                })
                .await
            }
        };
        match written {
            Ok(()) => {
                reported.insert(key, update);
            }
            Err(error) => {
                warn!(object = %key, %error, "could not report config rejections; retried on the next change")
            }
        }
    }
}

/// Sets one condition, keeping the others (read fresh: other writers own them).
async fn set<K>(
    api: &Api<K>,
    name: &str,
    update: &ConditionUpdate,
    current: impl Fn(&K) -> Option<Vec<Condition>>,
) -> Result<(), super::Error>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    set_status_fresh(api, name, |obj| {
        let previous = current(obj).unwrap_or_default();
        let next = conditions(&previous, vec![update.clone()], obj.meta().generation);
        (next != previous).then(|| serde_json::json!({ "conditions": next }))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nack(n: u64) -> NackRecord {
        NackRecord {
            target: "node/n1".into(),
            proxy: format!("ambit-system/ztunnel-{n}"),
            version: n,
            error: format!("bad {n}"),
        }
    }

    #[test]
    fn the_message_names_proxy_target_version_and_error_and_counts_the_rest() {
        let all: Vec<NackRecord> = (1..=5).map(nack).collect();
        let refs: Vec<&NackRecord> = all.iter().collect();
        let c = condition(&refs, "ztunnel");
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("False", "Rejected")
        );
        assert!(
            c.message
                .starts_with("ambit-system/ztunnel-1 (node/n1) rejected version 1: bad 1;"),
            "{}",
            c.message
        );
        assert!(c.message.contains("and 2 more") && !c.message.contains("bad 4"));
        assert_eq!(condition(&[], "ztunnel").status.as_str(), "True");
    }
}
