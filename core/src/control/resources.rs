//! The streamed resource model: a [`MeshConfig`] cut into individually versioned resources so
//! only what changed crosses the wire.
//!
//! Generic over MeshConfig's shape: every list field becomes one resource per element, of
//! kind = the field's JSON name, keyed `kind/namespace/name`; every other field goes into the
//! single `globals` resource. A list added to MeshConfig later streams without any protocol
//! change. Reassembly orders each list by key (the canonical form both sides agree on).

use std::collections::BTreeMap;
use std::sync::Arc;

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
    #[error("resources of kind {0:?} are not known to this proxy (the control plane is newer: upgrade the proxy)")]
    UnknownKind(String),
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
    /// Fails unless the key is `kind/...`.
    pub fn check_kind(&self) -> Result<(), ResourceError> {
        match self.key.strip_prefix(self.kind.as_str()) {
            Some(rest) if rest.starts_with('/') => Ok(()),
            _ => Err(ResourceError::KindMismatch {
                key: self.key.clone(),
                kind: self.kind.clone(),
            }),
        }
    }

    pub fn new(kind: &str, key: String, body: Value) -> Self {
        Self {
            kind: kind.to_string(),
            version: version_of(&body),
            key,
            body,
        }
    }
}

/// A full state as resources, by key. Resources are shared: sets that differ in a few
/// resources (successive versions, each waypoint's extension of the node config) share the
/// rest instead of copying it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ResourceSet(pub BTreeMap<String, Arc<Resource>>);

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
        let mut set = Self::default();
        let mut globals = Map::new();
        for (field, v) in fields {
            let Value::Array(items) = v else {
                globals.insert(field, v);
                continue;
            };
            // An empty placeholder keeps the list present when it has no resources.
            globals.insert(field.clone(), Value::Array(vec![]));
            set.push_items(&field, items);
        }
        let g = Resource::new(GLOBALS, GLOBALS.to_string(), Value::Object(globals));
        set.0.insert(GLOBALS.to_string(), Arc::new(g));
        Ok(set)
    }

    /// Appends elements to the list `kind`, exactly as if they had ended that list in the
    /// config this set was made from (a waypoint's config is the node config plus policies).
    pub fn extend_list<T: Serialize>(
        &mut self,
        kind: &str,
        items: &[T],
    ) -> Result<(), ResourceError> {
        let items = items
            .iter()
            .map(serde_json::to_value)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ResourceError::Shape(e.to_string()))?;
        self.push_items(kind, items);
        Ok(())
    }

    fn push_items(&mut self, kind: &str, items: Vec<Value>) {
        for item in items {
            let base = element_key(kind, &item);
            let mut key = base.clone();
            // Duplicates (invalid upstream, but never silently merged): #2, #3, ...
            let mut n = 1;
            while self.0.contains_key(&key) {
                n += 1;
                key = format!("{base}#{n}");
            }
            self.0
                .insert(key.clone(), Arc::new(Resource::new(kind, key, item)));
        }
    }

    /// Whether both hold the same keys at the same versions (cheap: no bodies compared).
    pub fn same_versions(&self, other: &ResourceSet) -> bool {
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0.iter())
                .all(|((ka, a), (kb, b))| ka == kb && (Arc::ptr_eq(a, b) || a.version == b.version))
    }

    /// Reassembles the config; lists come out in key order.
    pub fn to_config(&self) -> Result<MeshConfig, ResourceError> {
        let no_globals = Value::Object(Map::new());
        let globals = self.0.get(GLOBALS).map_or(&no_globals, |g| &g.body);
        let mut cfg = MeshConfig::deserialize(globals).map_err(ResourceError::Assemble)?;
        let mut lists: BTreeMap<&str, Vec<&Value>> = BTreeMap::new();
        for r in self.0.values().filter(|r| r.kind != GLOBALS) {
            r.check_kind()?;
            lists.entry(&r.kind).or_default().push(&r.body);
        }
        for (kind, items) in lists {
            if !cfg
                .set_list(kind, items.into_iter())
                .map_err(ResourceError::Assemble)?
            {
                return Err(ResourceError::UnknownKind(kind.to_string()));
            }
        }
        Ok(cfg)
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
            self.0.insert(r.key.clone(), Arc::new(r.clone()));
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
        .map(|r| Resource::clone(r))
        .collect();
    let removes = known
        .keys()
        .filter(|k| !target.0.contains_key(*k))
        .cloned()
        .collect();
    Delta { upserts, removes }
}

/// [`delta`] between two sets, in one ordered walk over both (the common case on the server:
/// every proxy holds a version it ACKed).
pub fn delta_between(from: &ResourceSet, to: &ResourceSet) -> Delta {
    use std::cmp::Ordering;
    let mut d = Delta::default();
    let (mut a, mut b) = (from.0.iter().peekable(), to.0.iter().peekable());
    loop {
        match (a.peek(), b.peek()) {
            (None, None) => return d,
            (Some((ka, _)), None) => {
                d.removes.push((*ka).clone());
                a.next();
            }
            (None, Some((_, rb))) => {
                d.upserts.push(Resource::clone(rb));
                b.next();
            }
            (Some((ka, ra)), Some((kb, rb))) => match ka.cmp(kb) {
                Ordering::Less => {
                    d.removes.push((*ka).clone());
                    a.next();
                }
                Ordering::Greater => {
                    d.upserts.push(Resource::clone(rb));
                    b.next();
                }
                Ordering::Equal => {
                    if !Arc::ptr_eq(ra, rb) && ra.version != rb.version {
                        d.upserts.push(Resource::clone(rb));
                    }
                    a.next();
                    b.next();
                }
            },
        }
    }
}

/// `cfg` with every list in key order: what a proxy reassembles from the stream.
pub fn canonical(cfg: &MeshConfig) -> Result<MeshConfig, ResourceError> {
    ResourceSet::from_config(cfg)?.to_config()
}

#[cfg(test)]
#[path = "resources_tests.rs"]
pub(crate) mod tests;
