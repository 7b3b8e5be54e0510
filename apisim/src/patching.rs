//! PATCH in its four formats, including server-side apply.

use crate::apply::{self, Part};
use crate::error::ApiError;
use crate::patch;
use crate::resources::ResourceType;
use crate::state::State;
use crate::util::{meta_mut, meta_str};
use crate::write::{check_type_meta, merge_for_update, obj_key};
use serde_json::{json, Value};

/// The patch formats the server accepts, by Content-Type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchKind {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        match ct.split(';').next().unwrap_or("").trim() {
            "application/json-patch+json" => Some(PatchKind::Json),
            "application/merge-patch+json" => Some(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Some(PatchKind::Strategic),
            "application/apply-patch+yaml" => Some(PatchKind::Apply),
            _ => None,
        }
    }
}

impl State {
    #[allow(clippy::too_many_arguments)]
    pub fn patch(
        &mut self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        part: Part,
        manager: Option<&str>,
        force: bool,
    ) -> Result<(Value, bool), ApiError> {
        let out = self.patch_inner(rt, version, ns, name, kind, body, part, manager, force);
        self.process_gc();
        out
    }

    #[allow(clippy::too_many_arguments)]
    fn patch_inner(
        &mut self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        kind: PatchKind,
        body: &[u8],
        part: Part,
        manager: Option<&str>,
        force: bool,
    ) -> Result<(Value, bool), ApiError> {
        if kind == PatchKind::Strategic && rt.custom {
            return Err(ApiError::unsupported_media_type(format!(
                "strategic merge patch is not supported for custom resources ({}); use a merge or JSON patch",
                rt.qualified()
            )));
        }
        if kind == PatchKind::Apply {
            return self.apply(rt, version, ns, name, body, part, manager, force);
        }
        let key = obj_key(rt, ns, name);
        let old = self.get_or_404(rt, &key)?;
        let p: Value = serde_json::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the patch body for {} \"{name}\" is not JSON: {e}",
                rt.qualified()
            ))
        })?;
        let mut target = old.clone();
        match kind {
            PatchKind::Merge => patch::merge_patch(&mut target, &p),
            PatchKind::Strategic => patch::strategic_merge(&mut target, &p),
            PatchKind::Json => patch::json_patch(&mut target, &p)
                .map_err(|e| ApiError::invalid(&rt.kind, name, &e))?,
            PatchKind::Apply => unreachable!("handled above"),
        }
        check_type_meta(rt, version, &target)?;
        self.check_identity(rt, ns, name, &target)?;
        // A resourceVersion in the patch is a precondition, as with the real server.
        if meta_str(&target, "resourceVersion") != meta_str(&old, "resourceVersion") {
            return Err(ApiError::stale(&rt.qualified(), name));
        }
        let new = merge_for_update(rt, version, &old, target, part, false);
        Ok((self.finish_update(rt, key, old, new)?, false))
    }

    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        body: &[u8],
        part: Part,
        manager: Option<&str>,
        force: bool,
    ) -> Result<(Value, bool), ApiError> {
        let manager = manager.filter(|m| !m.is_empty()).ok_or_else(|| {
            ApiError::invalid(
                "PatchOptions",
                "",
                "fieldManager: Required value: is required for apply patch",
            )
        })?;
        let config: Value = serde_yaml::from_slice(body).map_err(|e| {
            ApiError::bad_request(format!(
                "the apply patch for {} \"{name}\" is not YAML or JSON: {e}",
                rt.qualified()
            ))
        })?;
        if config.get("apiVersion").is_none() || config.get("kind").is_none() {
            return Err(ApiError::bad_request(format!(
                "the apply patch for {} \"{name}\" must set apiVersion and kind",
                rt.qualified()
            )));
        }
        check_type_meta(rt, version, &config)?;
        self.check_identity(rt, ns, name, &config)?;
        let key = obj_key(rt, ns, name);
        let conflict = |msg: String| ApiError::new(409, "Conflict", msg);
        match self.get(&key).cloned() {
            None if part == Part::Status => Err(ApiError::not_found(&rt.qualified(), name)),
            None => {
                let mut new = apply::apply(
                    &json!({}),
                    &config,
                    manager,
                    force,
                    part,
                    &rt.api_version(version),
                )
                .map_err(conflict)?;
                let m = meta_mut(&mut new);
                m.insert("name".into(), json!(name));
                if let Some(ns) = ns.filter(|_| rt.namespaced) {
                    m.insert("namespace".into(), json!(ns));
                }
                Ok((self.create_inner(rt, version, ns, &mut new, false)?, true))
            }
            Some(old) => {
                if meta_str(&config, "resourceVersion")
                    .is_some_and(|rv| Some(rv) != meta_str(&old, "resourceVersion"))
                {
                    return Err(ApiError::stale(&rt.qualified(), name));
                }
                let applied = apply::apply(
                    &old,
                    &config,
                    manager,
                    force,
                    part,
                    &rt.api_version(version),
                )
                .map_err(conflict)?;
                let new = merge_for_update(rt, version, &old, applied, part, true);
                Ok((self.finish_update(rt, key, old, new)?, false))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types() {
        assert_eq!(
            PatchKind::from_content_type("application/merge-patch+json; charset=utf-8"),
            Some(PatchKind::Merge)
        );
        assert_eq!(
            PatchKind::from_content_type("application/apply-patch+yaml"),
            Some(PatchKind::Apply)
        );
        assert_eq!(PatchKind::from_content_type("application/json"), None);
    }
}
