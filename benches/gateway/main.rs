//! The gateway benchmark: one generate-IRN request, four ways, on one machine.
//!
//! Targets, all doing `POST /eicore/v1.03/Invoice` with the same ~2.7 KB NIC e-invoice
//! (`bench/invoice.json`):
//! 1. `direct` — the upstream itself, with the five e-invoice headers sent by the load
//!    generator (the ceiling: no proxy can be faster than its upstream);
//! 2. `nginx` — Debian's nginx as a plain reverse proxy injecting the same headers statically
//!    (`bench/nginx.conf.in`): what a user would otherwise deploy;
//! 3. `passthrough` — `gstgate serve` with `encryption = "passthrough"` (bodies untouched);
//! 4. `gateway` — `gstgate serve` with `encryption = "gateway"`: the caller sends plain JSON,
//!    gstgate encrypts it with the SEK and decrypts the reply.
//!
//! The upstream (`--upstream`) is either the lean server of `upstream.rs` (default) or
//! the built-in simulator; both accept a `{"Data": {..}}` object and answer it in plain JSON
//! (the "enriched GSP" form), so targets 1–3 carry no payload crypto, while in target 4 gstgate
//! and the upstream each do one AES round trip per request, as with the real IRP.
//!
//! Method: every target is verified first (HTTP 200, `Status` 1 and an `Irn` in the reply);
//! then `--rounds` rounds, each running the targets in the same interleaved order (A B C D,
//! A B C D …) with `wrk` for a warm-up and a measurement; the report gives every run and the
//! median of the rounds. Around every run the harness samples CPU time per process
//! (`/proc/PID/stat`) and per core (`/proc/stat`), so the report can say who was busy: the
//! proxy, the upstream, the load generator, or something else on the machine. Processes are
//! pinned with `taskset` according to `--pin` (see `BENCHMARKS.md` for the reasoning).
//!
//! Run it with `bench/run.sh` (installs nginx and wrk when missing), or directly:
//! `cargo bench --bench gateway -- --rounds 5 --duration 10s`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::Read as _;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use clap::{Parser, ValueEnum};
use gstgate::crypto::{b64_encode, AesKey, PublicKey};
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

mod upstream;

/// The taxpayer every request is for (valid checksum; also the seller in `bench/invoice.json`).
const GSTIN: &str = "27AAPFU0939F1ZV";
/// The GSP client credentials the upstream accepts.
const CLIENT_ID: &str = "bench-client-id";
const CLIENT_SECRET: &str = "bench-client-secret";
/// The API key the benchmark client presents to gstgate.
const API_KEY: &str = "bench-api-key-0123456789";
const ADMIN_TOKEN: &str = "bench-admin-token-0123456789";
const AUTH_PATH: &str = "/eivital/v1.04/auth";
const INVOICE_PATH: &str = "/eicore/v1.03/Invoice";

/// One upstream user per consumer of a session, so that no target's login can disturb
/// another's token or SEK (a NIC re-login may hand out a new SEK).
const USER_DIRECT: (&str, &str) = ("bench_direct", "Direct#Pass1");
const USER_PASSTHROUGH: (&str, &str) = ("bench_passthrough", "Passthrough#Pass1");
const USER_GATEWAY: (&str, &str) = ("bench_gateway", "Gateway#Pass1");

