//! CNI error results (spec section "Error") and the well-known codes.

use serde_json::json;

/// The spec's well-known error codes (0-99 are reserved by the spec).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 1: the requested `cniVersion` is not supported.
    IncompatibleVersion = 1,
    /// 2: a field in the network configuration has an unsupported value.
    UnsupportedField = 2,
    /// 3: container unknown or does not exist.
    UnknownContainer = 3,
    /// 4: a required `CNI_*` environment variable is missing or invalid.
    InvalidEnvironment = 4,
    /// 5: I/O failure (reading stdin, writing stdout).
    Io = 5,
    /// 6: stdin could not be decoded.
    Decode = 6,
    /// 7: the network configuration is invalid.
    InvalidConfig = 7,
    /// 11: transient failure, try again later.
    TryAgainLater = 11,
    /// 50: (STATUS) the plugin cannot service ADD requests.
    NotAvailable = 50,
    /// 51: (STATUS) not available, existing containers may have limited
    /// connectivity.
    NotAvailableLimitedConnectivity = 51,
}

impl ErrorCode {
    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

/// A CNI error: printed as JSON on stdout, with a non-zero exit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{msg} ({details})")]
pub struct CniError {
    pub code: ErrorCode,
    /// Short: what was wrong.
    pub msg: String,
    /// Long: where, and what to do about it.
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>, details: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The spec's error result object.
    pub fn to_json(&self, cni_version: &str) -> String {
        json!({
            "cniVersion": cni_version,
            "code": self.code.as_u32(),
            "msg": self.msg,
            "details": self.details,
        })
        .to_string()
    }
}
