//! Live configuration reload: `SIGHUP` and `POST /admin/reload` apply added, removed and
//! changed credentials and clients without touching the sessions of the ones that did not
//! change; a broken file is refused with the reason and the running configuration stays.

mod common;

use common::*;
use serde_json::Value;

const SECOND_KEY: &str = "second-client-key-0123456789";

/// The gateway's config with `opts`, written over the file it was started with.
fn rewrite(gw: &Gateway, sim: &Sim, opts: &GwOpts) {
    std::fs::write(
        &gw.config,
        gateway_config(&sim.public_key, &sim.url(), opts),
    )
    .unwrap();
}

async fn sighup(gw: &Gateway) {
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// An invoice for `gstin`, sent with the second client's key.
async fn as_second(gw: &Gateway, gstin: &str, doc: &str) -> reqwest::Response {
    gw.http
        .post(format!("http://{}/eicore/v1.03/Invoice", gw.proxy))
        .header("x-api-key", SECOND_KEY)
        .header("gstin", gstin)
        .json(&invoice(gstin, doc))
        .send()
        .await
        .unwrap()
}

/// How many lines of the log contain `text`.
fn count(gw: &Gateway, text: &str) -> usize {
    gw.logs.text().lines().filter(|l| l.contains(text)).count()
}

#[tokio::test]
async fn sighup_adds_a_taxpayer_and_a_client_without_touching_existing_sessions() {
    let other = gstin_n(7);
    let mut sim_opts = SimOpts::default();
    sim_opts
        .users
        .push((other.clone(), USER.into(), PASSWORD.into()));
    let sim = Sim::start(sim_opts).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let res = gw.generate(GSTIN, "R/1").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1);

    // A second taxpayer, and a client allowed only that taxpayer.
    let mut opts = GwOpts::default();
    opts.credentials
        .push((other.clone(), USER.into(), PASSWORD.into()));
    opts.clients
        .push(("second".into(), SECOND_KEY.into(), vec![other.clone()]));
    rewrite(&gw, &sim, &opts);
    sighup(&gw).await;
    gw.logs.wait_for("configuration reloaded").await;

    let res = as_second(&gw, &other, "R/2").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    // The new client sees only its own taxpayer.
    let res = as_second(&gw, GSTIN, "R/3").await;
    assert_eq!(res.status(), 403);
    // The existing session was not touched: no login for the first taxpayer.
    let res = gw.generate(GSTIN, "R/4").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1, "no re-login");
    assert_eq!(sim.count(&other, "auth_calls").await, 1);

    // Removing the second taxpayer again: its caller is refused, the first still served.
    rewrite(&gw, &sim, &GwOpts::default());
    let res = gw.admin_post("/admin/reload", None).await;
    assert_eq!(res.status(), 200);
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["removed"], 1, "{report}");
    assert_eq!(report["unchanged"], 1, "{report}");
    assert_eq!(report["clients"], 1, "{report}");
    let res = as_second(&gw, &other, "R/5").await;
    assert_eq!(res.status(), 401);
    let res = gw.generate(GSTIN, "R/6").await;
    assert_eq!(res.status(), 200);
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1, "still no re-login");
}

#[tokio::test]
async fn a_broken_file_is_refused_with_the_reason_and_the_running_config_stays() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let res = gw.generate(GSTIN, "B/1").await;
    assert_eq!(res.status(), 200);

    // A credential for an unknown upstream: the file loads but fails a check.
    let mut text = gateway_config(&sim.public_key, &sim.url(), &GwOpts::default());
    text.push_str(
        "\n[[credential]]\ngstin = \"27AAPFU0939F1ZV\"\nusername = \"x\"\npassword = \"p\"\nupstreams = [\"nowhere\"]\n",
    );
    std::fs::write(&gw.config, text).unwrap();
    let body = expect_problem(
        gw.admin_post("/admin/reload", None).await,
        422,
        "config_invalid",
    )
    .await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("nowhere"),
        "{body}"
    );

    // A syntax error on a line holding a secret: the answer names the line and key, never
    // the value.
    let text = gateway_config(&sim.public_key, &sim.url(), &GwOpts::default()).replacen(
        &format!("password = \"{PASSWORD}\""),
        "password = \"leaky\\q-secret-value\"",
        1,
    );
    std::fs::write(&gw.config, text).unwrap();
    let body = expect_problem(
        gw.admin_post("/admin/reload", None).await,
        422,
        "config_invalid",
    )
    .await;
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("key `password`"), "{body}");
    assert!(!body.to_string().contains("leaky"), "{body}");
    // The refusal's log line is written before the log is searched for the value.
    gw.logs.wait_for("configuration reload refused").await;
    assert!(
        !gw.logs.text().contains("leaky"),
        "the log quotes the value"
    );

    // Not TOML at all, by SIGHUP: logged, and the running configuration keeps serving.
    std::fs::write(&gw.config, "[server\nthis is not toml").unwrap();
    let refused = count(&gw, "configuration reload refused");
    sighup(&gw).await;
    gw.logs
        .wait_for_count("configuration reload refused", refused + 1)
        .await;
    let res = gw.generate(GSTIN, "B/2").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1, "no re-login");
}

