//! A small blocking HTTP/1.0 GET for the proxies' admin and metrics ports. Blocking so it can
//! run on a thread that entered a pod or node network namespace.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::error::CliError;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub enum GetError {
    /// Nothing answered (refused, timeout, no route, netns missing).
    Unreachable(String),
    /// It answered, but not with 200 or not with HTTP.
    Bad(String),
}

impl GetError {
    pub fn into_cli(self, target: &str, path: &str) -> CliError {
        match self {
            GetError::Unreachable(e) => CliError::Unreachable(format!(
                "cannot reach {target} for {path}: {e}; is the proxy running, and is the address right?"
            )),
            GetError::Bad(e) => CliError::Failed(format!("{target} {path}: {e}")),
        }
    }
}

pub fn get(addr: &str, path: &str) -> Result<String, GetError> {
    let unreachable = |e: std::io::Error| GetError::Unreachable(format!("{addr}: {e}"));
    let sock: SocketAddr = addr
        .to_socket_addrs()
        .map_err(unreachable)?
        .next()
        .ok_or_else(|| GetError::Unreachable(format!("{addr} resolves to no address")))?;
    let mut s = TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT).map_err(unreachable)?;
    s.set_read_timeout(Some(READ_TIMEOUT))
        .map_err(unreachable)?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: */*\r\nConnection: close\r\n\r\n"
    )
    .map_err(unreachable)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(unreachable)?;
    parse_response(&raw)
}

/// Status line, headers, body (Content-Length, chunked, or until close).
fn parse_response(raw: &[u8]) -> Result<String, GetError> {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| GetError::Bad("response has no header terminator".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| GetError::Bad("not an HTTP response".into()))?;
    let chunked = lines.any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    let body = String::from_utf8_lossy(&body).into_owned();
    if status != 200 {
        return Err(GetError::Bad(format!("HTTP {status}: {}", body.trim())));
    }
    Ok(body)
}

fn dechunk(mut b: &[u8]) -> Result<Vec<u8>, GetError> {
    let bad = || GetError::Bad("malformed chunked body".into());
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_txt = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_txt.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        b = &b[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if b.len() < size + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&b[..size]);
        b = &b[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_chunked_bodies_and_rejects_errors() {
        let plain = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(plain).unwrap(), "hello");
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2\r\nlo\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap(), "hello");
        let err = parse_response(b"HTTP/1.1 404 Not Found\r\n\r\nno such page").unwrap_err();
        assert!(
            matches!(err, GetError::Bad(ref m) if m.contains("404") && m.contains("no such page"))
        );
    }

    #[test]
    fn a_closed_port_is_unreachable() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        assert!(matches!(get(&addr, "/"), Err(GetError::Unreachable(_))));
    }
}
