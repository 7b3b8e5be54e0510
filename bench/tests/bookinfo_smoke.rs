//! Runs `ambit-bench bookinfo --quick` end to end: the real sandbox (`ambitctl local up`), load
//! on productpage in the three configurations, and checks that each configuration was the one
//! claimed (mTLS moved the ztunnels' counters, the canary kept v3 out, the baseline's pods were
//! released and ztunnel saw none of its traffic), that every figure is there, and that the
//! sandbox is gone afterwards. Needs root, like every netns test (CI is root).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{get, positive, run_report};
use serde_json::Value;

const SANDBOX: &str = "bkinfo-smoke";

/// The sandbox runs `ambitctl`, `ambit-cni`, `ambit-cni-agent` and `waypoint` from next to
/// `ambitctl`. A workspace test run (CI) has built them already, with the workspace's features,
/// and other tests are running them: use them as they are. Only a run of this package alone,
/// where they may be missing, builds them (with this package's feature set, which differs: doing
/// that in a workspace run would recompile several crates mid-run and replace binaries under
/// running tests, which made CI time out).
fn sandbox_binaries() -> PathBuf {
    let bench = Path::new(env!("CARGO_BIN_EXE_ambit-bench"));
    let profile_dir = bench.parent().expect("binary in a profile dir");
    let needed = ["ambitctl", "ambit-cni", "ambit-cni-agent", "waypoint"];
    if needed.iter().all(|b| profile_dir.join(b).is_file()) {
        return profile_dir.join("ambitctl");
    }
    let target_dir = profile_dir.parent().expect("profile dir in a target dir");
    let mut cargo = Command::new(option_env!("CARGO").unwrap_or("cargo"));
    cargo
        .args([
            "build",
            "--bins",
            "-p",
            "ambitctl",
            "-p",
            "ambit-cni",
            "-p",
            "ambit-waypoint",
        ])
        .arg("--target-dir")
        .arg(target_dir);
    if profile_dir.file_name().and_then(|n| n.to_str()) == Some("release") {
        cargo.arg("--release");
    }
    let status = cargo.status().expect("running cargo build");
    assert!(status.success(), "building the sandbox's binaries failed");
    profile_dir.join("ambitctl")
}

fn versions<'a>(r: &'a Value, config: &str, scenario: &str) -> &'a Value {
    get(
        r,
        &format!("configurations.{config}.{scenario}.overall.reviews_by_version"),
    )
}

