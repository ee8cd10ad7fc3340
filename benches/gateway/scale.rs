//! The scale scenario (`--scale N,…`): what a GSP's numbers cost gstgate, one size at a time.
//!
//! For each N, a configuration with N credentials (N taxpayers, one API user each) in front of
//! the lean upstream, with the embedded session store and an alert check every second:
//! 1. `check-config` on it: wall time.
//! 2. `serve` with an empty store: time from spawn to the ready line, resident memory then and
//!    its peak before, and the heap in use.
//! 3. A burst of `--scale-cold` distinct GSTINs, one generate-IRN request each, over
//!    `--scale-concurrency` connections: every request needs a login first. Wall time,
//!    latency percentiles, errors, logins seen by the upstream, and the resident memory and
//!    heap added per session.
//! 4. The admin listener with those sessions: `GET /admin/sessions` (one page, a full page,
//!    filtered), `GET /status` (first and last page) and a `/metrics` scrape, each
//!    [`PROBE_ROUNDS`] times in a row: median and slowest response time, and body size.
//! 5. The idle gateway's CPU per second: what its periodic work costs with these sessions.
//! 6. A restart (SIGTERM, then `serve` again) with those sessions in the store: time to ready,
//!    memory, and the same GSTINs once more, which must cost no login at all; then again
//!    while the largest admin pages are requested back to back, and again while the
//!    configuration is reloaded back to back.
//!
//! Everything runs on this machine: gstgate, the upstream and the load share its CPUs, so the
//! burst's wall time includes the upstream's RSA work for every login. The report's tables are
//! in `scale/report.rs`.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context as _, Result};
use serde_json::{json, Value};

use crate::client::{fetch_json, Http};
use crate::procs::{after, Proc};
use crate::targets::{
    hex_sha256, invoice_json, ADMIN_TOKEN, API_KEY, AUTH_PATH, CLIENT_ID, CLIENT_SECRET,
    INVOICE_PATH, STORE_KEY,
};
use crate::upstream;

mod report;
use report::report;

pub(crate) const USER: &str = "scale_user";
pub(crate) const PASSWORD: &str = "Scale#Pass1";
/// Requests per admin probe: enough for a median on a machine shared with other work.
const PROBE_ROUNDS: usize = 15;

/// What one size measured.
struct Size {
    credentials: usize,
    config_bytes: u64,
    check_config: Duration,
    start: Duration,
    rss_start: u64,
    /// The process's most resident memory up to ready (start-up's peak).
    peak_start: u64,
    /// CPU the idle gateway used per second, after the cold burst.
    idle_cpu: Duration,
    /// `gstgate_heap_allocated_bytes` at ready and after the cold burst.
    heap_start: Option<f64>,
    cold: Burst,
    rss_cold: u64,
    heap_cold: Option<f64>,
    /// The largest heap seen while the cold burst ran.
    heap_peak: Option<f64>,
    admin: Vec<Probe>,
    restart: Duration,
    rss_restart: u64,
    warm: Burst,
    rss_warm: u64,
    /// The warm burst again, while the largest admin pages are requested back to back.
    scraped: Burst,
    /// How many admin pages were served during it.
    scrapes: usize,
    /// The warm burst again while the configuration is reloaded back to back.
    reloaded: Burst,
    /// Reloads completed during it.
    reloads: usize,
}

/// One admin endpoint, requested [`PROBE_ROUNDS`] times in a row.
struct Probe {
    what: String,
    median: Duration,
    max: Duration,
    bytes: usize,
}

/// One burst of requests, each for another GSTIN.
pub(crate) struct Burst {
    pub(crate) requests: usize,
    pub(crate) wall: Duration,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
    pub(crate) errors: usize,
    pub(crate) logins: f64,
}

impl Burst {
    /// The burst's cells of a report row: requests, wall, req/s, p50, p99, max, errors, logins.
    pub(crate) fn cells(&self) -> String {
        format!(
            "{} | {} ms | {:.0} | {} | {} | {} | {} | {}",
            self.requests,
            ms(self.wall),
            self.requests as f64 / self.wall.as_secs_f64(),
            ms(self.p50),
            ms(self.p99),
            ms(self.max),
            self.errors,
            self.logins,
        )
    }
}

