//! The control-plane wire messages (JSON over HTTP/2) and their framing.
//!
//! CA: one request/response per `POST /ca/v1/sign`. Config: one long-lived
//! `POST /config/v1/stream` per proxy carrying newline-delimited JSON messages both ways
//! (serde_json never emits a raw newline inside compact JSON, so a newline ends a message).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::resources::Resource;

/// `POST` body of `/ca/v1/sign`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SignRequest {
    /// The SPIFFE ID the certificate is for; the CSR's only SAN must be this URI.
    pub identity: String,
    pub csr_pem: String,
}

/// Answer of `/ca/v1/sign`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignResponse {
    /// Leaf first.
    pub cert_chain_pem: Vec<String>,
    /// Trust anchors (several during a root rotation).
    pub roots_pem: Vec<String>,
}

/// Body of every non-200 control-plane answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorBody {
    /// What was wrong, for humans.
    pub error: String,
    /// A short machine-readable reason (`bad_request`, `unauthenticated`, `forbidden`, ...).
    pub reason: String,
}

/// Whose config a stream carries: a node's ztunnel or one waypoint.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    /// `node/<name>`
    Node(String),
    /// `waypoint/<namespace>/<name>` (name = the waypoint's service account)
    Waypoint { namespace: String, name: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("config target {0:?} is neither node/<name> nor waypoint/<namespace>/<name>")]
pub struct BadTarget(pub String);

impl FromStr for Target {
    type Err = BadTarget;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ok = |p: &str| !p.is_empty() && !p.contains('/');
        match s.split('/').collect::<Vec<_>>().as_slice() {
            ["node", name] if ok(name) => Ok(Target::Node(name.to_string())),
            ["waypoint", ns, name] if ok(ns) && ok(name) => Ok(Target::Waypoint {
                namespace: ns.to_string(),
                name: name.to_string(),
            }),
            _ => Err(BadTarget(s.to_string())),
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Node(n) => write!(f, "node/{n}"),
            Target::Waypoint { namespace, name } => write!(f, "waypoint/{namespace}/{name}"),
        }
    }
}

impl Serialize for Target {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Target {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// First message of a stream: what the proxy wants and what it already holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subscribe {
    pub target: Target,
    /// Resource key -> version hash of everything the proxy holds (empty on first start).
    #[serde(default)]
    pub known: BTreeMap<String, String>,
    /// The last version the proxy applied, if any (informational: `known` drives the diff).
    #[serde(default)]
    pub last_version: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ClientMessage {
    Subscribe(Subscribe),
    /// The update with this version was applied.
    Ack {
        version: u64,
    },
    /// The update with this version was rejected; the proxy keeps its previous config.
    Nack {
        version: u64,
        error: String,
    },
    Heartbeat,
}

/// A change relative to what the proxy holds (what it reported in `known`, then what it
/// acknowledged since).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Update {
    pub version: u64,
    #[serde(default)]
    pub upserts: Vec<Resource>,
    #[serde(default)]
    pub removes: Vec<String>,
    /// The upserts are the whole state: drop anything else held.
    #[serde(default)]
    pub full: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum ServerMessage {
    Update(Update),
    Heartbeat,
}

/// Largest single message either side accepts (a full config of a large cluster fits).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// One message as a newline-terminated JSON line.
pub fn encode<T: Serialize>(msg: &T) -> Bytes {
    let mut v = serde_json::to_vec(msg).expect("control messages always serialize");
    v.push(b'\n');
    Bytes::from(v)
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("control message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    #[error("control message is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
}

/// Splits a byte stream into newline-delimited JSON messages.
#[derive(Default)]
pub struct LineDecoder {
    buf: BytesMut,
    /// Bytes of `buf` already searched for a newline: a multi-megabyte message arrives in
    /// many chunks, and rescanning from the start each time made decoding quadratic.
    scanned: usize,
}

impl LineDecoder {
    pub fn push(&mut self, chunk: &[u8]) {
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete message, if one is buffered.
    pub fn next_message<T: for<'de> Deserialize<'de>>(&mut self) -> Result<Option<T>, FrameError> {
        loop {
            let Some(end) = self.buf[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| self.scanned + i)
            else {
                if self.buf.len() > MAX_MESSAGE {
                    return Err(FrameError::TooLarge);
                }
                self.scanned = self.buf.len();
                return Ok(None);
            };
            self.scanned = 0;
            let line = self.buf.split_to(end + 1);
            let line = &line[..end];
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Some(serde_json::from_slice(line)?));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_print() {
        for s in ["node/node-1", "waypoint/prod/wp"] {
            assert_eq!(s.parse::<Target>().unwrap().to_string(), s);
        }
        for bad in ["node/", "node/a/b", "waypoint/x", "pod/a", "waypoint//x"] {
            assert!(bad.parse::<Target>().is_err(), "{bad}");
        }
    }

    #[test]
    fn messages_split_at_any_chunk_size_decode_in_order() {
        let msgs = vec![
            ClientMessage::Heartbeat,
            ClientMessage::Ack { version: 3 },
            ClientMessage::Nack {
                version: 4,
                error: "x".repeat(100),
            },
        ];
        let wire: Vec<u8> = msgs.iter().flat_map(|m| encode(m).to_vec()).collect();
        for chunk in [1, 2, 7, 64, wire.len()] {
            let mut dec = LineDecoder::default();
            let mut got = vec![];
            for piece in wire.chunks(chunk) {
                dec.push(piece);
                while let Some(m) = dec.next_message::<ClientMessage>().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(got, msgs, "chunk size {chunk}");
        }
    }

    #[test]
    fn messages_are_tagged_json_lines() {
        let msg = ClientMessage::Nack {
            version: 7,
            error: "multi\nline".into(),
        };
        let bytes = encode(&msg);
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 1);
        assert!(std::str::from_utf8(&bytes)
            .unwrap()
            .starts_with(r#"{"type":"nack","version":7"#));
        let mut dec = LineDecoder::default();
        // Split mid-message: nothing until the newline arrives.
        dec.push(&bytes[..5]);
        assert!(dec.next_message::<ClientMessage>().unwrap().is_none());
        dec.push(&bytes[5..]);
        dec.push(&encode(&ClientMessage::Heartbeat));
        assert_eq!(dec.next_message::<ClientMessage>().unwrap(), Some(msg));
        assert_eq!(
            dec.next_message::<ClientMessage>().unwrap(),
            Some(ClientMessage::Heartbeat)
        );
        assert!(dec.next_message::<ClientMessage>().unwrap().is_none());
        dec.push(b"{not json}\n");
        assert!(dec.next_message::<ClientMessage>().is_err());
    }
}
