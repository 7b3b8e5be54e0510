//! Readers for `/proc/<pid>/stat` (CPU time) and `/proc/<pid>/status` (resident memory),
//! plus a few facts about the machine for the report.

use std::time::Instant;

use anyhow::{bail, Context};

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on every Linux we care about).
fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .unwrap_or(100) as f64
}

/// User + system CPU time a process has used so far, in seconds (all its threads, including
/// the ones that already exited). Resolution: one clock tick (10 ms).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    parse_cpu_ticks(&stat).map(|ticks| ticks as f64 / clock_ticks())
}

/// Minor page faults a process has taken so far (all its threads).
pub fn minor_faults(pid: u32) -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    stat_field(&stat, 10)
}

/// Field `n` (1-based, as in proc(5)) of `/proc/PID/stat`, for n ≥ 3.
fn stat_field(stat: &str, n: usize) -> anyhow::Result<u64> {
    let Some(end) = stat.rfind(')') else {
        bail!("malformed /proc/PID/stat: {stat:?}")
    };
    stat[end + 1..]
        .split_whitespace()
        .nth(n - 3)
        .and_then(|f| f.parse().ok())
        .with_context(|| format!("malformed /proc/PID/stat: {stat:?}"))
}

/// utime + stime, fields 14 and 15 of `/proc/PID/stat`. The command name (field 2) may
/// contain spaces and parentheses, so fields are counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> anyhow::Result<u64> {
    Ok(stat_field(stat, 14)? + stat_field(stat, 15)?)
}

/// (`VmRSS`, `RssAnon`) of `/proc/PID/status`, in MiB. RSS counts the mapped binary's
/// pages too (shared by every process running it); anonymous RSS is the heap and stacks.
pub fn memory_mb(pid: u32) -> anyhow::Result<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = |key| status_kb(&status, key).map(|kb| kb as f64 / 1024.0);
    Ok((kb("VmRSS")?, kb("RssAnon")?))
}

fn status_kb(status: &str, key: &str) -> anyhow::Result<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {key} line in /proc/PID/status"))
}

/// CPU seconds of several processes between two points in time.
pub struct CpuWindow {
    pids: Vec<u32>,
    start: Vec<f64>,
    at: Instant,
}

impl CpuWindow {
    pub fn start(pids: &[u32]) -> anyhow::Result<Self> {
        Ok(Self {
            pids: pids.to_vec(),
            start: pids
                .iter()
                .map(|&p| cpu_seconds(p))
                .collect::<Result<_, _>>()?,
            at: Instant::now(),
        })
    }

    /// (CPU seconds used by each process since `start`, wall seconds elapsed).
    pub fn finish(&self) -> anyhow::Result<(Vec<f64>, f64)> {
        let wall = self.at.elapsed().as_secs_f64();
        let used = self
            .pids
            .iter()
            .zip(&self.start)
            .map(|(&p, s)| cpu_seconds(p).map(|now| now - s))
            .collect::<Result<_, _>>()?;
        Ok((used, wall))
    }
}

/// CPU used by the whole machine, by this process and by some other processes (the
/// ztunnels) over one window.
pub struct Window {
    pids: CpuWindow,
    idle: f64,
    me: f64,
}

/// What a [`Window`] measured, in CPU seconds, over `wall` seconds.
#[derive(Clone, Debug, Default)]
pub struct WindowCpu {
    pub wall: f64,
    pub machine: f64,
    pub me: f64,
    pub pids: Vec<f64>,
}

impl WindowCpu {
    /// Adds another window's figures (windows of one phase split into slices).
    pub fn add(&mut self, other: &WindowCpu) {
        self.wall += other.wall;
        self.machine += other.machine;
        self.me += other.me;
        if self.pids.len() < other.pids.len() {
            self.pids.resize(other.pids.len(), 0.0);
        }
        for (a, b) in self.pids.iter_mut().zip(&other.pids) {
            *a += b;
        }
    }

