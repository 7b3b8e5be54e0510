//! Initial objects, and the optional JSON state file (`--state FILE`) that lets a sandbox
//! keep its cluster across restarts. Watch history and tokens are not saved.

use crate::error::StartError;
use crate::resources::{crd_key, ResourceType};
use crate::state::{ObjKey, State};
use crate::util::meta_str;
use serde_json::{json, Value};
use std::path::Path;

/// Namespaces every cluster starts with.
pub const INITIAL_NAMESPACES: &[&str] =
    &["default", "kube-system", "kube-public", "kube-node-lease"];

pub fn seed(state: &mut State) {
    let rt = state
        .registry
        .lookup("", "v1", "namespaces")
        .cloned()
        .expect("namespaces are built in");
    for ns in INITIAL_NAMESPACES {
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
        state
            .create(&rt, "v1", None, obj, false)
            .expect("initial namespaces are valid and new");
    }
}

pub fn save(state: &State, path: &Path) -> std::io::Result<()> {
    let objects: Vec<&Value> = state.objects.values().collect();
    let doc = json!({"resourceVersion": state.rv(), "objects": objects});
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)?;
    std::fs::rename(tmp, path)
}

pub fn load(state: &mut State, path: &Path) -> Result<(), StartError> {
    let err = |reason: String| StartError::State {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
    let doc: Value = serde_json::from_slice(&bytes).map_err(|e| err(format!("not JSON: {e}")))?;
    let rv = doc
        .get("resourceVersion")
        .and_then(Value::as_u64)
        .ok_or_else(|| err("resourceVersion missing".into()))?;
    let objects = doc
        .get("objects")
        .and_then(Value::as_array)
        .ok_or_else(|| err("objects missing".into()))?;
    // CRDs first, so their custom resources have a type to land in.
    let (crds, rest): (Vec<&Value>, Vec<&Value>) = objects
        .iter()
        .partition(|o| o.get("kind").and_then(Value::as_str) == Some("CustomResourceDefinition"));
    for o in crds.into_iter().chain(rest) {
        let av = o.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        let kind = o.get("kind").and_then(Value::as_str).unwrap_or("");
        let rt = state
            .registry
            .by_kind(av, kind)
            .cloned()
            .ok_or_else(|| err(format!("object of unknown type {av}/{kind}")))?;
        let name =
            meta_str(o, "name").ok_or_else(|| err(format!("a {kind} without metadata.name")))?;
        let ns = if rt.namespaced {
            meta_str(o, "namespace").unwrap_or("")
        } else {
            ""
        };
        let key = ObjKey {
            res: rt.key(),
            ns: ns.to_string(),
            name: name.to_string(),
        };
        if rt.key() == crd_key() {
            let t = ResourceType::from_crd(o).map_err(|e| err(format!("CRD {name}: {e}")))?;
            state
                .registry
                .register(t)
                .map_err(|e| err(format!("CRD {name}: {e}")))?;
        }
        state.restore_object(key, o.clone());
    }
    state.restore_rv(rv);
    Ok(())
}
