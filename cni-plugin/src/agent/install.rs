//! Putting the plugin into the node's CNI configuration, and taking it out again.
//!
//! The kubelet (via the container runtime) uses the lexicographically first network config
//! in the CNI conf dir. Ambit chains itself as the last plugin of that `.conflist`: the
//! primary CNI sets up the pod's network first and Ambit's plugin sees its result. The
//! primary CNI may rewrite its file at any time (upgrades, restarts), so the agent checks
//! periodically and re-inserts the entry. Every write is atomic (temp file + rename) so the
//! runtime never reads a half-written file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::{json, Map, Value};

/// The plugin's `type`, i.e. its binary name in the CNI bin dir.
pub const PLUGIN_TYPE: &str = "ambit-cni";

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("no CNI network config (*.conflist) in {dir}: is the primary CNI installed on this node yet? The agent retries until one appears")]
    NoPrimaryConfig { dir: PathBuf },
    #[error("{path}: the primary CNI config is a single-plugin .conf file; Ambit chains into a .conflist (convert it, or point the agent at a directory whose first config is a .conflist)")]
    SinglePluginConf { path: PathBuf },
    #[error("{path}: {what}")]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not valid CNI config JSON ({source}); leaving it untouched")]
    BadJson {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {why}; leaving it untouched")]
    BadShape { path: PathBuf, why: String },
}

fn io(path: &Path, what: &str) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    let what = what.to_string();
    move |source| InstallError::Io { path, what, source }
}

/// The config file the runtime will use: the first `.conflist`/`.conf`/`.json` by name.
pub fn primary_config(dir: &Path) -> Result<PathBuf, InstallError> {
    let mut candidates: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(io(dir, "listing the CNI conf dir"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file()
                && matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("conflist" | "conf" | "json")
                )
        })
        .collect();
    candidates.sort();
    let first = candidates
        .into_iter()
        .next()
        .ok_or_else(|| InstallError::NoPrimaryConfig {
            dir: dir.to_path_buf(),
        })?;
    if first.extension().and_then(|e| e.to_str()) != Some("conflist") {
        return Err(InstallError::SinglePluginConf { path: first });
    }
    Ok(first)
}

fn read_conflist(path: &Path) -> Result<(String, Value), InstallError> {
    let text = fs::read_to_string(path).map_err(io(path, "reading"))?;
    let value: Value = serde_json::from_str(&text).map_err(|source| InstallError::BadJson {
        path: path.to_path_buf(),
        source,
    })?;
    if !value.get("plugins").is_some_and(Value::is_array) {
        return Err(InstallError::BadShape {
            path: path.to_path_buf(),
            why: "it has no \"plugins\" array".into(),
        });
    }
    Ok((text, value))
}

fn is_ours(plugin: &Value) -> bool {
    plugin.get("type").and_then(Value::as_str) == Some(PLUGIN_TYPE)
}

fn write_atomic(path: &Path, text: &str) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.ambit-tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("cni")
    ));
    let mut f = fs::File::create(&tmp).map_err(io(&tmp, "creating temp file"))?;
    f.write_all(text.as_bytes())
        .and_then(|_| f.sync_all())
        .map_err(io(&tmp, "writing temp file"))?;
    if let Ok(meta) = fs::metadata(path) {
        // Keep the primary CNI's permissions.
        let _ = fs::set_permissions(&tmp, meta.permissions());
    }
    fs::rename(&tmp, path).map_err(io(path, "replacing"))
}

