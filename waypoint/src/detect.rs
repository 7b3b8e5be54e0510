//! Protocol sniffing on a fresh tunnel: HTTP/2 (its connection preface), HTTP/1.x (a request
//! line), or anything else, which is proxied as opaque TCP.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Longest first line we wait for before calling the stream opaque.
const MAX_LINE: usize = 8 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2 => "http/2",
            Protocol::Tcp => "tcp",
        }
    }
}

/// What the bytes seen so far say, or `None` when more are needed.
pub fn classify(buf: &[u8]) -> Option<Protocol> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return (n == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    match buf.iter().position(|b| *b == b'\n') {
        Some(end) => {
            let line = &buf[..end];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            Some(if is_request_line(line) {
                Protocol::Http1
            } else {
                Protocol::Tcp
            })
        }
        // Only printable ASCII can still become a request line.
        None if buf.len() < MAX_LINE && buf.iter().all(|b| (0x20..0x7f).contains(b)) => None,
        None => Some(Protocol::Tcp),
    }
}

/// `METHOD SP target SP HTTP/1.x`, with a token method and a target without spaces.
fn is_request_line(line: &[u8]) -> bool {
    let Ok(line) = std::str::from_utf8(line) else {
        return false;
    };
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        && !target.is_empty()
        && (version == "HTTP/1.1" || version == "HTTP/1.0")
}

/// Reads until the protocol is known. Server-first protocols send nothing: after `wait`
/// without a decision the stream is opaque TCP. Returns the bytes consumed.
pub async fn sniff<S: AsyncRead + Unpin>(
    io: &mut S,
    wait: Duration,
) -> std::io::Result<(Protocol, Bytes)> {
    let mut buf = BytesMut::with_capacity(1024);
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let read = tokio::time::timeout_at(deadline, io.read_buf(&mut buf)).await;
        match read {
            Err(_) | Ok(Ok(0)) => return Ok((Protocol::Tcp, buf.freeze())),
            Ok(Err(e)) => return Err(e),
            Ok(Ok(_)) => {
                if let Some(p) = classify(&buf) {
                    return Ok((p, buf.freeze()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
        assert_eq!(classify(&H2_PREFACE[..10]), None);
        assert_eq!(
            classify(b"GET /x HTTP/1.1\r\nHost: a\r\n"),
            Some(Protocol::Http1)
        );
        assert_eq!(classify(b"M-SEARCH * HTTP/1.0\n"), Some(Protocol::Http1));
        assert_eq!(classify(b"GET /x HTT"), None);
        assert_eq!(classify(b"hello world\n"), Some(Protocol::Tcp));
        assert_eq!(classify(b"GET /a b HTTP/1.1\r\n"), Some(Protocol::Tcp));
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Protocol::Tcp));
        assert_eq!(classify(b"PRX"), None);
        assert_eq!(classify(b"PRI * HTTP/1.1\r\n"), Some(Protocol::Http1));
    }

    #[tokio::test]
    async fn sniff_times_out_to_tcp() {
        let (mut a, _b) = tokio::io::duplex(64);
        let (p, seen) = sniff(&mut a, Duration::from_millis(50)).await.unwrap();
        assert_eq!((p, seen.len()), (Protocol::Tcp, 0));
        let (mut a, mut b) = tokio::io::duplex(64);
        tokio::io::AsyncWriteExt::write_all(&mut b, b"GET / HTTP/1.1\r\n")
            .await
            .unwrap();
        let (p, seen) = sniff(&mut a, Duration::from_secs(5)).await.unwrap();
        assert_eq!(
            (p, &seen[..]),
            (Protocol::Http1, &b"GET / HTTP/1.1\r\n"[..])
        );
    }
}
