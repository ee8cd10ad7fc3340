//! The scale scenario on the Redis store (`--scale N --scale-store redis --scale-replicas R`):
//! a group of replicas in front of N credentials whose sessions are already in Redis.
//!
//! For each N:
//! 1. A `redis-server` of its own (free loopback port, append-only file in the scratch
//!    directory, as in production: an outage must not lose the records), seeded with a valid
//!    session for each of N − C credentials (C = `--scale-cold`), sealed by gstgate's own code
//!    (`gstgate::store_seed`) exactly as a replica writes them; the lean upstream knows their
//!    tokens as if it had issued them. 100 000 real logins would take minutes.
//! 2. R replicas of `gstgate serve` on the same configuration, started together: per replica
//!    the time from spawn to its ready line (the SCAN and MGET of every record, opening and
//!    decoding each, the configuration) and its resident memory then; the group is ready
//!    when the last one is.
//! 3. A warm burst: C seeded GSTINs, round-robin over the replicas. Logins: must be 0.
//! 4. An outage: redis-server is stopped (SIGTERM; it writes its append-only file), and a
//!    burst of the C credentials that have no session yet goes round-robin over the
//!    replicas, each request needing a login, made without the group's lease (each replica
//!    within its share). Then redis-server is started again on the same port and files, and
//!    the scenario waits for every replica's "rejoined the group" log line: the time from the
//!    restart to it (reconnecting, reading every record again, taking them up, and offering
//!    the group the sessions made during the outage, one lease each), with the rejoin's own
//!    breakdown, and the logins meanwhile (must be 0).
//!    Meanwhile a burst of up to 30 000 seeded GSTINs goes on through the replicas: its
//!    latencies show whether the rejoin holds requests up.
//! 5. The C credentials once more, each through another replica than the one that logged in
//!    for it during the outage: 0 logins shows that every offered session reached the group.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, ensure, Context as _, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use gstgate::crypto::AesKey;
use gstgate::store_seed::{RedisSeeder, SeedSession};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::client::{fetch_json, Http};
use crate::procs::{free_port, which, Proc};
use crate::scale::{
    burst, gstin, mib, ms, rss, serve_logging, start_upstream, write_config, Burst, USER,
};
use crate::targets::{invoice_json, STORE_KEY};

/// The `[[upstream]]` name in the scale configuration (a record's name starts with it).
const UPSTREAM: &str = "einvoice";
/// The replicas' log filter: warnings, and the group's own account of a rejoin.
const LOG: &str = "warn,gstgate::session::group=info";
/// What a replica logs once it has rejoined the group after an outage.
const REJOINED: &str = "rejoined the group";
/// Records written to Redis per pipeline while seeding.
const SEED_BATCH: usize = 1000;
/// Requests of the burst sent while the group rejoins (at most the seeded GSTINs).
const DURING_REJOIN: usize = 30_000;
/// The longest the group may take to rejoin before the scenario gives up.
const REJOIN_TIMEOUT: Duration = Duration::from_secs(600);

/// What one size measured.
struct Size {
    credentials: usize,
    seeded: usize,
    seed_wall: Duration,
    redis_memory: u64,
    starts: Vec<(Duration, u64)>,
    group_ready: Duration,
    warm: Burst,
    outage: Burst,
    redis_load: Duration,
    rejoins: Vec<Rejoin>,
    group_rejoined: Duration,
    rejoin_logins: f64,
    during: Burst,
    after: Burst,
    rss_end: Vec<u64>,
}

/// One replica's rejoin: when its log line came, and what the line says.
struct Rejoin {
    after: Duration,
    fields: String,
}

