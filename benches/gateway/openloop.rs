//! The open-loop load generator (`--open-loop`): requests are *scheduled* at a fixed rate,
//! whatever the target does, and each one's latency is counted from the moment it was due,
//! not from when a connection was free to send it (wrk2's correction for coordinated
//! omission). A target that stalls therefore shows every request that queued behind the
//! stall, as a real client population would see it; wrk's closed loop would quietly send
//! less instead.
//!
//! It runs as a child process of the orchestrator (`--open-loop-load URL`), pinned where wrk
//! would be, and prints the same `BENCH_RESULT` line as bench/generate-irn.lua, so that the
//! rest of the harness treats it as wrk.
//!
//! With `BENCH_LATENCY_TRACE=DIR` set, each run also writes every request's due time (µs from
//! the start) and latency (µs) to `DIR/openloop-<unix ms>.tsv`, one run per file in the order
//! the rounds ran: whether a tail is spread evenly or comes in stalls, and how often.

use std::collections::VecDeque;
use std::fs;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context as _, Result};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::sync::Notify;
use tokio::time::Instant;

/// What the workers share: the queue of due requests (their due times) and the tallies.
#[derive(Default)]
struct Shared {
    due: Mutex<VecDeque<Instant>>,
    wake: Notify,
    /// Per answered request: its due time (µs from the start) and its latency in µs, from
    /// due time to the whole reply read.
    latencies: Mutex<Vec<(u64, u64)>>,
    non2xx: AtomicU64,
    errors: AtomicU64,
}

/// Runs the generator against `url` for `secs` seconds at `rate` requests/s over
/// `connections` connections; the body and headers come from `BENCH_BODY` and
/// `BENCH_HEADERS`, as for the wrk script.
pub(crate) fn main(url: &str, rate: u32, connections: u32, secs: u64) -> Result<()> {
    let body = Bytes::from(fs::read(
        std::env::var("BENCH_BODY").context("BENCH_BODY")?,
    )?);
    let mut headers = vec![(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static("application/json"),
    )];
    if let Ok(path) = std::env::var("BENCH_HEADERS") {
        for line in fs::read_to_string(&path)?.lines() {
            if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().parse()?, value.trim().parse()?));
            }
        }
    }
    let uri: Uri = url.parse()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(uri, body, headers, rate, connections, secs))
}

async fn run(
    uri: Uri,
    body: Bytes,
    headers: Vec<(HeaderName, HeaderValue)>,
    rate: u32,
    connections: u32,
    secs: u64,
) -> Result<()> {
    anyhow::ensure!(rate > 0, "--open-loop needs --rate");
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("no host in {uri}"))?
        .clone();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let shared = Arc::new(Shared::default());
    let done = Arc::new(AtomicU64::new(0));
    let start = Instant::now() + Duration::from_millis(10);
    for _ in 0..connections {
        let (shared, done, body, headers) =
            (shared.clone(), done.clone(), body.clone(), headers.clone());
        let (authority, path) = (authority.clone(), path.clone());
        tokio::spawn(async move {
            worker(&authority, &path, &body, &headers, &shared, &done, start).await;
        });
    }

    // The schedule: request i is due at start + i / rate. Tokio's timer has a millisecond
    // grain, so the last stretch before a due time is spun (yielding, so replies are still
    // read); the load generator has its CPU to itself.
    let end = start + Duration::from_secs(secs);
    let step = 1e9 / f64::from(rate);
    let mut sent = 0u64;
    loop {
        let at = start + Duration::from_nanos((sent as f64 * step) as u64);
        if at >= end {
            break;
        }
        loop {
            let now = Instant::now();
            if now >= at {
                break;
            }
            if at - now > Duration::from_millis(2) {
                tokio::time::sleep_until(at - Duration::from_millis(1)).await;
            } else {
                tokio::task::yield_now().await;
            }
        }
        shared
            .due
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .push_back(at);
        shared.wake.notify_one();
        sent += 1;
    }
    // What is still queued or in flight gets five seconds, as wrk's `--timeout 5s`.
    let deadline = Instant::now() + Duration::from_secs(5);
    while done.load(Ordering::Relaxed) < sent && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let finished = done.load(Ordering::Relaxed);
    let answered = std::mem::take(&mut *shared.latencies.lock().map_err(|_| anyhow!("poisoned"))?);
    if let Ok(dir) = std::env::var("BENCH_LATENCY_TRACE") {
        write_trace(std::path::Path::new(&dir), &answered)?;
    }
    let mut lat: Vec<u64> = answered.iter().map(|&(_, us)| us).collect();
    lat.sort_unstable();
    let q = |p: f64| -> u64 {
        if lat.is_empty() {
            0
        } else {
            lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)]
        }
    };
    println!(
        "BENCH_RESULT requests={finished} duration_us={} bytes=0 connect=0 read={} write=0 \
         status={} timeout={} p50_us={} p90_us={} p99_us={} p999_us={} max_us={} mean_us={:.1}",
        (end - start).as_micros(),
        shared.errors.load(Ordering::Relaxed),
        shared.non2xx.load(Ordering::Relaxed),
        sent - finished,
        q(0.50),
        q(0.90),
        q(0.99),
        q(0.999),
        lat.last().copied().unwrap_or(0),
        if lat.is_empty() {
            0.0
        } else {
            lat.iter().sum::<u64>() as f64 / lat.len() as f64
        }
    );
    Ok(())
}

