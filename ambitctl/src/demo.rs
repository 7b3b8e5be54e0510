//! The L4 sandbox demo: Bookinfo-shaped pods on two nodes, a ztunnel per node, traffic by
//! Service VIP, and proof from the wire that it is encrypted.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ambit_testkit::apps::{ask_once, LineApp};
use ambit_testkit::mesh::{metric_sum, Mesh};
use ambit_testkit::{contains, tcp_payloads_to_port, Capture};
use anyhow::{bail, Context};
use serde_json::json;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Seconds of demo traffic; 0 runs until Ctrl-C.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Print a JSON summary instead of text.
    #[arg(short = 'o', long, value_parser = ["text", "json"], default_value = "text")]
    output: String,
}

const SECRET: &str = "bookinfo-review-text";

fn step(json: bool, msg: &str) {
    if !json {
        eprintln!("==> {msg}");
    }
}

fn serve(mesh: &Mesh, pod: usize, port: u16) -> anyhow::Result<LineApp> {
    let p = &mesh.pod(pod).pod;
    Ok(LineApp::start(&p.ns, &p.name, port)?)
}

fn call(mesh: &Mesh, from: usize, dst: SocketAddr) -> anyhow::Result<String> {
    Ok(ask_once(&mesh.pod(from).pod.ns, dst, SECRET)?.server)
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let json_out = args.output == "json";
    if !ambit_testkit::is_root() {
        bail!("the sandbox creates network namespaces and needs root: run it with sudo");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        if let Ok(rt) = rt {
            rt.block_on(async {
                let _ = tokio::signal::ctrl_c().await;
            });
            flag.store(true, Ordering::SeqCst);
        }
    });

    step(
        json_out,
        "building 2 nodes and 5 pods as network namespaces",
    );
    let exe = std::env::current_exe().context("locating ambitctl")?;
    let mut m = Mesh::new("sandbox", 2, vec![exe.into(), "__ztunnel".into()])?;
    let productpage = m.add_pod(
        0,
        "productpage-v1",
        "bookinfo",
        "bookinfo-productpage",
        &[("app", "productpage")],
    )?;
    let reviews_v1 = m.add_pod(
        1,
        "reviews-v1",
        "bookinfo",
        "bookinfo-reviews",
        &[("app", "reviews"), ("version", "v1")],
    )?;
    let reviews_v2 = m.add_pod(
        0,
        "reviews-v2",
        "bookinfo",
        "bookinfo-reviews",
        &[("app", "reviews"), ("version", "v2")],
    )?;
    let reviews_v3 = m.add_pod(
        1,
        "reviews-v3",
        "bookinfo",
        "bookinfo-reviews",
        &[("app", "reviews"), ("version", "v3")],
    )?;
    let legacy = m.add_pod(1, "legacy", "legacy", "default", &[("app", "legacy")])?;
    m.pods[legacy].captured = false;
    m.services.push(
        json!({"name": "reviews", "namespace": "bookinfo", "vips": ["10.96.0.20"],
        "ports": [{"port": 9080, "targetPort": 9080}], "selector": {"app": "reviews"}}),
    );
    for p in [productpage, reviews_v1, reviews_v2, reviews_v3] {
        m.enroll(p)?;
    }
    step(
        json_out,
        "starting a ztunnel on each node (mesh CA in-process, certificates per pod identity)",
    );
    m.start_ztunnel(0)?;
    m.start_ztunnel(1)?;
    let _apps = [reviews_v1, reviews_v2, reviews_v3, legacy]
        .map(|p| serve(&m, p, 9080))
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;

    let vip: SocketAddr = "10.96.0.20:9080".parse()?;
    step(
        json_out,
        &format!("productpage -> reviews ({vip}) through the mesh; Ctrl-C to stop"),
    );
    let capture = Capture::start(&m.topo.fabric)?;
    let started = Instant::now();
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut by_version = std::collections::BTreeMap::<String, u64>::new();
    let mut last_print = Instant::now();
    while !stop.load(Ordering::SeqCst)
        && (args.seconds == 0 || started.elapsed() < Duration::from_secs(args.seconds))
    {
        match call(&m, productpage, vip) {
            Ok(who) => {
                ok += 1;
                *by_version.entry(who).or_default() += 1;
            }
            Err(_) => failed += 1,
        }
        if !json_out && last_print.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "    {:>4.0}s  ok={ok} failed={failed}  {by_version:?}",
                started.elapsed().as_secs_f64()
            );
            last_print = Instant::now();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let frames = capture.stop();
    let plaintext_on_wire = contains(&frames, SECRET.as_bytes());
    let hbone_records = tcp_payloads_to_port(&frames, 15008).len();
    let legacy_answer = ask_once(
        &m.pod(productpage).pod.ns,
        SocketAddr::new(IpAddr::V4(m.ip(legacy)), 9080),
        SECRET,
    )
    .map(|a| format!("{} {} {}", a.server, a.peer, a.echo))
    .unwrap_or_else(|e| format!("error: {e}"));
    let certs = m.admin(0, "/certs")?;
    let metrics = m.metrics(0);
    let mtls = metric_sum(
        &metrics,
        "ambit_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    let summary = json!({
        "requests": {"ok": ok, "failed": failed, "by_pod": by_version},
        "wire": {"plaintext_seen_between_nodes": plaintext_on_wire, "hbone_segments_captured": hbone_records},
        "mtls_connections_node0": mtls,
        "legacy_pod_plaintext_answer": legacy_answer,
        "node0_certificates": certs,
    });
    if json_out {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        eprintln!();
        eprintln!("requests: {ok} ok, {failed} failed, spread over {by_version:?}");
        eprintln!("inter-node wire: {hbone_records} HBONE (TLS) segments to :15008; plaintext seen: {plaintext_on_wire}");
        eprintln!("node-0 ztunnel: {mtls} mutual-TLS connections opened (ambit_tcp_connections_opened_total)");
        eprintln!("un-enrolled 'legacy' pod is reached in plaintext, untouched: {legacy_answer}");
        for c in certs.as_array().into_iter().flatten() {
            eprintln!(
                "certificate: {}  expires in {}s",
                c["identity"].as_str().unwrap_or("?"),
                c["expiresInSeconds"]
            );
        }
        eprintln!("==> cleaning up: namespaces, processes and files are removed");
    }
    if plaintext_on_wire || ok == 0 {
        bail!("the demo did not show an encrypted, working mesh (ok={ok}, plaintext={plaintext_on_wire})");
    }
    Ok(())
}