/// Runs the Redis scenario for every size and returns the Markdown report.
pub(crate) fn run(
    bin: &Path,
    manifest: &Path,
    dir: &Path,
    sizes: &[usize],
    cold: usize,
    concurrency: usize,
    replicas: usize,
) -> Result<String> {
    ensure!(
        !sizes.is_empty() && concurrency > 0 && replicas > 0,
        "nothing to run"
    );
    let redis_bin = which("redis-server").ok_or_else(|| {
        anyhow!("`redis-server` not found on PATH (apt-get install redis-server)")
    })?;
    let invoice = invoice_json(manifest)?;
    let http = Http::new()?;
    let mut results = Vec::new();
    for &n in sizes {
        eprintln!("scale-bench: {n} credentials, Redis store, {replicas} replicas");
        let cold = cold.min(n / 2).max(1);
        results.push(one_size(
            bin,
            &redis_bin,
            dir,
            &http,
            &invoice,
            n,
            cold,
            concurrency,
            replicas,
        )?);
    }
    Ok(report(&results, replicas, concurrency))
}

#[allow(clippy::too_many_arguments)]
fn one_size(
    bin: &Path,
    redis_bin: &Path,
    dir: &Path,
    http: &Http,
    invoice: &Value,
    n: usize,
    cold: usize,
    concurrency: usize,
    replicas: usize,
) -> Result<Size> {
    let gstins: Vec<String> = (0..n).map(gstin).collect();
    let seeded = n - cold;
    let sessions: Vec<(String, String, String, String)> = gstins[..seeded]
        .iter()
        .map(|g| {
            let (token, sek) = session_of(g);
            (g.clone(), USER.to_string(), token, B64.encode(sek))
        })
        .collect();
    let (_upstream, upstream_url, public_key) = start_upstream(dir, &gstins, sessions)?;
    let counters = format!("{upstream_url}/_sim/counters");
    let logins = || -> Result<f64> {
        fetch_json(http, &counters)
            .and_then(|v| v["auth_calls"].as_f64())
            .ok_or_else(|| anyhow!("no counters from the upstream"))
    };

    let mut redis = RedisServer::start(redis_bin, dir, &format!("redis-{n}"))?;
    let started = Instant::now();
    seed(&redis.url(), &gstins[..seeded])?;
    let seed_wall = started.elapsed();
    let redis_memory = redis.used_memory()?;
    eprintln!(
        "scale-bench: seeded {seeded} sessions in {} ms; redis-server uses {} MiB",
        ms(seed_wall),
        mib(redis_memory)
    );

    let store = format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nencryption_key = \"{STORE_KEY}\"\nreplicas = {replicas}\n",
        redis.url()
    );
    // The outage's logins are paced by gstgate (10 a second for the group by default, as NIC
    // wants); the lean upstream takes far more, and the scenario measures the rejoin, not the
    // pace.
    let config = write_config(
        dir,
        &format!("scale-redis-{n}"),
        &gstins,
        &upstream_url,
        &public_key,
        &store,
        "logins_per_second = 10000\nmax_concurrent_logins = 96",
    )?;

    // The group starts at once, as after a deployment: each replica reads every record.
    let started = Instant::now();
    let spawned: Vec<Result<(Proc, String, Duration, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..replicas)
            .map(|r| {
                let config = &config;
                s.spawn(move || {
                    let name = format!("gstgate-redis-{n}-{r}");
                    let (p, proxy, _admin, took) = serve_logging(bin, dir, config, &name, LOG)?;
                    let rss_ready = rss(&p)?;
                    Ok((p, proxy, took, rss_ready))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow!("a replica's start panicked")))
            })
            .collect()
    });
    let group_ready = started.elapsed();
    let mut gws = Vec::new();
    let mut proxies = Vec::new();
    let mut starts = Vec::new();
    for s in spawned {
        let (p, proxy, took, rss_ready) = s?;
        gws.push(p);
        proxies.push(proxy);
        starts.push((took, rss_ready));
    }

    let before = logins()?;
    let mut warm = burst(&proxies, &gstins[..cold], invoice, concurrency, "W")?;
    warm.logins = logins()? - before;

    // The outage: the credentials without a session log in, each replica on its own.
    redis.stop();
    let before = logins()?;
    let mut outage = burst(&proxies, &gstins[seeded..], invoice, concurrency, "O")?;
    outage.logins = logins()? - before;

    let before = logins()?;
    let restarted = Instant::now();
    redis.start_again()?;
    let redis_load = restarted.elapsed();
    // Callers go on through the rejoin: a burst of seeded GSTINs, served from memory, shows
    // whether reading and taking up every record holds requests up.
    let during_gstins = &gstins[..seeded.min(DURING_REJOIN)];
    let (during, rejoins) = std::thread::scope(|s| {
        let during = s.spawn(|| burst(&proxies, during_gstins, invoice, concurrency, "R"));
        let rejoins = wait_for_rejoins(&mut gws, restarted);
        let during = during
            .join()
            .unwrap_or_else(|_| Err(anyhow!("the burst during the rejoin panicked")));
        (during, rejoins)
    });
    let (during, rejoins) = (during?, rejoins?);
    let group_rejoined = rejoins.iter().map(|r| r.after).max().unwrap_or_default();
    let rejoin_logins = logins()? - before;
    // The burst's window is the rejoin's: from the restart until both ended.
    let mut during = during;
    during.logins = rejoin_logins;

    // The same credentials through another replica each: the group's session, no login.
    let mut rotated = proxies.clone();
    rotated.rotate_left(1);
    let before = logins()?;
    let mut after = burst(&rotated, &gstins[seeded..], invoice, concurrency, "A")?;
    after.logins = logins()? - before;
    let rss_end = gws.iter().map(rss).collect::<Result<Vec<_>>>()?;
    drop(gws);
    drop(redis);

    Ok(Size {
        credentials: n,
        seeded,
        seed_wall,
        redis_memory,
        starts,
        group_ready,
        warm,
        outage,
        redis_load,
        rejoins,
        group_rejoined,
        rejoin_logins,
        during,
        after,
        rss_end,
    })
}

