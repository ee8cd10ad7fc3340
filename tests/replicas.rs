//! Replicas through Redis (issue 9): several gateway processes sharing one real Redis server
//! behave, as a group, like one gateway — one login for all, one refresh per expiry, one
//! OTP session, one lockout, one login allowance — and put nothing readable in Redis.

mod common;

use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::*;
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

const KEY_A: &str = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
const KEY_B: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";
const RETSUM: &str = "/taxpayerapi/v1.0/returns/gstr1?action=RETSUM";

/// The `[store]` body of a replica on `redis`.
fn redis_store(redis: &RedisServer, extra: &str) -> String {
    format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nencryption_key = \"{KEY_A}\"\nreplicas = 3\n{extra}",
        redis.url()
    )
}

/// `n` gateways in front of `sim`, sharing `redis`. `opts.store` is taken as is if it is a
/// Redis store already; the default (memory) store is replaced by `redis`; anything else is
/// extra lines for it.
async fn replicas(sim: &Sim, redis: &RedisServer, n: usize, opts: GwOpts) -> Vec<Gateway> {
    let store = if opts.store.contains("backend = \"redis\"") {
        opts.store.clone()
    } else if opts.store.contains("backend") {
        redis_store(redis, "")
    } else {
        redis_store(redis, &opts.store)
    };
    let opts = GwOpts { store, ..opts };
    join_all((0..n).map(|_| Gateway::start(sim, opts.clone()))).await
}

/// The sum over the gateways of a metric series.
async fn total(gws: &[Gateway], series: &str) -> f64 {
    let mut sum = 0.0;
    for gw in gws {
        sum += gw.metric(series).await;
    }
    sum
}

