use std::io::{ErrorKind, Read};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::Error;
use crate::netns::NetNs;

/// linux/if_ether.h: every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// Big enough for a TSO/GSO super-frame (64 KiB) so nothing is truncated.
const FRAME_BUF: usize = 256 * 1024;

/// Captures every frame on every interface of a namespace (an AF_PACKET
/// socket bound to no interface), in both directions, until stopped.
///
/// On a bridge a frame is usually seen more than once (arriving on one port,
/// leaving by another).
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<Vec<Vec<u8>>>>,
}

impl Capture {
    /// Starts capturing in `ns`. Frames sent after this returns are seen.
    pub fn start(ns: &NetNs) -> Result<Capture, Error> {
        let io_err = |what: &str, source| Error::Io {
            what: what.into(),
            ns: ns.name().into(),
            source,
        };
        // A socket belongs to the namespace it was created in, whichever
        // thread reads it later.
        let socket = ns
            .try_run(|| {
                let proto = Protocol::from(i32::from(ETH_P_ALL.to_be()));
                Socket::new(Domain::PACKET, Type::RAW, Some(proto))
            })?
            .map_err(|e| io_err("opening an AF_PACKET socket (needs CAP_NET_RAW)", e))?;
        // Best effort: a larger buffer drops fewer frames under load.
        let _ = socket.set_recv_buffer_size(8 << 20);
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .map_err(|e| io_err("setting a read timeout on the capture socket", e))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let reader = std::thread::Builder::new()
            .name(format!("capture-{}", ns.name()))
            .spawn(move || read_frames(socket, &flag))
            .map_err(|e| io_err("spawning the capture thread", e))?;
        Ok(Capture {
            stop,
            reader: Some(reader),
        })
    }

    /// Stops capturing and returns every frame seen, oldest first.
    pub fn stop(mut self) -> Vec<Vec<u8>> {
        self.finish()
    }

    fn finish(&mut self) -> Vec<Vec<u8>> {
        self.stop.store(true, Ordering::SeqCst);
        match self.reader.take() {
            Some(handle) => handle.join().unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.finish();
    }
}

fn read_frames(socket: Socket, stop: &AtomicBool) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let mut buf = vec![0u8; FRAME_BUF];
    let mut draining = false;
    loop {
        if !draining && stop.load(Ordering::SeqCst) {
            // Keep what is already queued, then leave on the first empty read.
            draining = true;
            if socket.set_nonblocking(true).is_err() {
                break;
            }
        }
        match (&socket).read(&mut buf) {
            Ok(n) => frames.push(buf[..n].to_vec()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if draining {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    frames
}

/// True if any frame contains `needle` anywhere (headers included).
pub fn contains(frames: &[Vec<u8>], needle: &[u8]) -> bool {
    if needle.is_empty() {
        return true;
    }
    frames
        .iter()
        .any(|f| f.windows(needle.len()).any(|w| w == needle))
}

/// One TCP segment parsed out of an Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpSegment<'a> {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub flags: u8,
    pub payload: &'a [u8],
}

/// Parses Ethernet (optionally 802.1Q-tagged) / IPv4 or IPv6 / TCP. Returns
/// None for anything else, for fragments, and for truncated frames.
pub fn parse_tcp(frame: &[u8]) -> Option<TcpSegment<'_>> {
    let mut ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let mut off = 14;
    while ethertype == 0x8100 || ethertype == 0x88a8 {
        ethertype = u16::from_be_bytes([*frame.get(off + 2)?, *frame.get(off + 3)?]);
        off += 4;
    }
    let ip = frame.get(off..)?;
    let (src, dst, l4) = match ethertype {
        0x0800 => {
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]);
            if ip.first()? >> 4 != 4 || ihl < 20 || *ip.get(9)? != 6 || frag & 0x3fff != 0 {
                return None;
            }
            // total == 0 marks a GSO super-frame larger than 64 KiB.
            let end = if total == 0 {
                ip.len()
            } else {
                total.min(ip.len())
            };
            let src: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), ip.get(ihl..end)?)
        }
        0x86dd => {
            // Only a TCP next header directly after the fixed header.
            if ip.first()? >> 4 != 6 || *ip.get(6)? != 6 {
                return None;
            }
            let len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            let end = if len == 0 {
                ip.len()
            } else {
                (40 + len).min(ip.len())
            };
            let src: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (IpAddr::from(src), IpAddr::from(dst), ip.get(40..end)?)
        }
        _ => return None,
    };
    let data_off = usize::from(l4.get(12)? >> 4) * 4;
    if data_off < 20 {
        return None;
    }
    Some(TcpSegment {
        src,
        dst,
        src_port: u16::from_be_bytes([*l4.first()?, *l4.get(1)?]),
        dst_port: u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]),
        flags: *l4.get(13)?,
        payload: l4.get(data_off..)?,
    })
}

/// Payloads of the non-empty TCP segments sent to `port`, in capture order
/// (duplicates included when a frame was seen on several interfaces).
pub fn tcp_payloads_to_port(frames: &[Vec<u8>], port: u16) -> Vec<Vec<u8>> {
    frames
        .iter()
        .filter_map(|f| parse_tcp(f))
        .filter(|s| s.dst_port == port && !s.payload.is_empty())
        .map(|s| s.payload.to_vec())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(payload: &[u8], dport: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&[0x08, 0x00]);
        let total = (20 + 20 + payload.len()) as u16;
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        ip[2..4].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&ip);
        let mut tcp = vec![0u8; 20];
        tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp[2..4].copy_from_slice(&dport.to_be_bytes());
        tcp[12] = 5 << 4;
        tcp[13] = 0x18;
        f.extend_from_slice(&tcp);
        f.extend_from_slice(payload);
        // Ethernet padding must not leak into the payload.
        f.extend_from_slice(&[0xee; 6]);
        f
    }

    #[test]
    fn extracts_payload_to_port() {
        let frames = vec![
            frame(&[0x16, 3, 3, 0, 1], 15008),
            frame(b"x", 80),
            vec![1, 2],
        ];
        assert_eq!(
            tcp_payloads_to_port(&frames, 15008),
            vec![vec![0x16, 3, 3, 0, 1]]
        );
        assert!(contains(&frames, &[0x16, 3, 3]));
        assert!(!contains(&frames, b"nope"));
        let seg = parse_tcp(&frames[1]).unwrap();
        assert_eq!(seg.dst, IpAddr::from([10, 0, 0, 2]));
        assert_eq!((seg.src_port, seg.dst_port, seg.flags), (40000, 80, 0x18));
    }
}
