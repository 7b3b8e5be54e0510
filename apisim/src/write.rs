//! Create and update (PUT), and the validation and bookkeeping every write shares.

use crate::apply::Part;
use crate::defaults;
use crate::error::ApiError;
use crate::resources::ResourceType;
use crate::state::{ObjKey, State};
use crate::util::{finalizers, meta_mut, meta_str, new_uid, now_rfc3339, random_suffix};
use serde_json::{json, Value};

pub fn obj_key(rt: &ResourceType, ns: Option<&str>, name: &str) -> ObjKey {
    ObjKey {
        res: rt.key(),
        ns: if rt.namespaced {
            ns.unwrap_or("").to_string()
        } else {
            String::new()
        },
        name: name.to_string(),
    }
}

pub(crate) fn check_type_meta(
    rt: &ResourceType,
    version: &str,
    obj: &Value,
) -> Result<(), ApiError> {
    if !obj.is_object() {
        return Err(ApiError::bad_request(format!(
            "the body of the request was not a JSON object for {}",
            rt.qualified()
        )));
    }
    let want = rt.api_version(version);
    if let Some(av) = obj.get("apiVersion").and_then(Value::as_str) {
        if av != want {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({want})"
            )));
        }
    }
    if let Some(k) = obj.get("kind").and_then(Value::as_str) {
        if k != rt.kind {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                rt.kind
            )));
        }
    }
    Ok(())
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn validate_name(rt: &ResourceType, name: &str) -> Result<(), ApiError> {
    let (ok, rule) = match (rt.group.as_str(), rt.plural.as_str()) {
        ("", "namespaces") => (is_dns_label(name), "a lowercase RFC 1123 label"),
        ("", "services") => (
            is_dns_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase()),
            "a DNS-1035 label",
        ),
        ("rbac.authorization.k8s.io", _) => (valid_path_segment(name), "a valid path segment"),
        _ if rt.custom => (valid_path_segment(name), "a valid path segment"),
        _ => (is_dns_subdomain(name), "a lowercase RFC 1123 subdomain"),
    };
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(
            &rt.kind,
            name,
            &format!("metadata.name: Invalid value: \"{name}\": must be {rule}"),
        ))
    }
}

fn valid_path_segment(s: &str) -> bool {
    !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('%')
}

/// Everything outside metadata (and status, for types with a status subresource).
fn generation_relevant(rt: &ResourceType, v: &Value) -> Value {
    let mut c = v.clone();
    if let Some(m) = c.as_object_mut() {
        m.remove("metadata");
        if rt.status {
            m.remove("status");
        }
    }
    c
}

