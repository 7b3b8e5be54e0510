//! Patch formats: JSON merge patch (RFC 7386), an approximation of strategic merge patch,
//! and JSON patch (RFC 6902).

use serde_json::{Map, Value};

/// RFC 7386: objects merge recursively, `null` deletes, everything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// The merge key of a list field, for the lists our components patch. The real server reads
/// `patchMergeKey` from the Go types; this table covers the common ones.
fn merge_key(field: &str, items: &[&Value]) -> Option<&'static str> {
    let all_have = |k: &str| !items.is_empty() && items.iter().all(|i| i.get(k).is_some());
    match field {
        "conditions" if all_have("type") => Some("type"),
        "ownerReferences" if all_have("uid") => Some("uid"),
        "volumeMounts" if all_have("mountPath") => Some("mountPath"),
        "ports" if all_have("containerPort") => Some("containerPort"),
        "ports" if all_have("port") && !all_have("name") => Some("port"),
        "addresses" | "hostIPs" | "podIPs" | "ips" => None,
        _ if all_have("name") => Some("name"),
        _ => None,
    }
}

/// Primitive lists the real server merges as sets.
fn is_set_list(field: &str) -> bool {
    field == "finalizers"
}

/// Strategic merge patch, approximated: a merge patch, except that lists of objects are
/// merged element-wise by their merge key (see [`merge_key`]), `finalizers` merge as a set,
/// list elements carrying `$patch: delete` are removed, a map carrying `$patch: replace`
/// replaces instead of merging, and `$setElementOrder/...` / `$retainKeys` directives are
/// ignored.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut clean = p.clone();
        clean.remove("$patch");
        *target = Value::Object(clean);
        return;
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(_) => strategic_merge(t.entry(k.clone()).or_insert(Value::Null), v),
            Value::Array(items) => {
                let merged = match t.get(k) {
                    Some(Value::Array(cur)) => merge_list(k, cur, items),
                    _ => items
                        .iter()
                        .filter(|i| !is_delete_directive(i))
                        .map(strip_directives)
                        .collect(),
                };
                t.insert(k.clone(), Value::Array(merged));
            }
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
}

fn is_delete_directive(v: &Value) -> bool {
    v.get("$patch").and_then(Value::as_str) == Some("delete")
}

fn strip_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        ),
        other => other.clone(),
    }
}

