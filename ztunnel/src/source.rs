//! Where config comes from: a local YAML file, re-read when it changes (tests, the sandbox), or
//! the operator's config stream ([`crate::stream_source`]), both behind [`ConfigSource`].
//!
//! A bad update is logged, counted (`ambit_config_reloads_total{result="error"}`) and
//! ignored: the proxies keep serving the last good config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ambit_core::certs::BoxFuture;
use ambit_core::config_source::{FileConfig, FilePoller, ReadError};
use tokio::sync::watch;
use tracing::info;

use crate::config::MeshConfig;
use crate::metrics::{Metrics, ResultLabels};
use crate::state::{ProxyState, StateError};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: trustDomain {found:?} does not match the mesh CA's trust domain {expected:?}; fix the file or ztunnel's --trust-domain")]
    TrustDomain {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("config from the control plane: {0}")]
    Stream(String),
    #[error("config file {path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: StateError,
    },
}

/// Delivers mesh state: the first value is the initial state, later values replace it.
pub trait ConfigSource: Send + 'static {
    /// `status` is where the source says how it is doing (shown in the admin config dump).
    fn start(
        self: Box<Self>,
        metrics: Arc<Metrics>,
        status: Arc<SourceStatus>,
    ) -> BoxFuture<'static, Result<watch::Receiver<Arc<ProxyState>>, SourceError>>;
}

/// Where config comes from and how that is going, as JSON for `/config_dump`'s
/// `configSource` (mode, connected, version, last error).
#[derive(Default)]
pub struct SourceStatus(std::sync::RwLock<serde_json::Value>);

impl SourceStatus {
    pub fn set(&self, value: serde_json::Value) {
        *self.0.write().expect("source status lock") = value;
    }
    pub fn get(&self) -> serde_json::Value {
        self.0.read().expect("source status lock").clone()
    }
}

/// Polls a YAML file for changes.
pub struct FileSource {
    pub path: PathBuf,
    pub interval: Duration,
    /// The CA's trust domain: a config naming another one is rejected.
    pub trust_domain: Option<String>,
}

/// Parses and validates a config file's contents.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<ProxyState, SourceError> {
    let cfg: MeshConfig = serde_yaml::from_slice(bytes).map_err(|e| SourceError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    ProxyState::build(&cfg).map_err(|source| SourceError::Invalid {
        path: path.to_path_buf(),
        source,
    })
}

/// File mode's side of the poller: ztunnel's checks, metric and `/config_dump` status.
struct FileMode {
    trust_domain: Option<String>,
    metrics: Arc<Metrics>,
    status: Arc<SourceStatus>,
    path: String,
}

impl FileConfig for FileMode {
    type State = ProxyState;
    type Error = SourceError;

    fn parse(
        &self,
        path: &Path,
        bytes: &[u8],
        _generation: u64,
    ) -> Result<ProxyState, SourceError> {
        let state = parse(path, bytes)?;
        match &self.trust_domain {
            Some(expected) if *expected != state.trust_domain => Err(SourceError::TrustDomain {
                path: path.to_path_buf(),
                found: state.trust_domain,
                expected: expected.clone(),
            }),
            _ => Ok(state),
        }
    }

    fn reloaded(&self, path: &Path, state: &ProxyState, _generation: u64) {
        info!(path = %path.display(), workloads = state.workloads.len(), services = state.services.len(), "config reloaded");
    }

    fn outcome(&self, error: Option<&str>) {
        let result = if error.is_some() { "error" } else { "ok" };
        self.metrics
            .config_reloads
            .get_or_create(&ResultLabels {
                result: result.into(),
            })
            .inc();
        self.status.set(serde_json::json!({
            "mode": "file", "path": self.path,
            // A file is always "connected"; lastError says whether its latest content was kept out.
            "connected": true, "lastError": error,
        }));
    }
}

impl ConfigSource for FileSource {
    fn start(
        self: Box<Self>,
        metrics: Arc<Metrics>,
        status: Arc<SourceStatus>,
    ) -> BoxFuture<'static, Result<watch::Receiver<Arc<ProxyState>>, SourceError>> {
        Box::pin(async move {
            let config = FileMode {
                trust_domain: self.trust_domain,
                metrics,
                status,
                path: self.path.display().to_string(),
            };
            FilePoller {
                path: self.path,
                interval: self.interval,
            }
            .start(config)
        })
    }
}
