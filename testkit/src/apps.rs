//! A tiny line-based app for pods in tests, benchmarks and the sandbox: for each line it
//! receives, it answers `<pod-name> <caller-ip> <line>`, which shows who served a request
//! and which source address the server saw.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::NetNs;

/// A running line app; counts the connections it accepted.
pub struct LineApp {
    accepted: Arc<AtomicUsize>,
}

impl LineApp {
    /// Listens on `0.0.0.0:port` inside `ns`; serves until the process exits.
    pub fn start(ns: &NetNs, name: &str, port: u16) -> std::io::Result<LineApp> {
        let listener = ns.run(|| TcpListener::bind(("0.0.0.0", port)))?;
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let name = name.to_string();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                let name = name.clone();
                std::thread::spawn(move || answer_lines(conn, &name));
            }
        });
        Ok(LineApp { accepted })
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn answer_lines(conn: TcpStream, name: &str) {
    let peer = conn
        .peer_addr()
        .map(|a| a.ip().to_string())
        .unwrap_or_default();
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    for line in BufReader::new(conn).lines().map_while(Result::ok) {
        if writeln!(out, "{name} {peer} {line}").is_err() {
            return;
        }
    }
}

/// What a line app answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub server: String,
    pub peer: String,
    pub echo: String,
}

/// A client connection to a line app, opened from inside a namespace.
pub struct LineConn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl LineConn {
    pub fn open(ns: &NetNs, dst: SocketAddr) -> std::io::Result<LineConn> {
        let s = ns.run(|| TcpStream::connect_timeout(&dst, Duration::from_secs(5)))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(LineConn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends one line and reads the answer.
    pub fn ask(&mut self, line: &str) -> std::io::Result<Answer> {
        writeln!(self.writer, "{line}")?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed without an answer",
            ));
        }
        let mut parts = answer.trim_end().splitn(3, ' ');
        let mut next = || parts.next().unwrap_or_default().to_string();
        Ok(Answer {
            server: next(),
            peer: next(),
            echo: next(),
        })
    }
}

/// One request on a fresh connection.
pub fn ask_once(ns: &NetNs, dst: SocketAddr, line: &str) -> std::io::Result<Answer> {
    LineConn::open(ns, dst)?.ask(line)
}
