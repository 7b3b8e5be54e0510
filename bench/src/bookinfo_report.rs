//! Turning the Bookinfo benchmark's runs and `/proc` readings into its JSON: latency in the
//! thesis' percentiles (p50/p75/p90/p99/p99.9), QPS, errors, CPU and memory per component
//! group, and the thesis' acceptance criteria.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::bookinfo_load::Outcome;
use crate::procstat::{self, RssMax, WindowCpu};
use crate::stats::round;

/// The thesis' acceptance: p50 ≤ 300 ms, p99 < 1000 ms, "almost no failures" (which we read
/// as fewer than 0.1 % of requests).
pub const P50_LIMIT_MS: f64 = 300.0;
pub const P99_LIMIT_MS: f64 = 1000.0;
pub const MAX_FAILED_SHARE: f64 = 0.001;

/// Nearest-rank percentile (`q` in 0..=1) of sorted nanosecond samples, in milliseconds.
fn rank_ms(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    round(sorted[idx] as f64 / 1e6, 3)
}

/// p50/p75/p90/p99/p99.9/max in ms of `samples` (sorted in place).
pub fn latency_ms(samples: &mut [u64]) -> Value {
    samples.sort_unstable();
    json!({
        "p50_ms": rank_ms(samples, 0.50), "p75_ms": rank_ms(samples, 0.75),
        "p90_ms": rank_ms(samples, 0.90), "p99_ms": rank_ms(samples, 0.99),
        "p999_ms": rank_ms(samples, 0.999), "max_ms": rank_ms(samples, 1.0),
    })
}

/// One run's figures.
pub fn run_json(o: &Outcome) -> Value {
    let mut samples = o.load.samples_ns.clone();
    let mut v = latency_ms(&mut samples);
    v["achieved_qps"] = json!(round(o.load.achieved_rps(), 1));
    v["requests"] = json!(o.load.samples_ns.len());
    v["completed"] = json!(o.load.completed);
    v["errors"] = json!(o.load.errors);
    v["errors_by_kind"] = json!(o.errors_by_kind);
    v["reviews_by_version"] = json!(o.by_version);
    v
}

/// Several runs of one scenario: each run, and the figures over all of them (QPS mean, min,
/// max; percentiles over every sample of every run; errors summed).
pub fn scenario_json(runs: &[Outcome]) -> Value {
    let qps: Vec<f64> = runs.iter().map(|o| o.load.achieved_rps()).collect();
    let mut all: Vec<u64> = runs
        .iter()
        .flat_map(|o| o.load.samples_ns.iter().copied())
        .collect();
    let mut pooled = latency_ms(&mut all);
    let errors: u64 = runs.iter().map(|o| o.load.errors).sum();
    let completed: u64 = runs.iter().map(|o| o.load.completed).sum();
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_version: BTreeMap<String, u64> = BTreeMap::new();
    for o in runs {
        for (k, n) in &o.errors_by_kind {
            *by_kind.entry(k.clone()).or_default() += n;
        }
        for (k, n) in &o.by_version {
            *by_version.entry(k.clone()).or_default() += n;
        }
    }
    let mean = qps.iter().sum::<f64>() / qps.len().max(1) as f64;
    pooled["qps_mean"] = json!(round(mean, 1));
    pooled["qps_min"] = json!(round(
        qps.iter().copied().fold(f64::INFINITY, f64::min).min(mean),
        1
    ));
    pooled["qps_max"] = json!(round(qps.iter().copied().fold(0.0, f64::max), 1));
    pooled["errors"] = json!(errors);
    pooled["completed"] = json!(completed);
    pooled["failed_percent"] = json!(round(failed_share(errors, completed) * 100.0, 4));
    pooled["errors_by_kind"] = json!(by_kind);
    pooled["reviews_by_version"] = json!(by_version);
    pooled["acceptance"] = acceptance(&pooled, errors, completed);
    json!({"runs": runs.iter().map(run_json).collect::<Vec<_>>(), "overall": pooled})
}

fn failed_share(errors: u64, completed: u64) -> f64 {
    let total = errors + completed;
    if total == 0 {
        1.0
    } else {
        errors as f64 / total as f64
    }
}

