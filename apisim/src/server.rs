//! The HTTP server (HTTP/1.1 and HTTP/2 over plain TCP) and its handle.

use crate::error::{ApiError, StartError};
use crate::http::{route, Body, Reply, Req};
use crate::render::Accept;
use crate::state::State;
use crate::store::Store;
use crate::util::Query;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Largest request body accepted (the real server's limit is 3 MiB for most objects).
const MAX_BODY: usize = 8 << 20;

#[derive(Clone, Debug)]
pub struct ApiServerConfig {
    /// Events kept for watches that resume from a resourceVersion; older ones get 410.
    pub history_limit: usize,
    /// Events buffered per watcher; a watcher further behind is closed with 410.
    pub watch_buffer: usize,
    /// Period of BOOKMARK events for watches that allow them.
    pub bookmark_interval: Duration,
    /// Requests kept in the in-process request log.
    pub request_log_limit: usize,
    /// JSON snapshot loaded at start and written at shutdown.
    pub state_file: Option<PathBuf>,
}

impl Default for ApiServerConfig {
    fn default() -> Self {
        ApiServerConfig {
            history_limit: 10_000,
            watch_buffer: 1024,
            bookmark_interval: Duration::from_secs(10),
            request_log_limit: 10_000,
            state_file: None,
        }
    }
}

/// One request as the server saw it, for tests that assert exact API calls.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    /// Raw (still percent-encoded) query string.
    pub query: String,
    pub content_type: Option<String>,
    /// JSON (or YAML, for apply patches) bodies parsed; `None` when empty.
    pub body: Option<Value>,
    pub status: u16,
    /// The `user-agent` header, so a test can tell which of several clients made a call.
    pub user_agent: String,
}

impl RecordedRequest {
    pub fn is_write(&self) -> bool {
        matches!(self.method.as_str(), "POST" | "PUT" | "PATCH" | "DELETE")
    }
}

pub(crate) struct Shared {
    state: Mutex<State>,
    pub config: ApiServerConfig,
    pub requests: Mutex<VecDeque<RecordedRequest>>,
    pub shutdown: watch::Receiver<bool>,
}

impl Shared {
    /// The state lock. A panic while holding it is a bug, but the data stays usable.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, r: RecordedRequest) {
        let mut log = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        log.push_back(r);
        while log.len() > self.config.request_log_limit {
            log.pop_front();
        }
    }
}

pub struct ApiServer;

impl ApiServer {
    /// Starts a server with default settings. Use `127.0.0.1:0` for a free port.
    pub async fn start(listen: SocketAddr) -> Result<ApiServerHandle, StartError> {
        Self::start_with(listen, ApiServerConfig::default()).await
    }

    pub async fn start_with(
        listen: SocketAddr,
        config: ApiServerConfig,
    ) -> Result<ApiServerHandle, StartError> {
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?;
        let mut state = State::new(config.history_limit, config.watch_buffer);
        match &config.state_file {
            Some(p) if p.exists() => crate::snapshot::load(&mut state, p)?,
            _ => crate::snapshot::seed(&mut state),
        }
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(state),
            config,
            requests: Mutex::new(VecDeque::new()),
            shutdown: shutdown_rx,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        tracing::info!(%addr, "apisim listening");
        Ok(ApiServerHandle {
            addr,
            store: Store::new(shared),
            shutdown: shutdown_tx,
            task: Some(task),
        })
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "apisim accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut shutdown = shared.shutdown.clone();
            let svc_shared = shared.clone();
            let svc = hyper::service::service_fn(move |req| handle(svc_shared.clone(), req));
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => if let Err(e) = r { tracing::debug!(error = %e, "apisim connection ended with an error") },
                _ = shutdown.wait_for(|s| *s) => {}
            }
        });
    }
}

fn json_response(code: http::StatusCode, v: &Value) -> http::Response<Body> {
    let bytes = serde_json::to_vec(v).expect("JSON values serialize");
    http::Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(bytes)).boxed())
        .expect("static response parts are valid")
}

async fn handle(
    shared: Arc<Shared>,
    req: http::Request<Incoming>,
) -> Result<http::Response<Body>, Infallible> {
    let (parts, body) = req.into_parts();
    let header = |h: http::header::HeaderName| {
        parts
            .headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let accept = header(http::header::ACCEPT);
    let content_type = header(http::header::CONTENT_TYPE);
    let path = parts.uri.path().to_string();
    let raw_query = parts.uri.query().unwrap_or("").to_string();
    let result = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => Ok(b.to_bytes()),
        Err(e) => Err(ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("request body for {path} rejected: {e} (limit {MAX_BODY} bytes)"),
        )),
    };
    let (response, body_bytes) = match result {
        Err(e) => (
            json_response(
                http::StatusCode::from_u16(e.code).unwrap_or(http::StatusCode::BAD_REQUEST),
                &e.to_status(),
            ),
            Bytes::new(),
        ),
        Ok(bytes) => {
            let r = Req {
                method: &parts.method,
                path: &path,
                query: Query::parse(Some(&raw_query)),
                accept: Accept::parse(&accept),
                content_type: &content_type,
                body: &bytes,
            };
            let resp = match route(&shared, &r) {
                Ok(Reply::Json(code, v)) => json_response(code, &v),
                Ok(Reply::Text(t)) => http::Response::builder()
                    .status(200)
                    .header("content-type", "text/plain; charset=utf-8")
                    .body(Full::new(Bytes::from_static(t.as_bytes())).boxed())
                    .expect("static response parts are valid"),
                Ok(Reply::Stream(resp)) => resp,
                Err(e) => {
                    tracing::debug!(method = %parts.method, %path, code = e.code, message = %e.message, "apisim request failed");
                    json_response(
                        http::StatusCode::from_u16(e.code)
                            .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR),
                        &e.to_status(),
                    )
                }
            };
            (resp, bytes)
        }
    };
    let body = if body_bytes.is_empty() {
        None
    } else {
        serde_json::from_slice(&body_bytes)
            .ok()
            .or_else(|| serde_yaml::from_slice(&body_bytes).ok())
            .or_else(|| {
                Some(Value::String(
                    String::from_utf8_lossy(&body_bytes).into_owned(),
                ))
            })
    };
    shared.record(RecordedRequest {
        method: parts.method.to_string(),
        path,
        query: raw_query,
        content_type: (!content_type.is_empty()).then_some(content_type),
        body,
        status: response.status().as_u16(),
        user_agent: header(http::header::USER_AGENT),
    });
    Ok(response)
}

/// A running server. Dropping it stops the server (and saves the state file, if any).
pub struct ApiServerHandle {
    addr: SocketAddr,
    store: Store,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl ApiServerHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`, ready for `kube::Config::new(url.parse()?)`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// In-process access to the stored objects.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Requests served so far (oldest first, bounded by `request_log_limit`).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.store
            .shared()
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    pub fn clear_requests(&self) {
        self.store
            .shared()
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    /// Stops accepting, ends all connections and watches, saves the state file if configured.
    pub async fn shutdown(mut self) {
        self.stop();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }

    fn stop(&mut self) {
        if *self.shutdown.borrow() {
            return;
        }
        self.shutdown.send_replace(true);
        if let Some(p) = &self.store.shared().config.state_file {
            if let Err(e) = crate::snapshot::save(&self.store.shared().lock(), p) {
                tracing::error!(path = %p.display(), error = %e, "apisim could not save its state");
            }
        }
    }
}

impl Drop for ApiServerHandle {
    fn drop(&mut self) {
        self.stop();
    }
}