/// Command line; every flag can also be given as an environment variable (`BENCH_ROUNDS` …).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "gateway-bench",
    about = "generate-IRN throughput and latency: direct, nginx, gstgate"
)]
struct Opts {
    /// Rounds; each runs every target once, interleaved. The report gives the median.
    #[arg(long, env = "BENCH_ROUNDS", default_value_t = 5)]
    rounds: usize,
    /// Measured duration of each run (whole seconds; wrk's resolution).
    #[arg(long, env = "BENCH_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Unmeasured warm-up before each measured run (same connections, discarded).
    #[arg(long, env = "BENCH_WARMUP", default_value = "3s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Concurrent keep-alive connections held by wrk.
    #[arg(long, env = "BENCH_CONNECTIONS", default_value_t = 64)]
    connections: u32,
    /// Offered load in requests/s (all connections together) instead of as fast as possible:
    /// each connection waits connections/rate between an answer and its next request, so the
    /// latencies are those of every target at the same load, below saturation. 0 = no limit.
    #[arg(long, env = "BENCH_RATE", default_value_t = 0)]
    rate: u32,
    /// wrk threads (one event loop each).
    #[arg(long, env = "BENCH_THREADS", default_value_t = 1)]
    threads: u32,
    /// The upstream: `fast` = the lean benchmark upstream (benches/gateway/upstream.rs);
    /// `sim` = the built-in simulator, `gstgate sim --plain --allow-duplicate-irn`.
    #[arg(long, env = "BENCH_UPSTREAM", value_enum, default_value_t = UpstreamKind::Fast)]
    upstream: UpstreamKind,
    /// CPU layout: `split` = load generator on CPU 0, proxy and upstream on the others;
    /// `proxy-alone` = load generator and upstream on CPU 0, proxy on the others;
    /// `none` = no pinning.
    #[arg(long, env = "BENCH_PIN", value_enum, default_value_t = Pin::Split)]
    pin: Pin,
    /// Targets, in the order each round runs them.
    #[arg(
        long,
        env = "BENCH_TARGETS",
        value_enum,
        value_delimiter = ',',
        default_value = "direct,nginx,passthrough,gateway"
    )]
    targets: Vec<TargetKind>,
    /// Markdown file whose results section is replaced with this run's (`none`: do not write).
    #[arg(long, env = "BENCH_REPORT")]
    report: Option<String>,
    /// Before measuring, wait up to this long for the machine to be quiet (no other process
    /// using more than 5 % of a CPU); 0 = only warn.
    #[arg(long, env = "BENCH_WAIT_QUIET", default_value = "0s", value_parser = humantime::parse_duration)]
    wait_quiet: Duration,
    /// After the rounds, profile one more run of each of these targets with `perf record`
    /// (proxy and upstream processes, DWARF call graphs) and add the result to the report.
    #[arg(long, env = "BENCH_PERF", value_enum, value_delimiter = ',')]
    perf: Vec<TargetKind>,
    /// Extra environment for the two `gstgate serve` processes, KEY=VALUE (repeatable), for
    /// experiments: `RUST_LOG=warn`, `GSTGATE_LOG_FORMAT=json`, `LD_PRELOAD=…`.
    #[arg(long = "gstgate-env", value_name = "KEY=VALUE")]
    gstgate_env: Vec<String>,
    /// Keep the scratch directory (configs, logs, wrk output) and print its path.
    #[arg(long, env = "BENCH_KEEP")]
    keep: bool,
    /// The command line to record in the report (set by bench/run.sh).
    #[arg(long, env = "BENCH_COMMAND", hide = true)]
    command: Option<String>,
    /// Internal: run as the lean upstream with this JSON config (see upstream.rs).
    #[arg(long, hide = true)]
    serve_upstream: Option<PathBuf>,
    /// Passed by `cargo bench` (not by `cargo test`, and then nothing runs: see `main`).
    #[arg(long, hide = true)]
    bench: bool,
}

/// Which server plays the GSP.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum UpstreamKind {
    Fast,
    Sim,
}

impl UpstreamKind {
    fn name(self) -> &'static str {
        match self {
            UpstreamKind::Fast => "fast",
            UpstreamKind::Sim => "sim",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            UpstreamKind::Fast => "the lean benchmark upstream (`benches/gateway/upstream.rs`: real RSA login, token and header checks, AES when `Data` is a string, IRN as the simulator derives it, a repeat generate answers the stored document, no request log)",
            UpstreamKind::Sim => "the built-in simulator, `gstgate sim --plain --allow-duplicate-irn`",
        }
    }
}

/// Which CPUs each role runs on.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Pin {
    Split,
    ProxyAlone,
    None,
}

/// The CPU lists (`taskset -c` syntax) for the three roles; `None` = not pinned.
#[derive(Clone, Debug)]
struct Layout {
    wrk: Option<String>,
    sim: Option<String>,
    proxy: Option<String>,
}

impl Layout {
    fn new(pin: Pin, ncpu: usize) -> Self {
        let rest = if ncpu > 2 {
            format!("1-{}", ncpu - 1)
        } else {
            "1".to_string()
        };
        match (pin, ncpu) {
            (Pin::None, _) | (_, 0..=1) => Layout {
                wrk: None,
                sim: None,
                proxy: None,
            },
            (Pin::Split, _) => Layout {
                wrk: Some("0".into()),
                sim: Some(rest.clone()),
                proxy: Some(rest),
            },
            (Pin::ProxyAlone, _) => Layout {
                wrk: Some("0".into()),
                sim: Some("0".into()),
                proxy: Some(rest),
            },
        }
    }

    fn describe(&self) -> String {
        let f = |c: &Option<String>| {
            c.as_deref()
                .map_or("any".to_string(), |c| format!("CPU {c}"))
        };
        format!(
            "wrk: {}; upstream: {}; proxy (nginx / gstgate): {}",
            f(&self.wrk),
            f(&self.sim),
            f(&self.proxy)
        )
    }
}

/// The four things measured.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum TargetKind {
    Direct,
    Nginx,
    Passthrough,
    Gateway,
}

impl TargetKind {
    fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Nginx => "nginx",
            TargetKind::Passthrough => "passthrough",
            TargetKind::Gateway => "gateway",
        }
    }

    fn label(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct to the upstream (the limit)",
            TargetKind::Nginx => "nginx reverse proxy, static headers",
            TargetKind::Passthrough => "gstgate, passthrough",
            TargetKind::Gateway => "gstgate, gateway encryption",
        }
    }
}

