//! `--perf`: runs of a target under `perf record`, summarised for the report.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{anyhow, ensure, Context as _, Result};

use crate::cli::{dedup, Layout, Opts};
use crate::cpu::Snapshot;
use crate::procs::{which, Proc};
use crate::targets::{Target, Upstream};
use crate::wrk::run_wrk;
use crate::Bench;

/// `--perf`: profiles one more run of each of those targets (see `profile_run`); the report's
/// profile section, if any.
pub(crate) fn profile_targets(
    b: &Bench,
    sim: &Upstream,
    procs: &[Proc],
    verified: &[Target],
) -> Result<Option<String>> {
    let Bench {
        opts,
        layout,
        dir,
        lua,
        ..
    } = b;
    let sim = &sim.proc;
    let mut profiles = Vec::new();
    for kind in dedup(&opts.perf) {
        let Some(t) = verified.iter().find(|t| t.kind == kind) else {
            profiles.push(format!(
                "(`--perf {}`: that target was not measured)",
                kind.name()
            ));
            continue;
        };
        let snap = Snapshot::take(sim.pid(), None);
        let proxy_pids: Vec<u32> = match t.proc_index.map(|i| procs[i].pid()) {
            Some(root) => snap
                .procs
                .iter()
                .filter(|(pid, (_, ppid, _))| **pid == root || *ppid == root)
                .map(|(pid, _)| *pid)
                .collect(),
            None => vec![],
        };
        eprintln!("gateway-bench: profiling {}", kind.name());
        profiles.push(profile_run(
            opts,
            layout,
            t,
            dir,
            lua,
            &proxy_pids,
            sim.pid(),
        )?);
    }
    let profile = (!profiles.is_empty()).then(|| profiles.join("\n"));
    Ok(profile)
}

/// Frames worth showing in the inclusive ("children") view of a proxy's profile: gstgate's own
/// phases and the libraries and syscalls they spend in; generic executor frames are left out.
const PROFILE_FRAMES: &[&str] = &[
    "gstgate::",
    "reqwest::async_impl::client::Client::execute_request",
    "hyper_util::client::legacy::client::Client",
    "hyper::proto::h1::role",
    "hyper::proto::h1::dispatch::Dispatcher<D,Bs,I,T>::poll_read",
    "hyper::proto::h1::dispatch::Dispatcher<D,Bs,I,T>::poll_write",
    "tracing_subscriber::fmt::Subscriber",
    "tracing_core::field::Visit",
    "serde_json::de::from_trait",
    "serde_json::ser::",
    "prometheus_client",
    "[k] do_syscall_64",
    "writev",
    "recvfrom",
    "__libc_write",
    "__GI___libc_malloc",
    "__GI___libc_free",
    "aes::",
    "base64::",
    "sha2::",
    "[k] schedule",
    "epoll_wait",
];

