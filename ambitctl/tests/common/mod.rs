//! Running the real `ambitctl` binary and an in-process API server for it to talk to.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Output, Stdio};

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not JSON ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "ambitctl failed:\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

fn to_run(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `ambitctl ARGS` with no sandbox state and no kubeconfig leaking in from the machine.
pub fn ambitctl(args: &[&str]) -> Run {
    ambitctl_stdin(args, None)
}

/// A sandbox state file with nothing in it, so a sandbox running on this machine is ignored.
fn empty_state() -> std::path::PathBuf {
    let p = std::env::temp_dir().join("ambitctl-test-empty-state.json");
    if !p.exists() {
        // Written aside and renamed: concurrent test processes never read half a file.
        let tmp =
            std::env::temp_dir().join(format!("ambitctl-test-empty-state.{}", std::process::id()));
        std::fs::write(&tmp, "{}").expect("writing the empty state file");
        std::fs::rename(&tmp, &p).expect("placing the empty state file");
    }
    p
}

pub fn ambitctl_stdin(args: &[&str], stdin: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ambitctl"));
    cmd.args(args)
        .env_remove("AMBIT_SERVER")
        .env("AMBIT_SANDBOX_STATE", empty_state())
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawning ambitctl");
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("writing stdin");
    }
    drop(input);
    to_run(child.wait_with_output().expect("waiting for ambitctl"))
}

pub fn repo(path: &str) -> String {
    format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// An in-memory API server on a runtime of its own, alive as long as this value.
pub struct ApiSim {
    pub url: String,
    pub rt: tokio::runtime::Runtime,
    _handle: ambit_apisim::ApiServerHandle,
}

impl ApiSim {
    pub fn start() -> ApiSim {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let handle = rt
            .block_on(ambit_apisim::ApiServer::start(
                "127.0.0.1:0".parse().unwrap(),
            ))
            .expect("starting apisim");
        ApiSim {
            url: handle.url(),
            rt,
            _handle: handle,
        }
    }

    pub fn client(&self) -> kube::Client {
        let _g = self.rt.enter();
        kube::Client::try_from(kube::Config::new(self.url.parse().unwrap())).unwrap()
    }
}
