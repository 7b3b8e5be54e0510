//! Per-kind behaviour of the real control plane that our components can observe:
//! namespace phase and default ServiceAccount, Service cluster IPs and port defaults,
//! Pod service account default, CRD validation, status and registration.

use crate::error::ApiError;
use crate::resources::{crd_key, ResourceKey, ResourceType};
use crate::state::{ObjKey, State};
use crate::util::{meta_str, new_uid, now_rfc3339};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::net::Ipv4Addr;

fn is(rt: &ResourceType, group: &str, plural: &str) -> bool {
    rt.group == group && rt.plural == plural
}

/// The Service CIDR cluster IPs come from (10.96.0.0/12, the kubeadm default).
const SERVICE_CIDR_BASE: u32 = 0x0a60_0000;
const SERVICE_CIDR_SIZE: u32 = 1 << 20;

pub fn on_create(state: &State, rt: &ResourceType, obj: &mut Value) -> Result<(), ApiError> {
    let name = meta_str(obj, "name").unwrap_or("").to_string();
    if is(rt, "", "namespaces") {
        obj["spec"] = json!({"finalizers": ["kubernetes"]});
        obj["status"] = json!({"phase": "Active"});
    } else if is(rt, "", "services") {
        default_service(state, obj, &name)?;
    } else if is(rt, "", "pods") {
        let spec = obj
            .as_object_mut()
            .expect("object")
            .entry("spec")
            .or_insert_with(|| json!({}));
        if spec
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            spec["serviceAccountName"] = json!("default");
        }
        if obj.get("status").is_none() {
            obj["status"] = json!({"phase": "Pending"});
        }
    } else if is(rt, "apiextensions.k8s.io", "customresourcedefinitions") {
        let t = ResourceType::from_crd(obj).map_err(|e| ApiError::invalid(&rt.kind, &name, &e))?;
        let mut probe = state.registry.clone();
        probe
            .register(t)
            .map_err(|e| ApiError::invalid(&rt.kind, &name, &e))?;
        set_crd_status(obj);
    }
    Ok(())
}

pub fn on_update(
    state: &State,
    rt: &ResourceType,
    old: &Value,
    new: &mut Value,
) -> Result<(), ApiError> {
    let name = meta_str(old, "name").unwrap_or("").to_string();
    if is(rt, "", "services") {
        let ip_of = |v: &Value| {
            v.pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(String::from)
        };
        match (ip_of(new), ip_of(old)) {
            (None, Some(ip)) => {
                if let Some(spec) = new.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.insert("clusterIP".into(), json!(ip));
                    spec.insert(
                        "clusterIPs".into(),
                        old.pointer("/spec/clusterIPs")
                            .cloned()
                            .unwrap_or(json!([ip])),
                    );
                }
            }
            (Some(n), Some(o)) if n != o => {
                return Err(ApiError::invalid(
                    &rt.kind,
                    &name,
                    "spec.clusterIP: Invalid value: field is immutable",
                ));
            }
            _ => {}
        }
        default_ports(new);
    } else if is(rt, "apiextensions.k8s.io", "customresourcedefinitions") {
        let t = ResourceType::from_crd(new).map_err(|e| ApiError::invalid(&rt.kind, &name, &e))?;
        let was = ResourceType::from_crd(old).ok();
        if was.as_ref().is_some_and(|w| w.namespaced != t.namespaced) {
            return Err(ApiError::invalid(
                &rt.kind,
                &name,
                "spec.scope: Invalid value: field is immutable",
            ));
        }
        let mut probe = state.registry.clone();
        probe
            .register(t)
            .map_err(|e| ApiError::invalid(&rt.kind, &name, &e))?;
    }
    Ok(())
}

/// Side effects after a successful create or update.
pub fn after_write(state: &mut State, rt: &ResourceType, obj: &Value) {
    if is(rt, "apiextensions.k8s.io", "customresourcedefinitions") {
        if let Ok(t) = ResourceType::from_crd(obj) {
            tracing::info!(crd = %t.qualified(), "registered custom resource type");
            if let Err(e) = state.registry.register(t) {
                tracing::warn!(error = %e, "CRD was validated but could not be registered");
            }
        }
    } else if is(rt, "", "namespaces") && meta_str(obj, "deletionTimestamp").is_none() {
        // The controller manager creates a `default` ServiceAccount in every namespace.
        let ns = meta_str(obj, "name").unwrap_or("").to_string();
        let key = ObjKey {
            res: ResourceKey::new("", "serviceaccounts"),
            ns: ns.clone(),
            name: "default".into(),
        };
        if state.get(&key).is_none() {
            let sa = json!({
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": ns, "uid": new_uid(), "creationTimestamp": now_rfc3339()}
            });
            state.commit_put(key, sa);
        }
    }
}

