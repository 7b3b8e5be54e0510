//! Response shapes: full objects, lists, and the metadata-only forms
//! (`as=PartialObjectMetadata[List]`) kube's metadata API asks for.

use crate::resources::ResourceType;
use serde_json::{json, Value};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accept {
    Full,
    Metadata,
    MetadataList,
    AggregatedDiscovery,
}

impl Accept {
    /// Anything we cannot produce (protobuf, tables) is answered with plain JSON.
    pub fn parse(header: &str) -> Self {
        if header.contains("as=APIGroupDiscoveryList") {
            Accept::AggregatedDiscovery
        } else if header.contains("as=PartialObjectMetadataList") {
            Accept::MetadataList
        } else if header.contains("as=PartialObjectMetadata") {
            Accept::Metadata
        } else {
            Accept::Full
        }
    }

    fn metadata_only(self) -> bool {
        matches!(self, Accept::Metadata | Accept::MetadataList)
    }
}

/// Sets the apiVersion the client asked for (custom types may be served in several versions).
pub fn render_object(mut obj: Value, rt: &ResourceType, version: &str, accept: Accept) -> Value {
    if accept.metadata_only() {
        return json!({
            "apiVersion": "meta.k8s.io/v1",
            "kind": "PartialObjectMetadata",
            "metadata": obj.get("metadata").cloned().unwrap_or(json!({})),
        });
    }
    if let Some(m) = obj.as_object_mut() {
        m.insert("apiVersion".into(), json!(rt.api_version(version)));
        m.insert("kind".into(), json!(rt.kind));
    }
    obj
}

pub fn render_list(
    items: Vec<Value>,
    rv: u64,
    rt: &ResourceType,
    version: &str,
    accept: Accept,
) -> Value {
    let items: Vec<Value> = items
        .into_iter()
        .map(|o| render_object(o, rt, version, accept))
        .collect();
    let (api_version, kind) = if accept.metadata_only() {
        (
            "meta.k8s.io/v1".to_string(),
            "PartialObjectMetadataList".to_string(),
        )
    } else {
        (rt.api_version(version), rt.list_kind.clone())
    };
    json!({"apiVersion": api_version, "kind": kind, "metadata": {"resourceVersion": rv.to_string()}, "items": items})
}
