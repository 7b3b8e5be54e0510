//! The node agent ↔ ztunnel protocol of the in-pod model.
//!
//! ztunnel listens on a Unix `SOCK_SEQPACKET` socket (default [`DEFAULT_SOCKET`]). The agent
//! connects (one connection at a time: a new one replaces the old) and ztunnel greets it
//! with [`ZtunnelMessage::Hello`]. Every message is one packet of serde JSON, at most
//! [`MAX_MESSAGE`] bytes. [`AgentMessage::AddPod`] carries the pod's network namespace as
//! exactly one file descriptor (SCM_RIGHTS); ztunnel answers every agent message with
//! [`ZtunnelMessage::Ack`] or [`ZtunnelMessage::Error`], in order.
//!
//! After (re)connecting, the agent replays every pod it knows and then sends
//! [`AgentMessage::SnapshotDone`]; ztunnel then drops the pods it serves that were not
//! replayed. A disconnect alone never releases a pod.
//!
//! Both ends are here: [`AgentClient`] (blocking, for the agent and tests) and
//! [`InpodListener`] / [`InpodConn`] (for ztunnel; blocking receive on its own threads,
//! non-blocking send).

use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use nix::cmsg_space;
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};
use serde::{Deserialize, Serialize};
use socket2::{Domain, SockAddr, Socket, Type};

/// Bumped on incompatible changes; the agent refuses a ztunnel that speaks another version.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Where ztunnel listens in a cluster (a hostPath both DaemonSets mount).
pub const DEFAULT_SOCKET: &str = "/var/run/ambit/ztunnel.sock";
/// More descriptors than any message may carry: a larger control buffer means the kernel
/// never truncates (and silently drops) descriptors we would then fail to close.
const MAX_FDS: usize = 64;

/// What the agent knows about a pod it enrolls.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// The pod's IPs; ztunnel serves the pod at the first one.
    pub ips: Vec<IpAddr>,
}

/// Agent → ztunnel.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum AgentMessage {
    /// Start serving a pod. Exactly one fd, the pod's network namespace, is attached via
    /// SCM_RIGHTS. Idempotent for the same uid + namespace + identity.
    /// On the wire: `{"type":"add_pod","uid":..,"name":..,"namespace":..,"service_account":..,"ips":[..]}`.
    AddPod(PodInfo),
    /// Stop serving a pod (closes its listeners). Unknown uids are acknowledged too.
    DelPod { uid: String },
    /// Sent after the agent (re)played every pod it knows: ztunnel drops pods it serves that
    /// were not added on this connection.
    SnapshotDone,
}

/// ztunnel → agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ZtunnelMessage {
    /// First message on every connection.
    Hello { version: u32 },
    /// The request for `uid` (None: `snapshot_done`) is done; for `add_pod` the pod's
    /// listeners are open in its namespace.
    Ack { uid: Option<String> },
    /// The request failed (uid None: it could not even be parsed). The connection stays up.
    Error {
        uid: Option<String>,
        message: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum InpodError {
    #[error("in-pod socket: {0}")]
    Io(#[from] io::Error),
    #[error("in-pod protocol: {0}")]
    Protocol(String),
    #[error("ztunnel speaks in-pod protocol version {got}, this agent speaks {want}")]
    Version { got: u32, want: u32 },
    #[error("ztunnel closed the in-pod connection")]
    Closed,
    #[error("ztunnel refused{}: {message}", uid.as_ref().map(|u| format!(" pod {u}")).unwrap_or_default())]
    Rejected {
        uid: Option<String>,
        message: String,
    },
}

/// Descriptors received with a packet. Closed on drop unless taken.
#[derive(Debug, Default)]
pub struct ReceivedFds(Vec<RawFd>);

impl ReceivedFds {
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes the single descriptor as an owned handle on a namespace file. Reopening it
    /// through `/proc/self/fd` keeps this crate free of `unsafe` (the raw descriptor is
    /// closed when `self` drops); it also refuses anything that is not a namespace.
    pub fn into_namespace_fd(self) -> io::Result<OwnedFd> {
        let [fd] = self.0[..] else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("expected exactly one file descriptor, got {}", self.0.len()),
            ));
        };
        let file = File::open(format!("/proc/self/fd/{fd}")).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("the descriptor is not a network namespace ({e})"),
            )
        })?;
        // Namespace files live on nsfs, the same filesystem as our own namespace handle.
        let ours = std::fs::metadata("/proc/thread-self/ns/net")?;
        let theirs = file.metadata()?;
        use std::os::unix::fs::MetadataExt;
        if theirs.dev() != ours.dev() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the descriptor is not a network namespace",
            ));
        }
        Ok(file.into())
    }
}

