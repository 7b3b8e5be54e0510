//! HTTP/1.1 load on Bookinfo's productpage from the sandbox's client pod: what the thesis' load
//! tool did through its ingress. Each worker holds one keep-alive connection to the productpage
//! Service VIP and sends `GET /productpage`; only `200` counts as success.
//!
//! The modes are the waypoint benchmark's ([`Mode`]): closed loop (maximum throughput: every
//! worker sends its next request when the last one is answered) and fixed rate (open loop:
//! request `k` is due at `start + k / rate`, latency runs from the due time, so a slow answer
//! hides nothing). Results are that benchmark's [`LoadResult`], plus which reviews version
//! served each page (the proof of which routing was live) and the errors by kind.
//!
//! Like the other generators, the client is one thread inside the pod's network namespace with
//! a current-thread runtime: it never uses more than one core.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::sync::mpsc as tmpsc;

use crate::http_load::schedule::{self, next_due, send_schedule, Queue};
pub use crate::http_load::{LoadResult, Mode};
use crate::load::spawn_in_netns;

/// A request (or a connection attempt) taking longer than this is an error. The demo app gives
/// up on its own upstream calls after 5 s, so 10 s leaves room for its 502.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// The reviews versions a productpage answer can name.
const VERSIONS: [&str; 3] = ["v1", "v2", "v3"];

#[derive(Clone, Debug)]
pub struct Plan {
    pub mode: Mode,
    /// Keep-alive connections, one request in flight on each at most.
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// One run's outcome.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub load: LoadResult,
    /// Pages served per reviews version (whole run).
    pub by_version: BTreeMap<String, u64>,
    /// Failed requests by kind (`status 502`, `timeout`, `connection`, ...), whole run.
    pub errors_by_kind: BTreeMap<String, u64>,
}

#[derive(Default)]
struct Worker {
    out: Outcome,
}

type Conn = http1::SendRequest<Empty<Bytes>>;

/// Runs `plan` from the pod at `client_ns` against `target` (productpage's `ip:port`).
pub fn run(client_ns: &Path, target: SocketAddr, plan: Plan) -> anyhow::Result<Outcome> {
    let (due_tx, due_rx) = tmpsc::unbounded_channel::<Instant>();
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<Instant>>();
    let p = plan.clone();
    let client = spawn_in_netns(client_ns, "bookinfo-client", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(client(target, p, ready_tx, due_rx))
    })?;
    let start = match ready_rx.recv() {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let _ = client.join();
            return Err(e);
        }
        Err(_) => return Err(anyhow!("the load client thread died before starting")),
    };
    if let Mode::FixedRate { rate_per_s } = plan.mode {
        send_schedule(due_tx, start, rate_per_s, plan.warmup + plan.duration);
    } else {
        drop(due_tx);
    }
    client
        .join()
        .map_err(|_| anyhow!("the load client thread panicked"))?
}

async fn client(
    target: SocketAddr,
    plan: Plan,
    ready: mpsc::Sender<anyhow::Result<Instant>>,
    due: tmpsc::UnboundedReceiver<Instant>,
) -> anyhow::Result<Outcome> {
    let mut conns = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        match open(target).await {
            Ok(c) => conns.push(c),
            Err(e) => {
                let _ = ready.send(Err(e.context("opening the load connections")));
                return Ok(Outcome::default());
            }
        }
    }
    let (window, queue) = schedule::begin(plan.mode, plan.warmup, plan.duration, &ready, due).await;
    let mut tasks = tokio::task::JoinSet::new();
    for c in conns {
        tasks.spawn(worker(c, target, queue.clone(), window));
    }
    let mut out = Outcome {
        load: LoadResult {
            window_seconds: plan.duration.as_secs_f64(),
            ..Default::default()
        },
        ..Default::default()
    };
    while let Some(r) = tasks.join_next().await {
        merge(&mut out, r.context("load worker panicked")?.out);
    }
    // Due times no worker took (every worker gave up): failed requests too.
    let not_sent = schedule::untaken(queue).await;
    if not_sent > 0 {
        out.load.errors += not_sent;
        *out.errors_by_kind.entry("not sent".into()).or_default() += not_sent;
    }
    Ok(out)
}

