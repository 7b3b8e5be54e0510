//! The apps and load generators that run inside the pods' network namespaces.
//!
//! Every piece runs on its own OS thread that entered the pod's namespace first, so every
//! socket it creates lives in that pod (see [`spawn_in_netns`]):
//!
//! * servers: one thread per server pod with a current-thread tokio runtime (a typical
//!   single-threaded event-loop app): a sink on [`BULK_PORT`] and a fixed-size
//!   request/response echo on [`RR_PORT`];
//! * bulk, connection-rate and open-tunnel clients: one thread per run with a current-thread
//!   runtime, so the generator never uses more than one core and leaves the other to the
//!   ztunnels (the box has two);
//! * the fixed-rate latency client: plain blocking sockets on dedicated threads (one sender,
//!   one reader per connection). The sender sleeps with a 1 ns timer slack, so requests leave
//!   within a few microseconds of their scheduled time; a tokio timer would round every send
//!   up to the next millisecond tick and add that to every sample.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{oneshot, watch, Semaphore};
use tokio::task::JoinSet;

/// Bulk sink: reads and discards.
pub const BULK_PORT: u16 = 9000;
/// Request/response: answers every `REQUEST_BYTES` read with `RESPONSE_BYTES`.
pub const RR_PORT: u16 = 9001;
pub const REQUEST_BYTES: usize = 1024;
pub const RESPONSE_BYTES: usize = 1024;
/// Bulk clients write chunks of this size; the sink reads with a buffer as large.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Any single connect / request / response taking longer than this is an error.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// Spawns a named thread that enters the network namespace at `netns` and then runs `f`.
pub fn spawn_in_netns<T, F>(
    netns: &Path,
    name: &str,
    f: F,
) -> anyhow::Result<JoinHandle<anyhow::Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> anyhow::Result<T> + Send + 'static,
{
    let ns = ambit_core::netns::Netns::open(netns)?;
    let path = netns.to_path_buf();
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            // The whole thread's work runs inside the namespace.
            ns.run(f)
                .with_context(|| format!("entering network namespace {}", path.display()))?
        })
        .context("spawning a thread")
}

fn join<T>(handle: JoinHandle<anyhow::Result<T>>, what: &str) -> anyhow::Result<T> {
    handle
        .join()
        .map_err(|_| anyhow!("{what} thread panicked"))?
}

fn current_thread_runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building a tokio runtime")
}

fn listener(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    bind(SocketAddr::from(([0, 0, 0, 0], port)))
}

/// A thread serving until told to stop. Dropping it stops the thread and waits for it.
struct Background {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Background {
    fn new(stop: oneshot::Sender<()>, thread: JoinHandle<anyhow::Result<()>>) -> Self {
        Self {
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The apps of one server pod. Dropping it stops them.
pub struct Server {
    /// Bytes the sink has read, over the server's whole life.
    pub bulk_bytes: Arc<AtomicU64>,
    /// Connections the request/response port has accepted.
    pub rr_accepted: Arc<AtomicU64>,
    _thread: Background,
}

impl Server {
    pub fn start(netns: &Path, name: &str) -> anyhow::Result<Server> {
        let bulk_bytes = Arc::new(AtomicU64::new(0));
        let rr_accepted = Arc::new(AtomicU64::new(0));
        let (shutdown, stop) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let (bulk, accepted) = (bulk_bytes.clone(), rr_accepted.clone());
        let thread = spawn_in_netns(netns, name, move || {
            let rt = current_thread_runtime()?;
            rt.block_on(async move {
                let listeners =
                    (|| Ok::<_, std::io::Error>((listener(BULK_PORT)?, listener(RR_PORT)?)))();
                let (sink, rr) = match listeners {
                    Ok(l) => {
                        let _ = ready_tx.send(Ok(()));
                        l
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("server listeners: {e}")));
                        return Ok(());
                    }
                };
                tokio::spawn(serve_sink(sink, bulk));
                tokio::spawn(serve_rr(rr, accepted));
                let _ = stop.await;
                Ok(())
            })
        })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("server thread {name} died before listening"))??;
        Ok(Server {
            bulk_bytes,
            rr_accepted,
            _thread: Background::new(shutdown, thread),
        })
    }
}

async fn serve_sink(listener: tokio::net::TcpListener, bytes: Arc<AtomicU64>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let bytes = bytes.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; CHUNK_BYTES];
            while let Ok(n @ 1..) = s.read(&mut buf).await {
                bytes.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
    }
}

