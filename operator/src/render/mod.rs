//! What the operator creates in the cluster, as pure functions of the custom resources: the
//! node-level data plane from a `Mesh`, waypoint Deployments from `Waypoint`s.

pub mod dataplane;
pub mod waypoint;

use std::collections::BTreeMap;

use crate::crd::mesh::{ImagePullPolicy, LogLevel};

/// Field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "ambit-operator";

/// Labels on everything the operator creates (`kubectl get all -l app.kubernetes.io/managed-by=ambit-operator`).
pub fn labels(component: &str) -> BTreeMap<String, String> {
    [
        ("app.kubernetes.io/name", component),
        ("app.kubernetes.io/part-of", "ambit"),
        ("app.kubernetes.io/managed-by", FIELD_MANAGER),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

pub(crate) fn pull_policy(p: ImagePullPolicy) -> String {
    match p {
        ImagePullPolicy::Always => "Always",
        ImagePullPolicy::IfNotPresent => "IfNotPresent",
        ImagePullPolicy::Never => "Never",
    }
    .to_string()
}

pub(crate) fn log_level(component: Option<LogLevel>, mesh: LogLevel) -> &'static str {
    match component.unwrap_or(mesh) {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    }
}

/// The tag of an image reference (`latest` when it has none; the digest when pinned by one).
pub fn image_tag(image: &str) -> String {
    if let Some((_, digest)) = image.split_once('@') {
        return digest.to_string();
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.split_once(':') {
        Some((_, tag)) => tag.to_string(),
        None => "latest".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_tags() {
        assert_eq!(image_tag("ghcr.io/ambit-mesh/ztunnel:0.1.0"), "0.1.0");
        assert_eq!(image_tag("localhost:5000/ztunnel"), "latest");
        assert_eq!(image_tag("reg/zt@sha256:abc"), "sha256:abc");
    }
}
