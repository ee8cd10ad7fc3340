//! Drop-in mode with GSTN returns (issue 17, acceptance 4): the spec client (written from
//! GSTN's published API, not from gstgate's code: `tests/common/spec_client/`), unchanged but
//! for its base URL, public key, client id and secret, logs in with an OTP, reads and saves
//! returns and refreshes its token through gstgate in front of the real simulator process.
//!
//! The portal sees one OTP request and one OTP login for the GSTIN however many clients log in
//! through gstgate: the first client's OTP request is gstgate's own, the OTP that reaches the
//! taxpayer is for gstgate's session, and every later client is answered from that session.

mod common;

use common::spec_client::crypto::{aes_encrypt_b64, random_ascii_key};
use common::spec_client::gstn::{seal_payload, AUTH_PATH, INVALID_SESSION};
use common::{
    dropin_client_config, second_client_config, with_dropin, with_second_dropin_client,
    ClientError, Gateway, GstnClient, GwOpts, Sim, SimOpts, SpecConfig, CLIENT_ID, DROPIN_CLIENT,
    DROPIN_CLIENT_ID, DROPIN_CLIENT_SECRET, GSTIN, SECOND_CLIENT, SECOND_CLIENT_ID, USER,
};
use serde_json::{json, Value};

const PERIOD: &str = "032025";
const GSTR1: &str = "/taxpayerapi/v1.0/returns/gstr1";

/// A simulator and a gateway with the `gstn` upstream and two drop-in clients, both allowed
/// the taxpayer.
async fn rig() -> (Sim, Gateway) {
    let sim = Sim::start(SimOpts::default()).await;
    let opts = GwOpts {
        apis: vec!["gstn"],
        ..GwOpts::default()
    };
    let opts = with_second_dropin_client(with_dropin(opts, &[GSTIN]), &[GSTIN]);
    let gw = Gateway::start(&sim, opts).await;
    (sim, gw)
}

/// The OTP the portal sent the taxpayer (for gstgate's own request: no client reaches it).
async fn pending_otp(sim: &Sim) -> String {
    sim.get_json(&format!("/_sim/otp?gstin={GSTIN}&username={USER}"))
        .await["otp"]
        .as_str()
        .expect("the simulator has an OTP pending")
        .to_owned()
}

/// The `action`s of the auth calls the simulator received, in order.
async fn portal_auth_actions(sim: &Sim) -> Vec<String> {
    sim.requests(200)
        .await
        .iter()
        .filter(|r| r["path"] == AUTH_PATH)
        .map(|r| {
            let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
            body["action"].as_str().unwrap_or_default().to_owned()
        })
        .collect()
}

#[track_caller]
fn expect_code<T: std::fmt::Debug>(r: Result<T, ClientError>, code: &str) -> ClientError {
    let e = r.expect_err(&format!("expected error {code}"));
    assert!(e.has_code(code), "expected code {code}, got {e}");
    e
}

/// A RETSAVE payload for the taxpayer.
fn retsave() -> Value {
    json!({"gstin": GSTIN, "fp": PERIOD, "b2b": []})
}