async fn serve_rr(listener: tokio::net::TcpListener, accepted: Arc<AtomicU64>) {
    loop {
        let Ok((mut s, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        accepted.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let _ = s.set_nodelay(true);
            let mut req = [0u8; REQUEST_BYTES];
            let resp = [b'r'; RESPONSE_BYTES];
            while s.read_exact(&mut req).await.is_ok() {
                if s.write_all(&resp).await.is_err() {
                    return;
                }
            }
        });
    }
}

async fn connect(target: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_nodelay(true)?;
    match tokio::time::timeout(IO_TIMEOUT, socket.connect(target)).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

/// One request/response on an open connection.
async fn request(s: &mut tokio::net::TcpStream) -> std::io::Result<()> {
    let req = [b'q'; REQUEST_BYTES];
    let mut resp = [0u8; RESPONSE_BYTES];
    let io = async {
        s.write_all(&req).await?;
        s.read_exact(&mut resp).await.map(drop)
    };
    match tokio::time::timeout(IO_TIMEOUT, io).await {
        Ok(r) => r,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

// ---------------------------------------------------------------------------------------
// Bulk throughput
// ---------------------------------------------------------------------------------------

/// A bulk run in progress: `streams` connections from the client pod, each writing
/// `CHUNK_BYTES` chunks as fast as it can until [`BulkRun::stop`]. What arrives is counted
/// by the server's sink; the caller samples that counter around its measuring window.
pub struct BulkRun {
    stop: watch::Sender<bool>,
    thread: JoinHandle<anyhow::Result<()>>,
}

/// Opens the connections and starts writing; returns once every connection is open.
pub fn start_bulk(client_ns: &Path, target: SocketAddr, streams: usize) -> anyhow::Result<BulkRun> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
    let thread = spawn_in_netns(client_ns, "bulk-client", move || {
        let rt = current_thread_runtime()?;
        rt.block_on(async move {
            let mut conns = Vec::with_capacity(streams);
            for _ in 0..streams {
                match connect(target).await {
                    Ok(c) => conns.push(c),
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("bulk connect to {target}: {e}")));
                        return Ok(());
                    }
                }
            }
            let _ = ready_tx.send(Ok(()));
            let mut tasks = JoinSet::new();
            for mut c in conns {
                let mut stop = stop_rx.clone();
                tasks.spawn(async move {
                    let chunk = vec![b'b'; CHUNK_BYTES];
                    loop {
                        tokio::select! {
                            _ = stop.changed() => return Ok(()),
                            r = c.write_all(&chunk) => r?,
                        }
                    }
                });
            }
            let mut first_error: Option<std::io::Error> = None;
            while let Some(r) = tasks.join_next().await {
                if let Ok(Err(e)) = r {
                    first_error.get_or_insert(e);
                }
            }
            match first_error {
                Some(e) => Err(anyhow!("bulk stream to {target} failed: {e}")),
                None => Ok(()),
            }
        })
    })?;
    let ready = ready_rx
        .recv()
        .map_err(|_| anyhow!("bulk client thread died"))
        .and_then(|r| r);
    let run = BulkRun {
        stop: stop_tx,
        thread,
    };
    match ready {
        Ok(()) => Ok(run),
        Err(e) => {
            let _ = run.stop();
            Err(e)
        }
    }
}

impl BulkRun {
    /// Stops writing and closes the connections; fails if a stream broke meanwhile.
    pub fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(true);
        join(self.thread, "bulk client")
    }
}

