//! `ambitctl local up`: the whole mesh on this machine. See the module docs of `local`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use kube::Client;
use serde_json::{json, Value};

use super::apps::{self, vip};
use super::bins::Bins;
use super::cluster::{self, APP_NS};
use super::layout::{node_name, Layout, Net};
use super::net::{self, netns_path};
use super::{dataplane, down, procs, state, traffic, Progress};

#[derive(clap::Args)]
pub struct UpArgs {
    /// Sandbox name: prefix of its network namespaces; state in /run/ambit-sandbox (default
    /// name) or /run/ambit-sandbox.NAME.
    #[arg(long, default_value = super::layout::DEFAULT_NAME)]
    pub name: String,
    /// Number of nodes.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=super::MAX_NODES as i64))]
    pub nodes: u16,
    /// Requests sent to productpage (which calls reviews) to show the mesh working.
    #[arg(long, default_value_t = 60)]
    pub requests: u64,
    /// Print a JSON summary on stdout (progress always goes to stderr).
    #[arg(short = 'o', long, value_parser = ["text", "json"], default_value = "text")]
    pub output: String,
}

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    let layout = Layout::new(&args.name)?;
    preflight()?;
    if !procs::all_live(&layout).is_empty() {
        bail!(
            "sandbox {:?} is already running: `ambitctl local status --name {0}`, or `ambitctl local down --name {0}` first",
            layout.name
        );
    }
    // Leftovers of a crashed run.
    down::clean(&layout);
    let bins = Bins::find()?;
    if !bins.agent_has_kube_mode() {
        bail!(
            "{} has no `run --kube` (it cannot watch the API server); rebuild it from this workspace",
            bins.agent.display()
        );
    }
    std::fs::create_dir_all(&layout.dir)
        .with_context(|| format!("creating {}", layout.dir.display()))?;
    let net = Net {
        slot: layout.claim_slot()?,
    };
    let p = Progress::new();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match rt.block_on(up(&layout, net, &bins, &args, &p)) {
        Ok(summary) => {
            if args.output == "json" {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                super::print_summary(&summary);
            }
            if summary["ok"] != true {
                bail!("the sandbox is up but did not show a working, encrypted mesh (see above); `ambitctl local down --name {}` removes it", layout.name);
            }
            Ok(())
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            super::print_log_tails(&layout);
            eprintln!("==> removing what was built");
            down::clean(&layout);
            Err(e.context("local up failed; everything it started was removed"))
        }
    }
}

fn preflight() -> anyhow::Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the sandbox creates network namespaces, a bridge and nftables rules: run it as root (sudo)");
    }
    for (tool, arg) in [("ip", "-V"), ("nft", "--version")] {
        net::run(tool, &[arg], None).with_context(|| {
            format!("preflight: `{tool}` is needed (install iproute2 and nftables)")
        })?;
    }
    Ok(())
}

