//! The command line (every flag also a `BENCH_*` variable) and what it chooses: the upstream,
//! the CPU layout, the targets.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// Command line; every flag can also be given as an environment variable (`BENCH_ROUNDS` …).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "gateway-bench",
    about = "generate-IRN throughput and latency: direct, nginx, gstgate"
)]
pub(crate) struct Opts {
    /// Rounds; each runs every target once, interleaved. The report gives the median.
    #[arg(long, env = "BENCH_ROUNDS", default_value_t = 5)]
    pub(crate) rounds: usize,
    /// Measured duration of each run (whole seconds; wrk's resolution).
    #[arg(long, env = "BENCH_DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Unmeasured warm-up before each measured run (same connections, discarded).
    #[arg(long, env = "BENCH_WARMUP", default_value = "3s", value_parser = humantime::parse_duration)]
    pub(crate) warmup: Duration,
    /// Concurrent keep-alive connections held by wrk.
    #[arg(long, env = "BENCH_CONNECTIONS", default_value_t = 64)]
    pub(crate) connections: u32,
    /// Offered load in requests/s (all connections together) instead of as fast as possible:
    /// each connection waits connections/rate between an answer and its next request, so the
    /// latencies are those of every target at the same load, below saturation. 0 = no limit.
    #[arg(long, env = "BENCH_RATE", default_value_t = 0)]
    pub(crate) rate: u32,
    /// wrk threads (one event loop each).
    #[arg(long, env = "BENCH_THREADS", default_value_t = 1)]
    pub(crate) threads: u32,
    /// The upstream: `fast` = the lean benchmark upstream (benches/gateway/upstream.rs);
    /// `sim` = the built-in simulator, `gstgate sim --plain --allow-duplicate-irn`.
    #[arg(long, env = "BENCH_UPSTREAM", value_enum, default_value_t = UpstreamKind::Fast)]
    pub(crate) upstream: UpstreamKind,
    /// CPU layout: `split` = load generator on CPU 0, proxy and upstream on the others;
    /// `proxy-alone` = load generator and upstream on CPU 0, proxy on the others;
    /// `none` = no pinning. The `redis` target's redis-server runs where the upstream does.
    #[arg(long, env = "BENCH_PIN", value_enum, default_value_t = Pin::Split)]
    pub(crate) pin: Pin,
    /// Targets, in the order each round runs them (`dropin`: gateway with drop-in on, the client
    /// logged in drop-in and encrypting with gstgate's SEK; `redis`: passthrough with the Redis
    /// session store, needs `redis-server`).
    #[arg(
        long,
        env = "BENCH_TARGETS",
        value_enum,
        value_delimiter = ',',
        default_value = "direct,nginx,floor,passthrough,gateway,dropin,redis"
    )]
    pub(crate) targets: Vec<TargetKind>,
    /// Markdown file whose results section is replaced with this run's (`none`: do not write).
    #[arg(long, env = "BENCH_REPORT")]
    pub(crate) report: Option<String>,
    /// Before measuring, wait up to this long for the machine to be quiet (no other process
    /// using more than 5 % of a CPU); 0 = only warn.
    #[arg(long, env = "BENCH_WAIT_QUIET", default_value = "0s", value_parser = humantime::parse_duration)]
    pub(crate) wait_quiet: Duration,
    /// After the rounds, profile one more run of each of these targets with `perf record`
    /// (proxy and upstream processes, DWARF call graphs) and add the result to the report.
    #[arg(long, env = "BENCH_PERF", value_enum, value_delimiter = ',')]
    pub(crate) perf: Vec<TargetKind>,
    /// Callers (`[[client]]`) configured in each gstgate target: the benchmark's own comes
    /// last, after N−1 others with keys of their own, as a GSP with many ASPs configures
    /// them. What finding the caller costs as their number grows.
    #[arg(long, env = "BENCH_CLIENTS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) clients: u32,
    /// Extra environment for the `gstgate serve` processes, KEY=VALUE (repeatable), for
    /// experiments: `RUST_LOG=warn`, `GSTGATE_LOG_FORMAT=json`, `LD_PRELOAD=…`.
    #[arg(long = "gstgate-env", value_name = "KEY=VALUE")]
    pub(crate) gstgate_env: Vec<String>,
    /// Another gstgate binary (say, a release build of the commit before a change), run as the
    /// `base-passthrough` and `base-gateway` targets in the same interleaved rounds as this
    /// build's targets: an A/B comparison that the machine's drift affects equally.
    #[arg(long, env = "BENCH_BASELINE")]
    pub(crate) baseline: Option<PathBuf>,
    /// Keep the scratch directory (configs, logs, wrk output) and print its path.
    #[arg(long, env = "BENCH_KEEP")]
    pub(crate) keep: bool,
    /// The command line to record in the report (set by bench/run.sh).
    #[arg(long, env = "BENCH_COMMAND", hide = true)]
    pub(crate) command: Option<String>,
    /// Run the scale scenario (scale.rs) instead of the throughput rounds: one configuration
    /// per size with that many credentials, e.g. `--scale 1000,10000,100000`: start-up, a
    /// cold burst, `/admin/sessions`, `/status` and `/metrics` response times, a restart.
    #[arg(long, env = "BENCH_SCALE", value_delimiter = ',')]
    pub(crate) scale: Vec<usize>,
    /// Scale scenario: how many distinct GSTINs the cold burst (and the burst after the
    /// restart) sends, at most the size.
    #[arg(long, env = "BENCH_SCALE_COLD", default_value_t = 10_000)]
    pub(crate) scale_cold: usize,
    /// Scale scenario: concurrent connections of the bursts.
    #[arg(long, env = "BENCH_SCALE_CONCURRENCY", default_value_t = 64)]
    pub(crate) scale_concurrency: usize,
    /// Load with the built-in open-loop generator (openloop.rs) instead of wrk: requests are
    /// scheduled at `--rate` whatever the target does, and latency counts from each one's due
    /// time (wrk2's correction for coordinated omission). Needs `--rate`.
    #[arg(long, env = "BENCH_OPEN_LOOP", requires = "rate")]
    pub(crate) open_loop: bool,
    /// Internal: run as the open-loop generator against this URL (see openloop.rs).
    #[arg(long, hide = true)]
    pub(crate) open_loop_load: Option<String>,
    /// Scale scenario: the session store. `embedded`: one gateway on the redb file (a cold
    /// burst, the admin listener, a restart); `redis`: `--scale-replicas` replicas sharing a
    /// redis-server of the scenario's own, seeded with sessions (start-up, a warm burst, an
    /// outage and the group's rejoin; see scale_redis.rs).
    #[arg(long, env = "BENCH_SCALE_STORE", value_enum, default_value_t = ScaleStore::Embedded)]
    pub(crate) scale_store: ScaleStore,
    /// Scale scenario with `--scale-store redis`: how many replicas share the store.
    #[arg(long, env = "BENCH_SCALE_REPLICAS", default_value_t = 3)]
    pub(crate) scale_replicas: usize,
    /// Internal: run as the lean upstream with this JSON config (see upstream.rs).
    #[arg(long, hide = true)]
    pub(crate) serve_upstream: Option<PathBuf>,
    /// Internal: run as the floor proxy with this JSON config (see floor.rs).
    #[arg(long, hide = true)]
    pub(crate) serve_floor: Option<PathBuf>,
    /// Passed by `cargo bench` (not by `cargo test`, and then nothing runs: see `main`).
    #[arg(long, hide = true)]
    bench: bool,
}

