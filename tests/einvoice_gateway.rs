//! Issue 2 acceptance, request path: the real gateway binary in front of the real simulator.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[tokio::test]
async fn generate_irn_through_gateway_returns_plain_irn_and_upstream_sees_headers_and_ciphertext() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;

    let res = gw.generate(GSTIN, "INV/2026/001").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().contains_key("x-request-id"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["Status"], 1, "{body}");
    let irn = body["Data"]["Irn"]
        .as_str()
        .expect("Data decrypted to an object with Irn");
    assert!(is_hex64(irn), "{irn}");
    assert!(body["Data"]["AckNo"].is_number());

    let requests = sim.requests(20).await;
    let data_call = requests
        .iter()
        .find(|r| r["path"] == "/eicore/v1.03/Invoice")
        .expect("the simulator saw the generate call");
    let h = &data_call["headers"];
    let header = |name: &str| -> String {
        h.as_object()
            .unwrap()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .and_then(|(_, v)| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| panic!("header {name} missing in {h}"))
    };
    assert_eq!(header("client_id"), CLIENT_ID);
    assert_eq!(header("client_secret"), CLIENT_SECRET);
    assert_eq!(header("Gstin"), GSTIN);
    assert_eq!(header("user_name"), USER);
    let token = header("AuthToken");
    assert!(token.len() >= 16 && token != "managed-by-gstgate");
    assert!(h
        .as_object()
        .unwrap()
        .keys()
        .all(|k| !k.eq_ignore_ascii_case("x-api-key")));

    // The body on the wire is {"Data": base64 ciphertext}, not the caller's JSON.
    let wire: Value = serde_json::from_str(data_call["body"].as_str().unwrap()).unwrap();
    let data = wire["Data"].as_str().expect("Data is a string");
    let raw = gstgate::crypto::b64_decode(data).expect("Data is base64");
    assert_eq!(raw.len() % 16, 0, "AES block multiple");
    assert!(!data_call["body"].as_str().unwrap().contains("SellerDtls"));

    // A second generate of the same document is a business error, passed through as sent.
    let res = gw.generate(GSTIN, "INV/2026/001").await;
    assert_eq!(res.status(), 200);
    let dup: Value = res.json().await.unwrap();
    assert_eq!(dup["Status"], 0);
    assert_eq!(dup["ErrorDetails"][0]["ErrorCode"], "2150");
    assert_eq!(dup["InfoDtls"][0]["Desc"]["Irn"], irn);
}

#[tokio::test]
async fn passthrough_mode_forwards_bodies_untouched_and_still_injects_the_session() {
    let sim = Sim::start(SimOpts {
        plain: true,
        ..SimOpts::default()
    })
    .await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            encryption: "passthrough",
            ..GwOpts::default()
        },
    )
    .await;
    let envelope = json!({ "Data": invoice(GSTIN, "PT/1") });
    let res = gw
        .request(Method::POST, "/eicore/v1.03/Invoice")
        .json(&envelope)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["Status"], 1, "{body}");
    assert!(is_hex64(body["Data"]["Irn"].as_str().unwrap()));
    let requests = sim.requests(10).await;
    let call = requests
        .iter()
        .find(|r| r["path"] == "/eicore/v1.03/Invoice")
        .unwrap();
    let wire: Value = serde_json::from_str(call["body"].as_str().unwrap()).unwrap();
    assert_eq!(wire, envelope, "passthrough must not alter the body");
}

#[tokio::test]
async fn the_auth_path_is_answered_by_the_gateway_without_the_token_or_sek() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let res = gw
        .request(Method::POST, "/eivital/v1.04/auth")
        .json(&json!({"Data": "whatever the ASP used to send"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["Status"], 1);
    assert!(body["Data"]["TokenExpiry"].as_str().is_some());
    assert_eq!(body["Data"]["AuthToken"], "managed-by-gstgate");
    assert!(body["Data"]["Sek"].is_null());
    let real = sim.requests(10).await;
    let data_token = real
        .iter()
        .filter_map(|r| r["headers"].as_object())
        .flat_map(|h| h.iter())
        .filter(|(k, _)| k.eq_ignore_ascii_case("AuthToken"))
        .count();
    assert_eq!(data_token, 0, "no data call was needed");
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1);
}