fn main() -> ExitCode {
    // `cargo test --all-targets` builds and runs bench targets too, without `--bench` and with
    // libtest's arguments (`--test-threads=4` …): a benchmark there would cost minutes and
    // measure a debug build, so it only says so.
    let args: Vec<String> = std::env::args().collect();
    let under_cargo_bench = args.iter().any(|a| a == "--bench");
    let internal = args.iter().any(|a| a == "--serve-upstream");
    if !internal && (!under_cargo_bench || cfg!(debug_assertions)) {
        eprintln!(
            "gateway-bench: skipped (not under `cargo bench`); run `bench/run.sh` or \
             `cargo bench --bench gateway`"
        );
        return ExitCode::SUCCESS;
    }
    let opts = Opts::parse();
    if let Some(config) = &opts.serve_upstream {
        return match upstream::main(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench-upstream: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gateway-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(opts: Opts) -> Result<()> {
    ensure!(opts.rounds >= 1, "--rounds must be at least 1");
    ensure!(
        opts.duration.as_secs() >= 1,
        "--duration must be at least 1s"
    );
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_gstgate"));
    for tool in ["wrk", "nginx", "taskset", "bash"] {
        ensure!(
            which(tool).is_some(),
            "`{tool}` not found on PATH (bench/run.sh installs nginx and wrk)"
        );
    }
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    let layout = Layout::new(opts.pin, ncpu);
    let clk_tck = clock_ticks();
    let machine = Machine::collect(&bin, &manifest);
    eprintln!("gateway-bench: {}", layout.describe());

    let scratch = tempfile::Builder::new()
        .prefix("gstgate-bench-")
        .tempdir()?;
    let dir = scratch.path().to_path_buf();
    let http = Http::new()?;

    // The upstream ("sim" below, whichever plays it).
    let sim_pub = dir.join("upstream-public.pem");
    let users = [USER_DIRECT, USER_PASSTHROUGH, USER_GATEWAY];
    let (mut sim, ready) = match opts.upstream {
        UpstreamKind::Sim => {
            let mut cmd = pinned(layout.sim.as_deref(), &bin);
            cmd.args([
                "sim",
                "--listen",
                "127.0.0.1:0",
                "--plain",
                "--allow-duplicate-irn",
            ]);
            cmd.arg("--key-file").arg(dir.join("sim-key.pem"));
            cmd.arg("--public-key-out").arg(&sim_pub);
            for (user, pass) in users {
                cmd.args(["--user", &format!("{GSTIN}:{user}:{pass}")]);
            }
            cmd.args(["--client", &format!("{CLIENT_ID}:{CLIENT_SECRET}")]);
            (
                Proc::spawn("sim", cmd, &dir)?,
                "gstgate-sim listening on http://",
            )
        }
        UpstreamKind::Fast => {
            let cfg = upstream::UpstreamConfig {
                listen: "127.0.0.1:0".parse()?,
                public_key_out: sim_pub.clone(),
                users: users
                    .iter()
                    .map(|(u, p)| (GSTIN.into(), u.to_string(), p.to_string()))
                    .collect(),
                clients: vec![(CLIENT_ID.into(), CLIENT_SECRET.into())],
            };
            let cfg_path = dir.join("upstream.json");
            fs::write(&cfg_path, serde_json::to_vec_pretty(&cfg)?)?;
            let mut cmd = pinned(layout.sim.as_deref(), &std::env::current_exe()?);
            cmd.arg("--serve-upstream").arg(&cfg_path);
            (
                Proc::spawn("upstream", cmd, &dir)?,
                "bench-upstream listening on http://",
            )
        }
    };
    let line = sim.wait_for_line(ready, Duration::from_secs(120))?;
    let sim_addr = after(&line, ready)?;
    let sim_url = format!("http://{sim_addr}");
    eprintln!(
        "gateway-bench: upstream ({}) at {sim_url}",
        opts.upstream.name()
    );
    let public_key = PublicKey::from_pem_or_cert(
        &fs::read(&sim_pub).with_context(|| format!("reading {}", sim_pub.display()))?,
    )?;

    // The request bodies: the envelope for targets that forward as is, plain for gateway mode.
    let invoice = invoice_json(&manifest)?;
    let body_plain = dir.join("body-plain.json");
    let body_envelope = dir.join("body-envelope.json");
    fs::write(&body_plain, serde_json::to_vec(&invoice)?)?;
    fs::write(
        &body_envelope,
        serde_json::to_vec(&json!({ "Data": invoice }))?,
    )?;
    let body_len = fs::metadata(&body_envelope)?.len();

    // A token for the targets that do not log in themselves.
    let token = login(&http, &sim_url, &public_key, USER_DIRECT)
        .context("logging in to the upstream for the direct and nginx targets")?;

    let serve_ok = bin_supports_serve(&bin);
    let mut skipped: Vec<(TargetKind, String)> = Vec::new();
    let mut targets: Vec<Target> = Vec::new();
    let mut procs: Vec<Proc> = Vec::new();
    for &kind in dedup(&opts.targets).iter() {
        let prepared = match kind {
            TargetKind::Direct => Ok(Target {
                kind,
                url: format!("{sim_url}{INVOICE_PATH}"),
                body: body_envelope.clone(),
                headers: vec![
                    ("client_id".into(), CLIENT_ID.into()),
                    ("client_secret".into(), CLIENT_SECRET.into()),
                    ("Gstin".into(), GSTIN.into()),
                    ("user_name".into(), USER_DIRECT.0.into()),
                    ("AuthToken".into(), token.clone()),
                ],
                proc_index: None,
                admin_url: None,
            }),
            TargetKind::Nginx => start_nginx(&manifest, &dir, &layout, sim_addr, &token).map(|p| {
                let url = p.1.clone();
                procs.push(p.0);
                Target {
                    kind,
                    url,
                    body: body_envelope.clone(),
                    headers: vec![],
                    proc_index: Some(procs.len() - 1),
                    admin_url: None,
                }
            }),
            TargetKind::Passthrough | TargetKind::Gateway if !serve_ok => {
                Err(anyhow!("`gstgate serve` is not available in this build"))
            }
            TargetKind::Passthrough | TargetKind::Gateway => {
                let gateway = kind == TargetKind::Gateway;
                start_gstgate(
                    &bin,
                    &dir,
                    &layout,
                    &sim_url,
                    &sim_pub,
                    gateway,
                    &opts.gstgate_env,
                )
                .map(|(p, proxy, admin)| {
                    procs.push(p);
                    Target {
                        kind,
                        url: format!("{proxy}{INVOICE_PATH}"),
                        body: if gateway {
                            body_plain.clone()
                        } else {
                            body_envelope.clone()
                        },
                        headers: vec![
                            ("x-api-key".into(), API_KEY.into()),
                            ("gstin".into(), GSTIN.into()),
                        ],
                        proc_index: Some(procs.len() - 1),
                        admin_url: Some(admin),
                    }
                })
            }
        };
        match prepared {
            Ok(t) => targets.push(t),
            Err(e) => {
                eprintln!("gateway-bench: skipping {}: {e:#}", kind.name());
                skipped.push((kind, format!("{e:#}")));
            }
        }
    }

    // A benchmark of errors is worthless: every target must produce a real IRN first.
    let mut verified: Vec<Target> = Vec::new();
    for t in targets {
        fs::write(t.headers_file(&dir), t.headers_text())?;
        match verify(&http, &t) {
            Ok(irn) => {
                eprintln!(
                    "gateway-bench: {} verified (Status 1, Irn {}…)",
                    t.kind.name(),
                    &irn[..irn.len().min(16)]
                );
                verified.push(t);
            }
            Err(e) => {
                eprintln!(
                    "gateway-bench: skipping {}: verification failed: {e:#}",
                    t.kind.name()
                );
                skipped.push((t.kind, format!("verification failed: {e:#}")));
            }
        }
    }
    ensure!(!verified.is_empty(), "no target passed verification");

    let quiet_before = wait_until_quiet(opts.wait_quiet, clk_tck);
    let loadavg_before = fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();

    let lua = manifest.join("bench/generate-irn.lua");
    let mut runs: Vec<RunResult> = Vec::new();
    for round in 1..=opts.rounds {
        for t in &verified {
            let proxy_root = t.proc_index.map(|i| procs[i].pid());
            let ours = ours_pids(sim.pid(), &procs);
            // Warm-up: same load, discarded (fills connection pools, page cache, branch predictors).
            if !opts.warmup.is_zero() {
                run_wrk(&opts, &layout, t, &dir, &lua, opts.warmup.as_secs().max(1))?;
            }
            let sim_before = fetch_json(&http, &format!("{sim_url}/_sim/counters"));
            let metrics_before = t.admin_url.as_deref().map(|a| fetch_metrics(&http, a));
            let snap_before = Snapshot::take(sim.pid(), proxy_root);
            let wrk = run_wrk(&opts, &layout, t, &dir, &lua, opts.duration.as_secs())?;
            let snap_after = Snapshot::take(sim.pid(), proxy_root);
            let sim_after = fetch_json(&http, &format!("{sim_url}/_sim/counters"));
            let metrics_after = t.admin_url.as_deref().map(|a| fetch_metrics(&http, a));
            let post_check = verify(&http, t).err().map(|e| format!("{e:#}"));
            let cpu = CpuUse::between(&snap_before, &snap_after, &ours, wrk.cpu_s, clk_tck);
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
                post_check,
            };
            eprintln!("gateway-bench: {}", r.one_line());
            runs.push(r);
        }
    }

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
            &opts,
            &layout,
            t,
            &dir,
            &lua,
            &proxy_pids,
            sim.pid(),
        )?);
    }
    let profile = (!profiles.is_empty()).then(|| profiles.join("\n"));

    let report = Report {
        opts: &opts,
        layout: &layout,
        machine: &machine,
        loadavg_before,
        quiet_before,
        body_len,
        runs: &runs,
        skipped: &skipped,
        profile,
    }
    .render();
    println!("{report}");

    let out_dir = manifest.join("target/bench");
    fs::create_dir_all(&out_dir)?;
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let copy = out_dir.join(format!("gateway-{stamp}.md"));
    fs::write(&copy, &report)?;
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
            write_results_section(&path, &key, &report)?;
            eprintln!(
                "gateway-bench: results section of {} refreshed",
                path.display()
            );
        }
    }

    drop(procs);
    drop(sim);
    if opts.keep {
        let kept = scratch.keep();
        eprintln!(
            "gateway-bench: scratch directory kept at {}",
            kept.display()
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Targets

/// One prepared target.
struct Target {
    kind: TargetKind,
    /// Full URL of the generate-IRN endpoint.
    url: String,
    /// Request body file.
    body: PathBuf,
    /// Headers the load generator sends besides `Content-Type: application/json`.
    headers: Vec<(String, String)>,
    /// Index into the proxy processes, if the target is a proxy.
    proc_index: Option<usize>,
    /// gstgate's admin listener.
    admin_url: Option<String>,
}

impl Target {
    fn headers_file(&self, dir: &Path) -> PathBuf {
        dir.join(format!("headers-{}.txt", self.kind.name()))
    }

    fn headers_text(&self) -> String {
        self.headers
            .iter()
            .map(|(k, v)| format!("{k}: {v}\n"))
            .collect()
    }
}

fn start_nginx(
    manifest: &Path,
    dir: &Path,
    layout: &Layout,
    sim_addr: &str,
    token: &str,
) -> Result<(Proc, String)> {
    let ndir = dir.join("nginx");
    fs::create_dir_all(&ndir)?;
    let port = free_port()?;
    let listen = format!("127.0.0.1:{port}");
    let template = fs::read_to_string(manifest.join("bench/nginx.conf.in"))?;
    let conf = template
        .replace("@DIR@", &ndir.display().to_string())
        .replace("@LISTEN@", &listen)
        .replace("@UPSTREAM@", sim_addr)
        .replace("@CLIENT_ID@", CLIENT_ID)
        .replace("@CLIENT_SECRET@", CLIENT_SECRET)
        .replace("@GSTIN@", GSTIN)
        .replace("@USER@", USER_DIRECT.0)
        .replace("@TOKEN@", token);
    let conf_path = ndir.join("nginx.conf");
    fs::write(&conf_path, conf)?;
    let mut cmd = pinned(layout.proxy.as_deref(), Path::new("nginx"));
    cmd.arg("-p").arg(&ndir).arg("-c").arg(&conf_path);
    let mut p = Proc::spawn("nginx", cmd, dir)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        p.check_alive()?;
        if TcpStream::connect(&listen).is_ok() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "nginx did not open {listen}: {}",
            p.log_tail()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok((p, format!("http://{listen}{INVOICE_PATH}")))
}

fn start_gstgate(
    bin: &Path,
    dir: &Path,
    layout: &Layout,
    sim_url: &str,
    sim_pub: &Path,
    gateway: bool,
    env: &[String],
) -> Result<(Proc, String, String)> {
    let (mode, (user, pass)) = if gateway {
        ("gateway", USER_GATEWAY)
    } else {
        ("passthrough", USER_PASSTHROUGH)
    };
    let config = format!(
        r#"# gstgate benchmark config ({mode}); written by benches/gateway/main.rs
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"

[store]
backend = "memory"

[[upstream]]
name = "einvoice"
api = "einvoice"
base_url = "{sim_url}"
routes = ["/eivital/", "/eicore/", "/eiewb/"]
auth_path = "{AUTH_PATH}"
public_key = "{pubkey}"
encryption = "{mode}"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
gstin_checksum = "enforce"

[[credential]]
gstin = "{GSTIN}"
username = "{user}"
password = "{pass}"
upstreams = ["einvoice"]

[[client]]
name = "bench"
api_key_sha256 = "{key_hash}"
gstins = ["*"]
"#,
        pubkey = sim_pub.display(),
        key_hash = hex_sha256(API_KEY.as_bytes()),
    );
    let path = dir.join(format!("gstgate-{mode}.toml"));
    fs::write(&path, config)?;
    let mut cmd = pinned(layout.proxy.as_deref(), bin);
    cmd.arg("serve").arg("--config").arg(&path);
    for kv in env {
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| anyhow!("--gstgate-env wants KEY=VALUE, not {kv:?}"))?;
        cmd.env(k, v);
    }
    let mut p = Proc::spawn(&format!("gstgate-{mode}"), cmd, dir)?;
    let line = p.wait_for_line("gstgate ready: proxy http://", Duration::from_secs(60))?;
    // "gstgate ready: proxy http://ADDR admin http://ADDR"
    let proxy = after(&line, "proxy ")?.to_string();
    let admin = after(&line, "admin ")?.to_string();
    Ok((p, proxy, admin))
}

/// Sends the target's request once and insists on a real IRN in the reply.
fn verify(http: &Http, t: &Target) -> Result<String> {
    let mut headers = t.headers.clone();
    headers.push(("content-type".into(), "application/json".into()));
    let body = fs::read(&t.body)?;
    let (status, reply) = http.post(&t.url, &headers, body)?;
    let text = String::from_utf8_lossy(&reply);
    ensure!(status == 200, "HTTP {status}: {}", clip(&text, 400));
    let v: Value = serde_json::from_slice(&reply)
        .with_context(|| format!("reply is not JSON: {}", clip(&text, 400)))?;
    ensure!(
        status_is_one(&v["Status"]),
        "Status is not 1: {}",
        clip(&text, 400)
    );
    let irn = v["Data"]["Irn"]
        .as_str()
        .ok_or_else(|| anyhow!("no Data.Irn in the reply: {}", clip(&text, 400)))?;
    ensure!(!irn.is_empty(), "empty Irn");
    Ok(irn.to_string())
}

fn status_is_one(v: &Value) -> bool {
    v.as_i64() == Some(1) || v.as_str() == Some("1")
}

/// NIC e-invoice login (PROTOCOL.md §1): RSA(B64(json)) with a fresh AppKey; returns the token
/// after checking that the SEK unwraps under that AppKey.
fn login(
    http: &Http,
    sim_url: &str,
    key: &PublicKey,
    (user, pass): (&str, &str),
) -> Result<String> {
    let app_key = AesKey::random();
    let inner = json!({
        "UserName": user,
        "Password": pass,
        "AppKey": app_key.to_base64().as_str(),
        "ForceRefreshAccessToken": false,
    });
    let cipher = key.encrypt(b64_encode(&serde_json::to_vec(&inner)?).as_bytes())?;
    let body = serde_json::to_vec(&json!({ "Data": b64_encode(&cipher) }))?;
    let headers = vec![
        ("client_id".to_string(), CLIENT_ID.to_string()),
        ("client_secret".to_string(), CLIENT_SECRET.to_string()),
        ("Gstin".to_string(), GSTIN.to_string()),
        ("content-type".to_string(), "application/json".to_string()),
    ];
    let (status, reply) = http.post(&format!("{sim_url}{AUTH_PATH}"), &headers, body)?;
    let v: Value = serde_json::from_slice(&reply).with_context(|| {
        format!(
            "HTTP {status}, not JSON: {}",
            clip(&String::from_utf8_lossy(&reply), 300)
        )
    })?;
    ensure!(status_is_one(&v["Status"]), "login failed: {v}");
    let token = v["Data"]["AuthToken"]
        .as_str()
        .ok_or_else(|| anyhow!("no AuthToken: {v}"))?;
    let sek = v["Data"]["Sek"]
        .as_str()
        .ok_or_else(|| anyhow!("no Sek: {v}"))?;
    app_key
        .unwrap_key(sek)
        .context("the SEK does not unwrap under our AppKey")?;
    Ok(token.to_string())
}

/// `bench/invoice.json`, compacted, dated today (IST) so that no date rule can reject it.
fn invoice_json(manifest: &Path) -> Result<Value> {
    let mut v: Value = serde_json::from_slice(&fs::read(manifest.join("bench/invoice.json"))?)?;
    let ist = chrono::Utc::now() + chrono::Duration::minutes(330);
    let today = ist.format("%d/%m/%Y").to_string();
    v["DocDtls"]["Dt"] = json!(today);
    v["RefDtls"]["DocPerdDtls"]["InvStDt"] = json!(today);
    v["RefDtls"]["DocPerdDtls"]["InvEndDt"] = json!(today);
    Ok(v)
}

fn bin_supports_serve(bin: &Path) -> bool {
    Command::new(bin)
        .args(["serve", "--help"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------------------------
// Load generation

/// What wrk reported, parsed from the `BENCH_RESULT` line of bench/generate-irn.lua.
#[derive(Clone, Debug, Default)]
struct Wrk {
    requests: u64,
    duration_s: f64,
    connect: u64,
    read: u64,
    write: u64,
    /// Responses with a status outside 2xx/3xx.
    non2xx: u64,
    timeout: u64,
    p50_us: u64,
    p90_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
    /// CPU seconds wrk used (user + system), from the shell's `times`.
    cpu_s: f64,
}

impl Wrk {
    fn rps(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.requests as f64 / self.duration_s
        } else {
            0.0
        }
    }

    fn socket_errors(&self) -> u64 {
        self.connect + self.read + self.write + self.timeout
    }
}

fn run_wrk(
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
    let script = format!(
        "{taskset}wrk -t{threads} -c{conns} -d{secs}s --timeout 5s --latency -s '{lua}' '{url}'; rc=$?; times; exit $rc",
        threads = opts.threads,
        conns = opts.connections,
        lua = lua.display(),
        url = t.url,
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .env("BENCH_BODY", &t.body)
        .env("BENCH_HEADERS", t.headers_file(dir))
        .env("BENCH_DELAY_MS", delay_ms(opts).to_string())
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
fn delay_ms(opts: &Opts) -> u64 {
    if opts.rate == 0 {
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

// ---------------------------------------------------------------------------------------------
// CPU accounting

/// CPU ticks per process and per core at one moment.
struct Snapshot {
    /// pid → (command name, parent pid, utime + stime ticks), every process on the machine.
    procs: HashMap<u32, (String, u32, u64)>,
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
    fn take(sim: u32, proxy: Option<u32>) -> Self {
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
fn proc_stat(pid: u32) -> Option<(String, u32, u64)> {
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
struct CpuUse {
    wall_s: f64,
    sim_s: f64,
    proxy_s: f64,
    wrk_s: f64,
    /// System (kernel) part of `sim_s` and `proxy_s`.
    sim_sys_s: f64,
    proxy_sys_s: f64,
    /// Context switches of the upstream's and the proxy's threads.
    sim_ctx: u64,
    proxy_ctx: u64,
    /// Busy time on all cores not attributed to the three (kernel threads, other processes).
    other_s: f64,
    /// Busy share of each core over the run (0–1).
    core_busy: Vec<f64>,
    steal: f64,
    /// Other processes that used more than 2 % of a CPU during the run.
    noisy: Vec<(String, f64)>,
}

impl CpuUse {
    fn between(a: &Snapshot, b: &Snapshot, ours: &HashSet<u32>, wrk_s: f64, tck: f64) -> Self {
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
fn ours_pids(sim: u32, procs: &[Proc]) -> HashSet<u32> {
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
fn wait_until_quiet(limit: Duration, tck: f64) -> Vec<(String, f64)> {
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

fn clock_ticks() -> f64 {
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

// ---------------------------------------------------------------------------------------------
// Results and the report

struct RunResult {
    round: usize,
    kind: TargetKind,
    wrk: Wrk,
    cpu: CpuUse,
    /// Upstream counters that moved during the run.
    sim_delta: BTreeMap<String, f64>,
    /// gstgate counters that moved during the run.
    metrics_delta: BTreeMap<String, f64>,
    /// Why the verification after the run failed, if it did.
    post_check: Option<String>,
}

impl RunResult {
    fn us_per_req(&self, cpu_s: f64) -> f64 {
        self.per_req(cpu_s * 1e6)
    }

    fn per_req(&self, x: f64) -> f64 {
        if self.wrk.requests == 0 {
            0.0
        } else {
            x / self.wrk.requests as f64
        }
    }

    fn one_line(&self) -> String {
        format!(
            "round {} {:<11} {:>8.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  non-2xx {}  socket errors {}  cpu/req µs: proxy {:.0} upstream {:.0} wrk {:.0}  other {:.0}%{}",
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
            self.post_check.as_ref().map_or(String::new(), |e| format!("  POST-CHECK FAILED: {e}")),
        )
    }
}

/// Facts about the machine and the software, for the report.
struct Machine {
    date: String,
    uname: String,
    nproc: String,
    cpu_model: String,
    mem: String,
    nginx: String,
    wrk: String,
    rustc: String,
    gstgate: String,
    commit: String,
}

impl Machine {
    fn collect(bin: &Path, manifest: &Path) -> Self {
        let run = |prog: &str, args: &[&str]| -> String {
            Command::new(prog)
                .args(args)
                .current_dir(manifest)
                .output()
                .map(|o| {
                    let mut s = String::from_utf8_lossy(&o.stdout).to_string();
                    s.push_str(&String::from_utf8_lossy(&o.stderr));
                    s.trim().to_string()
                })
                .unwrap_or_else(|e| format!("({prog}: {e})"))
        };
        let lscpu = run("lscpu", &[]);
        let cpu_model = lscpu
            .lines()
            .find(|l| l.starts_with("Model name:"))
            .map_or("?".into(), |l| l["Model name:".len()..].trim().to_string());
        let hyper = lscpu
            .lines()
            .find(|l| l.starts_with("Hypervisor vendor:"))
            .map(|l| format!(", virtualised ({})", l["Hypervisor vendor:".len()..].trim()))
            .unwrap_or_default();
        let mem = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .next()
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
            })
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or("?".into(), |kb| format!("{:.1} GiB", kb as f64 / 1048576.0));
        let dirty = if run(
            "git",
            &[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "src",
                "Cargo.toml",
                "Cargo.lock",
            ],
        )
        .is_empty()
        {
            ""
        } else {
            " with uncommitted changes in src/ or Cargo.*"
        };
        Machine {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            uname: run("uname", &["-a"]),
            nproc: run("nproc", &[]),
            cpu_model: format!("{cpu_model}{hyper}"),
            mem,
            nginx: run("nginx", &["-v"]),
            wrk: run("wrk", &["-v"])
                .lines()
                .next()
                .unwrap_or("?")
                .trim()
                .to_string(),
            rustc: run("rustc", &["-V"]),
            gstgate: run(&bin.display().to_string(), &["--version"]),
            commit: format!("{}{dirty}", run("git", &["rev-parse", "--short", "HEAD"])),
        }
    }
}

struct Report<'a> {
    opts: &'a Opts,
    layout: &'a Layout,
    machine: &'a Machine,
    loadavg_before: String,
    quiet_before: Vec<(String, f64)>,
    body_len: u64,
    runs: &'a [RunResult],
    skipped: &'a [(TargetKind, String)],
    profile: Option<String>,
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
                    core_busy: (0..ncores)
                        .map(|i| med(&|r| r.cpu.core_busy.get(i).copied().unwrap_or(0.0)))
                        .collect(),
                    rounds: rs.len(),
                }
            })
            .collect()
    }

    fn render(&self) -> String {
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
        let _ = writeln!(
            s,
            "| software | {}; {}; {}; {} (commit {}) |",
            m.nginx, m.wrk, m.rustc, m.gstgate, m.commit
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
            "| target | req/s | p50 ms | p99 ms | non-2xx | socket errors | vs direct | vs nginx | proxy CPU µs/req (sys) | proxy ctx sw/req | upstream CPU µs/req (sys) | wrk CPU µs/req |{core_cols}"
        );
        let _ = writeln!(
            s,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|{core_rule}"
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
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} | {:.0} ({:.0}) | {:.0} |{}",
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
                cores
            );
        }
        for (k, why) in self.skipped {
            let _ = writeln!(
                s,
                "| {} | not run: {} | | | | | | | | | | |",
                k.label(),
                why.replace('|', "/").replace('\n', " ")
            );
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

        let _ = writeln!(s, "\n##### Every run\n");
        let _ = writeln!(
            s,
            "| round | target | req/s | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | non-2xx | socket errors | proxy µs/req (sys) | proxy ctx sw/req | upstream µs/req (sys) | upstream ctx sw/req | wrk µs/req | other CPU | steal | noisy processes |"
        );
        let _ = writeln!(
            s,
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for r in self.runs {
            let w = &r.wrk;
            let _ = writeln!(
                s,
                "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1} | {} | {} | {} | {} | {:.0} ({:.0}) | {:.1} | {:.0} | {:.0} % | {:.1} % | {}{} |",
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
             \"other CPU\" is busy time on all cores not used by wrk, the upstream or the proxy \
             (kernel threads, interrupts, other processes), as a share of one CPU."
        );

        let _ = writeln!(
            s,
            "\n##### Counters that moved (summed over the measured runs)\n"
        );
        for x in &sums {
            let mut simc: BTreeMap<String, f64> = BTreeMap::new();
            let mut gwc: BTreeMap<String, f64> = BTreeMap::new();
            let mut reqs = 0u64;
            for r in self.runs.iter().filter(|r| r.kind == x.kind) {
                reqs += r.wrk.requests;
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
            if x.kind == TargetKind::Passthrough || x.kind == TargetKind::Gateway {
                let _ = write!(s, "; gstgate: {}", fmt(&gwc));
            }
            let _ = writeln!(s, " ({} runs)", x.rounds);
        }

        if let Some(p) = &self.profile {
            let _ = writeln!(s, "\n##### Profile\n\n{p}");
        }
        s
    }
}

fn pin_name(p: Pin) -> &'static str {
    match p {
        Pin::Split => "split",
        Pin::ProxyAlone => "proxy-alone",
        Pin::None => "none",
    }
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

// ---------------------------------------------------------------------------------------------
// Processes

/// A child process whose stdout and stderr go to a log file; stopped (SIGTERM, then SIGKILL)
/// when dropped.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}): {}", self.name, self.log_tail());
        }
        Ok(())
    }

    fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// Polls the log for a line containing `needle` and returns it.
    fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut text = String::new();
            File::open(&self.log)?.read_to_string(&mut text)?;
            if let Some(l) = text.lines().find(|l| l.contains(needle)) {
                return Ok(l.trim().to_string());
            }
            self.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "{} printed no \"{needle}\" within {timeout:?}: {}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `program`, under `taskset -c CPUS` when pinned.
fn pinned(cpus: Option<&str>, program: &Path) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

// ---------------------------------------------------------------------------------------------
// HTTP for set-up and checks (the load itself is wrk's)

struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    fn new() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Http { rt, client })
    }

    fn post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>)> {
        let mut req = self.client.post(url).body(body);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        self.rt.block_on(async {
            let resp = req.send().await.with_context(|| format!("POST {url}"))?;
            let status = resp.status().as_u16();
            Ok((status, resp.bytes().await?.to_vec()))
        })
    }

    fn get(&self, url: &str) -> Result<(u16, Vec<u8>)> {
        self.rt.block_on(async {
            let resp = self
                .client
                .get(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            let status = resp.status().as_u16();
            Ok((status, resp.bytes().await?.to_vec()))
        })
    }
}

fn fetch_json(http: &Http, url: &str) -> Option<Value> {
    let (status, body) = http.get(url).ok()?;
    (status == 200)
        .then(|| serde_json::from_slice(&body).ok())
        .flatten()
}

/// gstgate's counters (`*_total`, `*_count`) from the Prometheus text at `{admin}/metrics`.
fn fetch_metrics(http: &Http, admin: &str) -> Option<BTreeMap<String, f64>> {
    let (status, body) = http.get(&format!("{admin}/metrics")).ok()?;
    if status != 200 {
        return None;
    }
    let mut out = BTreeMap::new();
    for line in String::from_utf8_lossy(&body).lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let base = name.split('{').next().unwrap_or(name);
        if base.ends_with("_total") || base.ends_with("_count") {
            if let Ok(v) = value.parse::<f64>() {
                out.insert(name.to_string(), v);
            }
        }
    }
    Some(out)
}

/// Numeric leaves of a JSON document, keyed by their path (`a.b.c`).
fn flatten_json(v: &Value) -> BTreeMap<String, f64> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, f64>) {
        match v {
            Value::Number(n) => {
                if let Some(f) = n.as_f64() {
                    out.insert(prefix.to_string(), f);
                }
            }
            Value::Object(m) => {
                for (k, x) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, x, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}

/// Counters that changed between two readings.
fn delta(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .filter_map(|(k, v)| {
            let d = v - a.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Small helpers

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

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn after<'a>(line: &'a str, marker: &str) -> Result<&'a str> {
    let i = line
        .find(marker)
        .ok_or_else(|| anyhow!("no \"{marker}\" in \"{line}\""))?;
    let rest = &line[i + marker.len()..];
    Ok(rest
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_end_matches('/'))
}

fn clip(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut end = n;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn dedup(v: &[TargetKind]) -> Vec<TargetKind> {
    let mut out = Vec::new();
    for k in v {
        if !out.contains(k) {
            out.push(*k);
        }
    }
    out
}
