//! The command logic of `ambit-cni`. Pure apart from the agent call: the
//! environment and stdin come in, stdout text and an exit code go out, and
//! log lines go to the given writer (stderr in the binary).

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Write;
use std::time::Duration;

use serde_json::json;

use super::config::{
    parse_document, prev_result_ips, requested_version, require_version_at_least, Document,
    FailurePolicy, NetConf,
};
use super::env::{parse_command, parse_env, CniEnv, Command};
use super::error::{CniError, ErrorCode};
use super::{CURRENT_VERSION, SUPPORTED_VERSIONS};
use crate::agent_proto::{call, AgentResponse, PluginRequest};

/// DEL never waits longer than this for the agent, whatever
/// `agentTimeoutMs` says: it is best effort and must not hold up teardown.
pub const DEL_TIMEOUT: Duration = Duration::from_millis(1000);

/// What the process prints on stdout and how it exits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub stdout: String,
    pub exit_code: i32,
}

impl Outcome {
    fn success(stdout: Option<String>) -> Outcome {
        Outcome {
            stdout: stdout.unwrap_or_default(),
            exit_code: 0,
        }
    }

    /// The spec's error result on stdout and a non-zero exit.
    pub fn failure(err: &CniError, cni_version: &str) -> Outcome {
        Outcome {
            stdout: err.to_json(cni_version),
            exit_code: 1,
        }
    }
}

/// Run one invocation.
pub fn run(vars: &HashMap<String, OsString>, stdin: &[u8], log: &mut dyn Write) -> Outcome {
    let doc = parse_document(stdin);
    // Errors carry the requested version when there is one (the runtime
    // decodes them with it), else ours.
    let version = doc
        .as_ref()
        .ok()
        .and_then(requested_version)
        .unwrap_or_else(|| CURRENT_VERSION.to_owned());
    match dispatch(vars, stdin, doc, log) {
        Ok(out) => Outcome::success(out),
        Err(e) => {
            let _ = writeln!(log, "ambit-cni: error {}: {}", e.code.as_u32(), e);
            Outcome::failure(&e, &version)
        }
    }
}

fn dispatch(
    vars: &HashMap<String, OsString>,
    stdin: &[u8],
    doc: Result<Document<'_>, CniError>,
    log: &mut dyn Write,
) -> Result<Option<String>, CniError> {
    let command = parse_command(vars)?;
    if command == Command::Version {
        return version_result(stdin, doc.as_ref()).map(Some);
    }
    // Spec order: the environment first (code 4), then stdin (6), then the
    // version (1) and the configuration (7/2).
    let env = parse_env(command, vars)?;
    let doc = doc?;
    let conf = NetConf::from_document(&doc)?;
    match command {
        Command::Add => add(&env, &conf, log),
        Command::Check => check(&env, &conf, log),
        Command::Del => del(&env, &conf, log),
        Command::Status => status(&conf, log),
        Command::Gc => gc(&conf),
        Command::Version => unreachable!("handled above"),
    }
}

/// VERSION: `cniVersion` echoes the input (spec: "the value of cniVersion
/// specified on input"), `1.1.0` when stdin is empty or has none. It never
/// fails for an unknown version: runtimes probe with their own newest
/// version to learn ours.
fn version_result(stdin: &[u8], doc: Result<&Document<'_>, &CniError>) -> Result<String, CniError> {
    let requested = if stdin.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        requested_version(doc.map_err(Clone::clone)?)
    };
    let out = json!({
        "cniVersion": requested.unwrap_or_else(|| CURRENT_VERSION.to_owned()),
        "supportedVersions": SUPPORTED_VERSIONS,
    });
    Ok(out.to_string())
}

fn no_prev_result(command: Command) -> CniError {
    CniError::new(
        ErrorCode::InvalidConfig,
        format!("invalid network configuration: no prevResult on {command}; ambit-cni must be chained after the primary CNI plugin"),
        "ambit-cni sets up no interface itself: it must be a later entry of the \"plugins\" list of the node's conflist (/etc/cni/net.d/), after the primary CNI plugin, so the runtime passes it that plugin's result; the ambit node agent inserts it there when it starts",
    )
}

