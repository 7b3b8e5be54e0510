use std::path::PathBuf;
use std::process::ExitStatus;

/// Everything that can go wrong while building a test topology.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start `{command}`: {source}; is iproute2 installed (apt-get install iproute2) and on PATH?")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("`{command}` failed ({status}): {stderr}{hint}")]
    Command {
        command: String,
        status: ExitStatus,
        stderr: String,
        hint: &'static str,
    },

    #[error("cannot open network namespace {path}: {source}; was it deleted already, or is this not running as root?")]
    OpenNs {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("cannot enter network namespace {path}: {source}; setns(CLONE_NEWNET) needs CAP_SYS_ADMIN, run the tests as root")]
    Setns {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },

    #[error("{what} in network namespace {ns} failed: {source}")]
    Io {
        what: String,
        ns: String,
        #[source]
        source: std::io::Error,
    },

    #[error("invalid argument: {0}")]
    Invalid(String),
}

/// A hint appended to failed commands: the usual cause is not being root.
pub(crate) fn command_hint(stderr: &str) -> &'static str {
    if !crate::netns::is_root() {
        "; network namespaces need root: run the tests as root (CI runs as root)"
    } else if stderr.contains("File exists") {
        "; the name is already taken: build names with unique_prefix() so parallel tests never collide"
    } else {
        ""
    }
}
