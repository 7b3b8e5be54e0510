//! The sandbox's background processes: started detached (own process group, output to a
//! log file, a pid file, the sandbox marker in their environment), found again by pid file
//! or by marker, and stopped with SIGTERM then SIGKILL.

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::layout::{Layout, MARKER_ENV};

/// Starts `cmd` as sandbox process `name` (inside the network namespace at `netns` if
/// given) and returns its pid. It outlives this process.
pub fn spawn(
    layout: &Layout,
    name: &str,
    netns: Option<&Path>,
    mut cmd: Command,
) -> anyhow::Result<u32> {
    let log_path = layout.log(name);
    std::fs::create_dir_all(log_path.parent().expect("log files live in a dir"))?;
    std::fs::create_dir_all(layout.pid_dir())?;
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    cmd.env(MARKER_ENV, &layout.name)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C on `local up` does not stop the sandbox.
        .process_group(0);
    let program = cmd.get_program().to_string_lossy().into_owned();
    let child = match netns {
        None => cmd.spawn(),
        Some(ns) => ambit_core::netns::run_in_thread(ns, move || cmd.spawn())
            .with_context(|| format!("entering {} to start {name}", ns.display()))?,
    }
    .with_context(|| format!("starting {name} ({program})"))?;
    let pid = child.id();
    std::fs::write(
        layout.pid_dir().join(format!("{name}.pid")),
        pid.to_string(),
    )?;
    Ok(pid)
}

/// True while `pid` runs (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => match stat.rfind(')') {
            Some(i) => !matches!(stat[i + 1..].trim_start().chars().next(), Some('Z' | 'X')),
            None => true,
        },
        Err(_) => false,
    }
}

/// The pid files: (process name, pid).
pub fn pid_files(layout: &Layout) -> Vec<(String, u32)> {
    let Ok(entries) = std::fs::read_dir(layout.pid_dir()) else {
        return vec![];
    };
    let mut out: Vec<(String, u32)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_suffix(".pid")?.to_string();
            let pid = std::fs::read_to_string(e.path())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Some((name, pid))
        })
        .collect();
    out.sort();
    out
}

/// Live processes whose environment carries this sandbox's marker (not this process).
pub fn marked(layout: &Layout) -> Vec<u32> {
    let needle = format!("{MARKER_ENV}={}", layout.name);
    let me = std::process::id();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me && alive(pid))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|var| var == needle.as_bytes()))
        })
        .collect()
}

/// Every live process of the sandbox: pid files and marker scan.
pub fn all_live(layout: &Layout) -> Vec<u32> {
    let mut pids: Vec<u32> = pid_files(layout)
        .into_iter()
        .map(|(_, p)| p)
        .filter(|&p| alive(p) && has_marker(p, layout))
        .chain(marked(layout))
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// A pid file may be stale and its pid reused by an unrelated process: only kill marked ones.
fn has_marker(pid: u32, layout: &Layout) -> bool {
    let needle = format!("{MARKER_ENV}={}", layout.name);
    std::fs::read(format!("/proc/{pid}/environ"))
        .is_ok_and(|env| env.split(|&b| b == 0).any(|v| v == needle.as_bytes()))
}

/// SIGTERM to every sandbox process, SIGKILL to those still running after `grace`.
/// Returns how many were stopped.
pub fn stop_all(layout: &Layout, grace: Duration) -> usize {
    let pids = all_live(layout);
    for &pid in &pids {
        signal(pid, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && pids.iter().any(|&p| alive(p)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Stragglers, and anything a crashed `up` started while we were waiting.
    for _ in 0..3 {
        let left = all_live(layout);
        if left.is_empty() {
            break;
        }
        for pid in left {
            signal(pid, Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    pids.len()
}

fn signal(pid: u32, sig: Signal) {
    if let Ok(p) = i32::try_from(pid) {
        // ESRCH (already gone) is what we want anyway.
        let _ = kill(Pid::from_raw(p), sig);
    }
}