/// The thesis' three criteria on pooled figures.
fn acceptance(pooled: &Value, errors: u64, completed: u64) -> Value {
    let p50 = pooled["p50_ms"].as_f64().unwrap_or(f64::INFINITY);
    let p99 = pooled["p99_ms"].as_f64().unwrap_or(f64::INFINITY);
    let (a, b, c) = (
        p50 <= P50_LIMIT_MS,
        p99 < P99_LIMIT_MS,
        completed > 0 && failed_share(errors, completed) < MAX_FAILED_SHARE,
    );
    json!({"p50_le_300ms": a, "p99_lt_1000ms": b, "failures_lt_0_1_percent": c, "all_met": a && b && c})
}

/// Which group a sandbox process belongs to (from its pid file's name).
pub fn group(process: &str) -> &'static str {
    if process.starts_with("ztunnel") {
        "ztunnel"
    } else if process.starts_with("node-agent") {
        "node_agent"
    } else if process.starts_with("waypoint") {
        "waypoint"
    } else if process == "operator" {
        "control_plane"
    } else if process == "apisim" {
        "apisim"
    } else if process.starts_with("app-") {
        "apps"
    } else {
        "other"
    }
}

/// CPU and memory over a scenario's windows: per process and per group (`data_plane` sums
/// ztunnels, node agents and the waypoint), plus the load
/// generator (this process) and the whole machine. `qps` normalises vCPU per 1000 req/s.
pub fn resources_json(procs: &[(String, u32)], cpu: &WindowCpu, rss: &RssMax, qps: f64) -> Value {
    let wall = cpu.wall.max(1e-9);
    let mut per_process = serde_json::Map::new();
    let mut groups: BTreeMap<&str, (f64, f64, f64)> = BTreeMap::new();
    for (i, (name, _)) in procs.iter().enumerate() {
        let vcpu = cpu.pids.get(i).copied().unwrap_or(0.0) / wall;
        let (mb, anon) = (rss.max_mb[i], rss.max_anon_mb[i]);
        per_process.insert(
            name.clone(),
            json!({"vcpu": round(vcpu, 3), "rss_mb_max": round(mb, 1), "rss_anon_mb_max": round(anon, 1)}),
        );
        let g = groups.entry(group(name)).or_default();
        g.0 += vcpu;
        g.1 += mb;
        g.2 += anon;
    }
    // The data plane as a whole: what the mesh adds to every node (and the waypoint, if used).
    let mut total = (0.0, 0.0, 0.0);
    for g in ["ztunnel", "node_agent", "waypoint"] {
        if let Some(x) = groups.get(g) {
            total = (total.0 + x.0, total.1 + x.1, total.2 + x.2);
        }
    }
    groups.insert("data_plane", total);
    let groups: serde_json::Map<String, Value> = groups
        .into_iter()
        .map(|(g, (vcpu, mb, anon))| {
            let per_1000 = if qps > 0.0 { vcpu / qps * 1000.0 } else { 0.0 };
            (
                g.to_string(),
                json!({"vcpu": round(vcpu, 3), "vcpu_per_1000_qps": round(per_1000, 3),
                       "rss_mb_max_sum": round(mb, 1), "rss_anon_mb_max_sum": round(anon, 1)}),
            )
        })
        .collect();
    json!({
        "window_seconds": round(cpu.wall, 1),
        "groups": groups,
        "processes": per_process,
        "load_generator_vcpu": round(cpu.me / wall, 3),
        "machine_busy_vcpu": round(cpu.machine_cpus(), 3),
        "other_vcpu": round(cpu.others() / wall, 3),
    })
}

