//! A small stateful in-memory Kubernetes API server for tests and the local sandbox.
#![forbid(unsafe_code)]
