//! A small stateful in-memory Kubernetes API server for tests and the local sandbox.
//!
//! It speaks the real API's JSON over HTTP/1.1 and HTTP/2 (plain TCP, no authentication:
//! bind it to loopback), so `kube::Client`, `kube::runtime::watcher` and `Controller` run
//! against it unmodified. See `docs/apisim.md` for what it implements and where it differs
//! from a real API server.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! let server = ambit_apisim::ApiServer::start("127.0.0.1:0".parse()?).await?;
//! println!("serving on {}", server.url());
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

mod apply;
mod defaults;
mod delete;
mod discovery;
mod error;
mod http;
mod patch;
mod patching;
mod render;
mod resources;
mod selector;
mod server;
mod snapshot;
mod state;
mod store;
mod tokens;
mod util;
mod watch;
mod write;

pub use error::{ApiError, StartError};
pub use resources::{ResourceKey, ResourceType};
pub use selector::{FieldSelector, LabelSelector};
pub use server::{ApiServer, ApiServerConfig, ApiServerHandle, RecordedRequest};
pub use snapshot::INITIAL_NAMESPACES;
pub use store::Store;
pub use tokens::DEFAULT_AUDIENCE;