/// A numeric password in a reloaded file: the answer and the log name the key and say a
/// string is expected, never printing the value; the running configuration stays.
#[tokio::test]
async fn a_reloaded_secret_of_the_wrong_type_is_refused_without_its_value() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let text = gateway_config(&sim.public_key, &sim.url(), &GwOpts::default()).replacen(
        &format!("password = \"{PASSWORD}\""),
        "password = 98765432",
        1,
    );
    assert!(
        text.contains("password = 98765432"),
        "the harness config changed"
    );
    std::fs::write(&gw.config, text).unwrap();
    let body = expect_problem(
        gw.admin_post("/admin/reload", None).await,
        422,
        "config_invalid",
    )
    .await;
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("key `password`") && detail.contains("expected a string"),
        "{body}"
    );
    assert!(!body.to_string().contains("98765432"), "{body}");
    gw.logs.wait_for("configuration reload refused").await;
    assert!(
        !gw.logs.text().contains("98765432"),
        "the log quotes the value"
    );
    let res = gw.generate(GSTIN, "N/1").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

/// A configuration path that turns out to be a symlink to `/dev/zero`: the reload reads no
/// more than the limit, is refused with that reason, and the process stays small and keeps
/// serving its running configuration.
#[tokio::test]
async fn a_reload_of_an_endless_file_is_refused_at_the_size_limit() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    std::fs::remove_file(&gw.config).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &gw.config).unwrap();
    let res = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        gw.admin_post("/admin/reload", None),
    )
    .await
    .expect("the reload answers (an unbounded read never does)");
    let body = expect_problem(res, 422, "config_invalid").await;
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("larger than the limit of 67108864 bytes"),
        "{body}"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", gw.pid())).unwrap();
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(
        rss_kib < 256 * 1024,
        "resident {rss_kib} KiB after the refusal"
    );
    let res = gw.generate(GSTIN, "Z/1").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

#[tokio::test]
async fn a_changed_password_clears_that_credentials_lockout() {
    let sim = Sim::start(SimOpts::default()).await;
    let wrong = GwOpts {
        credentials: vec![(GSTIN.into(), USER.into(), "not-the-password".into())],
        ..GwOpts::default()
    };
    let gw = Gateway::start(&sim, wrong).await;
    expect_problem(gw.generate(GSTIN, "P/1").await, 502, "credentials_rejected").await;
    // Locked out: no further login is attempted.
    expect_problem(gw.generate(GSTIN, "P/2").await, 502, "credentials_rejected").await;
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1);

    rewrite(&gw, &sim, &GwOpts::default());
    let res = gw.admin_post("/admin/reload", None).await;
    assert_eq!(res.status(), 200);
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["changed"], 1, "{report}");
    let res = gw.generate(GSTIN, "P/3").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 2);
}

/// The reload endpoint is an admin action: without the bearer token (or with a caller's API
/// key) it is refused before the file is read, and nothing changes.
#[tokio::test]
async fn a_reload_without_the_admin_token_is_refused_and_applies_nothing() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let mut opts = GwOpts::default();
    opts.clients
        .push(("intruder".into(), SECOND_KEY.into(), vec!["*".into()]));
    rewrite(&gw, &sim, &opts);
    let url = format!("http://{}/admin/reload", gw.admin);
    for req in [
        gw.http.post(&url),
        gw.http
            .post(&url)
            .bearer_auth("wrong-admin-token-0123456789"),
        gw.http.post(&url).bearer_auth(API_KEY),
        gw.http.post(&url).header("x-api-key", API_KEY),
    ] {
        expect_problem(req.send().await.unwrap(), 401, "unauthenticated").await;
    }
    assert!(!gw.logs.text().contains("configuration reloaded"));
    // The client the rewritten file would add does not exist.
    let res = as_second(&gw, GSTIN, "U/1").await;
    assert_eq!(res.status(), 401);
}