#[tokio::test]
async fn caller_errors_get_problems_and_never_reach_the_upstream() {
    let sim = Sim::start(SimOpts::default()).await;
    let other = gstin_n(7);
    let gw = Gateway::start(
        &sim,
        GwOpts {
            clients: vec![("narrow".into(), API_KEY.into(), vec![GSTIN.into()])],
            credentials: vec![
                (GSTIN.into(), USER.into(), PASSWORD.into()),
                (other.clone(), USER.into(), PASSWORD.into()),
            ],
            max_body_bytes: 4096,
            ..GwOpts::default()
        },
    )
    .await;
    let url = |p: &str| format!("http://{}{p}", gw.proxy);

    // GSTIN not allowed for this client: 403, and the simulator hears nothing.
    expect_problem(gw.generate(&other, "X/1").await, 403, "gstin_not_allowed").await;
    // No key, unknown key.
    let res = gw
        .http
        .post(url("/eicore/v1.03/Invoice"))
        .header("gstin", GSTIN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_problem(res, 401, "unauthenticated").await;
    let res = gw
        .http
        .post(url("/eicore/v1.03/Invoice"))
        .header("x-api-key", "wrong-key")
        .header("gstin", GSTIN)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_problem(res, 401, "unauthenticated").await;
    // Malformed GSTIN, bad checksum, missing GSTIN.
    for bad in ["27AAPFU0939F1Z", "27AAPFU0939F1ZX", "hello"] {
        let res = gw
            .request_for(Method::POST, "/eicore/v1.03/Invoice", bad)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        expect_problem(res, 400, "gstin_invalid").await;
    }
    let res = gw
        .http
        .post(url("/eicore/v1.03/Invoice"))
        .header("x-api-key", API_KEY)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    expect_problem(res, 400, "gstin_missing").await;
    // Unknown path: 404, never forwarded.
    let res = gw
        .request(Method::GET, "/somewhere/else")
        .send()
        .await
        .unwrap();
    expect_problem(res, 404, "route_not_found").await;
    // Body over the limit: 413 (declared and streamed).
    let big = "x".repeat(5000);
    let res = gw
        .request(Method::POST, "/eicore/v1.03/Invoice")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    expect_problem(res, 413, "body_too_large").await;
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(big.into_bytes())]);
    let res = gw
        .request(Method::POST, "/eicore/v1.03/Invoice")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    expect_problem(res, 413, "body_too_large").await;

    assert_eq!(
        sim.counters().await["requests"],
        0,
        "nothing reached the upstream's data API"
    );
    assert_eq!(
        sim.counters().await["auth_calls"],
        0,
        "no login for rejected callers"
    );

    // Non-JSON body in gateway mode: 400 after the session exists, still nothing forwarded.
    let res = gw
        .request(Method::POST, "/eicore/v1.03/Invoice")
        .header("content-type", "application/json")
        .body("not json {")
        .send()
        .await
        .unwrap();
    expect_problem(res, 400, "body_invalid").await;
    assert_eq!(sim.counters().await["requests"], 0);

    // JSON in form but not UTF-8 inside a string (a Latin-1 "é"): refused too, not encrypted
    // and sent.
    let res = gw
        .request(Method::POST, "/eicore/v1.03/Invoice")
        .header("content-type", "application/json")
        .body(b"{\"DocDtls\": {\"No\": \"caf\xe9/1\"}}".to_vec())
        .send()
        .await
        .unwrap();
    let problem = expect_problem(res, 400, "body_invalid").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("UTF-8"),
        "{problem}"
    );
    assert_eq!(sim.counters().await["requests"], 0);

    // Still serving.
    assert_eq!(gw.generate(GSTIN, "OK/1").await.status(), 200);
}