/// Runs the scenario for every size and returns the Markdown report.
pub(crate) fn run(
    bin: &Path,
    manifest: &Path,
    dir: &Path,
    sizes: &[usize],
    cold: usize,
    concurrency: usize,
) -> Result<String> {
    ensure!(!sizes.is_empty() && concurrency > 0, "nothing to run");
    let invoice = invoice_json(manifest)?;
    let http = Http::new()?;
    let mut results = Vec::new();
    for &n in sizes {
        eprintln!("scale-bench: {n} credentials");
        results.push(one_size(
            bin,
            dir,
            &http,
            &invoice,
            n,
            cold.min(n),
            concurrency,
        )?);
    }
    Ok(report(&results, cold, concurrency))
}

fn one_size(
    bin: &Path,
    dir: &Path,
    http: &Http,
    invoice: &Value,
    n: usize,
    cold: usize,
    concurrency: usize,
) -> Result<Size> {
    let gstins: Vec<String> = (0..n).map(gstin).collect();
    let (_upstream, upstream_url, public_key) = start_upstream(dir, &gstins, Vec::new())?;
    let store = dir.join(format!("scale-{n}.redb"));
    let store_section = format!(
        "backend = \"embedded\"\npath = \"{}\"\nencryption_key = \"{STORE_KEY}\"\n",
        store.display()
    );
    let config = write_config(
        dir,
        &format!("scale-{n}"),
        &gstins,
        &upstream_url,
        &public_key,
        &store_section,
        // The default pacing (10 logins/s, 8 at once) would make a cold burst of 10,000
        // GSTINs last 1,000 s and measure the pacer, which the session storm tests prove; the
        // local upstream takes this much.
        "logins_per_second = 2000\nmax_concurrent_logins = 64",
    )?;
    let config_bytes = fs::metadata(&config)?.len();

    let started = Instant::now();
    let out = Command::new(bin)
        .args(["check-config", "--config"])
        .arg(&config)
        .output()?;
    let check_config = started.elapsed();
    ensure!(
        out.status.success(),
        "check-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (gw, proxy, admin_addr, start) = serve(bin, dir, &config, &format!("gstgate-{n}"))?;
    let rss_start = rss(&gw)?;
    let peak_start = peak_rss(&gw)?;
    let heap_start = heap(http, &admin_addr);
    let counters = format!("{upstream_url}/_sim/counters");
    let logins = || -> Result<f64> {
        fetch_json(http, &counters)
            .and_then(|v| v["auth_calls"].as_f64())
            .ok_or_else(|| anyhow!("no counters from the upstream"))
    };

    let before = logins()?;
    let (cold_burst, heap_peak) = peak_heap(&admin_addr, || {
        burst(&[proxy], &gstins[..cold], invoice, concurrency, "C")
    });
    let mut cold_burst = cold_burst?;
    cold_burst.logins = logins()? - before;
    let rss_cold = rss(&gw)?;
    let heap_cold = heap(http, &admin_addr);
    let last_page = n.div_ceil(200).max(1);
    let mut admin = Vec::new();
    for path in [
        "/admin/sessions".to_string(),
        "/admin/sessions?limit=1000".to_string(),
        "/admin/sessions?state=valid&limit=1000".to_string(),
        format!("/admin/sessions?gstin={}", &gstins[n / 2][..7]),
        "/status".to_string(),
        format!("/status?page={last_page}"),
        "/status?state=valid".to_string(),
        "/metrics".to_string(),
    ] {
        admin.push(probe(http, &admin_addr, &path)?);
    }

    // Idle: what the gateway's own periodic work (an alert check each second here, every
    // 15 s by default) costs with these sessions.
    let idle_cpu = idle_cpu(&gw, IDLE_FOR)?;

    // A restart: SIGTERM writes what is queued; the new process resumes every session.
    drop(gw);
    let (gw, proxy, admin_addr, restart) =
        serve(bin, dir, &config, &format!("gstgate-{n}-restarted"))?;
    let rss_restart = rss(&gw)?;
    let before = logins()?;
    let mut warm = burst(
        std::slice::from_ref(&proxy),
        &gstins[..cold],
        invoice,
        concurrency,
        "W",
    )?;
    warm.logins = logins()? - before;
    let rss_warm = rss(&gw)?;
    // The same burst again while an operator's browser and Prometheus ask for the largest
    // pages back to back: what the admin listener's work costs the proxy's callers.
    let status = format!("/status?page={last_page}");
    let pages = [status.as_str(), "/metrics"];
    let next = AtomicUsize::new(0);
    let (scraped, scrapes) = under_load(
        |http| {
            let path = pages[next.fetch_add(1, Ordering::Relaxed) % pages.len()];
            http.get(&format!("http://{admin_addr}{path}"))
                .is_ok_and(|(status, _)| status == 200)
        },
        || {
            burst(
                std::slice::from_ref(&proxy),
                &gstins[..cold],
                invoice,
                concurrency,
                "S",
            )
        },
    );
    let scraped = scraped?;
    // Once more while the configuration is reloaded back to back: every credential is
    // compared and a new slot table built, while callers keep finding the current one.
    let reload_url = format!("http://{admin_addr}/admin/reload");
    let bearer = [("Authorization".to_string(), format!("Bearer {ADMIN_TOKEN}"))];
    let (reloaded, reloads) = under_load(
        |http| {
            http.post(&reload_url, &bearer, Vec::new())
                .is_ok_and(|(status, _)| status == 200)
        },
        || burst(&[proxy], &gstins[..cold], invoice, concurrency, "R"),
    );
    let reloaded = reloaded?;
    drop(gw);
    let _ = fs::remove_file(&store);

    Ok(Size {
        credentials: n,
        config_bytes,
        check_config,
        start,
        rss_start,
        peak_start,
        heap_start,
        cold: cold_burst,
        rss_cold,
        heap_cold,
        heap_peak,
        admin,
        idle_cpu,
        restart,
        rss_restart,
        warm,
        rss_warm,
        scraped,
        scrapes,
        reloaded,
        reloads,
    })
}

/// The `i`th taxpayer: Maharashtra (27), a PAN-shaped middle made from `i`, a valid check
/// character.
pub(crate) fn gstin(i: usize) -> String {
    let mut letters = i / 10_000;
    let mut pan = String::new();
    for _ in 0..5 {
        pan.insert(0, char::from(b'A' + (letters % 26) as u8));
        letters /= 26;
    }
    let first14 = format!("27{pan}{:04}A1Z", i % 10_000);
    format!("{first14}{}", check_char(&first14))
}

/// The GSTIN check character of the first 14 characters.
fn check_char(first14: &str) -> char {
    const CODES: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut sum = 0;
    for (i, c) in first14.bytes().enumerate() {
        let value = CODES.iter().position(|&x| x == c).unwrap_or(0);
        let product = value * if i % 2 == 0 { 1 } else { 2 };
        sum += product / 36 + product % 36;
    }
    char::from(CODES[(36 - sum % 36) % 36])
}

/// Starts the lean upstream with one user per GSTIN (and `sessions` already issued, see
/// [`upstream::UpstreamConfig::sessions`]); returns it, its URL and its public key's file.
pub(crate) fn start_upstream(
    dir: &Path,
    gstins: &[String],
    sessions: Vec<(String, String, String, String)>,
) -> Result<(Proc, String, PathBuf)> {
    let public_key = dir.join("scale-upstream-public.pem");
    let cfg = upstream::UpstreamConfig {
        listen: "127.0.0.1:0".parse()?,
        public_key_out: public_key.clone(),
        users: gstins
            .iter()
            .map(|g| (g.clone(), USER.to_string(), PASSWORD.to_string()))
            .collect(),
        clients: vec![(CLIENT_ID.into(), CLIENT_SECRET.into())],
        sessions,
    };
    let cfg_path = dir.join("scale-upstream.json");
    fs::write(&cfg_path, serde_json::to_vec(&cfg)?)?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("--serve-upstream").arg(&cfg_path);
    let ready = "bench-upstream listening on http://";
    let (p, line) = Proc::spawn_until("scale-upstream", cmd, dir, ready, Duration::from_secs(60))?;
    let url = format!("http://{}", after(&line, ready)?);
    Ok((p, url, public_key))
}

/// Writes `{name}.toml`: one credential per GSTIN in front of the upstream, passthrough, the
/// `[store]` section `store` and `upstream_extra` lines in the `[[upstream]]` table.
pub(crate) fn write_config(
    dir: &Path,
    name: &str,
    gstins: &[String],
    upstream_url: &str,
    public_key: &Path,
    store: &str,
    upstream_extra: &str,
) -> Result<PathBuf> {
    let n = gstins.len();
    let mut text = format!(
        r#"# gstgate scale benchmark: {n} credentials; written by benches/gateway/scale.rs
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"

[store]
{store}

[[upstream]]
name = "einvoice"
api = "einvoice"
base_url = "{upstream_url}"
routes = ["/eivital/", "/eicore/"]
auth_path = "{AUTH_PATH}"
public_key = "{public_key}"
encryption = "passthrough"
client_id = "{CLIENT_ID}"
client_secret = "{CLIENT_SECRET}"
{upstream_extra}

# An alert check every second instead of 15, so that the idle measurement sees five.
[alerts]
check_interval = "1s"

[[client]]
name = "scale"
api_key_sha256 = "{key_hash}"
gstins = ["*"]
"#,
        public_key = public_key.display(),
        key_hash = hex_sha256(API_KEY.as_bytes()),
    );
    for g in gstins {
        writeln!(
            text,
            "\n[[credential]]\ngstin = \"{g}\"\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\nupstreams = [\"einvoice\"]"
        )?;
    }
    let path = dir.join(format!("{name}.toml"));
    fs::write(&path, text)?;
    Ok(path)
}

/// The gateway's heap in use, from its `/metrics` (glibc only).
fn heap(http: &Http, admin: &str) -> Option<f64> {
    let (status, body) = http.get(&format!("http://{admin}/metrics")).ok()?;
    if status != 200 {
        return None;
    }
    String::from_utf8_lossy(&body).lines().find_map(|line| {
        line.strip_prefix("gstgate_heap_allocated_bytes ")?
            .parse()
            .ok()
    })
}

/// Runs `work` while another thread reads the gateway's heap every 200 ms (a `/metrics`
/// scrape: at 100,000 credentials about 9 ms of the gateway's CPU each); returns what `work`
/// returned and the largest heap seen: memory under load, connections and requests in
/// flight included.
fn peak_heap<T>(admin: &str, work: impl FnOnce() -> T) -> (T, Option<f64>) {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let sampler = scope.spawn(|| {
            let http = Http::new().ok()?;
            let mut peak: Option<f64> = None;
            while !done.load(Ordering::Relaxed) {
                if let Some(h) = heap(&http, admin) {
                    peak = Some(peak.map_or(h, |p| p.max(h)));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            peak
        });
        let out = work();
        done.store(true, Ordering::Relaxed);
        (out, sampler.join().ok().flatten())
    })
}

/// Runs `work` while another thread calls `hit` back to back (an admin page, a reload);
/// returns what `work` returned and how many hits succeeded meanwhile.
fn under_load<T>(hit: impl Fn(&Http) -> bool + Sync, work: impl FnOnce() -> T) -> (T, usize) {
    let done = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let hitter = scope.spawn(|| {
            let Ok(http) = Http::new() else {
                return 0;
            };
            let mut served = 0;
            while !done.load(Ordering::Relaxed) {
                if hit(&http) {
                    served += 1;
                }
            }
            served
        });
        let out = work();
        done.store(true, Ordering::Relaxed);
        (out, hitter.join().unwrap_or(0))
    })
}

