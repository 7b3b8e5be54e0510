//! `ambit-bench l4`: plain TCP ("direct") and the mesh side by side on one two-node
//! topology, with the same load generators; only the target address differs.
//!
//! ```text
//! node 0                                          node 1
//!   direct-client (not captured) ──────────────────► direct-server (not captured)
//!   mesh-client ─► ztunnel 0 ══ HBONE mTLS ═════════► ztunnel 1 ─► mesh-server
//!   direct-client ─► relay (lo) ── plain TCP ───────► relay ─► direct-server  (control)
//!   idle-0-* (captured, enrolled)                   idle-1-* (captured, enrolled)
//! ```
//!
//! The `relay` side is a control: two minimal user-space TCP relays (no TLS, no HTTP/2)
//! where the ztunnels sit, so the report separates what two extra user-space hops cost on
//! this machine from what ztunnel itself adds.
//!
//! Phases: idle ztunnel footprint with ~100 captured workloads, open-loop request/response
//! latency at a fixed rate (with ztunnel CPU and RSS), bulk throughput (1 and 8 streams),
//! new-connection rate, and ztunnel RSS with many open tunnels.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ambit_testkit::mesh::{metric_sum, Mesh, ZtunnelOpts};
use anyhow::{bail, Context};
use serde::Serialize;
use serde_json::{json, Value};

use crate::load::{self, FixedRate, Held, Server, BULK_PORT, RR_PORT};
use crate::procstat::{self, RssMax, Window, WindowCpu};
use crate::stats::{percentiles, round, Percentiles};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Shorten every phase (about 15 s of measuring) for CI smoke tests.
    #[arg(long)]
    pub quick: bool,
    /// Where to write the JSON result (it is also printed to stdout).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results/l4.json"))]
    pub out: PathBuf,
    /// Extra argument for both ztunnels (repeatable), for experiments, e.g.
    /// `--ztunnel-arg=--worker-threads=1`. Recorded in `config.ztunnel_extra_args`.
    #[arg(long = "ztunnel-arg", allow_hyphen_values = true, value_name = "ARG")]
    pub ztunnel_args: Vec<String>,
}

/// Every knob of a run; reported as `config` in the result.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub quick: bool,
    pub nodes: usize,
    pub throughput_warmup_s: f64,
    pub throughput_duration_s: f64,
    pub throughput_chunk_bytes: usize,
    pub throughput_parallel_streams: usize,
    pub latency_rate_rps: f64,
    pub latency_connections: usize,
    pub latency_warmup_s: f64,
    /// Total measured seconds per side, split into this many alternating rounds.
    pub latency_duration_s: f64,
    pub latency_rounds: usize,
    /// Warm-up before every round after the first.
    pub latency_round_warmup_s: f64,
    pub request_bytes: usize,
    pub response_bytes: usize,
    pub connection_rate_workers: usize,
    pub connection_rate_warmup_s: f64,
    pub connection_rate_duration_s: f64,
    /// Captured, enrolled workloads per node (the mesh pods included).
    pub workloads_per_node: usize,
    pub idle_settle_s: f64,
    pub open_tunnels: usize,
    pub open_tunnels_settle_s: f64,
    pub ztunnel_worker_threads: usize,
    pub ztunnel_extra_args: Vec<String>,
    pub nofile_limit: u64,
    pub load_generator: &'static str,
}

const LOAD_GENERATOR: &str = "in the bench process, one OS thread per role inside the pod's \
network namespace: servers and the bulk/connection-rate/open-tunnel clients each run a \
current-thread tokio runtime (at most one core each); the fixed-rate latency client uses \
blocking sockets, one sender thread (1 ns timer slack) and one reader thread per connection";

