//! Watch streams: newline-delimited JSON events, periodic bookmarks, `timeoutSeconds`,
//! 410 for expired resourceVersions and for watchers that fall too far behind.

use crate::error::ApiError;
use crate::http::Body;
use crate::render::{render_object, Accept};
use crate::resources::ResourceType;
use crate::server::Shared;
use crate::state::{WatchFilter, WatchMsg, WatchRegistration, WatchStart};
use crate::util::Query;
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Bytes queued towards the socket per watch; the per-watch event buffer is in the store.
const BODY_BUFFER: usize = 16;

struct Encoder {
    rt: ResourceType,
    version: String,
    accept: Accept,
}

impl Encoder {
    fn line(ty: &str, obj: &Value) -> Bytes {
        let mut v =
            serde_json::to_vec(&json!({"type": ty, "object": obj})).expect("JSON values serialize");
        v.push(b'\n');
        Bytes::from(v)
    }

    fn event(&self, msg: &WatchMsg) -> Bytes {
        match msg {
            WatchMsg::Event(kind, obj) => Self::line(
                kind.as_str(),
                &render_object((**obj).clone(), &self.rt, &self.version, self.accept),
            ),
            WatchMsg::Bookmark(rv) => self.bookmark(*rv, false),
        }
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.rt.kind, "apiVersion": self.rt.api_version(&self.version), "metadata": meta});
        Self::line("BOOKMARK", &obj)
    }

    fn error(e: &ApiError) -> Bytes {
        Self::line("ERROR", &e.to_status())
    }
}

fn stream_response(rx: mpsc::Receiver<Bytes>) -> http::Response<Body> {
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(Frame::data(b)), rx))
    });
    let body = StreamBody::new(stream).boxed();
    http::Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .header("cache-control", "no-cache, private")
        .body(body)
        .expect("static response parts are valid")
}

pub fn watch_response(
    shared: &Arc<Shared>,
    rt: &ResourceType,
    version: &str,
    filter: WatchFilter,
    q: &Query,
    accept: Accept,
) -> Result<http::Response<Body>, ApiError> {
    let bookmarks = q.flag("allowWatchBookmarks");
    let initial_events = q.flag("sendInitialEvents");
    if initial_events && !bookmarks {
        return Err(ApiError::invalid("ListOptions", "", "sendInitialEvents: Forbidden: sendInitialEvents requires setting allowWatchBookmarks to true"));
    }
    let start = match q.get("resourceVersion").unwrap_or("") {
        "" | "0" => WatchStart::CurrentState,
        _ if initial_events => WatchStart::CurrentState,
        rv => WatchStart::After(rv.parse().map_err(|_| {
            ApiError::bad_request(format!(
                "invalid resourceVersion {rv:?}: apisim resourceVersions are integers"
            ))
        })?),
    };
    let timeout = q
        .get("timeoutSeconds")
        .map(|t| {
            t.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!("timeoutSeconds {t:?} is not a number of seconds"))
            })
        })
        .transpose()?
        .map(Duration::from_secs);
    let enc = Encoder {
        rt: rt.clone(),
        version: version.to_string(),
        accept,
    };
    let (tx, rx) = mpsc::channel(BODY_BUFFER);
    let registration = shared.lock().register_watch(filter, start);
    match registration {
        Err(e) => {
            // As the real server: a 200 stream carrying one ERROR event with the 410 Status.
            let line = Encoder::error(&e);
            tokio::spawn(async move {
                let _ = tx.send(line).await;
            });
        }
        Ok(reg) => {
            let shared = shared.clone();
            tokio::spawn(run(
                shared,
                reg,
                tx,
                enc,
                bookmarks,
                initial_events,
                timeout,
            ));
        }
    }
    Ok(stream_response(rx))
}

async fn run(
    shared: Arc<Shared>,
    reg: WatchRegistration,
    tx: mpsc::Sender<Bytes>,
    enc: Encoder,
    bookmarks: bool,
    initial_end: bool,
    timeout: Option<Duration>,
) {
    let WatchRegistration {
        id,
        mut rx,
        initial,
        overflow,
        rv,
    } = reg;
    let mut shutdown = shared.shutdown.clone();
    let deliver = async {
        for m in &initial {
            if tx.send(enc.event(m)).await.is_err() {
                return;
            }
        }
        if initial_end && tx.send(enc.bookmark(rv, true)).await.is_err() {
            return;
        }
        let far = Duration::from_secs(365 * 24 * 3600);
        let deadline = tokio::time::sleep_until(Instant::now() + timeout.unwrap_or(far));
        tokio::pin!(deadline);
        let period = shared.config.bookmark_interval;
        let mut tick = tokio::time::interval_at(Instant::now() + period, period);
        loop {
            tokio::select! {
                m = rx.recv() => match m {
                    Some(m) => {
                        if tx.send(enc.event(&m)).await.is_err() {
                            return;
                        }
                    }
                    None => {
                        if overflow.load(Ordering::SeqCst) {
                            let e = ApiError::gone("the watch fell too far behind and was closed; re-list and watch again");
                            let _ = tx.send(Encoder::error(&e)).await;
                        }
                        return;
                    }
                },
                _ = tick.tick(), if bookmarks => shared.lock().request_bookmark(id),
                _ = &mut deadline => return,
                _ = tx.closed() => return,
            }
        }
    };
    tokio::select! {
        _ = deliver => {}
        _ = shutdown.wait_for(|s| *s) => {}
    }
    shared.lock().unregister_watch(id);
}
