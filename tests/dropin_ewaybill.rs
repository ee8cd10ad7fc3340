//! Drop-in mode with NIC e-way bill (issue 17, acceptance 4): the spec client (written from
//! NIC's published API, not from gstgate's code: `tests/common/spec_client/`), unchanged but
//! for its base URL, public key, client id and secret, works through gstgate in front of the
//! real simulator process. Its GETs come back under a fresh REK with an HMAC that the client
//! checks itself, so a fault in gstgate's sealing fails these tests in the client.

mod common;

use common::spec_client::crypto::{aes_encrypt_b64, b64, random_key};
use common::spec_client::ewaybill::{error_codes, EWAYAPI_PATH};
use common::{
    dropin_client_config, ewaybill, with_dropin, EwaybillClient, Gateway, GwOpts, Sim, SimOpts,
    SpecConfig, CLIENT_ID, DROPIN_CLIENT, DROPIN_CLIENT_ID, DROPIN_CLIENT_SECRET, GSTIN, PASSWORD,
    USER,
};
use serde_json::{json, Value};

/// A second taxpayer with a credential, which the drop-in client may not act for.
const OTHER_GSTIN: &str = "27AAACR5055K1Z7";

async fn rig(max_logins: u32) -> (Sim, Gateway) {
    let both = vec![
        (GSTIN.into(), USER.into(), PASSWORD.into()),
        (OTHER_GSTIN.into(), USER.into(), PASSWORD.into()),
    ];
    let sim = Sim::start(SimOpts {
        users: both.clone(),
        ..SimOpts::default()
    })
    .await;
    let opts = GwOpts {
        apis: vec!["ewaybill"],
        credentials: both,
        max_logins,
        ..GwOpts::default()
    };
    let gw = Gateway::start(&sim, with_dropin(opts, &[GSTIN])).await;
    (sim, gw)
}

