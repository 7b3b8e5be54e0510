//! A small netlink client for the few kernel requests the node agent makes per pod: policy
//! routing ([`route`]) and nftables table / set-element operations ([`nftables`]).
//!
//! Why not `ip` / `nft` processes: each costs a fork + exec + dynamic loading (1–3 ms on a
//! small VM, more under load) and the agent used to run about eight per captured pod. Why not
//! the `rtnetlink` / `netlink-packet-route` crates: they are async (their own tokio runtime
//! per namespace thread) and bring a dozen crates for four message types. The messages here
//! are the ones `ip rule`, `ip route` and `nft` send, byte for byte where it matters.
//!
//! A netlink socket talks to the namespace it was created in, so open one on the thread that
//! entered the pod's namespace (see [`crate::redirect::in_netns`]).

pub mod nftables;
pub mod route;

use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    self, sockopt, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};
use nix::sys::time::TimeVal;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
pub(crate) const NLM_F_REPLACE: u16 = 0x100;
pub(crate) const NLM_F_EXCL: u16 = 0x200;
pub(crate) const NLM_F_CREATE: u16 = 0x400;
const NLMSG_ERROR: u16 = 2;
const NLA_F_NESTED: u16 = 0x8000;
const HEADER_LEN: usize = 16;

/// How long to wait for the kernel's answer: it answers in microseconds, so this only
/// matters if something is badly wrong, and then the agent must not hang.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// A failed netlink request: what was asked and the kernel's errno.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{op}: {} (errno {})", errno.desc(), *errno as i32)]
pub struct NetlinkError {
    pub op: String,
    pub errno: Errno,
}

fn err(op: &str, errno: Errno) -> NetlinkError {
    NetlinkError {
        op: op.to_string(),
        errno,
    }
}

/// One netlink message under construction: header, fixed family header, attributes.
pub(crate) struct Msg {
    buf: Vec<u8>,
}

impl Msg {
    pub(crate) fn new(kind: u16, flags: u16) -> Msg {
        let mut buf = Vec::with_capacity(128);
        buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `finish`
        buf.extend_from_slice(&kind.to_ne_bytes());
        buf.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes()); // sequence, set by `finish`
        buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
        Msg { buf }
    }

    /// The family-specific header (`rtmsg`, `fib_rule_hdr`, `nfgenmsg`).
    pub(crate) fn header(mut self, bytes: &[u8]) -> Msg {
        self.buf.extend_from_slice(bytes);
        self.pad();
        self
    }

    pub(crate) fn attr(mut self, kind: u16, payload: &[u8]) -> Msg {
        let len = 4 + payload.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(payload);
        self.pad();
        self
    }

    /// A u32 in host byte order (rtnetlink).
    pub(crate) fn attr_u32(self, kind: u16, value: u32) -> Msg {
        self.attr(kind, &value.to_ne_bytes())
    }

    /// A NUL-terminated string.
    pub(crate) fn attr_str(self, kind: u16, value: &str) -> Msg {
        let mut bytes = Vec::with_capacity(value.len() + 1);
        bytes.extend_from_slice(value.as_bytes());
        bytes.push(0);
        self.attr(kind, &bytes)
    }

    /// A nested attribute holding whatever `inner` adds.
    pub(crate) fn nested(mut self, kind: u16, inner: impl FnOnce(Msg) -> Msg) -> Msg {
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0, 0]);
        self.buf
            .extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        let mut m = inner(self);
        let len = (m.buf.len() - start) as u16;
        m.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        m
    }

    fn pad(&mut self) {
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
    }

    fn finish(mut self, seq: u32, extra_flags: u16) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        let flags = u16::from_ne_bytes([self.buf[6], self.buf[7]]) | extra_flags;
        self.buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

/// A netlink socket in the calling thread's network namespace.
pub(crate) struct Socket {
    fd: OwnedFd,
    seq: u32,
}

