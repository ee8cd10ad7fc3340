//! CPU accounting from `/proc`: who used the CPUs during a run (the proxy, the upstream, wrk,
//! anything else on the machine), and whether the machine is quiet before measuring.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::procs::Proc;

/// CPU ticks per process and per core at one moment.
pub(crate) struct Snapshot {
    /// pid → (command name, parent pid, utime + stime ticks), every process on the machine.
    pub(crate) procs: HashMap<u32, (String, u32, u64)>,
    /// Per core: (busy ticks, steal ticks, total ticks).
    cores: Vec<(u64, u64, u64)>,
    sim: u32,
    proxy: Option<u32>,
    /// Details of the upstream's and the proxy's process trees.
    sim_detail: Detail,
    proxy_detail: Detail,
}

/// User and system ticks and context switches of a process tree (all threads).
#[derive(Clone, Copy, Debug, Default)]
struct Detail {
    user: u64,
    sys: u64,
    ctx_switches: u64,
}

impl Snapshot {
    pub(crate) fn take(sim: u32, proxy: Option<u32>) -> Self {
        let mut procs = HashMap::new();
        if let Ok(rd) = fs::read_dir("/proc") {
            for e in rd.flatten() {
                let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                if let Some(st) = proc_stat(pid) {
                    procs.insert(pid, st);
                }
            }
        }
        let mut cores = Vec::new();
        for line in fs::read_to_string("/proc/stat").unwrap_or_default().lines() {
            let mut it = line.split_whitespace();
            let Some(name) = it.next() else { continue };
            if !(name.starts_with("cpu") && name.len() > 3) {
                continue;
            }
            let v: Vec<u64> = it.filter_map(|x| x.parse().ok()).collect();
            if v.len() < 8 {
                continue;
            }
            // user nice system idle iowait irq softirq steal [guest guest_nice, included in user]
            let idle = v[3] + v[4];
            let steal = v[7];
            let total: u64 = v[..8].iter().sum();
            cores.push((total - idle - steal, steal, total));
        }
        let sim_detail = tree_detail(&procs, sim);
        let proxy_detail = proxy.map(|p| tree_detail(&procs, p)).unwrap_or_default();
        Snapshot {
            procs,
            cores,
            sim,
            proxy,
            sim_detail,
            proxy_detail,
        }
    }

    /// CPU ticks of `root` and its direct children (nginx's workers).
    fn tree_ticks(&self, root: u32) -> u64 {
        self.procs
            .iter()
            .filter(|(pid, (_, ppid, _))| **pid == root || *ppid == root)
            .map(|(_, (_, _, t))| *t)
            .sum()
    }
}

/// (comm, ppid, utime + stime) from /proc/PID/stat.
pub(crate) fn proc_stat(pid: u32) -> Option<(String, u32, u64)> {
    let (comm, ppid, user, sys) = proc_stat_split(&format!("/proc/{pid}/stat"))?;
    Some((comm, ppid, user + sys))
}

/// (comm, ppid, utime, stime) from a `stat` file of /proc.
fn proc_stat_split(path: &str) -> Option<(String, u32, u64, u64)> {
    let s = fs::read_to_string(path).ok()?;
    let open = s.find('(')?;
    let close = s.rfind(')')?;
    let comm = s[open + 1..close].to_string();
    let f: Vec<&str> = s[close + 1..].split_whitespace().collect();
    // f[0] = state (field 3), f[1] = ppid (4), f[11] = utime (14), f[12] = stime (15)
    let ppid = f.get(1)?.parse().ok()?;
    let user = f.get(11)?.parse::<u64>().ok()?;
    let sys = f.get(12)?.parse::<u64>().ok()?;
    Some((comm, ppid, user, sys))
}