/// Two more runs of `t` under `perf record` (CPU-clock sampling; this VM has no hardware
/// counters): a flat profile of the proxy and the upstream, kernel included, for self time;
/// then user-space-only DWARF call graphs of the proxy, for the inclusive time of its phases.
/// Returns the interesting parts of `perf report`.
fn profile_run(
    opts: &Opts,
    layout: &Layout,
    t: &Target,
    dir: &Path,
    lua: &Path,
    proxy_pids: &[u32],
    upstream_pid: u32,
) -> Result<String> {
    ensure!(
        which("perf").is_some(),
        "`--perf` needs perf (Debian: linux-perf)"
    );
    let name = t.kind.name();
    let secs = opts.duration.as_secs().min(10);
    let pid_list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
    // For the direct target there is no proxy: the upstream is what is examined.
    let focus = if proxy_pids.is_empty() {
        vec![upstream_pid]
    } else {
        proxy_pids.to_vec()
    };
    let mut both = focus.clone();
    if !proxy_pids.is_empty() {
        both.push(upstream_pid);
    }
    let flat_cmd = format!("perf record -e cpu-clock -F 999 -p {}", pid_list(&both));
    let graph_cmd = format!(
        "perf record -e cpu-clock:u -F 999 --call-graph dwarf,16384 -p {}",
        pid_list(&focus)
    );
    let flat = dir.join(format!("perf-{name}-flat.data"));
    let graph = dir.join(format!("perf-{name}-graph.data"));
    let rps_flat = record_under_load(opts, layout, t, dir, lua, &flat_cmd, &flat, secs)?;
    let rps_graph = record_under_load(opts, layout, t, dir, lua, &graph_cmd, &graph, secs)?;

    let report = |data: &Path, args: &[&str]| -> Result<String> {
        let out = Command::new("perf")
            .args(["report", "--stdio", "-g", "none", "-i"])
            .arg(data)
            .args(args)
            .output()?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.trim_end().to_string())
            .collect::<Vec<_>>()
            .join("\n"))
    };
    let focus_list = pid_list(&focus);
    let rel = ["--percentage", "relative"];
    let by_process = report(&flat, &["--no-children", "--sort", "comm,pid"])?;
    let self_time = report(
        &flat,
        &[
            &[
                "--no-children",
                "--pid",
                &focus_list,
                "--sort",
                "dso,sym",
                "--percent-limit",
                "0.7",
            ][..],
            &rel[..],
        ]
        .concat(),
    )?;
    let inclusive_all = report(
        &graph,
        &["--children", "--sort", "sym", "--percent-limit", "0.8"],
    )?;
    let inclusive: String = inclusive_all
        .lines()
        .filter(|l| PROFILE_FRAMES.iter().any(|f| l.contains(f)))
        .take(50)
        .collect::<Vec<_>>()
        .join("\n");
    fs::write(
        dir.join(format!("perf-{name}.txt")),
        format!("{by_process}\n\n{self_time}\n\n{inclusive_all}\n"),
    )?;
    let who = if proxy_pids.is_empty() {
        "upstream"
    } else {
        "proxy"
    };
    Ok(format!(
        "###### {name}\n\n\
         Flat profile: `{flat_cmd}` for {secs} s ({rps_flat:.0} req/s meanwhile). In a VM \
         without a PMU, cpu-clock samples that fall while interrupts are disabled are charged \
         to the instruction that re-enables them, so kernel network work (loopback softirq, \
         waking the other CPU: `kvm_kick_cpu`) shows up as `_raw_spin_unlock_irqrestore`.\n\n\
         Samples by process (the user/system split per request is in the tables above, \
         from `/proc`):\n\n```\n{by_process}\n```\n\n\
         The {who}'s self time by symbol (≥ 0.7 %):\n\n```\n{self_time}\n```\n\n\
         Call graphs, user space only: `{graph_cmd}` ({rps_graph:.0} req/s meanwhile). \
         Inclusive share of the {who}'s *user-space* samples in its own phases and the \
         libraries and syscall wrappers they spend in (≥ 0.8 %; executor frames omitted):\n\n\
         ```\n{inclusive}\n```\n",
    ))
}

/// Runs `perf_cmd -o data -- sleep secs` while wrk loads `t`; returns wrk's req/s.
#[allow(clippy::too_many_arguments)]
fn record_under_load(
    opts: &Opts,
    layout: &Layout,
    t: &Target,
    dir: &Path,
    lua: &Path,
    perf_cmd: &str,
    data: &Path,
    secs: u64,
) -> Result<f64> {
    let log = dir.join("perf-record.log");
    let mut rec = Command::new("perf");
    rec.args(perf_cmd.split_whitespace().skip(1));
    rec.arg("-q").arg("-o").arg(data);
    rec.args(["--", "sleep", &secs.to_string()]);
    rec.stdout(Stdio::null()).stderr(File::create(&log)?);
    // wrk starts first and runs a little longer than the recording: every sample is under load.
    let wrk_thread = {
        let (opts, layout, dir, lua) = (
            opts.clone(),
            layout.clone(),
            dir.to_path_buf(),
            lua.to_path_buf(),
        );
        let t = Target {
            kind: t.kind,
            url: t.url.clone(),
            body: t.body.clone(),
            headers: t.headers.clone(),
            proc_index: None,
            admin_url: None,
            store_pid: None,
            reply_sek: None,
        };
        std::thread::spawn(move || run_wrk(&opts, &layout, &t, &dir, &lua, secs + 2))
    };
    std::thread::sleep(Duration::from_millis(700));
    let status = rec.status().context("running perf record")?;
    let wrk = wrk_thread
        .join()
        .map_err(|_| anyhow!("wrk thread panicked"))??;
    ensure!(
        status.success(),
        "perf record failed: {}",
        fs::read_to_string(&log).unwrap_or_default()
    );
    Ok(wrk.rps())
}
