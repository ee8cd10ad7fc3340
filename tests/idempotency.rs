//! `Idempotency-Key` over real processes (issue 18): a replay is the stored answer byte for
//! byte with no upstream call; another body is 422; concurrent duplicates make one upstream
//! call, on one gateway, across a `kill -9` of the embedded store's gateway, and across
//! replicas sharing Redis; hostile keys are refused; one client's key never answers another.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

const GENERATE: &str = "/eicore/v1.03/Invoice";
const KEY_A: &str = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
const OTHER_KEY: &str = "other-client-api-key-0123456789abcdef";

/// A generate-IRN for `doc` with `key`, sent to `proxy` as the default client.
fn keyed(
    http: &reqwest::Client,
    proxy: SocketAddr,
    key: &str,
    doc: &str,
) -> reqwest::RequestBuilder {
    http.post(format!("http://{proxy}{GENERATE}"))
        .header("x-api-key", API_KEY)
        .header("gstin", GSTIN)
        .header("idempotency-key", key)
        .json(&invoice(GSTIN, doc))
}

/// What a caller got, byte for byte.
#[derive(Debug, PartialEq, Eq)]
struct Got {
    status: u16,
    content_type: Option<String>,
    body: Vec<u8>,
}

/// Reads `res` whole; also whether it was marked replayed.
async fn got(res: reqwest::Response) -> (Got, bool) {
    let replayed = res
        .headers()
        .get("gstgate-outcome")
        .is_some_and(|v| v == "replayed");
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = res.status().as_u16();
    let body = res.bytes().await.unwrap().to_vec();
    (
        Got {
            status,
            content_type,
            body,
        },
        replayed,
    )
}

/// Data calls the simulator has received (every call here is a generate).
async fn upstream_calls(sim: &Sim) -> u64 {
    sim.counters().await["requests"].as_u64().unwrap()
}

fn irn(body: &[u8]) -> String {
    let v: Value = serde_json::from_slice(body).unwrap();
    v["Data"]["Irn"]
        .as_str()
        .unwrap_or_else(|| panic!("no IRN in {v}"))
        .to_owned()
}

/// Acceptance 4: the replay is the first answer byte for byte, marked replayed, and the
/// simulator sees no second generate; the same key with another body is 422.
#[tokio::test]
async fn a_replay_is_the_stored_answer_byte_for_byte_without_an_upstream_call() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let (first, replayed) = got(keyed(&gw.http, gw.proxy, "k-1", "IDEM-1")
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert!(!replayed);
    let calls = upstream_calls(&sim).await;
    let (again, replayed) = got(keyed(&gw.http, gw.proxy, "k-1", "IDEM-1")
        .send()
        .await
        .unwrap())
    .await;
    assert!(replayed, "not marked replayed");
    assert_eq!(again, first);
    assert_eq!(upstream_calls(&sim).await, calls, "a second upstream call");
    assert_eq!(
        gw.metric(r#"gstgate_generate_outcomes_total{upstream="einvoice",outcome="replayed"}"#)
            .await,
        1.0
    );
    let res = keyed(&gw.http, gw.proxy, "k-1", "IDEM-2")
        .send()
        .await
        .unwrap();
    expect_problem(res, 422, "idempotency_key_reused").await;
    assert_eq!(upstream_calls(&sim).await, calls);
}

/// Acceptance 4: twenty requests with one key at once make exactly one upstream generate,
/// and every caller gets its answer.
#[tokio::test]
async fn twenty_concurrent_requests_with_one_key_make_one_upstream_generate() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    sim.control("/_sim/knobs", serde_json::json!({"latency_ms": 300}))
        .await;
    let before = upstream_calls(&sim).await;
    let answers = join_all((0..20).map(|_| async {
        got(keyed(&gw.http, gw.proxy, "burst", "IDEM-BURST")
            .send()
            .await
            .unwrap())
        .await
    }))
    .await;
    assert_eq!(upstream_calls(&sim).await - before, 1, "upstream generates");
    let first = &answers[0].0;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    assert!(answers.iter().all(|(a, _)| a == first), "different answers");
    assert_eq!(answers.iter().filter(|(_, r)| *r).count(), 19);
}