/// User/system ticks and context switches (voluntary + involuntary, every thread) of `root`
/// and its direct children.
fn tree_detail(procs: &HashMap<u32, (String, u32, u64)>, root: u32) -> Detail {
    let mut d = Detail::default();
    for (pid, (_, ppid, _)) in procs {
        if *pid != root && *ppid != root {
            continue;
        }
        if let Some((_, _, user, sys)) = proc_stat_split(&format!("/proc/{pid}/stat")) {
            d.user += user;
            d.sys += sys;
        }
        let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let status = fs::read_to_string(t.path().join("status")).unwrap_or_default();
            for line in status.lines() {
                if let Some(v) = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    d.ctx_switches += v.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    d
}

/// Who used the CPUs during one measured run.
#[derive(Clone, Debug, Default)]
pub(crate) struct CpuUse {
    pub(crate) wall_s: f64,
    pub(crate) sim_s: f64,
    pub(crate) proxy_s: f64,
    pub(crate) wrk_s: f64,
    /// System (kernel) part of `sim_s` and `proxy_s`.
    pub(crate) sim_sys_s: f64,
    pub(crate) proxy_sys_s: f64,
    /// Context switches of the upstream's and the proxy's threads.
    pub(crate) sim_ctx: u64,
    pub(crate) proxy_ctx: u64,
    /// Busy time on all cores not attributed to the three (kernel threads, other processes).
    pub(crate) other_s: f64,
    /// Busy share of each core over the run (0–1).
    pub(crate) core_busy: Vec<f64>,
    pub(crate) steal: f64,
    /// Other processes that used more than 2 % of a CPU during the run.
    pub(crate) noisy: Vec<(String, f64)>,
}

impl CpuUse {
    pub(crate) fn between(
        a: &Snapshot,
        b: &Snapshot,
        ours: &HashSet<u32>,
        wrk_s: f64,
        tck: f64,
    ) -> Self {
        let sim_s = b.tree_ticks(a.sim).saturating_sub(a.tree_ticks(a.sim)) as f64 / tck;
        let proxy_s =
            a.proxy
                .map_or(0, |p| b.tree_ticks(p).saturating_sub(a.tree_ticks(p))) as f64
                / tck;
        let mut busy_s = 0.0;
        let mut total_s = 0.0;
        let mut steal = 0.0;
        let mut core_busy = Vec::new();
        for (x, y) in a.cores.iter().zip(&b.cores) {
            let busy = y.0.saturating_sub(x.0) as f64;
            let total = y.2.saturating_sub(x.2).max(1) as f64;
            steal += y.1.saturating_sub(x.1) as f64;
            busy_s += busy / tck;
            total_s += total / tck;
            core_busy.push(busy / total);
        }
        let ncores = a.cores.len().max(1) as f64;
        let wall_s = total_s / ncores;
        let mut noisy = Vec::new();
        for (pid, (comm, _, t1)) in &b.procs {
            if ours.contains(pid) || a.proxy == Some(*pid) {
                continue;
            }
            let t0 = a.procs.get(pid).map_or(0, |x| x.2);
            let used = t1.saturating_sub(t0) as f64 / tck;
            if wall_s > 0.0 && used / wall_s > 0.02 {
                noisy.push((format!("{comm}[{pid}]"), used / wall_s));
            }
        }
        noisy.sort_by(|x, y| y.1.total_cmp(&x.1));
        let sys = |x: &Detail, y: &Detail| y.sys.saturating_sub(x.sys) as f64 / tck;
        let ctx = |x: &Detail, y: &Detail| y.ctx_switches.saturating_sub(x.ctx_switches);
        CpuUse {
            wall_s,
            sim_s,
            proxy_s,
            wrk_s,
            sim_sys_s: sys(&a.sim_detail, &b.sim_detail),
            proxy_sys_s: sys(&a.proxy_detail, &b.proxy_detail),
            sim_ctx: ctx(&a.sim_detail, &b.sim_detail),
            proxy_ctx: ctx(&a.proxy_detail, &b.proxy_detail),
            other_s: (busy_s - sim_s - proxy_s - wrk_s).max(0.0),
            core_busy,
            steal: steal / tck / total_s.max(1e-9),
            noisy,
        }
    }
}

/// Our own processes (and their children), never counted as noise.
pub(crate) fn ours_pids(sim: u32, procs: &[Proc]) -> HashSet<u32> {
    let mut roots: HashSet<u32> = procs.iter().map(|p| p.pid()).collect();
    roots.insert(sim);
    roots.insert(std::process::id());
    let snap = Snapshot::take(sim, None);
    let mut all = roots.clone();
    for (pid, (_, ppid, _)) in &snap.procs {
        if roots.contains(ppid) {
            all.insert(*pid);
        }
    }
    all
}

/// Waits until no process uses more than 5 % of a CPU (sampled over 2 s), up to `limit`;
/// returns the busy processes seen last (empty = quiet).
pub(crate) fn wait_until_quiet(limit: Duration, tck: f64) -> Vec<(String, f64)> {
    let me = std::process::id();
    let start = Instant::now();
    loop {
        let a = Snapshot::take(0, None);
        std::thread::sleep(Duration::from_secs(2));
        let b = Snapshot::take(0, None);
        let mut busy: Vec<(String, f64)> = b
            .procs
            .iter()
            .filter(|(pid, _)| **pid != me)
            .filter_map(|(pid, (comm, _, t1))| {
                let t0 = a.procs.get(pid).map_or(0, |x| x.2);
                let share = t1.saturating_sub(t0) as f64 / tck / 2.0;
                (share > 0.05).then(|| (format!("{comm}[{pid}]"), share))
            })
            .collect();
        busy.sort_by(|x, y| y.1.total_cmp(&x.1));
        if busy.is_empty() {
            return busy;
        }
        if start.elapsed() >= limit {
            eprintln!(
                "gateway-bench: WARNING: the machine is not quiet, figures will be noisy: {}",
                busy.iter()
                    .map(|(n, s)| format!("{n} {:.0}%", s * 100.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            return busy;
        }
        eprintln!(
            "gateway-bench: waiting for a quiet machine ({} busy)",
            busy[0].0
        );
        std::thread::sleep(Duration::from_secs(5));
    }
}

pub(crate) fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<f64>()
                .ok()
        })
        .unwrap_or(100.0)
}
