//! ztunnel serves from the shared compiled mesh state (see `ambit_core::meshconfig`).
pub use ambit_core::meshconfig::*;
