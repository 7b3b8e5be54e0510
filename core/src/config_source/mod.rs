//! Where a proxy's config and certificates come from, shared by ztunnel and the waypoint:
//!
//! - [`ControlPlaneArgs`]: the stream-mode flags (`--control-plane`, `--root-cert`,
//!   `--token-file`, `--operator-identity`), flattened into each binary's command line, and
//!   the "exactly one mode" check against the binary's file-mode flags;
//! - [`FilePoller`]: file mode's config file, polled; a bad update is logged, counted and
//!   ignored, so the proxy keeps serving its last good config.

mod args;
mod file;

pub use args::{local_ca, read_pem, ControlPlaneArgs, ModeError};
pub use file::{FileConfig, FilePoller, ReadError};
