//! `ambitctl local up / status / down` with real processes, namespaces and the real CNI
//! plugin (root, like CI). Each test uses its own sandbox name, so they run in parallel.
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn ambitctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ambitctl"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// A unique sandbox name; `local down` runs on drop so a failing test leaves nothing behind.
struct Sandbox(String);

impl Sandbox {
    fn new(tag: &str) -> Sandbox {
        Sandbox(format!("t{tag}{}", std::process::id()))
    }
    fn dir(&self) -> String {
        format!("/run/ambit-sandbox.{}", self.0)
    }
    fn down(&self) -> Value {
        let out = ambitctl(&["local", "down", "--name", &self.0, "-o", "json"]);
        assert!(
            out.status.success(),
            "down failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        json_of(&out)
    }
    /// The address slot the sandbox holds (its file in the slots directory names it).
    fn slot(&self) -> u64 {
        std::fs::read_dir(SLOTS_DIR)
            .unwrap()
            .flatten()
            .find(|e| std::fs::read_to_string(e.path()).is_ok_and(|o| o == self.0))
            .and_then(|e| e.file_name().to_str()?.parse().ok())
            .unwrap_or_else(|| panic!("sandbox {} holds no slot", self.0))
    }
    fn state(&self) -> String {
        format!("{}/state.json", self.dir())
    }
    /// What of the sandbox is still on the machine: network namespaces, processes, files
    /// (state dir, slot file, anything named after it), and with `slot`, host interfaces and
    /// host nftables/iptables rules that mention its bridge or addresses.
    fn leftovers(&self, slot: Option<u64>) -> Vec<String> {
        let mut left = vec![];
        let prefix = format!("{}-", self.0);
        for e in std::fs::read_dir("/var/run/netns")
            .into_iter()
            .flatten()
            .flatten()
        {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&prefix) {
                left.push(format!("netns {n}"));
            }
        }
        let marker = format!("AMBIT_SANDBOX={}", self.0);
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let pid = e.file_name().to_string_lossy().into_owned();
            if !pid.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| {
                    s.rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z')
                })
                .unwrap_or(true);
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if !zombie && env.split(|&b| b == 0).any(|v| v == marker.as_bytes()) {
                left.push(format!("process {pid}"));
            }
        }
        if Path::new(&self.dir()).exists() {
            left.push(format!("state dir {}", self.dir()));
        }
        for e in std::fs::read_dir(SLOTS_DIR).into_iter().flatten().flatten() {
            if std::fs::read_to_string(e.path()).is_ok_and(|owner| owner == self.0) {
                left.push(format!("slot file {}", e.path().display()));
            }
        }
        for dir in ["/run", "/tmp", "/var/lib/cni", "/etc/cni", "/var/log"] {
            named_after(Path::new(dir), &self.0, 2, &mut left);
        }
        // Another sandbox may have claimed the slot since: then its names are that one's.
        if let Some(s) = slot.filter(|s| !Path::new(SLOTS_DIR).join(s.to_string()).exists()) {
            let bridge = format!("asb{s}");
            for e in std::fs::read_dir("/sys/class/net").unwrap().flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n == bridge || n.starts_with(&format!("{bridge}n")) {
                    left.push(format!("host interface {n}"));
                }
            }
            // Addresses as rules print them (after a space), so 110.x does not match 10.x.
            let needles = [bridge, format!(" 172.30.{s}."), format!(" 10.{}.", 100 + s)];
            for (tool, args) in [
                ("nft", &["list", "ruleset"][..]),
                ("iptables-save", &[][..]),
            ] {
                let out = Command::new(tool).args(args).output().unwrap();
                assert!(out.status.success(), "{tool} failed: {out:?}");
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    if needles.iter().any(|n| line.contains(n.as_str())) {
                        left.push(format!("host rule ({tool}): {}", line.trim()));
                    }
                }
            }
        }
        left
    }
}

const SLOTS_DIR: &str = "/run/ambit-sandbox-slots";

/// Files and directories under `dir` (to `depth` levels) whose name contains `name`.
fn named_after(dir: &Path, name: &str, depth: usize, out: &mut Vec<String>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = e.path();
        if e.file_name().to_string_lossy().contains(name) {
            out.push(format!("file {}", path.display()));
        } else if depth > 1 && e.file_type().is_ok_and(|t| t.is_dir()) {
            named_after(&path, name, depth - 1, out);
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = ambitctl(&["local", "down", "--name", &self.0]);
    }
}

/// The repository's canary route, the file the tour tells users to apply.
const CANARY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/canary-90-10.yaml");