#[tokio::test]
async fn upstream_down_hanging_or_garbled_gives_502_or_504_and_the_gateway_keeps_serving() {
    let sim = Sim::start(SimOpts::default()).await;

    // Down: a port nothing listens on (bind one, then close it).
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let down = Gateway::start(
        &sim,
        GwOpts {
            base_url: Some(format!("http://{closed}")),
            connect_timeout: "2s",
            ..GwOpts::default()
        },
    )
    .await;
    let started = Instant::now();
    let res = down.generate(GSTIN, "D/1").await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "502 within the connect timeout"
    );
    expect_problem(res, 502, "upstream_unavailable").await;

    let gw = Gateway::start(
        &sim,
        GwOpts {
            timeout: "1500ms",
            ..GwOpts::default()
        },
    )
    .await;
    let res = gw.generate(GSTIN, "G/0").await;
    assert_eq!(res.status(), 200);
    let irn = res.json::<Value>().await.unwrap()["Data"]["Irn"]
        .as_str()
        .unwrap()
        .to_owned();
    // A read: a generate's lost outcome is looked up instead (tests/exactly_once.rs).
    let read = || {
        gw.request(Method::GET, &format!("/eicore/v1.03/Invoice/irn/{irn}"))
            .send()
    };

    // Hanging: 504 at the configured timeout.
    sim.control(
        "/_sim/faults",
        json!({"mode": "hang", "count": 1, "path_prefix": "/eicore/"}),
    )
    .await;
    let started = Instant::now();
    let res = read().await.unwrap();
    let took = started.elapsed();
    expect_problem(res, 504, "upstream_timeout").await;
    assert!(
        took >= Duration::from_millis(1400) && took < Duration::from_secs(5),
        "{took:?}"
    );

    // Garbage body, undecryptable Data, 5xx page, connection reset: 502.
    for (mode, code) in [
        ("garbage", "upstream_bad_response"),
        ("undecryptable", "upstream_bad_response"),
        ("status_500", "upstream_unavailable"),
        ("reset", "upstream_unavailable"),
    ] {
        sim.control(
            "/_sim/faults",
            json!({"mode": mode, "count": 1, "path_prefix": "/eicore/"}),
        )
        .await;
        let body = expect_problem(read().await.unwrap(), 502, code).await;
        let text = body.to_string();
        assert!(
            !text.contains(CLIENT_SECRET) && !text.contains(PASSWORD),
            "{text}"
        );
    }
    sim.clear_faults().await;
    assert_eq!(
        gw.generate(GSTIN, "G/after").await.status(),
        200,
        "still serving"
    );
}

#[tokio::test]
async fn static_gsp_headers_are_injected_and_the_caller_cannot_override_injected_ones() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            upstream_extra:
                "[upstream.headers]\n\"Ocp-Apim-Subscription-Key\" = \"${TEST_GSP_KEY}\"\n".into(),
            env: vec![("TEST_GSP_KEY".into(), "gsp-sub-key-42".into())],
            ..GwOpts::default()
        },
    )
    .await;
    let res = gw
        .request(Method::POST, "/eicore/v1.03/Invoice")
        .header("AuthToken", "caller-forged-token")
        .header("client_secret", "caller-forged-secret")
        .header("x-custom-trace", "unlisted")
        .json(&invoice(GSTIN, "H/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let requests = sim.requests(10).await;
    let call = requests
        .iter()
        .find(|r| r["path"] == "/eicore/v1.03/Invoice")
        .unwrap();
    let headers = call["headers"].as_object().unwrap();
    let get = |name: &str| -> Vec<String> {
        headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str().unwrap_or_default().to_owned())
            .collect()
    };
    assert_eq!(get("Ocp-Apim-Subscription-Key"), vec!["gsp-sub-key-42"]);
    assert_eq!(get("client_secret"), vec![CLIENT_SECRET]);
    assert_ne!(get("AuthToken"), vec!["caller-forged-token"]);
    // Caller headers pass by allow-list only (tests/security.rs covers `forward_headers`).
    assert!(get("x-custom-trace").is_empty());
    // The login carried the static header too.
    let login = requests
        .iter()
        .find(|r| r["path"] == "/eivital/v1.04/auth")
        .unwrap();
    assert!(login["headers"]
        .as_object()
        .unwrap()
        .keys()
        .any(|k| k.eq_ignore_ascii_case("Ocp-Apim-Subscription-Key")));
}

#[tokio::test]
async fn logins_beyond_the_rate_limit_are_refused_without_calling_the_upstream() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            max_logins: 2,
            ..GwOpts::default()
        },
    )
    .await;
    assert_eq!(gw.generate(GSTIN, "RL/1").await.status(), 200);
    sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
        .await;
    assert_eq!(gw.generate(GSTIN, "RL/2").await.status(), 200);
    sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
        .await;
    let res = gw.generate(GSTIN, "RL/3").await;
    assert!(res.headers().contains_key("retry-after"));
    expect_problem(res, 429, "login_rate_limited").await;
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        2,
        "the third login was never sent"
    );
}

