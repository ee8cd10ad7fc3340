//! The Markdown report: per-target medians, the goals, every run, the counters that moved, the
//! profiles; saved under target/bench and written into a results section of BENCHMARKS.md.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::cli::{pin_name, Layout, Opts, TargetKind};
use crate::machine::Machine;
use crate::rounds::RunResult;
use crate::wrk::{delay_ms, ms};

pub(crate) struct Report<'a> {
    pub(crate) opts: &'a Opts,
    pub(crate) layout: &'a Layout,
    pub(crate) machine: &'a Machine,
    pub(crate) loadavg_before: String,
    pub(crate) quiet_before: Vec<(String, f64)>,
    pub(crate) body_len: u64,
    pub(crate) runs: &'a [RunResult],
    pub(crate) skipped: &'a [(TargetKind, String)],
    pub(crate) profile: Option<String>,
}

/// Per-target medians over the rounds.
struct Summary {
    kind: TargetKind,
    rps: f64,
    p50: f64,
    p99: f64,
    non2xx: u64,
    socket_errors: u64,
    failed_checks: usize,
    proxy_us: f64,
    proxy_sys_us: f64,
    proxy_ctx: f64,
    sim_us: f64,
    sim_sys_us: f64,
    wrk_us: f64,
    /// Session store operations per request (gstgate targets whose `/metrics` answered).
    store_ops: Option<f64>,
    core_busy: Vec<f64>,
    rounds: usize,
}

