//! HTTP load over HBONE: the client side of the waypoint benchmark, acting as the source ztunnel
//! would (core's pooled HBONE client, the client pod's identity) with an HTTP/1.1 or HTTP/2
//! client on each tunnel. Every request is `POST /api/echo` with a `REQUEST_BYTES` body and
//! must come back `200` with `RESPONSE_BYTES`; anything else is an error.
//!
//! Two modes share one worker loop:
//! * **fixed rate** (open loop): request `k` is due at `start + k / rate`; a sender thread with
//!   1 ns timer slack hands due times to the workers, and latency runs from the due time, so a
//!   slow response is never hidden (no coordinated omission). Workers are keep-alive
//!   connections (HTTP/1.1: one tunnel each; HTTP/2: they share a few tunnels);
//! * **closed loop**: each worker sends its next request as soon as the last one is answered.
//!
//! The client runs on one thread inside the client pod's namespace, with a current-thread
//! runtime (at most one core).

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ambit_core::certs::CertSlot;
use ambit_core::hbone::client::{Pool, PoolConfig, PoolKey};
use ambit_core::Identity;
use ambit_waypoint::io::H2Io;
use anyhow::{anyhow, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::mpsc as tmpsc;

use self::schedule::{next_due, send_schedule, Queue};
use crate::load::{spawn_in_netns, REQUEST_BYTES, RESPONSE_BYTES};
use crate::wp_env::ALLOWED_PATH;

pub(crate) mod schedule;

/// A request (or a connection attempt) taking longer than this is an error.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http1,
    Http2,
}

/// Where the client's tunnels go.
#[derive(Clone, Debug)]
pub struct Target {
    /// HBONE peer (`ip:15008`) and the identity it must present.
    pub hbone: SocketAddr,
    pub identity: Identity,
    /// The tunnel's `:authority`: the original destination.
    pub authority: SocketAddr,
    pub proto: Proto,
}

#[derive(Clone, Copy, Debug)]
pub enum Mode {
    FixedRate { rate_per_s: f64 },
    ClosedLoop,
}

#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub mode: Mode,
    /// Concurrent requests at most (HTTP/1.1: one tunnel each).
    pub workers: usize,
    /// HTTP/2 only: tunnels the workers share.
    pub h2_connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// What the client side knows: its pod's address and identity.
#[derive(Clone)]
pub struct Caller {
    pub ns: PathBuf,
    pub ip: IpAddr,
    pub slot: Arc<CertSlot>,
}

#[derive(Clone, Debug, Default)]
pub struct LoadResult {
    /// Latency of every request due (fixed rate) or started (closed loop) inside the window.
    pub samples_ns: Vec<u64>,
    /// Failed requests over the whole run, warm-up included.
    pub errors: u64,
    /// Requests answered over the whole run.
    pub completed: u64,
    pub window_seconds: f64,
    /// The first error, for the log.
    pub first_error: Option<String>,
}

impl LoadResult {
    pub fn achieved_rps(&self) -> f64 {
        self.samples_ns.len() as f64 / self.window_seconds
    }
}

/// A run in progress; `window` is the measured interval (after the warm-up).
pub struct Run {
    pub window: (Instant, Instant),
    client: JoinHandle<anyhow::Result<LoadResult>>,
    sender: Option<JoinHandle<()>>,
}

impl Run {
    pub fn finish(self) -> anyhow::Result<LoadResult> {
        if let Some(s) = self.sender {
            s.join()
                .map_err(|_| anyhow!("load sender thread panicked"))?;
        }
        self.client
            .join()
            .map_err(|_| anyhow!("load client thread panicked"))?
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    async fn request(&mut self, body: Bytes, host: &str) -> anyhow::Result<()> {
        // HTTP/2 clients send `:authority` (hyper does for an absolute URI); HTTP/1.1 ones
        // send the path and a Host header.
        let uri = match self {
            Sender::H1(_) => ALLOWED_PATH.to_string(),
            Sender::H2(_) => format!("http://{host}{ALLOWED_PATH}"),
        };
        let req = http::Request::post(uri)
            .header(http::header::HOST, host)
            .body(Full::new(body))?;
        let resp = match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(req).await?
            }
        };
        let status = resp.status();
        let got = resp.into_body().collect().await?.to_bytes().len();
        if status != http::StatusCode::OK || got != RESPONSE_BYTES {
            anyhow::bail!("answer {status} with {got} bytes");
        }
        Ok(())
    }
}

/// Opens one tunnel and an HTTP connection on it.
async fn open(pool: &Pool, caller: &Caller, target: &Target) -> anyhow::Result<Sender> {
    let key = PoolKey {
        src_ip: caller.ip,
        src_identity: caller.slot.identity().clone(),
        dst: target.hbone,
        dst_identity: target.identity.clone(),
    };
    let tunnel = pool
        .connect(
            &key,
            || {
                // This thread is in the client pod's namespace: so is the socket.
                let s = tokio::net::TcpSocket::new_v4()?;
                s.set_nodelay(true)?;
                Ok(s)
            },
            || ambit_core::tls::client_config(caller.slot.clone(), vec![target.identity.clone()]),
            target.authority,
            Some(SocketAddr::new(caller.ip, 40000)),
        )
        .await
        .with_context(|| format!("HBONE tunnel to {} via {}", target.authority, target.hbone))?;
    let io = TokioIo::new(H2Io::client(tunnel));
    Ok(match target.proto {
        Proto::Http1 => {
            let (send, conn) = http1::handshake(io).await?;
            tokio::spawn(conn);
            Sender::H1(send)
        }
        Proto::Http2 => {
            let (send, conn) = http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Sender::H2(send)
        }
    })
}

