//! Shared pieces of ztunnel's end-to-end tests: a mesh of real ztunnel processes in network
//! namespaces, and the line app (see `ambit_testkit::apps`) in the pods.
#![allow(dead_code)]

pub mod cni;

use std::net::IpAddr;
use std::time::Duration;

use ambit_testkit::apps::{ask_once, LineApp, LineConn};
use ambit_testkit::mesh::Mesh;

pub fn mesh(tag: &str, nodes: usize) -> Mesh {
    Mesh::new(tag, nodes, vec![env!("CARGO_BIN_EXE_ztunnel").into()]).expect("building the mesh")
}

pub fn serve(mesh: &Mesh, pod: usize, port: u16) -> LineApp {
    let p = &mesh.pod(pod).pod;
    LineApp::start(&p.ns, &p.name, port).expect("app listener")
}

/// A connection from inside a pod.
pub struct Conn(LineConn);

impl Conn {
    pub fn open(mesh: &Mesh, from: usize, ip: IpAddr, port: u16) -> std::io::Result<Conn> {
        LineConn::open(&mesh.pod(from).pod.ns, (ip, port).into()).map(Conn)
    }

    /// Sends one line; returns (server name, peer ip the server saw, echoed line).
    pub fn ask(&mut self, line: &str) -> std::io::Result<(String, String, String)> {
        self.0.ask(line).map(|a| (a.server, a.peer, a.echo))
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
    ask_once(&mesh.pod(from).pod.ns, (ip, port).into(), line).map(|a| (a.server, a.peer, a.echo))
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