/// Makes `entry` the last plugin of the primary conflist in `dir`. Returns the file and
/// whether it had to be written (false: it was already exactly right).
pub fn ensure_chained(
    dir: &Path,
    entry: &Map<String, Value>,
) -> Result<(PathBuf, bool), InstallError> {
    let path = primary_config(dir)?;
    let (text, mut conf) = read_conflist(&path)?;
    let mut ours = entry.clone();
    ours.insert("type".into(), json!(PLUGIN_TYPE));
    let plugins = conf["plugins"]
        .as_array_mut()
        .expect("checked by read_conflist");
    let want_last = Value::Object(ours);
    if plugins.last() == Some(&want_last) && plugins.iter().filter(|p| is_ours(p)).count() == 1 {
        return Ok((path, false));
    }
    plugins.retain(|p| !is_ours(p));
    plugins.push(want_last);
    let new_text = serde_json::to_string_pretty(&conf).expect("JSON values serialize") + "\n";
    if new_text == text {
        return Ok((path, false));
    }
    write_atomic(&path, &new_text)?;
    Ok((path, true))
}

/// Takes Ambit out of every conflist in `dir` (uninstall). Returns the files changed.
pub fn remove_chained(dir: &Path) -> Result<Vec<PathBuf>, InstallError> {
    let mut changed = vec![];
    let entries = fs::read_dir(dir).map_err(io(dir, "listing the CNI conf dir"))?;
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        if path.extension().and_then(|e| e.to_str()) != Some("conflist") {
            continue;
        }
        let Ok((_, mut conf)) = read_conflist(&path) else {
            continue; // not ours to judge; leave foreign or broken files alone
        };
        let plugins = conf["plugins"]
            .as_array_mut()
            .expect("checked by read_conflist");
        let before = plugins.len();
        plugins.retain(|p| !is_ours(p));
        if plugins.len() != before {
            let text = serde_json::to_string_pretty(&conf).expect("JSON values serialize") + "\n";
            write_atomic(&path, &text)?;
            changed.push(path);
        }
    }
    Ok(changed)
}

/// Copies the plugin binary into the host's CNI bin dir atomically, executable. Skips the
/// copy when the installed file is already identical.
pub fn install_binary(src: &Path, bin_dir: &Path) -> Result<PathBuf, InstallError> {
    use std::os::unix::fs::PermissionsExt;
    let dst = bin_dir.join(PLUGIN_TYPE);
    let new = fs::read(src).map_err(io(src, "reading the plugin binary"))?;
    if fs::read(&dst).ok().as_deref() == Some(new.as_slice()) {
        return Ok(dst);
    }
    fs::create_dir_all(bin_dir).map_err(io(bin_dir, "creating the CNI bin dir"))?;
    let tmp = bin_dir.join(format!(".{PLUGIN_TYPE}.ambit-tmp"));
    fs::write(&tmp, &new).map_err(io(&tmp, "writing"))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755)).map_err(io(&tmp, "chmod"))?;
    fs::rename(&tmp, &dst).map_err(io(&dst, "replacing"))?;
    Ok(dst)
}

