//! One module per command.

pub mod apply;
pub mod check;
pub mod config_dump;
pub mod delete;
pub mod get;
pub mod status;
pub mod top;
