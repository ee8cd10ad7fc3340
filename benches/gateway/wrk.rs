//! Load generation: one wrk run against a target with bench/generate-irn.lua, and what it
//! reported.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{anyhow, ensure, Context as _, Result};

use crate::cli::{Layout, Opts};
use crate::targets::Target;

/// What wrk reported, parsed from the `BENCH_RESULT` line of bench/generate-irn.lua.
#[derive(Clone, Debug, Default)]
pub(crate) struct Wrk {
    pub(crate) requests: u64,
    pub(crate) duration_s: f64,
    pub(crate) connect: u64,
    pub(crate) read: u64,
    pub(crate) write: u64,
    /// Responses with a status outside 2xx/3xx.
    pub(crate) non2xx: u64,
    pub(crate) timeout: u64,
    pub(crate) p50_us: u64,
    pub(crate) p90_us: u64,
    pub(crate) p99_us: u64,
    pub(crate) p999_us: u64,
    pub(crate) max_us: u64,
    /// CPU seconds wrk used (user + system), from the shell's `times`.
    pub(crate) cpu_s: f64,
}

impl Wrk {
    pub(crate) fn rps(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.requests as f64 / self.duration_s
        } else {
            0.0
        }
    }

    pub(crate) fn socket_errors(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

pub(crate) fn run_wrk(
    opts: &Opts,
    layout: &Layout,
    t: &Target,
    dir: &Path,
    lua: &Path,
    secs: u64,
) -> Result<Wrk> {
    let taskset = layout
        .wrk
        .as_deref()
        .map_or(String::new(), |c| format!("taskset -c {c} "));
    let script = if opts.open_loop {
        format!(
            "{taskset}'{exe}' --open-loop-load '{url}' --rate {rate} --connections {conns}; rc=$?; times; exit $rc",
            exe = std::env::current_exe()?.display(),
            rate = opts.rate,
            conns = opts.connections,
            url = t.url,
        )
    } else {
        format!(
            "{taskset}wrk -t{threads} -c{conns} -d{secs}s --timeout 5s --latency -s '{lua}' '{url}'; rc=$?; times; exit $rc",
            threads = opts.threads,
            conns = opts.connections,
            lua = lua.display(),
            url = t.url,
        )
    };
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("BENCH_BODY", &t.body)
        .env("BENCH_HEADERS", t.headers_file(dir))
        .env("BENCH_DELAY_MS", delay_ms(opts).to_string())
        .env("BENCH_SECS", secs.to_string())
        .output()
        .context("running wrk")?;
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let log = dir.join(format!("wrk-{}.log", t.kind.name()));
    let mut previous = fs::read_to_string(&log).unwrap_or_default();
    let _ = writeln!(
        previous,
        "$ {script}\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = fs::write(&log, previous);
    ensure!(
        out.status.success(),
        "wrk failed ({}): {}{}",
        out.status,
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find(|l| l.starts_with("BENCH_RESULT "))
        .ok_or_else(|| anyhow!("no BENCH_RESULT line in wrk output:\n{stdout}"))?;
    let kv: HashMap<&str, &str> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|p| p.split_once('='))
        .collect();
    let num = |k: &str| -> Result<u64> {
        let s = kv
            .get(k)
            .ok_or_else(|| anyhow!("wrk result lacks {k}: {line}"))?;
        s.parse::<f64>()
            .map(|f| f as u64)
            .map_err(|_| anyhow!("bad {k} in {line}"))
    };
    // `times` prints the shell's times, then its children's: "0m1.234s 0m0.567s".
    let cpu_s = stdout
        .lines()
        .rev()
        .find(|l| l.contains("m") && l.ends_with('s') && l.split_whitespace().count() == 2)
        .map(|l| l.split_whitespace().filter_map(parse_times).sum())
        .unwrap_or(0.0);
    Ok(Wrk {
        requests: num("requests")?,
        duration_s: num("duration_us")? as f64 / 1e6,
        connect: num("connect")?,
        read: num("read")?,
        write: num("write")?,
        non2xx: num("status")?,
        timeout: num("timeout")?,
        p50_us: num("p50_us")?,
        p90_us: num("p90_us")?,
        p99_us: num("p99_us")?,
        p999_us: num("p999_us")?,
        max_us: num("max_us")?,
        cpu_s,
    })
}

/// The pause wrk's `delay()` puts between an answer and the next request on one connection
/// for `--rate` (0 = none); wrk counts it in whole milliseconds.
pub(crate) fn delay_ms(opts: &Opts) -> u64 {
    if opts.rate == 0 || opts.open_loop {
        0
    } else {
        (u64::from(opts.connections) * 1000 / u64::from(opts.rate)).max(1)
    }
}

/// "1m2.500s" → 62.5
fn parse_times(s: &str) -> Option<f64> {
    let (m, rest) = s.split_once('m')?;
    let secs = rest.strip_suffix('s')?;
    Some(m.parse::<f64>().ok()? * 60.0 + secs.parse::<f64>().ok()?)
}

pub(crate) fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}