#[tokio::test]
async fn oversized_headers_and_upstream_replies_are_refused_and_redirects_not_followed() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            upstream_extra: "max_response_bytes = 512\n".into(),
            ..GwOpts::default()
        },
    )
    .await;
    // The head limit (32 KiB by default) is exact: 31 000 bytes of padding pass (and meet the
    // response cap below), 33 000 get a problem document on the proxy and the admin listener,
    // and nothing is forwarded.
    let padded = |pad: usize| {
        gw.request(Method::POST, "/eicore/v1.03/Invoice")
            .header("x-padding", "p".repeat(pad))
            .header("x-request-id", format!("pad-{pad}"))
            .json(&invoice(GSTIN, &format!("P/{pad}")))
    };
    // The IRN is generated, but its reply is over the cap, and so is its lookup's: gstgate
    // cannot read the outcome (docs/exactly-once.md).
    expect_problem(padded(31_000).send().await.unwrap(), 502, "outcome_unknown").await;
    let logins = sim.counters().await["auth_calls"].clone();
    let requests = sim.counters().await["requests"].clone();
    let problem = expect_problem(
        padded(33_000).send().await.unwrap(),
        431,
        "headers_too_large",
    )
    .await;
    assert_eq!(problem["request_id"], "pad-33000");
    assert!(problem["remedy"]
        .as_str()
        .unwrap()
        .contains("server.max_header_bytes"));
    gw.logs.wait_for(r#""request_id":"pad-33000""#).await;
    let admin = reqwest::Client::new()
        .get(format!("http://{}/admin/sessions", gw.admin))
        .bearer_auth(ADMIN_TOKEN)
        .header("x-padding", "p".repeat(33_000))
        .send()
        .await
        .unwrap();
    expect_problem(admin, 431, "headers_too_large").await;
    // Beyond hyper's buffer (twice the limit) the HTTP layer refuses it on its own.
    match padded(70_000).send().await {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(e.is_request() || e.is_connect(), "{e}"),
    }
    assert_eq!(sim.counters().await["auth_calls"], logins);
    assert_eq!(sim.counters().await["requests"], requests);
    // An IRN reply (well over 512 bytes) exceeds the upstream response cap: 502.
    let read = gw
        .request(
            Method::GET,
            "/eicore/v1.03/Invoice/irnbydocdetails?doctype=INV&docnum=P%2F31000&docdate=20%2F11%2F2026",
        )
        .send()
        .await
        .unwrap();
    expect_problem(read, 502, "upstream_bad_response").await;

    // An upstream that redirects: the redirect is not followed.
    let redirector = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let raddr = redirector.local_addr().unwrap();
    let target = sim.url();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = redirector.accept().await else {
                break;
            };
            let target = target.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: {target}/eivital/v1.04/auth\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                );
                let _ = s.write_all(reply.as_bytes()).await;
            });
        }
    });
    let via_redirect = Gateway::start(
        &sim,
        GwOpts {
            base_url: Some(format!("http://{raddr}")),
            ..GwOpts::default()
        },
    )
    .await;
    let res = via_redirect.generate(GSTIN, "B/3").await;
    assert_eq!(res.status(), 502);
    assert_eq!(
        sim.counters().await["auth_calls"],
        1,
        "only the first gateway's login reached the simulator"
    );
}

#[tokio::test]
async fn checksum_warn_mode_lets_sandbox_gstins_through() {
    let sandbox = "29AWGPV7107B1Z1";
    let sim = Sim::start(SimOpts {
        users: vec![(sandbox.into(), USER.into(), PASSWORD.into())],
        ..SimOpts::default()
    })
    .await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            credentials: vec![(sandbox.into(), USER.into(), PASSWORD.into())],
            gstin_checksum: "warn",
            ..GwOpts::default()
        },
    )
    .await;
    let res = gw.generate(sandbox, "SB/1").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["Status"], 1);
    gw.logs.wait_for("checksum").await;
}
