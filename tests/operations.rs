//! Issue 2 acceptance, operations: metrics names, no secrets in logs, graceful shutdown,
//! the demo config and `check-config`.

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

/// Every metric docs/operations.md names.
const METRIC_NAMES: &[&str] = &[
    "gstgate_requests_total",
    "gstgate_request_duration_seconds",
    "gstgate_upstream_request_duration_seconds",
    "gstgate_auth_requests_total",
    "gstgate_token_refreshes_total",
    "gstgate_token_rejected_retries_total",
    "gstgate_upstream_errors_total",
    "gstgate_sessions",
    "gstgate_session_min_ttl_seconds",
    "gstgate_inflight_requests",
    "gstgate_generate_outcomes_total",
];

#[tokio::test]
async fn metrics_expose_every_contract_name_and_count_requests() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    assert_eq!(gw.generate(GSTIN, "M/1").await.status(), 200);
    assert_eq!(gw.generate("27AAPFU0939F1ZX", "M/2").await.status(), 400);
    // The replay path, so that the retry counter has a series too.
    sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
        .await;
    assert_eq!(gw.generate(GSTIN, "M/3").await.status(), 200);

    let text = gw.metrics().await;
    for name in METRIC_NAMES {
        assert!(
            text.lines()
                .any(|l| l.starts_with(name) && !l.starts_with('#')),
            "{name} missing from:\n{text}"
        );
    }
    assert_eq!(
        metric_value(
            &text,
            r#"gstgate_requests_total{upstream="einvoice",status="2xx"}"#
        ),
        2.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"gstgate_requests_total{upstream="einvoice",status="4xx"}"#
        ),
        1.0
    );
    // By cause and by caller (issue 19): the refusal by its problem code, the relayed replies
    // as `none`, all three by the configured client.
    assert_eq!(
        metric_value(
            &text,
            r#"gstgate_requests_total{upstream="einvoice",status="4xx",client="billing",code="gstin_invalid"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"gstgate_requests_total{upstream="einvoice",status="2xx",client="billing",code="none"}"#
        ),
        2.0
    );
    // The revocation's rejection, by its classified e-invoice code.
    assert_eq!(
        metric_value(
            &text,
            r#"gstgate_upstream_errors_total{upstream="einvoice",class="token_rejected",code="1005"}"#
        ),
        1.0
    );
    assert_eq!(
        metric_value(
            &text,
            r#"gstgate_request_duration_seconds_count{upstream="einvoice"}"#
        ),
        3.0
    );
    // Two logins and three data calls reached the upstream.
    assert_eq!(
        metric_value(
            &text,
            r#"gstgate_upstream_request_duration_seconds_count{upstream="einvoice"}"#
        ),
        5.0
    );
    assert_eq!(metric_value(&text, "gstgate_inflight_requests"), 0.0);
    assert!(!text.contains(GSTIN), "no GSTIN label");
    assert!(!text.contains(USER), "no username label");

    let health = gw
        .http
        .get(format!("http://{}/healthz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = gw
        .http
        .get(format!("http://{}/readyz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test]
async fn no_secret_reaches_the_logs_even_at_trace_level() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            rust_log: "trace",
            apis: vec!["einvoice", "ewaybill", "gstn"],
            max_logins: 5,
            ..GwOpts::default()
        },
    )
    .await;
    // A full scenario on each API: login, data calls, a replay after revocation, a failed call.
    for i in 0..3 {
        assert_eq!(gw.generate(GSTIN, &format!("LOG/{i}")).await.status(), 200);
    }
    sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
        .await;
    assert_eq!(gw.generate(GSTIN, "LOG/r").await.status(), 200);
    sim.control("/_sim/faults", json!({"mode": "garbage", "count": 1}))
        .await;
    // The garbled reply's outcome is looked up, and the generate sent once more.
    let res = gw.generate(GSTIN, "LOG/g").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["gstgate-outcome"], "recovered");

    let ewb = |doc: &str| {
        gw.request(Method::POST, "/ewaybillapi/v1.03/ewayapi")
            .json(&json!({"action": "GENEWAYBILL", "data": {
                "docType": "INV", "docNo": doc, "docDate": "25/11/2026",
                "fromGstin": GSTIN, "toGstin": "05AAACG2115R1ZN", "totInvValue": 1180.0,
                "supplyType": "O", "subSupplyType": "1", "fromPincode": 400001,
                "toPincode": 248001, "transDistance": "100", "itemList": []}}))
            .send()
    };
    let res = ewb("LOGEWB/1").await.unwrap();
    let ewb_no = res.json::<Value>().await.unwrap()["data"]["ewayBillNo"].clone();
    assert!(ewb_no.is_number());
    let get = gw
        .request(
            Method::GET,
            &format!("/ewaybillapi/v1.03/ewayapi/GetEwayBill?ewbNo={ewb_no}"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);

    let otp = gw.start_gstn_session(&sim, GSTIN).await;
    let retsum = || {
        gw.request(
            Method::GET,
            &format!(
                "/taxpayerapi/v1.0/returns/gstr1?action=RETSUM&gstin={GSTIN}&ret_period=102026"
            ),
        )
        .header("ret_period", "102026")
        .send()
    };
    assert_eq!(retsum().await.unwrap().status(), 200);
    // A refresh sends REFRESHTOKEN: the current token, and the new app key under the SEK.
    assert_eq!(
        gw.admin_post(&format!("/admin/sessions/gstn/{GSTIN}/refresh"), None)
            .await
            .status(),
        200
    );
    assert_eq!(retsum().await.unwrap().status(), 200);

    let sessions = sim.get_json("/_sim/sessions").await;
    let mut secrets: Vec<String> = vec![
        PASSWORD.into(),
        CLIENT_SECRET.into(),
        API_KEY.into(),
        ADMIN_TOKEN.into(),
        // Quoted: six bare digits could turn up inside a timestamp or a latency figure.
        format!("\"{otp}\""),
    ];
    for s in sessions["sessions"].as_array().expect("sessions list") {
        for key in ["token", "sek", "previous_token"] {
            if let Some(v) = s[key].as_str() {
                secrets.push(v.to_owned());
            }
        }
    }
    assert!(
        secrets.len() >= 11,
        "tokens and SEKs of the sessions of all three APIs are checked: {sessions}"
    );
    // Every line before the last request's access line is written by then.
    let last = gw
        .request(reqwest::Method::POST, "/eicore/v1.03/Invoice")
        .header("x-request-id", "log-last-0001")
        .json(&invoice(GSTIN, "LOG/last"))
        .send()
        .await
        .unwrap();
    assert_eq!(last.status(), 200);
    gw.logs.line_with(&["\"request\"", "log-last-0001"]).await;
    let logs = gw.logs.text();
    assert!(logs.lines().count() > 20, "trace logging was on:\n{logs}");
    assert!(logs.contains("\"request_id\""), "access log lines present");
    for upstream in ["einvoice", "ewaybill", "gstn"] {
        assert!(
            logs.contains(&format!("\"upstream\":\"{upstream}\"")),
            "{upstream} traffic was logged"
        );
    }
    for secret in &secrets {
        assert!(
            !logs.contains(secret.as_str()),
            "a secret ({} chars) leaked into the logs",
            secret.len()
        );
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish_and_refuses_new_connections() {
    let sim = Sim::start(SimOpts::default()).await;
    let mut gw = Gateway::start(&sim, GwOpts::default()).await;
    assert_eq!(gw.generate(GSTIN, "T/0").await.status(), 200);
    sim.control("/_sim/knobs", json!({"latency_ms": 3000}))
        .await;

    let inflight = {
        let gw = &gw;
        join_all((0..20).map(|i| async move {
            let res = gw.generate(GSTIN, &format!("T/inflight/{i}")).await;
            (
                res.status().as_u16(),
                res.json::<Value>().await.unwrap()["Status"].clone(),
            )
        }))
    };
    let signal = async {
        // The gauge is the signal that all 20 are inside the gateway.
        loop {
            if gw.metric("gstgate_inflight_requests").await == 20.0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        let status = std::process::Command::new("kill")
            .args(["-TERM", &gw.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        // New connections are refused while the 20 are still running.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        loop {
            match tokio::net::TcpStream::connect(gw.proxy).await {
                Err(_) => break,
                Ok(_) if tokio::time::Instant::now() < deadline => tokio::task::yield_now().await,
                Ok(_) => panic!("still accepting connections 2 s after SIGTERM"),
            }
        }
    };
    let (results, ()) = tokio::join!(inflight, signal);
    assert!(
        results.iter().all(|(s, st)| *s == 200 && *st == 1),
        "{results:?}"
    );
    let status = gw.wait().await;
    assert!(status.success(), "clean exit: {status:?}");
}

/// The text format writes the access line itself, not through `tracing`'s event: it must
/// still be written exactly when `RUST_LOG` lets the event through, including directives
/// that name fields or spans (which only the event itself can be matched against). Each
/// gateway serves one request and stops; its whole output is read after it exited.
#[tokio::test]
async fn the_text_formats_access_line_follows_rust_log() {
    let sim = Sim::start(SimOpts::default()).await;
    for (rust_log, written) in [
        ("info", true),
        ("warn,gstgate::access=info", true),
        ("warn", false),
        ("info,gstgate::access=off", false),
        ("info,gstgate::access=warn", false),
        // Field and span directives: a `peer` field enables only the audit line; a `gstin`
        // field enables the access line, which has one.
        ("off,gstgate[{peer}]=info", false),
        ("warn,gstgate[{trigger}]=info", false),
        ("off,gstgate[{gstin}]=info", true),
    ] {
        let mut gw = Gateway::start(
            &sim,
            GwOpts {
                log_format: "pretty",
                rust_log,
                ..GwOpts::default()
            },
        )
        .await;
        let res = gw.generate(GSTIN, &format!("LOG/{}", rust_log.len())).await;
        assert_eq!(res.status(), 200, "{rust_log}");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &gw.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        assert!(gw.wait().await.success(), "{rust_log}");
        gw.logs.wait_closed().await;
        let text = gw.logs.text();
        let lines: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("gstgate::access"))
            .collect();
        if written {
            assert_eq!(lines.len(), 1, "RUST_LOG={rust_log}:\n{text}");
            assert!(
                lines[0].contains("  INFO gstgate::access: request request_id=")
                    && lines[0].contains(" status=200 "),
                "RUST_LOG={rust_log}: {}",
                lines[0]
            );
        } else {
            assert!(lines.is_empty(), "RUST_LOG={rust_log}:\n{text}");
        }
    }
}

fn check_config(text: &str, env: &[(&str, &str)]) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let mut command = std::process::Command::new(BIN);
    // The host's own proxy settings would add warnings the tests do not expect.
    for proxy in gstgate::config::PROXY_VARIABLES {
        command.env_remove(proxy);
    }
    let out = command
        .args(["check-config", "--config"])
        .arg(&path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn check_config_names_unknown_keys_and_missing_variables() {
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap();
    let (ok, out) = check_config(&demo, &[]);
    assert!(ok, "{out}");

    let typo = demo.replacen("refresh_before = \"10m\"", "refresh_befor = \"10m\"", 1);
    let (ok, out) = check_config(&typo, &[]);
    assert!(!ok);
    assert!(out.contains("refresh_befor"), "{out}");
    assert!(out.contains("line"), "line-precise: {out}");

    let missing = demo.replacen(
        "password = \"demo-password\"",
        "password = \"${GSTGATE_TEST_UNSET_PWD}\"",
        1,
    );
    let (ok, out) = check_config(&missing, &[]);
    assert!(!ok);
    assert!(out.contains("GSTGATE_TEST_UNSET_PWD"), "{out}");
    assert!(out.contains("password"), "names the key: {out}");
    let (ok, out) = check_config(&missing, &[("GSTGATE_TEST_UNSET_PWD", "x")]);
    assert!(ok, "{out}");
    assert!(!out.contains("demo-password"));

    // An outbound proxy the operator expects to be used is not: said, not silently ignored.
    assert!(!out.contains("warning:"), "{out}");
    let (ok, out) = check_config(&demo, &[("HTTPS_PROXY", "http://proxy.internal:3128")]);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: HTTPS_PROXY is set, but gstgate connects to its upstreams directly"),
        "{out}"
    );

    // Credentials in base_url would reach logs and HTTP/2's :authority.
    let userinfo = demo.replacen(
        "http://127.0.0.1:8081",
        "http://gsp:secret@127.0.0.1:8081",
        1,
    );
    let (ok, out) = check_config(&userinfo, &[]);
    assert!(!ok);
    assert!(
        out.contains("base_url") && out.contains("user or password"),
        "{out}"
    );
}

/// Starts `serve --config config/demo.toml` exactly as the README says (fixed ports 8080,
/// 8081, 9090 on loopback) and runs the curl it prints, through reqwest.
#[tokio::test]
async fn the_demo_config_starts_as_is_and_its_curl_generates_an_irn() {
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--config", "config/demo.toml"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut curl = None;
    let mut ready = false;
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.starts_with("gstgate ready") {
                ready = true;
            }
            if line.starts_with("curl ") {
                curl = Some(line);
                break;
            }
        }
    })
    .await
    .expect("demo printed its curl line");
    assert!(ready);
    let curl = curl.unwrap();
    let url = curl.split_whitespace().nth(2).unwrap();
    let header = |name: &str| {
        let start = curl.find(&format!("-H '{name}: ")).unwrap() + name.len() + 6;
        curl[start..].split('\'').next().unwrap().to_owned()
    };
    let body = curl.split("-d '").nth(1).unwrap().trim_end_matches('\'');
    let res = reqwest::Client::new()
        .post(url)
        .header("x-api-key", header("x-api-key"))
        .header("gstin", header("gstin"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let v: Value = res.json().await.unwrap();
    assert_eq!(v["Status"], 1, "{v}");
    assert_eq!(v["Data"]["Irn"].as_str().unwrap().len(), 64);

    // The other two demo upstreams: an e-way bill, and GSTN after the OTP flow the config's
    // comment shows (the sandbox's OTP is always 575757).
    let http = reqwest::Client::new();
    let caller = |method: reqwest::Method, path: &str| {
        http.request(method, format!("http://127.0.0.1:8080{path}"))
            .header("x-api-key", header("x-api-key"))
            .header("gstin", header("gstin"))
    };
    let gstin = header("gstin");
    let res = caller(reqwest::Method::POST, "/ewaybillapi/v1.03/ewayapi")
        .json(&json!({"action": "GENEWAYBILL", "data": {
            "docType": "INV", "docNo": format!("DEMO/{}", std::process::id()),
            "docDate": "25/11/2026", "fromGstin": gstin, "toGstin": "05AAACG2115R1ZN",
            "totInvValue": 1180.0, "supplyType": "O", "subSupplyType": "1",
            "fromPincode": 400001, "toPincode": 248001, "transDistance": "100", "itemList": []}}))
        .send()
        .await
        .unwrap();
    let ewb: Value = res.json().await.unwrap();
    assert!(ewb["data"]["ewayBillNo"].is_number(), "{ewb}");
    let admin = |path: String, body: Option<Value>| {
        let req = http
            .post(format!("http://127.0.0.1:9090{path}"))
            .bearer_auth("demo-admin-token-change-me");
        match body {
            Some(b) => req.json(&b),
            None => req,
        }
        .send()
    };
    let otp_path = format!("/admin/sessions/gstn/{gstin}/otp");
    assert_eq!(
        admin(format!("{otp_path}-request"), None)
            .await
            .unwrap()
            .status(),
        202
    );
    assert_eq!(
        admin(otp_path, Some(json!({"otp": "575757"})))
            .await
            .unwrap()
            .status(),
        200
    );
    let res = caller(
        reqwest::Method::GET,
        &format!("/taxpayerapi/v1.0/returns/gstr1?action=RETSUM&gstin={gstin}&ret_period=102026"),
    )
    .header("ret_period", "102026")
    .send()
    .await
    .unwrap();
    let ret: Value = res.json().await.unwrap();
    assert_eq!(ret["status_cd"], "1", "{ret}");
    let _ = child.kill().await;
}

/// `check-config` refuses what `serve` would fail on, and warns of what cannot work, naming
/// the entry by identity rather than by position.
#[test]
fn check_config_refuses_what_serve_would_and_names_the_entry() {
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap();

    // One address for both listeners: `serve` would fail to bind the second.
    let same = demo.replacen(
        "admin_listen = \"127.0.0.1:9090\"",
        "admin_listen = \"127.0.0.1:8080\"",
        1,
    );
    let (ok, out) = check_config(&same, &[]);
    assert!(!ok && out.contains("server.admin_listen"), "{out}");
    let sim_clash = demo.replacen(
        "listen = \"127.0.0.1:8081\"",
        "listen = \"127.0.0.1:9090\"",
        1,
    );
    let (ok, out) = check_config(&sim_clash, &[]);
    assert!(!ok && out.contains("simulator.listen"), "{out}");

    // A store directory that cannot be created (its parent is a file): `serve` would fail.
    let no_place = demo.replacen(
        "backend = \"memory\"",
        "backend = \"embedded\"\npath = \"/etc/hostname/gstgate/sessions.redb\"",
        1,
    );
    let (ok, out) = check_config(&no_place, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("store.path") && out.contains("/etc/hostname is not a directory"),
        "{out}"
    );

    // A GSTN upstream with no admin token: no OTP can ever be submitted.
    let no_token = demo.replacen("admin_token = \"demo-admin-token-change-me\"", "", 1);
    let (ok, out) = check_config(&no_token, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains("warning: upstream `gstn`") && out.contains("server.admin_token"),
        "{out}"
    );

    // A client GSTIN whose check character is wrong, where every upstream enforces it.
    let bad_check = demo.replacen(
        "gstins = [\"27AAPFU0939F1ZV\"]",
        "gstins = [\"27AAPFU0939F1ZW\"]",
        1,
    );
    let (ok, out) = check_config(&bad_check, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("client \"demo-billing-app\".gstins") && out.contains("27AAPFU0939F1ZW"),
        "{out}"
    );

    // A credential GSTIN whose check character is wrong, on an upstream that enforces it: no
    // request for it could ever be admitted.
    let bad_credential = demo.replacen(
        "gstin = \"27AAPFU0939F1ZV\"",
        "gstin = \"27AAPFU0939F1ZW\"",
        1,
    );
    let (ok, out) = check_config(&bad_credential, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("credential 27AAPFU0939F1ZW/")
            && out.contains(".gstin")
            && out.contains("gstin_checksum"),
        "{out}"
    );
    // The same on upstreams that only warn (a sandbox's sample GSTINs) is accepted.
    let warned =
        bad_credential.replace("gstin_checksum = \"enforce\"", "gstin_checksum = \"warn\"");
    let (ok, out) = check_config(&warned, &[]);
    assert!(ok, "{out}");

    // Two clients with one name (and another key): logs could not tell them apart.
    let twice = format!(
        "{demo}\n[[client]]\nname = \"demo-billing-app\"\napi_key_sha256 = \"{}\"\ngstins = [\"*\"]\n",
        "b".repeat(64)
    );
    let (ok, out) = check_config(&twice, &[]);
    assert!(
        !ok && out.contains("client \"demo-billing-app\".name"),
        "{out}"
    );

    // TLS files `serve` would fail to load at start-up.
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("cert.pem");
    std::fs::write(&not_pem, "not a certificate\n").unwrap();
    let tls = demo.replacen(
        "[server]\n",
        &format!(
            "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            not_pem.display(),
            dir.path().join("missing-key.pem").display()
        ),
        1,
    );
    let (ok, out) = check_config(&tls, &[]);
    assert!(!ok && out.contains("server.tls_cert"), "{out}");
    // A good certificate and a missing key: the key is named.
    let cert = dir.path().join("gateway.pem");
    std::fs::write(&cert, Pki::new("test CA").issue(&["localhost"]).cert_pem).unwrap();
    let tls = demo.replacen(
        "[server]\n",
        &format!(
            "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            dir.path().join("missing-key.pem").display()
        ),
        1,
    );
    let (ok, out) = check_config(&tls, &[]);
    assert!(!ok && out.contains("server.tls_key"), "{out}");
    let redis_ca = demo.replacen(
        "backend = \"memory\"",
        &format!(
            "backend = \"redis\"\nredis_url = \"rediss://127.0.0.1:1\"\nencryption_key = \"{}\"\nredis_ca_file = \"{}\"",
            "A".repeat(43) + "=",
            dir.path().join("missing-ca.pem").display()
        ),
        1,
    );
    let (ok, out) = check_config(&redis_ca, &[]);
    assert!(!ok && out.contains("store.redis_ca_file"), "{out}");

    // One key for two clients: a caller could not be told which it is.
    let same_key = format!(
        "{demo}\n[[client]]\nname = \"other-app\"\napi_key_sha256 = \"{}\"\ngstins = [\"*\"]\n",
        "A52782E3A2D4DD2F95F640B9ABFB3B2A6B8E722C65F55BE830F6E5F619F7F873"
    );
    let (ok, out) = check_config(&same_key, &[]);
    assert!(
        !ok && out.contains("client \"other-app\".api_key_sha256") && out.contains("twice"),
        "{out}"
    );
    // One API user configured twice for an upstream: two sessions would knock each other out
    // (and share one store record), however the GSTIN is spelt.
    for spelling in ["27aapfu0939f1zv", " 27AAPFU0939F1ZV "] {
        let twice_user = format!(
            "{demo}\n[[credential]]\ngstin = \"{spelling}\"\nusername = \"demo_api_user\"\npassword = \"p\"\nupstreams = [\"ewaybill\"]\n"
        );
        let (ok, out) = check_config(&twice_user, &[]);
        assert!(
            !ok && out.contains("demo_api_user") && out.contains("configured twice"),
            "{spelling:?}: {out}"
        );
    }

    // Errors name credentials by GSTIN and user.
    let lifetime = demo.replacen(
        "[[credential]]",
        "[[credential]]\nsession_lifetime = \"1h\"",
        1,
    );
    let (ok, out) = check_config(&lifetime, &[]);
    assert!(!ok, "{out}");
    assert!(out.contains("credential 27AAPFU0939F1ZV/"), "{out}");
}

/// A secret setting written as a number (or any other non-string) is refused naming the key
/// and what to write, never quoting the value: serde's own message would print it.
#[test]
fn check_config_names_a_secret_of_the_wrong_type_without_its_value() {
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap();
    for (from, to, key) in [
        (
            "password = \"demo-password\"",
            "password = 98765432",
            "password",
        ),
        (
            "admin_token = \"demo-admin-token-change-me\"",
            "admin_token = 98765432",
            "admin_token",
        ),
        (
            "client_secret = \"demo-client-secret\"",
            "client_secret = [98765432]",
            "client_secret",
        ),
    ] {
        let text = demo.replacen(from, to, 1);
        assert_ne!(text, demo, "{from} is not in the demo config");
        let (ok, out) = check_config(&text, &[]);
        assert!(!ok, "{to}: {out}");
        assert!(out.contains(&format!("key `{key}`")), "{to}: {out}");
        assert!(out.contains("expected a string"), "{to}: {out}");
        assert!(!out.contains("98765432"), "{to}: {out}");
    }
}

/// A value sent as a header on every call that holds a line break (a secret file's trailing
/// newline): `check-config` refuses it as `serve` does, with the same line, naming the key and
/// never the value.
#[test]
fn check_config_refuses_a_header_value_with_a_line_break_as_serve_does() {
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap();
    for (from, to, key) in [
        (
            "client_secret = \"demo-client-secret\"",
            "client_secret = \"demo-client-secret-Qv7\\n\"",
            "upstream \"einvoice\".client_secret",
        ),
        (
            "client_secret = \"demo-client-secret\"",
            "client_secret = \"${GSTGATE_TEST_SECRET}\"",
            "upstream \"einvoice\".client_secret",
        ),
        (
            "username = \"demo_api_user\"",
            "username = \"demo_api_user\\r\\nX-Injected: 1\"",
            ".username",
        ),
    ] {
        let text = demo.replacen(from, to, 1);
        assert_ne!(text, demo, "{from} is not in the demo config");
        let env = [("GSTGATE_TEST_SECRET", "demo-client-secret-Qv7\n")];
        let (ok, out) = check_config(&text, &env);
        assert!(!ok, "{to}: {out}");
        assert!(
            out.contains(key) && out.contains("valid HTTP header value"),
            "{to}: {out}"
        );
        assert!(
            !out.contains("Qv7") && !out.contains("X-Injected"),
            "{to}: {out}"
        );
        // `serve` stops at the same check, with the same line.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, &text).unwrap();
        let serve = std::process::Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&path)
            .envs(env)
            .output()
            .unwrap();
        assert!(!serve.status.success());
        // Both files are named c.toml; what follows the name is the error.
        let error = |text: &str| {
            text.lines()
                .find(|l| l.starts_with("gstgate: error:"))
                .and_then(|l| l.split_once("c.toml: "))
                .map(|(_, error)| error.to_owned())
        };
        let served = error(&String::from_utf8_lossy(&serve.stderr));
        assert!(served.is_some(), "{to}: {serve:?}");
        assert_eq!(served, error(&out), "{to}");
    }
}

/// An error reaches the operator once, on one line: the OS's reason is not repeated.
#[test]
fn a_startup_error_says_its_cause_once() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("absent.toml");
    for command in ["check-config", "serve"] {
        let out = std::process::Command::new(BIN)
            .args([command, "--config"])
            .arg(&missing)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.matches("os error 2").count(), 1, "{command}: {err}");
        assert!(err.contains("absent.toml"), "{command}: {err}");
    }
}

