//! `ambit-bench bookinfo`: the App Mesh vs Istio thesis' evaluation, reproduced on the local
//! sandbox (`ambitctl local up`): Bookinfo's productpage under load from the client pod, in
//! three configurations of the same sandbox, one after the other:
//!
//! * `mesh_l7`: namespace enrolled (mTLS between ztunnels) and served by the waypoint, with the
//!   90/10 canary route of `examples/canary-90-10.yaml` applied (`ambitctl apply -f`);
//! * `mesh_l4`: enrolled, waypoint opted out (`ambit.dev/use-waypoint=none`): ztunnels only;
//! * `no_mesh`: the namespace released (`ambit.dev/dataplane-mode=none`), with a kube-proxy
//!   stand-in (DNAT per Service VIP in the nodes) since the sandbox has no kube-proxy.
//!
//! Scenarios (the thesis'): 1. maximum throughput, closed loop over `--connections` keep-alive
//! connections, `--runs` × `--seconds`; 2. constant load at 75 % of the lowest mesh maximum,
//! `--constant-runs` × `--constant-seconds`; 3. CPU and memory of every sandbox process over
//! the scenario-2 windows. docs/evaluation.md has the method and the results.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::bookinfo_load::{self as load, Mode, Outcome, Plan};
use crate::bookinfo_report::{resources_json, scenario_json, summary_json};
use crate::bookinfo_sandbox::{Sandbox, PRODUCTPAGE_VIP};
use crate::procstat::{self, RssMax, Window, WindowCpu};

const CANARY_YAML: &str = include_str!("../../examples/canary-90-10.yaml");
/// Pages per probe when checking which routing is live.
const PROBE_PAGES: usize = 40;
/// How long a configuration change may take to reach every proxy.
const SWITCH_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Sandbox name (its network namespaces are NAME-*).
    #[arg(long, default_value = "bkinfo")]
    pub name: String,
    /// The ambitctl binary (default: next to this one, where cargo puts it).
    #[arg(long)]
    pub ambitctl: Option<PathBuf>,
    #[arg(long, default_value_t = 2)]
    pub nodes: u16,
    /// Keep-alive connections of the load client (the thesis used 220).
    #[arg(long, default_value_t = 220)]
    pub connections: usize,
    /// Scenario 1: maximum-throughput runs per configuration, and seconds each.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Scenario 2: constant-load runs per configuration, and seconds each.
    #[arg(long, default_value_t = 3)]
    pub constant_runs: usize,
    #[arg(long, default_value_t = 15)]
    pub constant_seconds: u64,
    /// Unmeasured seconds at the start of every run.
    #[arg(long, default_value_t = 1)]
    pub warmup_seconds: u64,
    /// Smoke-test sizes: 1 run of 2 s per scenario, 16 connections.
    #[arg(long)]
    pub quick: bool,
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/bookinfo.json"))]
    pub out: PathBuf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Config {
    MeshL7,
    MeshL4,
    NoMesh,
}

impl Config {
    fn key(self) -> &'static str {
        match self {
            Config::MeshL7 => "mesh_l7",
            Config::MeshL4 => "mesh_l4",
            Config::NoMesh => "no_mesh",
        }
    }
}

struct Sizes {
    connections: usize,
    runs: usize,
    seconds: u64,
    constant_runs: usize,
    constant_seconds: u64,
    warmup: Duration,
}

impl Sizes {
    fn of(a: &Args) -> Sizes {
        if a.quick {
            return Sizes {
                connections: a.connections.min(16),
                runs: 1,
                seconds: 2,
                constant_runs: 1,
                constant_seconds: 2,
                warmup: Duration::from_millis(500),
            };
        }
        Sizes {
            connections: a.connections,
            runs: a.runs,
            seconds: a.seconds,
            constant_runs: a.constant_runs,
            constant_seconds: a.constant_seconds,
            warmup: Duration::from_secs(a.warmup_seconds),
        }
    }
}

/// What one configuration measured.
#[derive(Default)]
struct Measured {
    max: Vec<Outcome>,
    constant: Vec<Outcome>,
    resources: Value,
    validation: Value,
}