/// Removes the plugin binary (uninstall). Absent is fine.
pub fn uninstall_binary(bin_dir: &Path) -> Result<(), InstallError> {
    let dst = bin_dir.join(PLUGIN_TYPE);
    match fs::remove_file(&dst) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(&dst, "removing")(e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KINDNET: &str = r#"{
  "cniVersion": "0.3.1",
  "name": "kindnet",
  "plugins": [
    {"type": "ptp", "ipMasq": false, "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.0.0/24"}]]}, "mtu": 1500},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}"#;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ambit-install-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn entry() -> Map<String, Value> {
        json!({"agentSocket": "/var/run/ambit/cni-agent.sock", "failurePolicy": "closed"})
            .as_object()
            .unwrap()
            .clone()
    }

    fn plugin_types(path: &Path) -> Vec<String> {
        let v: Value = serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap();
        v["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["type"].as_str().unwrap().to_string())
            .collect()
    }

    #[test]
    fn chains_last_idempotently_and_survives_rewrites_and_uninstalls_cleanly() {
        let dir = scratch("chain");
        fs::write(dir.join("10-kindnet.conflist"), KINDNET).unwrap();
        fs::write(dir.join("99-other.conflist"), KINDNET).unwrap();
        let original: Value = serde_json::from_str(KINDNET).unwrap();

        let (path, wrote) = ensure_chained(&dir, &entry()).unwrap();
        assert!(wrote);
        assert_eq!(
            path,
            dir.join("10-kindnet.conflist"),
            "the first config by name is the primary"
        );
        assert_eq!(plugin_types(&path), ["ptp", "portmap", "ambit-cni"]);
        let once = fs::read_to_string(&path).unwrap();
        assert!(
            !ensure_chained(&dir, &entry()).unwrap().1,
            "second run is a no-op"
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), once);
        assert_eq!(
            plugin_types(&dir.join("99-other.conflist")),
            ["ptp", "portmap"],
            "only the primary is touched"
        );

        // A changed setting rewrites the entry in place, never twice.
        let mut open = entry();
        open.insert("failurePolicy".into(), json!("open"));
        assert!(ensure_chained(&dir, &open).unwrap().1);
        assert_eq!(plugin_types(&path), ["ptp", "portmap", "ambit-cni"]);

        // The primary CNI rewrites its file without us: we go back in.
        fs::write(&path, KINDNET).unwrap();
        assert!(ensure_chained(&dir, &entry()).unwrap().1);
        assert_eq!(plugin_types(&path), ["ptp", "portmap", "ambit-cni"]);

        // Uninstall leaves the primary's config as it was (same JSON).
        assert_eq!(remove_chained(&dir).unwrap(), vec![path.clone()]);
        let after: Value = serde_json::from_str(&fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(after, original);
        let text = fs::read_to_string(&path).unwrap();
        assert!(
            text.find("\"type\": \"ptp\"").unwrap() < text.find("\"ipMasq\"").unwrap(),
            "the primary CNI's key order is kept:\n{text}"
        );
        assert!(
            remove_chained(&dir).unwrap().is_empty(),
            "uninstall is idempotent"
        );
        assert!(!dir.join(".10-kindnet.conflist.ambit-tmp").exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn refuses_what_it_cannot_chain_into_with_clear_errors() {
        let dir = scratch("errors");
        let err = ensure_chained(&dir, &entry()).unwrap_err().to_string();
        assert!(err.contains("no CNI network config"), "{err}");
        fs::write(
            dir.join("05-single.conf"),
            r#"{"cniVersion":"0.3.1","name":"x","type":"bridge"}"#,
        )
        .unwrap();
        let err = ensure_chained(&dir, &entry()).unwrap_err().to_string();
        assert!(err.contains("single-plugin .conf"), "{err}");
        fs::remove_file(dir.join("05-single.conf")).unwrap();
        fs::write(dir.join("10-broken.conflist"), "{not json").unwrap();
        let err = ensure_chained(&dir, &entry()).unwrap_err().to_string();
        assert!(
            err.contains("not valid CNI config JSON") && err.contains("untouched"),
            "{err}"
        );
        assert_eq!(
            fs::read_to_string(dir.join("10-broken.conflist")).unwrap(),
            "{not json"
        );
        fs::write(dir.join("10-broken.conflist"), r#"{"name":"x"}"#).unwrap();
        let err = ensure_chained(&dir, &entry()).unwrap_err().to_string();
        assert!(err.contains("no \"plugins\" array"), "{err}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn installs_the_binary_atomically_and_removes_it() {
        let dir = scratch("bin");
        let src = dir.join("src-plugin");
        fs::write(&src, b"#!/bin/sh\nexit 0\n").unwrap();
        let bin = dir.join("opt-cni-bin");
        let dst = install_binary(&src, &bin).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            fs::metadata(&dst).unwrap().permissions().mode() & 0o777,
            0o755
        );
        assert_eq!(fs::read(&dst).unwrap(), fs::read(&src).unwrap());
        install_binary(&src, &bin).unwrap();
        uninstall_binary(&bin).unwrap();
        assert!(!dst.exists());
        uninstall_binary(&bin).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
}
