//! Ambit's chained CNI plugin and node agent.
//!
//! For now this holds [`redirect`]: the in-pod redirection rules the node
//! agent installs inside each enrolled pod's network namespace.
#![forbid(unsafe_code)]

pub mod agent;
pub mod agent_proto;
pub mod cni;
pub mod probes;
pub mod redirect;
