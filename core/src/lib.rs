//! Ambit's shared crate: what two components must agree on byte for byte.
//!
//! SPIFFE identities, the mesh CA and workload certificates, the mTLS rules of HBONE,
//! the HBONE client (pooled HTTP/2 CONNECT) and server, and the socket/namespace helpers
//! that put ztunnel's sockets inside pod network namespaces.
#![forbid(unsafe_code)]

pub mod ca;
pub mod certs;
pub mod config_source;
pub mod control;
pub mod identity;
pub mod tls;
pub mod x509;

pub use identity::Identity;
pub mod hbone;
pub mod inpod_proto;
pub mod meshconfig;
pub mod netns;
pub mod socket;
