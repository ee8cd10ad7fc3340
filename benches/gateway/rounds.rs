//! The measurement: the rounds of wrk runs and what each run recorded.

use std::collections::BTreeMap;

use anyhow::Result;

use crate::cli::TargetKind;
use crate::client::{delta, fetch_json, fetch_metrics, flatten_json, store_operations};
use crate::cpu::{ours_pids, CpuUse, Snapshot};
use crate::procs::Proc;
use crate::targets::{verify, Target, Upstream};
use crate::wrk::{ms, run_wrk, Wrk};
use crate::Bench;

/// `--rounds` rounds, each running every verified target once, in the same order: a warm-up,
/// then a measured run with CPU snapshots and counter readings around it, then a check.
pub(crate) fn run_rounds(
    b: &Bench,
    sim: &Upstream,
    procs: &[Proc],
    verified: &[Target],
) -> Result<Vec<RunResult>> {
    let Bench {
        opts,
        layout,
        dir,
        lua,
        clk_tck,
        http,
        ..
    } = b;
    let sim_url = &sim.url;
    let sim = &sim.proc;
    let mut runs: Vec<RunResult> = Vec::new();
    for round in 1..=opts.rounds {
        for t in verified {
            let proxy_root = t.proc_index.map(|i| procs[i].pid());
            let ours = ours_pids(sim.pid(), procs);
            // Warm-up: same load, discarded (fills connection pools, page cache, branch predictors).
            if !opts.warmup.is_zero() {
                run_wrk(opts, layout, t, dir, lua, opts.warmup.as_secs().max(1))?;
            }
            let sim_before = fetch_json(http, &format!("{sim_url}/_sim/counters"));
            let metrics_before = t.admin_url.as_deref().map(|a| fetch_metrics(http, a));
            let snap_before = Snapshot::take(sim.pid(), proxy_root);
            let wrk = run_wrk(opts, layout, t, dir, lua, opts.duration.as_secs())?;
            let snap_after = Snapshot::take(sim.pid(), proxy_root);
            let sim_after = fetch_json(http, &format!("{sim_url}/_sim/counters"));
            let metrics_after = t.admin_url.as_deref().map(|a| fetch_metrics(http, a));
            let post_check = verify(http, t).err().map(|e| format!("{e:#}"));
            let mut cpu = CpuUse::between(&snap_before, &snap_after, &ours, wrk.cpu_s, *clk_tck);
            // The `redis` target's redis-server: its CPU time, taken out of "other".
            let store_cpu_s = t.store_pid.map(|pid| {
                let ticks = |s: &Snapshot| s.procs.get(&pid).map_or(0, |x| x.2);
                ticks(&snap_after).saturating_sub(ticks(&snap_before)) as f64 / *clk_tck
            });
            if let Some(s) = store_cpu_s {
                cpu.other_s = (cpu.other_s - s).max(0.0);
            }
            // Session store operations during the measured run, every op and result.
            let store_ops = match (&metrics_before, &metrics_after) {
                (Some(Some(a)), Some(Some(b))) => {
                    Some((store_operations(b) - store_operations(a)).max(0.0))
                }
                _ => None,
            };
            let sim_delta = match (sim_before, sim_after) {
                (Some(a), Some(b)) => delta(&flatten_json(&a), &flatten_json(&b)),
                _ => BTreeMap::new(),
            };
            let metrics_delta = match (metrics_before, metrics_after) {
                (Some(Some(a)), Some(Some(b))) => delta(&a, &b),
                _ => BTreeMap::new(),
            };
            let r = RunResult {
                round,
                kind: t.kind,
                wrk,
                cpu,
                sim_delta,
                metrics_delta,
                store_ops,
                store_cpu_s,
                post_check,
            };
            eprintln!("gateway-bench: {}", r.one_line());
            runs.push(r);
        }
    }
    Ok(runs)
}

pub(crate) struct RunResult {
    pub(crate) round: usize,
    pub(crate) kind: TargetKind,
    pub(crate) wrk: Wrk,
    pub(crate) cpu: CpuUse,
    /// Upstream counters that moved during the run.
    pub(crate) sim_delta: BTreeMap<String, f64>,
    /// gstgate counters that moved during the run.
    pub(crate) metrics_delta: BTreeMap<String, f64>,
    /// Session store operations (`gstgate_store_operations_total`, all ops and results) during
    /// the run; `None` for a target without an admin listener, or if `/metrics` did not answer.
    pub(crate) store_ops: Option<f64>,
    /// CPU seconds of the target's redis-server during the run (`redis` target).
    pub(crate) store_cpu_s: Option<f64>,
    /// Why the verification after the run failed, if it did.
    pub(crate) post_check: Option<String>,
}

impl RunResult {
    pub(crate) fn us_per_req(&self, cpu_s: f64) -> f64 {
        self.per_req(cpu_s * 1e6)
    }

    pub(crate) fn per_req(&self, x: f64) -> f64 {
        if self.wrk.requests == 0 {
            0.0
        } else {
            x / self.wrk.requests as f64
        }
    }

    /// Store operations per completed request (`None`: not measured).
    pub(crate) fn store_ops_per_req(&self) -> Option<f64> {
        self.store_ops.map(|n| self.per_req(n))
    }

    fn one_line(&self) -> String {
        format!(
            "round {} {:<11} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  non-2xx {}  socket errors {}  cpu/req µs: proxy {:.0} upstream {:.0} wrk {:.0}  other {:.0}%{}{}",
            self.round,
            self.kind.name(),
            self.wrk.rps(),
            ms(self.wrk.p50_us),
            ms(self.wrk.p99_us),
            self.wrk.non2xx,
            self.wrk.socket_errors(),
            self.us_per_req(self.cpu.proxy_s),
            self.us_per_req(self.cpu.sim_s),
            self.us_per_req(self.cpu.wrk_s),
            100.0 * self.cpu.other_s / self.cpu.wall_s.max(1e-9),
            self.store_ops
                .map_or(String::new(), |n| format!("  store ops {n:.0}")),
            self.post_check.as_ref().map_or(String::new(), |e| format!("  POST-CHECK FAILED: {e}")),
        )
    }
}