fn merge(into: &mut Outcome, w: Outcome) {
    into.load.samples_ns.extend(w.load.samples_ns);
    into.load.errors += w.load.errors;
    into.load.completed += w.load.completed;
    if into.load.first_error.is_none() {
        into.load.first_error = w.load.first_error;
    }
    for (k, v) in w.by_version {
        *into.by_version.entry(k).or_default() += v;
    }
    for (k, v) in w.errors_by_kind {
        *into.errors_by_kind.entry(k).or_default() += v;
    }
}

async fn open(target: SocketAddr) -> anyhow::Result<Conn> {
    let connect = async {
        let s = tokio::net::TcpStream::connect(target).await?;
        s.set_nodelay(true)?;
        let (send, conn) = http1::handshake(TokioIo::new(s)).await?;
        tokio::spawn(conn);
        Ok::<_, anyhow::Error>(send)
    };
    tokio::time::timeout(IO_TIMEOUT, connect)
        .await
        .map_err(|_| anyhow!("connecting to {target} took over {IO_TIMEOUT:?}"))?
        .with_context(|| format!("connecting to productpage at {target}"))
}

/// One request; `Ok(version)` on a `200` (the reviews version the page names, if any).
async fn get_page(c: &mut Conn, target: SocketAddr) -> Result<Option<&'static str>, String> {
    let req = http::Request::get("/productpage")
        .header(http::header::HOST, format!("productpage:{}", target.port()))
        .body(Empty::new())
        .map_err(|e| format!("request: {e}"))?;
    let fetch = async {
        c.ready().await.map_err(|_| "connection".to_string())?;
        let resp = c
            .send_request(req)
            .await
            .map_err(|_| "connection".to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|_| "connection".to_string())?
            .to_bytes();
        if status != http::StatusCode::OK {
            return Err(format!("status {}", status.as_u16()));
        }
        Ok(version_of(&body))
    };
    tokio::time::timeout(IO_TIMEOUT, fetch)
        .await
        .map_err(|_| "timeout".to_string())?
}

/// Which reviews version served the page: the demo app writes `"version":"vN"` only in the
/// reviews part of a productpage answer.
fn version_of(body: &[u8]) -> Option<&'static str> {
    VERSIONS.into_iter().find(|v| {
        let needle = format!("\"version\":\"{v}\"");
        body.windows(needle.len()).any(|w| w == needle.as_bytes())
    })
}

/// One keep-alive connection's loop. A failed request counts as an error and the connection
/// is replaced; a worker that cannot reconnect stops.
async fn worker(
    mut c: Conn,
    target: SocketAddr,
    queue: Option<Queue>,
    window: (Instant, Instant),
) -> Worker {
    let mut w = Worker::default();
    let out = &mut w.out;
    while let Some(due) = next_due(&queue, window.1).await {
        match get_page(&mut c, target).await {
            Ok(version) => {
                out.load.completed += 1;
                if due >= window.0 && due < window.1 {
                    out.load.samples_ns.push(due.elapsed().as_nanos() as u64);
                }
                let v = version.unwrap_or("none");
                *out.by_version.entry(v.into()).or_default() += 1;
            }
            Err(kind) => {
                out.load.errors += 1;
                out.load.first_error.get_or_insert_with(|| kind.clone());
                *out.errors_by_kind.entry(kind).or_default() += 1;
                // A non-200 leaves the connection usable; anything else does not.
                if c.is_closed() || !c.is_ready() {
                    match open(target).await {
                        Ok(n) => c = n,
                        Err(_) => break,
                    }
                }
            }
        }
    }
    w
}

/// `n` sequential pages on one connection: which reviews versions served them, and how many
/// failed. Used to see which routing is live before a measurement.
pub fn probe(client_ns: &Path, target: SocketAddr, n: usize) -> anyhow::Result<Outcome> {
    let ns: PathBuf = client_ns.to_path_buf();
    run(
        &ns,
        target,
        Plan {
            mode: Mode::FixedRate {
                rate_per_s: (n as f64).max(1.0) * 4.0,
            },
            connections: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(250),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_reviews_version_in_a_productpage_answer() {
        let page = br#"{"details":{"author":"x"},"product":"p","reviews":{"id":"0","stars":"red","version":"v3"}}"#;
        assert_eq!(version_of(page), Some("v3"));
        assert_eq!(version_of(br#"{"version": "v2"}"#), None);
        assert_eq!(version_of(b"{}"), None);
    }
}