async fn up(
    layout: &Layout,
    net_: Net,
    bins: &Bins,
    args: &UpArgs,
    p: &Progress,
) -> anyhow::Result<Value> {
    let started = Instant::now();
    let nodes = usize::from(args.nodes);
    let mut steps = vec![];
    p.step(&format!(
        "sandbox {:?}: state in {}, cluster network 172.30.{}.0/24",
        layout.name,
        layout.dir.display(),
        net_.slot
    ));

    p.step(&format!(
        "building {nodes} nodes as network namespaces on bridge {}",
        net_.bridge()
    ));
    let node_ns = net::build_nodes(layout, net_, nodes)?;
    // The API server listens on the host's bridge address: the node agents (in the node
    // namespaces) watch it, and nothing outside the host routes there.
    p.step(&format!(
        "starting the API server (apisim) on {}",
        net_.host_ip()
    ));
    let url_file = layout.dir.join("apisim.url");
    let mut cmd = Command::new(&bins.ambitctl);
    cmd.args(["local", "__apisim", "--listen"])
        .arg(format!("{}:0", net_.host_ip()))
        .arg("--url-file")
        .arg(&url_file);
    procs::spawn(layout, "apisim", None, cmd)?;
    let api = cluster::wait_for(
        "the API server to start",
        Duration::from_secs(10),
        || async { Ok(std::fs::read_to_string(&url_file).ok()) },
    )
    .await?;
    let c = Client::try_from(kube::Config::new(api.parse()?))?;
    let node_list: Vec<_> = (0..nodes)
        .map(|i| (node_name(i), net_.node_ip(i)))
        .collect();
    p.step("registering CRDs, namespaces ambit-system and bookinfo, Nodes and the Mesh `default`");
    cluster::install(&c, &node_list).await?;

    // From here the state file exists, so `status`/`down` know the sandbox even if we fail.
    state::write(layout, net_, &api, nodes, &[], &[], &steps)?;

    let operator = format!("{}:15012", net_.host_ip());
    p.step(&format!(
        "starting the operator (CA + config stream on {operator})"
    ));
    let mut cmd = Command::new(&bins.ambitctl);
    cmd.args([
        "local",
        "__operator",
        "--api-server",
        &api,
        "--listen",
        &operator,
    ]);
    procs::spawn(layout, "operator", None, cmd)?;
    let root = cluster::wait_for_dataplane(&c, Duration::from_secs(30)).await?;
    let root_cert = layout.dir.join("root-cert.pem");
    std::fs::write(&root_cert, root)?;

    p.step(&format!(
        "playing the kubelet for DaemonSets ztunnel and ambit-node-agent on {nodes} nodes"
    ));
    for i in 0..nodes {
        dataplane::start_node(&c, layout, net_, bins, &api, &root_cert, i).await?;
    }
    for i in 0..nodes {
        dataplane::wait_ready(net_, i, Duration::from_secs(30)).await?;
    }
    for ds in ["ztunnel", "ambit-node-agent"] {
        cluster::daemonset_ready(&c, ds, nodes).await?;
    }
    let mesh_ready = cluster::wait_for(
        "the Mesh to turn Ready",
        Duration::from_secs(20),
        || async {
            Ok(cluster::mesh(&c).await?.and_then(|m| {
                (cluster::condition(&m, "Ready").map(|c| c.0) == Some("True".into())).then_some(())
            }))
        },
    )
    .await;
    if let Err(e) = &mesh_ready {
        p.step(&format!("warning: {e:#}"));
    }

    p.step("deploying the demo app (productpage, details, reviews v1/v2/v3, ratings, client) through the real CNI plugin");
    let pods = apps::deploy(&c, layout, net_, bins, nodes).await?;
    state::write(layout, net_, &api, nodes, &pods, &[], &steps)?;

    p.step("labelling namespace bookinfo ambit.dev/dataplane-mode=ambient: running pods are captured without restart");
    cluster::label_namespace(&c, APP_NS, json!({"ambit.dev/dataplane-mode": "ambient"})).await?;
    let want: Vec<String> = pods.iter().map(|p| p.ip.to_string()).collect();
    let captured = cluster::wait_for(
        "every demo pod to be captured by its node's ztunnel",
        Duration::from_secs(30),
        || async {
            let mut got = vec![];
            for i in 0..nodes {
                got.extend(dataplane::captured_pods(layout, i).unwrap_or_default());
            }
            Ok(want.iter().all(|w| got.contains(w)).then_some(got))
        },
    )
    .await
    .unwrap_or_else(|e| {
        p.step(&format!("warning: {e:#}"));
        (0..nodes)
            .flat_map(|i| dataplane::captured_pods(layout, i).unwrap_or_default())
            .collect()
    });

    let l7 = super::l7::Ctx {
        c: &c,
        layout,
        net: net_,
        bins,
        root_cert: &root_cert,
    };
    let waypoints: Vec<_> = super::l7::step(&l7, nodes, p, &mut steps)
        .await?
        .into_iter()
        .collect();

    p.step(&format!(
        "sending {} requests to productpage ({}), which calls reviews ({}), from pod client, capturing every node's interfaces",
        args.requests,
        vip("productpage"),
        vip("reviews")
    ));
    let client = pods.last().expect("the client pod is deployed last");
    // Give the proxies' config a moment to carry the Services' endpoints, on the whole path.
    wait_service_ready(&netns_path(&client.netns)).await;
    let shown = traffic::shown(&netns_path(&client.netns), &node_ns, args.requests)?;
    let mut mtls = 0.0;
    for i in 0..nodes {
        if let Ok(m) = crate::http_get::get(&format!("{}:15020", net_.node_ip(i)), "/metrics") {
            mtls += ambit_testkit::mesh::metric_sum(
                &m,
                "ambit_tcp_connections_opened_total",
                &[
                    ("reporter", "source"),
                    ("connection_security_policy", "mutual_tls"),
                ],
            );
        }
    }
    let waypoint_reviews = waypoints
        .first()
        .and_then(|w| w.netns.as_deref())
        .and_then(super::l7::reviews_requests);
    state::write(layout, net_, &api, nodes, &pods, &waypoints, &steps)?;
    // The sandbox stays up after this command: keep the node namespaces.
    std::mem::forget(node_ns);

    let mesh = cluster::mesh(&c).await?.unwrap_or_default();
    let requests = &shown["requests"];
    let ok_requests = requests["ok"].as_u64().unwrap_or(0) > 0;
    let versions = requests["reviews"].as_object().map_or(0, |m| m.len());
    // Without a route reviews' three versions share the traffic; fewer than three requests
    // cannot show that.
    let all_versions = versions == 3 || args.requests < 3;
    let plaintext = shown["wire"]["plaintextSeen"] != false;
    let captured_n = want.iter().filter(|w| captured.contains(w)).count();
    let next = next_steps(layout, !waypoints.is_empty())?;
    let summary = json!({
        "name": layout.name, "stateDir": layout.dir, "stateFile": layout.state_file(),
        "apiServer": api, "operator": operator,
        "mesh": {"ready": mesh_ready.is_ok(), "conditions": mesh["status"]["conditions"]},
        "nodes": node_list.iter().map(|(n, ip)| json!({"name": n, "ip": ip, "netns": layout.netns(n)})).collect::<Vec<_>>(),
        "pods": {"total": pods.len(), "captured": captured_n, "items": pods},
        "requests": requests,
        "allReviewsVersionsReached": versions == 3,
        "wire": shown["wire"],
        "mtlsConnectionsOpened": mtls,
        "steps": steps,
        "waypoints": waypoints.iter().map(|w| json!({"name": w.name, "namespace": w.namespace, "netns": w.netns})).collect::<Vec<_>>(),
        "waypointReviewsRequests": waypoint_reviews,
        "next": next,
        "seconds": started.elapsed().as_secs_f64(),
        "ok": ok_requests && all_versions && !plaintext && mesh_ready.is_ok() && captured_n == pods.len(),
    });
    Ok(summary)
}

