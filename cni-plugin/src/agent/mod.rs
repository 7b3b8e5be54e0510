//! The node agent: installs the plugin into the node's CNI config and enrolls pods.

pub mod install;
pub mod netns_lookup;