/// Acceptance 4, GSTN: client A's OTP flow reaches the portal once and starts gstgate's
/// session; A reads (HMAC checked by the client), saves and refreshes; client B's OTP request
/// and OTP login are answered from the running session without another OTP to the taxpayer.
#[tokio::test]
async fn the_otp_flow_reaches_the_portal_once_for_every_client() {
    let (sim, gw) = rig().await;
    let mut a = GstnClient::new(dropin_client_config(&gw)).unwrap();

    a.otp_request().await.unwrap();
    assert_eq!(sim.count(GSTIN, "otp_requests").await, 1);
    let otp = pending_otp(&sim).await;
    a.auth_token(&otp).await.unwrap();
    assert_eq!(a.logins, 1);
    assert_eq!(portal_auth_actions(&sim).await, ["OTPREQUEST", "AUTHTOKEN"]);

    // The client opens the reply only if its REK unwraps under the drop-in SEK and the HMAC
    // over the base64 of the JSON matches: gstgate must have sealed it afresh.
    let sum = a.return_summary("gstr1", PERIOD).await.unwrap();
    assert_eq!(sum["gstin"], GSTIN, "{sum}");
    assert_eq!(sum["ret_period"], PERIOD, "{sum}");
    assert!(sum["sec_sum"].is_array(), "{sum}");
    // A save: `data` and `hmac` under the drop-in SEK, opened by gstgate, sealed again under
    // the portal's SEK (the simulator checks that HMAC in turn).
    let saved = a.put(GSTR1, PERIOD, "RETSAVE", &retsave()).await.unwrap();
    assert_eq!(
        saved["reference_id"].as_str().map(str::len),
        Some(15),
        "{saved}"
    );

    // REFRESHTOKEN: a new token, and a new SEK under the new app key; never the portal's
    // business while its session lives.
    let (first, old_sek) = (a.token().unwrap().to_owned(), a.sek().unwrap());
    a.refresh().await.unwrap();
    assert_ne!(a.token().unwrap(), first);
    assert_ne!(a.sek().unwrap(), old_sek);
    assert_eq!((a.logins, a.refreshes), (1, 1));
    let sum = a.return_summary("gstr3b", PERIOD).await.unwrap();
    assert_eq!(sum["ret_period"], PERIOD, "{sum}");
    // The replaced token is dead at once, for a data call and for another refresh.
    let stale = a
        .authenticate_raw(&json!({
            "action": "REFRESHTOKEN",
            "username": USER,
            "auth_token": first,
            "app_key": aes_encrypt_b64(&old_sek, &random_ascii_key()),
        }))
        .await;
    expect_code(stale, INVALID_SESSION);
    let res: Value = gw
        .http
        .get(format!(
            "http://{}{GSTR1}?action=RETSUM&gstin={GSTIN}&ret_period={PERIOD}",
            gw.proxy
        ))
        .header("clientid", DROPIN_CLIENT_ID)
        .header("client-secret", DROPIN_CLIENT_SECRET)
        .header("state-cd", "27")
        .header("ip-usr", "127.0.0.1")
        .header("txn", "STALE0000001")
        .header("username", USER)
        .header("gstin", GSTIN)
        .header("ret_period", PERIOD)
        .header("auth-token", &first)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(res["status_cd"], "0", "{res}");
    assert_eq!(res["error"]["error_cd"], INVALID_SESSION, "{res}");

    // Client B: its OTP request sends the taxpayer nothing, and any OTP logs it in to the
    // session gstgate already holds.
    let mut b = GstnClient::new(second_client_config(&gw)).unwrap();
    b.otp_request().await.unwrap();
    let not_the_otp = if otp == "000000" { "999999" } else { "000000" };
    b.auth_token(not_the_otp).await.unwrap();
    assert_ne!(b.token(), a.token());
    assert_ne!(b.sek(), a.sek());
    let sum = b.return_summary("gstr1", PERIOD).await.unwrap();
    assert_eq!(sum["gstin"], GSTIN, "{sum}");
    b.put(GSTR1, PERIOD, "RETSAVE", &retsave()).await.unwrap();
    // A's session is its own: B's login ended nothing.
    a.return_summary("gstr1", PERIOD).await.unwrap();

    assert_eq!(sim.count(GSTIN, "otp_requests").await, 1);
    assert_eq!(sim.count(GSTIN, "refreshes").await, 0);
    assert_eq!(portal_auth_actions(&sim).await, ["OTPREQUEST", "AUTHTOKEN"]);
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 2);

    // The portal saw gstgate's client id and session only.
    let tokens = [first.as_str(), a.token().unwrap(), b.token().unwrap()];
    let seen = sim.requests(200).await;
    assert!(seen.len() >= 7, "{seen:?}");
    for r in &seen {
        let text = r.to_string();
        for secret in [DROPIN_CLIENT_ID, DROPIN_CLIENT_SECRET, SECOND_CLIENT_ID] {
            assert!(!text.contains(secret), "{text}");
        }
        for token in tokens {
            assert!(!text.contains(token), "{text}");
        }
        assert_eq!(r["headers"]["clientid"], CLIENT_ID, "{text}");
    }

    let metrics = gw.metrics().await;
    // Every call of the auth path counts: A's OTP request, OTP login and refresh, B's OTP
    // request and OTP login succeeded; A's stale refresh did not.
    for series in [
        format!("gstgate_dropin_sessions{{upstream=\"gstn\",client=\"{DROPIN_CLIENT}\"}} 1"),
        format!("gstgate_dropin_sessions{{upstream=\"gstn\",client=\"{SECOND_CLIENT}\"}} 1"),
        "gstgate_dropin_logins_total{upstream=\"gstn\",result=\"success\"} 5".into(),
        "gstgate_dropin_logins_total{upstream=\"gstn\",result=\"token_invalid\"} 1".into(),
    ] {
        assert!(metrics.contains(&series), "{series}: {metrics}");
    }
}