fn merge_list(field: &str, cur: &[Value], patch: &[Value]) -> Vec<Value> {
    if is_set_list(field) && patch.iter().all(|v| !v.is_object()) {
        let mut out = cur.to_vec();
        for v in patch {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return out;
    }
    let items: Vec<&Value> = cur.iter().chain(patch.iter()).collect();
    let Some(key) = merge_key(field, &items) else {
        return patch
            .iter()
            .filter(|i| !is_delete_directive(i))
            .map(strip_directives)
            .collect();
    };
    let mut out = cur.to_vec();
    for item in patch {
        let id = item.get(key);
        let pos = out.iter().position(|o| o.get(key) == id);
        match (pos, is_delete_directive(item)) {
            (Some(i), true) => {
                out.remove(i);
            }
            (None, true) => {}
            (Some(i), false) => strategic_merge(&mut out[i], item),
            (None, false) => out.push(strip_directives(item)),
        }
    }
    out
}

/// RFC 6902. Errors name the failing operation.
pub fn json_patch(target: &mut Value, patch: &Value) -> Result<(), String> {
    let p: json_patch::Patch = serde_json::from_value(patch.clone())
        .map_err(|e| format!("the JSON patch is malformed: {e}"))?;
    // Like the real API server (evanphx/json-patch), `test` of a missing path against `null`
    // succeeds: kube-rs adds an object's first finalizer behind exactly that guard.
    let original = target.clone();
    for op in p.0 {
        if let json_patch::PatchOperation::Test(t) = &op {
            if t.value.is_null() && target.pointer(t.path.as_str()).is_none_or(Value::is_null) {
                continue;
            }
        }
        if let Err(e) = json_patch::patch(target, std::slice::from_ref(&op)) {
            *target = original;
            return Err(format!("the JSON patch could not be applied: {e}"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn merge_patch_rfc7386_examples() {
        let mut t = json!({"a": "b", "c": {"d": "e", "f": "g"}});
        merge_patch(&mut t, &json!({"a": "z", "c": {"f": null}}));
        assert_eq!(t, json!({"a": "z", "c": {"d": "e"}}));
        let mut t = json!({"a": [1, 2]});
        merge_patch(&mut t, &json!({"a": [3]}));
        assert_eq!(t, json!({"a": [3]}));
        let mut t = json!("x");
        merge_patch(&mut t, &json!({"a": {"b": null}}));
        assert_eq!(t, json!({"a": {}}));
    }

    #[test]
    fn strategic_merges_containers_by_name() {
        let mut t = json!({"spec": {"containers": [
            {"name": "app", "image": "a:1", "ports": [{"containerPort": 80}]},
            {"name": "side", "image": "s:1"}
        ]}});
        strategic_merge(
            &mut t,
            &json!({"spec": {"containers": [
            {"name": "app", "image": "a:2"},
            {"name": "side", "$patch": "delete"},
            {"name": "new", "image": "n:1"}
        ], "$setElementOrder/containers": [{"name": "app"}]}}),
        );
        assert_eq!(
            t,
            json!({"spec": {"containers": [
                {"name": "app", "image": "a:2", "ports": [{"containerPort": 80}]},
                {"name": "new", "image": "n:1"}
            ]}})
        );
    }

    #[test]
    fn strategic_conditions_finalizers_and_replace() {
        let mut t = json!({
            "metadata": {"finalizers": ["a"]},
            "status": {"conditions": [{"type": "Ready", "status": "False"}, {"type": "X", "status": "True"}]},
            "spec": {"selector": {"a": "1", "b": "2"}, "args": ["x", "y"]}
        });
        strategic_merge(
            &mut t,
            &json!({
                "metadata": {"finalizers": ["b", "a"]},
                "status": {"conditions": [{"type": "Ready", "status": "True"}]},
                "spec": {"selector": {"$patch": "replace", "c": "3"}, "args": ["z"]}
            }),
        );
        assert_eq!(t["metadata"]["finalizers"], json!(["a", "b"]));
        assert_eq!(
            t["status"]["conditions"],
            json!([{"type": "Ready", "status": "True"}, {"type": "X", "status": "True"}])
        );
        assert_eq!(t["spec"]["selector"], json!({"c": "3"}));
        assert_eq!(t["spec"]["args"], json!(["z"]));
    }

    #[test]
    fn json_patch_ops_and_errors() {
        let mut t = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"items": [1, 2]}});
        json_patch(
            &mut t,
            &json!([
                {"op": "add", "path": "/metadata/labels/b", "value": "2"},
                {"op": "remove", "path": "/metadata/labels/a"},
                {"op": "replace", "path": "/spec/items/0", "value": 9},
                {"op": "add", "path": "/spec/items/-", "value": 3},
                {"op": "test", "path": "/spec/items/1", "value": 2}
            ]),
        )
        .unwrap();
        assert_eq!(
            t,
            json!({"metadata": {"labels": {"b": "2"}}, "spec": {"items": [9, 2, 3]}})
        );
        let before = t.clone();
        let err = json_patch(
            &mut t,
            &json!([{"op": "test", "path": "/spec/items/0", "value": 1}]),
        )
        .unwrap_err();
        assert!(err.contains("could not be applied"), "{err}");
        assert_eq!(t, before, "a failed patch leaves the object untouched");
        assert!(json_patch(&mut t, &json!({"op": "add"}))
            .unwrap_err()
            .contains("malformed"));
        // kube-rs's first-finalizer guard: a missing list tests equal to null.
        let mut obj = json!({"metadata": {"name": "m"}});
        json_patch(
            &mut obj,
            &json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": ["x"]}
            ]),
        )
        .unwrap();
        assert_eq!(obj["metadata"]["finalizers"], json!(["x"]));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            any::<bool>().prop_map(Value::from),
            any::<i32>().prop_map(Value::from),
            "[a-z]{0,4}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::from),
                prop::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        // Merge patches are idempotent, and merging an object into itself changes nothing.
        #[test]
        fn merge_patch_idempotent(t in arb_json(), p in arb_json()) {
            let mut once = t.clone();
            merge_patch(&mut once, &p);
            let mut twice = once.clone();
            merge_patch(&mut twice, &p);
            prop_assert_eq!(&once, &twice);
        }

        #[test]
        fn self_merge_is_identity(t in arb_json()) {
            prop_assume!(t.is_object());
            let mut m = t.clone();
            merge_patch(&mut m, &t);
            prop_assert_eq!(m, t);
        }

        // Without list fields, strategic merge and merge patch agree.
        #[test]
        fn strategic_equals_merge_without_lists(t in arb_json(), p in arb_json()) {
            prop_assume!(!p.to_string().contains('['));
            let mut a = t.clone();
            merge_patch(&mut a, &p);
            let mut b = t;
            strategic_merge(&mut b, &p);
            prop_assert_eq!(a, b);
        }
    }
}
