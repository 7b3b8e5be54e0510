//! In-process access to the server's objects, for tests and the sandbox. Writes go through
//! the same code as API requests (validation, resourceVersions, watch events, GC).

use crate::apply::Part;
use crate::delete::DeleteOptions;
use crate::error::ApiError;
use crate::resources::ResourceType;
use crate::selector::{FieldSelector, LabelSelector};
use crate::server::Shared;
use crate::write::obj_key;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

fn version_of(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or(api_version, |(_, v)| v)
}

impl Store {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Store { shared }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    fn type_of(&self, api_version: &str, kind: &str) -> Result<ResourceType, ApiError> {
        self.shared
            .lock()
            .registry
            .by_kind(api_version, kind)
            .cloned()
            .ok_or_else(|| {
                ApiError::not_found(
                    "resourcetypes",
                    &format!("{api_version}/{kind} (register its CRD first)"),
                )
            })
    }

    fn type_of_obj(&self, obj: &Value) -> Result<ResourceType, ApiError> {
        let av = obj.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = obj.get("kind").and_then(Value::as_str).unwrap_or("");
        self.type_of(av, kind)
    }

    pub fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Value> {
        let rt = self.type_of(api_version, kind).ok()?;
        self.shared
            .lock()
            .get(&obj_key(&rt, namespace, name))
            .cloned()
    }

    /// Objects of a kind, all namespaces when `namespace` is `None`.
    pub fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Value> {
        let Ok(rt) = self.type_of(api_version, kind) else {
            return Vec::new();
        };
        self.shared.lock().list(
            &rt.key(),
            namespace,
            &LabelSelector::default(),
            &FieldSelector::default(),
        )
    }

    /// Creates an object from its `apiVersion`/`kind`/`metadata.namespace`, keeping `status`
    /// (the HTTP API drops it for types with a status subresource).
    pub fn create(&self, obj: Value) -> Result<Value, ApiError> {
        let rt = self.type_of_obj(&obj)?;
        let av = obj["apiVersion"].as_str().unwrap_or("").to_string();
        let ns = crate::util::meta_str(&obj, "namespace").map(String::from);
        self.shared
            .lock()
            .create(&rt, version_of(&av), ns.as_deref(), obj, true)
    }

    /// Creates or unconditionally replaces an object, status included.
    pub fn upsert(&self, obj: Value) -> Result<Value, ApiError> {
        let rt = self.type_of_obj(&obj)?;
        let av = obj["apiVersion"].as_str().unwrap_or("").to_string();
        let ns = crate::util::meta_str(&obj, "namespace").map(String::from);
        let name = crate::util::meta_str(&obj, "name")
            .unwrap_or("")
            .to_string();
        let mut st = self.shared.lock();
        if st.get(&obj_key(&rt, ns.as_deref(), &name)).is_none() {
            return st.create(&rt, version_of(&av), ns.as_deref(), obj, true);
        }
        let mut main = obj.clone();
        if let Some(m) = main.pointer_mut("/metadata").and_then(Value::as_object_mut) {
            m.remove("resourceVersion");
        }
        let updated = st.replace(&rt, version_of(&av), ns.as_deref(), &name, main, Part::Main)?;
        if rt.status && updated.get("status") != obj.get("status") {
            let mut status = obj;
            if let Some(m) = status
                .pointer_mut("/metadata")
                .and_then(Value::as_object_mut)
            {
                m.remove("resourceVersion");
            }
            return st.replace(
                &rt,
                version_of(&av),
                ns.as_deref(),
                &name,
                status,
                Part::Status,
            );
        }
        Ok(updated)
    }

    /// Deletes like a default (background) API delete; finalizers are honoured.
    pub fn delete(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        let rt = self.type_of(api_version, kind)?;
        let key = obj_key(&rt, namespace, name);
        self.shared
            .lock()
            .delete(&rt, &key, &DeleteOptions::default())
            .map(|d| d.obj)
    }

    /// The current (last issued) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().rv()
    }

    /// Forgets all watch history: resuming a watch from any earlier resourceVersion gets 410.
    pub fn compact(&self) {
        self.shared.lock().compact();
    }

    /// Ends every open watch stream, as an API server restart or watch timeout would.
    pub fn close_watches(&self) {
        self.shared.lock().close_watches();
    }

    pub fn watcher_count(&self) -> usize {
        self.shared.lock().watcher_count()
    }

    /// Mints a ServiceAccount token without the 10-minute minimum of the HTTP API
    /// (tests use short ones to check expiry). `pod` binds the token to that pod.
    pub fn mint_token(
        &self,
        namespace: &str,
        service_account: &str,
        pod: Option<&str>,
        ttl: Duration,
    ) -> Result<String, ApiError> {
        self.shared
            .lock()
            .mint_token(
                namespace,
                service_account,
                pod.map(|p| (p, None)),
                ttl,
                Vec::new(),
            )
            .map(|(t, _)| t)
    }
}