/// Polls every replica's log until each has rejoined the group; when, and what it said.
fn wait_for_rejoins(gws: &mut [Proc], restarted: Instant) -> Result<Vec<Rejoin>> {
    let mut rejoins: Vec<Option<Rejoin>> = (0..gws.len()).map(|_| None).collect();
    while rejoins.iter().any(Option::is_none) {
        for (gw, seen) in gws.iter_mut().zip(rejoins.iter_mut()) {
            if seen.is_some() {
                continue;
            }
            gw.check_alive()?;
            if let Some(line) = gw.find_line(REJOINED)? {
                *seen = Some(Rejoin {
                    after: restarted.elapsed(),
                    fields: rejoin_fields(&line),
                });
            }
        }
        ensure!(
            restarted.elapsed() < REJOIN_TIMEOUT,
            "the group did not rejoin within {REJOIN_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(rejoins.into_iter().flatten().collect())
}

/// The seeded session of `gstin`: a token of the lean upstream's form (30 hex digits) and a
/// SEK, both derived from the GSTIN so that the upstream and the store agree.
fn session_of(gstin: &str) -> (String, [u8; 32]) {
    let token: String = Sha256::digest(format!("token:{gstin}").as_bytes())[..15]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let sek: [u8; 32] = Sha256::digest(format!("sek:{gstin}").as_bytes()).into();
    (token, sek)
}

/// Writes a valid session for each of `gstins` to the Redis at `url`, sealed by gstgate.
fn seed(url: &str, gstins: &[String]) -> Result<()> {
    let seeder = RedisSeeder::new(STORE_KEY, "gstgate")?;
    let mut conn = redis::Client::open(url)?.get_connection()?;
    let now = SystemTime::now();
    for chunk in gstins.chunks(SEED_BATCH) {
        let mut pipe = redis::pipe();
        for g in chunk {
            let (token, sek) = session_of(g);
            let (key, value) = seeder.entry(SeedSession {
                upstream: UPSTREAM,
                gstin: g,
                user: USER,
                token: &token,
                sek: AesKey::from_slice(&sek)?,
                issued_at: now - Duration::from_secs(60),
                expires_at: now + Duration::from_secs(6 * 3600),
            })?;
            pipe.cmd("SET").arg(key).arg(value).ignore();
        }
        pipe.query::<()>(&mut conn)
            .context("seeding the sessions")?;
    }
    Ok(())
}

/// The key=value fields of a rejoin log line (taken_up, offered, the breakdown).
fn rejoin_fields(line: &str) -> String {
    line.split_whitespace()
        .filter(|w| w.contains('=') && !w.starts_with("\x1b"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The scenario's redis-server: a free loopback port, its files in the scratch directory.
struct RedisServer {
    bin: PathBuf,
    dir: PathBuf,
    name: String,
    port: u16,
    proc: Option<Proc>,
}

impl RedisServer {
    fn start(bin: &Path, scratch: &Path, name: &str) -> Result<Self> {
        let dir = scratch.join(name);
        fs::create_dir_all(&dir)?;
        let mut server = RedisServer {
            bin: bin.to_path_buf(),
            dir,
            name: name.to_string(),
            port: free_port()?,
            proc: None,
        };
        server.start_again()?;
        Ok(server)
    }

    /// Starts the server (again) on its port and files; returns once it accepts connections,
    /// which after a restart is once it has loaded its append-only file.
    fn start_again(&mut self) -> Result<()> {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--logfile", ""])
            .arg("--dir")
            .arg(&self.dir);
        let (p, _) = Proc::spawn_until(
            &self.name,
            cmd,
            &self.dir,
            "Ready to accept connections",
            Duration::from_secs(120),
        )?;
        self.proc = Some(p);
        Ok(())
    }

    /// Stops it (SIGTERM: it finishes writing its append-only file).
    fn stop(&mut self) {
        self.proc = None;
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `used_memory` of `INFO memory`, bytes.
    fn used_memory(&self) -> Result<u64> {
        let mut conn = redis::Client::open(self.url())?.get_connection()?;
        let info: String = redis::cmd("INFO").arg("memory").query(&mut conn)?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .context("no used_memory in INFO")
    }
}

fn report(results: &[Size], replicas: usize, concurrency: usize) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Redis store, {replicas} replicas started together, passthrough, lean upstream and \
         redis-server on the same machine; bursts over {concurrency} connections, round-robin \
         over the replicas.\n"
    );
    let _ = writeln!(
        out,
        "| credentials | sessions seeded | seeding | redis-server memory | replica | start to ready | RSS at ready | RSS at the end |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        for (i, ((ready, rss_ready), rss_end)) in r.starts.iter().zip(&r.rss_end).enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} ms | {} MiB | {} | {} ms | {} MiB | {} MiB |",
                r.credentials,
                r.seeded,
                ms(r.seed_wall),
                mib(r.redis_memory),
                i + 1,
                ms(*ready),
                mib(*rss_ready),
                mib(*rss_end),
            );
        }
        let _ = writeln!(
            out,
            "| {} | | | | **group** | **{} ms** | | |",
            r.credentials,
            ms(r.group_ready)
        );
    }
    let _ = writeln!(
        out,
        "\n| credentials | burst | requests | wall | req/s | p50 ms | p99 ms | max ms | errors | logins |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        for (label, b) in [
            ("warm (seeded sessions)", &r.warm),
            ("during the outage (no session yet)", &r.outage),
            ("from the restart on, through the rejoin", &r.during),
            ("after the rejoin, another replica each", &r.after),
        ] {
            let _ = writeln!(out, "| {} | {label} | {} |", r.credentials, b.cells(),);
        }
    }
    let _ = writeln!(
        out,
        "\n| credentials | redis-server restart to ready | replica | restart to rejoined | the rejoin's log line |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---|");
    for r in results {
        for (i, j) in r.rejoins.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} ms | {} | {} ms | `{}` |",
                r.credentials,
                ms(r.redis_load),
                i + 1,
                ms(j.after),
                j.fields
            );
        }
        let _ = writeln!(
            out,
            "| {} | | **group** | **{} ms** | logins meanwhile: {} |",
            r.credentials,
            ms(r.group_rejoined),
            r.rejoin_logins
        );
    }
    out
}
