//! NIC e-way bill through gstgate (issue 3, acceptance 1 and 2): plain JSON in, encrypted
//! `data` on the wire, REK/HMAC replies opened and verified, token rejections recovered with
//! one login, and never more logins than NIC tolerates.

mod common;

use std::time::Duration;

use common::*;
use futures_util::future::join_all;
use reqwest::Method;
use serde_json::{json, Value};

const EWB: &str = "/ewaybillapi/v1.03/ewayapi";

fn ewb_opts() -> GwOpts {
    GwOpts {
        apis: vec!["ewaybill"],
        max_logins: 5,
        ..GwOpts::default()
    }
}

fn bill(gstin: &str, doc_no: &str) -> Value {
    json!({
        "action": "GENEWAYBILL",
        "data": {
            "supplyType": "O", "subSupplyType": "1", "docType": "INV",
            "docNo": doc_no, "docDate": "25/11/2026",
            "fromGstin": gstin, "fromPincode": 400001, "fromStateCode": 27,
            "toGstin": "05AAACG2115R1ZN", "toPincode": 248001, "toStateCode": 5,
            "transDistance": "1500", "totInvValue": 118000.0, "totalValue": 100000.0,
            "igstValue": 18000.0, "transMode": "1", "vehicleNo": "MH01AB1234", "vehicleType": "R",
            "itemList": [{"productName": "Steel", "hsnCode": 7208, "quantity": 10,
                          "qtyUnit": "MTS", "taxableAmount": 100000.0, "igstRate": 18}]
        }
    })
}

async fn generate(gw: &Gateway, gstin: &str, doc_no: &str) -> reqwest::Response {
    gw.request_for(Method::POST, EWB, gstin)
        .json(&bill(gstin, doc_no))
        .send()
        .await
        .unwrap()
}

async fn get_bill(gw: &Gateway, gstin: &str, ewb_no: &Value) -> reqwest::Response {
    gw.request_for(
        Method::GET,
        &format!("{EWB}/GetEwayBill?ewbNo={ewb_no}"),
        gstin,
    )
    .send()
    .await
    .unwrap()
}

#[tokio::test]
async fn eway_bill_goes_through_as_plain_json_and_sealed_replies_are_verified() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, ewb_opts()).await;

    let res = generate(&gw, GSTIN, "EWB/1").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], "1", "{body}");
    let ewb_no = body["data"]["ewayBillNo"].clone();
    assert!(ewb_no.is_number(), "decrypted data: {body}");

    // What the upstream saw: hyphenated headers with gstgate's values, and `data` encrypted.
    let log = sim.requests(20).await;
    let auth = log
        .iter()
        .find(|r| r["path"] == "/ewaybillapi/v1.03/auth")
        .expect("a login");
    assert_eq!(auth["headers"]["client-id"], CLIENT_ID);
    assert_eq!(auth["headers"]["client-secret"], CLIENT_SECRET);
    assert_eq!(auth["headers"]["gstin"], GSTIN);
    let call = log
        .iter()
        .rev()
        .find(|r| r["path"] == EWB)
        .expect("the call");
    assert_eq!(call["headers"]["client-id"], CLIENT_ID);
    assert_eq!(call["headers"]["gstin"], GSTIN);
    assert!(call["headers"]["authtoken"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    assert!(
        call["headers"].get("x-api-key").is_none(),
        "caller key forwarded"
    );
    let wire: Value = serde_json::from_str(call["body"].as_str().unwrap()).unwrap();
    assert_eq!(wire["action"], "GENEWAYBILL");
    let data = wire["data"].as_str().expect("data is a ciphertext string");
    assert!(!data.contains("EWB/1") && gstgate::crypto::b64_decode(data).is_ok());

    // GET: the REK/HMAC reply comes back as plain JSON without rek and hmac.
    let res = get_bill(&gw, GSTIN, &ewb_no).await;
    assert_eq!(res.status(), 200);
    let got: Value = res.json().await.unwrap();
    assert_eq!(got["status"], "1", "{got}");
    assert!(
        got.get("rek").is_none() && got.get("hmac").is_none(),
        "{got}"
    );
    assert_eq!(got["data"]["docNo"], "EWB/1", "{got}");

    // The same document again: NIC's 604 passes through as NIC sent it.
    let res = generate(&gw, GSTIN, "EWB/1").await;
    assert_eq!(res.status(), 200);
    let dup: Value = res.json().await.unwrap();
    assert_eq!(dup["status"], "0", "{dup}");
    let codes = gstgate::crypto::b64_decode(dup["error"].as_str().unwrap()).unwrap();
    assert!(String::from_utf8_lossy(&codes).contains("604"));

    // A tampered HMAC is a 502, never silently passed.
    sim.control("/_sim/knobs", json!({"tamper_hmac": true}))
        .await;
    let p = expect_problem(
        get_bill(&gw, GSTIN, &ewb_no).await,
        502,
        "upstream_bad_response",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("hmac"), "{p}");
    sim.control("/_sim/knobs", json!({"tamper_hmac": false}))
        .await;
    assert_eq!(get_bill(&gw, GSTIN, &ewb_no).await.status(), 200);

    // The caller's own login call is answered by gstgate, revealing neither token nor SEK.
    let res = gw
        .request(Method::POST, "/ewaybillapi/v1.03/auth")
        .json(&json!({"Data": "ignored"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let auth: Value = res.json().await.unwrap();
    assert_eq!(auth["status"], "1");
    assert_eq!(auth["authtoken"], "managed-by-gstgate");
    assert!(auth["sek"].is_null());

    // A body that is not {action, data: {…}} never reaches the upstream.
    let before = sim.count(GSTIN, "requests").await;
    let res = gw
        .request(Method::POST, EWB)
        .json(&json!({"data": {"docNo": "x"}}))
        .send()
        .await
        .unwrap();
    expect_problem(res, 400, "body_invalid").await;
    assert_eq!(sim.count(GSTIN, "requests").await, before);
}

#[tokio::test]
async fn revoked_tokens_are_recovered_with_one_login_even_in_a_storm() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, ewb_opts()).await;
    let res = generate(&gw, GSTIN, "R/0").await;
    let ewb_no = res.json::<Value>().await.unwrap()["data"]["ewayBillNo"].clone();
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1);

    sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
        .await;
    let res = generate(&gw, GSTIN, "R/1").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "1");
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 2, "one re-login");
    assert!(sim.count(GSTIN, "token_rejections").await >= 1);

    // 300 concurrent requests all holding the revoked token: one login between them.
    sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
        .await;
    let results = join_all((0..300).map(|_| async {
        let res = get_bill(&gw, GSTIN, &ewb_no).await;
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    }))
    .await;
    for (status, body) in &results {
        assert_eq!(*status, 200, "{body}");
        assert_eq!(body["status"], "1", "{body}");
    }
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        3,
        "at most one login for the storm"
    );
    assert!(
        gw.metric(
            "gstgate_token_rejected_retries_total{upstream=\"ewaybill\",result=\"recovered\"}"
        )
        .await
            >= 1.0
    );
}

