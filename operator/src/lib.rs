//! Ambit's operator. Not built yet: it is tracked in the project's issues. The crate exists so the
//! workspace has its final shape and shared code is designed with it in mind.
#![forbid(unsafe_code)]

pub mod compile;
pub mod control;
pub mod controller;
pub mod crd;
pub mod health;
pub mod leader;
pub mod mesh_follow;
pub mod render;
pub mod runtime;
