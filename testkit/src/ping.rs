//! ICMP echo without the `ping` binary (not installed on minimal images).

use std::io::{self, Read};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::Error;
use crate::netns::NetNs;

static SEQ: AtomicU16 = AtomicU16::new(1);

impl NetNs {
    /// Sends one ICMP echo request to `dst` from inside this namespace and
    /// returns the round-trip time, or an error after `timeout`.
    pub fn ping(&self, dst: Ipv4Addr, timeout: Duration) -> Result<Duration, Error> {
        self.try_run(|| ping_here(dst, timeout))?
            .map_err(|source| Error::Io {
                what: format!("ping {dst}"),
                ns: self.name().to_string(),
                source,
            })
    }
}

fn ping_here(dst: Ipv4Addr, timeout: Duration) -> io::Result<Duration> {
    // A raw socket needs no ping_group_range setup (new namespaces disable
    // unprivileged ICMP sockets); tests run as root anyway.
    let sock = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))?;
    // Raw ICMP sockets see every ICMP packet of the namespace: match on id+seq.
    let id = (std::process::id() & 0xffff) as u16;
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut pkt = vec![8, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(b"ambit-testkit-ping");
    let sum = checksum(&pkt);
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    let start = Instant::now();
    sock.send_to(&pkt, &SocketAddrV4::new(dst, 0).into())?;
    let mut buf = [0u8; 2048];
    loop {
        let left = timeout.saturating_sub(start.elapsed());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no echo reply from {dst} within {timeout:?}"),
            ));
        }
        sock.set_read_timeout(Some(left))?;
        let n = match (&sock).read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        // IPv4 raw sockets deliver the IP header too.
        let pkt = &buf[..n];
        let ihl = usize::from(pkt.first().copied().unwrap_or(0) & 0x0f) * 4;
        let Some(icmp) = pkt.get(ihl..) else { continue };
        let src = pkt
            .get(12..16)
            .map(|s| Ipv4Addr::new(s[0], s[1], s[2], s[3]));
        if icmp.len() >= 8
            && icmp[0] == 0
            && icmp[4..6] == id.to_be_bytes()
            && icmp[6..8] == seq.to_be_bytes()
            && src == Some(dst)
        {
            return Ok(start.elapsed());
        }
    }
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