#[tokio::test]
async fn a_wrong_password_costs_one_login_attempt_for_fifty_requests() {
    let bad = gstin_n(31);
    let sim = Sim::start(SimOpts {
        users: vec![(bad.clone(), USER.into(), PASSWORD.into())],
        ..SimOpts::default()
    })
    .await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            credentials: vec![(bad.clone(), USER.into(), "wrong-password".into())],
            ..ewb_opts()
        },
    )
    .await;
    let results = join_all((0..50).map(|i| {
        let gw = &gw;
        let bad = bad.clone();
        async move { generate(gw, &bad, &format!("W/{i}")).await }
    }))
    .await;
    for res in results {
        let p = expect_problem(res, 502, "credentials_rejected").await;
        assert!(
            matches!(p["upstream_code"].as_str(), Some("102" | "101" | "108")),
            "{p}"
        );
    }
    assert_eq!(sim.count(&bad, "auth_calls").await, 1);
    assert_eq!(
        gw.session_state("ewaybill", &bad).await,
        "credentials_rejected"
    );
}

/// Revocations, expiries and failing logins, as fast as they come: gstgate still never logs in
/// a sixth time within the (scaled) 15-minute window, so NIC never blocks the user.
#[tokio::test]
async fn no_scenario_makes_more_than_five_logins_in_the_window() {
    const WINDOW: &str = "30s";
    let sim = Sim::start(SimOpts {
        token_ttl: "3s",
        ..SimOpts::default()
    })
    .await;
    sim.control("/_sim/knobs", json!({"ewb_login_window_secs": 30}))
        .await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            // e-way bill logins carry no expiry: the configured lifetime is gstgate's only
            // knowledge of it, as in production (360 minutes there).
            upstream_extra: format!("login_window = \"{WINDOW}\"\ntoken_lifetime = \"3s\""),
            ..ewb_opts()
        },
    )
    .await;
    let started = std::time::Instant::now();
    // Expiries: 3-second tokens under steady traffic are renewed at expiry, and the callers
    // that straddle it are held, not failed.
    let mut ok = 0;
    while started.elapsed() < Duration::from_secs(4) {
        let res = generate(&gw, GSTIN, &format!("N/{ok}")).await;
        assert_eq!(res.status(), 200);
        ok += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        sim.count(GSTIN, "token_rejections").await,
        0,
        "no call with an expired token"
    );
    let after_expiries = sim.count(GSTIN, "auth_calls").await;
    assert!((2..=4).contains(&after_expiries), "{after_expiries} logins");
    // Revocations and failing logins on top: the limit holds whatever happens.
    let mut limited = 0;
    for i in 0..10 {
        sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
            .await;
        let res = generate(&gw, GSTIN, &format!("N/r{i}")).await;
        if res.status() == 429 {
            expect_problem(res, 429, "login_rate_limited").await;
            limited += 1;
        }
    }
    assert!(limited > 0, "the login limit was reached");
    sim.control(
        "/_sim/faults",
        json!({"mode": "status_500", "path_prefix": "/ewaybillapi/v1.03/auth", "count": 100}),
    )
    .await;
    for i in 0..30 {
        sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
            .await;
        let res = generate(&gw, GSTIN, &format!("N/f{i}")).await;
        assert_ne!(res.status(), 200);
    }
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the checks ran inside one window"
    );
    let logins = sim.count(GSTIN, "auth_calls").await;
    assert_eq!(logins, 5, "exactly the limit, never a sixth login");
    assert_eq!(
        sim.count(GSTIN, "blocked_logins").await,
        0,
        "NIC never had to block the user"
    );
}
