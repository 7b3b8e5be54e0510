//! Deletion: finalizers, propagation policies, owner-reference garbage collection and
//! namespace termination. The garbage collector runs synchronously at the end of each write,
//! so dependents are gone by the time the deleting call returns (the real one is eventually
//! consistent; code that waits for dependents to disappear works with both).

use crate::error::ApiError;
use crate::resources::{ResourceKey, ResourceType};
use crate::state::{ObjKey, State};
use crate::util::{finalizers, meta_mut, meta_str, now_rfc3339, owner_refs};
use serde_json::{json, Value};

pub const FOREGROUND: &str = "foregroundDeletion";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Propagation {
    #[default]
    Background,
    Foreground,
    Orphan,
}

impl Propagation {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        match s {
            "Background" => Ok(Propagation::Background),
            "Foreground" => Ok(Propagation::Foreground),
            "Orphan" => Ok(Propagation::Orphan),
            other => Err(ApiError::bad_request(format!(
                "propagationPolicy: Unsupported value: {other:?}: supported values: \"Foreground\", \"Background\", \"Orphan\""
            ))),
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct DeleteOptions {
    pub propagation: Propagation,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

/// What a delete did: the object's last state and whether it is gone or only terminating.
pub struct Deleted {
    pub obj: Value,
    pub removed: bool,
}

fn ns_key(name: &str) -> ObjKey {
    ObjKey {
        res: ResourceKey::new("", "namespaces"),
        ns: String::new(),
        name: name.to_string(),
    }
}

impl State {
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        key: &ObjKey,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let obj = self.get_or_404(rt, key)?;
        if opts
            .precondition_uid
            .as_deref()
            .is_some_and(|u| Some(u) != meta_str(&obj, "uid"))
        {
            return Err(ApiError::conflict(
                &rt.qualified(),
                &key.name,
                &format!(
                    "Precondition failed: UID in precondition: {}, UID in object meta: {}",
                    opts.precondition_uid.as_deref().unwrap_or(""),
                    meta_str(&obj, "uid").unwrap_or("")
                ),
            ));
        }
        if opts
            .precondition_rv
            .as_deref()
            .is_some_and(|r| Some(r) != meta_str(&obj, "resourceVersion"))
        {
            return Err(ApiError::stale(&rt.qualified(), &key.name));
        }
        let out = self.delete_inner(key, opts.propagation);
        self.process_gc();
        Ok(out.unwrap_or(Deleted { obj, removed: true }))
    }

    /// Deletes without preconditions; `None` if the object vanished meanwhile.
    pub(crate) fn delete_inner(&mut self, key: &ObjKey, policy: Propagation) -> Option<Deleted> {
        let obj = self.get(key)?.clone();
        let uid = meta_str(&obj, "uid").unwrap_or("").to_string();
        if key.res == ResourceKey::new("", "namespaces") {
            return Some(self.terminate_namespace(key, obj));
        }
        let dependents = self.dependents_of(&uid);
        match policy {
            Propagation::Orphan => {
                for d in dependents {
                    self.strip_owner(&d, &uid);
                }
            }
            Propagation::Foreground if !dependents.is_empty() => {
                let mut marked = obj;
                mark_terminating(&mut marked);
                let f = meta_mut(&mut marked)
                    .entry("finalizers")
                    .or_insert_with(|| json!([]));
                if let Some(a) = f.as_array_mut().filter(|a| !a.contains(&json!(FOREGROUND))) {
                    a.push(json!(FOREGROUND));
                }
                let marked = self.commit_put(key.clone(), marked);
                for d in dependents {
                    self.delete_inner(&d, Propagation::Foreground);
                }
                self.finish_foreground(key);
                let removed = self.get(key).is_none();
                return Some(Deleted {
                    obj: self.get(key).cloned().unwrap_or(marked),
                    removed,
                });
            }
            _ => {}
        }
        let obj = self.get(key)?.clone();
        if !finalizers(&obj).is_empty() {
            if meta_str(&obj, "deletionTimestamp").is_some() {
                return Some(Deleted {
                    obj,
                    removed: false,
                });
            }
            let mut marked = obj;
            mark_terminating(&mut marked);
            return Some(Deleted {
                obj: self.commit_put(key.clone(), marked),
                removed: false,
            });
        }
        self.commit_remove(key)
            .map(|obj| Deleted { obj, removed: true })
    }

    fn dependents_of(&self, uid: &str) -> Vec<ObjKey> {
        if uid.is_empty() {
            return Vec::new();
        }
        self.objects
            .iter()
            .filter(|(_, v)| owner_refs(v).iter().any(|(u, _)| u == uid))
            .map(|(k, _)| k.clone())
            .collect()
    }

    fn strip_owner(&mut self, key: &ObjKey, uid: &str) {
        let Some(mut obj) = self.get(key).cloned() else {
            return;
        };
        if let Some(refs) = obj
            .pointer_mut("/metadata/ownerReferences")
            .and_then(Value::as_array_mut)
        {
            refs.retain(|r| r.get("uid").and_then(Value::as_str) != Some(uid));
        }
        self.commit_put(key.clone(), obj);
    }

    /// Drops the foregroundDeletion finalizer once no blocking dependent remains.
    fn finish_foreground(&mut self, key: &ObjKey) {
        let Some(obj) = self.get(key).cloned() else {
            return;
        };
        if !finalizers(&obj).iter().any(|f| f == FOREGROUND) {
            return;
        }
        let uid = meta_str(&obj, "uid").unwrap_or("").to_string();
        let blocked = self
            .objects
            .values()
            .any(|v| owner_refs(v).iter().any(|(u, block)| *u == uid && *block));
        if blocked {
            return;
        }
        let mut obj = obj;
        if let Some(a) = obj
            .pointer_mut("/metadata/finalizers")
            .and_then(Value::as_array_mut)
        {
            a.retain(|f| f != FOREGROUND);
        }
        let stored = self.commit_put(key.clone(), obj);
        if finalizers(&stored).is_empty() {
            self.commit_remove(key);
        }
    }

    fn terminate_namespace(&mut self, key: &ObjKey, obj: Value) -> Deleted {
        let obj = if meta_str(&obj, "deletionTimestamp").is_none() {
            let mut marked = obj;
            mark_terminating(&mut marked);
            marked["status"] = json!({"phase": "Terminating"});
            self.commit_put(key.clone(), marked)
        } else {
            obj
        };
        let inside: Vec<ObjKey> = self
            .objects
            .keys()
            .filter(|k| k.ns == key.name)
            .cloned()
            .collect();
        for k in inside {
            self.delete_inner(&k, Propagation::Background);
        }
        self.finish_namespace(&key.name);
        let removed = self.get(key).is_none();
        Deleted {
            obj: self.get(key).cloned().unwrap_or(obj),
            removed,
        }
    }

    /// Removes a terminating namespace once it is empty and has no finalizers left.
    fn finish_namespace(&mut self, ns: &str) {
        let key = ns_key(ns);
        let Some(obj) = self.get(&key).cloned() else {
            return;
        };
        if meta_str(&obj, "deletionTimestamp").is_none() || self.objects.keys().any(|k| k.ns == ns)
        {
            return;
        }
        if finalizers(&obj).is_empty() {
            self.commit_remove(&key);
        } else if obj
            .pointer("/spec/finalizers")
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            let mut o = obj;
            o["spec"]["finalizers"] = json!([]);
            self.commit_put(key, o);
        }
    }

    /// Processes removals queued by writes: CRD types, dependents whose owners are all gone,
    /// owners waiting in foreground deletion, terminating namespaces.
    pub(crate) fn process_gc(&mut self) {
        while let Some(r) = self.gc_queue.pop_front() {
            if let Some(crd) = &r.crd {
                crate::defaults::after_remove(self, &r.key, crd);
            }
            for d in self.dependents_of(&r.uid) {
                let all_gone = self
                    .get(&d)
                    .is_some_and(|v| owner_refs(v).iter().all(|(u, _)| !self.has_uid(u)));
                if all_gone {
                    self.delete_inner(&d, Propagation::Background);
                }
            }
            for owner in &r.owners {
                if let Some(k) = self.uids.get(owner).cloned() {
                    self.finish_foreground(&k);
                }
            }
            if !r.key.ns.is_empty() {
                self.finish_namespace(&r.key.ns);
            }
        }
    }
}

fn mark_terminating(obj: &mut Value) {
    let g = obj
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    let m = meta_mut(obj);
    m.entry("deletionTimestamp")
        .or_insert_with(|| json!(now_rfc3339()));
    m.entry("deletionGracePeriodSeconds").or_insert(json!(0));
    m.insert("generation".into(), json!(g + 1));
}