/// A removed CRD takes its type and all its objects with it.
pub fn after_remove(state: &mut State, key: &ObjKey, obj: &Value) {
    if key.res == crd_key() {
        let Ok(t) = ResourceType::from_crd(obj) else {
            return;
        };
        for k in state.keys_of(&t.key(), None) {
            state.commit_remove(&k);
        }
        state.registry.unregister(&t.key());
        tracing::info!(crd = %t.qualified(), "unregistered custom resource type");
    }
}

fn set_crd_status(obj: &mut Value) {
    let now = now_rfc3339();
    let storage: Vec<Value> = obj
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|vs| {
            vs.iter()
                .filter(|v| v.get("storage") == Some(&json!(true)))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    let cond = |t: &str, reason: &str, msg: &str| json!({"type": t, "status": "True", "lastTransitionTime": now, "reason": reason, "message": msg});
    obj["status"] = json!({
        "acceptedNames": obj.pointer("/spec/names").cloned().unwrap_or(json!({})),
        "conditions": [
            cond("NamesAccepted", "NoConflicts", "no conflicts found"),
            cond("Established", "InitialNamesAccepted", "the initial names have been accepted"),
        ],
        "storedVersions": storage,
    });
}

fn default_ports(svc: &mut Value) {
    if let Some(ports) = svc.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        for p in ports {
            let Some(m) = p.as_object_mut() else { continue };
            m.entry("protocol").or_insert(json!("TCP"));
            if let Some(port) = m.get("port").cloned() {
                m.entry("targetPort").or_insert(port);
            }
        }
    }
}

fn default_service(state: &State, obj: &mut Value, name: &str) -> Result<(), ApiError> {
    let root = obj.as_object_mut().expect("object");
    let spec = root.entry("spec").or_insert_with(|| json!({}));
    let Some(spec) = spec.as_object_mut() else {
        return Err(ApiError::invalid(
            "Service",
            name,
            "spec: Invalid value: must be an object",
        ));
    };
    let ty = spec
        .entry("type")
        .or_insert(json!("ClusterIP"))
        .as_str()
        .unwrap_or("ClusterIP")
        .to_string();
    spec.entry("sessionAffinity").or_insert(json!("None"));
    if ty == "ExternalName" {
        return Ok(());
    }
    let used: HashSet<String> = state
        .list(
            &ResourceKey::new("", "services"),
            None,
            &Default::default(),
            &Default::default(),
        )
        .iter()
        .filter_map(|s| {
            s.pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .map(String::from)
        })
        .collect();
    let requested = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(String::from);
    let ip = match requested {
        Some(ip) if ip == "None" => ip,
        Some(ip) => {
            if ip.parse::<Ipv4Addr>().is_err() {
                return Err(ApiError::invalid("Service", name, &format!("spec.clusterIP: Invalid value: \"{ip}\": must be a valid IP address or \"None\"")));
            }
            if used.contains(&ip) {
                return Err(ApiError::invalid(
                    "Service",
                    name,
                    &format!(
                        "spec.clusterIP: Invalid value: \"{ip}\": provided IP is already allocated"
                    ),
                ));
            }
            ip
        }
        None => (10..SERVICE_CIDR_SIZE - 1)
            .map(|i| Ipv4Addr::from(SERVICE_CIDR_BASE + i).to_string())
            .find(|ip| !used.contains(ip))
            .ok_or_else(|| {
                ApiError::new(
                    500,
                    "InternalError",
                    "the service IP range 10.96.0.0/12 is exhausted",
                )
            })?,
    };
    spec.insert("clusterIP".into(), json!(ip));
    spec.insert("clusterIPs".into(), json!([ip]));
    if ip != "None" {
        spec.entry("ipFamilies").or_insert(json!(["IPv4"]));
        spec.entry("ipFamilyPolicy").or_insert(json!("SingleStack"));
    }
    default_ports(obj);
    Ok(())
}