impl Drop for ReceivedFds {
    fn drop(&mut self) {
        for fd in self.0.drain(..) {
            let _ = nix::unistd::close(fd);
        }
    }
}

/// One received packet.
#[derive(Debug)]
pub struct Packet {
    pub data: Vec<u8>,
    pub fds: ReceivedFds,
    /// The sender's message exceeded [`MAX_MESSAGE`]; `data` holds only its start.
    pub truncated: bool,
}

/// Sends one packet with `fds` attached. Non-blocking sockets may return `WouldBlock`.
pub fn send_packet(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    if data.len() > MAX_MESSAGE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("message of {} bytes exceeds {MAX_MESSAGE}", data.len()),
        ));
    }
    let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage> = if raw.is_empty() {
        vec![]
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(data)],
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )?;
    Ok(())
}

/// Receives one packet; `None` when the peer closed the connection.
pub fn recv_packet(sock: BorrowedFd<'_>) -> io::Result<Option<Packet>> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut cmsg = cmsg_space!([RawFd; MAX_FDS]);
    let mut iov = [IoSliceMut::new(&mut buf)];
    let msg = recvmsg::<()>(
        sock.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = ReceivedFds::default();
    // `cmsgs` fails only on MSG_CTRUNC, which the buffer size rules out for ScmRights.
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmRights(received) = c {
                fds.0.extend(received);
            }
        }
    }
    let bytes = msg.bytes;
    let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC);
    if bytes == 0 && fds.is_empty() && !truncated {
        return Ok(None);
    }
    buf.truncate(bytes);
    Ok(Some(Packet {
        data: buf,
        fds,
        truncated,
    }))
}

fn seqpacket() -> io::Result<Socket> {
    Socket::new(Domain::UNIX, Type::SEQPACKET.cloexec(), None)
}

/// The agent's end: blocking, one request at a time.
pub struct AgentClient {
    sock: Socket,
    /// The socket file connected to (read just before connecting).
    socket: Option<BoundSocket>,
}

