//! Ambit's waypoint. Not built yet: it is tracked in the project's issues. The crate exists so the
//! workspace has its final shape and shared code is designed with it in mind.
#![forbid(unsafe_code)]