/// A thread count the runtime cannot use is refused with a sentence, not Tokio's panic; one
/// it can use (`+2`, as Rust reads numbers) gets past the check.
#[test]
fn a_worker_thread_count_that_is_not_a_positive_number_is_refused() {
    use std::os::unix::ffi::OsStrExt as _;
    let demo = concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml");
    let not_text = std::ffi::OsStr::from_bytes(b"2\xff");
    for value in ["abc", "0", "", "-1", " 2"]
        .map(std::ffi::OsStr::new)
        .into_iter()
        .chain([not_text])
    {
        let out = std::process::Command::new(BIN)
            .args(["serve", "--config", demo])
            .env("TOKIO_WORKER_THREADS", value)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("TOKIO_WORKER_THREADS must be a positive whole number")
                && !err.contains("panicked"),
            "{value:?}: {err}"
        );
    }
    // `sim` builds the same runtime; on a port in use it stops right after the check.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = std::process::Command::new(BIN)
        .args(["sim", "--listen", &busy.local_addr().unwrap().to_string()])
        .env("TOKIO_WORKER_THREADS", "+2")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("Address already in use") && !err.contains("TOKIO_WORKER_THREADS"),
        "{err}"
    );
}

/// A configuration path that names a device is read no further than the size limit, at
/// start-up as on a reload: both commands refuse it at once, saying why.
#[test]
fn a_config_path_naming_an_endless_device_is_refused_at_the_size_limit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gstgate.toml");
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    for command in ["check-config", "serve"] {
        let out = std::process::Command::new(BIN)
            .args([command, "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("gstgate.toml") && err.contains("larger than the limit"),
            "{command}: {err}"
        );
    }
}

