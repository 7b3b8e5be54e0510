//! Ambit's chained CNI plugin and node agent.
//!
//! [`cni`] is the plugin, [`agent`] the node agent, [`redirect`] the in-pod redirection rules
//! the agent installs inside each enrolled pod's network namespace (policy routing over
//! [`netlink`], nftables rules with one `nft` transaction), [`probes`] the node-side SNAT
//! that keeps kubelet probes working.
#![forbid(unsafe_code)]

pub mod agent;
pub mod agent_proto;
pub mod cni;
pub mod netlink;
pub mod probes;
pub mod redirect;
