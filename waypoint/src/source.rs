//! Config from a local YAML file (file mode), re-read when it changes. A bad file is logged,
//! counted (`ambit_config_reloads_total{result="error"}`) and ignored: the waypoint keeps
//! serving the last good config.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ambit_core::config_source::{FileConfig, FilePoller, ReadError};
use ambit_core::meshconfig::{MeshConfig, WaypointRef};
use tokio::sync::watch;
use tracing::info;

use crate::metrics::Metrics;
use crate::state::{State, StateError};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: trustDomain {found:?} does not match the mesh CA's trust domain {expected:?}; fix the file or the waypoint's --trust-domain")]
    TrustDomain {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("config file {path}: {source}")]
    Invalid {
        path: PathBuf,
        #[source]
        source: StateError,
    },
}

pub struct FileSource {
    pub path: PathBuf,
    pub interval: Duration,
    pub trust_domain: String,
    pub me: WaypointRef,
}

/// The waypoint's side of the poller: its checks and metric.
struct FileMode {
    trust_domain: String,
    me: WaypointRef,
    metrics: Arc<Metrics>,
}

impl FileConfig for FileMode {
    type State = State;
    type Error = SourceError;

    fn parse(&self, path: &Path, bytes: &[u8], generation: u64) -> Result<State, SourceError> {
        parse(path, bytes, &self.trust_domain, &self.me, generation)
    }

    fn reloaded(&self, path: &Path, state: &State, generation: u64) {
        info!(path = %path.display(), generation, services = state.services.len(), routes = state.routes.len(), "config reloaded");
    }

    fn outcome(&self, error: Option<&str>) {
        self.metrics
            .config_reload(if error.is_some() { "error" } else { "ok" });
    }
}

impl FileSource {
    /// Loads the file once (an error here is fatal: there is no last good config yet), then
    /// polls it in the background.
    pub fn start(self, metrics: Arc<Metrics>) -> Result<watch::Receiver<Arc<State>>, SourceError> {
        let mode = FileMode {
            trust_domain: self.trust_domain,
            me: self.me,
            metrics,
        };
        FilePoller {
            path: self.path,
            interval: self.interval,
        }
        .start(mode)
    }
}

/// Parses and validates a config file's contents for waypoint `me`.
pub fn parse(
    path: &Path,
    bytes: &[u8],
    trust_domain: &str,
    me: &WaypointRef,
    generation: u64,
) -> Result<State, SourceError> {
    let cfg: MeshConfig = serde_yaml::from_slice(bytes).map_err(|e| SourceError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if cfg.trust_domain != trust_domain {
        return Err(SourceError::TrustDomain {
            path: path.to_path_buf(),
            found: cfg.trust_domain,
            expected: trust_domain.to_string(),
        });
    }
    State::build(&cfg, me, generation).map_err(|source| SourceError::Invalid {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> WaypointRef {
        WaypointRef {
            name: "wp".into(),
            namespace: "shop".into(),
        }
    }

    #[test]
    fn trust_domain_and_syntax_are_checked() {
        let p = Path::new("mesh.yaml");
        assert!(parse(
            p,
            b"trustDomain: cluster.local\n",
            "cluster.local",
            &me(),
            1
        )
        .is_ok());
        let e = parse(p, b"trustDomain: other.org\n", "cluster.local", &me(), 1).unwrap_err();
        assert!(matches!(e, SourceError::TrustDomain { .. }), "{e}");
        let e = parse(p, b"routes: [{name: x}]\n", "cluster.local", &me(), 1).unwrap_err();
        assert!(e.to_string().starts_with("config file mesh.yaml: "), "{e}");
    }

    #[tokio::test]
    async fn bad_update_keeps_the_last_good_config() {
        let dir = std::env::temp_dir().join(format!("wp-source-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mesh.yaml");
        std::fs::write(&path, "services: []\n").unwrap();
        let metrics = Arc::new(Metrics::new());
        let src = FileSource {
            path: path.clone(),
            interval: Duration::from_millis(10),
            trust_domain: "cluster.local".into(),
            me: me(),
        };
        let mut rx = src.start(metrics.clone()).unwrap();
        std::fs::write(&path, "services: [oops").unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(rx.borrow_and_update().generation, 1);
        std::fs::write(&path, "services: []\nworkloads: []\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rx.borrow().generation, 2);
        let text = metrics.encode();
        assert!(
            text.contains("ambit_config_reloads_total{result=\"error\"} 1"),
            "{text}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
