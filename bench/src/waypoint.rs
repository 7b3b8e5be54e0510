//! `ambit-bench waypoint`: what the waypoint hop costs, against the same requests sent straight
//! to the backend, in one run on one machine.
//!
//! ```text
//! baseline:  client ══ HBONE ══════════════════════════════► api-v1 (HBONE server ─► app)
//! waypoint:  client ══ HBONE ══► waypoint (route 90/10 v1/v2, ══► api-v1 | api-v2
//!                                retries, L7 ALLOW policy)
//! ```
//!
//! The client plays the source ztunnel (core's HBONE client, the client pod's identity); each
//! backend pod runs core's HBONE server in front of its app, as the destination ztunnel would.
//! The only difference between the two paths is the waypoint, a separate process whose CPU and
//! memory are read from /proc. Series: open-loop 1000 req/s of 1 KiB requests / 1 KiB answers
//! over keep-alive HTTP/1.1 and over HTTP/2 (the two paths take turns in short rounds so that
//! drift on the VM hits both alike), then closed-loop maximum throughput (HTTP/1.1).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use crate::http_load::{self, Caller, LoadResult, Mode, Plan, Proto, Target};
use crate::procstat::{RssMax, Window, WindowCpu};
use crate::stats::{percentiles, round};
use crate::wp_env::{self, Env};
use crate::wp_report::{report, Footprint, Series};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// A tiny run (about 2 s of load per series) for the CI smoke test.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the JSON result (it is also printed to stdout).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/waypoint.json"))]
    pub out: PathBuf,
    /// Run this `waypoint` binary instead of re-executing the bench binary as the waypoint
    /// (same code; a smaller binary maps fewer pages, which shows in RSS).
    #[arg(long)]
    pub waypoint_bin: Option<PathBuf>,
    /// The waypoint's tokio worker threads.
    #[arg(long, default_value_t = 2)]
    pub waypoint_worker_threads: usize,
}

/// Every knob of a run; reported as `config`.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub quick: bool,
    pub rate_rps: f64,
    pub request_bytes: usize,
    pub response_bytes: usize,
    /// Keep-alive connections (HTTP/1.1) / concurrent request slots (HTTP/2) of the fixed-rate series.
    pub latency_workers: usize,
    /// HTTP/2 tunnels the fixed-rate HTTP/2 workers share.
    pub h2_connections: usize,
    pub latency_warmup_s: f64,
    /// Measured seconds per path and protocol, split into alternating rounds.
    pub latency_duration_s: f64,
    pub latency_rounds: usize,
    pub latency_round_warmup_s: f64,
    pub throughput_connections: usize,
    pub throughput_warmup_s: f64,
    pub throughput_duration_s: f64,
    pub idle_settle_s: f64,
    pub waypoint_worker_threads: usize,
    pub waypoint_binary: String,
    pub route: &'static str,
    pub policy: &'static str,
    pub load_generator: &'static str,
}

const LOAD_GENERATOR: &str = "in the bench process: the client (core's HBONE client + hyper) on \
one thread in the client pod's namespace with a current-thread tokio runtime; due times from a \
sender thread with 1 ns timer slack; latency from each request's due time. Backend pods: core's \
HBONE server + a hyper app answering 1 KiB, one current-thread runtime per pod.";

