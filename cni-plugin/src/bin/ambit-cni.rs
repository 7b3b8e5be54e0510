//! `ambit-cni`: Ambit's chained CNI plugin (CNI spec 1.1).
//!
//! Run by the container runtime with `CNI_*` environment variables and the
//! network configuration on stdin; prints the result (or the spec's error
//! object) on stdout. Logs go to stderr only. All logic is in
//! [`ambit_cni::cni::plugin`].
#![forbid(unsafe_code)]

fn main() {
    std::process::exit(ambit_cni::cni::plugin::process_main(&|_, _| {}));
}