/// A key on a GET is ignored (a read is safe to repeat), and a POST without a key is not
/// keyed.
#[tokio::test]
async fn a_key_on_a_get_is_ignored() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    for _ in 0..2 {
        let res = gw
            .request(Method::GET, "/eicore/v1.03/Invoice/irnbydocdetails?doctype=INV&docnum=NONE-1&docdate=20/11/2026")
            .header("idempotency-key", "\u{1}not-even-valid")
            .send()
            .await;
        // A control character is refused by the HTTP client or answered; never replayed.
        if let Ok(res) = res {
            assert!(res.headers().get("gstgate-outcome").is_none());
        }
        let res = gw
            .request(Method::GET, "/eicore/v1.03/Invoice/irnbydocdetails?doctype=INV&docnum=NONE-1&docdate=20/11/2026")
            .header("idempotency-key", "k-get")
            .send()
            .await
            .unwrap();
        assert!(res.headers().get("gstgate-outcome").is_none());
    }
    assert_eq!(upstream_calls(&sim).await, 2);
}

/// Security: a key that is too long, not ASCII, or carries a bare CR is refused with 400
/// over real HTTP before anything goes upstream, and never reaches the log.
#[tokio::test]
async fn a_hostile_key_is_refused_and_never_logged() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let long = format!("MARKERLONG{}", "a".repeat(10 * 1024));
    let res = keyed(&gw.http, gw.proxy, &long, "IDEM-H")
        .send()
        .await
        .unwrap();
    let body = expect_problem(res, 400, "idempotency_key_invalid").await;
    assert!(!body.to_string().contains("MARKERLONG"));
    let res = gw
        .request(Method::POST, GENERATE)
        .header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes(b"MARKERUTF8caf\xc3\xa9").unwrap(),
        )
        .json(&invoice(GSTIN, "IDEM-H"))
        .send()
        .await
        .unwrap();
    expect_problem(res, 400, "idempotency_key_invalid").await;
    assert_eq!(
        upstream_calls(&sim).await,
        0,
        "a hostile key reached the upstream"
    );
    // A line break cannot be part of a key: HTTP/1.1 parsing ends the header line at a bare
    // LF (or CR), so what follows is a header of its own and the key is what precedes it.
    // Either way nothing of it may reach the log.
    let body = serde_json::to_vec(&invoice(GSTIN, "IDEM-H")).unwrap();
    for value in ["MARKERCR\rX-Injected: 1", "MARKERLF\nX-Injected: 1"] {
        let head = format!(
            "POST {GENERATE} HTTP/1.1\r\nHost: gw\r\nx-api-key: {API_KEY}\r\ngstin: {GSTIN}\r\nidempotency-key: {value}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let text = raw_exchange(gw.proxy, &head, &body, Duration::from_secs(10)).await;
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        assert!(status == 400 || status == 200, "{text}");
    }
    // The access log of the refusals is written: then nothing of the keys may be in it.
    gw.logs.wait_for_count("idempotency_key_invalid", 2).await;
    let logs = gw.logs.text();
    for marker in [
        "MARKERLONG",
        "MARKERUTF8",
        "MARKERCR",
        "MARKERLF",
        "X-Injected",
    ] {
        assert!(!logs.contains(marker), "{marker} in the log:\n{logs}");
    }
}