/// Gbit/s from a byte count over a duration.
pub fn gbit_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 * 8.0 / seconds / 1e9
}

// ---------------------------------------------------------------------------------------
// Fixed-rate request/response latency (open loop)
// ---------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug)]
pub struct FixedRate {
    pub rate_per_s: f64,
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
}

/// A fixed-rate run in progress. The schedule is fixed up front: request `k` is due at
/// `start + k / rate`, on connection `k % connections`. Its latency is measured from that due
/// time, so a slow response delays nothing and hides nothing (no coordinated omission):
/// requests are pipelined, the sender never waits for answers.
pub struct FixedRateRun {
    /// When the measured window opens (end of the warm-up) and closes.
    pub window: (Instant, Instant),
    sender: JoinHandle<anyhow::Result<u64>>,
    readers: Vec<JoinHandle<ReaderResult>>,
    opts: FixedRate,
}

#[derive(Default)]
struct ReaderResult {
    /// (due time, latency in ns) of every answered request.
    samples: Vec<(Instant, u64)>,
    errors: u64,
}

#[derive(Clone, Debug, Default)]
pub struct FixedRateResult {
    /// Latency of every request due inside the measured window that got its response.
    pub samples_ns: Vec<u64>,
    /// Requests (whole run, warm-up included) that failed: write or read error, timeout.
    pub errors: u64,
    pub window_seconds: f64,
}

impl FixedRateResult {
    pub fn achieved_rps(&self) -> f64 {
        self.samples_ns.len() as f64 / self.window_seconds
    }
}

/// Opens the connections and starts the schedule; returns once the connections are open.
pub fn start_fixed_rate(
    client_ns: &Path,
    target: SocketAddr,
    opts: FixedRate,
) -> anyhow::Result<FixedRateRun> {
    if opts.connections == 0 || opts.rate_per_s <= 0.0 {
        bail!("fixed-rate run needs connections > 0 and a positive rate");
    }
    let (ready_tx, ready_rx) =
        mpsc::channel::<anyhow::Result<(Instant, Vec<JoinHandle<ReaderResult>>)>>();
    let sender = spawn_in_netns(client_ns, "rr-sender", move || {
        let mut streams = Vec::new();
        let mut readers = Vec::new();
        let mut queues = Vec::new();
        for i in 0..opts.connections {
            let opened = TcpStream::connect_timeout(&target, IO_TIMEOUT).and_then(|s| {
                s.set_nodelay(true)?;
                s.set_read_timeout(Some(IO_TIMEOUT))?;
                s.set_write_timeout(Some(IO_TIMEOUT))?;
                Ok((s.try_clone()?, s))
            });
            let (rd, wr) = match opened {
                Ok(pair) => pair,
                Err(e) => {
                    let _ = ready_tx.send(Err(anyhow!("latency connect to {target}: {e}")));
                    return Ok(0);
                }
            };
            let (tx, rx) = mpsc::channel::<Instant>();
            readers.push(
                std::thread::Builder::new()
                    .name(format!("rr-reader-{i}"))
                    .spawn(move || read_responses(rd, rx))
                    .context("spawning a reader thread")?,
            );
            streams.push(wr);
            queues.push(Some(tx));
        }
        // Without this, each sleep may overshoot by the default 50 µs slack.
        let _ = nix::sys::prctl::set_timerslack(1);
        let start = Instant::now() + Duration::from_millis(20);
        let _ = ready_tx.send(Ok((start, readers)));
        let total = (opts.rate_per_s * (opts.warmup + opts.duration).as_secs_f64()).round() as u64;
        let interval = 1.0 / opts.rate_per_s;
        let req = [b'q'; REQUEST_BYTES];
        let mut errors = 0;
        for k in 0..total {
            let due = start + Duration::from_secs_f64(k as f64 * interval);
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            let c = (k % opts.connections as u64) as usize;
            let Some(tx) = &queues[c] else {
                errors += 1;
                continue;
            };
            // Queue the due time first: the reader must find it when the answer arrives.
            let _ = tx.send(due);
            if streams[c].write_all(&req).is_err() {
                errors += 1;
                queues[c] = None;
            }
        }
        Ok(errors)
    })?;
    let (start, readers) = ready_rx
        .recv()
        .map_err(|_| anyhow!("latency sender thread died"))??;
    let window_start = start + opts.warmup;
    Ok(FixedRateRun {
        window: (window_start, window_start + opts.duration),
        sender,
        readers,
        opts,
    })
}

