//! Shared pieces of ztunnel's end-to-end tests: a mesh of real ztunnel processes in network
//! namespaces, and tiny line-based apps in the pods.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ambit_testkit::mesh::Mesh;

pub fn mesh(tag: &str, nodes: usize) -> Mesh {
    Mesh::new(tag, nodes, vec![env!("CARGO_BIN_EXE_ztunnel").into()]).expect("building the mesh")
}

/// A line app: for each line it answers `<name> <peer-ip> <line>`.
pub struct App {
    pub accepted: Arc<AtomicUsize>,
}

impl App {
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

pub fn serve(mesh: &Mesh, pod: usize, port: u16) -> App {
    let name = mesh.pod(pod).pod.name.clone();
    let listener = mesh
        .pod(pod)
        .pod
        .ns
        .run(|| TcpListener::bind(("0.0.0.0", port)))
        .expect("app listener");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let name = name.clone();
            std::thread::spawn(move || {
                let peer = conn
                    .peer_addr()
                    .map(|a| a.ip().to_string())
                    .unwrap_or_default();
                let mut out = conn.try_clone().unwrap();
                for line in BufReader::new(conn).lines() {
                    let Ok(line) = line else { return };
                    if writeln!(out, "{name} {peer} {line}").is_err() {
                        return;
                    }
                }
            });
        }
    });
    App { accepted }
}

/// A connection from inside a pod.
pub struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    pub fn open(mesh: &Mesh, from: usize, ip: IpAddr, port: u16) -> std::io::Result<Conn> {
        let s = mesh
            .pod(from)
            .pod
            .ns
            .run(|| TcpStream::connect_timeout(&(ip, port).into(), Duration::from_secs(5)))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Conn {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        })
    }

    /// Sends one line; returns (server name, peer ip the server saw, echoed line).
    pub fn ask(&mut self, line: &str) -> std::io::Result<(String, String, String)> {
        writeln!(self.writer, "{line}")?;
        let mut answer = String::new();
        if self.reader.read_line(&mut answer)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed without an answer",
            ));
        }
        let mut parts = answer.trim_end().splitn(3, ' ');
        let name = parts.next().unwrap_or_default().to_string();
        let peer = parts.next().unwrap_or_default().to_string();
        let echo = parts.next().unwrap_or_default().to_string();
        Ok((name, peer, echo))
    }
}

/// One request on a new connection.
pub fn call(
    mesh: &Mesh,
    from: usize,
    ip: IpAddr,
    port: u16,
    line: &str,
) -> std::io::Result<(String, String, String)> {
    Conn::open(mesh, from, ip, port)?.ask(line)
}

/// Retries `f` until it returns true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
