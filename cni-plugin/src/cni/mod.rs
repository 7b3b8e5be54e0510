//! The `ambit-cni` chained CNI plugin (CNI spec 1.1): spec types, errors,
//! environment parsing and the command logic. The binary
//! (`src/bin/ambit-cni.rs`) only wires stdin/stdout/env to [`plugin::run`].

pub mod config;
pub mod env;
pub mod error;
pub mod plugin;

/// The CNI spec versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// The newest spec version we implement; used when the runtime did not say.
pub const CURRENT_VERSION: &str = "1.1.0";

/// Parse `X.Y.Z` (a pre-release/build suffix is ignored) for comparisons.
pub(crate) fn version_tuple(v: &str) -> Option<(u32, u32, u32)> {
    let core = v.split(['-', '+']).next()?;
    let mut it = core.split('.').map(|p| p.parse::<u32>().ok());
    let t = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some(t)
}
