//! Drop-in sessions in the session store (issue 17, acceptance 5 and 6), over real processes:
//! a drop-in token issued by one replica is accepted by another sharing its Redis; one issued
//! before a `kill -9` is accepted after the restart on the embedded store; and no drop-in
//! token, SEK, AppKey, password or client secret reaches a trace-level log, the store file or
//! Redis, in any of the encodings a careless line would use.
//!
//! The client is the spec client (`tests/common/spec_client/`), configured as an ASP would
//! configure it for gstgate: its session moves between replicas only the way two instances of
//! one ASP backend share a token cache (`EinvoiceClient::adopt_session`), never by a login.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use base64::Engine as _;
use common::{
    dropin_client_config, invoice, metric_value, with_dropin, EinvoiceClient, Gateway, GwOpts,
    RedisServer, Sim, SimOpts, SpecConfig, DROPIN_CLIENT, DROPIN_CLIENT_ID, DROPIN_CLIENT_SECRET,
    GSTIN, PASSWORD, USER,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The store's sealing key (the Redis backend needs one configured).
const STORE_KEY: &str = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";

/// A password the drop-in client mistypes: as secret as the right one.
const WRONG_PASSWORD: &str = "s3cret-Passw0rd?";

/// The `[store]` body of a replica on `redis`.
fn redis_store(redis: &RedisServer) -> String {
    format!(
        "backend = \"redis\"\nredis_url = \"{}\"\nencryption_key = \"{STORE_KEY}\"\nreplicas = 2\n",
        redis.url()
    )
}

/// The `[store]` body of a gateway whose embedded store is `dir/sessions.redb`.
fn embedded_store(dir: &Path) -> String {
    format!(
        "backend = \"embedded\"\npath = \"{}\"\n",
        dir.join("sessions.redb").display()
    )
}

/// A drop-in gateway's options on `store`, logging at `rust_log`.
fn dropin_opts(store: String, rust_log: &'static str) -> GwOpts {
    with_dropin(
        GwOpts {
            store,
            rust_log,
            ..GwOpts::default()
        },
        &[GSTIN],
    )
}

/// The `gstgate_dropin_sessions` series of the drop-in client.
fn sessions_series() -> String {
    format!("gstgate_dropin_sessions{{upstream=\"einvoice\",client=\"{DROPIN_CLIENT}\"}}")
}

const LOGINS_OK: &str = r#"gstgate_dropin_logins_total{upstream="einvoice",result="success"}"#;

/// Waits until the gateway's store has committed everything queued, and asserts no write
/// failed. Queued changes and the commit under way both count in the gauge, set under one
/// lock: 0 after a reply means what that reply's call queued is in the store. Returns how
/// many records the gateway has written.
async fn wait_committed(gw: &Gateway) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = gw.metrics().await;
        let failed = metric_value(
            &text,
            r#"gstgate_store_operations_total{op="write",result="error"}"#,
        );
        assert_eq!(failed, 0.0, "a store write failed:\n{text}");
        if metric_value(&text, "gstgate_store_pending_writes") == 0.0 {
            return metric_value(
                &text,
                r#"gstgate_store_operations_total{op="write",result="ok"}"#,
            );
        }
        assert!(Instant::now() < deadline, "writes not committed:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A data call with `token` sent by hand to `gw`, as a client still holding it would: the
/// NIC error code, or `None` when it was served.
async fn error_code_for_token(gw: &Gateway, token: &str) -> Option<String> {
    let res = gw
        .http
        .get(format!(
            "http://{}/eivital/v1.04/Master/gstin/{GSTIN}",
            gw.proxy
        ))
        .header("client_id", DROPIN_CLIENT_ID)
        .header("client_secret", DROPIN_CLIENT_SECRET)
        .header("Gstin", GSTIN)
        .header("user_name", USER)
        .header("AuthToken", token)
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    if body["Status"] == 1 {
        return None;
    }
    Some(
        body["ErrorDetails"][0]["ErrorCode"]
            .as_str()
            .unwrap_or_else(|| panic!("neither served nor a NIC error: {body}"))
            .to_owned(),
    )
}

/// A spec client of `gw` that has not logged in.
fn client_of(gw: &Gateway) -> EinvoiceClient {
    EinvoiceClient::new(dropin_client_config(gw)).unwrap()
}

/// Acceptance 5, Redis: two replicas share one Redis. The client logs in through A; its data
/// calls go to B with the same token and are served without a login, B taking the session
/// from the store; a forced re-login on A makes a new token, which B accepts too.
#[tokio::test]
async fn a_drop_in_token_issued_by_one_replica_is_accepted_by_the_other() {
    let sim = Sim::start(SimOpts::default()).await;
    let redis = RedisServer::start().await;
    let opts = dropin_opts(redis_store(&redis), "info");
    let a = Gateway::start(&sim, opts.clone()).await;
    let b = Gateway::start(&sim, opts).await;

    let mut at_a = client_of(&a);
    at_a.login(false).await.unwrap();
    let first = at_a.token().unwrap().to_owned();
    // The login's reply is the only signal the ASP has: no wait for A's store here.
    let mut at_b = client_of(&b);
    at_b.adopt_session(&at_a);
    let generated = at_b
        .generate_irn(&invoice(GSTIN, "REPLICA/1"))
        .await
        .unwrap();
    assert_eq!(
        generated["Irn"].as_str().map(str::len),
        Some(64),
        "{generated}"
    );
    let details = at_b.gstin_details(GSTIN).await.unwrap();
    assert_eq!(details["Gstin"], GSTIN, "{details}");
    assert_eq!(at_b.logins, 0, "B's client never logged in");
    assert_eq!(at_b.token(), Some(first.as_str()));
    assert_eq!(b.metric(LOGINS_OK).await, 0.0, "B answered no login");
    assert_eq!(b.metric(&sessions_series()).await, 1.0, "B took it up");
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        1,
        "one upstream login for the group"
    );

    // A forced re-login on A while Redis holds every write back for a moment (reads go on):
    // A's reply must wait for the new record, or B, asked at once, finds none and refuses.
    wait_committed(&a).await;
    let mut conn = redis.client().await;
    let paused: String = redis::cmd("CLIENT")
        .arg(&["PAUSE", "500", "WRITE"])
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(paused, "OK");
    at_a.login(true).await.unwrap();
    let second = at_a.token().unwrap().to_owned();
    assert_ne!(second, first);
    at_b.adopt_session(&at_a);
    let again = at_b
        .generate_irn(&invoice(GSTIN, "REPLICA/2"))
        .await
        .unwrap();
    assert!(again["Irn"].is_string(), "{again}");
    assert_eq!(
        (at_a.logins, at_b.logins),
        (2, 0),
        "B accepted A's new token"
    );
    assert_eq!(at_b.token(), Some(second.as_str()));
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1);
    assert_eq!(
        error_code_for_token(&a, &first).await.as_deref(),
        Some("1005"),
        "A no longer accepts the token it replaced"
    );
    // B had the replaced token in memory; A announced its end once the deletion was
    // committed, and B forgets it. The announcement is the signal, so B is asked until it
    // refuses, within a bound.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match error_code_for_token(&b, &first).await.as_deref() {
            Some("1005") => break,
            None if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await
            }
            other => panic!("B still serves the replaced token: {other:?}"),
        }
    }
    assert_eq!(
        b.metric(&sessions_series()).await,
        1.0,
        "B holds only the new session"
    );
}

