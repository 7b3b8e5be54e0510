//! What both benchmark smoke tests check: the run succeeds, stdout and `--out` hold the same
//! JSON object, and every number in it is finite.
#![allow(dead_code)]

use std::process::Command;

use serde_json::Value;

/// Runs `ambit-bench <args> --out <tmp>/nested/<name>.json` and returns the checked report.
pub fn run_report(args: &[&str], name: &str) -> Value {
    let dir = std::env::temp_dir().join(format!("ambit-{name}-smoke-{}", std::process::id()));
    let out = dir.join("nested").join(format!("{name}.json"));
    let run = Command::new(env!("CARGO_BIN_EXE_ambit-bench"))
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("running ambit-bench");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "ambit-bench {} failed:\n{stderr}",
        args.join(" ")
    );
    let printed: Value = serde_json::from_slice(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON object ({e}):\n{stderr}"));
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(&out).expect("--out file written"))
            .expect("--out file is JSON");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(printed, written, "stdout and --out differ");
    all_finite(&printed, "");
    printed
}

pub fn get<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.').fold(v, |v, k| match v.get(k) {
        Some(x) => x,
        None => panic!("missing field {path} (at {k}) in:\n{v:#}"),
    })
}

pub fn positive(v: &Value, path: &str) -> f64 {
    let x = get(v, path)
        .as_f64()
        .unwrap_or_else(|| panic!("{path} is not a number: {v:#}"));
    assert!(x.is_finite() && x > 0.0, "{path} = {x}, expected > 0");
    x
}

/// Every number anywhere in the report is finite.
fn all_finite(v: &Value, at: &str) {
    match v {
        Value::Number(n) => {
            let x = n.as_f64().expect("JSON number");
            assert!(x.is_finite(), "{at} = {x} is not finite");
        }
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| all_finite(x, &format!("{at}[{i}]"))),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| all_finite(x, &format!("{at}.{k}"))),
        _ => {}
    }
}
