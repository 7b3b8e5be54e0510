//! PeerAuthentication precedence, as Istio's: a policy whose selector matches the workload, then
//! the namespace's policy without a selector, then the root namespace's (mesh-wide), then the
//! Mesh's default. `UNSET` defers to the next level. When several policies tie at one level the
//! oldest wins (then the first by name), so adding a policy never silently overrides another.

use std::collections::BTreeMap;

use ambit_core::meshconfig::MtlsMode;
use kube::ResourceExt;

use super::conditions::{ACCEPTED, REASON_ACCEPTED};
use super::index::Index;
use super::{selects, StatusOutcome};
use crate::crd::common::{ConditionStatus, ConditionUpdate};
use crate::crd::peer_authentication::PeerMtlsMode;
use crate::crd::{PeerAuthentication, ROOT_NAMESPACE};

pub(super) fn mode_for(
    index: &Index<'_>,
    ns: &str,
    labels: &BTreeMap<String, String>,
    default: MtlsMode,
) -> MtlsMode {
    let local = index.peer_authentications(ns);
    let workload_level = local.iter().copied().find(|p| {
        p.spec
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty() && selects(&s.match_labels, labels))
    });
    let namespace_level = local.iter().copied().find(|p| is_namespace_wide(p));
    let root = index.peer_authentications(ROOT_NAMESPACE);
    let mesh_level = root.iter().copied().find(|p| is_namespace_wide(p));
    [workload_level, namespace_level, mesh_level]
        .into_iter()
        .flatten()
        .find_map(|p| match p.spec.mtls.mode {
            PeerMtlsMode::Strict => Some(MtlsMode::Strict),
            PeerMtlsMode::Permissive => Some(MtlsMode::Permissive),
            PeerMtlsMode::Unset => None,
        })
        .unwrap_or(default)
}

/// No selector, or one with no labels (Istio treats both as the whole namespace).
fn is_namespace_wide(p: &PeerAuthentication) -> bool {
    p.spec
        .selector
        .as_ref()
        .is_none_or(|s| s.match_labels.is_empty())
}

pub(super) fn statuses(policies: &[std::sync::Arc<PeerAuthentication>]) -> Vec<StatusOutcome> {
    policies
        .iter()
        .map(|p| StatusOutcome {
            kind: "PeerAuthentication",
            namespace: p.namespace().unwrap_or_default(),
            name: p.name_any(),
            generation: p.metadata.generation,
            conditions: vec![ConditionUpdate::new(
                ACCEPTED,
                ConditionStatus::True,
                REASON_ACCEPTED,
                match p.spec.mtls.mode {
                    PeerMtlsMode::Strict => "mTLS mode STRICT is in effect",
                    PeerMtlsMode::Permissive => "mTLS mode PERMISSIVE is in effect",
                    PeerMtlsMode::Unset => "mTLS mode UNSET: the next level decides",
                },
            )],
        })
        .collect()
}
