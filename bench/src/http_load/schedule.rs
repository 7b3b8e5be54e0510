//! The request schedule the load generators share: in fixed-rate mode a sender thread hands
//! due times to the workers through a queue; in closed-loop mode each worker goes again as
//! soon as it can until the window ends.

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc as tmpsc, Mutex};

use super::Mode;

/// Due times, shared by the workers (each takes the next one when it is free).
pub(crate) type Queue = Arc<Mutex<tmpsc::UnboundedReceiver<Instant>>>;

/// The workers' queue in fixed-rate mode; none in closed-loop mode.
pub(crate) fn queue(mode: Mode, due: tmpsc::UnboundedReceiver<Instant>) -> Option<Queue> {
    match mode {
        Mode::FixedRate { .. } => Some(Arc::new(Mutex::new(due))),
        Mode::ClosedLoop => None,
    }
}

/// Once the connections are open: tells the caller (`ready`) when the run starts, 20 ms from
/// now so that every worker begins together, and waits for it. Returns the measured window
/// (after `warmup`, `duration` long) and the workers' queue.
pub(crate) async fn begin(
    mode: Mode,
    warmup: Duration,
    duration: Duration,
    ready: &mpsc::Sender<anyhow::Result<Instant>>,
    due: tmpsc::UnboundedReceiver<Instant>,
) -> ((Instant, Instant), Option<Queue>) {
    let start = Instant::now() + Duration::from_millis(20);
    let window = (start + warmup, start + warmup + duration);
    let _ = ready.send(Ok(start));
    let queue = queue(mode, due);
    tokio::time::sleep_until(start.into()).await;
    (window, queue)
}

/// Hands each due time to the workers when it comes, `rate` a second for `length` from
/// `start` (dropping the channel ends the run).
pub(crate) fn send_schedule(
    due: tmpsc::UnboundedSender<Instant>,
    start: Instant,
    rate: f64,
    length: Duration,
) {
    // Without this, each sleep may overshoot by the default 50 µs slack.
    let _ = nix::sys::prctl::set_timerslack(1);
    let total = (rate * length.as_secs_f64()).round() as u64;
    for k in 0..total {
        let at = start + Duration::from_secs_f64(k as f64 / rate);
        let now = Instant::now();
        if at > now {
            std::thread::sleep(at - now);
        }
        if due.send(at).is_err() {
            return;
        }
    }
}

/// When a worker's next request is due, or `None` when it should stop: the next due time
/// from the queue (fixed rate), else now until `end` (closed loop).
pub(crate) async fn next_due(queue: &Option<Queue>, end: Instant) -> Option<Instant> {
    match queue {
        Some(q) => q.lock().await.recv().await,
        None => Some(Instant::now()).filter(|now| *now < end),
    }
}

/// Due times no worker took (every worker gave up): they count as failed requests.
pub(crate) async fn untaken(queue: Option<Queue>) -> u64 {
    let Some(q) = queue else { return 0 };
    let mut q = q.lock().await;
    let mut n = 0;
    while q.recv().await.is_some() {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn fixed_rate_hands_out_every_due_time_in_order() {
        let (tx, rx) = tmpsc::unbounded_channel();
        let start = Instant::now();
        let sender =
            std::thread::spawn(move || send_schedule(tx, start, 1000.0, Duration::from_millis(20)));
        let q = queue(Mode::FixedRate { rate_per_s: 1000.0 }, rx);
        let first = next_due(&q, start).await.unwrap();
        assert_eq!(first, start);
        let second = next_due(&q, start).await.unwrap();
        assert_eq!(second - first, Duration::from_millis(1));
        sender.join().unwrap();
        // 20 due times in all: two taken, the rest left for `untaken`.
        assert_eq!(untaken(q).await, 18);
    }

    #[tokio::test]
    async fn begin_announces_the_start_and_waits_for_it() {
        let (ready, announced) = mpsc::channel();
        let (_tx, due) = tmpsc::unbounded_channel();
        let (warmup, duration) = (Duration::from_millis(5), Duration::from_millis(50));
        let (window, q) = begin(Mode::ClosedLoop, warmup, duration, &ready, due).await;
        let start = announced.recv().unwrap().unwrap();
        assert!(Instant::now() >= start);
        assert_eq!(window, (start + warmup, start + warmup + duration));
        assert!(q.is_none());
    }

    #[tokio::test]
    async fn closed_loop_runs_until_the_window_ends() {
        let (_tx, rx) = tmpsc::unbounded_channel();
        let q = queue(Mode::ClosedLoop, rx);
        assert!(q.is_none());
        let later = Instant::now() + Duration::from_secs(60);
        assert!(next_due(&q, later).await.is_some());
        assert!(next_due(&q, Instant::now()).await.is_none());
        assert_eq!(untaken(q).await, 0);
    }
}