/// The scale scenario's session store.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ScaleStore {
    Embedded,
    Redis,
}

/// Which server plays the GSP.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum UpstreamKind {
    Fast,
    Sim,
}

impl UpstreamKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            UpstreamKind::Fast => "fast",
            UpstreamKind::Sim => "sim",
        }
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            UpstreamKind::Fast => "the lean benchmark upstream (`benches/gateway/upstream.rs`: real RSA login, token and header checks, AES when `Data` is a string, IRN as the simulator derives it, a repeat generate answers the stored document, no request log)",
            UpstreamKind::Sim => "the built-in simulator, `gstgate sim --plain --allow-duplicate-irn`",
        }
    }
}

/// Which CPUs each role runs on.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pin {
    Split,
    ProxyAlone,
    None,
}

/// The CPU lists (`taskset -c` syntax) for the three roles; `None` = not pinned.
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    pub(crate) wrk: Option<String>,
    pub(crate) sim: Option<String>,
    pub(crate) proxy: Option<String>,
}

impl Layout {
    pub(crate) fn new(pin: Pin, ncpu: usize) -> Self {
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

    pub(crate) fn describe(&self) -> String {
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

/// The things measured.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum TargetKind {
    Direct,
    Nginx,
    /// The least a proxy on gstgate's stack (Tokio, hyper) does: floor.rs.
    Floor,
    /// `floor` thread-per-core: a current-thread runtime per CPU, `SO_REUSEPORT` listeners.
    FloorTpc,
    Passthrough,
    Gateway,
    /// `gateway` with drop-in on: the client logs in to gstgate and encrypts with its drop-in
    /// SEK, so gstgate decrypts and encrypts once more each way.
    Dropin,
    /// `passthrough` with `[store] backend = "redis"` on a redis-server of the benchmark's own.
    Redis,
    /// `passthrough` run by the `--baseline` binary, for an A/B comparison within one run.
    BasePassthrough,
    /// `gateway` run by the `--baseline` binary.
    BaseGateway,
}

impl TargetKind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct",
            TargetKind::Nginx => "nginx",
            TargetKind::Floor => "floor",
            TargetKind::FloorTpc => "floor-tpc",
            TargetKind::Passthrough => "passthrough",
            TargetKind::Gateway => "gateway",
            TargetKind::Dropin => "dropin",
            TargetKind::Redis => "redis",
            TargetKind::BasePassthrough => "base-passthrough",
            TargetKind::BaseGateway => "base-gateway",
        }
    }

    pub(crate) fn label(self) -> &'static str {
        match self {
            TargetKind::Direct => "direct to the upstream (the limit)",
            TargetKind::Nginx => "nginx reverse proxy, static headers",
            TargetKind::Floor => "hyper proxy on gstgate's stack, static headers, no log",
            TargetKind::FloorTpc => "the floor proxy, thread-per-core",
            TargetKind::Passthrough => "gstgate, passthrough",
            TargetKind::Gateway => "gstgate, gateway encryption",
            TargetKind::Dropin => "gstgate, drop-in (gateway encryption + drop-in SEK)",
            TargetKind::Redis => "gstgate, passthrough, Redis session store",
            TargetKind::BasePassthrough => "baseline build, passthrough",
            TargetKind::BaseGateway => "baseline build, gateway encryption",
        }
    }

    /// Whether the target is a `gstgate serve` (with an admin listener and its metrics).
    pub(crate) fn is_gstgate(self) -> bool {
        matches!(
            self,
            TargetKind::Passthrough
                | TargetKind::Gateway
                | TargetKind::Dropin
                | TargetKind::Redis
                | TargetKind::BasePassthrough
                | TargetKind::BaseGateway
        )
    }
}

pub(crate) fn pin_name(p: Pin) -> &'static str {
    match p {
        Pin::Split => "split",
        Pin::ProxyAlone => "proxy-alone",
        Pin::None => "none",
    }
}

pub(crate) fn dedup(v: &[TargetKind]) -> Vec<TargetKind> {
    let mut out = Vec::new();
    for k in v {
        if !out.contains(k) {
            out.push(*k);
        }
    }
    out
}
