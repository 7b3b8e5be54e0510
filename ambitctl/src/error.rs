//! Exit codes and the error type every command returns.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | everything worked / every check passed |
//! | 1 | an operation or check failed (invalid object, unhealthy proxy, failed check) |
//! | 2 | usage error (bad flags, unknown kind, no such node) |
//! | 3 | could not reach the API server or a proxy |

use std::fmt;

/// A command's failure, carrying the exit code it maps to.
#[derive(Debug)]
pub enum CliError {
    /// Exit 1: the operation ran and failed, or a check found a problem.
    Failed(String),
    /// Exit 2: the command line asks for something impossible.
    Usage(String),
    /// Exit 3: the API server or a proxy could not be reached.
    Unreachable(String),
    /// The result was already printed (e.g. `status` found something unhealthy); exit with
    /// this code (1 or 3) and print nothing more.
    Silent(i32),
}

impl CliError {
    pub fn code(&self) -> i32 {
        match self {
            CliError::Failed(_) => 1,
            CliError::Silent(code) => *code,
            CliError::Usage(_) => 2,
            CliError::Unreachable(_) => 3,
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Failed(m) | CliError::Usage(m) | CliError::Unreachable(m) => f.write_str(m),
            CliError::Silent(_) => Ok(()),
        }
    }
}

impl std::error::Error for CliError {}

pub type Result<T> = std::result::Result<T, CliError>;

pub fn failed(msg: impl Into<String>) -> CliError {
    CliError::Failed(msg.into())
}

pub fn usage(msg: impl Into<String>) -> CliError {
    CliError::Usage(msg.into())
}

/// Maps a kube error: API answers (4xx/5xx with a Status) are failures; anything that never
/// got an answer (connect refused, DNS, TLS, timeout) means the server is unreachable.
pub fn from_kube(context: &str, e: kube::Error) -> CliError {
    match e {
        kube::Error::Api(s) => CliError::Failed(format!("{context}: {} ({})", s.message, s.reason)),
        kube::Error::SerdeError(e) => CliError::Failed(format!("{context}: bad response: {e}")),
        other => CliError::Unreachable(format!(
            "{context}: cannot reach the API server: {other}; check --server / AMBIT_SERVER, the sandbox state file or your kubeconfig"
        )),
    }
}