/// Keys are scoped per client: another client's identical request with the same key is
/// its own first request, never a replay of the first client's answer.
#[tokio::test]
async fn one_clients_key_never_replays_to_another_client() {
    let sim = Sim::start(SimOpts::default()).await;
    let opts = GwOpts {
        clients: vec![
            ("billing".into(), API_KEY.into(), vec!["*".into()]),
            ("other".into(), OTHER_KEY.into(), vec!["*".into()]),
        ],
        ..GwOpts::default()
    };
    let gw = Gateway::start(&sim, opts).await;
    let (first, _) = got(keyed(&gw.http, gw.proxy, "shared", "IDEM-C")
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(first.status, 200);
    let res = gw
        .http
        .post(format!("http://{}{GENERATE}", gw.proxy))
        .header("x-api-key", OTHER_KEY)
        .header("gstin", GSTIN)
        .header("idempotency-key", "shared")
        .json(&invoice(GSTIN, "IDEM-C"))
        .send()
        .await
        .unwrap();
    let (other, replayed) = got(res).await;
    assert!(!replayed, "another client's answer was replayed");
    assert_ne!(other, first);
    assert_eq!(upstream_calls(&sim).await, 2);
}

/// A gateway whose embedded store is `dir/sessions.redb`.
fn embedded(dir: &Path) -> GwOpts {
    GwOpts {
        store: format!("path = \"{}\"", dir.join("sessions.redb").display()),
        ..GwOpts::default()
    }
}

/// `kill -9` of `gw`, waited for.
async fn kill_9(gw: &mut Gateway) {
    let status = std::process::Command::new("kill")
        .args(["-9", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    gw.wait().await;
}

/// Acceptance 7: a key answered before a `kill -9` is replayed after the restart, from the
/// embedded store, with no upstream call.
#[tokio::test]
async fn a_key_answered_before_a_kill_9_is_replayed_after_the_restart() {
    let sim = Sim::start(SimOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(&sim, embedded(dir.path())).await;
    let (first, _) = got(keyed(&gw.http, gw.proxy, "k-kill", "IDEM-K")
        .send()
        .await
        .unwrap())
    .await;
    assert_eq!(
        first.status,
        200,
        "{}",
        String::from_utf8_lossy(&first.body)
    );
    kill_9(&mut gw).await;
    let calls = upstream_calls(&sim).await;
    let gw = Gateway::start(&sim, embedded(dir.path())).await;
    let (again, replayed) = got(keyed(&gw.http, gw.proxy, "k-kill", "IDEM-K")
        .send()
        .await
        .unwrap())
    .await;
    assert!(replayed);
    assert_eq!(again, first);
    assert_eq!(
        upstream_calls(&sim).await,
        calls,
        "an upstream call after the restart"
    );
}

/// `n` gateways in front of `sim` sharing `redis`, claims leased for `lease`.
async fn on_redis(sim: &Sim, redis: &RedisServer, n: usize, lease: &str) -> Vec<Gateway> {
    join_all((0..n).map(|_| Gateway::start(sim, redis_opts(redis, lease)))).await
}

fn redis_opts(redis: &RedisServer, lease: &str) -> GwOpts {
    GwOpts {
        store: format!(
            "backend = \"redis\"\nredis_url = \"{}\"\nencryption_key = \"{KEY_A}\"\nreplicas = 3\n",
            redis.url()
        ),
        extra_toml: format!("\n[idempotency]\nlease = \"{lease}\"\n"),
        ..GwOpts::default()
    }
}

/// Acceptance 7: the same key sent to two replicas at once makes one upstream generate, and
/// both callers get the same answer.
#[tokio::test]
async fn the_same_key_on_two_replicas_at_once_makes_one_upstream_generate() {
    let sim = Sim::start(SimOpts::default()).await;
    let redis = RedisServer::start().await;
    let gws = on_redis(&sim, &redis, 2, "10s").await;
    sim.control("/_sim/knobs", serde_json::json!({"latency_ms": 300}))
        .await;
    for round in 0..5 {
        let key = format!("both-{round}");
        let doc = format!("IDEM-R{round}");
        let before = upstream_calls(&sim).await;
        let answers = join_all(gws.iter().map(|gw| {
            let (key, doc) = (key.clone(), doc.clone());
            async move { got(keyed(&gw.http, gw.proxy, &key, &doc).send().await.unwrap()).await }
        }))
        .await;
        assert_eq!(upstream_calls(&sim).await - before, 1, "round {round}");
        assert_eq!(answers[0].0.status, 200);
        assert_eq!(answers[0].0, answers[1].0);
        assert_eq!(answers.iter().filter(|(_, r)| *r).count(), 1);
    }
}

/// What one soak caller ended with.
struct Ended {
    doc: String,
    status: u16,
    body: Vec<u8>,
    attempts: u32,
    /// The answer's `gstgate-outcome` header.
    outcome: Option<String>,
}

/// One caller of the soak: sends its generate with its key to a live replica, and on a reset
/// or refused connection sends it again, same key, to the next one.
async fn soak_call(live: Arc<Mutex<Vec<SocketAddr>>>, start: usize, doc: String) -> Ended {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let key = format!("soak-{doc}");
    let mut slot = start;
    for attempts in 1..=30 {
        let proxy = live.lock().unwrap()[slot % 3];
        match keyed(&http, proxy, &key, &doc).send().await {
            Ok(res) if res.status() != 409 && res.status() != 503 => {
                let status = res.status().as_u16();
                let outcome = res
                    .headers()
                    .get("gstgate-outcome")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                let body = res.bytes().await.map(|b| b.to_vec()).unwrap_or_default();
                return Ended {
                    doc,
                    status,
                    body,
                    attempts,
                    outcome,
                };
            }
            _ => {
                slot += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("{doc}: no answer after 30 attempts");
}

/// Acceptance 8: three replicas on Redis under steady generate traffic, one `kill -9`ed
/// (and started again) every 30 s for 70 s; callers whose connection broke retry on another
/// replica with the same key. Every caller gets its IRN, and the simulator holds each
/// document once, with the IRN its caller got.
///
/// Each generate spends 30 ms at the simulator before its document is committed and 150 ms
/// after it, before the reply: most generates a kill cuts off have made their IRN, so the
/// replica that takes the key over must find it (the hard case), not make it again. The
/// lease is 2 s instead of the default 150 s so that takeovers happen within the run.
#[tokio::test]
async fn replicas_killed_under_traffic_lose_and_duplicate_no_invoice() {
    let sim = Sim::start(SimOpts::default()).await;
    let redis = RedisServer::start().await;
    let mut gws = on_redis(&sim, &redis, 3, "2s").await;
    sim.control(
        "/_sim/knobs",
        serde_json::json!({"latency_ms": 30, "reply_latency_ms": 150}),
    )
    .await;
    let live = Arc::new(Mutex::new(gws.iter().map(|g| g.proxy).collect::<Vec<_>>()));
    let stop_at = Instant::now() + Duration::from_secs(70);
    let callers = join_all((0..8).map(|w| {
        let live = live.clone();
        async move {
            let mut ended = Vec::new();
            let mut n = 0;
            while Instant::now() < stop_at {
                ended.push(soak_call(live.clone(), w + n, format!("S-{w}-{n}")).await);
                n += 1;
            }
            ended
        }
    }));
    let mut dead = Vec::new();
    let killer = async {
        let mut kills = 0;
        while Instant::now() + Duration::from_secs(30) < stop_at + Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_secs(30)).await;
            let slot = kills % 3;
            kill_9(&mut gws[slot]).await;
            let fresh = Gateway::start(&sim, redis_opts(&redis, "2s")).await;
            live.lock().unwrap()[slot] = fresh.proxy;
            dead.push(std::mem::replace(&mut gws[slot], fresh));
            kills += 1;
        }
        kills
    };
    let (ended, kills) = tokio::join!(callers, killer);
    let ended: Vec<Ended> = ended.into_iter().flatten().collect();
    assert!(kills >= 2, "kills: {kills}");
    let retried = ended.iter().filter(|e| e.attempts > 1).count();
    let failed: Vec<String> = ended
        .iter()
        .filter(|e| e.status != 200)
        .map(|e| {
            format!(
                "{} {}: {}",
                e.doc,
                e.status,
                String::from_utf8_lossy(&e.body)
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} callers ({retried} retried after a kill) got no IRN:\n{}",
        failed.len(),
        ended.len(),
        failed.join("\n")
    );
    sim.control(
        "/_sim/knobs",
        serde_json::json!({"latency_ms": 0, "reply_latency_ms": 0}),
    )
    .await;
    let docs = sim.documents().await;
    assert_eq!(
        docs["irn_count"],
        ended.len(),
        "one document per caller, none missing, none twice"
    );
    let gw = &gws[0];
    for e in &ended {
        let res = gw
            .request(
                Method::GET,
                &format!(
                    "/eicore/v1.03/Invoice/irnbydocdetails?doctype=INV&docnum={}&docdate=20/11/2026",
                    e.doc
                ),
            )
            .send()
            .await
            .unwrap();
        let held = res.bytes().await.unwrap();
        assert_eq!(
            irn(&held),
            irn(&e.body),
            "{}: the simulator holds another IRN",
            e.doc
        );
    }
    // A caller that retried after a kill and got its IRN marked recovered: the dead
    // replica's generate had made it, and the replica that took the key over found it.
    let found_after_kill = ended
        .iter()
        .filter(|e| e.attempts > 1 && e.outcome.as_deref() == Some("recovered"))
        .count();
    eprintln!(
        "soak: {} callers, {retried} retried after a broken connection, {found_after_kill} of them answered with the document a killed replica made, {kills} kills",
        ended.len()
    );
    assert!(retried > 0, "no kill broke a caller's connection");
    assert!(
        found_after_kill > 0,
        "no kill struck a generate whose document was made: the hard case was not exercised"
    );
}

/// `idempotency.max_keys` bounds the keys held, in the embedded store and in Redis: a new key
/// beyond it is 503 `idempotency_unavailable` and not sent; a key already held still replays.
#[tokio::test]
async fn a_new_key_beyond_max_keys_is_refused_and_not_sent() {
    let sim = Sim::start(SimOpts::default()).await;
    let redis = RedisServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    let bounded = "\n[idempotency]\nmax_keys = 2\n".to_owned();
    let stores = [
        embedded(dir.path()),
        GwOpts {
            extra_toml: String::new(),
            ..redis_opts(&redis, "10s")
        },
    ];
    for (n, opts) in stores.into_iter().enumerate() {
        let gw = Gateway::start(
            &sim,
            GwOpts {
                extra_toml: bounded.clone(),
                ..opts
            },
        )
        .await;
        for i in 0..2 {
            let res = keyed(
                &gw.http,
                gw.proxy,
                &format!("max-{n}-{i}"),
                &format!("MAX-{n}-{i}"),
            )
            .send()
            .await
            .unwrap();
            assert_eq!(res.status(), 200);
        }
        let calls = upstream_calls(&sim).await;
        let res = keyed(
            &gw.http,
            gw.proxy,
            &format!("max-{n}-x"),
            &format!("MAX-{n}-x"),
        )
        .send()
        .await
        .unwrap();
        expect_problem(res, 503, "idempotency_unavailable").await;
        assert_eq!(upstream_calls(&sim).await, calls);
        let (_, replayed) = got(keyed(
            &gw.http,
            gw.proxy,
            &format!("max-{n}-0"),
            &format!("MAX-{n}-0"),
        )
        .send()
        .await
        .unwrap())
        .await;
        assert!(replayed);
    }
}

/// Acceptance 7 and 8's hard case, on Redis: the replica serving a key's first request is
/// `kill -9`ed while that request is at the upstream. The same key sent to another replica
/// waits for the dead claim's lease, takes the key over, says that an earlier attempt may
/// have reached the upstream, and answers.
#[tokio::test]
async fn a_key_whose_replica_died_mid_request_is_taken_over_after_its_lease() {
    let sim = Sim::start(SimOpts::default()).await;
    let redis = RedisServer::start().await;
    let mut gws = on_redis(&sim, &redis, 2, "2s").await;
    sim.control("/_sim/knobs", serde_json::json!({"latency_ms": 1500}))
        .await;
    let before = upstream_calls(&sim).await;
    let (http, proxy) = (gws[0].http.clone(), gws[0].proxy);
    let first = tokio::spawn(async move { keyed(&http, proxy, "dies", "IDEM-DIE").send().await });
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream_calls(&sim).await == before {
        assert!(
            Instant::now() < deadline,
            "the first request never reached the upstream"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    kill_9(&mut gws[0]).await;
    assert!(first.await.unwrap().is_err(), "the killed replica answered");
    let started = Instant::now();
    let (again, replayed) = got(keyed(&gws[1].http, gws[1].proxy, "dies", "IDEM-DIE")
        .send()
        .await
        .unwrap())
    .await;
    assert!(!replayed);
    // At most the dead claim's lease, then the upstream's latency: no 409, no timeout.
    assert!(started.elapsed() < Duration::from_secs(6));
    // The taker was told that the dead replica's attempt may have reached the upstream: it
    // looked the document up before sending anything, and sent at most one generate after.
    let paths: Vec<String> = sim
        .requests(20)
        .await
        .iter()
        .filter_map(|r| r["path"].as_str().map(str::to_owned))
        .collect();
    let is_generate = |p: &String| p.ends_with("/Invoice");
    let first = paths.iter().position(is_generate);
    let lookup = paths.iter().rposition(|p| p.contains("irnbydocdetails"));
    assert!(
        matches!((first, lookup), (Some(f), Some(l)) if f < l),
        "the taker did not look the document up first: {paths:?}"
    );
    let after = lookup.map_or(0, |l| paths[l..].iter().filter(|p| is_generate(p)).count());
    assert!(
        after <= 1,
        "more than one generate after the lookup: {paths:?}"
    );
    assert_eq!(
        again.status,
        200,
        "{}",
        String::from_utf8_lossy(&again.body)
    );
}

/// While Redis is down a keyed POST is refused with 503 `idempotency_unavailable` and not
/// sent (its promise could not be kept); a POST without a key is served as before, from the
/// session in memory; once Redis is back, keys work again.
#[tokio::test]
async fn a_keyed_post_is_refused_unsent_while_the_shared_store_is_down() {
    let sim = Sim::start(SimOpts::default()).await;
    let mut redis = RedisServer::start().await;
    let gw = Gateway::start(&sim, redis_opts(&redis, "10s")).await;
    let res = keyed(&gw.http, gw.proxy, "up", "IDEM-UP")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    redis.stop().await;
    let calls = upstream_calls(&sim).await;
    let res = keyed(&gw.http, gw.proxy, "down", "IDEM-DOWN")
        .send()
        .await
        .unwrap();
    expect_problem(res, 503, "idempotency_unavailable").await;
    assert_eq!(upstream_calls(&sim).await, calls);
    let res = gw.generate(GSTIN, "IDEM-NOKEY").await;
    assert_eq!(res.status(), 200);
    redis.restart().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let res = keyed(&gw.http, gw.proxy, "down", "IDEM-DOWN")
            .send()
            .await
            .unwrap();
        if res.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "keys did not work again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Review finding 1: a key left open by an attempt whose outcome is unknown stays open when
/// the next attempt fails before it sends anything (here its session: the password changed
/// at the portal). The third attempt looks the document up first and gets its IRN, instead
/// of generating blind and relaying NIC's "duplicate IRN".
#[tokio::test]
async fn a_key_left_open_stays_open_when_the_next_attempt_fails_before_sending() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    // The document exists at NIC: an earlier attempt made it.
    let (seed, _) = got(keyed(&gw.http, gw.proxy, "k-seed", "OPEN-1")
        .send()
        .await
        .unwrap())
    .await;
    let made = irn(&seed.body);
    // This key's first attempt: the generate and each of its five lookups fail, so its
    // outcome is unknown and the key is left open.
    sim.control(
        "/_sim/faults",
        json!({"mode": "status_500", "count": 6, "path_prefix": GENERATE}),
    )
    .await;
    let res = keyed(&gw.http, gw.proxy, "k-open", "OPEN-1")
        .send()
        .await
        .unwrap();
    expect_problem(res, 502, "outcome_unknown").await;
    sim.clear_faults().await;

    // The second attempt fails getting a session: nothing is sent.
    let password = |p: &str| json!({"gstin": GSTIN, "username": USER, "password": p});
    sim.control("/_sim/users/password", password("changed-on-the-portal"))
        .await;
    sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
        .await;
    expect_problem(
        gw.generate(GSTIN, "OPEN-2").await,
        502,
        "credentials_rejected",
    )
    .await;
    let res = keyed(&gw.http, gw.proxy, "k-open", "OPEN-1")
        .send()
        .await
        .unwrap();
    expect_problem(res, 502, "credentials_rejected").await;

    sim.control("/_sim/users/password", password(PASSWORD))
        .await;
    assert_eq!(gw.admin_refresh(GSTIN).await.status(), 200);
    let res = keyed(&gw.http, gw.proxy, "k-open", "OPEN-1")
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.headers()
            .get("gstgate-outcome")
            .map(|v| v.to_str().unwrap().to_owned())
            .as_deref(),
        Some("recovered"),
        "the key stayed open: looked up first"
    );
    let (third, _) = got(res).await;
    assert_eq!(irn(&third.body), made);
}

/// An e-invoice cancel of `irn` with `key`.
fn keyed_cancel(gw: &Gateway, key: &str, irn: &str) -> reqwest::RequestBuilder {
    gw.request(Method::POST, "/eicore/v1.03/Invoice/Cancel")
        .header("idempotency-key", key)
        .json(&json!({"Irn": irn, "CnlRsn": "1", "CnlRem": "test"}))
}

/// Review finding 5: a relayed 5xx (here NIC's JSON error at 503) is not the key's answer:
/// it is never replayed, and the key is left open for the next attempt.
#[tokio::test]
async fn a_relayed_5xx_is_not_stored_as_the_keys_answer() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let unknown_irn = "0".repeat(64);
    sim.control("/_sim/knobs", json!({"error_http_status": 503}))
        .await;
    let res = keyed_cancel(&gw, "k-5xx", &unknown_irn)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 503);
    sim.control("/_sim/knobs", json!({"error_http_status": 200}))
        .await;
    let (again, replayed) = got(keyed_cancel(&gw, "k-5xx", &unknown_irn)
        .send()
        .await
        .unwrap())
    .await;
    assert!(!replayed, "the 503 was replayed: {again:?}");
    assert_ne!(again.status, 503);
}

/// Review finding 12: a replayed cancel is not counted as a generate's outcome.
#[tokio::test]
async fn a_replayed_cancel_is_not_counted_as_a_generate_outcome() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let unknown_irn = "0".repeat(64);
    let (first, _) = got(keyed_cancel(&gw, "k-cancel", &unknown_irn)
        .send()
        .await
        .unwrap())
    .await;
    let (again, replayed) = got(keyed_cancel(&gw, "k-cancel", &unknown_irn)
        .send()
        .await
        .unwrap())
    .await;
    assert!(replayed);
    assert_eq!(again, first);
    assert_eq!(
        gw.metric(r#"gstgate_generate_outcomes_total{upstream="einvoice",outcome="replayed"}"#)
            .await,
        0.0
    );
}

/// Review finding 10: two users (`user_name`) of one client and GSTIN have their own keys:
/// one user's answer is never replayed to the other.
#[tokio::test]
async fn one_users_key_never_replays_to_another_user_of_the_gstin() {
    const SECOND: &str = "api_user_2";
    let users = vec![
        (GSTIN.into(), USER.into(), PASSWORD.into()),
        (GSTIN.into(), SECOND.into(), PASSWORD.into()),
    ];
    let sim = Sim::start(SimOpts {
        users: users.clone(),
        ..SimOpts::default()
    })
    .await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            credentials: users,
            ..GwOpts::default()
        },
    )
    .await;
    let as_user = |user: &str| {
        keyed(&gw.http, gw.proxy, "k-user", "USER-1")
            .header("user_name", user)
            .send()
    };
    let (first, replayed) = got(as_user(USER).await.unwrap()).await;
    assert_eq!(first.status, 200);
    assert!(!replayed);
    let calls = upstream_calls(&sim).await;
    let (other, replayed) = got(as_user(SECOND).await.unwrap()).await;
    assert!(!replayed, "the first user's answer was replayed: {other:?}");
    assert_eq!(upstream_calls(&sim).await, calls + 1);
    let (again, replayed) = got(as_user(USER).await.unwrap()).await;
    assert!(replayed);
    assert_eq!(again, first);
}

/// Generate-IRN calls the simulator has logged.
async fn generate_posts(sim: &Sim) -> usize {
    sim.requests(200)
        .await
        .iter()
        .filter(|r| r["method"] == "POST" && r["path"] == GENERATE)
        .count()
}

/// Review finding 3: a replica that can no longer renew its claim (Redis down for more than
/// half the lease) sends nothing more for the key: after its generate was lost and the
/// lookup found nothing, the retry is not sent (another replica may hold the key by then),
/// and the caller gets 503 `idempotency_unavailable`.
#[tokio::test]
async fn a_claim_that_cannot_be_renewed_sends_no_second_generate() {
    let sim = Sim::start(SimOpts::default()).await;
    let mut redis = RedisServer::start().await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            timeout: "2s",
            ..redis_opts(&redis, "3s")
        },
    )
    .await;
    assert_eq!(gw.generate(GSTIN, "WARM-R").await.status(), 200);
    sim.control(
        "/_sim/faults",
        json!({"mode": "hang", "count": 1, "method": "POST", "path_prefix": GENERATE}),
    )
    .await;
    let before = generate_posts(&sim).await;
    let calls = upstream_calls(&sim).await;
    let pending = tokio::spawn(keyed(&gw.http, gw.proxy, "k-renew", "RENEW-1").send());
    // The generate reached the simulator (and hangs there): Redis goes down now, for the
    // rest of the request.
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream_calls(&sim).await == calls {
        assert!(Instant::now() < deadline, "the generate never arrived");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    redis.stop().await;
    let res = pending.await.unwrap().unwrap();
    expect_problem(res, 503, "idempotency_unavailable").await;
    assert_eq!(
        generate_posts(&sim).await - before,
        1,
        "a second generate was sent without the claim"
    );
}
