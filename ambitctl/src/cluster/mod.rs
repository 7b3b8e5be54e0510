//! The API server connection and the kinds ambitctl knows by name.

use std::time::Duration;

use kube::api::{Api, DynamicObject, ListParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::discovery::Scope;

use crate::error::{from_kube, usage, CliError, Result};
use crate::targets::{Endpoint, NodeTarget, Targets, WaypointTarget};

/// Where the API server address came from, for messages.
#[derive(Clone, Debug)]
pub enum ServerSource {
    Url(String),
    Kubeconfig,
}

/// Connects to `url` (plain http or https without client auth) or, without one, to the
/// kubeconfig's current context.
pub async fn client(source: &ServerSource) -> Result<kube::Client> {
    let config = match source {
        ServerSource::Url(url) => {
            let uri = url
                .parse()
                .map_err(|e| usage(format!("--server {url:?} is not a URL: {e}")))?;
            kube::Config::new(uri)
        }
        ServerSource::Kubeconfig => kube::Config::infer().await.map_err(|e| {
            CliError::Unreachable(format!(
                "no API server: no --server, AMBIT_SERVER or sandbox state, and no usable kubeconfig ({e})"
            ))
        })?,
    };
    let mut config = config;
    // A CLI must fail fast when nothing listens, not hang.
    config.connect_timeout = Some(Duration::from_secs(3));
    config.read_timeout = Some(Duration::from_secs(20));
    kube::Client::try_from(config)
        .map_err(|e| CliError::Unreachable(format!("configuring the API client: {e}")))
}

/// A kind ambitctl resolves without discovery.
#[derive(Clone, Copy, Debug)]
pub struct KnownKind {
    pub group: &'static str,
    pub version: &'static str,
    pub kind: &'static str,
    pub plural: &'static str,
    pub short: &'static [&'static str],
    pub namespaced: bool,
}

const fn ambit(
    kind: &'static str,
    plural: &'static str,
    short: &'static [&'static str],
    namespaced: bool,
) -> KnownKind {
    KnownKind {
        group: "ambit.dev",
        version: "v1alpha1",
        kind,
        plural,
        short,
        namespaced,
    }
}

const fn core(
    kind: &'static str,
    plural: &'static str,
    short: &'static [&'static str],
    namespaced: bool,
) -> KnownKind {
    KnownKind {
        group: "",
        version: "v1",
        kind,
        plural,
        short,
        namespaced,
    }
}

pub const KNOWN: &[KnownKind] = &[
    ambit("Mesh", "meshes", &[], false),
    ambit("Waypoint", "waypoints", &["wp"], true),
    ambit("TrafficRoute", "trafficroutes", &["tr"], true),
    ambit("BackendPolicy", "backendpolicies", &["bp"], true),
    ambit(
        "AuthorizationPolicy",
        "authorizationpolicies",
        &["ap"],
        true,
    ),
    ambit("PeerAuthentication", "peerauthentications", &["pa"], true),
    core("Pod", "pods", &["po"], true),
    core("Service", "services", &["svc"], true),
    core("Namespace", "namespaces", &["ns"], false),
];

impl KnownKind {
    pub fn api_resource(&self) -> ApiResource {
        ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk(self.group, self.version, self.kind),
            self.plural,
        )
    }

    pub fn is_ambit(&self) -> bool {
        self.group == "ambit.dev"
    }
}

/// Resolves what a user typed (`TrafficRoute`, `trafficroutes`, `tr`, `trafficroutes.ambit.dev`).
pub fn resolve_kind(name: &str) -> Result<&'static KnownKind> {
    let n = name.to_ascii_lowercase();
    let n = n.strip_suffix(".ambit.dev").unwrap_or(&n);
    KNOWN
        .iter()
        .find(|k| k.kind.eq_ignore_ascii_case(n) || k.plural == n || k.short.contains(&n))
        .ok_or_else(|| {
            let names: Vec<&str> = KNOWN.iter().map(|k| k.plural).collect();
            usage(format!(
                "unknown kind {name:?}; known: {}",
                names.join(", ")
            ))
        })
}