/// Settings a reload cannot apply — an admin token, an upstream's timeout — are named in
/// `restart_needed` (never with their values) and keep their running values until a restart.
#[tokio::test]
async fn settings_that_need_a_restart_are_named_without_their_values() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let new_token = "a-new-admin-token-0123456789";
    let text = std::fs::read_to_string(&gw.config)
        .unwrap()
        .replace(ADMIN_TOKEN, new_token)
        .replace("timeout = \"5s\"", "timeout = \"7s\"");
    std::fs::write(&gw.config, text).unwrap();
    let res = gw.admin_post("/admin/reload", None).await;
    assert_eq!(res.status(), 200);
    let body = res.text().await.unwrap();
    assert!(!body.contains(new_token), "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    let needed: Vec<&str> = report["restart_needed"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        needed,
        ["server.admin_token", "upstream `einvoice`.timeout"],
        "{report}"
    );
    // The running token still opens the admin API until a restart.
    assert_eq!(gw.admin_post("/admin/reload", None).await.status(), 200);
    assert!(!gw.logs.text().contains(new_token));
}

/// Key rotation without downtime: a client lists its old and new key digests, both are
/// accepted; a reload that drops the old one refuses it at once, the new one goes on.
#[tokio::test]
async fn a_client_key_is_rotated_with_two_digests_and_a_reload() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let old = gstgate::cli::hex_sha256(API_KEY.as_bytes());
    let new_key = "rotated-client-key-0123456789";
    let new = gstgate::cli::hex_sha256(new_key.as_bytes());
    let send = |key: &'static str| {
        gw.http
            .post(format!("http://{}/eicore/v1.03/Invoice", gw.proxy))
            .header("x-api-key", key)
            .header("gstin", GSTIN)
            .json(&invoice(GSTIN, &format!("ROT/{key}")))
            .send()
    };
    let config = std::fs::read_to_string(&gw.config).unwrap();
    assert!(config.contains(&old));
    std::fs::write(
        &gw.config,
        config.replace(
            &format!("api_key_sha256 = \"{old}\""),
            &format!("api_key_sha256 = [\"{old}\", \"{new}\"]"),
        ),
    )
    .unwrap();
    assert_eq!(gw.admin_post("/admin/reload", None).await.status(), 200);
    assert_eq!(send(API_KEY).await.unwrap().status(), 200);
    assert_eq!(send(new_key).await.unwrap().status(), 200);

    std::fs::write(
        &gw.config,
        config.replace(
            &format!("api_key_sha256 = \"{old}\""),
            &format!("api_key_sha256 = \"{new}\""),
        ),
    )
    .unwrap();
    assert_eq!(gw.admin_post("/admin/reload", None).await.status(), 200);
    assert_eq!(send(API_KEY).await.unwrap().status(), 401);
    assert_eq!(send(new_key).await.unwrap().status(), 200);
}