fn read_responses(mut s: TcpStream, due: mpsc::Receiver<Instant>) -> ReaderResult {
    let mut out = ReaderResult::default();
    let mut resp = [0u8; RESPONSE_BYTES];
    while let Ok(t) = due.recv() {
        if s.read_exact(&mut resp).is_err() {
            // This request and every later one on this connection are lost.
            out.errors += 1 + due.iter().count() as u64;
            break;
        }
        let latency = Instant::now().saturating_duration_since(t).as_nanos() as u64;
        out.samples.push((t, latency));
    }
    out
}

impl FixedRateRun {
    /// Waits for the schedule to finish and every answer to arrive (or time out).
    pub fn finish(self) -> anyhow::Result<FixedRateResult> {
        let sender_errors = join(self.sender, "latency sender")?;
        let mut result = FixedRateResult {
            errors: sender_errors,
            window_seconds: self.opts.duration.as_secs_f64(),
            ..Default::default()
        };
        for r in self.readers {
            let r = r.join().map_err(|_| anyhow!("latency reader panicked"))?;
            let window = self.window;
            result.samples_ns.extend(
                r.samples
                    .into_iter()
                    .filter(|(due, _)| *due >= window.0 && *due < window.1)
                    .map(|(_, ns)| ns),
            );
            result.errors += r.errors;
        }
        Ok(result)
    }
}

// ---------------------------------------------------------------------------------------
// New-connection rate
// ---------------------------------------------------------------------------------------

#[derive(Clone, Debug, Default)]
pub struct ConnRateResult {
    /// connect + one request/response + close, for every connection started in the window.
    pub samples_ns: Vec<u64>,
    pub errors: u64,
    pub window_seconds: f64,
}

impl ConnRateResult {
    pub fn per_second(&self) -> f64 {
        self.samples_ns.len() as f64 / self.window_seconds
    }
}

/// `workers` concurrent loops of connect, one request/response, close, for `warmup` +
/// `duration`; counts those started after the warm-up.
pub fn conn_rate(
    client_ns: &Path,
    target: SocketAddr,
    workers: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<ConnRateResult> {
    let thread = spawn_in_netns(client_ns, "connrate-client", move || {
        let rt = current_thread_runtime()?;
        rt.block_on(async move {
            let start = Instant::now();
            let (window_start, end) = (start + warmup, start + warmup + duration);
            let mut tasks = JoinSet::new();
            for _ in 0..workers {
                tasks.spawn(async move {
                    let mut samples = Vec::new();
                    let mut errors = 0u64;
                    loop {
                        let t0 = Instant::now();
                        if t0 >= end {
                            break;
                        }
                        let r = async {
                            let mut s = connect(target).await?;
                            request(&mut s).await
                        }
                        .await;
                        match r {
                            Ok(()) if t0 >= window_start => {
                                samples.push(t0.elapsed().as_nanos() as u64)
                            }
                            Ok(()) => {}
                            Err(_) => {
                                errors += 1;
                                tokio::time::sleep(Duration::from_millis(10)).await;
                            }
                        }
                    }
                    (samples, errors)
                });
            }
            let mut out = ConnRateResult {
                window_seconds: duration.as_secs_f64(),
                ..Default::default()
            };
            while let Some(r) = tasks.join_next().await {
                let (samples, errors) = r.context("connection-rate worker panicked")?;
                out.samples_ns.extend(samples);
                out.errors += errors;
            }
            Ok(out)
        })
    })?;
    join(thread, "connection-rate client")
}

// ---------------------------------------------------------------------------------------
// Many open connections
// ---------------------------------------------------------------------------------------

/// Connections held open by a client thread until this is dropped.
pub struct Held {
    pub opened: usize,
    pub errors: usize,
    _thread: Background,
}

/// Opens `count` connections (at most `concurrency` at a time), does one request/response on
/// each and keeps them open; returns once all are established (or failed).
pub fn hold_open(
    client_ns: &Path,
    target: SocketAddr,
    count: usize,
    concurrency: usize,
) -> anyhow::Result<Held> {
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, usize)>();
    let (release, released) = oneshot::channel::<()>();
    let thread = spawn_in_netns(client_ns, "hold-client", move || {
        let rt = current_thread_runtime()?;
        rt.block_on(async move {
            let permits = Arc::new(Semaphore::new(concurrency.max(1)));
            let mut tasks = JoinSet::new();
            for _ in 0..count {
                let permits = permits.clone();
                tasks.spawn(async move {
                    let _permit = permits.acquire_owned().await.ok()?;
                    let mut s = connect(target).await.ok()?;
                    request(&mut s).await.ok()?;
                    Some(s)
                });
            }
            let mut open = Vec::with_capacity(count);
            let mut errors = 0;
            while let Some(r) = tasks.join_next().await {
                match r {
                    Ok(Some(s)) => open.push(s),
                    _ => errors += 1,
                }
            }
            let _ = ready_tx.send((open.len(), errors));
            let _ = released.await;
            drop(open);
            Ok(())
        })
    })?;
    let (opened, errors) = ready_rx
        .recv()
        .map_err(|_| anyhow!("hold-open client thread died"))?;
    Ok(Held {
        opened,
        errors,
        _thread: Background::new(release, thread),
    })
}