pub fn run(args: &Args) -> anyhow::Result<Value> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the Bookinfo benchmark runs the sandbox (network namespaces, nftables): run it as root");
    }
    let sizes = Sizes::of(args);
    if sizes.connections == 0 || sizes.runs == 0 || sizes.constant_runs == 0 {
        bail!("--connections, --runs and --constant-runs must be at least 1");
    }
    let bin = match &args.ambitctl {
        Some(p) => p.clone(),
        None => std::env::current_exe()?.with_file_name("ambitctl"),
    };
    // Load on the machine before we add any: the VM is shared.
    let idle = Window::start(&[])?;
    std::thread::sleep(Duration::from_secs(2));
    let idle = idle.finish()?;

    eprintln!(
        "bookinfo: `{} local up --name {}`",
        bin.display(),
        args.name
    );
    let sb = Sandbox::up(&bin, &args.name, args.nodes)?;
    let client = sb.client_netns()?;
    let tuned = sb.tune_pods()?;
    sb.apply("route", CANARY_YAML)
        .context("applying examples/canary-90-10.yaml")?;
    let mut m: Vec<(Config, Measured)> = vec![];

    // Scenario 1 for both mesh configurations, then the rate for scenario 2.
    for cfg in [Config::MeshL7, Config::MeshL4] {
        let validation = switch(&sb, &client, cfg)?;
        let before = mtls_opened(&sb)?;
        let max = max_runs(&client, &sizes, cfg)?;
        let mut v = validation;
        v["mtls_connections_opened_during_max"] = json!(mtls_opened(&sb)? - before);
        m.push((
            cfg,
            Measured {
                max,
                validation: v,
                ..Default::default()
            },
        ));
    }
    let lowest = m
        .iter()
        .map(|(_, x)| mean_qps(&x.max))
        .fold(f64::INFINITY, f64::min);
    if !(lowest.is_finite() && lowest > 0.0) {
        bail!("no mesh configuration completed any request at maximum throughput");
    }
    let rate = (0.75 * lowest).max(1.0);
    eprintln!("bookinfo: constant load at {rate:.0} req/s (75 % of the lowest mesh maximum)");

    // Scenario 2 (+3): mesh_l4 is live now, then mesh_l7 again.
    for cfg in [Config::MeshL4, Config::MeshL7] {
        if cfg == Config::MeshL7 {
            switch(&sb, &client, cfg)?;
        }
        let before = mtls_opened(&sb)?;
        let (constant, res) = constant_runs(&sb, &client, &sizes, rate, cfg)?;
        let x = &mut m
            .iter_mut()
            .find(|(c, _)| *c == cfg)
            .expect("measured above")
            .1;
        x.validation["mtls_connections_opened_during_constant"] = json!(mtls_opened(&sb)? - before);
        x.constant = constant;
        x.resources = res;
    }

    // The baseline last: re-enrolling afterwards is not needed.
    let validation = switch(&sb, &client, Config::NoMesh)?;
    let before = all_opened(&sb)?;
    let max = max_runs(&client, &sizes, Config::NoMesh)?;
    let (constant, resources) = constant_runs(&sb, &client, &sizes, rate, Config::NoMesh)?;
    let mut v = validation;
    let moved = all_opened(&sb)? - before;
    v["ztunnel_connections_opened_during_runs"] = json!(moved);
    v["released"] = json!(v["captured_pods"] == 0 && moved == 0.0);
    sb.remove_kube_proxy();
    m.push((
        Config::NoMesh,
        Measured {
            max,
            constant,
            resources,
            validation: v,
        },
    ));
    drop(sb);

    let mut r = report(args, &sizes, rate, &idle, &m);
    r["config"]["pod_sysctls"] = json!({"net.ipv4.tcp_tw_reuse": 1, "pod_namespaces": tuned});
    Ok(r)
}

fn max_runs(client: &std::path::Path, s: &Sizes, cfg: Config) -> anyhow::Result<Vec<Outcome>> {
    let plan = Plan {
        mode: Mode::ClosedLoop,
        connections: s.connections,
        warmup: s.warmup,
        duration: Duration::from_secs(s.seconds),
    };
    (0..s.runs)
        .map(|i| {
            let o = load::run(client, PRODUCTPAGE_VIP, plan.clone())?;
            eprintln!(
                "bookinfo: {} max run {}/{}: {:.0} req/s, {} errors",
                cfg.key(),
                i + 1,
                s.runs,
                o.load.achieved_rps(),
                o.load.errors
            );
            Ok(o)
        })
        .collect()
}