/// `GET http://{admin}{path}` [`PROBE_ROUNDS`] times in a row, each a 200.
fn probe(http: &Http, admin: &str, path: &str) -> Result<Probe> {
    let mut times = Vec::with_capacity(PROBE_ROUNDS);
    let mut bytes = 0;
    for _ in 0..PROBE_ROUNDS {
        let started = Instant::now();
        let (status, body) = http.get(&format!("http://{admin}{path}"))?;
        times.push(started.elapsed());
        ensure!(status == 200, "GET {path}: {status}");
        bytes = body.len();
    }
    times.sort();
    Ok(Probe {
        what: path.to_string(),
        median: times[times.len() / 2],
        max: times[times.len() - 1],
        bytes,
    })
}

/// Starts `serve` and waits for its ready line; returns the process, the proxy address, the
/// admin address and the time from spawn to ready.
pub(crate) fn serve(
    bin: &Path,
    dir: &Path,
    config: &Path,
    name: &str,
) -> Result<(Proc, String, String, Duration)> {
    serve_logging(bin, dir, config, name, "warn")
}

/// [`serve`] with `RUST_LOG` set to `log`.
pub(crate) fn serve_logging(
    bin: &Path,
    dir: &Path,
    config: &Path,
    name: &str,
    log: &str,
) -> Result<(Proc, String, String, Duration)> {
    let mut cmd = Command::new(bin);
    // The heap metric costs a walk of the allocator's free lists per scrape: on for the
    // benchmark, which reads it a few times, off by default.
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--heap-metric")
        .env("RUST_LOG", log);
    let started = Instant::now();
    let ready = "gstgate ready: proxy http://";
    let (p, line) = Proc::spawn_until(name, cmd, dir, ready, Duration::from_secs(600))?;
    let took = started.elapsed();
    let proxy = after(&line, "proxy ")?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    let admin = after(&line, "admin http://")?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    Ok((p, proxy, admin, took))
}