/// An empty webhook URL from the environment switches webhooks off instead of failing.
#[test]
fn an_empty_webhook_variable_switches_webhooks_off() {
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap();
    let with_var = demo.replacen(
        "# webhook_url = \"http://127.0.0.1:9999/hooks/gstgate\"",
        "webhook_url = \"${GSTGATE_TEST_WEBHOOK}\"",
        1,
    );
    assert_ne!(with_var, demo);
    let (ok, out) = check_config(&with_var, &[("GSTGATE_TEST_WEBHOOK", "")]);
    assert!(ok, "{out}");
    let (ok, out) = check_config(&with_var, &[("GSTGATE_TEST_WEBHOOK", "not a url")]);
    assert!(!ok && out.contains("alerts.webhook_url"), "{out}");
}

/// A request that fails because the login reply was unreadable: its access line names the
/// cause, and the login's own log line carries the request's id.
#[tokio::test]
async fn a_failed_login_is_traced_to_the_request_that_caused_it() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    sim.control(
        "/_sim/faults",
        serde_json::json!({"mode": "garbage", "count": 1, "path_prefix": "/eivital/"}),
    )
    .await;
    let res = gw
        .request(reqwest::Method::POST, "/eicore/v1.03/Invoice")
        .header("x-request-id", "trace-me-0001")
        .json(&invoice(GSTIN, "TRACE/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 502, "{}", res.text().await.unwrap());
    gw.logs.wait_for("\"login failed\"").await;
    gw.logs.line_with(&["\"request\"", "trace-me-0001"]).await;
    let text = gw.logs.text();
    let line = |message: &str| -> Value {
        let found = text
            .lines()
            .find(|l| l.contains(message) && l.contains("trace-me-0001"))
            .unwrap_or_else(|| panic!("no `{message}` line with the request id:\n{text}"));
        serde_json::from_str(found).unwrap()
    };
    let login = line("\"login failed\"");
    assert_eq!(login["request_id"], "trace-me-0001", "{login}");
    let access = line("\"request\"");
    assert_eq!(access["error"], "upstream_bad_response", "{access}");
    assert!(
        access["cause"].as_str().is_some_and(|c| !c.is_empty()),
        "the access line names the cause: {access}"
    );
}

/// Besides the contract, `/metrics` says which version runs and how the process fares.
#[tokio::test]
async fn metrics_carry_the_build_and_the_process() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let text = gw.metrics().await;
    let version = format!(
        "gstgate_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.contains(&version), "{text}");
    for (series, at_least) in [
        ("process_resident_memory_bytes", 1_000_000.0),
        ("process_virtual_memory_bytes", 1_000_000.0),
        ("process_open_fds", 3.0),
        ("process_max_fds", 3.0),
        ("process_start_time_seconds", 1_700_000_000.0),
    ] {
        let value = metric_value(&text, series);
        assert!(value >= at_least, "{series} = {value}");
    }
    assert!(text.contains("process_cpu_seconds_total"), "{text}");
    // Costly to read (the allocator's free lists, under its locks): only on request.
    assert!(!text.contains("gstgate_heap_allocated_bytes"), "{text}");
}

/// `serve --heap-metric` (here `GSTGATE_HEAP_METRIC`) adds the heap in use to /metrics, where
/// the allocator is glibc's.
#[tokio::test]
async fn the_heap_metric_is_there_on_request() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            env: vec![("GSTGATE_HEAP_METRIC".into(), "1".into())],
            ..GwOpts::default()
        },
    )
    .await;
    let text = gw.metrics().await;
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        let heap = metric_value(&text, "gstgate_heap_allocated_bytes");
        let mapped = metric_value(&text, "process_virtual_memory_bytes");
        assert!(
            heap >= 100_000.0 && heap < mapped,
            "heap {heap}, mapped {mapped}"
        );
    } else {
        assert!(!text.contains("gstgate_heap_allocated_bytes"), "{text}");
    }
}

