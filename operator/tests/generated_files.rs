//! crds/, helm/ambit/crds/ and docs/crds.md match what the code generates.

mod crd_support;

use std::process::Command;

use ambit_operator::crd::generate::{self, REGENERATE_COMMAND};

#[test]
fn checked_in_crds_and_docs_are_up_to_date() {
    let stale = generate::check(&crd_support::workspace_root()).unwrap();
    assert!(
        stale.is_empty(),
        "generated files are stale:\n{}\nregenerate them with: {REGENERATE_COMMAND}",
        stale
            .iter()
            .map(|s| format!("  {s}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn crdgen_check_fails_on_stale_files_and_passes_after_generation() {
    let dir = std::env::temp_dir().join(format!("ambit-crdgen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("crds")).unwrap();
    // A leftover CRD file and an edited one.
    std::fs::write(dir.join("crds/olds.ambit.dev.yaml"), "stale").unwrap();
    let crdgen = env!("CARGO_BIN_EXE_crdgen");

    let out = Command::new(crdgen)
        .args(["--check", "--root"])
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("crds/meshes.ambit.dev.yaml is missing or out of date"),
        "{stderr}"
    );
    assert!(
        stderr.contains("crds/olds.ambit.dev.yaml is not generated"),
        "{stderr}"
    );
    assert!(stderr.contains("docs/crds.md"), "{stderr}");
    assert!(stderr.contains(REGENERATE_COMMAND), "{stderr}");

    let out = Command::new(crdgen)
        .arg("--root")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.join("crds/olds.ambit.dev.yaml").exists());
    let helm = std::fs::read_to_string(dir.join("helm/ambit/crds/meshes.ambit.dev.yaml")).unwrap();
    let crds = std::fs::read_to_string(dir.join("crds/meshes.ambit.dev.yaml")).unwrap();
    assert_eq!(helm, crds, "the Helm chart's copy must be identical");

    let out = Command::new(crdgen)
        .args(["--check", "--root"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // One edited byte makes it stale again.
    std::fs::write(
        dir.join("helm/ambit/crds/meshes.ambit.dev.yaml"),
        format!("{helm} "),
    )
    .unwrap();
    let out = Command::new(crdgen)
        .args(["--check", "--root"])
        .arg(&dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generated_crds_have_status_subresource_and_documented_fields() {
    for crd in ambit_operator::crd::all() {
        let v = &crd.spec.versions[0];
        let name = crd.metadata.name.clone().unwrap();
        assert!(
            v.subresources
                .as_ref()
                .and_then(|s| s.status.as_ref())
                .is_some(),
            "{name}: status subresource"
        );
        assert!(v.served && v.storage, "{name}");
        assert!(
            !v.additional_printer_columns
                .clone()
                .unwrap_or_default()
                .is_empty(),
            "{name}: printer columns"
        );
        let schema = serde_json::to_value(
            v.schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        let mut undocumented = Vec::new();
        undocumented_fields(&schema["properties"]["spec"], "spec", &mut undocumented);
        undocumented_fields(&schema["properties"]["status"], "status", &mut undocumented);
        assert!(
            undocumented.is_empty(),
            "{name}: fields without a description: {undocumented:?}"
        );
    }
}

fn undocumented_fields(s: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    if let Some(props) = s.get("properties").and_then(|p| p.as_object()) {
        for (k, v) in props {
            let p = format!("{path}.{k}");
            if v.get("description").is_none() {
                out.push(p.clone());
            }
            undocumented_fields(v, &p, out);
            if let Some(items) = v.get("items") {
                undocumented_fields(items, &format!("{p}[]"), out);
            }
        }
    }
}

/// An API server refuses a CRD whose CEL rules do not compile or may cost too much (lists and
/// strings without bounds).
#[test]
fn cel_rules_compile_and_stay_within_the_cost_budget() {
    fn walk(s: &serde_json::Value, path: &str, problems: &mut Vec<String>, count: &mut usize) {
        if let Some(rules) = s.get("x-kubernetes-validations").and_then(|r| r.as_array()) {
            let compiled = kube_cel::compile_schema(s);
            for e in compiled.compilation_errors() {
                problems.push(format!("{path}: {e}"));
            }
            for r in rules {
                *count += 1;
                let rule = r["rule"].as_str().unwrap();
                for w in kube_cel::estimate_rule_cost(rule, &compiled) {
                    problems.push(format!("{path}: {rule}: {}", w.message));
                }
            }
        }
        if let Some(props) = s.get("properties").and_then(|p| p.as_object()) {
            for (k, v) in props {
                walk(v, &format!("{path}.{k}"), problems, count);
            }
        }
        if let Some(items) = s.get("items") {
            walk(items, &format!("{path}[]"), problems, count);
        }
    }
    let (mut problems, mut count) = (Vec::new(), 0);
    for crd in ambit_operator::crd::all() {
        let v = &crd.spec.versions[0];
        let schema = serde_json::to_value(
            v.schema
                .as_ref()
                .unwrap()
                .open_api_v3_schema
                .as_ref()
                .unwrap(),
        )
        .unwrap();
        walk(&schema, &crd.spec.names.kind, &mut problems, &mut count);
    }
    assert!(
        count >= 10,
        "expected the CEL rules of every kind, found {count}"
    );
    assert!(problems.is_empty(), "{problems:#?}");
}