impl Config {
    fn new(args: &Args) -> Self {
        let q = |full: f64, quick: f64| if args.quick { quick } else { full };
        Config {
            quick: args.quick,
            rate_rps: 1000.0,
            request_bytes: crate::load::REQUEST_BYTES,
            response_bytes: crate::load::RESPONSE_BYTES,
            latency_workers: 16,
            h2_connections: 4,
            latency_warmup_s: q(1.0, 0.2),
            latency_duration_s: q(20.0, 0.6),
            latency_rounds: if args.quick { 1 } else { 4 },
            latency_round_warmup_s: 0.3,
            throughput_connections: 64,
            throughput_warmup_s: q(1.0, 0.2),
            throughput_duration_s: q(10.0, 0.5),
            idle_settle_s: q(2.0, 0.3),
            waypoint_worker_threads: args.waypoint_worker_threads,
            waypoint_binary: match &args.waypoint_bin {
                Some(b) => b.display().to_string(),
                None => "ambit-bench waypoint-proxy (re-exec)".into(),
            },
            route: "api: one rule, backends v1 (weight 90) / v2 (weight 10), timeout 5s, \
                    retries {attempts 3, perTryTimeout 2s, retryOn 5xx,connect-failure,reset}",
            policy: "ALLOW from principal sa/client, to POST /api/*",
            load_generator: LOAD_GENERATOR,
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

struct Progress(Instant);

impl Progress {
    fn say(&self, what: impl std::fmt::Display) {
        eprintln!("[waypoint {:6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

/// One path's figures in one series.
#[derive(Default)]
pub struct Side {
    pub result: LoadResult,
    /// Waypoint CPU over this side's measured windows.
    pub cpu: WindowCpu,
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Runs one plan; samples the waypoint's CPU over the measured window and (when `rss` is given)
/// its RSS every 250 ms.
fn measure(
    caller: &Caller,
    target: &Target,
    plan: Plan,
    pid: u32,
    mut rss: Option<&mut RssMax>,
) -> anyhow::Result<(LoadResult, WindowCpu)> {
    let run = http_load::start(caller, target, plan)?;
    let (from, to) = run.window;
    sleep_until(from);
    let cpu = Window::start(&[pid])?;
    while Instant::now() + Duration::from_millis(250) < to {
        std::thread::sleep(Duration::from_millis(250));
        if let Some(r) = rss.as_deref_mut() {
            r.sample()?;
        }
    }
    sleep_until(to);
    let cpu = cpu.finish()?;
    if let Some(r) = rss {
        r.sample()?;
    }
    Ok((run.finish()?, cpu))
}

pub fn run(args: &Args) -> anyhow::Result<Value> {
    let p = Progress(Instant::now());
    let cfg = Config::new(args);
    let mut env = Env::build()?;
    let cmd = wp_env::waypoint_command(args.waypoint_bin.as_ref())?;
    let pid = env.start_waypoint(cmd, cfg.waypoint_worker_threads)?;
    p.say(format!("waypoint up (pid {pid})"));

    let idle = Window::start(&[pid])?;
    std::thread::sleep(secs(cfg.idle_settle_s));
    let idle = idle.finish()?;
    let mut idle_rss = RssMax::new(&[pid]);
    idle_rss.sample()?;

    let caller = Caller {
        ns: env.client.ns.path(),
        ip: env.client.ip.into(),
        slot: env.client_slot.clone(),
    };
    let (v1_ip, v1_id, v1_hits) = env.backend("v1")?;
    let (_, _, v2_hits) = env.backend("v2")?;
    let target = |via_waypoint: bool, proto: Proto| -> anyhow::Result<Target> {
        let port = |h1, h2| if proto == Proto::Http1 { h1 } else { h2 };
        Ok(if via_waypoint {
            Target {
                hbone: (env.wp.ip, wp_env::HBONE_PORT).into(),
                identity: wp_env::identity("waypoint")?,
                authority: (wp_env::VIP, port(wp_env::H1_PORT, wp_env::H2_PORT)).into(),
                proto,
            }
        } else {
            Target {
                hbone: (v1_ip, wp_env::HBONE_PORT).into(),
                identity: v1_id.clone(),
                authority: (v1_ip, port(wp_env::H1_APP, wp_env::H2_APP)).into(),
                proto,
            }
        })
    };

    // The policy is live: a path it does not allow is refused by the waypoint.
    let denied = http_load::probe_status(&caller, &target(true, Proto::Http1)?, "/admin")?;
    if denied != 403 {
        bail!("POST /admin through the waypoint answered {denied}, expected 403 from the ALLOW policy");
    }

    // 1. Fixed rate, HTTP/1.1 then HTTP/2; baseline and waypoint take turns.
    let mut busy_rss = RssMax::new(&[pid]);
    let mut series = vec![];
    let (mut wp_v1, mut wp_v2) = (0u64, 0u64);
    for proto in [Proto::Http1, Proto::Http2] {
        let mut sides: [Side; 2] = Default::default();
        let slice = cfg.latency_duration_s / cfg.latency_rounds as f64;
        for round in 0..cfg.latency_rounds {
            for (k, side) in sides.iter_mut().enumerate() {
                let via = k == 1;
                let plan = Plan {
                    mode: Mode::FixedRate {
                        rate_per_s: cfg.rate_rps,
                    },
                    workers: cfg.latency_workers,
                    h2_connections: cfg.h2_connections,
                    warmup: secs(if round == 0 {
                        cfg.latency_warmup_s
                    } else {
                        cfg.latency_round_warmup_s
                    }),
                    duration: secs(slice),
                };
                let (h1, h2) = (
                    v1_hits.load(Ordering::Relaxed),
                    v2_hits.load(Ordering::Relaxed),
                );
                let rss = via.then_some(&mut busy_rss);
                let (r, cpu) = measure(&caller, &target(via, proto)?, plan, pid, rss)
                    .with_context(|| {
                        format!(
                            "{proto:?} {} series",
                            if via { "waypoint" } else { "baseline" }
                        )
                    })?;
                if via {
                    wp_v1 += v1_hits.load(Ordering::Relaxed) - h1;
                    wp_v2 += v2_hits.load(Ordering::Relaxed) - h2;
                }
                side.result.samples_ns.extend(r.samples_ns);
                side.result.errors += r.errors;
                side.result.completed += r.completed;
                side.result.window_seconds += r.window_seconds;
                if side.result.first_error.is_none() {
                    side.result.first_error = r.first_error;
                }
                side.cpu.add(&cpu);
            }
        }
        let [base, wp] = sides;
        let s = Series::new(proto, base, wp);
        p.say(s.summary());
        series.push(s);
    }

    // 2. Maximum throughput, closed loop over HTTP/1.1.
    let mut max = vec![];
    for via in [false, true] {
        let plan = Plan {
            mode: Mode::ClosedLoop,
            workers: cfg.throughput_connections,
            h2_connections: 0,
            warmup: secs(cfg.throughput_warmup_s),
            duration: secs(cfg.throughput_duration_s),
        };
        let (h1, h2) = (
            v1_hits.load(Ordering::Relaxed),
            v2_hits.load(Ordering::Relaxed),
        );
        let (mut r, cpu) = measure(&caller, &target(via, Proto::Http1)?, plan, pid, None)
            .context("maximum-throughput series")?;
        if via {
            wp_v1 += v1_hits.load(Ordering::Relaxed) - h1;
            wp_v2 += v2_hits.load(Ordering::Relaxed) - h2;
        }
        let pct = percentiles(&mut r.samples_ns);
        p.say(format!(
            "max throughput {}: {:.0} req/s, p50 {} µs, p99 {} µs, {} errors, machine {:.2} CPUs, waypoint {:.2} CPUs",
            if via { "waypoint" } else { "baseline" },
            r.achieved_rps(),
            pct.p50_us,
            pct.p99_us,
            r.errors,
            cpu.machine_cpus(),
            cpu.pids_total() / cpu.wall
        ));
        max.push((r, pct, cpu));
    }

    let metrics = env.metrics()?;
    // `+ 0.0` turns the -0.0 of an empty sum into 0.
    let m = |name: &str, labels: &[(&str, &str)]| {
        ambit_testkit::mesh::metric_sum(&metrics, name, labels) + 0.0
    };
    let validation = json!({
        "policy_denied_status": denied,
        "waypoint_requests_200": m("ambit_requests_total", &[("response_code", "200")]),
        "waypoint_requests_total": m("ambit_requests_total", &[]),
        "waypoint_requests_route_canary": m("ambit_requests_total", &[("route", "api.canary")]),
        "waypoint_requests_403": m("ambit_requests_total", &[("response_code", "403")]),
        "upstream_retries": m("ambit_upstream_retries_total", &[]),
        "backend_v1_requests": wp_v1,
        "backend_v2_requests": wp_v2,
        "v2_share_percent": round(wp_v2 as f64 * 100.0 / (wp_v1 + wp_v2).max(1) as f64, 2),
    });
    if wp_v2 == 0 {
        bail!("no request reached v2 through the waypoint: the 90/10 split was not applied");
    }
    let log = env.log();
    let failed = series
        .iter()
        .map(|s| s.base.0.errors + s.wp.0.errors)
        .chain(max.iter().map(|m| m.0.errors))
        .sum::<u64>();
    if failed > 0 {
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        p.say(format!(
            "{failed} requests failed; waypoint log (last lines, more with AMBIT_BENCH_LOG=debug):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        ));
    }
    drop(env);
    let result = report(
        &cfg,
        &series,
        &max,
        Footprint {
            idle,
            idle_rss,
            busy_rss,
        },
        validation,
        &log,
    );
    p.say("done");
    Ok(result)
}
