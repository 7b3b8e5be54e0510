//! What a proxy holds from the config stream: the resources and the typed config built from
//! them. An update that changes a few resources is edited into the held state (with an undo
//! log, for when the result is refused) instead of decoding every resource again: a one-pod
//! change costs a copy of the config's lists of pointers, not a rebuild of 10,000 workloads.

use std::ops::Bound;
use std::sync::Arc;

use super::proto::Update;
use super::resources::{Resource, ResourceError, ResourceSet, GLOBALS};
use crate::meshconfig::{ListEdit, MeshConfig};

/// Updates touching more than this fraction of the held resources are rebuilt in full.
const INCREMENTAL_MAX_FRACTION: usize = 8;

/// The resources a proxy holds and the config they assemble into.
#[derive(Clone, Debug)]
pub struct Held {
    pub resources: ResourceSet,
    pub config: Arc<MeshConfig>,
}

/// Why an update was not applied (the proxy NACKs it and keeps what it held).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Resources(#[from] ResourceError),
    #[error("{0}")]
    Invalid(String),
}

impl Held {
    pub fn empty() -> Result<Held, ResourceError> {
        let resources = ResourceSet::default();
        let config = Arc::new(resources.to_config()?);
        Ok(Held { resources, config })
    }

    /// Applies `update` when the config it makes passes `validate`, and returns that config;
    /// otherwise everything stays as it was.
    pub fn apply(
        &mut self,
        update: &Update,
        validate: impl FnOnce(&MeshConfig) -> Result<(), String>,
    ) -> Result<Arc<MeshConfig>, ApplyError> {
        let touched = update.upserts.len() + update.removes.len();
        let globals_changed = update.upserts.iter().any(|r| r.key == GLOBALS)
            || update.removes.iter().any(|k| k == GLOBALS);
        if update.full
            || globals_changed
            || touched * INCREMENTAL_MAX_FRACTION > self.resources.0.len()
        {
            let mut resources = self.resources.clone();
            resources.apply(&update.upserts, &update.removes, update.full);
            let config = resources.to_config()?;
            validate(&config).map_err(ApplyError::Invalid)?;
            self.resources = resources;
            self.config = Arc::new(config);
            return Ok(self.config.clone());
        }
        let mut undo = Vec::new();
        let edited = self
            .edit(update, &mut undo)
            .map_err(ApplyError::from)
            .and_then(|config| {
                validate(&config)
                    .map(|()| config)
                    .map_err(ApplyError::Invalid)
            });
        match edited {
            Ok(config) => {
                self.config = Arc::new(config);
                Ok(self.config.clone())
            }
            Err(e) => {
                // Put back what was replaced or removed, newest change first.
                for (key, previous) in undo.into_iter().rev() {
                    match previous {
                        Some(r) => self.resources.0.insert(key, r),
                        None => self.resources.0.remove(&key),
                    };
                }
                Err(e)
            }
        }
    }

    /// Edits the changed elements into a copy of the config (cheap: workloads are shared),
    /// changing the held resources in place and recording in `undo` what each key held.
    /// Lists stay in key order, the canonical form [`ResourceSet::to_config`] produces.
    fn edit(
        &mut self,
        update: &Update,
        undo: &mut Vec<(String, Option<Arc<Resource>>)>,
    ) -> Result<MeshConfig, ResourceError> {
        let resources = &mut self.resources;
        let mut config = MeshConfig::clone(&self.config);
        for key in &update.removes {
            let Some(kind) = resources.0.get(key).map(|r| r.kind.clone()) else {
                continue;
            };
            let index = position(resources, &kind, key);
            edit(&mut config, &kind, index, ListEdit::Remove)?;
            undo.push((key.clone(), resources.0.remove(key)));
        }
        for r in &update.upserts {
            r.check_kind()?;
            let previous = resources
                .0
                .insert(r.key.clone(), Arc::new(Resource::clone(r)));
            let existed = previous.is_some();
            undo.push((r.key.clone(), previous));
            let index = position(resources, &r.kind, &r.key);
            let change = if existed {
                ListEdit::Replace(&r.body)
            } else {
                ListEdit::Insert(&r.body)
            };
            edit(&mut config, &r.kind, index, change)?;
        }
        Ok(config)
    }
}

/// Position of `key` among the resources of `kind` (their keys all start with `kind/`).
fn position(set: &ResourceSet, kind: &str, key: &str) -> usize {
    let first = format!("{kind}/");
    set.0
        .range::<str, _>((Bound::Included(first.as_str()), Bound::Excluded(key)))
        .count()
}

fn edit(
    config: &mut MeshConfig,
    kind: &str,
    index: usize,
    change: ListEdit<'_>,
) -> Result<(), ResourceError> {
    match config.edit_list(kind, index, change) {
        Ok(true) => Ok(()),
        Ok(false) => Err(ResourceError::UnknownKind(kind.to_string())),
        Err(e) => Err(ResourceError::Assemble(e)),
    }
}

#[cfg(test)]
#[path = "held_tests.rs"]
mod tests;
