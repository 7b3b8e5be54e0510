//! Test and benchmark support for Ambit: network-namespace topologies that
//! mirror a Kubernetes node layout and clean up after themselves, even when a
//! test panics or is killed.
//!
//! Everything here needs root (CAP_SYS_ADMIN + CAP_NET_ADMIN) and `iproute2`.
//! Each topology lives entirely in its own namespaces (nothing is created in
//! the root namespace), so tests can run in parallel processes
//! (cargo-nextest) with fixed addresses.
//!
//! ```no_run
//! use ambit_testkit::Topology;
//! let mut topo = Topology::new("demo", 2).unwrap();
//! let a = topo.add_pod(0, "a").unwrap();
//! let b = topo.add_pod(1, "b").unwrap();
//! let listener = b.ns.run(|| std::net::TcpListener::bind("0.0.0.0:8080")).unwrap();
//! a.ns.run(|| std::net::TcpStream::connect((b.ip, 8080))).unwrap();
//! drop(listener);
//! ```
#![forbid(unsafe_code)]

pub mod apps;
mod capture;
mod child;
mod error;
pub mod mesh;
mod netns;
mod ping;
mod topology;

pub use capture::{contains, parse_tcp, tcp_payloads_to_port, Capture, TcpSegment};
pub use child::Child;
pub use error::Error;
pub use netns::{is_root, sweep_stale, unique_prefix, NetNs, NETNS_DIR};
pub use topology::{Node, Pod, Topology};
