//! Server-side apply, approximated.
//!
//! Each apply manager owns the set of leaf paths it last applied (objects are walked
//! recursively; lists and scalars are leaves, i.e. lists are atomic). Applying:
//! 1. conflicts: a path another apply manager owns whose value would change -> 409 unless
//!    `force`, which transfers ownership;
//! 2. removal: paths this manager applied before and omits now are removed, unless another
//!    manager still owns them;
//! 3. the applied configuration is merged in (objects recursively, leaves replaced).
//!
//! Ownership is recorded in `metadata.managedFields` in the real `FieldsV1` format.
//! Non-apply writes (PUT, merge/JSON/strategic patches) do not record or steal ownership.

use crate::patch::merge_patch;
use crate::util::now_rfc3339;
use serde_json::{json, Map, Value};
use std::collections::BTreeSet;

pub type Path = Vec<String>;

/// Which part of the object an apply writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Main,
    Status,
}

/// Metadata fields the server owns; never tracked.
const SYSTEM_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "managedFields",
    "generateName",
    "selfLink",
];

/// The part of an applied configuration that is tracked, minus type and system fields.
pub fn tracked_config(config: &Value, part: Part) -> Value {
    let mut out = Map::new();
    if let Some(obj) = config.as_object() {
        for (k, v) in obj {
            match (part, k.as_str()) {
                (_, "apiVersion" | "kind") => {}
                (Part::Status, "status") => {
                    out.insert(k.clone(), v.clone());
                }
                (Part::Status, _) | (Part::Main, "status") => {}
                (Part::Main, "metadata") => {
                    let m: Map<String, Value> = v
                        .as_object()
                        .map(|m| {
                            m.iter()
                                .filter(|(k, _)| !SYSTEM_META.contains(&k.as_str()))
                                .map(|(k, v)| (k.clone(), v.clone()))
                                .collect()
                        })
                        .unwrap_or_default();
                    if !m.is_empty() {
                        out.insert(k.clone(), Value::Object(m));
                    }
                }
                _ => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    Value::Object(out)
}

/// Leaf paths of a configuration. An empty object owns nothing (as `labels: {}` in an
/// applied configuration does not claim other managers' labels).
pub fn leaf_paths(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
        match v {
            Value::Object(m) => {
                for (k, child) in m {
                    prefix.push(k.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            _ if !prefix.is_empty() => {
                out.insert(prefix.clone());
            }
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

pub fn to_fields_v1(paths: &BTreeSet<Path>) -> Value {
    let mut root = Map::new();
    for p in paths {
        let mut cur = &mut root;
        for seg in p {
            let e = cur.entry(format!("f:{seg}")).or_insert_with(|| json!({}));
            cur = e.as_object_mut().expect("fieldsV1 nodes are maps");
        }
    }
    Value::Object(root)
}

pub fn from_fields_v1(v: &Value) -> BTreeSet<Path> {
    fn walk(v: &Value, prefix: &mut Path, out: &mut BTreeSet<Path>) {
        let children: Vec<(&String, &Value)> = v
            .as_object()
            .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:")).collect())
            .unwrap_or_default();
        if children.is_empty() {
            if !prefix.is_empty() {
                out.insert(prefix.clone());
            }
            return;
        }
        for (k, child) in children {
            prefix.push(k[2..].to_string());
            walk(child, prefix, out);
            prefix.pop();
        }
    }
    let mut out = BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

fn overlaps(a: &Path, b: &Path) -> bool {
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

fn get_path<'a>(v: &'a Value, p: &Path) -> Option<&'a Value> {
    p.iter().try_fold(v, |cur, seg| cur.get(seg))
}

fn remove_path(v: &mut Value, p: &Path) {
    let Some((last, parents)) = p.split_last() else {
        return;
    };
    let mut cur = v;
    for seg in parents {
        match cur.get_mut(seg) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// One `managedFields` entry.
#[derive(Clone, Debug)]
struct Entry {
    raw: Value,
    manager: String,
    apply: bool,
    status: bool,
    fields: BTreeSet<Path>,
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj.pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|e| Entry {
                    raw: e.clone(),
                    manager: e
                        .get("manager")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_string(),
                    apply: e.get("operation").and_then(Value::as_str) == Some("Apply"),
                    status: e.get("subresource").and_then(Value::as_str) == Some("status"),
                    fields: e.get("fieldsV1").map(from_fields_v1).unwrap_or_default(),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn dotted(p: &Path) -> String {
    format!(".{}", p.join("."))
}

/// Computes the object after `manager` applies `config` to `current` (`{}` when creating).
/// Returns the new object with updated `metadata.managedFields`, or a conflict description.
pub fn apply(
    current: &Value,
    config: &Value,
    manager: &str,
    force: bool,
    part: Part,
    api_version: &str,
) -> Result<Value, String> {
    let tracked = tracked_config(config, part);
    let applied = leaf_paths(&tracked);
    let mut managers = entries(current);
    let is_status = part == Part::Status;

    let mut conflicts = Vec::new();
    for e in managers
        .iter_mut()
        .filter(|e| e.apply && e.manager != manager && e.status == is_status)
    {
        let mut lost = Vec::new();
        for owned in &e.fields {
            for mine in applied.iter().filter(|a| overlaps(a, owned)) {
                let longer = if mine.len() >= owned.len() {
                    mine
                } else {
                    owned
                };
                if get_path(current, longer) != get_path(&tracked, longer) {
                    conflicts.push(format!(
                        "conflict with \"{}\": {}",
                        e.manager,
                        dotted(owned)
                    ));
                }
                lost.push(owned.clone());
            }
        }
        if force {
            for l in lost {
                e.fields.remove(&l);
            }
        }
    }
    conflicts.dedup();
    if !conflicts.is_empty() && !force {
        return Err(format!(
            "Apply failed with {} conflict{}: {}",
            conflicts.len(),
            if conflicts.len() == 1 { "" } else { "s" },
            conflicts.join(", ")
        ));
    }

    let mine = managers
        .iter()
        .position(|e| e.apply && e.manager == manager && e.status == is_status);
    let previous = mine.map(|i| managers[i].fields.clone()).unwrap_or_default();
    let mut result = current.clone();
    for gone in previous.difference(&applied) {
        let still_owned = managers
            .iter()
            .enumerate()
            .any(|(i, e)| Some(i) != mine && e.fields.iter().any(|f| overlaps(f, gone)));
        if !still_owned {
            remove_path(&mut result, gone);
        }
    }
    merge_patch(&mut result, &tracked);

    let unchanged = previous == applied && mine.is_some();
    let mut new_entries: Vec<Value> = Vec::new();
    for (i, e) in managers.iter().enumerate() {
        if Some(i) == mine {
            continue;
        }
        if e.apply && e.fields.is_empty() {
            continue; // lost everything to a forced apply
        }
        let mut raw = e.raw.clone();
        raw["fieldsV1"] = to_fields_v1(&e.fields);
        new_entries.push(raw);
    }
    let mut entry = match (unchanged, mine) {
        (true, Some(i)) => managers[i].raw.clone(),
        _ => json!({
            "manager": manager,
            "operation": "Apply",
            "apiVersion": api_version,
            "time": now_rfc3339(),
            "fieldsType": "FieldsV1",
            "fieldsV1": to_fields_v1(&applied),
        }),
    };
    if is_status {
        entry["subresource"] = json!("status");
    }
    new_entries.push(entry);
    crate::util::meta_mut(&mut result).insert("managedFields".into(), Value::Array(new_entries));
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: Value, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "labels": labels}, "data": data})
    }

    #[test]
    fn fields_v1_round_trip() {
        let v = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"x": [1], "y": {}}});
        let p = leaf_paths(&v);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!(from_fields_v1(&to_fields_v1(&p)), p);
        assert_eq!(to_fields_v1(&p)["f:metadata"]["f:labels"]["f:a"], json!({}));
    }

    #[test]
    fn removal_of_omitted_fields() {
        let base = json!({"metadata": {"name": "c"}});
        let v1 = apply(
            &base,
            &cm(json!({"a": "1", "b": "2"}), json!({"x": "1"})),
            "op",
            false,
            Part::Main,
            "v1",
        )
        .unwrap();
        assert_eq!(v1["data"], json!({"a": "1", "b": "2"}));
        let v2 = apply(
            &v1,
            &cm(json!({"a": "1"}), json!({})),
            "op",
            false,
            Part::Main,
            "v1",
        )
        .unwrap();
        assert_eq!(v2["data"], json!({"a": "1"}));
        assert_eq!(v2["metadata"]["labels"], json!({}));
        assert_eq!(v2["metadata"]["managedFields"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn conflicts_between_managers_and_force() {
        let base = json!({"metadata": {"name": "c"}});
        let a = apply(
            &base,
            &cm(json!({"k": "1"}), json!({})),
            "a",
            false,
            Part::Main,
            "v1",
        )
        .unwrap();
        // Same value: shared ownership, no conflict.
        let shared = apply(
            &a,
            &cm(json!({"k": "1"}), json!({})),
            "b",
            false,
            Part::Main,
            "v1",
        )
        .unwrap();
        assert_eq!(
            shared["metadata"]["managedFields"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        // "a" drops the field, but "b" still owns it: it stays.
        let kept = apply(
            &shared,
            &cm(json!({}), json!({})),
            "a",
            false,
            Part::Main,
            "v1",
        )
        .unwrap();
        assert_eq!(kept["data"]["k"], "1");
        // Different value: conflict naming the owner, unless forced.
        let err = apply(
            &a,
            &cm(json!({"k": "2"}), json!({})),
            "b",
            false,
            Part::Main,
            "v1",
        )
        .unwrap_err();
        assert!(err.contains("conflict with \"a\": .data.k"), "{err}");
        let forced = apply(
            &a,
            &cm(json!({"k": "2"}), json!({})),
            "b",
            true,
            Part::Main,
            "v1",
        )
        .unwrap();
        assert_eq!(forced["data"]["k"], "2");
        let mf = forced["metadata"]["managedFields"].as_array().unwrap();
        assert_eq!(mf.len(), 1, "a lost its only field: {mf:?}");
        assert_eq!(mf[0]["manager"], "b");
    }

    #[test]
    fn status_part_only_touches_status() {
        let cur = json!({"metadata": {"name": "c"}, "spec": {"r": 1}});
        let cfg =
            json!({"apiVersion": "v1", "kind": "X", "spec": {"r": 2}, "status": {"ok": true}});
        let v = apply(&cur, &cfg, "ctl", false, Part::Status, "v1").unwrap();
        assert_eq!(v["spec"]["r"], 1);
        assert_eq!(v["status"]["ok"], true);
        assert_eq!(v["metadata"]["managedFields"][0]["subresource"], "status");
    }
}