/// Scenario 2 runs, with CPU and peak RSS of every sandbox process over them (scenario 3).
fn constant_runs(
    sb: &Sandbox,
    client: &std::path::Path,
    s: &Sizes,
    rate: f64,
    cfg: Config,
) -> anyhow::Result<(Vec<Outcome>, Value)> {
    let procs: Vec<(String, u32)> = sb
        .processes()
        .into_iter()
        .filter(|(_, pid)| procstat::cpu_seconds(*pid).is_ok())
        .collect();
    let pids: Vec<u32> = procs.iter().map(|p| p.1).collect();
    let plan = Plan {
        mode: Mode::FixedRate { rate_per_s: rate },
        connections: s.connections,
        warmup: s.warmup,
        duration: Duration::from_secs(s.constant_seconds),
    };
    let mut cpu = WindowCpu::default();
    let mut rss = RssMax::new(&pids);
    let mut runs = vec![];
    for i in 0..s.constant_runs {
        let window = Window::start(&pids)?;
        let stop = AtomicBool::new(false);
        let (o, sampled) = std::thread::scope(|scope| {
            let sampler = scope.spawn(|| {
                let mut r = RssMax::new(&pids);
                while !stop.load(Ordering::Relaxed) {
                    let _ = r.sample();
                    std::thread::sleep(Duration::from_millis(250));
                }
                r
            });
            let o = load::run(client, PRODUCTPAGE_VIP, plan.clone());
            stop.store(true, Ordering::Relaxed);
            (o, sampler.join())
        });
        let o = o?;
        cpu.add(&window.finish()?);
        if let Ok(r) = sampled {
            for k in 0..pids.len() {
                rss.max_mb[k] = rss.max_mb[k].max(r.max_mb[k]);
                rss.max_anon_mb[k] = rss.max_anon_mb[k].max(r.max_anon_mb[k]);
            }
        }
        eprintln!(
            "bookinfo: {} constant run {}/{} at {rate:.0} req/s: achieved {:.0}, {} errors",
            cfg.key(),
            i + 1,
            s.constant_runs,
            o.load.achieved_rps(),
            o.load.errors
        );
        runs.push(o);
    }
    let qps = mean_qps(&runs);
    Ok((runs, resources_json(&procs, &cpu, &rss, qps)))
}

fn mean_qps(runs: &[Outcome]) -> f64 {
    runs.iter().map(|o| o.load.achieved_rps()).sum::<f64>() / runs.len().max(1) as f64
}

/// Mutual-TLS connections the ztunnels opened (as the source side), all nodes.
fn mtls_opened(sb: &Sandbox) -> anyhow::Result<f64> {
    sb.ztunnel_metric(
        "ambit_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("connection_security_policy", "mutual_tls"),
        ],
    )
}

fn all_opened(sb: &Sandbox) -> anyhow::Result<f64> {
    sb.ztunnel_metric("ambit_tcp_connections_opened_total", &[])
}

/// Puts the sandbox in configuration `cfg` and waits until the traffic shows it.
fn switch(sb: &Sandbox, client: &std::path::Path, cfg: Config) -> anyhow::Result<Value> {
    eprintln!("bookinfo: switching to {}", cfg.key());
    match cfg {
        Config::MeshL7 => sb.label_namespace("ambient", "waypoint")?,
        Config::MeshL4 => sb.label_namespace("ambient", "none")?,
        Config::NoMesh => {
            sb.install_kube_proxy()?;
            sb.label_namespace("none", "none")?;
        }
    }
    let deadline = Instant::now() + SWITCH_TIMEOUT;
    loop {
        let probe = load::probe(client, PRODUCTPAGE_VIP, PROBE_PAGES);
        let captured = sb.captured_pods()?;
        if let Ok(p) = &probe {
            let n = |v: &str| p.by_version.get(v).copied().unwrap_or(0);
            let ok = p.load.errors == 0 && p.load.completed >= PROBE_PAGES as u64 / 2;
            // The canary sends nothing to v3; without the waypoint, ztunnel spreads reviews'
            // traffic over all three versions (no v3 in 40 would be a (2/3)^40 chance).
            let live = match cfg {
                Config::MeshL7 => n("v3") == 0 && n("v1") > 0,
                Config::MeshL4 => n("v3") > 0,
                Config::NoMesh => captured == 0 && n("v3") > 0,
            };
            if ok && live {
                return Ok(
                    json!({"captured_pods": captured, "probe_reviews_by_version": p.by_version}),
                );
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{} did not take effect within {SWITCH_TIMEOUT:?}: captured pods {captured}, last probe {:?}",
                cfg.key(),
                probe.map(|p| (p.by_version, p.errors_by_kind))
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn report(args: &Args, s: &Sizes, rate: f64, idle: &WindowCpu, m: &[(Config, Measured)]) -> Value {
    let configs: serde_json::Map<String, Value> = m
        .iter()
        .map(|(cfg, x)| {
            let v = json!({
                "max_throughput": scenario_json(&x.max),
                "constant_load": scenario_json(&x.constant),
                "resources_at_constant_load": x.resources,
                "validation": x.validation,
            });
            (cfg.key().to_string(), v)
        })
        .collect();
    let config = json!({
        "quick": args.quick, "nodes": args.nodes, "connections": s.connections,
        "max_runs": s.runs, "max_seconds": s.seconds,
        "constant_runs": s.constant_runs, "constant_seconds": s.constant_seconds,
        "warmup_seconds": s.warmup.as_secs_f64(),
        "constant_rate_rule": "75% of the lower mean maximum of mesh_l7 and mesh_l4",
        "target": "GET http://10.96.0.10:9080/productpage from pod client (HTTP/1.1 keep-alive)",
    });
    summary_json(configs, rate, idle, config)
}