/// The pod's (namespace, name) from CNI_ARGS, or `None` (with a log line)
/// for a sandbox that is not a Kubernetes pod.
fn pod_identity<'e>(env: &'e CniEnv, log: &mut dyn Write) -> Option<(&'e str, &'e str)> {
    match (env.args.pod_namespace(), env.args.pod_name()) {
        (Some(ns), Some(name)) => Some((ns, name)),
        _ => {
            let _ = writeln!(
                log,
                "ambit-cni: {}: no K8S_POD_NAMESPACE/K8S_POD_NAME in CNI_ARGS, not a Kubernetes pod: leaving container {} alone",
                env.command,
                env.container_id.as_deref().unwrap_or("?"),
            );
            None
        }
    }
}

/// The failure policy applied to "the agent did not confirm".
fn on_agent_failure(
    conf: &NetConf<'_>,
    command: Command,
    pod: &str,
    reason: &str,
    log: &mut dyn Write,
) -> Result<(), CniError> {
    match conf.failure_policy {
        FailurePolicy::Closed => Err(CniError::new(
            ErrorCode::TryAgainLater,
            format!("pod {pod} is not captured by the ambit mesh ({command}): {reason}; the pod will be retried by the kubelet"),
            format!(
                "failurePolicy is \"closed\", so the pod must not run uncaptured. Check the ambit node agent on this node: is it running, listening on {} and connected to ztunnel (its logs and readiness say)? Set \"failurePolicy\": \"open\" to let pods start uncaptured instead",
                conf.agent_socket.display()
            ),
        )),
        FailurePolicy::Open => {
            let _ = writeln!(
                log,
                "ambit-cni: warning: {command}: pod {pod} started uncaptured ({reason}); failurePolicy is \"open\": the node agent will capture it when it is back"
            );
            Ok(())
        }
    }
}

fn add(env: &CniEnv, conf: &NetConf<'_>, log: &mut dyn Write) -> Result<Option<String>, CniError> {
    let prev = conf
        .prev_result
        .ok_or_else(|| no_prev_result(Command::Add))?;
    let ips = prev_result_ips(prev)?;
    let out = Some(prev.get().to_owned());
    let Some((ns, name)) = pod_identity(env, log) else {
        return Ok(out);
    };
    if conf.exclude_namespaces.iter().any(|x| x == ns) {
        return Ok(out);
    }
    let req = PluginRequest::Add {
        network: conf.name.clone(),
        container_id: env.container_id.clone().unwrap_or_default(),
        netns: env.netns.clone().unwrap_or_default(),
        ifname: env.ifname.clone().unwrap_or_default(),
        pod_namespace: ns.to_owned(),
        pod_name: name.to_owned(),
        pod_uid: env.args.pod_uid().map(str::to_owned),
        ips,
    };
    let pod = format!("{ns}/{name}");
    let reason = match call(&conf.agent_socket, &req, conf.agent_timeout) {
        Ok(AgentResponse::Captured) | Ok(AgentResponse::Skipped { .. }) => return Ok(out),
        Ok(AgentResponse::Error { message, retryable }) => format!(
            "the node agent could not capture it: {message}{}",
            if retryable {
                ""
            } else {
                " (agent says: not retryable)"
            }
        ),
        Ok(other) => format!("the node agent gave an unexpected answer to ADD: {other:?}"),
        Err(e) => e.to_string(),
    };
    on_agent_failure(conf, Command::Add, &pod, &reason, log).map(|()| out)
}

fn check(
    env: &CniEnv,
    conf: &NetConf<'_>,
    log: &mut dyn Write,
) -> Result<Option<String>, CniError> {
    require_version_at_least(&conf.cni_version, "0.4.0", "CHECK")?;
    let prev = conf
        .prev_result
        .ok_or_else(|| no_prev_result(Command::Check))?;
    prev_result_ips(prev)?;
    let out = Some(prev.get().to_owned());
    let Some((ns, name)) = pod_identity(env, log) else {
        return Ok(out);
    };
    if conf.exclude_namespaces.iter().any(|x| x == ns) {
        return Ok(out);
    }
    let req = PluginRequest::Check {
        container_id: env.container_id.clone().unwrap_or_default(),
        netns: env.netns.clone().unwrap_or_default(),
        pod_namespace: ns.to_owned(),
        pod_name: name.to_owned(),
    };
    let pod = format!("{ns}/{name}");
    let reason = match call(&conf.agent_socket, &req, conf.agent_timeout) {
        Ok(AgentResponse::Ok | AgentResponse::Captured | AgentResponse::Skipped { .. }) => {
            return Ok(out)
        }
        Ok(AgentResponse::Error { message, .. }) => format!("the node agent reports: {message}"),
        Err(e) => e.to_string(),
    };
    on_agent_failure(conf, Command::Check, &pod, &reason, log).map(|()| out)
}

