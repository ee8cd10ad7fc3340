//! The gateway benchmark: one generate-IRN request, seven ways, on one machine.
//!
//! Targets, all doing `POST /eicore/v1.03/Invoice` with the same ~2.7 KB NIC e-invoice
//! (`bench/invoice.json`):
//! 1. `direct` — the upstream itself, with the five e-invoice headers sent by the load
//!    generator (the ceiling: no proxy can be faster than its upstream);
//! 2. `nginx` — Debian's nginx as a plain reverse proxy injecting the same headers statically
//!    (`bench/nginx.conf.in`): what a user would otherwise deploy;
//! 3. `floor` — a hyper proxy on gstgate's own stack doing only what nginx does (floor.rs):
//!    how much of gstgate's cost is the stack and how much its own work; `floor-tpc`, only
//!    when named in `--targets`, is the same proxy thread-per-core (a current-thread runtime
//!    per CPU, `SO_REUSEPORT` listeners), the layout tried for gstgate itself (BENCHMARKS.md);
//! 4. `passthrough` — `gstgate serve` with `encryption = "passthrough"` (bodies untouched);
//! 5. `gateway` — `gstgate serve` with `encryption = "gateway"`: the caller sends plain JSON,
//!    gstgate encrypts it with the SEK and decrypts the reply;
//! 6. `dropin` — as `gateway`, with drop-in on (`dropin_private_key`, a `[[client]]` with a
//!    `client_id`): the benchmark logs in to gstgate as an unmodified NIC client would (RSA
//!    with gstgate's key, SEK under its AppKey) and sends the invoice encrypted with the
//!    drop-in SEK and NIC's headers, so gstgate also decrypts the request and encrypts the
//!    reply for the client: the cost of drop-in over gateway mode;
//! 7. `redis` — as `passthrough`, but with the Redis session store (`[store] backend = "redis"`)
//!    on a `redis-server` the benchmark starts for it (loopback, no persistence, pinned as the
//!    upstream). In steady state a request causes no store operation: the report's
//!    "store ops/request" column (from `gstgate_store_operations_total`) checks that.
//!
//! The upstream (`--upstream`) is either the lean server of `upstream.rs` (default) or
//! the built-in simulator; both accept a `{"Data": {..}}` object and answer it in plain JSON
//! (the "enriched GSP" form), so targets 1–4 and 7 carry no payload crypto, while in targets 5
//! and 6 gstgate and the upstream each do one AES round trip per request, as with the real IRP.
//!
//! Method: every target is verified first (HTTP 200, `Status` 1 and an `Irn` in the reply,
//! `dropin`'s after decrypting `Data` with its drop-in SEK);
//! then `--rounds` rounds, each running the targets in the same interleaved order (A B C D,
//! A B C D …) with `wrk` for a warm-up and a measurement; the report gives every run and the
//! median of the rounds. Around every run the harness samples CPU time per process
//! (`/proc/PID/stat`) and per core (`/proc/stat`), so the report can say who was busy: the
//! proxy, the upstream, the load generator, or something else on the machine. Processes are
//! pinned with `taskset` according to `--pin` (see `BENCHMARKS.md` for the reasoning).
//!
//! Run it with `bench/run.sh` (installs nginx, wrk and redis-server when missing), or directly:
//! `cargo bench --bench gateway -- --rounds 5 --duration 10s`.
//!
//! `--scale 1000,10000,100000` runs another scenario instead (scale.rs): start-up, a burst of
//! cold GSTINs, memory per session and a restart, with that many credentials; with
//! `--scale-store redis`, a group of `--scale-replicas` replicas on a seeded Redis store:
//! start-up, a warm burst, an outage and the group's rejoin (scale_redis.rs).

use std::fs;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{ensure, Context as _, Result};
use clap::Parser;
use serde_json::json;

mod cli;
mod client;
mod cpu;
mod floor;
mod machine;
mod openloop;
mod procs;
mod profile;
mod report;
mod rounds;
mod scale;
mod scale_redis;
mod targets;
mod upstream;
mod wrk;

use cli::{Layout, Opts, ScaleStore, TargetKind};
use client::Http;
use cpu::{clock_ticks, wait_until_quiet};
use machine::Machine;
use procs::which;
use report::Report;
use targets::{invoice_json, login, USER_DIRECT};

