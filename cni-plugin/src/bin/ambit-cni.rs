//! `ambit-cni`: Ambit's chained CNI plugin (CNI spec 1.1).
//!
//! Run by the container runtime with `CNI_*` environment variables and the
//! network configuration on stdin; prints the result (or the spec's error
//! object) on stdout. Logs go to stderr only. All logic is in
//! [`ambit_cni::cni::plugin`].
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::io::{Read, Write};

use ambit_cni::cni::error::{CniError, ErrorCode};
use ambit_cni::cni::plugin::{run, Outcome};
use ambit_cni::cni::CURRENT_VERSION;

fn main() {
    let vars: HashMap<_, _> = std::env::vars_os()
        .filter_map(|(k, v)| k.into_string().ok().map(|k| (k, v)))
        .collect();
    let mut stdin = Vec::new();
    let mut stderr = std::io::stderr().lock();
    let outcome = match std::io::stdin().lock().read_to_end(&mut stdin) {
        Ok(_) => run(&vars, &stdin, &mut stderr),
        Err(e) => {
            let err = CniError::new(
                ErrorCode::Io,
                "I/O failure: cannot read the network configuration from stdin",
                e.to_string(),
            );
            let _ = writeln!(stderr, "ambit-cni: error 5: {err}");
            Outcome::failure(&err, CURRENT_VERSION)
        }
    };
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        let _ = writeln!(stderr, "ambit-cni: cannot write the result to stdout");
        std::process::exit(1);
    }
    std::process::exit(outcome.exit_code);
}