/// How long the idle measurement lasts.
const IDLE_FOR: Duration = Duration::from_secs(5);

/// The CPU time (user and system, all threads) `p` uses per second over `span` of idling.
fn idle_cpu(p: &Proc, span: Duration) -> Result<Duration> {
    let ticks = || {
        crate::cpu::proc_stat(p.pid())
            .map(|(_, _, t)| t)
            .context("no /proc stat")
    };
    let before = ticks()?;
    std::thread::sleep(span);
    let used = (ticks()? - before) as f64 / crate::cpu::clock_ticks();
    Ok(Duration::from_secs_f64(used / span.as_secs_f64()))
}

/// Resident memory of the process, bytes.
pub(crate) fn rss(p: &Proc) -> Result<u64> {
    status_bytes(p, "VmRSS:")
}

/// The most resident memory the process has had so far (its high-water mark), bytes.
pub(crate) fn peak_rss(p: &Proc) -> Result<u64> {
    status_bytes(p, "VmHWM:")
}

fn status_bytes(p: &Proc, field: &str) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{}/status", p.pid()))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .with_context(|| format!("no {field}"))?;
    Ok(kib * 1024)
}

/// One generate-IRN request per GSTIN of `gstins`, `concurrency` at a time; the `i`th goes
/// to `proxies[i % proxies.len()]` (replicas share the burst round-robin).
pub(crate) fn burst(
    proxies: &[String],
    gstins: &[String],
    invoice: &Value,
    concurrency: usize,
    tag: &str,
) -> Result<Burst> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(concurrency)
        .timeout(Duration::from_secs(120))
        .build()?;
    ensure!(!proxies.is_empty(), "no proxy to send the burst to");
    let urls: Arc<Vec<String>> = Arc::new(
        proxies
            .iter()
            .map(|p| format!("{p}{INVOICE_PATH}"))
            .collect(),
    );
    let bodies: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        gstins
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let mut inv = invoice.clone();
                inv["SellerDtls"]["Gstin"] = json!(g);
                inv["DocDtls"]["No"] = json!(format!("{tag}/{i}"));
                (
                    g.clone(),
                    serde_json::to_vec(&json!({ "Data": inv })).unwrap_or_default(),
                )
            })
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let results: Vec<(Vec<Duration>, usize)> = rt.block_on(async {
        let mut workers = Vec::new();
        for _ in 0..concurrency {
            let (client, urls, bodies, next) =
                (client.clone(), urls.clone(), bodies.clone(), next.clone());
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((gstin, body)) = bodies.get(i) else {
                        break;
                    };
                    let sent = Instant::now();
                    let res = client
                        .post(&urls[i % urls.len()])
                        .header("x-api-key", API_KEY)
                        .header("gstin", gstin)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    let ok = match res {
                        Ok(r) if r.status() == 200 => r
                            .json::<Value>()
                            .await
                            .is_ok_and(|v| v["Status"] == 1 || v["Status"] == "1"),
                        _ => false,
                    };
                    latencies.push(sent.elapsed());
                    if !ok {
                        errors += 1;
                    }
                }
                (latencies, errors)
            }));
        }
        let mut out = Vec::new();
        for w in workers {
            out.push(w.await.unwrap_or_default());
        }
        out
    });
    let wall = started.elapsed();
    let errors = results.iter().map(|(_, e)| e).sum();
    let mut latencies: Vec<Duration> = results.into_iter().flat_map(|(l, _)| l).collect();
    latencies.sort_unstable();
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    Ok(Burst {
        requests: gstins.len(),
        wall,
        p50: at(0.50),
        p99: at(0.99),
        max: latencies.last().copied().unwrap_or_default(),
        errors,
        logins: 0.0,
    })
}

pub(crate) fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}
