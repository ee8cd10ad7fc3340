//! GSTN returns through gstgate (issue 3, acceptance 3): sessions start only with the
//! taxpayer's OTP through the admin API, are kept alive with REFRESHTOKEN while the portal
//! session lasts, and then ask for a new OTP instead of failing obscurely.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const RETSUM: &str = "/taxpayerapi/v1.0/returns/gstr1?action=RETSUM";

fn gstn_opts() -> GwOpts {
    GwOpts {
        apis: vec!["gstn"],
        ..GwOpts::default()
    }
}

async fn return_summary(gw: &Gateway) -> reqwest::Response {
    gw.request(
        Method::GET,
        &format!("{RETSUM}&gstin={GSTIN}&ret_period=102026"),
    )
    .header("ret_period", "102026")
    .send()
    .await
    .unwrap()
}

#[tokio::test]
async fn a_session_starts_only_with_an_otp_and_then_serves_sealed_returns_data() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, gstn_opts()).await;

    // No session: the caller is told exactly which admin calls start one, and no OTP SMS is
    // sent on its behalf.
    assert_eq!(gw.session_state("gstn", GSTIN).await, "needs_otp");
    let p = expect_problem(return_summary(&gw).await, 503, "otp_required").await;
    let remedy = p["remedy"].as_str().unwrap();
    assert!(
        remedy.contains(&format!("POST /admin/sessions/gstn/{GSTIN}/otp-request"))
            && remedy.contains(&format!("/admin/sessions/gstn/{GSTIN}/otp ")),
        "{remedy}"
    );
    // Not even when the caller itself asks for an OTP on the auth path.
    let res = gw
        .request(Method::POST, "/taxpayerapi/v1.0/authenticate")
        .json(&json!({"action": "OTPREQUEST", "username": USER, "app_key": "x"}))
        .send()
        .await
        .unwrap();
    expect_problem(res, 503, "otp_required").await;
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 0);
    assert_eq!(sim.count(GSTIN, "otp_requests").await, 0);

    // A malformed OTP is refused by gstgate; a wrong one by the upstream.
    let res = gw
        .admin_post(
            &format!("/admin/sessions/gstn/{GSTIN}/otp"),
            Some(json!({"otp": "12ab"})),
        )
        .await;
    expect_problem(res, 400, "otp_invalid").await;
    let res = gw
        .admin_post(&format!("/admin/sessions/gstn/{GSTIN}/otp-request"), None)
        .await;
    assert_eq!(res.status(), 202);
    let otp = sim
        .get_json(&format!("/_sim/otp?gstin={GSTIN}&username={USER}"))
        .await["otp"]
        .as_str()
        .unwrap()
        .to_owned();
    let wrong = if otp == "111111" { "222222" } else { "111111" };
    let res = gw
        .admin_post(
            &format!("/admin/sessions/gstn/{GSTIN}/otp"),
            Some(json!({"otp": wrong})),
        )
        .await;
    let p = expect_problem(res, 400, "otp_invalid").await;
    assert_eq!(p["upstream_code"], "AUTH4034");
    assert_eq!(gw.session_state("gstn", GSTIN).await, "needs_otp");

    gw.start_gstn_session(&sim, GSTIN).await;
    let row = gw
        .admin_sessions()
        .await
        .into_iter()
        .find(|s| s["upstream"] == "gstn")
        .unwrap();
    assert_eq!(row["state"], "valid");
    let ends_in = row["session_ends_in_secs"]
        .as_u64()
        .expect("portal session end shown");
    assert!(ends_in > 29 * 24 * 3600, "30 days by default: {row}");

    // Data: the REK-sealed reply comes back as plain JSON.
    let res = return_summary(&gw).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status_cd"], "1", "{body}");
    assert!(
        body.get("rek").is_none() && body.get("hmac").is_none(),
        "{body}"
    );
    assert!(body["data"].is_object(), "{body}");
    assert!(body["data"].to_string().contains(GSTIN), "{body}");

    // A save: gstgate encrypts `data` with the SEK and signs it.
    let res = gw
        .request(Method::PUT, "/taxpayerapi/v1.0/returns/gstr1")
        .header("ret_period", "102026")
        .json(&json!({"action": "RETSAVE", "data": {"gstin": GSTIN, "fp": "102026", "b2b": []}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let saved: Value = res.json().await.unwrap();
    assert!(saved["data"]["reference_id"].is_string(), "{saved}");

    // The wire: GSTN's headers, with a fresh txn per request and the caller's ret_period.
    return_summary(&gw).await;
    let log = sim.requests(50).await;
    let calls: Vec<&Value> = log
        .iter()
        .filter(|r| r["path"] == "/taxpayerapi/v1.0/returns/gstr1" && r["method"] == "GET")
        .collect();
    assert!(calls.len() >= 2);
    for call in &calls {
        let h = &call["headers"];
        assert_eq!(h["clientid"], CLIENT_ID);
        assert_eq!(h["client-secret"], CLIENT_SECRET);
        assert_eq!(h["state-cd"], "27");
        assert_eq!(h["ip-usr"], "127.0.0.1");
        assert_eq!(h["username"], USER);
        assert_eq!(h["gstin"], GSTIN);
        assert_eq!(h["ret_period"], "102026");
        assert!(h["auth-token"].as_str().is_some_and(|t| !t.is_empty()));
        assert!(h.get("x-api-key").is_none());
    }
    assert_ne!(calls[0]["headers"]["txn"], calls[1]["headers"]["txn"]);
    let save = log
        .iter()
        .find(|r| r["method"] == "PUT")
        .expect("the save reached the upstream");
    let wire: Value = serde_json::from_str(save["body"].as_str().unwrap()).unwrap();
    assert!(
        wire["data"].is_string() && wire["hmac"].is_string(),
        "{wire}"
    );
    assert!(!save["body"].as_str().unwrap().contains("b2b"));
}

/// Acceptance 3: 4-second tokens, a 40-second portal session. Traffic flows the whole time
/// with REFRESHTOKEN calls and no OTP; at the end the session needs an OTP and says so.
/// Over the wire: REFRESHTOKEN calls keep the session serving without an OTP while the
/// portal session lasts, then callers get `otp_required`, and a new OTP starts again. The
/// rule itself over a whole day of six-hour tokens (refresh times, the end of the portal
/// session, no call after it) is proven on the paused clock, in
/// `session::tests::an_idle_gstn_session_is_kept_alive_until_the_portal_session_ends`.
#[tokio::test]
async fn refresh_keeps_a_session_alive_without_otp_until_the_portal_session_ends() {
    let sim = Sim::start(SimOpts {
        token_ttl: "2s",
        ..SimOpts::default()
    })
    .await;
    sim.control("/_sim/knobs", json!({"gstn_session_ttl_secs": 4}))
        .await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            refresh_before: "1s",
            // Tokens live 2 s instead of hours, so the login window shrinks with them: the
            // production 4 logins per 15 minutes become 4 per second (the shortest window),
            // still far more than one refresh per token needs.
            upstream_extra: "login_window = \"1s\"".into(),
            ..gstn_opts()
        },
    )
    .await;
    gw.start_gstn_session(&sim, GSTIN).await;
    let started = Instant::now();
    let mut first_otp_required = None;
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(20) {
        let res = return_summary(&gw).await;
        match res.status().as_u16() {
            200 => {
                assert!(first_otp_required.is_none(), "served again after needs_otp");
                served += 1;
            }
            503 => {
                expect_problem(res, 503, "otp_required").await;
                first_otp_required.get_or_insert(started.elapsed());
                if started.elapsed() > first_otp_required.unwrap() + Duration::from_secs(2) {
                    break;
                }
            }
            other => panic!("status {other}: {}", res.text().await.unwrap()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ended = first_otp_required.expect("the session ended with otp_required");
    assert!(
        ended >= Duration::from_secs(3),
        "traffic flowed for the portal session's 4 s, not {ended:?}"
    );
    assert!(served > 20, "{served} requests served");
    let counters = sim.counters().await;
    assert_eq!(
        counters["per_gstin"][GSTIN]["otp_requests"], 1,
        "{counters}"
    );
    let refreshes = counters["per_gstin"][GSTIN]["refreshes"].as_u64().unwrap();
    assert!(refreshes >= 2, "{refreshes} REFRESHTOKEN calls");
    assert_eq!(gw.session_state("gstn", GSTIN).await, "needs_otp");
    // A 2 s token is handed to callers for its first second only (the last second is the
    // margin), which is when its refresh is due: a caller may start it a moment before the
    // scheduler does, so both triggers count.
    let mut renewals = 0.0;
    for trigger in ["proactive", "cold"] {
        renewals += gw
            .metric(&format!(
                "gstgate_token_refreshes_total{{upstream=\"gstn\",trigger=\"{trigger}\"}}"
            ))
            .await;
    }
    assert!(renewals >= 2.0, "{renewals} renewals");
    // A new OTP starts a new portal session.
    gw.start_gstn_session(&sim, GSTIN).await;
    assert_eq!(return_summary(&gw).await.status(), 200);
}

/// A data call whose token the upstream rejects costs one REFRESHTOKEN and one replay, never a
/// loop; portal refusals come back as problems that say what to do.
#[tokio::test]
async fn token_rejections_cost_one_refresh_and_portal_refusals_are_explained() {
    let sim = Sim::start(SimOpts::default()).await;
    // One credential walks through several OTP scenarios in a few seconds, each an OTP
    // request and login; the production 4 per 15 minutes would stop it after the second.
    let gw = Gateway::start(
        &sim,
        GwOpts {
            max_logins: 20,
            ..gstn_opts()
        },
    )
    .await;
    gw.start_gstn_session(&sim, GSTIN).await;
    assert_eq!(return_summary(&gw).await.status(), 200);

    // Every token of this GSTIN is refused: one refresh, one replay, then a problem.
    sim.control(
        "/_sim/reject-tokens",
        json!({"gstin": GSTIN, "enabled": true}),
    )
    .await;
    let before = sim.count(GSTIN, "refreshes").await;
    let p = expect_problem(return_summary(&gw).await, 502, "token_rejected").await;
    assert!(
        p["upstream_code"]
            .as_str()
            .is_some_and(|c| c.starts_with("AUTH403")),
        "{p}"
    );
    assert_eq!(sim.count(GSTIN, "refreshes").await, before + 1);
    // Once the upstream accepts tokens again, the refreshed session just works.
    sim.control(
        "/_sim/reject-tokens",
        json!({"gstin": GSTIN, "enabled": false}),
    )
    .await;
    assert_eq!(return_summary(&gw).await.status(), 200);
    assert_eq!(sim.count(GSTIN, "refreshes").await, before + 1);

    // API access switched off on the portal: the OTP request says so.
    sim.control(
        "/_sim/gstn/access",
        json!({"gstin": GSTIN, "username": USER, "enabled": false}),
    )
    .await;
    let res = gw
        .admin_post(&format!("/admin/sessions/gstn/{GSTIN}/otp-request"), None)
        .await;
    let p = expect_problem(res, 502, "api_access_disabled").await;
    assert_eq!(p["upstream_code"], "AUTH4037");
    assert!(p["remedy"].as_str().unwrap().contains("Manage API Access"));

    // Too many live sessions for the user with this GSP: the OTP login says so.
    sim.control(
        "/_sim/gstn/access",
        json!({"gstin": GSTIN, "username": USER, "enabled": true}),
    )
    .await;
    sim.control("/_sim/knobs", json!({"gstn_max_sessions": 1}))
        .await;
    let path = format!("/admin/sessions/gstn/{GSTIN}/otp");
    assert_eq!(
        gw.admin_post(&format!("{path}-request"), None)
            .await
            .status(),
        202
    );
    let otp = sim
        .get_json(&format!("/_sim/otp?gstin={GSTIN}&username={USER}"))
        .await["otp"]
        .as_str()
        .unwrap()
        .to_owned();
    let p = expect_problem(
        gw.admin_post(&path, Some(json!({ "otp": otp }))).await,
        502,
        "too_many_sessions",
    )
    .await;
    assert_eq!(p["upstream_code"], "AUTH403");
    // The session that was running is untouched, and the operator's failed attempt is not
    // recorded as a failing session (which would raise a refresh_failing alert).
    assert_eq!(return_summary(&gw).await.status(), 200);
    let row = gw
        .admin_sessions()
        .await
        .into_iter()
        .find(|s| s["upstream"] == "gstn")
        .unwrap();
    assert_eq!(row["state"], "valid", "{row}");
    assert!(row["last_error"].is_null(), "{row}");

    // The admin OTP endpoints are for OTP APIs only, and need the admin token.
    let res = gw
        .http
        .post(format!(
            "http://{}/admin/sessions/gstn/{GSTIN}/otp-request",
            gw.admin
        ))
        .send()
        .await
        .unwrap();
    expect_problem(res, 401, "unauthenticated").await;
    let res = gw
        .admin_post(
            &format!("/admin/sessions/gstn/{GSTIN}/otp"),
            Some(json!({"code": 1})),
        )
        .await;
    expect_problem(res, 400, "body_invalid").await;
}

/// A rejection spell on a GSTIN that two ASP clients share (one caller's bad luck): the
/// first rejected request costs one REFRESHTOKEN, and when the renewed token is rejected too,
/// every later request — any client's — gets 502 `token_rejected` at once, with no refresh
/// (no SMS to the taxpayer) and no 429. When the upstream accepts tokens again, the other
/// client is served by the renewed session: no login, the slot never `cold`. Before, each
/// rejected request spent a refresh, and once `max_logins` were spent every tenant of the
/// GSTIN got 429 `login_rate_limited` for the rest of the window.
#[tokio::test]
async fn a_rejection_spell_on_a_shared_gstin_costs_one_refresh_and_locks_no_tenant_out() {
    const OTHER_KEY: &str = "other-asp-key-0123456789";
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            clients: vec![
                ("billing".into(), API_KEY.into(), vec![GSTIN.into()]),
                ("erp".into(), OTHER_KEY.into(), vec![GSTIN.into()]),
            ],
            ..gstn_opts()
        },
    )
    .await;
    gw.start_gstn_session(&sim, GSTIN).await;
    assert_eq!(return_summary(&gw).await.status(), 200);
    let before = sim.count(GSTIN, "refreshes").await;

    sim.control(
        "/_sim/reject-tokens",
        json!({"gstin": GSTIN, "enabled": true}),
    )
    .await;
    for _ in 0..6 {
        expect_problem(return_summary(&gw).await, 502, "token_rejected").await;
    }
    assert_eq!(
        sim.count(GSTIN, "refreshes").await,
        before + 1,
        "one renewal for the whole spell"
    );

    sim.control(
        "/_sim/reject-tokens",
        json!({"gstin": GSTIN, "enabled": false}),
    )
    .await;
    let res = gw
        .http
        .get(format!(
            "http://{}{RETSUM}&gstin={GSTIN}&ret_period=102026",
            gw.proxy
        ))
        .header("x-api-key", OTHER_KEY)
        .header("gstin", GSTIN)
        .header("ret_period", "102026")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "the other tenant is served");
    assert_eq!(sim.count(GSTIN, "refreshes").await, before + 1);
    assert_eq!(gw.session_state("gstn", GSTIN).await, "valid");
}