fn ok_json(args: &[&str]) -> Value {
    let out = ambitctl(args);
    assert!(
        out.status.success(),
        "ambitctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    json_of(&out)
}

/// `local traffic` through productpage: (report, count of each reviews version).
fn traffic(sb: &Sandbox, requests: u64, concurrency: u16) -> (Value, BTreeMap<String, u64>) {
    let v = ok_json(&[
        "local",
        "traffic",
        "--name",
        &sb.0,
        "--requests",
        &requests.to_string(),
        "--concurrency",
        &concurrency.to_string(),
        "-o",
        "json",
    ]);
    let counts = v["reviews"]
        .as_object()
        .unwrap_or_else(|| panic!("no reviews versions: {v}"))
        .iter()
        .map(|(k, x)| (k.clone(), x["count"].as_u64().unwrap()))
        .collect();
    (v, counts)
}

/// Issue 5's "show it": `local up` shows all three reviews versions through productpage and
/// only TLS between the nodes; the canary applied with `ambitctl apply` holds 90/10 within
/// ±3 points over 2,000 requests; `local down` leaves nothing behind.
#[test]
fn sandbox_tour_up_then_canary_90_10_over_2000_requests_then_down_leaves_nothing() {
    let t0 = Instant::now();
    let sb = Sandbox::new("tour");
    assert_eq!(sb.leftovers(None), Vec::<String>::new());
    let v = ok_json(&["local", "up", "--name", &sb.0, "--nodes", "2", "-o", "json"]);
    let t_up = t0.elapsed();
    let slot = sb.slot();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["mesh"]["ready"], true, "{v}");
    assert_eq!(v["pods"]["total"], 7, "{v}");
    assert_eq!(v["pods"]["captured"], 7, "every demo pod is captured: {v}");
    let steps = v["steps"].as_array().unwrap();
    let waypoint = steps.iter().find(|s| s["step"] == "waypoint").unwrap();
    assert_eq!(waypoint["status"], "done", "{v}");
    assert!(
        !steps.iter().any(|s| s.to_string().contains("trafficRoute")),
        "up applies no route: {v}"
    );

    // Through productpage, before any route: every request answered, every reviews version
    // reached, and the waypoint (the L7 path) handled the calls to reviews.
    let r = &v["requests"];
    assert_eq!(r["ok"], 60, "{v}");
    assert_eq!(r["failed"], 0, "{v}");
    // The sandbox's BackendPolicy balances reviews round robin: a third each (give or take
    // a retried connection).
    for ver in ["v1", "v2", "v3"] {
        let n = r["reviews"][ver]["count"].as_u64().unwrap_or(0);
        assert!((17..=23).contains(&n), "{ver}: {n} of 60: {v}");
    }
    assert_eq!(v["allReviewsVersionsReached"], true, "{v}");
    assert!(
        v["waypointReviewsRequests"].as_f64().unwrap() >= 40.0,
        "{v}"
    );
    // Between the nodes: HBONE only, never the app's text.
    assert_eq!(v["wire"]["plaintextSeen"], false, "{v}");
    assert!(v["wire"]["hboneSegments"].as_u64().unwrap() > 0, "{v}");
    assert!(v["mtlsConnectionsOpened"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["nodes"].as_array().unwrap().len(), 2);

    // The next step it prints: the shipped route file (or a copy of it) and two commands.
    let route = v["next"]["routeFile"].as_str().unwrap();
    assert_eq!(
        std::fs::read_to_string(route).unwrap(),
        std::fs::read_to_string(CANARY).unwrap(),
        "{v}"
    );
    let cmds = v["next"]["commands"].to_string();
    assert!(
        cmds.contains(" apply -f ") && cmds.contains(" local traffic --name "),
        "{v}"
    );

    // The rest of ambitctl finds the sandbox through its state file.
    let meshes = ok_json(&[
        "get",
        "meshes",
        "--sandbox-state",
        &sb.state(),
        "-o",
        "json",
    ]);
    assert!(meshes.to_string().contains("\"default\""), "{meshes}");
    let st = ok_json(&["local", "status", "--name", &sb.0, "-o", "json"]);
    let procs = st["processes"].as_array().unwrap();
    assert!(procs.iter().all(|p| p["alive"] == true), "{st}");
    for want in [
        "apisim",
        "operator",
        "ztunnel-node-1",
        "node-agent-node-2",
        "app-reviews-v3",
        "waypoint-0",
    ] {
        assert!(
            procs.iter().any(|p| p["name"] == want),
            "{want} missing: {st}"
        );
    }
    let captured: usize = st["capturedPods"]
        .as_object()
        .unwrap()
        .values()
        .map(|p| p.as_array().map_or(0, Vec::len))
        .sum();
    assert_eq!(captured, 7, "{st}");
    // A second `up` of a running sandbox refuses and leaves it alone.
    let again = ambitctl(&["local", "up", "--name", &sb.0]);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("already running"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The canary, with the real CLI against the sandbox's API server.
    let out = ambitctl(&["apply", "-f", CANARY, "--sandbox-state", &sb.state()]);
    assert!(
        out.status.success(),
        "apply: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Live once the waypoint holds it and a batch through productpage shows no v3 (which
    // gets about a third of the requests without the route).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let dump = ambitctl(&[
            "config",
            "dump",
            "waypoint",
            "bookinfo/waypoint",
            "--sandbox-state",
            &sb.state(),
            "-o",
            "json",
        ]);
        let held = String::from_utf8_lossy(&dump.stdout).contains("reviews-canary");
        if held && !traffic(&sb, 60, 8).1.contains_key("v3") {
            break;
        }
        assert!(Instant::now() < deadline, "the route never took effect");
        std::thread::sleep(Duration::from_millis(200));
    }
    let t_live = t0.elapsed();

    let (split, counts) = traffic(&sb, 2000, 16);
    let t_split = t0.elapsed();
    assert_eq!(split["ok"], 2000, "{split}");
    assert_eq!(split["failed"], 0, "{split}");
    let (v1, v2) = (
        counts.get("v1").copied().unwrap_or(0),
        counts.get("v2").copied().unwrap_or(0),
    );
    assert_eq!(v1 + v2, 2000, "the route sends only to v1 and v2: {split}");
    let share = v1 as f64 / 20.0;
    assert!(
        (87.0..=93.0).contains(&share),
        "v1 share {share}% is not 90±3: {split}"
    );
    assert_eq!(
        split["reviews"]["v1"]["percent"].as_f64().unwrap(),
        share,
        "{split}"
    );

    let report = sb.down();
    assert!(
        report["processesStopped"].as_u64().unwrap() >= 13,
        "{report}"
    );
    assert_eq!(sb.leftovers(Some(slot)), Vec::<String>::new());
    // Idempotent.
    let again = sb.down();
    assert_eq!(again["processesStopped"], 0, "{again}");
    assert_eq!(again["netnsDeleted"], 0, "{again}");
    let out = ambitctl(&["local", "status", "--name", &sb.0]);
    assert!(
        !out.status.success(),
        "status of a removed sandbox must fail"
    );
    eprintln!(
        "timings: up {:.1}s, route live {:.1}s, 2000 requests {:.1}s, total {:.1}s",
        t_up.as_secs_f64(),
        (t_live - t_up).as_secs_f64(),
        (t_split - t_live).as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn down_cleans_up_after_a_killed_up() {
    let sb = Sandbox::new("kill");
    let mut up = Command::new(env!("CARGO_BIN_EXE_ambitctl"))
        .args(["local", "up", "--name", &sb.0, "-o", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it mid-way: once the data plane processes exist.
    let pid_file = format!("{}/pids/ztunnel-node-1.pid", sb.dir());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !Path::new(&pid_file).exists() {
        assert!(Instant::now() < deadline, "up never started a ztunnel");
        assert!(
            up.try_wait().unwrap().is_none(),
            "up ended before it was killed"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    up.kill().unwrap();
    up.wait().unwrap();
    let slot = sb.slot();
    assert!(
        !sb.leftovers(None).is_empty(),
        "the killed up must have left something for down to remove"
    );
    let report = sb.down();
    assert!(
        report["processesStopped"].as_u64().unwrap() >= 3,
        "{report}"
    );
    assert_eq!(sb.leftovers(Some(slot)), Vec::<String>::new());
    sb.down();
}

#[test]
fn down_of_a_sandbox_that_never_existed_succeeds() {
    let sb = Sandbox::new("none");
    let report = sb.down();
    assert_eq!(report["processesStopped"], 0);
    assert_eq!(report["stateDirRemoved"], false);
    assert_eq!(sb.leftovers(None), Vec::<String>::new());
}

#[test]
fn traffic_and_status_of_a_sandbox_that_is_not_up_say_how_to_start_it() {
    let name = format!("nosuch{}", std::process::id());
    for cmd in ["traffic", "status"] {
        let out = ambitctl(&["local", cmd, "--name", &name]);
        assert!(!out.status.success(), "local {cmd} of a missing sandbox");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("is not up") && err.contains(&format!("ambitctl local up --name {name}")),
            "{err}"
        );
    }
    let out = ambitctl(&["local", "traffic", "--name", &name, "-c", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--concurrency") && err.contains("1..=256"),
        "{err}"
    );
}