impl AgentClient {
    /// Connects, reads ztunnel's Hello and checks the protocol version. Replies are awaited
    /// for at most 30 s.
    pub fn connect(path: &Path) -> Result<Self, InpodError> {
        let socket = BoundSocket::of(path).ok();
        let sock = seqpacket()?;
        sock.connect(&SockAddr::unix(path)?).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("connecting to ztunnel at {}: {e}", path.display()),
            )
        })?;
        sock.set_read_timeout(Some(Duration::from_secs(30)))?;
        sock.set_write_timeout(Some(Duration::from_secs(30)))?;
        let client = Self { sock, socket };
        match client.recv()? {
            ZtunnelMessage::Hello { version } if version == PROTOCOL_VERSION => Ok(client),
            ZtunnelMessage::Hello { version } => Err(InpodError::Version {
                got: version,
                want: PROTOCOL_VERSION,
            }),
            other => Err(InpodError::Protocol(format!(
                "expected hello, got {other:?}"
            ))),
        }
    }

    /// True when another socket file now sits at the path connected to: a newer ztunnel
    /// started beside this one (an upgrade) and waits for the pods.
    pub fn superseded(&self) -> bool {
        self.socket
            .as_ref()
            .is_some_and(|s| BoundSocket::of(&s.path).is_ok_and(|now| !s.same_file(&now)))
    }

    /// True when ztunnel has gone away (closed or reset the connection). ztunnel never
    /// speaks unasked, so a readable socket with no data means end of stream.
    pub fn is_closed(&self) -> bool {
        if self.sock.set_nonblocking(true).is_err() {
            return true;
        }
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let closed = match self.sock.peek(&mut probe) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        };
        closed || self.sock.set_nonblocking(false).is_err()
    }

    /// How long to wait for a reply.
    pub fn set_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.sock.set_read_timeout(Some(timeout))
    }

    /// Enrolls a pod; returns once ztunnel has the pod's listeners open.
    pub fn add_pod(&self, pod: &PodInfo, netns: BorrowedFd<'_>) -> Result<(), InpodError> {
        self.request(&AgentMessage::AddPod(pod.clone()), &[netns], Some(&pod.uid))
    }

    /// Releases a pod; returns once its listeners are closed.
    pub fn del_pod(&self, uid: &str) -> Result<(), InpodError> {
        self.request(
            &AgentMessage::DelPod {
                uid: uid.to_string(),
            },
            &[],
            Some(uid),
        )
    }

    /// Ends a replay; returns once pods that were not replayed are released.
    pub fn snapshot_done(&self) -> Result<(), InpodError> {
        self.request(&AgentMessage::SnapshotDone, &[], None)
    }

    fn request(
        &self,
        msg: &AgentMessage,
        fds: &[BorrowedFd<'_>],
        uid: Option<&str>,
    ) -> Result<(), InpodError> {
        let data = serde_json::to_vec(msg).map_err(|e| InpodError::Protocol(e.to_string()))?;
        self.send_raw(&data, fds)?;
        loop {
            match self.recv()? {
                ZtunnelMessage::Ack { uid: got } if got.as_deref() == uid => return Ok(()),
                ZtunnelMessage::Error { uid: got, message }
                    if got.is_none() || got.as_deref() == uid =>
                {
                    return Err(InpodError::Rejected { uid: got, message })
                }
                // A late reply to an earlier request that timed out on our side.
                _ => continue,
            }
        }
    }

    /// Sends arbitrary bytes and descriptors as one packet (tests use it for bad input).
    pub fn send_raw(&self, data: &[u8], fds: &[BorrowedFd<'_>]) -> Result<(), InpodError> {
        send_packet(self.sock.as_fd(), data, fds)?;
        Ok(())
    }

    /// Reads the next message from ztunnel.
    pub fn recv(&self) -> Result<ZtunnelMessage, InpodError> {
        let packet = recv_packet(self.sock.as_fd())?.ok_or(InpodError::Closed)?;
        if !packet.fds.is_empty() || packet.truncated {
            return Err(InpodError::Protocol(
                "unexpected descriptors or oversized message from ztunnel".into(),
            ));
        }
        serde_json::from_slice(&packet.data)
            .map_err(|e| InpodError::Protocol(format!("bad message from ztunnel: {e}")))
    }
}

/// ztunnel's listening socket. Blocking: ztunnel drives it from its own threads, so the
/// async runtime (and the data path) never waits on the agent.
pub struct InpodListener {
    sock: Socket,
    bound: BoundSocket,
}

/// The socket file a listener bound: removed at exit only while it is still that file (a
/// newer ztunnel that bound the same path during an upgrade keeps its own).
#[derive(Clone, Debug)]
pub struct BoundSocket {
    path: std::path::PathBuf,
    dev: u64,
    ino: u64,
}

impl BoundSocket {
    fn of(path: &Path) -> io::Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::symlink_metadata(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    /// Whether `path` still names the socket this listener bound.
    pub fn is_current(&self) -> bool {
        Self::of(&self.path).is_ok_and(|now| self.same_file(&now))
    }

    fn same_file(&self, other: &BoundSocket) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }

    /// Removes the socket file if it is still ours. Returns whether it did.
    pub fn remove_if_current(&self) -> io::Result<bool> {
        if !self.is_current() {
            return Ok(false);
        }
        match std::fs::remove_file(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

impl InpodListener {
    /// Binds `path` (creating its directory, replacing a stale socket file) with mode 0600.
    pub fn bind(path: &Path) -> io::Result<Self> {
        let ctx = |what: &str, e: io::Error| {
            io::Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| ctx("creating the directory of", e))?;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.file_type().is_socket() => {
                std::fs::remove_file(path).map_err(|e| ctx("removing stale socket", e))?
            }
            Ok(_) => {
                return Err(ctx(
                    "refusing to replace",
                    io::Error::new(io::ErrorKind::AlreadyExists, "not a socket"),
                ))
            }
            Err(_) => {}
        }
        let sock = seqpacket()?;
        sock.bind(&SockAddr::unix(path)?)
            .map_err(|e| ctx("binding", e))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| ctx("setting permissions on", e))?;
        sock.listen(16)?;
        let bound = BoundSocket::of(path).map_err(|e| ctx("reading back", e))?;
        Ok(Self { sock, bound })
    }

    /// The socket file this listener bound.
    pub fn bound(&self) -> &BoundSocket {
        &self.bound
    }

    /// Waits for the next agent connection.
    pub fn accept(&self) -> io::Result<InpodConn> {
        let (sock, _) = self.sock.accept()?;
        sock.set_cloexec(true)?;
        Ok(InpodConn { sock })
    }
}

/// ztunnel's end of one agent connection. `recv` blocks (one reader thread per connection);
/// `send` never does, so it is safe to call from async code.
pub struct InpodConn {
    sock: Socket,
}

impl InpodConn {
    /// The next packet; `None` once the agent hung up (or [`Self::shutdown`] was called).
    pub fn recv(&self) -> io::Result<Option<Packet>> {
        recv_packet(self.sock.as_fd())
    }

    /// Sends without blocking: an agent that stops reading its replies gets `WouldBlock`.
    pub fn send(&self, msg: &ZtunnelMessage) -> io::Result<()> {
        let data = serde_json::to_vec(msg).map_err(io::Error::other)?;
        sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[IoSlice::new(&data)],
            &[],
            MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
            None,
        )?;
        Ok(())
    }

    /// Ends the connection both ways; a thread blocked in `recv` returns `None`.
    pub fn shutdown(&self) {
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
    }
}

/// Parses an agent message. On failure, also returns the `uid` field if one can be found, so
/// the error reply can name the pod.
pub fn decode_agent(data: &[u8]) -> Result<AgentMessage, (Option<String>, String)> {
    serde_json::from_slice(data).map_err(|e| {
        let uid = serde_json::from_slice::<serde_json::Value>(data)
            .ok()
            .and_then(|v| v.get("uid")?.as_str().map(str::to_string));
        (uid, format!("malformed message: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_removes_its_socket_file_only_while_it_is_still_its_own() {
        let dir = std::env::temp_dir().join(format!("ambit-inpod-bound-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("ztunnel.sock");
        let old = InpodListener::bind(&path).unwrap();
        // A newer ztunnel binds the same path (an upgrade): the old one must leave it be.
        let new = InpodListener::bind(&path).unwrap();
        assert!(!old.bound().is_current());
        assert!(!old.bound().remove_if_current().unwrap());
        assert!(path.exists());
        let probe = seqpacket().unwrap();
        probe.connect(&SockAddr::unix(&path).unwrap()).unwrap();
        drop(new.accept().unwrap());
        assert!(new.bound().remove_if_current().unwrap());
        assert!(!path.exists());
        assert!(!new.bound().remove_if_current().unwrap(), "already gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn wire_format_is_tagged_snake_case() {
        let add = AgentMessage::AddPod(PodInfo {
            uid: "u1".into(),
            name: "a".into(),
            namespace: "default".into(),
            service_account: "sa".into(),
            ips: vec!["10.0.0.1".parse().unwrap()],
        });
        let json = serde_json::to_value(&add).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "add_pod", "uid": "u1", "name": "a", "namespace": "default",
                "service_account": "sa", "ips": ["10.0.0.1"]})
        );
        assert_eq!(
            serde_json::to_string(&AgentMessage::SnapshotDone).unwrap(),
            r#"{"type":"snapshot_done"}"#
        );
        assert_eq!(
            serde_json::to_string(&ZtunnelMessage::Ack { uid: None }).unwrap(),
            r#"{"type":"ack","uid":null}"#
        );
        assert_eq!(
            decode_agent(br#"{"type":"del_pod","uid":"x"}"#).unwrap(),
            AgentMessage::DelPod { uid: "x".into() }
        );
        let (uid, err) = decode_agent(br#"{"type":"nope","uid":"x"}"#).unwrap_err();
        assert_eq!(uid.as_deref(), Some("x"));
        assert!(err.contains("malformed"), "{err}");
        assert_eq!(decode_agent(b"{not json").unwrap_err().0, None);
    }

    #[test]
    fn packets_carry_descriptors_and_non_namespaces_are_refused() {
        let (a, b) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).unwrap();
        let ns = File::open("/proc/thread-self/ns/net").unwrap();
        send_packet(a.as_fd(), b"hi", &[ns.as_fd()]).unwrap();
        let p = recv_packet(b.as_fd()).unwrap().unwrap();
        assert_eq!(p.data, b"hi");
        assert_eq!(p.fds.len(), 1);
        let got = File::from(p.fds.into_namespace_fd().unwrap());
        use std::os::unix::fs::MetadataExt;
        assert_eq!(got.metadata().unwrap().ino(), ns.metadata().unwrap().ino());

        let marker = std::env::temp_dir().join(format!("ambit-inpod-fd-{}", std::process::id()));
        std::fs::write(&marker, b"").unwrap();
        let plain = File::open(&marker).unwrap();
        send_packet(a.as_fd(), b"x", &[plain.as_fd(), plain.as_fd()]).unwrap();
        let p = recv_packet(b.as_fd()).unwrap().unwrap();
        assert_eq!(p.fds.len(), 2);
        assert!(p.fds.into_namespace_fd().is_err());
        drop(plain);
        let open = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|t| *t == marker)
            .count();
        assert_eq!(open, 0, "received descriptors leaked");
        let plain = File::open(&marker).unwrap();
        send_packet(a.as_fd(), b"x", &[plain.as_fd()]).unwrap();
        let p = recv_packet(b.as_fd()).unwrap().unwrap();
        assert!(p.fds.into_namespace_fd().is_err());
        drop(a);
        assert!(recv_packet(b.as_fd()).unwrap().is_none());
        let _ = std::fs::remove_file(&marker);
    }
}
