//! The `CNI_*` environment variables (spec section "Parameters") and which
//! of them each command requires.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use super::error::{CniError, ErrorCode};

/// `CNI_COMMAND` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub const ALL: [Command; 6] = [
        Command::Add,
        Command::Del,
        Command::Check,
        Command::Status,
        Command::Gc,
        Command::Version,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// (CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME) required? Per spec 1.1:
    /// ADD and CHECK need all three, DEL needs the id and ifname (netns is
    /// optional: the namespace may already be gone), STATUS, GC and VERSION
    /// need none.
    fn required(self) -> (bool, bool, bool) {
        match self {
            Command::Add | Command::Check => (true, true, true),
            Command::Del => (true, false, true),
            Command::Status | Command::Gc | Command::Version => (false, false, false),
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The parsed environment of one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: Option<String>,
    pub netns: Option<String>,
    pub ifname: Option<String>,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
}

/// `CNI_ARGS`: `K=V` pairs separated by `;`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniArgs {
    pub pairs: Vec<(String, String)>,
}

impl CniArgs {
    /// The last value of `key`, if any and non-empty.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }
    pub fn pod_namespace(&self) -> Option<&str> {
        self.get("K8S_POD_NAMESPACE")
    }
    pub fn pod_name(&self) -> Option<&str> {
        self.get("K8S_POD_NAME")
    }
    pub fn pod_uid(&self) -> Option<&str> {
        self.get("K8S_POD_UID")
    }

    /// Parse `FOO=BAR;ABC=123`. Empty segments (`a=b;;c=d`, a trailing `;`)
    /// are tolerated; a segment without `=` or with an empty key is not.
    pub fn parse(s: &str) -> Result<CniArgs, String> {
        let mut pairs = Vec::new();
        for seg in s.split(';').filter(|seg| !seg.trim().is_empty()) {
            match seg.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() => {
                    pairs.push((k.trim().to_owned(), v.trim().to_owned()))
                }
                _ => return Err(format!("segment {seg:?} is not KEY=VALUE")),
            }
        }
        Ok(CniArgs { pairs })
    }
}

const FIX: &str = "these are set by the container runtime (kubelet/containerd/CRI-O); if you are invoking ambit-cni by hand, set them as the CNI spec describes";

fn get_str(vars: &HashMap<String, OsString>, name: &str) -> Result<Option<String>, String> {
    match vars.get(name) {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Some("") => Ok(None),
            Some(s) => Ok(Some(s.to_owned())),
            None => Err(format!("{name} is not valid UTF-8")),
        },
    }
}

/// Read `CNI_COMMAND`. Missing or unknown → code 4.
pub fn parse_command(vars: &HashMap<String, OsString>) -> Result<Command, CniError> {
    let allowed = Command::ALL.map(Command::as_str).join(", ");
    let raw = get_str(vars, "CNI_COMMAND").map_err(|e| {
        CniError::new(
            ErrorCode::InvalidEnvironment,
            "invalid necessary environment variables: CNI_COMMAND",
            e,
        )
    })?;
    let Some(raw) = raw else {
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            "invalid necessary environment variables: CNI_COMMAND is not set",
            format!("ambit-cni is a chained CNI plugin run by the container runtime; CNI_COMMAND must be one of {allowed}"),
        ));
    };
    Command::ALL
        .into_iter()
        .find(|c| c.as_str() == raw)
        .ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("invalid necessary environment variables: CNI_COMMAND={raw:?} is not a CNI command"),
                format!("CNI_COMMAND must be one of {allowed} (upper case, CNI spec 1.1)"),
            )
        })
}

/// Read and validate the rest of the environment for `command`. Every
/// problem is reported at once, each variable named (code 4).
pub fn parse_env(command: Command, vars: &HashMap<String, OsString>) -> Result<CniEnv, CniError> {
    let (need_id, need_netns, need_ifname) = command.required();
    let mut bad: Vec<(&'static str, String)> = Vec::new();

    let mut take =
        |name: &'static str, required: bool, check: fn(&str) -> Result<(), String>| match get_str(
            vars, name,
        ) {
            Err(e) => {
                bad.push((name, e));
                None
            }
            Ok(None) if required => {
                bad.push((
                    name,
                    format!("{name} is required for {command} but is not set"),
                ));
                None
            }
            Ok(None) => None,
            Ok(Some(v)) => match check(&v) {
                Ok(()) => Some(v),
                Err(e) => {
                    bad.push((name, format!("{name}={v:?}: {e}")));
                    None
                }
            },
        };

    // STATUS, GC and VERSION are not about one attachment: whatever the
    // attachment variables hold is ignored rather than judged.
    let per_attachment = matches!(command, Command::Add | Command::Check | Command::Del);
    let (mut container_id, mut netns, mut ifname, mut args) =
        (None, None, None, CniArgs::default());
    if per_attachment {
        container_id = take("CNI_CONTAINERID", need_id, check_container_id);
        netns = take("CNI_NETNS", need_netns, check_netns);
        ifname = take("CNI_IFNAME", need_ifname, check_ifname);
        if let Some(s) = take("CNI_ARGS", false, |s| CniArgs::parse(s).map(|_| ())) {
            args = CniArgs::parse(&s).unwrap_or_default();
        }
    }
    let path = match get_str(vars, "CNI_PATH") {
        Ok(Some(p)) => std::env::split_paths(&p).collect(),
        Ok(None) => Vec::new(),
        Err(e) => {
            bad.push(("CNI_PATH", e));
            Vec::new()
        }
    };

    if !bad.is_empty() {
        let names: Vec<&str> = bad.iter().map(|(n, _)| *n).collect();
        let reasons: Vec<String> = bad.into_iter().map(|(_, r)| r).collect();
        return Err(CniError::new(
            ErrorCode::InvalidEnvironment,
            format!(
                "invalid necessary environment variables: {}",
                names.join(", ")
            ),
            format!("{}; {FIX}", reasons.join("; ")),
        ));
    }
    Ok(CniEnv {
        command,
        container_id,
        netns,
        ifname,
        args,
        path,
    })
}

/// Spec: "Must start with an alphanumeric character, optionally followed by
/// any combination of one or more alphanumeric characters, underscore (_),
/// dot (.) or hyphen (-)."
fn check_container_id(s: &str) -> Result<(), String> {
    let mut chars = s.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err("must start with a letter or digit followed by letters, digits, '_', '.' or '-'".into())
    }
}

/// The namespace path is opened by the node agent, another process with
/// another working directory: it must be absolute.
fn check_netns(s: &str) -> Result<(), String> {
    if s.starts_with('/') {
        Ok(())
    } else {
        Err("must be an absolute path to the network namespace (e.g. /var/run/netns/cni-…)".into())
    }
}

/// Linux interface names: 1-15 bytes, not `.`/`..`, no `/`, `:` or space.
fn check_ifname(s: &str) -> Result<(), String> {
    if s.len() > 15 {
        return Err("longer than 15 bytes (IFNAMSIZ)".into());
    }
    if s == "." || s == ".." {
        return Err("is not a valid interface name".into());
    }
    if s.chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
    {
        return Err("contains '/', ':', whitespace or NUL".into());
    }
    Ok(())
}
