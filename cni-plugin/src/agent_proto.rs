//! The protocol between the `ambit-cni` plugin and the node agent.
//!
//! One Unix stream connection carries exactly one exchange: the plugin
//! writes one [`PluginRequest`] as a single line of JSON ending in `\n`,
//! the agent answers with one [`AgentResponse`] line, and the connection is
//! closed. Both sides use the helpers here: the plugin (and tests) use
//! [`call`], the agent (and the tests' fake agent) use [`serve_one`].
//!
//! Wire examples:
//!
//! ```text
//! > {"type":"add","network":"k8s-pod-network","container_id":"c1","netns":"/var/run/netns/cni-1","ifname":"eth0","pod_namespace":"demo","pod_name":"web-0","pod_uid":"…","ips":["10.1.0.5"]}
//! < {"result":"captured"}
//! > {"type":"status"}
//! < {"result":"ok"}
//! > {"type":"gc","network":"k8s-pod-network","valid_attachments":[{"containerID":"c1","ifname":"eth0"}]}
//! < {"result":"error","message":"…","retryable":true}
//! ```

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Where the agent listens unless the network config says otherwise.
pub const DEFAULT_AGENT_SOCKET: &str = "/var/run/ambit/cni-agent.sock";

/// Longest request line [`serve_one`] accepts (a GC list of ~30k pods).
pub const MAX_REQUEST_BYTES: u64 = 4 << 20;

/// Longest response line [`call`] accepts.
pub const MAX_RESPONSE_BYTES: usize = 64 << 10;

/// What the plugin asks the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PluginRequest {
    /// CNI ADD: capture this pod (if enrolled) before answering.
    Add {
        /// The network config's `name`: GC releases only attachments of its own network.
        #[serde(default)]
        network: String,
        container_id: String,
        netns: String,
        ifname: String,
        pod_namespace: String,
        pod_name: String,
        pod_uid: Option<String>,
        /// `prevResult.ips[].address` with the prefix length stripped.
        ips: Vec<IpAddr>,
    },
    /// CNI CHECK: is this pod still as ADD left it?
    Check {
        container_id: String,
        netns: String,
        pod_namespace: String,
        pod_name: String,
    },
    /// CNI DEL: forget this container (best effort; unknown ids are fine).
    Del {
        container_id: String,
        netns: Option<String>,
        pod_namespace: Option<String>,
        pod_name: Option<String>,
    },
    /// CNI STATUS: can the agent service ADDs right now?
    Status,
    /// CNI GC: every attachment of `network` not in this list is stale.
    Gc {
        #[serde(default)]
        network: String,
        valid_attachments: Vec<Attachment>,
    },
}

/// One attachment, spelled as in the CNI `cni.dev/valid-attachments` list.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The agent's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum AgentResponse {
    /// ADD: the redirection is in place and ztunnel has its listeners.
    Captured,
    /// ADD: the pod is deliberately not captured (not enrolled, opted out,
    /// host network, …).
    Skipped { reason: String },
    /// CHECK / DEL / STATUS / GC succeeded.
    Ok,
    /// The request failed. `retryable` says whether trying again may help.
    Error { message: String, retryable: bool },
}

/// Why [`call`] got no answer.
#[derive(Debug, thiserror::Error)]
pub enum AgentCallError {
    /// Nothing listens on the socket (agent not running, socket missing).
    #[error("cannot connect to the node agent at {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The agent did not answer within the deadline.
    #[error("the node agent at {} did not answer within {} ms", socket.display(), timeout.as_millis())]
    Timeout { socket: PathBuf, timeout: Duration },
    /// Reading or writing the connection failed.
    #[error("talking to the node agent at {} failed: {source}", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The agent closed the connection without a full answer line.
    #[error("the node agent at {} closed the connection without answering", socket.display())]
    Closed { socket: PathBuf },
    /// The answer was not a valid [`AgentResponse`].
    #[error("the node agent at {} sent an invalid answer ({source}): {line:?}", socket.display())]
    Decode {
        socket: PathBuf,
        line: String,
        #[source]
        source: serde_json::Error,
    },
    /// The request could not be encoded (not expected to happen).
    #[error("cannot encode the request: {0}")]
    Encode(#[source] serde_json::Error),
}

impl AgentCallError {
    /// True when the agent is simply not there (as opposed to misbehaving).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, AgentCallError::Connect { .. })
    }
}