/// Acceptance 5, embedded store: a drop-in token issued before a `kill -9` is accepted after
/// the restart on the same store, with no login by the client and none upstream.
#[tokio::test]
async fn a_drop_in_token_issued_before_a_kill_9_is_accepted_after_the_restart() {
    let sim = Sim::start(SimOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let opts = dropin_opts(embedded_store(dir.path()), "info");
    let mut gw = Gateway::start(&sim, opts.clone()).await;
    let mut client = client_of(&gw);
    let first = client
        .generate_irn(&invoice(GSTIN, "KILL9/1"))
        .await
        .unwrap();
    assert!(first["Irn"].is_string(), "{first}");
    let token = client.token().unwrap().to_owned();
    assert_eq!(client.logins, 1);
    assert!(wait_committed(&gw).await >= 1.0, "nothing was written");
    let upstream = (
        sim.count(GSTIN, "auth_calls").await,
        sim.count(GSTIN, "new_tokens").await,
    );
    assert_eq!(upstream, (1, 1));

    let killed = std::process::Command::new("kill")
        .args(["-KILL", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = gw.wait().await;
    assert!(!status.success(), "killed, not exited: {status}");

    let gw = Gateway::start(&sim, opts).await;
    // The harness gives the new process another port; the client's configuration follows it,
    // as an ASP's would follow a gateway's fixed address.
    client.config.base_url = format!("http://{}", gw.proxy);
    let second = client
        .generate_irn(&invoice(GSTIN, "KILL9/2"))
        .await
        .unwrap();
    assert!(second["Irn"].is_string(), "{second}");
    assert_ne!(second["Irn"], first["Irn"]);
    assert_eq!(client.logins, 1, "the client did not log in again");
    assert_eq!(client.token(), Some(token.as_str()));
    assert_eq!(
        gw.metric(LOGINS_OK).await,
        0.0,
        "no drop-in login after the restart"
    );
    assert_eq!(gw.metric(&sessions_series()).await, 1.0);
    gw.logs
        .wait_for(r#""message":"drop-in sessions taken up from the store","sessions":1"#)
        .await;
    assert_eq!(
        (
            sim.count(GSTIN, "auth_calls").await,
            sim.count(GSTIN, "new_tokens").await,
        ),
        upstream,
        "no upstream login after the restart either"
    );
}

/// A key rotation re-seals drop-in records at start-up too: after a restart with the new
/// key and the old one as `previous_encryption_key`, the log counts both records (the slot's
/// and the drop-in session's) as re-sealed and says the old key can go; a restart with the
/// new key alone still accepts the client's token. Drop-in records used to stay under the
/// old key until their client logged in again, so removing it cost every client a login.
#[tokio::test]
async fn a_key_rotation_re_seals_drop_in_records_so_the_old_key_can_go() {
    const NEW_KEY: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";
    let sim = Sim::start(SimOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let keyed = |keys: &str| dropin_opts(format!("{}{keys}\n", embedded_store(dir.path())), "info");
    let mut gw = Gateway::start(&sim, keyed(&format!("encryption_key = \"{STORE_KEY}\""))).await;
    let mut client = client_of(&gw);
    client.generate_irn(&invoice(GSTIN, "ROT/1")).await.unwrap();
    let token = client.token().unwrap().to_owned();
    assert!(
        wait_committed(&gw).await >= 2.0,
        "the slot and the drop-in session"
    );
    let stop = |gw: &Gateway| {
        std::process::Command::new("kill")
            .args(["-TERM", &gw.pid().to_string()])
            .status()
            .unwrap()
    };
    assert!(stop(&gw).success());
    gw.wait().await;

    let mut gw = Gateway::start(
        &sim,
        keyed(&format!(
            "encryption_key = \"{NEW_KEY}\"\nprevious_encryption_key = \"{STORE_KEY}\""
        )),
    )
    .await;
    gw.logs.wait_for(r#""resealed":2"#).await;
    gw.logs
        .wait_for("store.previous_encryption_key can be removed")
        .await;
    assert!(stop(&gw).success());
    gw.wait().await;

    let gw = Gateway::start(&sim, keyed(&format!("encryption_key = \"{NEW_KEY}\""))).await;
    assert_eq!(error_code_for_token(&gw, &token).await, None);
    assert!(
        !gw.logs.text().contains("does not open"),
        "{}",
        gw.logs.text()
    );
    assert_eq!(gw.metric(LOGINS_OK).await, 0.0, "no drop-in login");
}

/// A secret of a drop-in flow, by what it is.
struct Secret {
    what: String,
    bytes: Vec<u8>,
}

impl Secret {
    fn new(what: impl Into<String>, bytes: impl Into<Vec<u8>>) -> Self {
        Self {
            what: what.into(),
            bytes: bytes.into(),
        }
    }

    /// The secret as a log line or a record could carry it: raw, base64 (standard and
    /// URL-safe, with and without padding), and hex (either case).
    fn forms(&self) -> Vec<(&'static str, Vec<u8>)> {
        let b = &self.bytes;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        vec![
            ("raw", b.clone()),
            ("base64", STANDARD.encode(b).into_bytes()),
            ("base64 unpadded", STANDARD_NO_PAD.encode(b).into_bytes()),
            ("base64url", URL_SAFE.encode(b).into_bytes()),
            ("base64url unpadded", URL_SAFE_NO_PAD.encode(b).into_bytes()),
            ("hex", hex.clone().into_bytes()),
            ("HEX", hex.to_ascii_uppercase().into_bytes()),
        ]
    }
}

/// Asserts that no form of any secret is in `haystack`, which is `place`.
fn assert_absent(secrets: &[Secret], place: &str, haystack: &[u8]) {
    assert!(
        !haystack.is_empty(),
        "{place} is empty: nothing was scanned"
    );
    let haystack = latin1(haystack);
    for secret in secrets {
        for (form, needle) in secret.forms() {
            assert!(
                !haystack.contains(&latin1(&needle)),
                "the {} ({form}) is in {place}",
                secret.what
            );
        }
    }
}

/// Whether `needle` occurs in `haystack`.
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    latin1(haystack).contains(&latin1(needle))
}

/// `bytes` as one `char` per byte: a byte string is in a byte string exactly when its image
/// is in the other's, and the search is then std's (optimised even in a debug build; a
/// naive scan of the 1.5 MB store file took seconds).
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().copied().map(char::from).collect()
}

/// A record's name part: the lowercase hex SHA-256 of a token.
fn sha256_hex(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A whole drop-in flow: a login at `login_at`, data calls at `data_at` with that session, a
/// forced re-login and a data call with the new token, and a login refused for a wrong
/// password. Returns the tokens, SEKs and AppKeys of the flow, and the last token.
async fn full_flow(login_at: &Gateway, data_at: &Gateway, tag: &str) -> (Vec<Secret>, String) {
    let mut secrets = Vec::new();
    let mut keep = |client: &EinvoiceClient, n: usize| {
        secrets.push(Secret::new(
            format!("{tag} token {n}"),
            client.token().unwrap(),
        ));
        secrets.push(Secret::new(
            format!("{tag} SEK {n}"),
            client.sek().unwrap().to_vec(),
        ));
        secrets.push(Secret::new(
            format!("{tag} AppKey {n}"),
            client.last_app_key().unwrap().to_vec(),
        ));
    };
    let mut client = client_of(login_at);
    let mut data = client_of(data_at);
    client.login(false).await.unwrap();
    keep(&client, 1);
    data.adopt_session(&client);
    data.generate_irn(&invoice(GSTIN, &format!("{tag}/1")))
        .await
        .unwrap();
    data.gstin_details(GSTIN).await.unwrap();

    client.login(true).await.unwrap();
    keep(&client, 2);
    data.adopt_session(&client);
    data.generate_irn(&invoice(GSTIN, &format!("{tag}/2")))
        .await
        .unwrap();
    assert_eq!((client.logins, data.logins), (2, 0));
    let token = client.token().unwrap().to_owned();
    assert_ne!(
        secrets[0].bytes,
        token.as_bytes(),
        "the forced re-login made a new token"
    );

    let mut wrong = EinvoiceClient::new(SpecConfig {
        password: WRONG_PASSWORD.into(),
        ..dropin_client_config(login_at)
    })
    .unwrap();
    let refused = wrong.login(false).await.unwrap_err();
    assert!(refused.has_code("1019"), "{refused}");
    secrets.push(Secret::new(
        format!("{tag} refused login's AppKey"),
        wrong.last_app_key().unwrap().to_vec(),
    ));
    (secrets, token)
}

/// Every key of `redis`, each followed by its value read the way its type is read.
async fn redis_contents(redis: &RedisServer) -> (Vec<String>, Vec<u8>) {
    let mut conn = redis.client().await;
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut conn)
            .await
            .unwrap();
        keys.extend(batch);
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    let mut dump = Vec::new();
    for key in &keys {
        dump.extend(key.as_bytes());
        dump.push(b'\n');
        let kind: String = redis::cmd("TYPE")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        let values: Vec<Vec<u8>> = match kind.as_str() {
            "string" => vec![redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap()],
            "set" => redis::cmd("SMEMBERS")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap(),
            _ => vec![redis::cmd("DUMP")
                .arg(key)
                .query_async(&mut conn)
                .await
                .unwrap()],
        };
        for v in values {
            dump.extend(v);
            dump.push(b'\n');
        }
    }
    (keys, dump)
}

/// Every file under `dir`, concatenated.
fn files_under(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.extend(std::fs::read(path).unwrap());
        }
    }
    out
}

/// Acceptance 6: with every log at trace level, a whole drop-in flow on an embedded-store
/// gateway and another across two Redis replicas leave no drop-in token, SEK, AppKey,
/// password or client secret — raw, base64 or hex — in any log, in the store file or in
/// Redis; the records are named by the token's digest, not the token.
#[tokio::test]
async fn no_drop_in_secret_reaches_a_trace_log_the_store_file_or_redis() {
    let sim = Sim::start(SimOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let embedded = Gateway::start(&sim, dropin_opts(embedded_store(dir.path()), "trace")).await;
    let redis = RedisServer::start().await;
    let a = Gateway::start(&sim, dropin_opts(redis_store(&redis), "trace")).await;
    let b = Gateway::start(&sim, dropin_opts(redis_store(&redis), "trace")).await;

    let (on_file, file_token) = full_flow(&embedded, &embedded, "embedded").await;
    let (on_redis, redis_token) = full_flow(&a, &b, "redis").await;
    let mut secrets = vec![
        Secret::new("taxpayer password", PASSWORD),
        Secret::new("mistyped password", WRONG_PASSWORD),
        Secret::new("drop-in client secret", DROPIN_CLIENT_SECRET),
    ];
    secrets.extend(on_file.into_iter().chain(on_redis));
    for gw in [&embedded, &a, &b] {
        wait_committed(gw).await;
    }

    // The store file, read as it lies on disk.
    let file = std::fs::read(dir.path().join("sessions.redb")).unwrap();
    assert_absent(&secrets, "the store file", &file);
    let record = format!("dropin:{}", sha256_hex(&file_token));
    assert!(
        contains(&file, record.as_bytes()),
        "the file holds the drop-in record, named by the token's digest: {record}"
    );

    // Redis: every key and value, and its append-only file.
    let (keys, contents) = redis_contents(&redis).await;
    assert_absent(&secrets, "Redis's keys and values", &contents);
    assert_absent(&secrets, "Redis's data files", &files_under(redis.dir()));
    let record = format!("gstgate:session:dropin:{}", sha256_hex(&redis_token));
    assert!(keys.contains(&record), "{record} not among {keys:?}");
    assert_eq!(
        keys.iter().filter(|k| k.contains(":dropin:")).count(),
        1,
        "the forced re-login deleted the old record: {keys:?}"
    );

    // Every log line, at trace level.
    for (name, gw) in [
        ("embedded", &embedded),
        ("replica A", &a),
        ("replica B", &b),
    ] {
        let logs = format!("{}\n{}", gw.logs.text(), gw.stdout.text());
        assert!(
            logs.contains("\"level\":\"TRACE\""),
            "{name} logged at trace level"
        );
        assert_absent(&secrets, &format!("{name}'s logs"), logs.as_bytes());
    }
}