/// One connection: takes the oldest due request, sends it, records its latency from its due
/// time; reconnects after an error.
async fn worker(
    authority: &http::uri::Authority,
    path: &str,
    body: &Bytes,
    headers: &[(HeaderName, HeaderValue)],
    shared: &Shared,
    done: &AtomicU64,
    start: Instant,
) {
    let mut conn: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> = None;
    loop {
        let due = loop {
            let next = shared.due.lock().ok().and_then(|mut q| q.pop_front());
            match next {
                Some(at) => break at,
                None => shared.wake.notified().await,
            }
        };
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            conn = connect(authority).await;
        }
        let Some(tx) = conn.as_mut() else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            done.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let mut req = Request::new(Full::new(body.clone()));
        *req.method_mut() = http::Method::POST;
        *req.uri_mut() = match path.parse() {
            Ok(p) => p,
            Err(_) => return,
        };
        let h = req.headers_mut();
        h.insert(
            http::header::HOST,
            HeaderValue::from_str(authority.as_str())
                .unwrap_or(HeaderValue::from_static("localhost")),
        );
        for (name, value) in headers {
            h.insert(name.clone(), value.clone());
        }
        let ok = match tx.ready().await {
            Ok(()) => match tx.send_request(req).await {
                Ok(res) => {
                    let status = res.status();
                    match res.into_body().collect().await {
                        Ok(_) => {
                            if !status.is_success() && !status.is_redirection() {
                                shared.non2xx.fetch_add(1, Ordering::Relaxed);
                            }
                            true
                        }
                        Err(_) => false,
                    }
                }
                Err(_) => false,
            },
            Err(_) => false,
        };
        if ok {
            let us = u64::try_from(due.elapsed().as_micros()).unwrap_or(u64::MAX);
            let at = u64::try_from((due - start).as_micros()).unwrap_or(u64::MAX);
            if let Ok(mut l) = shared.latencies.lock() {
                l.push((at, us));
            }
        } else {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            conn = None;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
}

/// Writes one run's (due time, latency) pairs, in due order, to a new file in `dir`.
fn write_trace(dir: &std::path::Path, answered: &[(u64, u64)]) -> Result<()> {
    let mut rows = answered.to_vec();
    rows.sort_unstable();
    let mut text = String::from("due_us\tlatency_us\n");
    for (at, us) in rows {
        text.push_str(&format!("{at}\t{us}\n"));
    }
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let path = dir.join(format!("openloop-{stamp}.tsv"));
    fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

async fn connect(
    authority: &http::uri::Authority,
) -> Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = tokio::net::TcpStream::connect(authority.as_str())
        .await
        .ok()?;
    let _ = stream.set_nodelay(true);
    let (tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .ok()?;
    tokio::spawn(conn);
    Some(tx)
}