impl Report<'_> {
    fn summaries(&self) -> Vec<Summary> {
        let mut kinds: Vec<TargetKind> = Vec::new();
        for r in self.runs {
            if !kinds.contains(&r.kind) {
                kinds.push(r.kind);
            }
        }
        kinds
            .into_iter()
            .map(|kind| {
                let rs: Vec<&RunResult> = self.runs.iter().filter(|r| r.kind == kind).collect();
                let med = |f: &dyn Fn(&RunResult) -> f64| median(rs.iter().map(|r| f(r)).collect());
                let ncores = rs.first().map_or(0, |r| r.cpu.core_busy.len());
                Summary {
                    kind,
                    rps: med(&|r| r.wrk.rps()),
                    p50: med(&|r| r.wrk.p50_us as f64),
                    p99: med(&|r| r.wrk.p99_us as f64),
                    non2xx: rs.iter().map(|r| r.wrk.non2xx).sum(),
                    socket_errors: rs.iter().map(|r| r.wrk.socket_errors()).sum(),
                    failed_checks: rs.iter().filter(|r| r.post_check.is_some()).count(),
                    proxy_us: med(&|r| r.us_per_req(r.cpu.proxy_s)),
                    proxy_sys_us: med(&|r| r.us_per_req(r.cpu.proxy_sys_s)),
                    proxy_ctx: med(&|r| r.per_req(r.cpu.proxy_ctx as f64)),
                    sim_us: med(&|r| r.us_per_req(r.cpu.sim_s)),
                    sim_sys_us: med(&|r| r.us_per_req(r.cpu.sim_sys_s)),
                    wrk_us: med(&|r| r.us_per_req(r.cpu.wrk_s)),
                    store_ops: {
                        let v: Vec<f64> = rs.iter().filter_map(|r| r.store_ops_per_req()).collect();
                        (!v.is_empty()).then(|| median(v))
                    },
                    core_busy: (0..ncores)
                        .map(|i| med(&|r| r.cpu.core_busy.get(i).copied().unwrap_or(0.0)))
                        .collect(),
                    rounds: rs.len(),
                }
            })
            .collect()
    }

    pub(crate) fn render(&self) -> String {
        let o = self.opts;
        let m = self.machine;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "#### Run: upstream `{}`, pinning `{}` ({})\n",
            o.upstream.name(),
            pin_name(o.pin),
            m.date
        );
        let cmd = o.command.clone().unwrap_or_else(|| {
            format!(
                "cargo bench --bench gateway -- {}",
                std::env::args()
                    .skip(1)
                    .filter(|a| a != "--bench")
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        });
        let _ = writeln!(s, "Command: `{}`\n", cmd.trim());
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(s, "| machine | `{}` |", m.uname);
        let _ = writeln!(
            s,
            "| CPUs | {} × {} ; {} RAM |",
            m.nproc, m.cpu_model, m.mem
        );
        // The `redis` target was asked for (it may have been skipped; its row says why).
        let redis_asked = o.targets.contains(&TargetKind::Redis);
        let _ = writeln!(
            s,
            "| software | {}; {}; {}{}; {} (commit {}) |",
            m.nginx,
            m.wrk,
            if redis_asked {
                format!("{}; ", m.redis)
            } else {
                String::new()
            },
            m.rustc,
            m.gstgate,
            m.commit
        );
        let _ = writeln!(
            s,
            "| load | wrk `-t{} -c{} -d{}s --latency`, {}s warm-up before each run; {} rounds, targets interleaved in the order {}; body {} bytes |",
            o.threads,
            o.connections,
            o.duration.as_secs(),
            o.warmup.as_secs(),
            o.rounds,
            self.runs.iter().filter(|r| r.round == 1).map(|r| r.kind.name()).collect::<Vec<_>>().join(" → "),
            self.body_len
        );
        if o.rate > 0 {
            let _ = writeln!(
                s,
                "| offered load | `--rate {}`: each connection pauses {} ms between an answer and its next request (wrk `delay()`), ≈ {:.0} req/s in all when answers are fast |",
                o.rate,
                delay_ms(o),
                f64::from(o.connections) * 1000.0 / delay_ms(o) as f64
            );
        }
        if o.clients > 1 {
            let _ = writeln!(
                s,
                "| callers | `--clients {}`: the benchmark's client is the last of {} configured |",
                o.clients, o.clients
            );
        }
        if !o.gstgate_env.is_empty() {
            let _ = writeln!(s, "| gstgate environment | `{}` |", o.gstgate_env.join(" "));
        }
        let _ = writeln!(
            s,
            "| upstream | `--upstream {}`: {} |",
            o.upstream.name(),
            o.upstream.describe()
        );
        let _ = writeln!(
            s,
            "| pinning | `--pin {}`: {} |",
            pin_name(o.pin),
            self.layout.describe()
        );
        if redis_asked {
            let _ = writeln!(
                s,
                "| Redis store | target `redis`: gstgate as in `passthrough` with `[store] backend = \"redis\"`, `replicas = 1`, on a redis-server of its own (loopback, `--save \"\" --appendonly no`), pinned as the upstream ({}) |",
                self.layout
                    .sim
                    .as_deref()
                    .map_or("any CPU".to_string(), |c| format!("CPU {c}"))
            );
        }
        let quiet = if self.quiet_before.is_empty() {
            "quiet (no other process above 5 % of a CPU)".to_string()
        } else {
            format!(
                "**not quiet**: {}",
                self.quiet_before
                    .iter()
                    .map(|(n, x)| format!("{n} {:.0}%", x * 100.0))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let _ = writeln!(
            s,
            "| before measuring | load average `{}`; {} |",
            self.loadavg_before, quiet
        );
        let _ = writeln!(s);

        let sums = self.summaries();
        let find = |k: TargetKind| sums.iter().find(|x| x.kind == k);
        let _ = writeln!(s, "##### Median of {} rounds\n", o.rounds);
        let ncores = sums.first().map_or(0, |x| x.core_busy.len());
        let core_cols: String = (0..ncores).map(|i| format!(" CPU{i} busy |")).collect();
        let core_rule: String = (0..ncores).map(|_| "---:|").collect();
        let _ = writeln!(
            s,
            "| target | req/s | p50 ms | p99 ms | non-2xx | socket errors | vs direct | vs nginx | proxy CPU µs/req (sys) | proxy ctx sw/req | upstream CPU µs/req (sys) | wrk CPU µs/req | store ops/request |{core_cols}"
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|{core_rule}"
        );
        for x in &sums {
            let rel = |base: Option<&Summary>| {
                base.filter(|b| b.kind != x.kind && b.rps > 0.0)
                    .map_or("".into(), |b| format!("{:.0} %", 100.0 * x.rps / b.rps))
            };
            let (proxy, proxy_ctx) = if x.kind == TargetKind::Direct {
                ("–".into(), "–".into())
            } else {
                (
                    format!("{:.0} ({:.0})", x.proxy_us, x.proxy_sys_us),
                    format!("{:.1}", x.proxy_ctx),
                )
            };
            let cores: String = x
                .core_busy
                .iter()
                .map(|c| format!(" {:.0} % |", c * 100.0))
                .collect();
            let store_ops = if x.kind.is_gstgate() {
                x.store_ops.map_or("?".to_string(), per_request)
            } else {
                "–".to_string()
            };
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {:.0} ({:.0}) | {:.0} | {} |{}",
                x.kind.label(),
                x.rps,
                x.p50 / 1000.0,
                x.p99 / 1000.0,
                x.non2xx,
                x.socket_errors,
                rel(find(TargetKind::Direct)),
                rel(find(TargetKind::Nginx)),
                proxy,
                proxy_ctx,
                x.sim_us,
                x.sim_sys_us,
                x.wrk_us,
                store_ops,
                cores
            );
        }
        for (k, why) in self.skipped {
            let _ = writeln!(
                s,
                "| {} | not run: {} | | | | | | | | | | | |",
                k.label(),
                why.replace('|', "/").replace('\n', " ")
            );
        }
        if let (Some(mem), Some(red)) = (find(TargetKind::Passthrough), find(TargetKind::Redis)) {
            if mem.rps > 0.0 {
                let _ = writeln!(
                    s,
                    "\nredis vs memory (passthrough): {:.1} % of the requests/s ({:.0} vs {:.0} req/s; p99 {:.2} vs {:.2} ms)",
                    100.0 * red.rps / mem.rps,
                    red.rps,
                    mem.rps,
                    red.p99 / 1000.0,
                    mem.p99 / 1000.0
                );
            }
        }
        if let (Some(gw), Some(di)) = (find(TargetKind::Gateway), find(TargetKind::Dropin)) {
            if gw.rps > 0.0 {
                let _ = writeln!(
                    s,
                    "\ndropin vs gateway: {:.1} % of the requests/s ({:.0} vs {:.0} req/s; p99 {:.2} vs {:.2} ms; proxy CPU {:.0} vs {:.0} µs/req)",
                    100.0 * di.rps / gw.rps,
                    di.rps,
                    gw.rps,
                    di.p99 / 1000.0,
                    gw.p99 / 1000.0,
                    di.proxy_us,
                    gw.proxy_us
                );
            }
        }
        let checks: usize = sums.iter().map(|x| x.failed_checks).sum();
        let _ = writeln!(
            s,
            "\nEvery target was verified before the rounds (HTTP 200, `Status` 1, an `Irn`) and again after every run{}.",
            if checks == 0 { " — all passed".to_string() } else { format!(" — **{checks} post-run checks failed**") }
        );

        let _ = writeln!(s, "\n##### Goals\n");
        let pt = find(TargetKind::Passthrough);
        let ng = find(TargetKind::Nginx);
        let gw = find(TargetKind::Gateway);
        if o.rate > 0 {
            let _ = writeln!(
                s,
                "The goals are judged at full load (no `--rate`); at a fixed offered rate every \
                 target carries about the same req/s, and latency is the point. On a VM the tail \
                 at low load follows the host's steal time (see the `steal` column); the run with \
                 the least steal, per target:\n"
            );
            for x in &sums {
                if let Some(r) = self
                    .runs
                    .iter()
                    .filter(|r| r.kind == x.kind)
                    .min_by(|a, b| a.cpu.steal.total_cmp(&b.cpu.steal))
                {
                    let _ = writeln!(
                        s,
                        "- {}: p50 {:.2} ms, p99 {:.2} ms (round {}, steal {:.1} %)",
                        x.kind.name(),
                        ms(r.wrk.p50_us),
                        ms(r.wrk.p99_us),
                        r.round,
                        100.0 * r.cpu.steal
                    );
                }
            }
        } else {
            let verdict = |ok: bool| if ok { "met" } else { "**missed**" };
            match (pt, ng) {
                (Some(p), Some(n)) => {
                    let _ = writeln!(
                        s,
                        "- passthrough req/s ≥ nginx: {:.0} vs {:.0} ({:+.1} %) — {}",
                        p.rps,
                        n.rps,
                        100.0 * (p.rps / n.rps - 1.0),
                        verdict(p.rps >= n.rps)
                    );
                    let _ = writeln!(
                        s,
                        "- passthrough p99 ≤ nginx p99: {:.2} ms vs {:.2} ms — {}",
                        p.p99 / 1000.0,
                        n.p99 / 1000.0,
                        verdict(p.p99 <= n.p99)
                    );
                }
                _ => {
                    let _ = writeln!(s, "- passthrough vs nginx: not measured in this run");
                }
            }
            match (gw, pt) {
                (Some(g), Some(p)) => {
                    let _ = writeln!(
                        s,
                        "- gateway encryption ≥ 90 % of passthrough req/s: {:.1} % — {}",
                        100.0 * g.rps / p.rps,
                        verdict(g.rps >= 0.9 * p.rps)
                    );
                }
                _ => {
                    let _ = writeln!(s, "- gateway vs passthrough: not measured in this run");
                }
            }
        }
        // Not a goal, the measure behind them: the floor is the stack alone, so the
        // difference is what gstgate's own request path costs.
        if let (Some(p), Some(f)) = (pt, find(TargetKind::Floor)) {
            let _ = writeln!(
                s,
                "\ngstgate's own work: passthrough spends {:.1} µs of proxy CPU per request more \
                 than the floor, a hyper proxy on the same stack doing only what nginx does \
                 ({:.1} vs {:.1} µs).",
                p.proxy_us - f.proxy_us,
                p.proxy_us,
                f.proxy_us
            );
        }

        let _ = writeln!(s, "\n##### Every run\n");
        let _ = writeln!(
            s,
            "| round | target | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | non-2xx | socket errors | proxy µs/req (sys) | proxy ctx sw/req | upstream µs/req (sys) | upstream ctx sw/req | wrk µs/req | store ops/request | other CPU | steal | noisy processes |"
        );
        let _ = writeln!(
            s,
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for r in self.runs {
            let w = &r.wrk;
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {} | {:.0} ({:.0}) | {:.1} | {:.0} | {} | {:.0} % | {:.1} % | {}{} |",
                r.round,
                r.kind.name(),
                w.rps(),
                ms(w.p50_us),
                ms(w.p90_us),
                ms(w.p99_us),
                ms(w.p999_us),
                ms(w.max_us),
                w.non2xx,
                w.socket_errors(),
                if r.kind == TargetKind::Direct { "–".into() } else { format!("{:.0} ({:.0})", r.us_per_req(r.cpu.proxy_s), r.us_per_req(r.cpu.proxy_sys_s)) },
                if r.kind == TargetKind::Direct { "–".into() } else { format!("{:.1}", r.per_req(r.cpu.proxy_ctx as f64)) },
                r.us_per_req(r.cpu.sim_s),
                r.us_per_req(r.cpu.sim_sys_s),
                r.per_req(r.cpu.sim_ctx as f64),
                r.us_per_req(r.cpu.wrk_s),
                if r.kind.is_gstgate() { r.store_ops_per_req().map_or("?".to_string(), per_request) } else { "–".into() },
                100.0 * r.cpu.other_s / r.cpu.wall_s.max(1e-9),
                100.0 * r.cpu.steal,
                r.cpu.noisy.iter().map(|(n, x)| format!("{n} {:.0}%", x * 100.0)).collect::<Vec<_>>().join(", "),
                r.post_check.as_ref().map_or(String::new(), |e| format!(" POST-CHECK FAILED: {}", e.replace('|', "/"))),
            );
        }
        let _ = writeln!(
            s,
            "\n\"µs/req\" is CPU time (user + system, from `/proc`; the system part in brackets) divided \
             by completed requests; \"ctx sw/req\" counts context switches (voluntary and \
             involuntary, all threads; nginx: master and workers); \
             \"store ops/request\" is the increase of `gstgate_store_operations_total` (every op \
             and result) at the target's admin `/metrics` over the measured run, divided by the \
             requests wrk completed in it (0: the request path never touched the session store); \
             \"other CPU\" is busy time on all cores not used by wrk, the upstream, the proxy or \
             the `redis` target's redis-server (kernel threads, interrupts, other processes), as a \
             share of one CPU."
        );

        let _ = writeln!(
            s,
            "\n##### Counters that moved (summed over the measured runs)\n"
        );
        for x in &sums {
            let mut simc: BTreeMap<String, f64> = BTreeMap::new();
            let mut gwc: BTreeMap<String, f64> = BTreeMap::new();
            let mut reqs = 0u64;
            let mut store_cpu_s: Option<f64> = None;
            for r in self.runs.iter().filter(|r| r.kind == x.kind) {
                reqs += r.wrk.requests;
                if let Some(c) = r.store_cpu_s {
                    *store_cpu_s.get_or_insert(0.0) += c;
                }
                for (k, v) in &r.sim_delta {
                    *simc.entry(k.clone()).or_default() += v;
                }
                for (k, v) in &r.metrics_delta {
                    *gwc.entry(k.clone()).or_default() += v;
                }
            }
            let fmt = |m: &BTreeMap<String, f64>| {
                if m.is_empty() {
                    "(none)".to_string()
                } else {
                    m.iter()
                        .map(|(k, v)| format!("`{k}` +{v:.0}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            };
            let _ = write!(
                s,
                "- **{}** — wrk completed {} requests; upstream: {}",
                x.kind.name(),
                reqs,
                fmt(&simc)
            );
            if x.kind.is_gstgate() {
                let _ = write!(s, "; gstgate: {}", fmt(&gwc));
            }
            if let Some(c) = store_cpu_s {
                let _ = write!(
                    s,
                    "; redis-server CPU {:.1} s in all, {:.2} µs/req",
                    c,
                    if reqs == 0 {
                        0.0
                    } else {
                        c * 1e6 / reqs as f64
                    }
                );
            }
            let _ = writeln!(s, " ({} runs)", x.rounds);
        }

        if let Some(p) = &self.profile {
            let _ = writeln!(s, "\n##### Profile\n\n{p}");
        }
        s
    }
}

/// Saves the report under target/bench, and writes it into the results section of
/// BENCHMARKS.md (or of `--report`; `none`: not at all).
pub(crate) fn save(opts: &Opts, manifest: &Path, report: &str) -> Result<()> {
    let out_dir = manifest.join("target/bench");
    fs::create_dir_all(&out_dir)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let copy = out_dir.join(format!("gateway-{stamp}.md"));
    fs::write(&copy, report)?;
    eprintln!("gateway-bench: report saved to {}", copy.display());
    match opts.report.as_deref() {
        Some("none") => {}
        other => {
            let path = other.map_or_else(|| manifest.join("BENCHMARKS.md"), PathBuf::from);
            let mut key = format!(
                "upstream={} pin={}",
                opts.upstream.name(),
                pin_name(opts.pin)
            );
            if opts.rate > 0 {
                let _ = write!(key, " rate={}", opts.rate);
            }
            write_results_section(&path, &key, report)?;
            eprintln!(
                "gateway-bench: results section of {} refreshed",
                path.display()
            );
        }
    }
    Ok(())
}

/// Replaces the results section of `path` marked for this upstream and pinning (appending one
/// if there is none), so that runs with different settings keep their own sections.
fn write_results_section(path: &Path, key: &str, report: &str) -> Result<()> {
    let begin = format!(
        "<!-- BEGIN RESULTS {key}: written by benches/gateway/main.rs; edits inside are overwritten -->"
    );
    let end = format!("<!-- END RESULTS {key} -->");
    let old = fs::read_to_string(path).unwrap_or_default();
    let block = format!("{begin}\n\n{}\n\n{end}", report.trim_end());
    let new = match (old.find(&begin), old.find(&end)) {
        (Some(a), Some(b)) if b > a => format!("{}{}{}", &old[..a], block, &old[b + end.len()..]),
        _ if old.is_empty() => format!("# Benchmarks\n\n{block}\n"),
        _ => format!("{}\n\n{block}\n", old.trim_end()),
    };
    fs::write(path, new).with_context(|| format!("writing {}", path.display()))
}

/// A per-request count for the tables: "0" only when nothing happened at all, and small
/// figures in scientific notation rather than rounded to zero.
fn per_request(x: f64) -> String {
    if x == 0.0 {
        "0".to_string()
    } else if x >= 0.01 {
        format!("{x:.2}")
    } else {
        format!("{x:.1e}")
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