/// The whole report: every configuration's figures (keyed `mesh_l7`, `mesh_l4`, `no_mesh`),
/// what the mesh adds at constant load, the acceptance over all of them, the knobs and the
/// machine (with its load before the sandbox started, measured over `idle`).
pub fn summary_json(
    configs: serde_json::Map<String, Value>,
    rate: f64,
    idle: &WindowCpu,
    config: Value,
) -> Value {
    let get = |c: &str, p: &str| {
        configs
            .get(c)
            .and_then(|v| v.pointer(p))
            .and_then(Value::as_f64)
    };
    let added = |p: &str| {
        let f = |c| get(c, &format!("/constant_load/overall/{p}"));
        json!({
            "mesh_l4": f("mesh_l4").zip(f("no_mesh")).map(|(a, b)| round(a - b, 3)),
            "mesh_l7": f("mesh_l7").zip(f("no_mesh")).map(|(a, b)| round(a - b, 3)),
        })
    };
    let all_met = configs.values().all(|c| {
        ["max_throughput", "constant_load"]
            .iter()
            .all(|sc| c[*sc]["overall"]["acceptance"]["all_met"] == true)
    });
    json!({
        "benchmark": "bookinfo",
        "constant_rate_qps": round(rate, 1),
        "added_by_mesh_at_constant_load_ms": {
            "p50": added("p50_ms"), "p90": added("p90_ms"), "p99": added("p99_ms"),
        },
        "acceptance_all_met": all_met,
        "configurations": configs,
        "config": config,
        "machine": {
            "nproc": procstat::nproc(), "kernel": procstat::kernel(), "cpu": procstat::cpu_model(),
            "timestamp": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            "background_vcpu_when_idle": round(idle.others() / idle.wall.max(1e-9), 3),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http_load::LoadResult;

    fn outcome(samples_ms: &[u64], errors: u64) -> Outcome {
        Outcome {
            load: LoadResult {
                samples_ns: samples_ms.iter().map(|m| m * 1_000_000).collect(),
                errors,
                completed: samples_ms.len() as u64,
                window_seconds: 2.0,
                first_error: None,
            },
            ..Default::default()
        }
    }

    #[test]
    fn percentiles_in_ms_and_qps() {
        let v = run_json(&outcome(&(1..=100).collect::<Vec<_>>(), 0));
        assert_eq!(v["p50_ms"], 50.0);
        assert_eq!(v["p75_ms"], 75.0);
        assert_eq!(v["p99_ms"], 99.0);
        assert_eq!(v["max_ms"], 100.0);
        assert_eq!(v["achieved_qps"], 50.0);
    }

    #[test]
    fn acceptance_follows_the_thesis_limits() {
        let fast = scenario_json(&[outcome(&[100; 1000], 0), outcome(&[200; 1000], 1)]);
        let a = &fast["overall"]["acceptance"];
        assert_eq!(a["all_met"], true, "{fast:#}");
        assert_eq!(fast["overall"]["errors"], 1);
        // 1 failure in 2001 is under 0.1 %; 3 in 1003 is not.
        let failing = scenario_json(&[outcome(&[100; 1000], 3)]);
        assert_eq!(
            failing["overall"]["acceptance"]["failures_lt_0_1_percent"],
            false
        );
        let slow = scenario_json(&[outcome(&[400; 100], 0)]);
        assert_eq!(slow["overall"]["acceptance"]["p50_le_300ms"], false);
        assert_eq!(slow["overall"]["acceptance"]["p99_lt_1000ms"], true);
        let none = scenario_json(&[outcome(&[], 0)]);
        assert_eq!(none["overall"]["acceptance"]["all_met"], false);
    }

    #[test]
    fn summary_adds_latency_over_the_baseline_and_needs_every_criterion() {
        let cfg = |ms: u64| {
            let x = scenario_json(&[outcome(&[ms; 100], 0)]);
            json!({"max_throughput": x.clone(), "constant_load": x})
        };
        let mut configs = serde_json::Map::new();
        configs.insert("no_mesh".into(), cfg(1));
        configs.insert("mesh_l4".into(), cfg(3));
        configs.insert("mesh_l7".into(), cfg(10));
        let idle = WindowCpu {
            wall: 1.0,
            ..Default::default()
        };
        let r = summary_json(configs.clone(), 100.0, &idle, json!({}));
        assert_eq!(
            r["added_by_mesh_at_constant_load_ms"]["p50"]["mesh_l4"],
            2.0
        );
        assert_eq!(
            r["added_by_mesh_at_constant_load_ms"]["p99"]["mesh_l7"],
            9.0
        );
        assert_eq!(r["acceptance_all_met"], true);
        configs.insert("mesh_l4".into(), cfg(2000));
        let r = summary_json(configs, 100.0, &idle, json!({}));
        assert_eq!(r["acceptance_all_met"], false);
    }

    #[test]
    fn groups_processes_by_pid_file_name() {
        assert_eq!(group("ztunnel-node-1"), "ztunnel");
        assert_eq!(group("node-agent-node-2"), "node_agent");
        assert_eq!(group("waypoint-0"), "waypoint");
        assert_eq!(group("operator"), "control_plane");
        assert_eq!(group("apisim"), "apisim");
        assert_eq!(group("app-reviews-v1"), "apps");
    }
}