fn del(env: &CniEnv, conf: &NetConf<'_>, log: &mut dyn Write) -> Result<Option<String>, CniError> {
    let req = PluginRequest::Del {
        container_id: env.container_id.clone().unwrap_or_default(),
        netns: env.netns.clone(),
        pod_namespace: env.args.pod_namespace().map(str::to_owned),
        pod_name: env.args.pod_name().map(str::to_owned),
    };
    let timeout = conf.agent_timeout.min(DEL_TIMEOUT);
    let problem = match call(&conf.agent_socket, &req, timeout) {
        Ok(AgentResponse::Error { message, .. }) => Some(message),
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    };
    if let Some(problem) = problem {
        let _ = writeln!(
            log,
            "ambit-cni: DEL {}: node agent not told ({problem}); ignored, the agent reconciles deleted pods itself",
            env.container_id.as_deref().unwrap_or("?")
        );
    }
    Ok(None)
}

fn status(conf: &NetConf<'_>, log: &mut dyn Write) -> Result<Option<String>, CniError> {
    require_version_at_least(&conf.cni_version, "1.1.0", "STATUS")?;
    let reason = match call(
        &conf.agent_socket,
        &PluginRequest::Status,
        conf.agent_timeout,
    ) {
        Ok(AgentResponse::Ok) => return Ok(None),
        Ok(AgentResponse::Error { message, .. }) => {
            format!("the node agent is not ready: {message}")
        }
        Ok(other) => format!("the node agent gave an unexpected answer to STATUS: {other:?}"),
        Err(e) => e.to_string(),
    };
    match conf.failure_policy {
        FailurePolicy::Closed => Err(CniError::new(
            ErrorCode::NotAvailable,
            format!("plugin not available: {reason}"),
            format!(
                "with failurePolicy \"closed\" every ADD fails until the ambit node agent answers on {}; check the agent DaemonSet pod on this node",
                conf.agent_socket.display()
            ),
        )),
        FailurePolicy::Open => {
            let _ = writeln!(
                log,
                "ambit-cni: warning: STATUS: {reason}; failurePolicy is \"open\", so ADD still succeeds (pods start uncaptured)"
            );
            Ok(None)
        }
    }
}

fn gc(conf: &NetConf<'_>) -> Result<Option<String>, CniError> {
    require_version_at_least(&conf.cni_version, "1.1.0", "GC")?;
    let valid_attachments = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "invalid network configuration: GC without \"cni.dev/valid-attachments\"",
            "the runtime must pass the list of still-valid attachments on GC; refusing to treat a missing list as empty (that would release every pod)",
        )
    })?;
    let reason = match call(
        &conf.agent_socket,
        &PluginRequest::Gc {
            network: conf.name.clone(),
            valid_attachments,
        },
        conf.agent_timeout,
    ) {
        Ok(AgentResponse::Ok) => return Ok(None),
        Ok(AgentResponse::Error { message, .. }) => format!("the node agent failed: {message}"),
        Ok(other) => format!("the node agent gave an unexpected answer to GC: {other:?}"),
        Err(e) => e.to_string(),
    };
    Err(CniError::new(
        ErrorCode::TryAgainLater,
        format!("garbage collection not done: {reason}"),
        "nothing was removed; the runtime runs GC again later, and the ambit node agent also reconciles stale pods on its own when it (re)starts",
    ))
}

/// Called by [`process_main`] with the environment and stderr once the command has run.
pub type AfterRun<'a> = dyn Fn(&HashMap<String, OsString>, &mut dyn Write) + 'a;

/// Everything the `ambit-cni` binary does: reads the CNI environment and the network config
/// from stdin, runs the command, writes the result (or the spec's error object) to stdout and
/// returns the exit code. `after_run` sees the environment and stderr once the command has
/// run (the benchmark, which re-executes itself as the plugin, records timings there).
pub fn process_main(after_run: &AfterRun<'_>) -> i32 {
    use std::io::Read;
    let vars: HashMap<String, OsString> = std::env::vars_os()
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
    after_run(&vars, &mut stderr);
    let mut stdout = std::io::stdout().lock();
    if stdout
        .write_all(outcome.stdout.as_bytes())
        .and_then(|()| stdout.flush())
        .is_err()
    {
        let _ = writeln!(stderr, "ambit-cni: cannot write the result to stdout");
        return 1;
    }
    outcome.exit_code
}