    pub fn pids_total(&self) -> f64 {
        self.pids.iter().sum()
    }
    /// Average busy CPUs of the whole machine.
    pub fn machine_cpus(&self) -> f64 {
        self.machine / self.wall
    }
    /// What neither this process nor the watched ones used (other workloads, and kernel
    /// work such as ksoftirqd done on nobody's behalf).
    pub fn others(&self) -> f64 {
        (self.machine - self.me - self.pids_total()).max(0.0)
    }
}

impl Window {
    pub fn start(pids: &[u32]) -> anyhow::Result<Self> {
        Ok(Self {
            idle: machine_idle_seconds()?,
            me: cpu_seconds(std::process::id())?,
            pids: CpuWindow::start(pids)?,
        })
    }

    pub fn finish(&self) -> anyhow::Result<WindowCpu> {
        let (pids, wall) = self.pids.finish()?;
        let idle = machine_idle_seconds()? - self.idle;
        Ok(WindowCpu {
            wall,
            machine: (wall * nproc() as f64 - idle).max(0.0),
            me: cpu_seconds(std::process::id())? - self.me,
            pids,
        })
    }
}

/// The largest RSS (and anonymous RSS) seen for each process over several samples.
#[derive(Clone, Debug)]
pub struct RssMax {
    pids: Vec<u32>,
    pub max_mb: Vec<f64>,
    pub max_anon_mb: Vec<f64>,
}

impl RssMax {
    pub fn new(pids: &[u32]) -> Self {
        Self {
            pids: pids.to_vec(),
            max_mb: vec![0.0; pids.len()],
            max_anon_mb: vec![0.0; pids.len()],
        }
    }

    pub fn sample(&mut self) -> anyhow::Result<()> {
        for (i, &pid) in self.pids.iter().enumerate() {
            let (rss, anon) = memory_mb(pid)?;
            self.max_mb[i] = self.max_mb[i].max(rss);
            self.max_anon_mb[i] = self.max_anon_mb[i].max(anon);
        }
        Ok(())
    }
}

/// CPU seconds the whole machine has spent idle (idle + iowait, from the first line of
/// `/proc/stat`). Busy time is derived from it: the kernel samples user/system time at
/// ticks, which misses most of the short bursts a request/response load is made of, while
/// idle time is accounted exactly on tickless kernels.
pub fn machine_idle_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_idle_ticks(&stat).map(|t| t as f64 / clock_ticks())
}

fn parse_idle_ticks(stat: &str) -> anyhow::Result<u64> {
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().context("malformed /proc/stat"))
        .collect::<Result<_, _>>()?;
    if v.len() < 5 {
        bail!("malformed /proc/stat cpu line: {line:?}");
    }
    // user nice system idle iowait ...
    Ok(v[3] + v[4])
}

/// Online CPUs.
pub fn nproc() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Kernel release (`uname -r`).
pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// `model name` of the first CPU in `/proc/cpuinfo`.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let stat = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 531 0 0 0 \
                    123 45 0 0 20 0 3 0 98765 12345678 789 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat).unwrap(), 168);
        assert_eq!(stat_field(stat, 10).unwrap(), 531);
        assert!(parse_cpu_ticks("garbage").is_err());
    }

    #[test]
    fn parses_status() {
        let status = "Name:\tztunnel\nVmPeak:\t  100 kB\nVmRSS:\t    8192 kB\n\
                      RssAnon:\t    1024 kB\nThreads:\t4\n";
        assert_eq!(status_kb(status, "VmRSS").unwrap(), 8192);
        assert_eq!(status_kb(status, "RssAnon").unwrap(), 1024);
        assert!(status_kb("Name: x\n", "VmRSS").is_err());
    }

    #[test]
    fn parses_machine_stat() {
        let stat = "cpu  10 2 30 400 5 6 7 8 0 0\ncpu0 1 1 1 1 1 1 1 1 0 0\n";
        assert_eq!(parse_idle_ticks(stat).unwrap(), 405);
        assert!(parse_idle_ticks("cpu 1 2\n").is_err());
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let (rss, anon) = memory_mb(me).unwrap();
        assert!(rss >= anon && anon > 0.0);
        let spin = Instant::now();
        while spin.elapsed().as_millis() < 30 {
            std::hint::black_box(0u64);
        }
        assert!(cpu_seconds(me).unwrap() > 0.0);
    }
}
