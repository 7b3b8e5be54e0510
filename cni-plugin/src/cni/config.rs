//! The network configuration on stdin: the spec's fields, `prevResult` kept
//! as raw text (it is passed through byte for byte), and Ambit's fields.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::error::{CniError, ErrorCode};
use super::{version_tuple, CURRENT_VERSION, SUPPORTED_VERSIONS};
use crate::agent_proto::{Attachment, DEFAULT_AGENT_SOCKET};

/// Default `agentTimeoutMs`.
pub const DEFAULT_AGENT_TIMEOUT_MS: u64 = 2000;
/// Largest accepted `agentTimeoutMs` (kubelet's CRI calls time out at 4 min).
pub const MAX_AGENT_TIMEOUT_MS: u64 = 120_000;
/// Default `excludeNamespaces`.
pub const DEFAULT_EXCLUDE_NAMESPACES: &[&str] = &["kube-system"];

/// What ADD does when the agent cannot confirm the capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Fail the pod (CNI error 11); the kubelet retries it.
    Closed,
    /// Let the pod start uncaptured; the agent captures it later.
    Open,
}

/// The stdin document as top-level keys → raw JSON text. Anything that is
/// not a JSON object is a decode failure (code 6).
pub type Document<'a> = BTreeMap<String, &'a RawValue>;

/// Parse stdin into its top-level keys (code 6 on malformed JSON).
pub fn parse_document(stdin: &[u8]) -> Result<Document<'_>, CniError> {
    serde_json::from_slice::<Document<'_>>(stdin).map_err(|e| {
        CniError::new(
            ErrorCode::Decode,
            "failed to decode the network configuration on stdin",
            format!(
                "stdin must be one JSON object (the plugin's entry of the conflist, as the runtime derives it): {e}"
            ),
        )
    })
}

/// `cniVersion` if it is present and a string (used for error results too).
pub fn requested_version(doc: &Document<'_>) -> Option<String> {
    doc.get("cniVersion")
        .and_then(|raw| serde_json::from_str::<String>(raw.get()).ok())
}

/// Code 1 unless `v` is one of [`SUPPORTED_VERSIONS`].
pub fn check_version(v: &str) -> Result<(), CniError> {
    if SUPPORTED_VERSIONS.contains(&v) {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::IncompatibleVersion,
        format!("incompatible CNI version: ambit-cni does not support cniVersion {v:?}"),
        format!(
            "supported versions are {}; set \"cniVersion\" of the conflist to one of them (the runtime copies it into every plugin's config)",
            SUPPORTED_VERSIONS.join(", ")
        ),
    ))
}

/// Code 1 unless `v` >= `min` (CHECK needs 0.4.0, STATUS and GC 1.1.0).
pub fn require_version_at_least(v: &str, min: &str, command: &str) -> Result<(), CniError> {
    if version_tuple(v) >= version_tuple(min) {
        return Ok(());
    }
    Err(CniError::new(
        ErrorCode::IncompatibleVersion,
        format!("incompatible CNI version: {command} does not exist in cniVersion {v}"),
        format!("{command} was added in CNI spec {min}; the runtime must not call it for a conflist with cniVersion {v} (raise cniVersion to {min} or later, up to {CURRENT_VERSION})"),
    ))
}

/// The parsed network configuration of one invocation.
#[derive(Debug, Clone)]
pub struct NetConf<'a> {
    pub cni_version: String,
    pub name: String,
    pub plugin_type: String,
    /// The previous plugin's result, exactly as it appeared on stdin.
    /// `"prevResult": null` counts as absent.
    pub prev_result: Option<&'a RawValue>,
    pub agent_socket: PathBuf,
    pub agent_timeout: Duration,
    pub failure_policy: FailurePolicy,
    pub exclude_namespaces: Vec<String>,
    /// `cni.dev/valid-attachments` (GC only); `None` if absent.
    pub valid_attachments: Option<Vec<Attachment>>,
}

fn invalid(key: &str, what: impl Into<String>) -> CniError {
    CniError::new(
        ErrorCode::InvalidConfig,
        format!("invalid network configuration: field {key:?} {}", what.into()),
        "fix the ambit-cni entry in the node's CNI conflist (/etc/cni/net.d/); the ambit node agent writes it, so check the agent's configuration",
    )
}

fn field<T: DeserializeOwned>(
    doc: &Document<'_>,
    key: &str,
    expected: &str,
) -> Result<Option<T>, CniError> {
    match doc.get(key) {
        None => Ok(None),
        Some(raw) if raw.get() == "null" => Ok(None),
        Some(raw) => serde_json::from_str(raw.get())
            .map(Some)
            .map_err(|_| invalid(key, format!("must be {expected}, got {}", raw.get()))),
    }
}