/// The simulator's live e-way bill sessions: (token, SEK base64).
async fn upstream_sessions(sim: &Sim) -> Vec<(String, String)> {
    sim.get_json("/_sim/sessions").await["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["api"] == "ewaybill")
        .map(|s| {
            (
                s["token"].as_str().unwrap_or_default().to_owned(),
                s["sek"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Acceptance 4, e-way bill: generate and GET (REK and HMAC verified by the client), a
/// duplicate refused with the API's own 604, the upstream token revoked mid-run without the
/// client noticing, and nothing of the drop-in session ever shown to the simulator.
#[tokio::test]
async fn an_unmodified_ewaybill_client_generates_and_reads_bills_through_gstgate() {
    let (sim, gw) = rig(4).await;
    let mut client = EwaybillClient::new(dropin_client_config(&gw)).unwrap();

    let made = client.generate(&ewaybill(GSTIN, "DROPIN/1")).await.unwrap();
    let no = made["ewayBillNo"]
        .as_u64()
        .unwrap_or_else(|| panic!("{made}"));
    assert_eq!(no.to_string().len(), 12, "{made}");
    assert!(made["validUpto"].is_string(), "{made}");
    // The client opens the GET reply only if its REK unwraps under the drop-in SEK and the
    // HMAC matches: gstgate must have sealed it afresh.
    let got = client.get(no).await.unwrap();
    assert_eq!(got["ewbNo"], no, "{got}");
    assert_eq!(got["docNo"], "DROPIN/1", "{got}");
    assert_eq!(got["fromGstin"], GSTIN, "{got}");
    assert_eq!(got["status"], "ACT", "{got}");

    // A business refusal is the API's, passed through, and no reason to log in again.
    let dup = client
        .generate(&ewaybill(GSTIN, "DROPIN/1"))
        .await
        .expect_err("a duplicate document");
    assert!(dup.has_code("604"), "{dup}");
    let missing = client
        .get(141_999_999_999u64)
        .await
        .expect_err("no such bill");
    assert!(missing.has_code("325"), "{missing}");
    assert_eq!(client.logins, 1);

    let token = client.token().unwrap().to_owned();
    let sek = b64(&client.sek().unwrap());
    let upstream = upstream_sessions(&sim).await;
    assert_eq!(upstream.len(), 1, "{upstream:?}");
    assert_ne!(upstream[0].0, token, "the drop-in token is gstgate's own");
    assert_ne!(upstream[0].1, sek, "the drop-in SEK is gstgate's own");

    // The upstream's token dies; gstgate logs in again behind the client's back.
    sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
        .await;
    assert_eq!(client.get(no).await.unwrap()["ewbNo"], no);
    let again = client.generate(&ewaybill(GSTIN, "DROPIN/2")).await.unwrap();
    assert!(again["ewayBillNo"].is_u64(), "{again}");
    let cancelled = client
        .action(
            "CANEWB",
            &json!({"ewbNo": no, "cancelRsnCode": 2, "cancelRmrk": "order cancelled"}),
        )
        .await
        .unwrap();
    assert_eq!(cancelled["ewayBillNo"], no, "{cancelled}");
    assert_eq!(client.get(no).await.unwrap()["status"], "CNL");
    assert_eq!(client.logins, 1, "the client never logged in again");
    assert_eq!(client.token(), Some(token.as_str()));
    assert_eq!(sim.count(GSTIN, "new_tokens").await, 2);
    assert_eq!(sim.count(GSTIN, "token_rejections").await, 1);

    // The simulator saw gstgate's client id and sessions only.
    let seen = sim.requests(200).await;
    assert!(seen.len() >= 6, "{seen:?}");
    let upstream_tokens: Vec<String> = upstream_sessions(&sim)
        .await
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    for r in &seen {
        let text = r.to_string();
        assert!(!text.contains(DROPIN_CLIENT_ID), "{text}");
        assert!(!text.contains(DROPIN_CLIENT_SECRET), "{text}");
        assert!(!text.contains(&token), "{text}");
        assert!(!text.contains(&sek), "{text}");
        assert_eq!(r["headers"]["client-id"], CLIENT_ID, "{text}");
        if let Some(t) = r["headers"]["authtoken"].as_str() {
            assert_ne!(t, token);
        }
    }
    assert!(!upstream_tokens.contains(&token));

    let metrics = gw.metrics().await;
    for series in [
        format!("gstgate_dropin_sessions{{upstream=\"ewaybill\",client=\"{DROPIN_CLIENT}\"}} 1"),
        "gstgate_dropin_logins_total{upstream=\"ewaybill\",result=\"success\"} 1".into(),
    ] {
        assert!(metrics.contains(&series), "{series}: {metrics}");
    }
}

/// Each refused login carries NIC e-way bill's own code, nothing reaches the simulator, and no
/// login allowance is spent: with `max_logins = 1`, the one real login still goes through
/// after all of them.
#[tokio::test]
async fn refused_logins_get_nics_codes_and_cost_the_simulator_nothing() {
    let (sim, gw) = rig(1).await;
    let base = dropin_client_config(&gw);
    let sim_key = std::fs::read_to_string(&sim.public_key).unwrap();
    let cases: Vec<(&str, SpecConfig, &str)> = vec![
        (
            "wrong password",
            SpecConfig {
                password: "not-the-password".into(),
                ..base.clone()
            },
            "102",
        ),
        (
            "unknown client id",
            SpecConfig {
                client_id: "someone-else".into(),
                ..base.clone()
            },
            "104",
        ),
        (
            "wrong client secret",
            SpecConfig {
                client_secret: "guess".into(),
                ..base.clone()
            },
            "104",
        ),
        (
            "an unknown user",
            SpecConfig {
                username: "nobody".into(),
                ..base.clone()
            },
            "101",
        ),
        (
            "a payload encrypted with NIC's key instead of gstgate's",
            SpecConfig {
                public_key_pem: sim_key,
                ..base.clone()
            },
            "110",
        ),
    ];
    for (what, config, code) in cases {
        let mut client = EwaybillClient::new(config).unwrap();
        let err = client.login().await.expect_err(what);
        assert!(err.has_code(code), "{what}: expected {code}, got {err}");
        // NIC's form: the base64 of {"errorCodes":"…,"}.
        assert!(
            err.api().unwrap().body["error"].is_string(),
            "{what}: {err}"
        );
    }
    // E-way bill has no code for a GSTIN the client may not use: gstgate's problem says so.
    let mut other = EwaybillClient::new(SpecConfig {
        gstin: OTHER_GSTIN.into(),
        ..base.clone()
    })
    .unwrap();
    let err = other
        .login()
        .await
        .expect_err("a GSTIN the client may not use");
    let refusal = err.api().unwrap_or_else(|| panic!("{err}"));
    assert_eq!(refusal.http_status, 403, "{err}");
    assert_eq!(refusal.body["code"], "gstin_not_allowed", "{err}");

    assert!(
        sim.requests(200).await.is_empty(),
        "nothing reached the simulator"
    );
    assert_eq!(sim.counters().await["auth_calls"], 0);
    let metrics = gw.metrics().await;
    assert!(
        !metrics.contains("gstgate_auth_requests_total{"),
        "no upstream login: {metrics}"
    );
    for (result, n) in [
        ("credentials_rejected", 2),
        ("client_rejected", 2),
        ("gstin_not_allowed", 1),
        ("bad_payload", 1),
    ] {
        let series =
            format!("gstgate_dropin_logins_total{{upstream=\"ewaybill\",result=\"{result}\"}} {n}");
        assert!(metrics.contains(&series), "{series}: {metrics}");
    }

    let mut client = EwaybillClient::new(base).unwrap();
    client.login().await.unwrap();
    assert_eq!(sim.counters().await["auth_calls"], 1);
    let made = client.generate(&ewaybill(GSTIN, "DROPIN/3")).await.unwrap();
    assert!(made["ewayBillNo"].is_u64(), "{made}");
}

/// A data call as a client holding `token` sends it.
async fn get_with_token(gw: &Gateway, token: &str, ewb_no: u64) -> Value {
    gw.http
        .get(format!(
            "http://{}{EWAYAPI_PATH}/GetEwayBill?ewbNo={ewb_no}",
            gw.proxy
        ))
        .header("client-id", DROPIN_CLIENT_ID)
        .header("client-secret", DROPIN_CLIENT_SECRET)
        .header("Gstin", GSTIN)
        .header("authtoken", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A token gstgate does not know (never issued, or the simulator's own) gets NIC's 238, which
/// sends a real client to log in again; neither reaches the simulator. A payload sealed under
/// another key than the drop-in SEK is not forwarded either.
#[tokio::test]
async fn unknown_tokens_get_238_and_foreign_payloads_go_nowhere() {
    let (sim, gw) = rig(4).await;
    let mut client = EwaybillClient::new(dropin_client_config(&gw)).unwrap();
    let no = client.generate(&ewaybill(GSTIN, "DROPIN/4")).await.unwrap()["ewayBillNo"]
        .as_u64()
        .unwrap();
    let requests = sim.counters().await["requests"].as_u64().unwrap();

    let upstream_token = upstream_sessions(&sim).await[0].0.clone();
    for token in ["0123456789abcdef0123456789abcdef", upstream_token.as_str()] {
        let body = get_with_token(&gw, token, no).await;
        assert_eq!(body["status"], "0", "{body}");
        assert_eq!(error_codes(&body["error"]), ["238"], "{body}");
    }
    // The live one still works: a refused stranger ends nobody's session.
    let body = get_with_token(&gw, client.token().unwrap(), no).await;
    assert_eq!(body["status"], "1", "{body}");
    assert!(
        body["rek"].is_string() && body["hmac"].is_string(),
        "{body}"
    );

    // A generate sealed under a key that is not the drop-in SEK.
    let res: Value = gw
        .http
        .post(format!("http://{}{EWAYAPI_PATH}", gw.proxy))
        .header("client-id", DROPIN_CLIENT_ID)
        .header("client-secret", DROPIN_CLIENT_SECRET)
        .header("Gstin", GSTIN)
        .header("authtoken", client.token().unwrap())
        .json(&json!({
            "action": "GENEWAYBILL",
            "data": aes_encrypt_b64(
                &random_key(),
                ewaybill(GSTIN, "DROPIN/5").to_string().as_bytes(),
            ),
        }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(res["code"], "body_invalid", "{res}");
    assert_eq!(
        sim.counters().await["requests"].as_u64().unwrap(),
        requests + 1,
        "only the live token's call reached the simulator"
    );
    assert_eq!(client.logins, 1);
}