#[test]
fn bookinfo_quick_run_measures_three_configurations_and_cleans_up() {
    if !ambit_testkit::is_root() {
        eprintln!("skipping: the Bookinfo benchmark needs root (network namespaces)");
        return;
    }
    let ambitctl = sandbox_binaries();
    let ambitctl = ambitctl.to_string_lossy().into_owned();
    let r = run_report(
        &[
            "bookinfo",
            "--quick",
            "--name",
            SANDBOX,
            "--ambitctl",
            &ambitctl,
        ],
        "bookinfo",
    );
    assert_eq!(get(&r, "benchmark"), "bookinfo");
    positive(&r, "constant_rate_qps");
    for config in ["mesh_l7", "mesh_l4", "no_mesh"] {
        for scenario in ["max_throughput", "constant_load"] {
            let at = format!("configurations.{config}.{scenario}.overall");
            for f in [
                "qps_mean",
                "completed",
                "p50_ms",
                "p75_ms",
                "p90_ms",
                "p99_ms",
                "p999_ms",
            ] {
                positive(&r, &format!("{at}.{f}"));
            }
            assert_eq!(
                get(&r, &format!("{at}.errors")).as_u64(),
                Some(0),
                "{config} {scenario}: {r:#}"
            );
            assert!(get(&r, &format!("{at}.acceptance.all_met")).is_boolean());
            assert_eq!(
                get(&r, &format!("configurations.{config}.{scenario}.runs"))
                    .as_array()
                    .map(Vec::len),
                Some(1)
            );
        }
        let res = format!("configurations.{config}.resources_at_constant_load");
        positive(&r, &format!("{res}.window_seconds"));
        positive(&r, &format!("{res}.groups.control_plane.rss_mb_max_sum"));
        positive(&r, &format!("{res}.groups.apisim.rss_mb_max_sum"));
        positive(&r, &format!("{res}.groups.apps.vcpu"));
        positive(&r, &format!("{res}.groups.data_plane.rss_mb_max_sum"));
        positive(&r, &format!("{res}.groups.ztunnel.rss_mb_max_sum"));
        positive(&r, &format!("{res}.groups.node_agent.rss_mb_max_sum"));
        positive(&r, &format!("{res}.load_generator_vcpu"));
    }
    // mTLS on in both mesh configurations: the ztunnels opened mutual-TLS connections.
    for config in ["mesh_l7", "mesh_l4"] {
        let v = format!("configurations.{config}.validation");
        positive(&r, &format!("{v}.mtls_connections_opened_during_max"));
        positive(&r, &format!("{v}.mtls_connections_opened_during_constant"));
        assert!(positive(&r, &format!("{v}.captured_pods")) >= 7.0, "{r:#}");
        // The ztunnels carried the load: they used CPU for it.
        positive(
            &r,
            &format!("configurations.{config}.resources_at_constant_load.groups.ztunnel.vcpu"),
        );
    }
    positive(
        &r,
        "configurations.mesh_l7.resources_at_constant_load.groups.waypoint.vcpu",
    );
    // The canary route (v1 90 %, v2 10 %) was live through the waypoint: no page from v3.
    for scenario in ["max_throughput", "constant_load"] {
        let l7 = versions(&r, "mesh_l7", scenario);
        assert!(l7.get("v3").is_none(), "mesh_l7 {scenario}: {l7}");
        assert!(
            l7["v1"].as_u64().unwrap_or(0) > 0,
            "mesh_l7 {scenario}: {l7}"
        );
        for config in ["mesh_l4", "no_mesh"] {
            let v = versions(&r, config, scenario);
            assert!(
                v["v3"].as_u64().unwrap_or(0) > 0,
                "{config} {scenario}: {v}"
            );
        }
    }
    // The baseline really ran without the mesh: its ztunnels did (almost) no work.
    let zt = |c: &str| {
        get(
            &r,
            &format!("configurations.{c}.resources_at_constant_load.groups.ztunnel.vcpu"),
        )
        .as_f64()
        .unwrap_or(f64::NAN)
    };
    assert!(zt("no_mesh") < zt("mesh_l4") / 4.0, "{r:#}");
    assert_eq!(
        get(&r, "configurations.no_mesh.validation.captured_pods").as_u64(),
        Some(0)
    );
    assert_eq!(
        get(
            &r,
            "configurations.no_mesh.validation.ztunnel_connections_opened_during_runs"
        )
        .as_f64(),
        Some(0.0)
    );
    assert_eq!(
        get(&r, "configurations.no_mesh.validation.released"),
        &Value::Bool(true)
    );
    for p in ["p50", "p90", "p99"] {
        assert!(get(
            &r,
            &format!("added_by_mesh_at_constant_load_ms.{p}.mesh_l4")
        )
        .is_number());
    }
    assert!(get(&r, "acceptance_all_met").is_boolean());
    positive(&r, "machine.nproc");
    assert_eq!(get(&r, "config.quick"), &Value::Bool(true));

    // Torn down: no state dir, no network namespace of the sandbox left.
    assert!(!Path::new(&format!("/run/ambit-sandbox.{SANDBOX}")).exists());
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let left = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !left.lines().any(|l| l.starts_with(&format!("{SANDBOX}-"))),
        "namespaces left behind:\n{left}"
    );
}

#[test]
fn bookinfo_refuses_a_missing_ambitctl_and_leaves_nothing() {
    if !ambit_testkit::is_root() {
        eprintln!("skipping: the Bookinfo benchmark needs root");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_ambit-bench"))
        .args(["bookinfo", "--quick", "--name", "bkinfo-missing"])
        .args([
            "--ambitctl",
            "/nonexistent/ambitctl",
            "--out",
            "/nonexistent/out.json",
        ])
        .output()
        .expect("running ambit-bench");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("/nonexistent/ambitctl is missing"),
        "{stderr}"
    );
    assert!(!Path::new("/run/ambit-sandbox.bkinfo-missing").exists());
}