impl<'a> NetConf<'a> {
    /// Validate the spec's required fields and Ambit's fields (code 1 for an
    /// unsupported version, 7 for a bad value, 2 for an unknown
    /// `failurePolicy`). Unknown keys are ignored (runtimes add `args`,
    /// `runtimeConfig`, … and other plugins' keys are not ours to judge).
    pub fn from_document(doc: &Document<'a>) -> Result<NetConf<'a>, CniError> {
        let cni_version: String = field(doc, "cniVersion", "a string such as \"1.1.0\"")?
            .ok_or_else(|| invalid("cniVersion", "is required but missing"))?;
        check_version(&cni_version)?;
        let name: String = field(doc, "name", "a string")?
            .ok_or_else(|| invalid("name", "is required but missing"))?;
        let plugin_type: String = field(doc, "type", "a string")?
            .ok_or_else(|| invalid("type", "is required but missing"))?;

        let prev_result = match doc.get("prevResult") {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) if raw.get().trim_start().starts_with('{') => Some(*raw),
            Some(raw) => {
                return Err(invalid(
                    "prevResult",
                    format!(
                        "must be the previous plugin's result object, got {}",
                        raw.get()
                    ),
                ))
            }
        };

        let agent_socket = match field::<String>(doc, "agentSocket", "a path string")? {
            None => PathBuf::from(DEFAULT_AGENT_SOCKET),
            Some(s) if s.is_empty() => return Err(invalid("agentSocket", "must not be empty")),
            Some(s) => PathBuf::from(s),
        };
        let timeout_ms = field::<u64>(doc, "agentTimeoutMs", "a whole number of milliseconds")?
            .unwrap_or(DEFAULT_AGENT_TIMEOUT_MS);
        if !(1..=MAX_AGENT_TIMEOUT_MS).contains(&timeout_ms) {
            return Err(invalid(
                "agentTimeoutMs",
                format!("must be between 1 and {MAX_AGENT_TIMEOUT_MS}, got {timeout_ms}"),
            ));
        }
        let failure_policy = match field::<String>(doc, "failurePolicy", "the string \"closed\" or \"open\"")?
            .as_deref()
        {
            None | Some("closed") => FailurePolicy::Closed,
            Some("open") => FailurePolicy::Open,
            Some(other) => {
                return Err(CniError::new(
                    ErrorCode::UnsupportedField,
                    format!("unsupported field in network configuration: \"failurePolicy\": {other:?}"),
                    "failurePolicy must be \"closed\" (default: fail the pod when the node agent cannot capture it) or \"open\" (let it start uncaptured)",
                ))
            }
        };
        let exclude_namespaces =
            field::<Vec<String>>(doc, "excludeNamespaces", "a list of namespace names")?
                .unwrap_or_else(|| {
                    DEFAULT_EXCLUDE_NAMESPACES
                        .iter()
                        .map(|s| s.to_string())
                        .collect()
                });

        // libcni sends the list under both names (containernetworking/cni#1101).
        let valid_attachments = match field::<Vec<Attachment>>(
            doc,
            "cni.dev/valid-attachments",
            "a list of {\"containerID\": …, \"ifname\": …} objects",
        )? {
            Some(v) => Some(v),
            None => field::<Vec<Attachment>>(
                doc,
                "cni.dev/attachments",
                "a list of {\"containerID\": …, \"ifname\": …} objects",
            )?,
        };

        Ok(NetConf {
            cni_version,
            name,
            plugin_type,
            prev_result,
            agent_socket,
            agent_timeout: Duration::from_millis(timeout_ms),
            failure_policy,
            exclude_namespaces,
            valid_attachments,
        })
    }
}

#[derive(Deserialize)]
struct PrevResultView {
    #[serde(default)]
    ips: Option<Vec<IpConfigView>>,
}

#[derive(Deserialize)]
struct IpConfigView {
    address: String,
}

/// The pod's addresses: `prevResult.ips[].address` (CIDR in every spec
/// version from 0.3.0 on) with the prefix length stripped.
pub fn prev_result_ips(prev: &RawValue) -> Result<Vec<IpAddr>, CniError> {
    let view: PrevResultView = serde_json::from_str(prev.get()).map_err(|e| {
        invalid(
            "prevResult",
            format!("is not a CNI result the plugin can read ({e}); ambit-cni must be chained after a plugin that returns a standard result"),
        )
    })?;
    view.ips
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let addr = ip
                .address
                .split_once('/')
                .map_or(ip.address.as_str(), |(a, _)| a);
            addr.parse::<IpAddr>().map_err(|_| {
                invalid(
                    &format!("prevResult.ips[{i}].address"),
                    format!("must be an address in CIDR notation, got {:?}", ip.address),
                )
            })
        })
        .collect()
}