/// Opens the connections (fails if any cannot be opened), then runs the plan.
pub fn start(caller: &Caller, target: &Target, plan: Plan) -> anyhow::Result<Run> {
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<Instant>>();
    let (due_tx, due_rx) = tmpsc::unbounded_channel::<Instant>();
    let (caller, target) = (caller.clone(), target.clone());
    let ns = caller.ns.clone();
    let client = spawn_in_netns(&ns, "http-client", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(run_client(caller, target, plan, ready_tx, due_rx))
    })?;
    let start = ready_rx
        .recv()
        .map_err(|_| anyhow!("load client thread died"))
        .and_then(|r| r);
    let start = match start {
        Ok(s) => s,
        Err(e) => {
            let _ = client.join();
            return Err(e);
        }
    };
    let window = (start + plan.warmup, start + plan.warmup + plan.duration);
    let sender = match plan.mode {
        Mode::FixedRate { rate_per_s } => Some(
            std::thread::Builder::new()
                .name("http-sender".into())
                .spawn(move || {
                    send_schedule(due_tx, start, rate_per_s, plan.warmup + plan.duration)
                })
                .context("spawning the sender thread")?,
        ),
        Mode::ClosedLoop => None,
    };
    Ok(Run {
        window,
        client,
        sender,
    })
}

async fn run_client(
    caller: Caller,
    target: Target,
    plan: Plan,
    ready: mpsc::Sender<anyhow::Result<Instant>>,
    due: tmpsc::UnboundedReceiver<Instant>,
) -> anyhow::Result<LoadResult> {
    let pool = Pool::new(PoolConfig::default());
    let mut senders = Vec::with_capacity(plan.workers);
    let mut shared = Vec::new();
    for i in 0..plan.workers {
        let opened = match target.proto {
            Proto::Http1 => open(&pool, &caller, &target).await,
            Proto::Http2 if i < plan.h2_connections.max(1) => {
                let s = open(&pool, &caller, &target).await;
                if let Ok(Sender::H2(s)) = &s {
                    shared.push(s.clone());
                }
                s
            }
            Proto::Http2 => Ok(Sender::H2(shared[i % shared.len()].clone())),
        };
        match opened {
            Ok(s) => senders.push(s),
            Err(e) => {
                let _ = ready.send(Err(e.context("opening the load connections")));
                return Ok(LoadResult::default());
            }
        }
    }
    let (window, queue) = schedule::begin(plan.mode, plan.warmup, plan.duration, &ready, due).await;
    let ctx = Arc::new((pool, caller, target));
    let mut tasks = tokio::task::JoinSet::new();
    for s in senders {
        tasks.spawn(worker(s, queue.clone(), window, ctx.clone()));
    }
    let mut out = LoadResult {
        window_seconds: plan.duration.as_secs_f64(),
        ..Default::default()
    };
    while let Some(r) = tasks.join_next().await {
        let w = r.context("load worker panicked")?;
        out.samples_ns.extend(w.samples_ns);
        out.errors += w.errors;
        out.completed += w.completed;
        if out.first_error.is_none() {
            out.first_error = w.first_error;
        }
    }
    out.errors += schedule::untaken(queue).await;
    Ok(out)
}

/// One keep-alive connection's loop. A failed request counts as an error and the connection
/// is replaced; a worker that cannot reconnect stops.
async fn worker(
    mut sender: Sender,
    queue: Option<Queue>,
    window: (Instant, Instant),
    ctx: Arc<(Pool, Caller, Target)>,
) -> LoadResult {
    let (pool, caller, target) = (&ctx.0, &ctx.1, &ctx.2);
    let host = format!("api.{}", crate::wp_env::NS);
    let body = Bytes::from(vec![b'q'; REQUEST_BYTES]);
    let mut out = LoadResult::default();
    while let Some(due) = next_due(&queue, window.1).await {
        let r = tokio::time::timeout(IO_TIMEOUT, sender.request(body.clone(), &host)).await;
        let done = Instant::now();
        match r {
            Ok(Ok(())) => {
                out.completed += 1;
                if due >= window.0 && due < window.1 {
                    out.samples_ns.push((done - due).as_nanos() as u64);
                }
            }
            failed => {
                out.errors += 1;
                if out.first_error.is_none() {
                    out.first_error = Some(match failed {
                        Ok(Err(e)) => format!("{e:#}"),
                        _ => format!("no answer within {IO_TIMEOUT:?}"),
                    });
                }
                match tokio::time::timeout(IO_TIMEOUT, open(pool, caller, target)).await {
                    Ok(Ok(s)) => sender = s,
                    _ => break,
                }
            }
        }
    }
    out
}

/// One request on a fresh tunnel with `path`; returns the status (for the policy check).
pub fn probe_status(caller: &Caller, target: &Target, path: &'static str) -> anyhow::Result<u16> {
    let (caller, target) = (caller.clone(), target.clone());
    let ns: &Path = &caller.ns.clone();
    let t = spawn_in_netns(ns, "http-probe", move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let pool = Pool::new(PoolConfig::default());
            let Sender::H1(mut s) = open(
                &pool,
                &caller,
                &Target {
                    proto: Proto::Http1,
                    ..target
                },
            )
            .await?
            else {
                unreachable!("HTTP/1.1 requested");
            };
            let req = http::Request::post(path)
                .header(http::header::HOST, format!("api.{}", crate::wp_env::NS))
                .body(Full::new(Bytes::from_static(b"x")))?;
            s.ready().await?;
            let resp = tokio::time::timeout(IO_TIMEOUT, s.send_request(req)).await??;
            Ok(resp.status().as_u16())
        })
    })?;
    t.join().map_err(|_| anyhow!("probe thread panicked"))?
}