/// The tour's next step: the canary route to apply, and the command that shows the split.
/// The route file is `examples/canary-90-10.yaml` when run from the repository, else a copy
/// in the state directory.
fn next_steps(layout: &Layout, waypoint: bool) -> anyhow::Result<Value> {
    if !waypoint {
        return Ok(json!({"commands": [], "why": "no waypoint: the canary needs one"}));
    }
    let route = if std::path::Path::new(super::l7::CANARY_PATH).is_file() {
        std::path::PathBuf::from(super::l7::CANARY_PATH)
    } else {
        let copy = layout.dir.join("reviews-canary.yaml");
        std::fs::write(&copy, super::l7::CANARY_YAML)
            .with_context(|| format!("writing {}", copy.display()))?;
        copy
    };
    // The command as the user typed it (e.g. ./target/release/ambitctl), if it had a path.
    let me = std::env::args()
        .next()
        .filter(|a| a.contains('/'))
        .unwrap_or_else(|| "ambitctl".into());
    let default = layout.name == super::layout::DEFAULT_NAME;
    let state = if default {
        String::new()
    } else {
        format!(" --sandbox-state {}", layout.state_file().display())
    };
    let name = if default {
        String::new()
    } else {
        format!(" --name {}", layout.name)
    };
    Ok(json!({
        "routeFile": route,
        "commands": [
            format!("{me} apply -f {}{state}", route.display()),
            format!("{me} local traffic{name} --requests 1000"),
        ],
    }))
}

/// Waits (up to 15 s) until a request from the client pod through productpage to details and
/// reviews succeeds.
async fn wait_service_ready(client_netns: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    let url = traffic::Target::Productpage.url();
    while Instant::now() < deadline {
        let url = url.clone();
        let ns = client_netns.to_path_buf();
        let ok = tokio::task::spawn_blocking(move || {
            ambit_core::netns::run_in_thread(&ns, || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .ok()?;
                rt.block_on(crate::demo_app::get_json(&url)).ok()
            })
            .ok()
            .flatten()
        })
        .await
        .ok()
        .flatten();
        if ok.is_some() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