/// While no portal session lives, the OTP is the portal's to judge: a wrong one gets GSTN's
/// AUTH4034 and leaves the OTP usable, a malformed one is refused before the portal sees it.
/// An app key under the portal's public key instead of gstgate's is not told apart from a
/// wrong OTP either (AUTH4034, never TEC4002, which would say whether gstgate's RSA padding
/// held: a padding oracle), and costs the portal nothing.
#[tokio::test]
async fn a_wrong_otp_is_auth4034_while_no_portal_session_lives() {
    let (sim, gw) = rig().await;
    let sim_key = std::fs::read_to_string(&sim.public_key).unwrap();
    let mut foreign = GstnClient::new(SpecConfig {
        public_key_pem: sim_key,
        ..dropin_client_config(&gw)
    })
    .unwrap();
    // Its OTP request is answered: its app key is never used (gstgate asks with its own).
    foreign.otp_request().await.unwrap();
    let otp = pending_otp(&sim).await;
    let asked = sim.count(GSTIN, "auth_calls").await;
    expect_code(foreign.auth_token(&otp).await, "AUTH4034");
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        asked,
        "nothing reached the portal"
    );

    let mut a = GstnClient::new(dropin_client_config(&gw)).unwrap();
    // Before any OTP request, nothing to send: GSTN cannot log in without an OTP.
    assert!(matches!(
        a.return_summary("gstr1", PERIOD).await,
        Err(ClientError::Usage(_))
    ));
    // The OTP the portal sent is still on its way: A's request sends no second one.
    a.otp_request().await.unwrap();
    assert_eq!(pending_otp(&sim).await, otp);
    let wrong = if otp == "123456" { "654321" } else { "123456" };
    expect_code(a.auth_token(wrong).await, "AUTH4034");
    assert_eq!(a.token(), None);
    let calls = sim.count(GSTIN, "auth_calls").await;
    expect_code(a.auth_token("12ab").await, "AUTH4034");
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        calls,
        "a malformed OTP never reaches the portal"
    );
    // Client B cannot guess its way in while no portal session lives either.
    let mut b = GstnClient::new(second_client_config(&gw)).unwrap();
    expect_code(b.auth_token(wrong).await, "AUTH4034");

    a.auth_token(&otp).await.unwrap();
    assert_eq!(
        a.return_summary("gstr1", PERIOD).await.unwrap()["gstin"],
        GSTIN
    );
    assert_eq!(sim.count(GSTIN, "otp_requests").await, 1);
    assert_eq!(
        portal_auth_actions(&sim).await,
        ["OTPREQUEST", "AUTHTOKEN", "AUTHTOKEN", "AUTHTOKEN"],
        "A's wrong OTP, B's wrong OTP, A's right one"
    );

    let metrics = gw.metrics().await;
    assert!(!metrics.contains("result=\"bad_payload\""), "{metrics}");
    for (result, n) in [("otp_rejected", 4), ("success", 3)] {
        let series =
            format!("gstgate_dropin_logins_total{{upstream=\"gstn\",result=\"{result}\"}} {n}");
        assert!(metrics.contains(&series), "{series}: {metrics}");
    }
}

