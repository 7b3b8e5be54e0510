//! The table of served resource types: built-in kinds plus types registered by
//! CustomResourceDefinitions.

use serde_json::Value;
use std::collections::BTreeMap;

/// Identifies stored objects of one type, independent of the version they are read in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourceKey {
    pub group: String,
    pub plural: String,
}

impl ResourceKey {
    pub fn new(group: &str, plural: &str) -> Self {
        ResourceKey {
            group: group.to_string(),
            plural: plural.to_string(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ResourceType {
    pub group: String,
    /// Served versions; the first is the preferred one.
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub list_kind: String,
    pub namespaced: bool,
    /// Has a `/status` subresource.
    pub status: bool,
    pub short_names: Vec<String>,
    /// Registered by a CustomResourceDefinition.
    pub custom: bool,
    /// Not stored: only `create` (TokenReview).
    pub create_only: bool,
}

pub const VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

impl ResourceType {
    pub fn key(&self) -> ResourceKey {
        ResourceKey::new(&self.group, &self.plural)
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{}", self.group, version)
        }
    }

    pub fn preferred_version(&self) -> &str {
        &self.versions[0]
    }

    /// How errors name the type: `pods`, `deployments.apps`.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    pub fn verbs(&self) -> Vec<&'static str> {
        if self.create_only {
            vec!["create"]
        } else {
            VERBS.to_vec()
        }
    }

    fn builtin(
        group: &str,
        plural: &str,
        kind: &str,
        namespaced: bool,
        status: bool,
        short: &[&str],
    ) -> Self {
        let singular = kind.to_lowercase();
        ResourceType {
            group: group.to_string(),
            versions: vec!["v1".to_string()],
            plural: plural.to_string(),
            singular,
            kind: kind.to_string(),
            list_kind: format!("{kind}List"),
            namespaced,
            status,
            short_names: short.iter().map(|s| s.to_string()).collect(),
            custom: false,
            create_only: false,
        }
    }

    /// Reads group, names, scope, versions and the status subresource from a CRD object.
    pub fn from_crd(crd: &Value) -> Result<Self, String> {
        let spec = crd.get("spec").ok_or("spec: Required value")?;
        let s = |v: Option<&Value>, field: &str| -> Result<String, String> {
            v.and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .ok_or(format!("{field}: Required value"))
        };
        let group = s(spec.get("group"), "spec.group")?;
        let names = spec.get("names").ok_or("spec.names: Required value")?;
        let plural = s(names.get("plural"), "spec.names.plural")?;
        let kind = s(names.get("kind"), "spec.names.kind")?;
        let singular =
            s(names.get("singular"), "spec.names.singular").unwrap_or_else(|_| kind.to_lowercase());
        let list_kind = s(names.get("listKind"), "spec.names.listKind")
            .unwrap_or_else(|_| format!("{kind}List"));
        let namespaced = match spec.get("scope").and_then(Value::as_str) {
            Some("Namespaced") => true,
            Some("Cluster") => false,
            other => return Err(format!("spec.scope: Unsupported value: {other:?}: supported values: \"Cluster\", \"Namespaced\"")),
        };
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        if name != format!("{plural}.{group}") {
            return Err(format!("metadata.name: Invalid value: \"{name}\": must be spec.names.plural+\".\"+spec.group"));
        }
        let versions = spec
            .get("versions")
            .and_then(Value::as_array)
            .ok_or("spec.versions: Required value")?;
        let mut served = Vec::new();
        let mut storage = None;
        let mut status = false;
        for v in versions {
            let vname = s(v.get("name"), "spec.versions[].name")?;
            if v.get("storage").and_then(Value::as_bool) == Some(true) {
                storage = Some(vname.clone());
            }
            if v.get("served").and_then(Value::as_bool) == Some(true) {
                served.push(vname);
            }
            // One flag per type (not per version): a simplification documented in docs/apisim.md.
            if v.pointer("/subresources/status").is_some() {
                status = true;
            }
        }
        if storage.is_none() {
            return Err("spec.versions: Invalid value: must have exactly one version marked as storage version".into());
        }
        if served.is_empty() {
            return Err(
                "spec.versions: Invalid value: must have at least one served version".into(),
            );
        }
        let short_names = names
            .get("shortNames")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        Ok(ResourceType {
            group,
            versions: served,
            plural,
            singular,
            kind,
            list_kind,
            namespaced,
            status,
            short_names,
            custom: true,
            create_only: false,
        })
    }
}

/// All served types.
#[derive(Clone, Debug)]
pub struct Registry {
    types: BTreeMap<ResourceKey, ResourceType>,
}

pub fn crd_key() -> ResourceKey {
    ResourceKey::new("apiextensions.k8s.io", "customresourcedefinitions")
}

impl Registry {
    pub fn builtin() -> Self {
        let b = ResourceType::builtin;
        let mut token_review = b(
            "authentication.k8s.io",
            "tokenreviews",
            "TokenReview",
            false,
            false,
            &[],
        );
        token_review.create_only = true;
        let all = vec![
            b("", "namespaces", "Namespace", false, true, &["ns"]),
            b("", "nodes", "Node", false, true, &["no"]),
            b("", "pods", "Pod", true, true, &["po"]),
            b("", "services", "Service", true, true, &["svc"]),
            b("", "endpoints", "Endpoints", true, false, &["ep"]),
            b(
                "",
                "serviceaccounts",
                "ServiceAccount",
                true,
                false,
                &["sa"],
            ),
            b("", "configmaps", "ConfigMap", true, false, &["cm"]),
            b("", "secrets", "Secret", true, false, &[]),
            b("", "events", "Event", true, false, &["ev"]),
            b("apps", "deployments", "Deployment", true, true, &["deploy"]),
            b("apps", "daemonsets", "DaemonSet", true, true, &["ds"]),
            b("apps", "replicasets", "ReplicaSet", true, true, &["rs"]),
            b(
                "discovery.k8s.io",
                "endpointslices",
                "EndpointSlice",
                true,
                false,
                &[],
            ),
            b("coordination.k8s.io", "leases", "Lease", true, false, &[]),
            b(
                "rbac.authorization.k8s.io",
                "roles",
                "Role",
                true,
                false,
                &[],
            ),
            b(
                "rbac.authorization.k8s.io",
                "rolebindings",
                "RoleBinding",
                true,
                false,
                &[],
            ),
            b(
                "rbac.authorization.k8s.io",
                "clusterroles",
                "ClusterRole",
                false,
                false,
                &[],
            ),
            b(
                "rbac.authorization.k8s.io",
                "clusterrolebindings",
                "ClusterRoleBinding",
                false,
                false,
                &[],
            ),
            b(
                "policy",
                "poddisruptionbudgets",
                "PodDisruptionBudget",
                true,
                true,
                &["pdb"],
            ),
            b("events.k8s.io", "events", "Event", true, false, &["ev"]),
            b(
                "apiextensions.k8s.io",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
                true,
                &["crd", "crds"],
            ),
            token_review,
        ];
        Registry {
            types: all.into_iter().map(|t| (t.key(), t)).collect(),
        }
    }

    /// The type served at `/{group}/{version}/{plural}`.
    pub fn lookup(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .get(&ResourceKey::new(group, plural))
            .filter(|t| t.versions.iter().any(|v| v == version))
    }

    /// The type of an object with this `apiVersion` and `kind`.
    pub fn by_kind(&self, api_version: &str, kind: &str) -> Option<&ResourceType> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.types
            .values()
            .find(|t| t.group == group && t.kind == kind && t.versions.iter().any(|v| v == version))
    }

    pub fn all(&self) -> impl Iterator<Item = &ResourceType> {
        self.types.values()
    }

    /// Registers (or updates) a custom type. Built-in types cannot be shadowed.
    pub fn register(&mut self, t: ResourceType) -> Result<(), String> {
        if let Some(existing) = self.types.get(&t.key()) {
            if !existing.custom {
                return Err(format!(
                    "{} is a built-in type and cannot be redefined",
                    t.qualified()
                ));
            }
        }
        self.types.insert(t.key(), t);
        Ok(())
    }

    pub fn unregister(&mut self, key: &ResourceKey) -> Option<ResourceType> {
        match self.types.get(key) {
            Some(t) if t.custom => self.types.remove(key),
            _ => None,
        }
    }

    /// Groups with their versions, core group excluded, in a stable order.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for t in self.types.values().filter(|t| !t.group.is_empty()) {
            match out.iter_mut().find(|(g, _)| *g == t.group) {
                Some((_, vs)) => {
                    for v in &t.versions {
                        if !vs.contains(v) {
                            vs.push(v.clone());
                        }
                    }
                }
                None => out.push((t.group.clone(), t.versions.clone())),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn crd() -> Value {
        json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [
                    {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}},
                    {"name": "v1beta1", "served": false, "storage": false}
                ]
            }
        })
    }

    #[test]
    fn crd_registration_round_trip() {
        let mut r = Registry::builtin();
        let t = ResourceType::from_crd(&crd()).unwrap();
        assert_eq!(t.versions, vec!["v1"]);
        assert!(t.status && t.namespaced && t.custom);
        assert_eq!(t.list_kind, "WidgetList");
        r.register(t).unwrap();
        assert!(r.lookup("example.com", "v1", "widgets").is_some());
        assert!(r.lookup("example.com", "v1beta1", "widgets").is_none());
        assert_eq!(
            r.by_kind("example.com/v1", "Widget").unwrap().plural,
            "widgets"
        );
        assert!(r.groups().iter().any(|(g, _)| g == "example.com"));
        assert!(r
            .unregister(&ResourceKey::new("example.com", "widgets"))
            .is_some());
        assert!(r.lookup("example.com", "v1", "widgets").is_none());
    }

    #[test]
    fn crd_validation_names_the_field() {
        let mut bad = crd();
        bad["metadata"]["name"] = json!("wrong");
        assert!(ResourceType::from_crd(&bad)
            .unwrap_err()
            .contains("metadata.name"));
        let mut bad = crd();
        bad["spec"]["scope"] = json!("Galaxy");
        assert!(ResourceType::from_crd(&bad)
            .unwrap_err()
            .contains("spec.scope"));
    }

    #[test]
    fn builtins_cannot_be_shadowed() {
        let mut r = Registry::builtin();
        let mut t = ResourceType::from_crd(&crd()).unwrap();
        t.group = String::new();
        t.plural = "pods".into();
        assert!(r.register(t).is_err());
        assert!(!r.lookup("", "v1", "pods").unwrap().custom);
    }
}