/// A listen address another process holds: `serve` exits at once, and its error names the
/// setting and the address, and says what to do. Also when the holder allows the port to be
/// shared (`SO_REUSEPORT`): broken by a gateway that joins such a port and quietly takes a
/// share of another process's connections.
#[tokio::test]
async fn an_address_in_use_is_named_by_its_setting() {
    let sim = Sim::start(SimOpts::default()).await;
    let plain = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sharing = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseport(true).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        socket.listen(16).unwrap()
    };
    for busy in [&plain, &sharing] {
        let addr = busy.local_addr().unwrap();
        for (line, setting) in [
            ("listen = \"127.0.0.1:0\"", "server.listen"),
            ("admin_listen = \"127.0.0.1:0\"", "server.admin_listen"),
        ] {
            let text = gateway_config(&sim.public_key, &sim.url(), &GwOpts::default()).replacen(
                &format!("\n{line}"),
                &format!("\n{}\"{addr}\"", &line[..line.find('"').unwrap()]),
                1,
            );
            assert!(text.contains(&addr.to_string()), "{text}");
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.toml");
            std::fs::write(&path, &text).unwrap();
            let out = tokio::time::timeout(
                Duration::from_secs(20),
                tokio::process::Command::new(BIN)
                    .args(["serve", "--config"])
                    .arg(&path)
                    .env("TEST_CLIENT_SECRET", CLIENT_SECRET)
                    .kill_on_drop(true)
                    .output(),
            )
            .await
            .expect("serve exits when it cannot listen")
            .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success());
            assert!(
                stderr.contains(&format!("{setting}: cannot listen on {addr}"))
                    && stderr.contains("another process"),
                "{stderr}"
            );
        }
    }
}