/// What the steps of a run share: the options, the CPU layout, the paths, the clock tick and
/// the HTTP client for set-up and checks.
struct Bench {
    opts: Opts,
    layout: Layout,
    /// The repository (`CARGO_MANIFEST_DIR`).
    manifest: PathBuf,
    /// The gstgate binary.
    bin: PathBuf,
    /// The scratch directory: configs, logs, wrk output.
    dir: PathBuf,
    /// bench/generate-irn.lua, wrk's script.
    lua: PathBuf,
    clk_tck: f64,
    http: Http,
}

fn main() -> ExitCode {
    // `cargo test --all-targets` builds and runs bench targets too, without `--bench` and with
    // libtest's arguments (`--test-threads=4` …): a benchmark there would cost minutes and
    // measure a debug build, so it only says so.
    let args: Vec<String> = std::env::args().collect();
    let under_cargo_bench = args.iter().any(|a| a == "--bench");
    let internal = args
        .iter()
        .any(|a| a == "--serve-upstream" || a == "--serve-floor" || a == "--open-loop-load");
    if !internal && (!under_cargo_bench || cfg!(debug_assertions)) {
        eprintln!(
            "gateway-bench: skipped (not under `cargo bench`); run `bench/run.sh` or \
             `cargo bench --bench gateway`"
        );
        return ExitCode::SUCCESS;
    }
    let opts = Opts::parse();
    if let Some(url) = &opts.open_loop_load {
        let secs = std::env::var("BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        return match openloop::main(url, opts.rate, opts.connections, secs) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("open-loop: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(config) = &opts.serve_upstream {
        return match upstream::main(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench-upstream: error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    if let Some(config) = &opts.serve_floor {
        return match floor::main(config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("bench-floor: error: {e:#}");
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
    if !opts.scale.is_empty() {
        let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_gstgate"));
        let scratch = tempfile::Builder::new()
            .prefix("gstgate-scale-")
            .tempdir()?;
        let report = match opts.scale_store {
            ScaleStore::Embedded => scale::run(
                &bin,
                &manifest,
                scratch.path(),
                &opts.scale,
                opts.scale_cold,
                opts.scale_concurrency,
            )?,
            ScaleStore::Redis => scale_redis::run(
                &bin,
                &manifest,
                scratch.path(),
                &opts.scale,
                opts.scale_cold,
                opts.scale_concurrency,
                opts.scale_replicas,
            )?,
        };
        println!("{report}");
        if opts.keep {
            eprintln!("scale-bench: scratch kept at {}", scratch.keep().display());
        }
        return Ok(());
    }
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
    let lua = manifest.join("bench/generate-irn.lua");
    let b = Bench {
        opts,
        layout,
        manifest,
        bin,
        dir,
        lua,
        clk_tck,
        http,
    };

    // The upstream ("sim" below, whichever plays it).
    let sim = targets::start_upstream(&b)?;

    // The request bodies: the envelope for targets that forward as is, plain for gateway mode.
    let invoice = invoice_json(&b.manifest)?;
    let body_plain = b.dir.join("body-plain.json");
    let body_envelope = b.dir.join("body-envelope.json");
    fs::write(&body_plain, serde_json::to_vec(&invoice)?)?;
    fs::write(
        &body_envelope,
        serde_json::to_vec(&json!({ "Data": invoice }))?,
    )?;
    let body_len = fs::metadata(&body_envelope)?.len();

    // A token for the targets that do not log in themselves.
    let token = login(&b.http, &sim.url, &sim.public_key, USER_DIRECT)
        .context("logging in to the upstream for the direct and nginx targets")?;

    let mut skipped: Vec<(TargetKind, String)> = Vec::new();
    let (targets, procs) =
        targets::start_targets(&b, &sim, body_plain, body_envelope, token, &mut skipped);
    let verified = targets::verify_all(&b, targets, &mut skipped)?;
    ensure!(!verified.is_empty(), "no target passed verification");

    let quiet_before = wait_until_quiet(b.opts.wait_quiet, b.clk_tck);
    let loadavg_before = fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string();

    let runs = rounds::run_rounds(&b, &sim, &procs, &verified)?;
    let profile = profile::profile_targets(&b, &sim, &procs, &verified)?;

    let report = Report {
        opts: &b.opts,
        layout: &b.layout,
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
    report::save(&b.opts, &b.manifest, &report)?;

    drop(procs);
    drop(sim);
    if b.opts.keep {
        let kept = scratch.keep();
        eprintln!(
            "gateway-bench: scratch directory kept at {}",
            kept.display()
        );
    }
    Ok(())
}
