//! The operator's reconcilers (kube-runtime controllers) and what they share.
//!
//! - `mesh`: the `Mesh` object -> the node-level data plane (DaemonSets, ServiceAccounts, RBAC)
//!   and its rollout status.
//! - `waypoint`: each `Waypoint` -> ServiceAccount, Deployment, Service, root certificate.
//! - `meshstate`: namespaces, pods, services and the policy CRDs -> the compiled config streamed
//!   to proxies, and the policies' status conditions.

pub mod mesh;
pub mod meshstate;
pub mod metrics;
pub mod nack_status;
pub mod status;
pub mod waypoint;

use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::{Recorder, Reporter};
use kube::Client;
use tracing::warn;

pub use metrics::ReconcileMetrics;

use crate::render::dataplane::ControlPlane;

/// What every reconciler needs.
pub struct Context {
    pub client: Client,
    /// The operator's namespace and the address proxies reach it at.
    pub control_plane: ControlPlane,
    /// PEM of the mesh root certificate (published for proxies to verify the operator).
    pub root_cert_pem: String,
    pub metrics: Arc<ReconcileMetrics>,
    pub recorder: Recorder,
}

impl Context {
    pub fn new(
        client: Client,
        control_plane: ControlPlane,
        root_cert_pem: String,
        metrics: Arc<ReconcileMetrics>,
        instance: &str,
    ) -> Arc<Self> {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: crate::render::FIELD_MANAGER.into(),
                instance: Some(instance.to_string()),
            },
        );
        Arc::new(Context {
            client,
            control_plane,
            root_cert_pem,
            metrics,
            recorder,
        })
    }
}

/// Reconcile failures. Each names what the operator was doing, so the log line and the
/// `ambit_operator_reconcile_errors_total{reason}` label say where it broke.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("applying {kind} {name}: {source}")]
    Apply {
        kind: String,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("deleting {kind} {name}: {source}")]
    Delete {
        kind: &'static str,
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("writing the status of {name}: {source}")]
    Status {
        name: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("finalizer of {name}: {message}")]
    Finalizer { name: String, message: String },
    #[error("{0} has no name or uid (was it read from the API server?)")]
    Incomplete(String),
    /// Not a failure: cleanup is waiting for something to finish; retried shortly.
    #[error("{0}")]
    Waiting(String),
}

impl Error {
    /// A status write refused because the object changed since it was read (409): not a
    /// failure, the newer object is on its way through the watch.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Status { source: kube::Error::Api(e), .. } if e.code == 409)
    }

    /// Short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Apply { .. } => "apply",
            Error::Delete { .. } => "delete",
            Error::Status { .. } => "status",
            Error::Read { .. } => "read",
            Error::Finalizer { .. } => "finalizer",
            Error::Incomplete(_) => "incomplete",
            Error::Waiting(_) => "waiting",
        }
    }
}

/// Retry a failed reconcile with a short fixed delay (kube-runtime re-queues; the API server
/// being briefly unavailable is the common cause).
pub fn on_error(controller: &'static str, error: &Error, ctx: &Context) -> Action {
    if let Error::Waiting(what) = error {
        tracing::info!(controller, "{what}");
        return Action::requeue(Duration::from_secs(2));
    }
    if error.is_conflict() {
        tracing::debug!(controller, %error, "status computed from an older version; recomputing");
        return Action::requeue(Duration::from_millis(200));
    }
    warn!(controller, %error, "reconcile failed; retrying in 5s");
    ctx.metrics.error(controller, error.reason());
    Action::requeue(Duration::from_secs(5))
}