/// A save whose `hmac` does not match its `data` under the drop-in SEK is not forwarded.
#[tokio::test]
async fn a_save_with_a_wrong_hmac_goes_nowhere() {
    let (sim, gw) = rig().await;
    let mut a = GstnClient::new(dropin_client_config(&gw)).unwrap();
    a.otp_request().await.unwrap();
    a.auth_token(&pending_otp(&sim).await).await.unwrap();
    let requests = sim.counters().await["requests"].as_u64().unwrap();

    let mut body = seal_payload(&a.sek().unwrap(), "RETSAVE", &retsave());
    let other = seal_payload(&random_ascii_key(), "RETSAVE", &retsave());
    body["hmac"] = other["hmac"].clone();
    let res = gw
        .http
        .put(format!("http://{}{GSTR1}", gw.proxy))
        .header("clientid", DROPIN_CLIENT_ID)
        .header("client-secret", DROPIN_CLIENT_SECRET)
        .header("state-cd", "27")
        .header("ip-usr", "127.0.0.1")
        .header("txn", "BADHMAC00001")
        .header("username", USER)
        .header("gstin", GSTIN)
        .header("ret_period", PERIOD)
        .header("auth-token", a.token().unwrap())
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "body_invalid", "{problem}");
    assert_eq!(
        sim.counters().await["requests"].as_u64().unwrap(),
        requests,
        "nothing reached the portal"
    );
    // The same save, sealed right, goes through.
    a.put(GSTR1, PERIOD, "RETSAVE", &retsave()).await.unwrap();
}

/// Two clients asking for an OTP before either has used it cost the taxpayer one SMS: the
/// second request is answered while the first OTP is on its way, and that OTP still works.
#[tokio::test]
async fn a_second_otp_request_while_one_is_pending_sends_no_second_otp() {
    let (sim, gw) = rig().await;
    let mut a = GstnClient::new(dropin_client_config(&gw)).unwrap();
    let mut b = GstnClient::new(second_client_config(&gw)).unwrap();
    a.otp_request().await.unwrap();
    b.otp_request().await.unwrap();
    assert_eq!(sim.count(GSTIN, "otp_requests").await, 1);
    let otp = pending_otp(&sim).await;
    a.auth_token(&otp).await.unwrap();
    assert!(a.return_summary("gstr1", PERIOD).await.is_ok());
    assert_eq!(portal_auth_actions(&sim).await, ["OTPREQUEST", "AUTHTOKEN"]);
}

/// When the portal session ends, a drop-in data call gets GSTN's invalid-session code; the
/// client's own OTP flow then reaches the portal again through gstgate and works.
#[tokio::test]
async fn an_ended_portal_session_sends_the_client_into_its_own_otp_flow() {
    // Two OTP flows and the refused renewal between them are five logins: more than the
    // default allowance of four per window, which counts every OTP request and OTP login.
    let sim = Sim::start(SimOpts::default()).await;
    let opts = GwOpts {
        apis: vec!["gstn"],
        max_logins: 8,
        ..GwOpts::default()
    };
    let gw = Gateway::start(&sim, with_dropin(opts, &[GSTIN])).await;
    let mut a = GstnClient::new(dropin_client_config(&gw)).unwrap();
    a.otp_request().await.unwrap();
    a.auth_token(&pending_otp(&sim).await).await.unwrap();
    assert!(a.return_summary("gstr1", PERIOD).await.is_ok());

    sim.control(
        "/_sim/gstn/end-session",
        json!({"gstin": GSTIN, "username": USER}),
    )
    .await;
    // The first call finds out (the portal answers AUTH4038; gstgate's renewal is refused),
    // and from then on the client is told its session is invalid.
    let mut codes = Vec::new();
    for _ in 0..2 {
        match a.return_summary("gstr1", PERIOD).await {
            Ok(v) => panic!("a call after the portal session ended succeeded: {v}"),
            Err(e) => codes.push(e.to_string()),
        }
    }
    assert!(
        codes.last().is_some_and(|c| c.contains("AUTH4033")),
        "{codes:?}"
    );
    a.otp_request().await.unwrap();
    assert_eq!(sim.count(GSTIN, "otp_requests").await, 2);
    a.auth_token(&pending_otp(&sim).await).await.unwrap();
    assert!(a.return_summary("gstr1", PERIOD).await.is_ok());
}
