//! The streamed resource model: a [`MeshConfig`] cut into individually versioned resources so
//! only what changed crosses the wire.
//!
//! Generic over MeshConfig's shape: every list field becomes one resource per element, of
//! kind = the field's JSON name, keyed `kind/namespace/name`; every other field goes into the
//! single `globals` resource. A list added to MeshConfig later streams without any protocol
//! change. Reassembly orders each list by key (the canonical form both sides agree on).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::meshconfig::MeshConfig;

/// Kind (and key) of the resource holding MeshConfig's scalar fields.
pub const GLOBALS: &str = "globals";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub kind: String,
    pub key: String,
    /// Hash of `body`: equal versions mean equal content.
    pub version: String,
    pub body: Value,
}

#[derive(Debug, thiserror::Error)]
pub enum ResourceError {
    #[error("mesh config did not serialize to a JSON object: {0}")]
    Shape(String),
    #[error("resource {key:?}: its kind {kind:?} does not match its key; expected {kind}/...")]
    KindMismatch { key: String, kind: String },
    #[error("resources do not assemble into a mesh config (an older proxy receiving a kind it does not know fails here too): {0}")]
    Assemble(serde_json::Error),
}

/// 64-bit FNV-1a: stable across builds and platforms, so versions survive restarts.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn version_of(body: &Value) -> String {
    format!("{:016x}", fnv1a(&serde_json::to_vec(body).expect("JSON")))
}

impl Resource {
    pub fn new(kind: &str, key: String, body: Value) -> Self {
        Self {
            kind: kind.to_string(),
            version: version_of(&body),
            key,
            body,
        }
    }
}

/// A full state as resources, by key.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceSet(pub BTreeMap<String, Resource>);

fn element_key(kind: &str, elem: &Value) -> String {
    let field = |f: &str| elem.get(f).and_then(Value::as_str);
    match (field("namespace"), field("name")) {
        (Some(ns), Some(name)) => format!("{kind}/{ns}/{name}"),
        (None, Some(name)) => format!("{kind}/{name}"),
        _ => format!("{kind}/#{}", version_of(elem)),
    }
}

impl ResourceSet {
    pub fn from_config(cfg: &MeshConfig) -> Result<Self, ResourceError> {
        let value = serde_json::to_value(cfg).map_err(|e| ResourceError::Shape(e.to_string()))?;
        let Value::Object(fields) = value else {
            return Err(ResourceError::Shape(format!("got {value}")));
        };
        let mut out = BTreeMap::new();
        let mut globals = Map::new();
        for (field, v) in fields {
            let Value::Array(items) = v else {
                globals.insert(field, v);
                continue;
            };
            // An empty placeholder keeps the list present when it has no resources.
            globals.insert(field.clone(), Value::Array(vec![]));
            for item in items {
                let base = element_key(&field, &item);
                let mut key = base.clone();
                // Duplicates (invalid upstream, but never silently merged): #2, #3, ...
                let mut n = 1;
                while out.contains_key(&key) {
                    n += 1;
                    key = format!("{base}#{n}");
                }
                out.insert(key.clone(), Resource::new(&field, key, item));
            }
        }
        let g = Resource::new(GLOBALS, GLOBALS.to_string(), Value::Object(globals));
        out.insert(GLOBALS.to_string(), g);
        Ok(Self(out))
    }

    /// Reassembles the config; lists come out in key order.
    pub fn to_config(&self) -> Result<MeshConfig, ResourceError> {
        let mut obj = match self.0.get(GLOBALS).map(|g| &g.body) {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        for r in self.0.values().filter(|r| r.kind != GLOBALS) {
            if !r.key.starts_with(&format!("{}/", r.kind)) {
                return Err(ResourceError::KindMismatch {
                    key: r.key.clone(),
                    kind: r.kind.clone(),
                });
            }
            let list = obj
                .entry(r.kind.clone())
                .or_insert_with(|| Value::Array(vec![]));
            match list {
                Value::Array(items) => items.push(r.body.clone()),
                _ => {
                    return Err(ResourceError::KindMismatch {
                        key: r.key.clone(),
                        kind: r.kind.clone(),
                    })
                }
            }
        }
        serde_json::from_value(Value::Object(obj)).map_err(ResourceError::Assemble)
    }

    /// Key -> version of everything held (what a reconnecting proxy reports).
    pub fn versions(&self) -> BTreeMap<String, String> {
        self.0
            .iter()
            .map(|(k, r)| (k.clone(), r.version.clone()))
            .collect()
    }

    /// Applies a change: `full` replaces everything, otherwise upserts and removes by key.
    pub fn apply(&mut self, upserts: &[Resource], removes: &[String], full: bool) {
        if full {
            self.0.clear();
        }
        for key in removes {
            self.0.remove(key);
        }
        for r in upserts {
            self.0.insert(r.key.clone(), r.clone());
        }
    }
}

/// What turns a holder of `known` into a holder of `target`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Delta {
    pub upserts: Vec<Resource>,
    pub removes: Vec<String>,
}

impl Delta {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removes.is_empty()
    }
}

pub fn delta(known: &BTreeMap<String, String>, target: &ResourceSet) -> Delta {
    let upserts = target
        .0
        .values()
        .filter(|r| known.get(&r.key) != Some(&r.version))
        .cloned()
        .collect();
    let removes = known
        .keys()
        .filter(|k| !target.0.contains_key(*k))
        .cloned()
        .collect();
    Delta { upserts, removes }
}

/// `cfg` with every list in key order: what a proxy reassembles from the stream.
pub fn canonical(cfg: &MeshConfig) -> Result<MeshConfig, ResourceError> {
    ResourceSet::from_config(cfg)?.to_config()
}

#[cfg(test)]
#[path = "resources_tests.rs"]
mod tests;