/// Every store operation a gateway has made, whatever its kind and result.
async fn store_operations(gw: &Gateway) -> f64 {
    let text = gw.metrics().await;
    text.lines()
        .filter(|l| l.starts_with("gstgate_store_operations_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `n` generate-IRN requests spread round-robin over the gateways, all at once; every one
/// must succeed.
async fn generate_everywhere(gws: &[Gateway], n: usize, tag: &str) {
    let results = join_all((0..n).map(|i| {
        let gw = &gws[i % gws.len()];
        let doc = format!("{tag}/{i}");
        async move {
            let res = gw.generate(GSTIN, &doc).await;
            (res.status().as_u16(), res.text().await.unwrap())
        }
    }))
    .await;
    for (status, body) in results {
        assert_eq!(status, 200, "{body}");
    }
}

/// Acceptance 1: 300 concurrent cold requests over three replicas cause exactly one login; a
/// token rejection seen by all three causes exactly one re-login; and a steady-state request
/// makes no Redis round trip at all.
#[tokio::test]
async fn three_replicas_log_in_once_and_re_login_once_for_the_group() {
    let sim = Sim::start(SimOpts::default()).await;
    let redis = RedisServer::start().await;
    let gws = replicas(&sim, &redis, 3, GwOpts::default()).await;

    generate_everywhere(&gws, 300, "COLD").await;
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        1,
        "one login for the group"
    );

    // Steady state: the sessions are in each replica's memory.
    let before: Vec<f64> = join_all(gws.iter().map(store_operations)).await;
    generate_everywhere(&gws, 60, "WARM").await;
    let after: Vec<f64> = join_all(gws.iter().map(store_operations)).await;
    assert_eq!(before, after, "no store operation on the request path");

    // Every token dies at the upstream: each replica sees the rejection, the group logs in
    // once and every request is replayed with the new token.
    sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
        .await;
    generate_everywhere(&gws, 90, "REJECTED").await;
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        2,
        "one re-login for the group"
    );
    assert_eq!(
        total(
            &gws,
            r#"gstgate_token_refreshes_total{upstream="einvoice",trigger="rejected"}"#
        )
        .await,
        1.0
    );
}

/// Acceptance 1, over time: with 6-second tokens refreshed 3 s before expiry, three replicas
/// under steady traffic refresh once per expiry for the group, not once per replica.
#[tokio::test]
async fn the_proactive_refresh_happens_once_per_expiry_for_the_group() {
    let sim = Sim::start(SimOpts {
        token_ttl: "6s",
        ..SimOpts::default()
    })
    .await;
    let redis = RedisServer::start().await;
    let gws = replicas(
        &sim,
        &redis,
        3,
        GwOpts {
            refresh_before: "3s",
            // Tokens live 6 s instead of 6 h: the 15-minute login window shrinks with them,
            // to 10 s, and its limit still allows every refresh one token life needs.
            upstream_extra: "login_window = \"10s\"".into(),
            ..GwOpts::default()
        },
    )
    .await;
    let started = Instant::now();
    let mut n = 0;
    while started.elapsed() < Duration::from_secs(7) {
        generate_everywhere(&gws, 3, &format!("STEADY{n}")).await;
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let proactive = total(
        &gws,
        r#"gstgate_token_refreshes_total{upstream="einvoice",trigger="proactive"}"#,
    )
    .await;
    // One cold login, then one refresh every 2 to 3 s of the 7 (the simulator states expiry
    // to the second, and gstgate rounds its clock reading up): 2 to 4 — per replica it
    // would be 6 to 12.
    assert!(
        (2.0..=elapsed / 2.0 + 1.0).contains(&proactive),
        "{proactive} proactive refreshes in {elapsed:.1} s"
    );
    // Refreshes go on in the background: the simulator counts a login when it arrives, a
    // replica when it is done, so one in flight between the two readings shows as a
    // difference. The two agree whenever no login is in flight, which is most of every
    // 3-second token life; a login counted twice, or never, would never agree.
    let counted = || async {
        let mut counted = 0.0;
        for trigger in ["cold", "proactive", "rejected", "manual"] {
            let series = format!(
                "gstgate_token_refreshes_total{{upstream=\"einvoice\",trigger=\"{trigger}\"}}"
            );
            counted += total(&gws, &series).await;
        }
        counted
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logins = sim.count(GSTIN, "auth_calls").await as f64;
        let by_replicas = counted().await;
        if logins == by_replicas && sim.count(GSTIN, "auth_calls").await as f64 == logins {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "every login the group made is counted once: the simulator saw {logins}, the replicas counted {by_replicas}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(sim.count(GSTIN, "token_rejections").await, 0);
}

/// Acceptance 2: a GSTN OTP requested through replica 1 is submitted to replica 2, replica 3
/// serves data with that session, and the REFRESHTOKEN keep-alive happens once per expiry
/// for the group.
#[tokio::test]
async fn a_gstn_session_started_across_replicas_is_kept_alive_once_for_the_group() {
    let sim = Sim::start(SimOpts {
        token_ttl: "4s",
        ..SimOpts::default()
    })
    .await;
    let redis = RedisServer::start().await;
    let gws = replicas(
        &sim,
        &redis,
        3,
        GwOpts {
            apis: vec!["gstn"],
            refresh_before: "2s",
            // 4-second tokens: the login window shrinks from 15 minutes to one token life with
            // them, which holds two refreshes besides the OTP request and login.
            upstream_extra: "login_window = \"4s\"".into(),
            ..GwOpts::default()
        },
    )
    .await;
    let path = format!("/admin/sessions/gstn/{GSTIN}/otp");
    let res = gws[0].admin_post(&format!("{path}-request"), None).await;
    assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
    let otp = sim
        .get_json(&format!("/_sim/otp?gstin={GSTIN}&username={USER}"))
        .await["otp"]
        .as_str()
        .expect("the simulator issued an OTP")
        .to_owned();
    let res = gws[1].admin_post(&path, Some(json!({ "otp": otp }))).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let auth_after_otp = sim.count(GSTIN, "auth_calls").await;
    assert_eq!(auth_after_otp, 2, "OTPREQUEST and AUTHTOKEN");

    let summary = |gw: &Gateway| {
        gw.request(
            Method::GET,
            &format!("{RETSUM}&gstin={GSTIN}&ret_period=102026"),
        )
        .header("ret_period", "102026")
        .send()
    };
    let res = summary(&gws[2]).await.unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        auth_after_otp,
        "replica 3 used the group's session"
    );

    let started = Instant::now();
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(6) {
        let res = summary(&gws[i % 3]).await.unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let refreshes = sim.count(GSTIN, "refreshes").await as f64;
    // A refresh every 2 s of the 6: about 3 for the group, about 9 per replica.
    assert!(
        (2.0..=elapsed / 2.0 + 2.0).contains(&refreshes),
        "{refreshes} REFRESHTOKEN calls in {elapsed:.1} s"
    );
    assert_eq!(sim.count(GSTIN, "otp_requests").await, 1, "no second OTP");
}

/// Acceptance 3: a credential the upstream rejects through one replica is refused by the
/// others without a login attempt; and the group's logins never exceed the login limit,
/// whichever replica the rejections reach.
#[tokio::test]
async fn a_lockout_and_the_login_limit_hold_for_the_whole_group() {
    let sim = Sim::start(SimOpts::default()).await;
    let redis = RedisServer::start().await;
    let wrong = GwOpts {
        credentials: vec![(GSTIN.into(), USER.into(), "not-the-password".into())],
        ..GwOpts::default()
    };
    let gws = replicas(&sim, &redis, 3, wrong).await;
    let first = expect_problem(
        gws[0].generate(GSTIN, "LOCK/0").await,
        502,
        "credentials_rejected",
    )
    .await;
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1);
    for gw in &gws[1..] {
        let body = expect_problem(
            gw.generate(GSTIN, "LOCK/1").await,
            502,
            "credentials_rejected",
        )
        .await;
        assert_eq!(body["upstream_code"], first["upstream_code"], "{body}");
    }
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        1,
        "no other replica tried"
    );
    for gw in &gws {
        assert_eq!(
            gw.session_state("einvoice", GSTIN).await,
            "credentials_rejected"
        );
    }
    drop(gws);

    // The login limit (4 per window) counts the group's logins: a token rejection after
    // each login, each reaching another replica, costs a login until the fifth, which every
    // replica refuses.
    let sim = Sim::start(SimOpts::default()).await;
    let redis = RedisServer::start().await;
    let gws = replicas(
        &sim,
        &redis,
        3,
        GwOpts {
            upstream_extra: "login_window = \"10m\"".into(),
            ..GwOpts::default()
        },
    )
    .await;
    let mut refused = 0;
    for i in 0..9 {
        let res = gws[i % 3].generate(GSTIN, &format!("LIMIT/{i}")).await;
        match res.status().as_u16() {
            200 => {}
            429 => {
                expect_problem(res, 429, "login_rate_limited").await;
                refused += 1;
            }
            other => panic!("status {other}: {}", res.text().await.unwrap()),
        }
        sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
            .await;
    }
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        4,
        "never a fifth login"
    );
    assert_eq!(refused, 5);
}

/// Acceptance 4: nothing secret is readable in Redis — not in any key or value, not in its
/// append-only file, not in `MONITOR` — and a record sealed under the previous key is still
/// read after a key rotation.
#[tokio::test]
async fn redis_holds_nothing_readable_and_a_rotated_key_still_reads_old_records() {
    let sim = Sim::start(SimOpts::default()).await;
    let redis = RedisServer::start().await;
    let mut monitor = tokio::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "monitor"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("redis-cli (installed with redis-server)");
    let monitor_out = monitor.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(monitor_out));
    let first = lines.next_line().await.unwrap().unwrap();
    assert_eq!(first, "OK", "MONITOR is on");
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            text.push_str(&line);
            text.push('\n');
        }
        text
    });

    let opts = GwOpts {
        apis: vec!["einvoice", "gstn"],
        ..GwOpts::default()
    };
    let gws = replicas(&sim, &redis, 2, opts.clone()).await;
    let res = gws[0].generate(GSTIN, "SCAN/1").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    gws[1].start_gstn_session(&sim, GSTIN).await;

    // What the simulator issued: every token and SEK, in the forms they travel in.
    let sessions = sim.get_json("/_sim/sessions").await;
    let mut secrets: Vec<Vec<u8>> = vec![PASSWORD.into(), CLIENT_SECRET.into()];
    for s in sessions["sessions"].as_array().unwrap() {
        for field in ["token", "previous_token"] {
            if let Some(v) = s[field].as_str() {
                secrets.push(v.into());
            }
        }
        let sek = s["sek"].as_str().unwrap();
        secrets.push(sek.into());
        secrets.push(B64.decode(sek).unwrap());
    }
    assert!(secrets.len() >= 8, "{sessions}");

    let mut conn = redis.client().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        keys.iter()
            .any(|k| k.starts_with("gstgate:session:einvoice:"))
            && keys.iter().any(|k| k.starts_with("gstgate:session:gstn:")),
        "{keys:?}"
    );
    let mut dump: Vec<u8> = keys.join("\n").into_bytes();
    for key in &keys {
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if kind == "string" {
            let value: Vec<u8> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap();
            dump.extend(value);
        }
    }
    let mut files: Vec<u8> = Vec::new();
    for entry in walk(redis.dir()) {
        files.extend(std::fs::read(entry).unwrap());
    }
    assert!(
        contains(&files, b"gstgate:session:"),
        "the append-only file was read"
    );
    drop(gws);
    monitor.kill().await.unwrap();
    let monitored = reader.await.unwrap().into_bytes();
    assert!(
        contains(&monitored, b"gstgate:lease:"),
        "MONITOR saw the traffic"
    );
    for secret in &secrets {
        for (place, bytes) in [
            ("keys and values", &dump),
            ("data files", &files),
            ("MONITOR output", &monitored),
        ] {
            assert!(
                !contains(bytes, secret),
                "a secret is readable in Redis's {place}"
            );
        }
    }

    // Rotation: new replicas seal under KEY_B and still open what KEY_A sealed.
    let before = sim.count(GSTIN, "auth_calls").await;
    let rotated = GwOpts {
        store: redis_store(&redis, "").replace(KEY_A, KEY_B)
            + &format!("previous_encryption_key = \"{KEY_A}\"\n"),
        ..opts
    };
    let gw = Gateway::start(&sim, rotated).await;
    let res = gw.generate(GSTIN, "SCAN/2").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        before,
        "the old record was read"
    );
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Every file under `dir`.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// Acceptance 5: the replica holding the login lease is killed (SIGKILL) while its login is
/// on the wire; another replica completes the login once the lease lapses, and its caller
/// sees only that delay.
#[tokio::test]
async fn a_replica_killed_mid_login_delays_the_others_by_at_most_the_lease() {
    let sim = Sim::start(SimOpts::default()).await;
    let redis = RedisServer::start().await;
    let mut gws = replicas(
        &sim,
        &redis,
        2,
        GwOpts {
            store: "lease = \"2s\"".into(),
            rust_log: "info,gstgate::session::group=debug",
            ..GwOpts::default()
        },
    )
    .await;
    // The first login answers 30 s late: its replica is killed long before.
    sim.control(
        "/_sim/faults",
        json!({"mode": "slow", "delay_ms": 30_000, "count": 1, "path_prefix": "/eivital/"}),
    )
    .await;
    let holder = gws.remove(0);
    let stuck = {
        let http = holder.http.clone();
        let url = format!("http://{}/eicore/v1.03/Invoice", holder.proxy);
        tokio::spawn(async move {
            http.post(url)
                .header("x-api-key", API_KEY)
                .header("gstin", GSTIN)
                .json(&invoice(GSTIN, "KILL/0"))
                .send()
                .await
        })
    };
    sim.logs.wait_for("sim: answering late").await;
    let other = &gws[0];
    let waiting = {
        let http = other.http.clone();
        let url = format!("http://{}/eicore/v1.03/Invoice", other.proxy);
        tokio::spawn(async move {
            let res = http
                .post(url)
                .header("x-api-key", API_KEY)
                .header("gstin", GSTIN)
                .json(&invoice(GSTIN, "KILL/1"))
                .send()
                .await
                .unwrap();
            (
                Instant::now(),
                res.status().as_u16(),
                res.text().await.unwrap(),
            )
        })
    };
    other
        .logs
        .wait_for("another replica holds the login lease")
        .await;
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        1,
        "the other replica waits"
    );
    let killed_at = Instant::now();
    let pid = holder.pid();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let (done, status, body) = waiting.await.unwrap();
    assert_eq!(status, 200, "{body}");
    let delay = done.duration_since(killed_at);
    assert!(
        delay < Duration::from_secs(2) + Duration::from_millis(1500),
        "the other replica waited {delay:?}, more than the 2 s lease"
    );
    assert!(
        stuck.await.unwrap().is_err(),
        "the killed replica's caller lost its connection"
    );
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 2);
    drop(holder);
}