/// The ApiResource and scope of any apiVersion/kind: known kinds directly, others by discovery.
pub async fn resource_for(
    client: &kube::Client,
    api_version: &str,
    kind: &str,
) -> Result<(ApiResource, bool)> {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    if let Some(k) = KNOWN
        .iter()
        .find(|k| k.group == group && k.version == version && k.kind == kind)
    {
        return Ok((k.api_resource(), k.namespaced));
    }
    let gvk = GroupVersionKind::gvk(group, version, kind);
    let (ar, caps) = kube::discovery::pinned_kind(client, &gvk)
        .await
        .map_err(|e| match e {
            kube::Error::Api(_) | kube::Error::Discovery(_) => CliError::Failed(format!(
                "the API server does not serve {kind} in {api_version}: is its CRD installed?"
            )),
            other => from_kube(&format!("discovering {kind}"), other),
        })?;
    Ok((ar, caps.scope == Scope::Namespaced))
}

pub fn api(
    client: &kube::Client,
    ar: &ApiResource,
    namespaced: bool,
    ns: Option<&str>,
) -> Api<DynamicObject> {
    match (namespaced, ns) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, ar),
        _ => Api::all_with(client.clone(), ar),
    }
}

/// Finds ztunnel and waypoint pods in a real cluster; admin and metrics go through the
/// API server's pod proxy.
pub async fn discover_targets(client: &kube::Client) -> Result<Targets> {
    let pods = KNOWN
        .iter()
        .find(|k| k.kind == "Pod")
        .expect("Pod is known")
        .api_resource();
    let zt: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), crate::targets::SYSTEM_NAMESPACE, &pods);
    let list = zt
        .list(&ListParams::default().labels(crate::targets::ZTUNNEL_SELECTOR))
        .await
        .map_err(|e| from_kube("listing ztunnel pods", e))?;
    let mut targets = Targets::default();
    for p in list.items {
        let (Some(pod), Some(node)) = (
            p.metadata.name.clone(),
            p.data.pointer("/spec/nodeName").and_then(|v| v.as_str()),
        ) else {
            continue;
        };
        let ep = |port| Endpoint::PodProxy {
            namespace: crate::targets::SYSTEM_NAMESPACE.into(),
            pod: pod.clone(),
            port,
        };
        targets.nodes.push(NodeTarget {
            name: node.to_string(),
            admin: ep(15000),
            metrics: Some(ep(15020)),
        });
    }
    let all: Api<DynamicObject> = Api::all_with(client.clone(), &pods);
    let list = all
        .list(&ListParams::default().labels(crate::targets::WAYPOINT_LABEL))
        .await
        .map_err(|e| from_kube("listing waypoint pods", e))?;
    for p in list.items {
        let (Some(pod), Some(ns)) = (p.metadata.name.clone(), p.metadata.namespace.clone()) else {
            continue;
        };
        let Some(name) = p
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(crate::targets::WAYPOINT_LABEL))
            .cloned()
        else {
            continue;
        };
        // One waypoint object may run several pods; the first answers for it.
        if targets
            .waypoints
            .iter()
            .any(|w| w.namespace == ns && w.name == name)
        {
            continue;
        }
        let ep = |port| Endpoint::PodProxy {
            namespace: ns.clone(),
            pod: pod.clone(),
            port,
        };
        targets.waypoints.push(WaypointTarget {
            namespace: ns.clone(),
            name,
            admin: ep(15000),
            metrics: Some(ep(15020)),
        });
    }
    Ok(targets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_resolve_by_kind_plural_short_and_qualified_name() {
        for n in [
            "TrafficRoute",
            "trafficroutes",
            "tr",
            "trafficroutes.ambit.dev",
            "TRAFFICROUTE",
        ] {
            assert_eq!(resolve_kind(n).unwrap().kind, "TrafficRoute", "{n}");
        }
        assert_eq!(resolve_kind("svc").unwrap().kind, "Service");
        assert_eq!(resolve_kind("meshes").unwrap().kind, "Mesh");
        let err = resolve_kind("gateways").unwrap_err();
        assert_eq!(err.code(), 2);
        assert!(err.to_string().contains("trafficroutes"), "{err}");
    }
}

#[cfg(test)]
mod fake_tests;