/// `/var/run/netns/...` of a pod, for [`spawn_in_netns`].
pub fn ns_path(pod: &ambit_testkit::Pod) -> PathBuf {
    pod.ns.path()
}

// ---------------------------------------------------------------------------------------
// Plain TCP relays (the control path)
// ---------------------------------------------------------------------------------------

/// A minimal user-space TCP relay: for each `(listen, upstream)` route, accepts, dials the
/// upstream and copies both ways with 256 KiB buffers. No TLS, no HTTP/2, no policy: placed
/// where the ztunnels sit, it shows what two extra user-space hops cost on this machine.
pub struct Relay {
    _thread: Background,
}

impl Relay {
    pub fn start(
        netns: &Path,
        name: &str,
        routes: Vec<(SocketAddr, SocketAddr)>,
    ) -> anyhow::Result<Relay> {
        let (shutdown, stop) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        let thread = spawn_in_netns(netns, name, move || {
            let rt = current_thread_runtime()?;
            rt.block_on(async move {
                let mut listeners = Vec::new();
                for (listen, upstream) in routes {
                    match bind(listen) {
                        Ok(l) => listeners.push((l, upstream)),
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow!("relay listener {listen}: {e}")));
                            return Ok(());
                        }
                    }
                }
                let _ = ready_tx.send(Ok(()));
                for (l, upstream) in listeners {
                    tokio::spawn(relay_accept(l, upstream));
                }
                let _ = stop.await;
                Ok(())
            })
        })?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("relay thread {name} died before listening"))??;
        Ok(Relay {
            _thread: Background::new(shutdown, thread),
        })
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = Socket::new(
        Domain::IPV4,
        Type::STREAM.nonblocking(),
        Some(Protocol::TCP),
    )?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    tokio::net::TcpListener::from_std(s.into())
}

async fn relay_accept(listener: tokio::net::TcpListener, upstream: SocketAddr) {
    loop {
        let Ok((mut down, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        tokio::spawn(async move {
            let _ = down.set_nodelay(true);
            let Ok(mut up) = connect(upstream).await else {
                return;
            };
            let _ = tokio::io::copy_bidirectional_with_sizes(
                &mut down,
                &mut up,
                CHUNK_BYTES,
                CHUNK_BYTES,
            )
            .await;
        });
    }
}