/// Send `req` to the agent listening on `socket` and wait for its answer,
/// all within `timeout` (connect, write and read together).
pub fn call(
    socket: &Path,
    req: &PluginRequest,
    timeout: Duration,
) -> Result<AgentResponse, AgentCallError> {
    let deadline = Instant::now() + timeout;
    let timed_out = || AgentCallError::Timeout {
        socket: socket.to_path_buf(),
        timeout,
    };
    let io_err = |source: io::Error| {
        if matches!(
            source.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            timed_out()
        } else {
            AgentCallError::Io {
                socket: socket.to_path_buf(),
                source,
            }
        }
    };

    let mut line = serde_json::to_vec(req).map_err(AgentCallError::Encode)?;
    line.push(b'\n');

    let mut stream = connect_with_deadline(socket, deadline).map_err(|e| match e {
        Some(source) => AgentCallError::Connect {
            socket: socket.to_path_buf(),
            source,
        },
        None => timed_out(),
    })?;

    let remaining = |deadline: Instant| {
        let left = deadline.saturating_duration_since(Instant::now());
        (!left.is_zero()).then_some(left)
    };

    stream
        .set_write_timeout(Some(remaining(deadline).ok_or_else(timed_out)?))
        .map_err(io_err)?;
    stream.write_all(&line).map_err(io_err)?;

    let mut buf = Vec::with_capacity(128);
    let mut chunk = [0u8; 4096];
    loop {
        stream
            .set_read_timeout(Some(remaining(deadline).ok_or_else(timed_out)?))
            .map_err(io_err)?;
        let n = match stream.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err(e)),
        };
        if n == 0 {
            return Err(AgentCallError::Closed {
                socket: socket.to_path_buf(),
            });
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.iter().position(|&b| b == b'\n') {
            buf.truncate(end);
            break;
        }
        if buf.len() > MAX_RESPONSE_BYTES {
            return Err(AgentCallError::Io {
                socket: socket.to_path_buf(),
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("answer longer than {MAX_RESPONSE_BYTES} bytes"),
                ),
            });
        }
    }
    serde_json::from_slice(&buf).map_err(|source| AgentCallError::Decode {
        socket: socket.to_path_buf(),
        line: String::from_utf8_lossy(&buf).into_owned(),
        source,
    })
}

/// `UnixStream::connect` has no timeout and blocks when the agent's accept
/// backlog is full (agent hung); run it on a helper thread so the deadline
/// holds. `Err(None)` means the deadline passed.
fn connect_with_deadline(
    socket: &Path,
    deadline: Instant,
) -> Result<UnixStream, Option<io::Error>> {
    let (tx, rx) = mpsc::channel();
    let path = socket.to_path_buf();
    std::thread::Builder::new()
        .name("ambit-agent-connect".into())
        .spawn(move || {
            let _ = tx.send(UnixStream::connect(path));
        })
        .map_err(Some)?;
    let left = deadline.saturating_duration_since(Instant::now());
    match rx.recv_timeout(left) {
        Ok(result) => result.map_err(Some),
        Err(_) => Err(None),
    }
}

/// Why [`serve_one`] could not complete an exchange.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("reading the plugin's request failed: {0}")]
    Read(#[source] io::Error),
    #[error("the plugin closed the connection without a request")]
    Empty,
    #[error("the plugin's request is invalid ({source}): {line:?}")]
    Decode {
        line: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("writing the answer to the plugin failed: {0}")]
    Write(#[source] io::Error),
}

/// Agent side of one exchange: read one request line from `stream`, answer
/// it with `handler`'s response, write that as one line. A request that
/// does not decode is answered with a non-retryable
/// [`AgentResponse::Error`] and reported as [`ServeError::Decode`].
///
/// Timeouts are the caller's business (set them on the stream first).
pub fn serve_one<S, F>(mut stream: S, handler: F) -> Result<(), ServeError>
where
    S: Read + Write,
    F: FnOnce(PluginRequest) -> AgentResponse,
{
    let mut line = Vec::with_capacity(256);
    BufReader::new((&mut stream).take(MAX_REQUEST_BYTES))
        .read_until(b'\n', &mut line)
        .map_err(ServeError::Read)?;
    if line.last() == Some(&b'\n') {
        line.pop();
    }
    if line.iter().all(u8::is_ascii_whitespace) {
        return Err(ServeError::Empty);
    }
    let (response, result) = match decode_request(&line) {
        Ok(req) => (handler(req), Ok(())),
        Err(source) => (
            AgentResponse::Error {
                message: format!("invalid request: {source}"),
                retryable: false,
            },
            Err(ServeError::Decode {
                line: String::from_utf8_lossy(&line).into_owned(),
                source,
            }),
        ),
    };
    stream
        .write_all(encode_response(&response).as_bytes())
        .and_then(|()| stream.flush())
        .map_err(ServeError::Write)?;
    result
}

/// Decode one request line (without or with its trailing newline), for
/// agents that do their own I/O (e.g. async).
pub fn decode_request(line: &[u8]) -> Result<PluginRequest, serde_json::Error> {
    serde_json::from_slice(line)
}

/// Encode a response as one line, trailing newline included.
pub fn encode_response(response: &AgentResponse) -> String {
    // Serializing these plain enums cannot fail.
    let mut s = serde_json::to_string(response).unwrap_or_else(|_| {
        r#"{"result":"error","message":"cannot encode response","retryable":true}"#.to_owned()
    });
    s.push('\n');
    s
}