/// Writes a secret file readable by its owner only, as a secret volume would hold it.
fn secret_file(path: &std::path::Path, value: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The running gateway's file with one more credential, whose password is in `file`.
fn with_password_file(gw: &Gateway, sim: &Sim, gstin: &str, file: &std::path::Path) {
    let mut text = gateway_config(&sim.public_key, &sim.url(), &GwOpts::default());
    text.push_str(&format!(
        "\n[[credential]]\ngstin = \"{gstin}\"\nusername = \"{USER}\"\npassword_file = \"{}\"\nupstreams = [\"einvoice\"]\n",
        file.display()
    ));
    std::fs::write(&gw.config, text).unwrap();
}

/// Issue 19, acceptance 1: a taxpayer added by reload with `password_file` is served with no
/// restart; rotating the file and reloading logs in with the new value; a file others can
/// read is refused, by `check-config` and by reload, and the running configuration stays.
#[tokio::test]
async fn a_password_file_arrives_and_rotates_by_reload_and_an_open_one_is_refused() {
    let other = gstin_n(8);
    let mut sim_opts = SimOpts::default();
    sim_opts
        .users
        .push((other.clone(), USER.into(), "rotated-password-2".into()));
    let sim = Sim::start(sim_opts).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("other-password");

    // Added by SIGHUP with a password the simulator does not (or no longer) accept: the
    // file's value is what the login sends.
    secret_file(&file, "stale-password-1");
    with_password_file(&gw, &sim, &other, &file);
    sighup(&gw).await;
    gw.logs.wait_for("configuration reloaded").await;
    let res = gw.generate(&other, "S/1").await;
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "credentials_rejected", "{body}");
    assert_eq!(sim.count(&other, "auth_calls").await, 1);

    // The file rotated and the configuration reloaded: the new password logs in.
    secret_file(&file, "rotated-password-2");
    let res = gw.admin_post("/admin/reload", None).await;
    assert_eq!(res.status(), 200);
    let report: Value = res.json().await.unwrap();
    assert_eq!(report["changed"], 1, "{report}");
    let res = gw.generate(&other, "S/2").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(sim.count(&other, "auth_calls").await, 2);

    // Readable by others: refused by check-config, by both reloads, and the value is never
    // printed; the credential keeps its running password and session.
    std::fs::set_permissions(&file, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["check-config", "--config"])
        .arg(&gw.config)
        .env("TEST_CLIENT_SECRET", CLIENT_SECRET)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("password_file") && said.contains("mode 0644"),
        "{said}"
    );
    assert!(said.contains(&file.display().to_string()), "{said}");
    let body = expect_problem(
        gw.admin_post("/admin/reload", None).await,
        422,
        "config_invalid",
    )
    .await;
    let detail = body["detail"].as_str().unwrap_or_default();
    assert!(detail.contains("mode 0644"), "{body}");
    // The refusal above is in the log before the count.
    gw.logs.wait_for("configuration reload refused").await;
    let refused = count(&gw, "configuration reload refused");
    sighup(&gw).await;
    gw.logs
        .wait_for_count("configuration reload refused", refused + 1)
        .await;
    let res = gw.generate(&other, "S/3").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(sim.count(&other, "auth_calls").await, 2, "no re-login");
    assert!(!said.contains("rotated-password") && !gw.logs.text().contains("rotated-password"));
}

/// A `SIGHUP` reload leaves the same audit line as `POST /admin/reload`, done or failed.
#[tokio::test]
async fn a_sighup_reload_writes_an_audit_line() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let audit = |outcome: &str| {
        gw.logs
            .text()
            .lines()
            .filter(|l| {
                l.contains("\"admin action\"")
                    && l.contains("gstgate::audit")
                    && l.contains("\"SIGHUP\"")
                    && l.contains("/admin/reload")
                    && l.contains(&format!("\"outcome\":\"{outcome}\""))
            })
            .count()
    };
    assert_eq!(audit("done"), 0);
    sighup(&gw).await;
    gw.logs.wait_for("\"SIGHUP\"").await;
    assert_eq!(audit("done"), 1, "{}", gw.logs.text());

    std::fs::write(&gw.config, "[server\nnot toml").unwrap();
    let before = count(&gw, "\"SIGHUP\"");
    sighup(&gw).await;
    gw.logs.wait_for_count("\"SIGHUP\"", before + 1).await;
    assert_eq!(audit("failed"), 1, "{}", gw.logs.text());
}

/// An upstream secret rotated in its file is not applied by a reload (the upstream is built
/// at start-up), and the reload says so, by key, though the file's text did not change.
#[tokio::test]
async fn a_rotated_client_secret_file_is_reported_as_needing_a_restart() {
    let sim = Sim::start(SimOpts::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client-secret");
    secret_file(&file, CLIENT_SECRET);
    let opts = GwOpts::default();
    let text = gateway_config(&sim.public_key, &sim.url(), &opts).replace(
        "client_secret = \"${TEST_CLIENT_SECRET}\"",
        &format!("client_secret_file = \"{}\"", file.display()),
    );
    assert!(
        text.contains("client_secret_file"),
        "the harness config changed"
    );
    let gw = Gateway::start_with_config(&text, &opts).await;
    let res = gw.generate(GSTIN, "C/1").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let report: Value = gw
        .admin_post("/admin/reload", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(report["restart_needed"], serde_json::json!([]), "{report}");

    secret_file(&file, "a-rotated-client-secret");
    let report: Value = gw
        .admin_post("/admin/reload", None)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        report["restart_needed"],
        serde_json::json!(["upstream `einvoice`.client_secret"]),
        "{report}"
    );
    assert!(!report.to_string().contains("a-rotated"));
    // Until the restart, the running secret (the one the simulator accepts) is used.
    let res = gw.generate(GSTIN, "C/2").await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}
