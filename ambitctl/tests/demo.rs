//! The README's first command runs `ambitctl local demo`; this keeps it honest.
use std::process::Command;

#[test]
fn local_demo_shows_an_encrypted_working_mesh_and_cleans_up() {
    let out = Command::new(env!("CARGO_BIN_EXE_ambitctl"))
        .args(["local", "demo", "--seconds", "2", "-o", "json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["requests"]["ok"].as_u64().unwrap() > 10, "{v}");
    assert_eq!(v["requests"]["failed"], 0, "{v}");
    assert_eq!(
        v["requests"]["by_pod"].as_object().unwrap().len(),
        3,
        "all three reviews versions serve: {v}"
    );
    assert_eq!(v["wire"]["plaintext_seen_between_nodes"], false);
    assert!(v["wire"]["hbone_segments_captured"].as_u64().unwrap() > 0);
    assert!(v["legacy_pod_plaintext_answer"]
        .as_str()
        .unwrap()
        .starts_with("legacy "));
    // Our namespaces are gone (other tests' may exist concurrently: match our pid-tagged prefix).
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let child_prefix = "ambit-sandbox-";
    let leftover: Vec<_> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter(|l| l.starts_with(child_prefix))
        .map(str::to_string)
        .collect();
    assert!(
        leftover.is_empty(),
        "sandbox left namespaces behind: {leftover:?}"
    );
}
