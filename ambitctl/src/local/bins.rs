//! The data-plane binaries the sandbox runs besides `ambitctl` itself, found next to it
//! (where `cargo build` and the release archives put them), and what their versions support.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context};

#[derive(Clone, Debug)]
pub struct Bins {
    pub ambitctl: PathBuf,
    pub cni: PathBuf,
    pub agent: PathBuf,
    /// `None` when no waypoint binary was found.
    pub waypoint: Option<PathBuf>,
}

impl Bins {
    pub fn find() -> anyhow::Result<Bins> {
        let ambitctl = std::env::current_exe().context("locating ambitctl")?;
        let next = |name: &str| ambitctl.with_file_name(name);
        let need = |name: &str| -> anyhow::Result<PathBuf> {
            let p = next(name);
            if !p.exists() {
                bail!(
                    "{} is missing: the sandbox runs it from next to ambitctl; build the workspace (`cargo build --workspace`) or install the release archive",
                    p.display()
                );
            }
            Ok(p)
        };
        Ok(Bins {
            cni: need("ambit-cni")?,
            agent: need("ambit-cni-agent")?,
            waypoint: Some(next("waypoint")).filter(|p| p.exists()),
            ambitctl,
        })
    }

    /// Whether the node agent can watch the API server itself (`run --kube`).
    pub fn agent_has_kube_mode(&self) -> bool {
        help_mentions(&self.agent, &["run", "--help"], "--kube")
    }

    /// Whether the waypoint can get its config and certificate from the operator.
    pub fn waypoint_has_stream_mode(&self) -> bool {
        self.waypoint
            .as_ref()
            .is_some_and(|w| help_mentions(w, &["--help"], "--control-plane"))
    }
}

fn help_mentions(bin: &Path, args: &[&str], flag: &str) -> bool {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(flag))
}

/// One pod's CNI ADD, as a container runtime runs a conflist whose first plugin (the
/// sandbox's primary CNI) already made the interface and address.
pub struct CniAdd<'a> {
    pub netns: &'a Path,
    pub container_id: &'a str,
    pub namespace: &'a str,
    pub pod: &'a str,
    pub uid: &'a str,
    pub ip: Ipv4Addr,
    pub agent_socket: &'a Path,
}

/// Runs the real `ambit-cni` plugin (from the node's network namespace) and checks that it
/// passed `prevResult` through.
pub fn cni_add(plugin: &Path, node_netns: &Path, add: &CniAdd) -> anyhow::Result<()> {
    let prev = format!(
        r#"{{"cniVersion":"1.0.0","interfaces":[{{"name":"eth0","sandbox":"{}"}}],"ips":[{{"address":"{}/24","interface":0}}]}}"#,
        add.netns.display(),
        add.ip
    );
    let stdin = format!(
        r#"{{"cniVersion":"1.0.0","name":"sandbox-pod-network","type":"ambit-cni","agentSocket":"{}","failurePolicy":"closed","agentTimeoutMs":10000,"excludeNamespaces":["kube-system","ambit-system"],"prevResult":{prev}}}"#,
        add.agent_socket.display()
    );
    let mut cmd = Command::new(plugin);
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", add.container_id)
        .env("CNI_NETNS", add.netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", plugin.parent().unwrap_or(Path::new("/")))
        .env(
            "CNI_ARGS",
            format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_UID={}",
                add.namespace, add.pod, add.uid
            ),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = ambit_core::netns::run_in_thread(node_netns, move || cmd.spawn())?
        .with_context(|| format!("running {}", plugin.display()))?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "CNI ADD of pod {}/{} failed ({}): {stdout} {}",
            add.namespace,
            add.pod,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if stdout.trim() != prev {
        bail!(
            "ambit-cni changed prevResult for pod {}/{}: {stdout}",
            add.namespace,
            add.pod
        );
    }
    Ok(())
}
