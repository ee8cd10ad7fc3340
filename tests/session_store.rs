//! The embedded session store (issue 9): a restart — `kill -9` or SIGTERM — resumes every
//! still-valid session without a login or an OTP; the file holds no secret in plaintext; an
//! unreadable file is moved aside; a rotated key keeps reading the old records.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const EWB: &str = "/ewaybillapi/v1.03/ewayapi";
const RETSUM: &str = "/taxpayerapi/v1.0/returns/gstr1?action=RETSUM";
const KEY_A: &str = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
const KEY_B: &str = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";

/// A gateway on all three APIs whose store is `dir/sessions.redb`; the backend is left to
/// its default, which is `embedded`. `store_extra` adds `[store]` lines.
fn opts(dir: &Path, store_extra: &str) -> GwOpts {
    GwOpts {
        apis: vec!["einvoice", "ewaybill", "gstn"],
        store: format!(
            "path = \"{}\"\n{store_extra}",
            dir.join("sessions.redb").display()
        ),
        ..GwOpts::default()
    }
}

async fn einvoice(gw: &Gateway, doc: &str) {
    let res = gw.generate(GSTIN, doc).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

async fn ewaybill(gw: &Gateway, doc: &str) {
    let bill = json!({
        "action": "GENEWAYBILL",
        "data": {
            "supplyType": "O", "subSupplyType": "1", "docType": "INV",
            "docNo": doc, "docDate": "25/11/2026",
            "fromGstin": GSTIN, "fromPincode": 400001, "fromStateCode": 27,
            "toGstin": "05AAACG2115R1ZN", "toPincode": 248001, "toStateCode": 5,
            "transDistance": "1500", "totInvValue": 118000.0, "totalValue": 100000.0,
            "igstValue": 18000.0, "transMode": "1", "vehicleNo": "MH01AB1234", "vehicleType": "R",
            "itemList": [{"productName": "Steel", "hsnCode": 7208, "quantity": 10,
                          "qtyUnit": "MTS", "taxableAmount": 100000.0, "igstRate": 18}]
        }
    });
    let res = gw
        .request(Method::POST, EWB)
        .json(&bill)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

async fn gstn(gw: &Gateway) {
    let res = gw
        .request(
            Method::GET,
            &format!("{RETSUM}&gstin={GSTIN}&ret_period=102026"),
        )
        .header("ret_period", "102026")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

/// Logins and OTPs the simulator has seen for the test GSTIN.
async fn logins(sim: &Sim) -> (u64, u64) {
    (
        sim.count(GSTIN, "auth_calls").await,
        sim.count(GSTIN, "otp_requests").await,
    )
}

/// Waits until at least `writes` records were committed and nothing is left queued.
async fn wait_committed(gw: &Gateway, writes: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = gw.metrics().await;
        let ok = metric_value(
            &text,
            r#"gstgate_store_operations_total{op="write",result="ok"}"#,
        );
        if ok >= writes && metric_value(&text, "gstgate_store_pending_writes") == 0.0 {
            return;
        }
        assert!(Instant::now() < deadline, "writes not committed:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn signal(gw: &mut Gateway, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    gw.wait().await;
}

/// Every token and SEK the simulator holds, as text and as raw bytes.
async fn upstream_secrets(sim: &Sim) -> Vec<Vec<u8>> {
    let v: Value = sim.get_json("/_sim/sessions").await;
    let mut out = Vec::new();
    for s in v["sessions"].as_array().unwrap() {
        let token = s["token"].as_str().unwrap();
        let sek = s["sek"].as_str().unwrap();
        out.push(token.as_bytes().to_vec());
        out.push(sek.as_bytes().to_vec());
        out.push(gstgate::crypto::b64_decode(sek).unwrap());
    }
    assert!(out.len() >= 9, "a session on each API: {v}");
    out
}

/// The JSON log line of `gw` that contains `marker`, once it is written.
async fn log_line(gw: &Gateway, marker: &str) -> Value {
    gw.logs.wait_for(marker).await;
    let text = gw.logs.text();
    let line = text.lines().find(|l| l.contains(marker)).unwrap();
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[tokio::test]
async fn kill_9_resumes_every_session_without_a_login_or_an_otp_and_nothing_is_plain_at_rest() {
    let sim = Sim::start(SimOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(&sim, opts(dir.path(), "")).await;
    gw.start_gstn_session(&sim, GSTIN).await;
    einvoice(&gw, "INV/1").await;
    ewaybill(&gw, "EWB/1").await;
    gstn(&gw).await;
    wait_committed(&gw, 3.0).await;
    let before = logins(&sim).await;
    assert_eq!(before.1, 1, "one OTP");

    // At rest: no token, SEK, password or client secret in the file; the generated key file
    // is the owner's alone, and start-up said where it is.
    let key_file = dir.path().join("sessions.redb.key");
    let bytes = std::fs::read(dir.path().join("sessions.redb")).unwrap();
    let mut secrets = upstream_secrets(&sim).await;
    secrets.push(PASSWORD.as_bytes().to_vec());
    secrets.push(CLIENT_SECRET.as_bytes().to_vec());
    secrets.push(std::fs::read(&key_file).unwrap());
    for s in &secrets {
        assert!(
            !contains(&bytes, s),
            "{:?} is in the store file",
            String::from_utf8_lossy(s)
        );
    }
    for file in [&key_file, &dir.path().join("sessions.redb")] {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{} mode {mode:o}", file.display());
    }
    assert!(
        gw.logs.text().contains(&key_file.display().to_string()),
        "{}",
        gw.logs.text()
    );

    signal(&mut gw, "-KILL").await;
    // A store file that came back readable by others (restored from a backup, say) is made
    // owner-only again at start-up.
    let store_file = dir.path().join("sessions.redb");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&store_file, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let gw = Gateway::start(&sim, opts(dir.path(), "")).await;
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&store_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "mode {mode:o} after start-up");
    }
    assert!(gw.logs.text().contains("made it owner-only"));
    assert_eq!(gw.session_state("gstn", GSTIN).await, "valid");
    einvoice(&gw, "INV/2").await;
    ewaybill(&gw, "EWB/2").await;
    gstn(&gw).await;
    assert_eq!(
        logins(&sim).await,
        before,
        "no login and no OTP after kill -9"
    );
    assert!(
        gw.metric(r#"gstgate_store_operations_total{op="load",result="ok"}"#)
            .await
            >= 3.0
    );
}

#[tokio::test]
async fn a_clean_restart_flushes_and_resumes() {
    let sim = Sim::start(SimOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut gw = Gateway::start(&sim, opts(dir.path(), "")).await;
    gw.start_gstn_session(&sim, GSTIN).await;
    einvoice(&gw, "INV/1").await;
    ewaybill(&gw, "EWB/1").await;
    let before = logins(&sim).await;
    // No wait for the writer: SIGTERM flushes what is queued.
    signal(&mut gw, "-TERM").await;

    let gw = Gateway::start(&sim, opts(dir.path(), "")).await;
    einvoice(&gw, "INV/2").await;
    ewaybill(&gw, "EWB/2").await;
    gstn(&gw).await;
    assert_eq!(
        logins(&sim).await,
        before,
        "no login and no OTP after SIGTERM"
    );
}

#[tokio::test]
async fn a_corrupt_store_file_is_moved_aside_and_the_gateway_serves() {
    let sim = Sim::start(SimOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sessions.redb");
    let garbage = b"this is not a redb file, just garbage bytes \x00\x01\x02".repeat(200);
    std::fs::write(&path, &garbage).unwrap();

    let gw = Gateway::start(&sim, opts(dir.path(), "")).await;
    einvoice(&gw, "INV/1").await;
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1, "logged in afresh");
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("sessions.redb.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), garbage);
    let logs = gw.logs.text();
    assert!(
        logs.contains(&path.display().to_string()) && logs.contains("unreadable"),
        "{logs}"
    );
    wait_committed(&gw, 1.0).await;
}

#[tokio::test]
async fn a_rotated_key_reads_old_records_and_an_unknown_key_logs_in_again() {
    let sim = Sim::start(SimOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let only = |key: &str| GwOpts {
        apis: vec!["einvoice"],
        ..opts(dir.path(), &format!("encryption_key = \"{key}\""))
    };
    let mut gw = Gateway::start(&sim, only(KEY_A)).await;
    einvoice(&gw, "INV/1").await;
    wait_committed(&gw, 1.0).await;
    signal(&mut gw, "-TERM").await;
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1);

    // Rotated to B with A as the previous key: resumed, and rewritten under B.
    let rotated = GwOpts {
        apis: vec!["einvoice"],
        ..opts(
            dir.path(),
            &format!("encryption_key = \"{KEY_B}\"\nprevious_encryption_key = \"{KEY_A}\""),
        )
    };
    let mut gw = Gateway::start(&sim, rotated.clone()).await;
    einvoice(&gw, "INV/2").await;
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1, "no login");
    wait_committed(&gw, 1.0).await;
    // The operator is told how many records the rotation re-sealed, and when the previous
    // key is no longer needed.
    let found = log_line(
        &gw,
        "opened under store.previous_encryption_key; re-sealing",
    )
    .await;
    assert_eq!(found["records"], 1, "{found}");
    let done = log_line(&gw, "store.previous_encryption_key can be removed").await;
    assert_eq!(done["resealed"], 1, "{done}");
    assert_eq!(done["level"], "INFO", "{done}");
    signal(&mut gw, "-TERM").await;
    assert!(!dir.path().join("sessions.redb.key").exists());

    // Started again with both keys: nothing is left under the previous one, and it says so.
    let mut gw = Gateway::start(&sim, rotated).await;
    let none = log_line(
        &gw,
        "no stored record is sealed under store.previous_encryption_key",
    )
    .await;
    assert!(
        none["message"].as_str().unwrap().contains("can be removed"),
        "{none}"
    );
    assert!(!gw.logs.text().contains("re-sealing"), "{}", gw.logs.text());
    signal(&mut gw, "-TERM").await;

    // Only A, which no longer opens the rewritten record: skipped with a warning, a login.
    let gw = Gateway::start(&sim, only(KEY_A)).await;
    einvoice(&gw, "INV/3").await;
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 2, "logged in again");
    let logs = gw.logs.text();
    assert!(logs.contains("does not open"), "{logs}");
    assert_eq!(
        gw.metric(r#"gstgate_store_operations_total{op="load",result="error"}"#)
            .await,
        1.0
    );
}

/// The login guard is kept with the sessions: a credential the upstream rejected stays
/// refused after a `kill -9` and restart, without another login attempt (which could get the
/// API user blocked).
#[tokio::test]
async fn a_rejected_credential_stays_refused_across_a_restart_without_a_login() {
    let sim = Sim::start(SimOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let wrong = GwOpts {
        credentials: vec![(GSTIN.into(), USER.into(), "not-the-password".into())],
        apis: vec!["einvoice"],
        ..opts(dir.path(), "")
    };
    let mut gw = Gateway::start(&sim, wrong.clone()).await;
    expect_problem(gw.generate(GSTIN, "G/1").await, 502, "credentials_rejected").await;
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1);
    wait_committed(&gw, 2.0).await;
    signal(&mut gw, "-KILL").await;

    let gw = Gateway::start(&sim, wrong).await;
    assert_eq!(
        gw.session_state("einvoice", GSTIN).await,
        "credentials_rejected"
    );
    expect_problem(gw.generate(GSTIN, "G/2").await, 502, "credentials_rejected").await;
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        1,
        "no login after the restart"
    );
}

/// A `kill -9` in a token's last second. NIC still holds a token for a moment after gstgate
/// stops using it (its `TokenExpiry` is whole seconds; here the simulator states it 2 s early
/// so that the moment is wide enough to land in), and a login without the force flag then
/// gets that token back with an expiry already past: after such a restart callers got 502
/// `upstream_bad_response`. The restarted gateway keeps the expired token's record and forces
/// a new one: the request is served, with one forced login.
#[tokio::test]
async fn a_kill_9_in_a_tokens_last_second_costs_one_forced_login_and_no_502() {
    // Six-second tokens; the force window spans the whole life, as NIC's 10 minutes span the
    // last moments of a 6-hour token.
    let sim = Sim::start(SimOpts {
        token_ttl: "6s",
        force_window: "6s",
        ..SimOpts::default()
    })
    .await;
    sim.control("/_sim/knobs", json!({"stated_expiry_early_ms": 2000}))
        .await;
    let dir = tempfile::tempdir().unwrap();
    let opts = GwOpts {
        apis: vec!["einvoice"],
        // No proactive refresh before the kill: it would renew the token first.
        refresh_before: "0s",
        ..opts(dir.path(), "")
    };
    let mut gw = Gateway::start(&sim, opts.clone()).await;
    einvoice(&gw, "LAST-SECOND-1").await;
    wait_committed(&gw, 1.0).await;
    let sessions = gw.admin_sessions().await;
    let stated = sessions[0]["expires_at"].as_str().unwrap().to_owned();
    let stated =
        std::time::SystemTime::from(chrono::DateTime::parse_from_rfc3339(&stated).unwrap());
    let until = |t: std::time::SystemTime| {
        t.duration_since(std::time::SystemTime::now())
            .unwrap_or_default()
    };
    // Killed before its proactive refresh (due at its deadline, within a second of the stated
    // expiry), and back up in the token's last second: the stored session is no longer
    // usable, so it is not resumed ...
    tokio::time::sleep(until(stated - Duration::from_millis(2500))).await;
    signal(&mut gw, "-9").await;
    assert_eq!(
        sim.count(GSTIN, "force_refreshes").await,
        0,
        "killed before any refresh"
    );
    tokio::time::sleep(until(stated - Duration::from_millis(800))).await;
    let gw = Gateway::start(&sim, opts).await;
    // ... and the first request comes once the stated expiry is past, while the simulator
    // still honours the token.
    tokio::time::sleep(until(stated + Duration::from_millis(200))).await;
    let forced = sim.count(GSTIN, "force_refreshes").await;
    einvoice(&gw, "LAST-SECOND-2").await;
    assert_eq!(sim.count(GSTIN, "force_refreshes").await, forced + 1);
}

/// The mode bits of `path` (following a link).
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// A store file that is a symbolic link is refused at start-up with the reason, and the file
/// it points to is neither written nor made owner-only: whoever can put a link in the store's
/// directory cannot have gstgate change another file.
#[tokio::test]
async fn a_store_file_that_is_a_symlink_is_refused_and_its_target_left_alone() {
    use std::os::unix::fs::PermissionsExt as _;
    let sim = Sim::start(SimOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("someone-elses-file");
    std::fs::write(&target, "not a store").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
    let store = dir.path().join("sessions.redb");
    std::os::unix::fs::symlink(&target, &store).unwrap();
    let opts = opts(dir.path(), "");
    let err = serve_refused(&gateway_config(&sim.public_key, &sim.url(), &opts), &opts).await;
    assert!(
        err.contains(&store.display().to_string()) && err.contains("symbolic link"),
        "{err}"
    );
    assert_eq!(mode(&target), 0o644, "the link's target was chmodded");
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "not a store");
    assert!(std::fs::symlink_metadata(&store).unwrap().is_symlink());
}

/// The generated key file is not read through a symbolic link either: a link to a valid key
/// elsewhere is refused, not used.
#[tokio::test]
async fn a_key_file_that_is_a_symlink_is_refused() {
    let sim = Sim::start(SimOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("another-key");
    std::fs::write(&elsewhere, KEY_A).unwrap();
    let key = dir.path().join("sessions.redb.key");
    std::os::unix::fs::symlink(&elsewhere, &key).unwrap();
    let opts = opts(dir.path(), "");
    let err = serve_refused(&gateway_config(&sim.public_key, &sim.url(), &opts), &opts).await;
    assert!(
        err.contains(&key.display().to_string()) && err.contains("symbolic link"),
        "{err}"
    );
    assert!(
        !dir.path().join("sessions.redb").exists(),
        "a store was made"
    );
}

/// A store whose directory does not exist yet, with no configured key: the directory is
/// created owner-only, the key file and the store go there, and the gateway serves.
#[tokio::test]
async fn a_missing_store_directory_is_created_owner_only_and_the_gateway_serves() {
    let sim = Sim::start(SimOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("state").join("gstgate");
    let gw = Gateway::start(
        &sim,
        GwOpts {
            apis: vec!["einvoice"],
            ..opts(&missing, "")
        },
    )
    .await;
    einvoice(&gw, "INV/1").await;
    for created in [dir.path().join("state"), missing.clone()] {
        assert_eq!(mode(&created), 0o700, "{}", created.display());
    }
    assert!(missing.join("sessions.redb").is_file());
    assert_eq!(mode(&missing.join("sessions.redb.key")), 0o600);
}
