//! `check` on this machine, `completions`, and `--help` on every command.
mod common;

use common::*;

#[test]
fn check_reports_every_host_check_and_cleans_up_its_namespace() {
    let cni = std::env::temp_dir().join(format!("ambitctl-check-cni-{}", std::process::id()));
    std::fs::create_dir_all(&cni).unwrap();
    std::fs::write(cni.join("10-kindnet.conflist"), r#"{"cniVersion":"1.0.0","name":"kindnet","plugins":[{"type":"ptp"},{"type":"ambit-cni"}]}"#).unwrap();
    let out = ambitctl(&[
        "check",
        "-o",
        "json",
        "--cni-conf-dir",
        cni.to_str().unwrap(),
    ]);
    std::fs::remove_dir_all(&cni).unwrap();
    let v = out.json();
    let checks = v["checks"].as_array().unwrap();
    let by_name = |n: &str| {
        checks
            .iter()
            .find(|c| c["name"] == n)
            .unwrap_or_else(|| panic!("no check {n}: {v:#}"))
    };
    for c in checks {
        assert!(
            ["PASS", "WARN", "FAIL"].contains(&c["status"].as_str().unwrap()),
            "{c}"
        );
        assert!(c["message"].is_string(), "{c}");
        if c["status"] != "PASS" {
            assert!(
                c["hint"].as_str().is_some_and(|h| !h.is_empty()),
                "every WARN/FAIL has a fix hint: {c}"
            );
        }
    }
    let fails = v["summary"]["fail"].as_u64().unwrap();
    assert_eq!(
        fails,
        checks.iter().filter(|c| c["status"] == "FAIL").count() as u64
    );
    assert_eq!(out.code, if fails > 0 { 1 } else { 0 }, "{v:#}");
    // As root (CI is root) these must pass.
    for name in [
        "privileges",
        "kernel",
        "binary nft",
        "binary ip",
        "binary iptables",
        "nftables",
        "network namespaces",
        "cni config",
    ] {
        assert_eq!(by_name(name)["status"], "PASS", "{:#}", by_name(name));
    }
    // No API server configured: the cluster part is skipped with a warning, not failed.
    assert_eq!(by_name("api server")["status"], "WARN");
    // The probe namespace is gone.
    let msg = by_name("network namespaces")["message"]
        .as_str()
        .unwrap()
        .to_string();
    let probe = msg.rsplit(' ').next().unwrap();
    assert!(probe.starts_with("ambitctl-check-"), "{msg}");
    let list = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(probe),
        "{probe} left behind"
    );

    let missing = ambitctl(&["check", "--host-only", "--cni-conf-dir", "/nonexistent/cni"]);
    assert!(
        missing.stdout.contains("WARN") && missing.stdout.contains("fix: "),
        "{}",
        missing.stdout
    );
}

#[test]
fn check_against_a_cluster_lists_the_crds() {
    let api = ApiSim::start();
    ambitctl(&["apply", "-f", &repo("crds"), "--server", &api.url]).ok();
    let v = ambitctl(&["check", "-o", "json", "--server", &api.url]).json();
    let checks = v["checks"].as_array().unwrap();
    let crds: Vec<_> = checks
        .iter()
        .filter(|c| c["name"].as_str().unwrap().starts_with("crd "))
        .collect();
    assert_eq!(crds.len(), 6, "{v:#}");
    assert!(
        crds.iter()
            .all(|c| c["status"] == "PASS" && c["message"].as_str().unwrap().contains("v1alpha1")),
        "{v:#}"
    );
    let mesh = checks.iter().find(|c| c["name"] == "mesh").unwrap();
    assert_eq!(mesh["status"], "FAIL", "no Mesh object yet: {mesh}");
    ambitctl(&[
        "apply",
        "-f",
        &repo("examples/mesh.yaml"),
        "--server",
        &api.url,
    ])
    .ok();
    let v = ambitctl(&["check", "-o", "json", "--server", &api.url]).json();
    let mesh = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "mesh")
        .unwrap()
        .clone();
    assert_eq!(mesh["status"], "WARN", "exists but not Ready: {mesh}");
}

#[test]
fn completions_and_help() {
    let bash = ambitctl(&["completions", "bash"]).ok();
    for sub in [
        "apply",
        "get",
        "delete",
        "status",
        "config",
        "certs",
        "check",
        "top",
        "completions",
    ] {
        assert!(bash.stdout.contains(sub), "bash completion lacks {sub}");
    }
    assert!(ambitctl(&["completions", "zsh"])
        .ok()
        .stdout
        .contains("#compdef ambitctl"));
    assert_eq!(ambitctl(&["completions", "tcsh"]).code, 2);
    for cmd in [
        &["apply"][..],
        &["get"],
        &["delete"],
        &["status"],
        &["config", "dump"],
        &["certs"],
        &["check"],
        &["top"],
        &["completions"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let help = ambitctl(&args).ok();
        assert!(
            help.stdout.contains("Examples:"),
            "{cmd:?} --help has no examples:\n{}",
            help.stdout
        );
    }
    let top = ambitctl(&["--help"]).ok();
    assert!(top.stdout.contains("Exit codes"), "{}", top.stdout);
}
