//! What an API server would say about an object (openAPIV3 schema + CEL rules), and what the
//! Rust side says (deserialization + `validate()`), so tests can compare the two.

#![allow(dead_code)] // each test binary uses a different part

use std::path::{Path, PathBuf};

use ambit_operator::crd::{self, Validate};
use kube::core::DynamicObject;
use serde::de::DeserializeOwned;
use serde_json::Value;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The openAPIV3Schema of the CRD for `kind`.
pub fn schema(kind: &str) -> Value {
    let crd = crd::all()
        .into_iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for kind {kind}"));
    let s = crd.spec.versions[0]
        .schema
        .as_ref()
        .and_then(|s| s.open_api_v3_schema.as_ref())
        .expect("CRD has a schema");
    serde_json::to_value(s).unwrap()
}

/// OpenAPI's `nullable: true` is `type: [T, "null"]` in JSON Schema.
fn nullable_to_json_schema(v: &mut Value) {
    match v {
        Value::Object(m) => {
            if m.get("nullable") == Some(&Value::Bool(true)) {
                if let Some(Value::String(t)) = m.get("type").cloned() {
                    m.insert("type".into(), serde_json::json!([t, "null"]));
                }
            }
            m.values_mut().for_each(nullable_to_json_schema);
        }
        Value::Array(a) => a.iter_mut().for_each(nullable_to_json_schema),
        _ => {}
    }
}

/// The API server's verdict: schema violations (types, enums, ranges, patterns), then CEL rules
/// evaluated on the defaulted object. Err holds every message.
pub fn server_verdict(obj: &Value) -> Result<(), Vec<String>> {
    let kind = obj["kind"].as_str().expect("object has a kind");
    let schema = schema(kind);
    let mut js = schema.clone();
    nullable_to_json_schema(&mut js);
    let validator = jsonschema::draft4::options()
        .build(&js)
        .expect("generated schema compiles as JSON Schema");
    let mut errs: Vec<String> = validator
        .iter_errors(obj)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if errs.is_empty() {
        if let Err(cel) = kube_cel::Validator::new().validate(&schema, obj, None) {
            errs.extend(cel.iter().map(|e| e.to_string()));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}

fn rust_check<T>(obj: &Value) -> Result<(), Vec<String>>
where
    T: kube::Resource + DeserializeOwned + HasSpec,
{
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| vec![e.to_string()])?;
    let errs = typed.spec_validate();
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.into_iter().map(|e| e.to_string()).collect())
    }
}

pub trait HasSpec {
    fn spec_validate(&self) -> Vec<crd::ValidationError>;
}

macro_rules! has_spec {
    ($($t:ty),*) => {$(
        impl HasSpec for $t {
            fn spec_validate(&self) -> Vec<crd::ValidationError> {
                self.spec.validate()
            }
        }
    )*};
}
has_spec!(
    crd::Mesh,
    crd::Waypoint,
    crd::TrafficRoute,
    crd::BackendPolicy,
    crd::AuthorizationPolicy,
    crd::PeerAuthentication
);

/// The Rust side's verdict: the object deserializes into its type and `validate()` finds nothing.
pub fn rust_verdict(obj: &Value) -> Result<(), Vec<String>> {
    match obj["kind"].as_str().expect("object has a kind") {
        "Mesh" => rust_check::<crd::Mesh>(obj),
        "Waypoint" => rust_check::<crd::Waypoint>(obj),
        "TrafficRoute" => rust_check::<crd::TrafficRoute>(obj),
        "BackendPolicy" => rust_check::<crd::BackendPolicy>(obj),
        "AuthorizationPolicy" => rust_check::<crd::AuthorizationPolicy>(obj),
        "PeerAuthentication" => rust_check::<crd::PeerAuthentication>(obj),
        other => panic!("not an Ambit kind: {other}"),
    }
}

/// Every YAML document of a file, as JSON.
pub fn documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml::Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            serde_json::to_value(v).unwrap()
        })
        .collect()
}

/// Whether a document is one of ours (examples also hold Namespaces).
pub fn is_ambit(obj: &Value) -> bool {
    obj["apiVersion"].as_str() == Some("ambit.dev/v1alpha1")
}

/// Parses with the dynamic type too, to be sure metadata is well formed.
pub fn dynamic(obj: &Value) -> DynamicObject {
    serde_json::from_value(obj.clone()).expect("object has valid metadata")
}