/// Sessions of one replica are visible on another's admin API: the group's view.
#[tokio::test]
async fn any_replica_shows_the_groups_sessions() {
    let sim = Sim::start(SimOpts::default()).await;
    let redis = RedisServer::start().await;
    let opts = GwOpts {
        rust_log: "info,gstgate::session::group=debug",
        ..GwOpts::default()
    };
    let gws = replicas(&sim, &redis, 2, opts).await;
    let res = gws[0].generate(GSTIN, "VIEW/1").await;
    assert_eq!(res.status(), 200);
    // The announcement reaches the other replica, which takes the session up.
    gws[1].logs.wait_for("took up the group's session").await;
    assert_eq!(gws[1].session_state("einvoice", GSTIN).await, "valid");
    let a: Vec<Value> = gws[0].admin_sessions().await;
    let b: Vec<Value> = gws[1].admin_sessions().await;
    assert_eq!(a[0]["generation"], b[0]["generation"], "{a:?} {b:?}");
}

/// Acceptance 6: Redis is killed under load for longer than a token lives. Nothing panics,
/// `/readyz` stays ready and says the store is unreachable, the replicas keep serving (each
/// logging in within its share of the login limit), and once Redis is back the group
/// converges on one session without any restart.
#[tokio::test]
async fn the_group_rides_out_a_redis_outage_and_converges_when_it_returns() {
    let sim = Sim::start(SimOpts {
        token_ttl: "4s",
        ..SimOpts::default()
    })
    .await;
    let mut redis = RedisServer::start().await;
    let gws = replicas(
        &sim,
        &redis,
        3,
        GwOpts {
            // 4-second tokens instead of 6-hour ones, refreshed 1 s before expiry: one login
            // per replica every 3 s while Redis is down. The login window shrinks to 8 s with
            // them and its limit is 9, so each of the 3 replicas may log in 3 times per window
            // on its own — as in production, where a replica's one refresh per 6 hours fits
            // its share of 4 logins per 15 minutes.
            refresh_before: "1s",
            max_logins: 9,
            upstream_extra: "login_window = \"8s\"".into(),
            // The lease shrinks with the token too: a Redis killed with `appendfsync
            // everysec` may come back with a lease whose release it lost, which then holds
            // logins up until it lapses.
            store: "lease = \"2s\"".into(),
            ..GwOpts::default()
        },
    )
    .await;
    generate_everywhere(&gws, 30, "BEFORE").await;
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1);

    redis.stop().await;
    let before = sim.count(GSTIN, "auth_calls").await;
    let started = Instant::now();
    let (mut ok, mut limited, mut n) = (0, 0, 0);
    while started.elapsed() < Duration::from_secs(7) {
        for gw in &gws {
            let res = gw.generate(GSTIN, &format!("OUTAGE/{n}")).await;
            n += 1;
            match res.status().as_u16() {
                200 => ok += 1,
                429 => {
                    expect_problem(res, 429, "login_rate_limited").await;
                    limited += 1;
                }
                other => panic!(
                    "status {other} during the outage: {}",
                    res.text().await.unwrap()
                ),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let during = sim.count(GSTIN, "auth_calls").await - before;
    assert!(
        during <= 9,
        "{during} logins in a 7 s outage: more than the group's 9 per 8 s"
    );
    assert!(
        ok * 10 >= (ok + limited) * 9,
        "{ok} served, {limited} refused"
    );
    for gw in &gws {
        let ready = gw
            .http
            .get(format!("http://{}/readyz", gw.admin))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
        assert!(ready.text().await.unwrap().contains("store: unreachable"));
        assert_eq!(gw.metric("gstgate_store_up").await, 0.0);
    }

    redis.restart().await;
    for gw in &gws {
        gw.logs.wait_for("redis subscription re-established").await;
        gw.logs.wait_for("rejoined the group").await;
    }
    // One session for the group: every data call now carries the same token.
    generate_everywhere(&gws, 30, "AFTER").await;
    let tokens: std::collections::HashSet<String> = sim
        .requests(200)
        .await
        .iter()
        .filter(|r| r["path"] == "/eicore/v1.03/Invoice")
        .rev()
        .take(30)
        .filter_map(|r| r["headers"]["authtoken"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(tokens.len(), 1, "the replicas use {} tokens", tokens.len());
    for gw in &gws {
        assert_eq!(gw.metric("gstgate_store_up").await, 1.0);
    }
}

/// Acceptance 7: a credential rejected through one replica is an alert episode for the whole
/// group: every replica sees it, exactly one sends the webhook.
#[tokio::test]
async fn an_alert_episode_sends_one_webhook_for_the_group() {
    let (tx, mut bodies) = tokio::sync::mpsc::unbounded_channel::<String>();
    let app = axum::Router::new().fallback(move |body: String| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(body);
            axum::http::StatusCode::NO_CONTENT
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let sim = Sim::start(SimOpts::default()).await;
    let redis = RedisServer::start().await;
    let gws = replicas(
        &sim,
        &redis,
        3,
        GwOpts {
            credentials: vec![(GSTIN.into(), USER.into(), "not-the-password".into())],
            extra_toml: format!(
                "\n[alerts]\nwebhook_url = \"http://{hook}/hook\"\ncheck_interval = \"200ms\"\n"
            ),
            ..GwOpts::default()
        },
    )
    .await;
    expect_problem(
        gws[0].generate(GSTIN, "ALERT/0").await,
        502,
        "credentials_rejected",
    )
    .await;

    let body = tokio::time::timeout(Duration::from_secs(30), bodies.recv())
        .await
        .expect("the webhook was called")
        .unwrap();
    let alert: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(alert["alert"], "credentials_rejected", "{alert}");
    // Every replica decides about the episode; one opened it and sent it.
    for gw in &gws {
        gw.logs.wait_for("alert episode ").await;
    }
    let senders = gws
        .iter()
        .filter(|gw| gw.logs.text().contains("alert episode opened in the store"))
        .count();
    assert_eq!(
        senders, 1,
        "one replica sends, the others find the episode open"
    );
    assert!(
        bodies.try_recv().is_err(),
        "a second webhook for the same episode"
    );
}

/// A password fixed by a reload clears the group's lockout: the record still holds the old
/// password's lockout, and the reloaded replica's next login clears it for everyone.
#[tokio::test]
async fn a_reloaded_password_clears_the_groups_lockout() {
    let sim = Sim::start(SimOpts::default()).await;
    let redis = RedisServer::start().await;
    let wrong = GwOpts {
        credentials: vec![(GSTIN.into(), USER.into(), "not-the-password".into())],
        store: redis_store(&redis, ""),
        ..GwOpts::default()
    };
    let gws = replicas(&sim, &redis, 2, wrong).await;
    expect_problem(
        gws[0].generate(GSTIN, "FIX/0").await,
        502,
        "credentials_rejected",
    )
    .await;
    let right = GwOpts {
        store: redis_store(&redis, ""),
        ..GwOpts::default()
    };
    for gw in &gws {
        std::fs::write(
            &gw.config,
            gateway_config(&sim.public_key, &sim.url(), &right),
        )
        .unwrap();
        let res = gw.admin_post("/admin/reload", None).await;
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    }
    let res = gws[1].generate(GSTIN, "FIX/1").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let res = gws[0].generate(GSTIN, "FIX/2").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        2,
        "the rejected login and one more"
    );
}

/// `rediss://` to a Redis whose certificate a private CA signed (`redis_ca_file`), as an ACL
/// user named in the URL: the replicas share their session, and the password reaches no log.
/// With a CA that did not sign the certificate, the store is reported unreachable.
#[tokio::test]
async fn replicas_reach_redis_over_tls_as_an_acl_user() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Pki::new("gstgate test Redis CA");
    let other_ca = Pki::new("gstgate test other CA");
    let server = ca.issue(&["127.0.0.1"]);
    let path = |name: &str| dir.path().join(name);
    std::fs::write(path("ca.pem"), ca.ca_pem()).unwrap();
    std::fs::write(path("other-ca.pem"), other_ca.ca_pem()).unwrap();
    std::fs::write(path("cert.pem"), &server.cert_pem).unwrap();
    std::fs::write(path("key.pem"), &server.key_pem).unwrap();

    const PASS: &str = "acl-password-0123456789";
    let acl = format!(">{PASS}");
    let redis = RedisServer::start_tls(
        &path("cert.pem"),
        &path("key.pem"),
        &[
            "--user",
            "gstgate",
            "on",
            &acl,
            "~gstgate:*",
            "&gstgate:*",
            "+@all",
            "--user",
            "default",
            "off",
        ],
    )
    .await;
    let store = |ca: &str| {
        format!(
            "backend = \"redis\"\nredis_url = \"rediss://gstgate:{PASS}@127.0.0.1:{}\"\nredis_ca_file = \"{}\"\nencryption_key = \"{KEY_A}\"\n",
            redis.port,
            path(ca).display()
        )
    };
    let sim = Sim::start(SimOpts::default()).await;
    let gws = replicas(
        &sim,
        &redis,
        2,
        GwOpts {
            store: store("ca.pem"),
            ..GwOpts::default()
        },
    )
    .await;
    generate_everywhere(&gws, 20, "TLS").await;
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        1,
        "one login for both"
    );
    for gw in &gws {
        assert_eq!(gw.metric("gstgate_store_up").await, 1.0);
        assert!(
            !gw.logs.text().contains(PASS),
            "the Redis password is logged"
        );
    }

    let distrusting = Gateway::start(
        &sim,
        GwOpts {
            store: store("other-ca.pem"),
            ..GwOpts::default()
        },
    )
    .await;
    distrusting
        .logs
        .wait_for("the shared store is unreachable")
        .await;
    assert_eq!(distrusting.metric("gstgate_store_up").await, 0.0);
    assert!(!distrusting.logs.text().contains(PASS));
}