/// Issue 19: the portal session ending under a live token (AUTH4038, and no refresh then) is
/// its own replay outcome, `session_ended`, not a failed replay; the caller is told an OTP is
/// needed, and the metrics say so by code. The OTP due gauge counts down to the portal's end.
#[tokio::test]
async fn a_portal_session_ending_is_no_failed_replay() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, gstn_opts()).await;
    let due = r#"gstgate_gstn_otp_due_seconds{upstream="gstn"}"#;
    gw.start_gstn_session(&sim, GSTIN).await;
    // The default API-access period is 30 days; the gauge is the time left of it.
    let left = gw.metric(due).await;
    assert!(
        (29.0 * 86_400.0..=30.0 * 86_400.0).contains(&left),
        "{left}"
    );
    assert_eq!(return_summary(&gw).await.status(), 200);

    sim.control(
        "/_sim/gstn/end-session",
        json!({"gstin": GSTIN, "username": USER}),
    )
    .await;
    expect_problem(return_summary(&gw).await, 503, "otp_required").await;

    let text = gw.metrics().await;
    let value = |series: &str| metric_value(&text, series);
    assert_eq!(
        value(r#"gstgate_token_rejected_retries_total{upstream="gstn",result="session_ended"}"#),
        1.0
    );
    assert_eq!(
        value(r#"gstgate_token_rejected_retries_total{upstream="gstn",result="failed"}"#),
        0.0
    );
    assert_eq!(
        value(r#"gstgate_requests_total{upstream="gstn",status="5xx",code="otp_required"}"#),
        1.0
    );
    assert_eq!(
        value(
            r#"gstgate_upstream_errors_total{upstream="gstn",class="token_rejected",code="AUTH4038"}"#
        ),
        1.0
    );
    // No portal session is open any more: no series.
    assert!(!text.contains(&format!("{due} ")), "{text}");
}