/// Issue 19: `check-config` shows a secret read from a file by its path and never its
/// value, refuses a file others can read, refuses a variable set but empty, and names every
/// unset variable at once, in file order.
#[test]
fn check_config_shows_secret_files_by_path_and_refuses_empty_and_unset_secrets() {
    use std::os::unix::fs::PermissionsExt as _;
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw-file");
    std::fs::write(&file, "demo-password\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let from_file = demo.replacen(
        "password = \"demo-password\"",
        &format!("password_file = \"{}\"", file.display()),
        1,
    );
    assert_ne!(from_file, demo, "the demo config changed");
    let (ok, out) = check_config(&from_file, &[]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(".password: read from {}", file.display())),
        "{out}"
    );
    assert!(
        !out.contains("demo-password\n") && !out.contains(": demo-password"),
        "{out}"
    );

    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, out) = check_config(&from_file, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("password_file") && out.contains("mode 0644"),
        "{out}"
    );

    let empty = demo.replacen(
        "password = \"demo-password\"",
        "password = \"${GSTGATE_TEST_EMPTY_PWD}\"",
        1,
    );
    let (ok, out) = check_config(&empty, &[("GSTGATE_TEST_EMPTY_PWD", "")]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("key `password`") && out.contains("is empty"),
        "{out}"
    );

    let unset = demo
        .replacen(
            "password = \"demo-password\"",
            "password = \"${GSTGATE_TEST_UNSET_2}\"",
            1,
        )
        .replacen(
            "admin_token = \"demo-admin-token-change-me\"",
            "admin_token = \"${GSTGATE_TEST_UNSET_1}\"",
            1,
        );
    let (ok, out) = check_config(&unset, &[]);
    assert!(!ok, "{out}");
    let (first, second) = (
        out.find("GSTGATE_TEST_UNSET_1").unwrap_or(usize::MAX),
        out.find("GSTGATE_TEST_UNSET_2").unwrap_or(usize::MAX),
    );
    assert!(
        first < second && second < usize::MAX,
        "both, in file order: {out}"
    );
}