impl Config {
    fn new(quick: bool, nofile_limit: u64, ztunnel_extra_args: Vec<String>) -> Self {
        let s = |full: f64, q: f64| if quick { q } else { full };
        Config {
            quick,
            nodes: 2,
            throughput_warmup_s: s(1.0, 0.2),
            throughput_duration_s: s(5.0, 0.8),
            throughput_chunk_bytes: load::CHUNK_BYTES,
            throughput_parallel_streams: 8,
            latency_rate_rps: 1000.0,
            latency_connections: 4,
            latency_warmup_s: s(1.0, 0.3),
            latency_duration_s: s(10.0, 3.0),
            latency_rounds: if quick { 2 } else { 5 },
            latency_round_warmup_s: 0.2,
            request_bytes: load::REQUEST_BYTES,
            response_bytes: load::RESPONSE_BYTES,
            connection_rate_workers: 8,
            connection_rate_warmup_s: s(1.0, 0.2),
            connection_rate_duration_s: s(5.0, 0.8),
            workloads_per_node: 50,
            idle_settle_s: s(3.0, 1.0),
            open_tunnels: 1000,
            open_tunnels_settle_s: s(1.0, 0.5),
            ztunnel_worker_threads: worker_threads(&ztunnel_extra_args).unwrap_or(2),
            ztunnel_extra_args,
            nofile_limit,
            load_generator: LOAD_GENERATOR,
        }
    }
}

/// `--worker-threads N` / `--worker-threads=N` among the extra ztunnel arguments.
fn worker_threads(args: &[String]) -> Option<usize> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--worker-threads=") {
            return v.parse().ok();
        }
        if a == "--worker-threads" {
            return it.next()?.parse().ok();
        }
    }
    None
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// Progress on stderr, stamped with the time since the run began.
struct Progress(Instant);