impl State {
    /// Checks that the namespace of a new namespaced object exists and is not terminating.
    fn check_namespace(&self, rt: &ResourceType, ns: &str, name: &str) -> Result<(), ApiError> {
        let key = ObjKey {
            res: crate::resources::ResourceKey::new("", "namespaces"),
            ns: String::new(),
            name: ns.to_string(),
        };
        match self.get(&key) {
            None => Err(ApiError::not_found("namespaces", ns)),
            Some(n) if meta_str(n, "deletionTimestamp").is_some() => Err(ApiError::forbidden(
                &rt.qualified(),
                name,
                &format!(
                    "unable to create new content in namespace {ns} because it is being terminated"
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    fn resolve_ns(
        &self,
        rt: &ResourceType,
        url_ns: Option<&str>,
        obj: &Value,
    ) -> Result<String, ApiError> {
        let body_ns = meta_str(obj, "namespace").filter(|s| !s.is_empty());
        if !rt.namespaced {
            return Ok(String::new());
        }
        let ns = url_ns.ok_or_else(|| {
            ApiError::method_not_allowed(format!(
                "{} must be written in a namespace",
                rt.qualified()
            ))
        })?;
        if body_ns.is_some_and(|b| b != ns) {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        Ok(ns.to_string())
    }

    /// POST. `keep_status` lets in-process callers seed status (the API drops it for types
    /// with a status subresource).
    pub fn create(
        &mut self,
        rt: &ResourceType,
        version: &str,
        url_ns: Option<&str>,
        mut obj: Value,
        keep_status: bool,
    ) -> Result<Value, ApiError> {
        let created = self.create_inner(rt, version, url_ns, &mut obj, keep_status)?;
        self.process_gc();
        Ok(created)
    }

    pub(crate) fn create_inner(
        &mut self,
        rt: &ResourceType,
        version: &str,
        url_ns: Option<&str>,
        obj: &mut Value,
        keep_status: bool,
    ) -> Result<Value, ApiError> {
        check_type_meta(rt, version, obj)?;
        let ns = self.resolve_ns(rt, url_ns, obj)?;
        let name = match meta_str(obj, "name").filter(|s| !s.is_empty()) {
            Some(n) => n.to_string(),
            None => match meta_str(obj, "generateName").filter(|s| !s.is_empty()) {
                Some(prefix) => {
                    let prefix = prefix.to_string();
                    (0..8)
                        .map(|_| format!("{prefix}{}", random_suffix(5)))
                        .find(|n| self.get(&obj_key(rt, Some(&ns), n)).is_none())
                        .ok_or_else(|| ApiError::already_exists(&rt.qualified(), &prefix))?
                }
                None => {
                    return Err(ApiError::invalid(
                        &rt.kind,
                        "",
                        "metadata.name: Required value: name or generateName is required",
                    ))
                }
            },
        };
        validate_name(rt, &name)?;
        if rt.namespaced {
            self.check_namespace(rt, &ns, &name)?;
        }
        let key = obj_key(rt, Some(&ns), &name);
        if self.get(&key).is_some() {
            return Err(ApiError::already_exists(&rt.qualified(), &name));
        }
        let root = obj.as_object_mut().expect("checked to be an object");
        root.insert("apiVersion".into(), json!(rt.api_version(version)));
        root.insert("kind".into(), json!(rt.kind));
        if rt.status && !keep_status {
            root.remove("status");
        }
        let m = meta_mut(obj);
        m.insert("name".into(), json!(name));
        if rt.namespaced {
            m.insert("namespace".into(), json!(ns));
        } else {
            m.remove("namespace");
        }
        m.insert("uid".into(), json!(new_uid()));
        m.insert("creationTimestamp".into(), json!(now_rfc3339()));
        m.insert("generation".into(), json!(1));
        for f in [
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(f);
        }
        defaults::on_create(self, rt, obj)?;
        let stored = self.commit_put(key, obj.clone());
        defaults::after_write(self, rt, &stored);
        Ok(stored)
    }

    /// PUT on the object or its status. An empty `metadata.resourceVersion` is an
    /// unconditional update, as with the real server.
    pub fn replace(
        &mut self,
        rt: &ResourceType,
        version: &str,
        ns: Option<&str>,
        name: &str,
        body: Value,
        part: Part,
    ) -> Result<Value, ApiError> {
        let key = obj_key(rt, ns, name);
        let old = self.get_or_404(rt, &key)?;
        check_type_meta(rt, version, &body)?;
        self.check_identity(rt, ns, name, &body)?;
        let rv = meta_str(&body, "resourceVersion").filter(|s| !s.is_empty());
        if rv.is_some_and(|rv| Some(rv) != meta_str(&old, "resourceVersion")) {
            return Err(ApiError::stale(&rt.qualified(), name));
        }
        let new = merge_for_update(rt, version, &old, body, part, false);
        let out = self.finish_update(rt, key, old, new);
        self.process_gc();
        out
    }

    pub(crate) fn check_identity(
        &self,
        rt: &ResourceType,
        ns: Option<&str>,
        name: &str,
        body: &Value,
    ) -> Result<(), ApiError> {
        if let Some(n) = meta_str(body, "name").filter(|n| *n != name) {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({name}) for {}",
                rt.qualified()
            )));
        }
        if rt.namespaced
            && meta_str(body, "namespace").is_some_and(|b| !b.is_empty() && Some(b) != ns)
        {
            return Err(ApiError::bad_request("the namespace of the provided object does not match the namespace sent on the request"));
        }
        Ok(())
    }

    /// PATCH in any supported format. Returns the object and whether it was created (apply).
    /// Validates and stores an update. A no-op write keeps the resourceVersion and sends
    /// no event; removing the last finalizer of a terminating object deletes it.
    pub(crate) fn finish_update(
        &mut self,
        rt: &ResourceType,
        key: ObjKey,
        old: Value,
        mut new: Value,
    ) -> Result<Value, ApiError> {
        if meta_str(&old, "deletionTimestamp").is_some() {
            let before = finalizers(&old);
            if let Some(f) = finalizers(&new).into_iter().find(|f| !before.contains(f)) {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &key.name,
                    &format!("metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers [\"{f}\"]"),
                ));
            }
        }
        defaults::on_update(self, rt, &old, &mut new)?;
        let old_rv = old
            .pointer("/metadata/resourceVersion")
            .cloned()
            .unwrap_or(Value::Null);
        meta_mut(&mut new).insert("resourceVersion".into(), old_rv);
        if new == old {
            return Ok(old);
        }
        if generation_relevant(rt, &new) != generation_relevant(rt, &old) {
            let g = old
                .pointer("/metadata/generation")
                .and_then(Value::as_i64)
                .unwrap_or(0);
            meta_mut(&mut new).insert("generation".into(), json!(g + 1));
        }
        let stored = self.commit_put(key.clone(), new);
        defaults::after_write(self, rt, &stored);
        if meta_str(&stored, "deletionTimestamp").is_some() && finalizers(&stored).is_empty() {
            return Ok(self.commit_remove(&key).unwrap_or(stored));
        }
        Ok(stored)
    }
}

/// The object an update stores: system metadata always from `old`; status from `old` for
/// main-resource writes (types with a status subresource); only status from `new` for
/// status writes. `own_managed` takes `managedFields` from `new` (apply computed them).
pub(crate) fn merge_for_update(
    rt: &ResourceType,
    version: &str,
    old: &Value,
    new: Value,
    part: Part,
    own_managed: bool,
) -> Value {
    let mut out = match part {
        Part::Status => {
            let mut r = old.clone();
            let root = r.as_object_mut().expect("stored objects are maps");
            match new.get("status") {
                Some(s) => root.insert("status".into(), s.clone()),
                None => root.remove("status"),
            };
            if own_managed {
                if let Some(mf) = new.pointer("/metadata/managedFields") {
                    meta_mut(&mut r).insert("managedFields".into(), mf.clone());
                }
            }
            r
        }
        Part::Main => {
            let mut r = new;
            let root = r.as_object_mut().expect("checked to be an object");
            if rt.status {
                match old.get("status") {
                    Some(s) => root.insert("status".into(), s.clone()),
                    None => root.remove("status"),
                };
            }
            let m = meta_mut(&mut r);
            let mut system = vec![
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "name",
                "namespace",
            ];
            if !own_managed {
                system.push("managedFields");
            }
            for f in system {
                match old.pointer(&format!("/metadata/{f}")) {
                    Some(v) => m.insert(f.into(), v.clone()),
                    None => m.remove(f),
                };
            }
            r
        }
    };
    let root = out.as_object_mut().expect("objects are maps");
    root.insert("apiVersion".into(), json!(rt.api_version(version)));
    root.insert("kind".into(), json!(rt.kind));
    out
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert!(is_dns_subdomain("a.b-c.d"));
        assert!(!is_dns_subdomain("Upper"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_label("-a"));
        assert!(valid_path_segment("system:controller:x"));
        assert!(!valid_path_segment("a/b"));
    }
}
