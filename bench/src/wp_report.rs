//! The waypoint benchmark's figures and its JSON report (see [`crate::waypoint`]).

use serde_json::{json, Value};

use crate::http_load::{LoadResult, Proto};
use crate::procstat::{self, RssMax, WindowCpu};
use crate::stats::{percentiles, round, Percentiles};
use crate::waypoint::{Config, Side};

pub struct Series {
    pub proto: Proto,
    pub base: (LoadResult, Percentiles),
    pub wp: (LoadResult, Percentiles, WindowCpu),
}

impl Series {
    pub fn new(proto: Proto, mut base: Side, mut wp: Side) -> Self {
        let bp = percentiles(&mut base.result.samples_ns);
        let wpp = percentiles(&mut wp.result.samples_ns);
        Series {
            proto,
            base: (base.result, bp),
            wp: (wp.result, wpp, wp.cpu),
        }
    }

    fn vcpu(&self) -> f64 {
        self.wp.2.pids_total() / self.wp.2.wall
    }

    pub fn summary(&self) -> String {
        format!(
            "{:?} @1000 rps: baseline p50 {} / p99 {} µs, waypoint p50 {} / p99 {} µs, \
             errors {} / {}, waypoint {:.3} vCPU",
            self.proto,
            self.base.1.p50_us,
            self.base.1.p99_us,
            self.wp.1.p50_us,
            self.wp.1.p99_us,
            self.base.0.errors,
            self.wp.0.errors,
            self.vcpu()
        )
    }
}

pub struct Footprint {
    pub idle: WindowCpu,
    pub idle_rss: RssMax,
    pub busy_rss: RssMax,
}

fn latency_json(r: &LoadResult, p: &Percentiles, rate: f64) -> Value {
    json!({
        "rate_rps": rate,
        "achieved_rps": round(r.achieved_rps(), 1),
        "requests": r.samples_ns.len(),
        "errors": r.errors,
        "first_error": r.first_error,
        "p50_us": p.p50_us,
        "p90_us": p.p90_us,
        "p99_us": p.p99_us,
        "p999_us": p.p999_us,
        "max_us": p.max_us,
    })
}

pub fn report(
    cfg: &Config,
    series: &[Series],
    max: &[(LoadResult, Percentiles, WindowCpu)],
    f: Footprint,
    validation: Value,
    log: &str,
) -> Value {
    let rss_busy = f.busy_rss.max_mb[0];
    let mut out = serde_json::Map::new();
    let mut errors = 0;
    let mut vcpu_per_1000_h1 = 0.0;
    for s in series {
        let (br, bp) = &s.base;
        let (wr, wpp, cpu) = &s.wp;
        errors += br.errors + wr.errors;
        let per_1000 = wr.achieved_rps() / 1000.0;
        let vcpu = s.vcpu();
        if s.proto == Proto::Http1 {
            vcpu_per_1000_h1 = vcpu / per_1000;
        }
        let key = if s.proto == Proto::Http1 {
            "http1"
        } else {
            "http2"
        };
        out.insert(
            key.into(),
            json!({
                "baseline": latency_json(br, bp, cfg.rate_rps),
                "waypoint": latency_json(wr, wpp, cfg.rate_rps),
                "added_latency_us": {
                    "p50": round(wpp.p50_us - bp.p50_us, 1),
                    "p90": round(wpp.p90_us - bp.p90_us, 1),
                    "p99": round(wpp.p99_us - bp.p99_us, 1),
                },
                "waypoint_vcpu": round(vcpu, 4),
                "waypoint_vcpu_per_1000_rps": round(vcpu / per_1000, 4),
                "waypoint_cpu_us_per_request": round(cpu.pids_total() / wr.samples_ns.len().max(1) as f64 * 1e6, 1),
                "machine_cpus_busy": round(cpu.machine_cpus(), 3),
            }),
        );
    }
    let side = |(r, p, cpu): &(LoadResult, Percentiles, WindowCpu)| {
        json!({
            "achieved_rps": round(r.achieved_rps(), 1),
            "requests": r.samples_ns.len(),
            "errors": r.errors,
            "first_error": r.first_error,
            "p50_us": p.p50_us,
            "p99_us": p.p99_us,
            "machine_cpus_busy": round(cpu.machine_cpus(), 3),
            "waypoint_vcpu": round(cpu.pids_total() / cpu.wall, 3),
        })
    };
    errors += max.iter().map(|m| m.0.errors).sum::<u64>();
    out.insert(
        "max_throughput".into(),
        json!({
            "protocol": "http1",
            "connections": cfg.throughput_connections,
            "baseline": side(&max[0]),
            "waypoint": side(&max[1]),
            "ratio": round(max[1].0.achieved_rps() / max[0].0.achieved_rps(), 3),
        }),
    );
    let h1_rate = series[0].wp.0.achieved_rps() / 1000.0;
    let rss_per_1000 = rss_busy / h1_rate;
    out.insert(
        "waypoint".into(),
        json!({
            "vcpu_per_1000_rps": round(vcpu_per_1000_h1, 4),
            "rss_mb_at_1000_rps": round(rss_busy, 2),
            "rss_anon_mb_at_1000_rps": round(f.busy_rss.max_anon_mb[0], 2),
            "rss_mb_per_1000_rps": round(rss_per_1000, 2),
            "rss_mb_idle": round(f.idle_rss.max_mb[0], 2),
            "rss_anon_mb_idle": round(f.idle_rss.max_anon_mb[0], 2),
            "idle_vcpu": round(f.idle.pids_total() / f.idle.wall, 4),
            "worker_threads": cfg.waypoint_worker_threads,
            "log_warnings": log.lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).count(),
        }),
    );
    out.insert("requests_failed".into(), json!(errors));
    let (cpu_ok, rss_ok) = (vcpu_per_1000_h1 <= 0.25, rss_per_1000 <= 60.0);
    out.insert(
        "envoy_waypoint_reference".into(),
        json!({"vcpu_per_1000_rps": 0.25, "rss_mb_per_1000_rps": 60.0,
               "source": "Istio ambient published figures (FIELD-NOTES.md)"}),
    );
    out.insert(
        "targets".into(),
        json!({
            "vcpu_per_1000_rps_le_0_25": cpu_ok,
            "rss_mb_per_1000_rps_le_60": rss_ok,
            "zero_failures": errors == 0,
            "all_met": cpu_ok && rss_ok && errors == 0,
        }),
    );
    out.insert("validation".into(), validation);
    out.insert(
        "machine".into(),
        json!({
            "nproc": procstat::nproc(),
            "kernel": procstat::kernel(),
            "cpu_model": procstat::cpu_model(),
            "timestamp": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            "background_vcpu_when_idle": round(f.idle.others() / f.idle.wall, 3),
        }),
    );
    out.insert("config".into(), json!(cfg));
    let mut v = json!({"benchmark": "waypoint"});
    v.as_object_mut().expect("object").extend(out);
    v
}