impl Progress {
    fn say(&self, what: impl std::fmt::Display) {
        eprintln!("[l4 {:6.1}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

/// soft = hard = 65536 (children, the ztunnels, inherit it).
fn raise_nofile(want: u64) -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if setrlimit(Resource::RLIMIT_NOFILE, want, want).is_ok() {
        return Ok(want);
    }
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit(NOFILE)")?;
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).context("setrlimit(NOFILE)")?;
    Ok(hard)
}

/// The pods of the run, as indices into `Mesh::pods`.
struct Pods {
    direct_client: usize,
    direct_server: usize,
    mesh_client: usize,
    mesh_server: usize,
}

/// Builds the topology, enrolls the captured pods and starts both ztunnels.
fn build_mesh(cfg: &Config, p: &Progress) -> anyhow::Result<(Mesh, Pods)> {
    if !ambit_testkit::is_root() {
        bail!("the L4 benchmark builds network namespaces: run it as root");
    }
    let exe = std::env::current_exe().context("locating the bench binary")?;
    let mut m = Mesh::new("l4bench", cfg.nodes, vec![exe.into(), "ztunnel".into()])
        .context("building the topology")?;
    let add = |m: &mut Mesh, node: usize, name: &str| -> anyhow::Result<usize> {
        m.add_pod(node, name, "bench", &format!("sa-{name}"), &[("app", name)])
            .with_context(|| format!("adding pod {name}"))
    };
    let pods = Pods {
        direct_client: add(&mut m, 0, "direct-client")?,
        direct_server: add(&mut m, 1, "direct-server")?,
        mesh_client: add(&mut m, 0, "mesh-client")?,
        mesh_server: add(&mut m, 1, "mesh-server")?,
    };
    // Listed in the config, so ztunnel knows them, but neither captured nor enrolled.
    m.pods[pods.direct_client].captured = false;
    m.pods[pods.direct_server].captured = false;
    let mut enrolled = vec![pods.mesh_client, pods.mesh_server];
    for node in 0..cfg.nodes {
        for k in 1..cfg.workloads_per_node {
            enrolled.push(add(&mut m, node, &format!("idle-{node}-{k}"))?);
        }
    }
    p.say(format!(
        "{} pods created; enrolling {}",
        m.pods.len(),
        enrolled.len()
    ));
    // Enrolling runs ip/nft in each namespace: spread it over a few threads.
    std::thread::scope(|s| {
        let chunks: Vec<&[usize]> = enrolled.chunks(enrolled.len().div_ceil(4)).collect();
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|chunk| {
                let m = &m;
                s.spawn(move || -> anyhow::Result<()> {
                    for &i in chunk {
                        m.enroll(i)
                            .with_context(|| format!("enrolling pod {}", m.pod(i).pod.name))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .try_for_each(|h| h.join().expect("enroll thread panicked"))
    })?;
    // Connection-rate runs open tens of thousands of connections: more ephemeral ports and
    // TIME_WAIT reuse on both ends (ztunnel's upstream sockets live in the server pod).
    for i in [
        pods.direct_client,
        pods.direct_server,
        pods.mesh_client,
        pods.mesh_server,
    ] {
        let ns = &m.pod(i).pod.ns;
        ns.set_sysctl("net.ipv4.ip_local_port_range", "1024 65535")?;
        ns.set_sysctl("net.ipv4.tcp_tw_reuse", "1")?;
    }
    m.write_config()?;
    for node in 0..cfg.nodes {
        let opts = ZtunnelOpts {
            extra_args: cfg.ztunnel_extra_args.clone(),
            ..Default::default()
        };
        m.start_ztunnel_with(node, opts)
            .with_context(|| format!("starting ztunnel on node {node}"))?;
    }
    // Ready means the first reconcile finished; make sure every pod really is served.
    let deadline = Instant::now() + Duration::from_secs(30);
    for node in 0..cfg.nodes {
        loop {
            let captured = metric_sum(&m.metrics(node), "ambit_captured_pods", &[]);
            if captured as usize == cfg.workloads_per_node {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "ztunnel on node {node} captured {captured} pods, expected {}; log:\n{}",
                    cfg.workloads_per_node,
                    m.log(node)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok((m, pods))
}

fn ztunnel_pids(m: &Mesh, nodes: usize) -> anyhow::Result<Vec<u32>> {
    (0..nodes)
        .map(|n| {
            m.ztunnel_pid(n)
                .with_context(|| format!("no ztunnel on node {n}"))
        })
        .collect()
}

/// `{"node_0": a, "node_1": b, ..., "max": m}` (or `"total"` for additive figures).
fn per_node(values: &[f64], digits: i32, aggregate: &str) -> Value {
    let mut o = serde_json::Map::new();
    for (i, v) in values.iter().enumerate() {
        o.insert(format!("node_{i}"), json!(round(*v, digits)));
    }
    let agg = match aggregate {
        "total" => values.iter().sum(),
        _ => values.iter().cloned().fold(0.0, f64::max),
    };
    o.insert(aggregate.into(), json!(round(agg, digits)));
    Value::Object(o)
}

/// Ports of the control relays: in the client pod (loopback) and in the server pod.
const RELAY_BULK: u16 = 7000;
const RELAY_RR: u16 = 7001;
const RELAY_HOP_BULK: u16 = 17000;
const RELAY_HOP_RR: u16 = 17001;

/// One way from a client pod to a server: `direct`, `mesh` or `relay`.
struct Side<'a> {
    name: &'static str,
    client_ns: PathBuf,
    bulk: SocketAddr,
    rr: SocketAddr,
    /// The server's sink counter.
    received: &'a AtomicU64,
    /// Whether the connection-rate phase runs on this side.
    connection_rate: bool,
}

/// Everything measured on one side.
#[derive(Default)]
struct SideFigures {
    /// (Gbit/s, machine CPUs busy, ztunnel CPUs busy) for 1 and N streams.
    throughput: [(f64, f64, f64); 2],
    /// ztunnels' minor page faults per MiB carried, for 1 and N streams.
    faults_per_mib: [f64; 2],
    latency: Option<(Percentiles, load::FixedRateResult, WindowCpu)>,
    connrate: Option<(Percentiles, load::ConnRateResult)>,
}

/// One request/response, to fail fast (with a clear message) when a path is broken.
fn check_side(side: &Side) -> anyhow::Result<()> {
    let held = load::hold_open(&side.client_ns, side.rr, 1, 1)?;
    if held.opened != 1 {
        bail!(
            "{} path: no request/response got through to {}",
            side.name,
            side.rr
        );
    }
    Ok(())
}

/// Runs the whole benchmark and returns the JSON result.
pub fn run(args: &Args) -> anyhow::Result<Value> {
    let p = Progress(Instant::now());
    let nofile = raise_nofile(65536)?;
    if nofile < 65536 {
        p.say(format!(
            "RLIMIT_NOFILE stays at {nofile} (raising the hard limit needs CAP_SYS_RESOURCE)"
        ));
    }
    let cfg = Config::new(args.quick, nofile, args.ztunnel_args.clone());
    p.say(format!(
        "building a {}-node mesh with {} captured workloads per node",
        cfg.nodes, cfg.workloads_per_node
    ));
    let (m, pods) = build_mesh(&cfg, &p)?;
    let pids = ztunnel_pids(&m, cfg.nodes)?;
    p.say(format!("ztunnels up (pids {pids:?})"));

    // Idle footprint first, before any traffic has created pooled connections.
    let idle = Window::start(&pids)?;
    std::thread::sleep(secs(cfg.idle_settle_s));
    let idle = idle.finish()?;
    let mut idle_rss = RssMax::new(&pids);
    idle_rss.sample()?;
    // What the rest of the machine used meanwhile: well above zero means another workload
    // shares the CPUs and every figure below is suspect.
    let background = idle.others() / idle.wall;
    if background > 0.05 {
        p.say(format!(
            "WARNING: other processes used {background:.2} CPUs while the mesh was idle; \
             results will be skewed (see `top`)"
        ));
    }
    p.say(format!("idle: rss {:?} MiB", idle_rss.max_mb));

    let pod_ns = |i: usize| load::ns_path(&m.pod(i).pod);
    let direct_server = Server::start(&pod_ns(pods.direct_server), "direct-server")?;
    let mesh_server = Server::start(&pod_ns(pods.mesh_server), "mesh-server")?;
    let direct_ip = m.ip(pods.direct_server);
    let mesh_ip = m.ip(pods.mesh_server);
    let at = |ip: std::net::Ipv4Addr, port: u16| SocketAddr::from((ip, port));
    let local = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
    // The control path: plain relays where the ztunnels sit (client pod, server pod).
    let _relay_client = load::Relay::start(
        &pod_ns(pods.direct_client),
        "relay-client",
        vec![
            (local(RELAY_BULK), at(direct_ip, RELAY_HOP_BULK)),
            (local(RELAY_RR), at(direct_ip, RELAY_HOP_RR)),
        ],
    )?;
    let _relay_server = load::Relay::start(
        &pod_ns(pods.direct_server),
        "relay-server",
        vec![
            (at([0, 0, 0, 0].into(), RELAY_HOP_BULK), local(BULK_PORT)),
            (at([0, 0, 0, 0].into(), RELAY_HOP_RR), local(RR_PORT)),
        ],
    )?;
    let sides = [
        Side {
            name: "direct",
            client_ns: pod_ns(pods.direct_client),
            bulk: at(direct_ip, BULK_PORT),
            rr: at(direct_ip, RR_PORT),
            received: &direct_server.bulk_bytes,
            connection_rate: true,
        },
        Side {
            name: "mesh",
            client_ns: pod_ns(pods.mesh_client),
            bulk: at(mesh_ip, BULK_PORT),
            rr: at(mesh_ip, RR_PORT),
            received: &mesh_server.bulk_bytes,
            connection_rate: true,
        },
        Side {
            name: "relay",
            client_ns: pod_ns(pods.direct_client),
            bulk: local(RELAY_BULK),
            rr: local(RELAY_RR),
            received: &direct_server.bulk_bytes,
            connection_rate: false,
        },
    ];
    for side in &sides {
        check_side(side)?;
    }
    let pause = || std::thread::sleep(Duration::from_millis(if cfg.quick { 200 } else { 500 }));
    let mut figures: [SideFigures; 3] = Default::default();

    // 1. Fixed-rate latency, the three sides taking turns in short rounds so that slow drifts
    //    of this (virtual) machine hit them alike; ztunnel CPU and RSS are taken over the
    //    mesh side's windows. It runs first, so the RSS at 1000 req/s does not include what
    //    the allocator kept from the bulk phase's large buffers.
    let mut busy_rss = RssMax::new(&pids);
    let slice = cfg.latency_duration_s / cfg.latency_rounds as f64;
    let mut merged: [(load::FixedRateResult, WindowCpu); 3] = Default::default();
    for round in 0..cfg.latency_rounds {
        for (side, acc) in sides.iter().zip(merged.iter_mut()) {
            let is_mesh = side.name == "mesh";
            let warmup = if round == 0 {
                cfg.latency_warmup_s
            } else {
                cfg.latency_round_warmup_s
            };
            let rate = FixedRate {
                rate_per_s: cfg.latency_rate_rps,
                connections: cfg.latency_connections,
                warmup: secs(warmup),
                duration: secs(slice),
            };
            let run = load::start_fixed_rate(&side.client_ns, side.rr, rate)
                .with_context(|| format!("{} latency", side.name))?;
            let (window_start, window_end) = run.window;
            sleep_until(window_start);
            let cpu = Window::start(&pids)?;
            while Instant::now() + Duration::from_millis(250) < window_end {
                std::thread::sleep(Duration::from_millis(250));
                if is_mesh {
                    busy_rss.sample()?;
                }
            }
            sleep_until(window_end);
            let cpu = cpu.finish()?;
            if is_mesh {
                busy_rss.sample()?;
            }
            let r = run.finish()?;
            acc.0.samples_ns.extend(r.samples_ns);
            acc.0.errors += r.errors;
            acc.0.window_seconds += r.window_seconds;
            acc.1.add(&cpu);
        }
    }
    for ((side, fig), (mut r, cpu)) in sides.iter().zip(figures.iter_mut()).zip(merged) {
        let pct = percentiles(&mut r.samples_ns);
        p.say(format!(
            "{:6} latency @{} rps: p50 {} µs, p99 {} µs, p99.9 {} µs, achieved {:.1} rps, \
             {} errors, ztunnels {:.3} CPUs",
            side.name,
            cfg.latency_rate_rps,
            pct.p50_us,
            pct.p99_us,
            pct.p999_us,
            r.achieved_rps(),
            r.errors,
            cpu.pids_total() / cpu.wall
        ));
        fig.latency = Some((pct, r, cpu));
    }
    pause();

    // 2. Bulk throughput, with the CPU it took.
    for (k, streams) in [1, cfg.throughput_parallel_streams].into_iter().enumerate() {
        for (side, fig) in sides.iter().zip(figures.iter_mut()) {
            let run = load::start_bulk(&side.client_ns, side.bulk, streams)
                .with_context(|| format!("{} bulk throughput, {streams} streams", side.name))?;
            std::thread::sleep(secs(cfg.throughput_warmup_s));
            let faults = |pids: &[u32]| -> anyhow::Result<u64> {
                pids.iter().map(|&p| procstat::minor_faults(p)).sum()
            };
            let (b0, f0, cpu) = (
                side.received.load(Ordering::Relaxed),
                faults(&pids)?,
                Window::start(&pids)?,
            );
            std::thread::sleep(secs(cfg.throughput_duration_s));
            let (b1, f1, cpu) = (
                side.received.load(Ordering::Relaxed),
                faults(&pids)?,
                cpu.finish()?,
            );
            fig.faults_per_mib[k] = (f1 - f0) as f64 / ((b1 - b0) as f64 / (1 << 20) as f64);
            run.stop()
                .with_context(|| format!("{} bulk throughput, {streams} streams", side.name))?;
            let gbps = load::gbit_per_s(b1 - b0, cpu.wall);
            fig.throughput[k] = (gbps, cpu.machine_cpus(), cpu.pids_total() / cpu.wall);
            p.say(format!(
                "{:6} throughput, {streams} stream(s): {gbps:.2} Gbit/s ({} MiB in {:.2} s), \
                 machine busy {:.2} CPUs",
                side.name,
                (b1 - b0) >> 20,
                cpu.wall,
                cpu.machine_cpus()
            ));
            pause();
        }
    }

    // 3. New-connection rate.
    for (side, fig) in sides.iter().zip(figures.iter_mut()) {
        if !side.connection_rate {
            continue;
        }
        let mut r = load::conn_rate(
            &side.client_ns,
            side.rr,
            cfg.connection_rate_workers,
            secs(cfg.connection_rate_warmup_s),
            secs(cfg.connection_rate_duration_s),
        )
        .with_context(|| format!("{} connection rate", side.name))?;
        let pct = percentiles(&mut r.samples_ns);
        p.say(format!(
            "{:6} connection rate: {:.0}/s, p99 {} µs, {} errors",
            side.name,
            r.per_second(),
            pct.p99_us,
            r.errors
        ));
        fig.connrate = Some((pct, r));
        pause();
    }

    // 4. Many open tunnels.
    let mesh = &sides[1];
    let accepted_before = mesh_server.rr_accepted.load(Ordering::Relaxed);
    let held: Held = load::hold_open(&mesh.client_ns, mesh.rr, cfg.open_tunnels, 64)
        .context("opening the mesh tunnels")?;
    if held.opened != cfg.open_tunnels {
        bail!(
            "only {} of {} mesh connections opened ({} errors)",
            held.opened,
            cfg.open_tunnels,
            held.errors
        );
    }
    std::thread::sleep(secs(cfg.open_tunnels_settle_s));
    let mut tunnels_rss = RssMax::new(&pids);
    for _ in 0..3 {
        tunnels_rss.sample()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    let accepted = mesh_server.rr_accepted.load(Ordering::Relaxed) - accepted_before;
    p.say(format!(
        "{} tunnels open (server accepted {accepted}): rss {:?} MiB",
        held.opened, tunnels_rss.max_mb
    ));
    drop(held);

    let opened_source = metric_sum(
        &m.metrics(0),
        "ambit_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    let opened_destination = metric_sum(
        &m.metrics(1),
        "ambit_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    drop(sides);
    drop((_relay_client, _relay_server, direct_server, mesh_server));
    drop(m);

    let result = report(
        &cfg,
        &figures,
        Ztunnel {
            idle,
            background_vcpu: background,
            idle_rss,
            busy_rss,
            tunnels_rss,
            opened: [opened_source, opened_destination],
        },
    );
    p.say("done");
    Ok(result)
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

struct Ztunnel {
    idle: WindowCpu,
    /// CPUs used by other processes during the idle phase.
    background_vcpu: f64,
    idle_rss: RssMax,
    busy_rss: RssMax,
    tunnels_rss: RssMax,
    /// Mesh connections counted by ztunnel 0 (source) and ztunnel 1 (destination).
    opened: [f64; 2],
}

fn side_json(f: &SideFigures, cfg: &Config) -> Value {
    let (lat, lr, cpu) = f.latency.as_ref().expect("latency phase ran");
    let mut v = json!({
        "throughput_gbps": {
            "one_stream": round(f.throughput[0].0, 3),
            "eight_streams": round(f.throughput[1].0, 3),
        },
        "throughput_machine_cpus": {
            "one_stream": round(f.throughput[0].1, 3),
            "eight_streams": round(f.throughput[1].1, 3),
        },
        "latency": {
            "rate_rps": cfg.latency_rate_rps,
            "achieved_rps": round(lr.achieved_rps(), 1),
            "requests": lr.samples_ns.len(),
            "errors": lr.errors,
            "p50_us": lat.p50_us,
            "p90_us": lat.p90_us,
            "p99_us": lat.p99_us,
            "p999_us": lat.p999_us,
            "max_us": lat.max_us,
            "machine_cpu_us_per_request": round(cpu.machine / lr.samples_ns.len() as f64 * 1e6, 1),
        },
    });
    if let Some((cr, crr)) = &f.connrate {
        v["connection_rate"] = json!({
            "connections_per_s": round(crr.per_second(), 1),
            "connections": crr.samples_ns.len(),
            "errors": crr.errors,
            "p50_us": cr.p50_us,
            "p99_us": cr.p99_us,
        });
    }
    v
}

fn report(cfg: &Config, figures: &[SideFigures; 3], z: Ztunnel) -> Value {
    let [direct, mesh, relay] = figures;
    let (dl, _, _) = direct.latency.as_ref().expect("latency phase ran");
    let (ml, mr, mcpu) = mesh.latency.as_ref().expect("latency phase ran");
    let (rl, _, _) = relay.latency.as_ref().expect("latency phase ran");
    let cpu_total = mcpu.pids_total();
    let requests = mr.samples_ns.len() as f64;
    let vcpu = cpu_total / mcpu.wall;
    // Normalised by the rate actually achieved (≈ 1000 req/s).
    let per_1000 = mr.achieved_rps() / 1000.0;
    let vcpu_per_1000 = vcpu / per_1000;
    let cpu_per_1000_requests = cpu_total / (requests / 1000.0);
    let rss_at_rate = z.busy_rss.max_mb.iter().cloned().fold(0.0, f64::max);
    let rss_per_1000 = rss_at_rate / per_1000;
    let added = |a: &Percentiles, b: &Percentiles| {
        json!({
            "p50": round(a.p50_us - b.p50_us, 1),
            "p90": round(a.p90_us - b.p90_us, 1),
            "p99": round(a.p99_us - b.p99_us, 1),
        })
    };
    let ratio = |a: &SideFigures, b: &SideFigures| {
        json!({
            "one_stream": round(a.throughput[0].0 / b.throughput[0].0, 3),
            "eight_streams": round(a.throughput[1].0 / b.throughput[1].0, 3),
        })
    };
    let ratio_one = mesh.throughput[0].0 / direct.throughput[0].0;
    let ratio_many = mesh.throughput[1].0 / direct.throughput[1].0;
    let met_latency = ml.p99_us - dl.p99_us <= 100.0;
    let met_cpu = vcpu_per_1000 <= 0.04;
    let met_rss = rss_per_1000 <= 10.0;
    let met_throughput = ratio_one >= 0.40 && ratio_many >= 0.40;
    let timestamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let idle_vcpu: Vec<f64> = z.idle.pids.iter().map(|c| c / z.idle.wall).collect();
    json!({
        "benchmark": "l4",
        "direct": side_json(direct, cfg),
        "mesh": side_json(mesh, cfg),
        "relay": side_json(relay, cfg),
        "ztunnel": {
            "cpu_seconds_per_1000_requests": round(cpu_per_1000_requests, 4),
            "vcpu_at_1000_rps": round(vcpu, 4),
            "vcpu_per_1000_rps": round(vcpu_per_1000, 4),
            "cpu_seconds_latency_phase": per_node(&mcpu.pids, 3, "total"),
            "latency_phase_seconds": round(mcpu.wall, 3),
            "cpu_us_per_request": round(cpu_total / requests * 1e6, 1),
            "idle_vcpu": per_node(&idle_vcpu, 4, "total"),
            "vcpu_during_throughput": {
                "one_stream": round(mesh.throughput[0].2, 3),
                "eight_streams": round(mesh.throughput[1].2, 3),
            },
            "page_faults_per_mib_throughput": {
                "one_stream": round(mesh.faults_per_mib[0], 2),
                "eight_streams": round(mesh.faults_per_mib[1], 2),
            },
            "rss_mb_idle": per_node(&z.idle_rss.max_mb, 2, "max"),
            "rss_mb_at_1000_rps": per_node(&z.busy_rss.max_mb, 2, "max"),
            "rss_mb_open_tunnels": per_node(&z.tunnels_rss.max_mb, 2, "max"),
            "rss_anon_mb_idle": per_node(&z.idle_rss.max_anon_mb, 2, "max"),
            "rss_anon_mb_at_1000_rps": per_node(&z.busy_rss.max_anon_mb, 2, "max"),
            "rss_anon_mb_open_tunnels": per_node(&z.tunnels_rss.max_anon_mb, 2, "max"),
            "open_tunnels": cfg.open_tunnels,
            "workloads": cfg.workloads_per_node * cfg.nodes,
            "mesh_connections_opened": {
                "node_0_source": z.opened[0],
                "node_1_destination": z.opened[1],
            },
        },
        "added_latency_us": added(ml, dl),
        "throughput_ratio": ratio(mesh, direct),
        "relay_added_latency_us": added(rl, dl),
        "relay_throughput_ratio": ratio(relay, direct),
        "targets": {
            "added_p99_latency_le_100us": met_latency,
            "vcpu_per_1000_rps_le_0_04": met_cpu,
            "rss_mb_per_1000_rps_le_10": met_rss,
            "throughput_ratio_ge_0_40": met_throughput,
            "all_met": met_latency && met_cpu && met_rss && met_throughput,
        },
        "machine": {
            "nproc": procstat::nproc(),
            "kernel": procstat::kernel(),
            "cpu_model": procstat::cpu_model(),
            "timestamp": timestamp,
            "background_vcpu_when_idle": round(z.background_vcpu, 3),
        },
        "config": cfg,
    })
}

/// Writes `value` to `path` (creating its directory) as pretty JSON with a final newline.
pub fn write_result(path: &Path, value: &Value) -> anyhow::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value)? + "\n";
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}