impl Socket {
    pub(crate) fn open(protocol: SockProtocol) -> Result<Socket, NetlinkError> {
        let op = "opening a netlink socket";
        let fd = socket::socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            protocol,
        )
        .map_err(|e| err(op, e))?;
        socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).map_err(|e| err(op, e))?;
        let timeout = TimeVal::new(ANSWER_TIMEOUT.as_secs() as _, 0);
        socket::setsockopt(&fd, sockopt::ReceiveTimeout, &timeout).map_err(|e| err(op, e))?;
        Ok(Socket { fd, seq: 0 })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1);
        self.seq
    }

    /// Sends one request asking for an acknowledgement and waits for it.
    pub(crate) fn request(&mut self, op: &str, msg: Msg) -> Result<(), NetlinkError> {
        let seq = self.next_seq();
        let bytes = msg.finish(seq, NLM_F_ACK);
        self.send_and_wait(op, &bytes, seq)
    }

    /// Sends one nf_tables change wrapped in a batch (nf_tables only changes rules in
    /// transactions) and waits for its acknowledgement.
    pub(crate) fn nft_batch(&mut self, op: &str, msg: Msg) -> Result<(), NetlinkError> {
        let begin = Msg::new(nftables::NFNL_MSG_BATCH_BEGIN, 0)
            .header(&nftables::nfgenmsg_batch())
            .finish(self.next_seq(), 0);
        let seq = self.next_seq();
        let body = msg.finish(seq, NLM_F_ACK);
        let end = Msg::new(nftables::NFNL_MSG_BATCH_END, 0)
            .header(&nftables::nfgenmsg_batch())
            .finish(self.next_seq(), 0);
        let mut bytes = begin;
        bytes.extend_from_slice(&body);
        bytes.extend_from_slice(&end);
        self.send_and_wait(op, &bytes, seq)
    }

    fn send_and_wait(&mut self, op: &str, bytes: &[u8], seq: u32) -> Result<(), NetlinkError> {
        let sent =
            socket::send(self.fd.as_raw_fd(), bytes, MsgFlags::empty()).map_err(|e| err(op, e))?;
        if sent != bytes.len() {
            return Err(err(op, Errno::EMSGSIZE));
        }
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
                Ok(n) => n,
                Err(Errno::EINTR) => continue,
                Err(Errno::EAGAIN) => return Err(err(op, Errno::ETIMEDOUT)),
                Err(e) => return Err(err(op, e)),
            };
            if let Some(answer) = find_ack(&buf[..n], seq) {
                return answer.map_err(|e| err(op, e));
            }
        }
    }
}

/// Looks through one datagram for the acknowledgement (or error) of message `seq`; data
/// answers (e.g. the table a GET returns) come before it and are skipped.
fn find_ack(mut data: &[u8], seq: u32) -> Option<Result<(), Errno>> {
    while data.len() >= HEADER_LEN {
        let len = u32::from_ne_bytes(data[0..4].try_into().ok()?) as usize;
        if len < HEADER_LEN || len > data.len() {
            return Some(Err(Errno::EBADMSG));
        }
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        let msg_seq = u32::from_ne_bytes(data[8..12].try_into().ok()?);
        if kind == NLMSG_ERROR && msg_seq == seq {
            if len < HEADER_LEN + 4 {
                return Some(Err(Errno::EBADMSG));
            }
            let code = i32::from_ne_bytes(data[16..20].try_into().ok()?);
            return Some(if code == 0 {
                Ok(())
            } else {
                Err(Errno::from_raw(-code))
            });
        }
        data = &data[(len + 3) & !3..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_framed_and_padded() {
        let bytes = Msg::new(24, NLM_F_CREATE)
            .header(&[2, 0, 0])
            .attr_str(1, "lo")
            .nested(3, |m| m.attr_u32(1, 7))
            .finish(9, NLM_F_ACK);
        assert!(bytes.len().is_multiple_of(4));
        assert_eq!(
            u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize,
            bytes.len()
        );
        assert_eq!(
            u16::from_ne_bytes([bytes[6], bytes[7]]),
            NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK
        );
        assert_eq!(u32::from_ne_bytes(bytes[8..12].try_into().unwrap()), 9);
        // header (16) + family header padded (4) + "lo\0" attr padded (8) + nest (4 + 8)
        assert_eq!(bytes.len(), 16 + 4 + 8 + 12);
        let nest = &bytes[28..];
        assert_eq!(u16::from_ne_bytes([nest[0], nest[1]]), 12);
        assert_eq!(u16::from_ne_bytes([nest[2], nest[3]]), 3 | NLA_F_NESTED);
    }

    fn ack(seq: u32, code: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&0u16.to_ne_bytes());
        m.extend_from_slice(&seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(&code.to_ne_bytes());
        m.extend_from_slice(&[0u8; 16]); // the echoed request header
        m
    }

    #[test]
    fn finds_the_ack_of_our_sequence_number() {
        let mut data = ack(3, 0);
        data.extend(ack(4, -(Errno::ENOENT as i32)));
        assert_eq!(find_ack(&data, 3), Some(Ok(())));
        assert_eq!(find_ack(&data, 4), Some(Err(Errno::ENOENT)));
        assert_eq!(find_ack(&data, 5), None);
        assert_eq!(find_ack(&data[..20], 9), Some(Err(Errno::EBADMSG)));
    }
}
