//! The spec clients (`tests/common/spec_client/`), written from the published NIC and GSTN
//! API specifications without gstgate's code, driven against the real `gstgate sim` process
//! over loopback. Passing here means the clients speak the protocol as the simulator does, so
//! that later tests can point them at gstgate's drop-in mode and blame gstgate, not the client,
//! when something differs.

mod common;

use std::collections::HashSet;
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use common::spec_client::crypto::{
    aes_encrypt_b64, b64, hmac_b64, public_key_from_pem, random_ascii_key, random_key, unb64, Key,
};
use common::spec_client::{einvoice, ewaybill, gstn};
use common::{
    ewaybill as ewb_request, invoice, ClientError, EinvoiceClient, EwaybillClient, GstnClient, Sim,
    SimOpts, SpecConfig, GSTIN, PASSWORD, USER,
};
use rsa::RsaPublicKey;
use serde_json::{json, Value};

/// A GSTIN the simulator's master lookup accepts (valid checksum), other than the caller's.
const BUYER: &str = "27AAACR5055K1Z7";
const PERIOD: &str = "032025";

/// The harness identities against a fresh simulator, with the key it wrote at start-up.
fn config(sim: &Sim) -> SpecConfig {
    let pem = std::fs::read_to_string(&sim.public_key).unwrap();
    SpecConfig::test_identity(sim.url(), pem)
}

/// A public key that is not the simulator's, as a client configured for another server holds.
fn other_key() -> RsaPublicKey {
    static KEY: OnceLock<RsaPublicKey> = OnceLock::new();
    KEY.get_or_init(|| {
        rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048)
            .unwrap()
            .to_public_key()
    })
    .clone()
}

/// Whether `t` lies within a minute of `now + hours`.
fn about_hours_ahead(t: DateTime<Utc>, hours: i64) -> bool {
    let expected = Utc::now() + chrono::Duration::hours(hours);
    (t - expected).num_seconds().abs() < 60
}

#[track_caller]
fn expect_code<T: std::fmt::Debug>(r: Result<T, ClientError>, code: &str) -> ClientError {
    let e = r.expect_err(&format!("expected error {code}"));
    assert!(e.has_code(code), "expected code {code}, got {e}");
    e
}

#[track_caller]
fn expect_crypto<T: std::fmt::Debug>(r: Result<T, ClientError>) -> String {
    match r {
        Err(ClientError::Crypto(m)) => m,
        other => panic!("expected a crypto error, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// NIC e-invoice
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn einvoice_login_generate_get_and_master_details() {
    let sim = Sim::start(SimOpts::default()).await;
    let mut c = EinvoiceClient::new(config(&sim)).unwrap();

    let expiry = c.login(false).await.unwrap();
    assert_eq!(c.logins, 1);
    let at = c.token_expiry().unwrap();
    assert_eq!(einvoice::parse_token_expiry(&expiry), Some(at));
    assert!(
        about_hours_ahead(at, 6),
        "TokenExpiry {expiry} is not 6 h ahead in IST"
    );

    let made = c.generate_irn(&invoice(GSTIN, "SPEC/1")).await.unwrap();
    let irn = made["Irn"].as_str().unwrap().to_string();
    assert!(
        irn.len() == 64 && irn.bytes().all(|b| b.is_ascii_hexdigit()),
        "{made}"
    );
    assert_eq!(made["Status"], "ACT", "{made}");
    assert!(made["AckNo"].is_u64(), "{made}");

    let got = c.get_irn(&irn).await.unwrap();
    assert_eq!(got["Irn"], irn.as_str());
    assert_eq!(got["AckNo"], made["AckNo"]);

    let master = c.gstin_details(BUYER).await.unwrap();
    assert_eq!(master["Gstin"], BUYER, "{master}");
    assert_eq!(master["StateCode"], 27, "{master}");

    // A business refusal comes back with its code and NIC's InfoDtls, and is no reason to log
    // in again.
    let dup = expect_code(c.generate_irn(&invoice(GSTIN, "SPEC/1")).await, "2150");
    let body = &dup.api().unwrap().body;
    assert_eq!(body["InfoDtls"][0]["Desc"]["Irn"], irn.as_str(), "{body}");
    expect_code(c.gstin_details("27AAACR5055K1Z8").await, "3028");
    assert_eq!(c.logins, 1);
    assert_eq!(sim.count(GSTIN, "new_tokens").await, 1);
    assert_eq!(sim.count(GSTIN, "token_rejections").await, 0);
}

#[tokio::test]
async fn einvoice_refuses_a_wrong_password_and_a_login_under_another_key() {
    let sim = Sim::start(SimOpts::default()).await;
    let cfg = config(&sim);

    let mut wrong = EinvoiceClient::new(SpecConfig {
        password: "not-the-password".into(),
        ..cfg.clone()
    })
    .unwrap();
    expect_code(wrong.login(false).await, "1019");
    assert_eq!(wrong.token(), None);
    // A data call logs in first, and a refused login stops it before any data call is sent.
    expect_code(wrong.gstin_details(BUYER).await, "1019");
    assert_eq!(wrong.logins, 2);
    assert_eq!(sim.count(GSTIN, "requests").await, 0);

    let c = EinvoiceClient::new(cfg).unwrap();
    let payload = json!({
        "UserName": USER,
        "Password": PASSWORD,
        "AppKey": b64(&random_key()),
        "ForceRefreshAccessToken": false,
    });
    expect_code(c.login_raw(&payload, &other_key()).await, "1013");
    // The same payload under the simulator's key logs in: the key alone made the difference.
    let data = c.login_raw(&payload, c.public_key()).await.unwrap();
    assert!(data["AuthToken"].is_string(), "{data}");
    assert_eq!(data["UserName"], USER);
}

#[tokio::test]
async fn einvoice_logs_in_again_exactly_once_when_its_token_is_refused() {
    let sim = Sim::start(SimOpts::default()).await;
    let mut c = EinvoiceClient::new(config(&sim)).unwrap();

    // No session: the first data call logs in by itself.
    let irn = c.generate_irn(&invoice(GSTIN, "SPEC/2")).await.unwrap()["Irn"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(c.logins, 1);
    let first = c.token().unwrap().to_string();

    sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
        .await;
    let got = c.get_irn(&irn).await.unwrap();
    assert_eq!(got["Irn"], irn.as_str());
    assert_eq!(c.logins, 2, "one re-login after 1005");
    assert_ne!(c.token().unwrap(), first);
    assert_eq!(sim.count(GSTIN, "token_rejections").await, 1);

    // Every token refused: one re-login, one retry, then the 1005 is the caller's — no loop.
    sim.control(
        "/_sim/reject-tokens",
        json!({"gstin": GSTIN, "enabled": true}),
    )
    .await;
    expect_code(c.get_irn(&irn).await, einvoice::INVALID_TOKEN);
    assert_eq!(c.logins, 3);
    assert_eq!(sim.count(GSTIN, "token_rejections").await, 3);
}

#[tokio::test]
async fn einvoice_reply_that_does_not_decrypt_is_a_crypto_error_not_an_api_one() {
    let sim = Sim::start(SimOpts::default()).await;
    let mut c = EinvoiceClient::new(config(&sim)).unwrap();
    c.login(false).await.unwrap();
    sim.control(
        "/_sim/faults",
        json!({"mode": "undecryptable", "count": 1, "path_prefix": "/eicore/"}),
    )
    .await;
    expect_crypto(c.generate_irn(&invoice(GSTIN, "SPEC/3")).await);
    // The fault is used up; the session was never in question.
    c.generate_irn(&invoice(GSTIN, "SPEC/3")).await.unwrap();
    assert_eq!(c.logins, 1);
}

#[test]
fn token_expiry_is_ist_wall_clock_time() {
    let t = einvoice::parse_token_expiry("2024-01-02 01:30:00").unwrap();
    assert_eq!(t.to_rfc3339(), "2024-01-01T20:00:00+00:00");
    assert_eq!(einvoice::parse_token_expiry("02/01/2024 01:30:00"), None);
}

// ---------------------------------------------------------------------------------------------
// NIC e-way bill
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn ewaybill_login_generate_and_get_with_the_hmac_checked() {
    let sim = Sim::start(SimOpts::default()).await;
    let mut c = EwaybillClient::new(config(&sim)).unwrap();

    let token = c.login().await.unwrap();
    assert_eq!(c.token(), Some(token.as_str()));
    assert!(about_hours_ahead(c.token_expiry().unwrap(), 6));

    let made = c.generate(&ewb_request(GSTIN, "EWB/1")).await.unwrap();
    let no = made["ewayBillNo"]
        .as_u64()
        .unwrap_or_else(|| panic!("{made}"));
    assert_eq!(no.to_string().len(), 12, "{made}");
    assert!(made["validUpto"].is_string(), "{made}");

    let got = c.get(no).await.unwrap();
    assert_eq!(got["ewbNo"], no, "{got}");
    assert_eq!(got["docNo"], "EWB/1");
    assert_eq!(got["fromGstin"], GSTIN);
    assert_eq!(got["status"], "ACT");

    expect_code(c.generate(&ewb_request(GSTIN, "EWB/1")).await, "604");
    expect_code(c.get(141_999_999_999u64).await, "325");
    let cancelled = c
        .action(
            "CANEWB",
            &json!({"ewbNo": no, "cancelRsnCode": 2, "cancelRmrk": "order cancelled"}),
        )
        .await
        .unwrap();
    assert_eq!(cancelled["ewayBillNo"], no, "{cancelled}");
    assert_eq!(c.get(no).await.unwrap()["status"], "CNL");
    assert_eq!(c.logins, 1);
    assert_eq!(sim.count(GSTIN, "token_rejections").await, 0);
}

#[tokio::test]
async fn ewaybill_refusals_carry_nic_codes_in_both_error_forms() {
    let sim = Sim::start(SimOpts::default()).await;
    let cfg = config(&sim);
    let mut wrong = EwaybillClient::new(SpecConfig {
        password: "not-the-password".into(),
        ..cfg.clone()
    })
    .unwrap();
    // NIC's form: base64 of {"errorCodes":"102,"}.
    let e = expect_code(wrong.login().await, "102");
    assert!(e.api().unwrap().body["error"].is_string(), "{e}");
    // The knob's form: a plain object.
    sim.control("/_sim/knobs", json!({"ewb_plain_errors": true}))
        .await;
    let e = expect_code(wrong.login().await, "102");
    assert!(e.api().unwrap().body["error"].is_object(), "{e}");
    assert_eq!(wrong.token(), None);

    let c = EwaybillClient::new(cfg).unwrap();
    let payload = json!({
        "action": "ACCESSTOKEN",
        "username": USER,
        "password": PASSWORD,
        "app_key": b64(&random_key()),
    });
    expect_code(c.login_raw(&payload, &other_key()).await, "110");
    let ok = c.login_raw(&payload, c.public_key()).await.unwrap();
    assert!(ok["authtoken"].is_string() && ok["sek"].is_string(), "{ok}");
}

#[tokio::test]
async fn ewaybill_logs_in_again_exactly_once_when_its_token_is_refused() {
    let sim = Sim::start(SimOpts::default()).await;
    let mut c = EwaybillClient::new(config(&sim)).unwrap();
    let no = c.generate(&ewb_request(GSTIN, "EWB/2")).await.unwrap()["ewayBillNo"]
        .as_u64()
        .unwrap();
    assert_eq!(c.logins, 1);
    let first = c.token().unwrap().to_string();

    sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
        .await;
    // A POST after revocation: the retry must be sealed under the new SEK, not the old one.
    let made = c.generate(&ewb_request(GSTIN, "EWB/3")).await.unwrap();
    assert!(made["ewayBillNo"].is_u64(), "{made}");
    assert_eq!(c.logins, 2);
    assert_ne!(c.token().unwrap(), first);

    sim.control(
        "/_sim/reject-tokens",
        json!({"gstin": GSTIN, "enabled": true}),
    )
    .await;
    expect_code(c.get(no).await, "238");
    assert_eq!(c.logins, 3, "one re-login, then the 238 is returned");
    assert_eq!(sim.count(GSTIN, "token_rejections").await, 3);
}

#[tokio::test]
async fn ewaybill_reply_with_a_wrong_hmac_from_the_simulator_is_a_crypto_error() {
    let sim = Sim::start(SimOpts::default()).await;
    let mut c = EwaybillClient::new(config(&sim)).unwrap();
    let no = c.generate(&ewb_request(GSTIN, "EWB/4")).await.unwrap()["ewayBillNo"]
        .as_u64()
        .unwrap();
    sim.control("/_sim/knobs", json!({"tamper_hmac": true}))
        .await;
    let why = expect_crypto(c.get(no).await);
    assert!(why.contains("hmac"), "{why}");
    sim.control("/_sim/knobs", json!({"tamper_hmac": false}))
        .await;
    assert_eq!(c.get(no).await.unwrap()["ewbNo"], no);
    assert_eq!(c.logins, 1, "a crypto failure is no reason to log in again");
}

/// A GetEwayBill reply built here as NIC would: REK under the SEK, JSON under the REK, HMAC
/// with the REK over the base64 of the JSON.
fn ewb_reply(sek: &Key, rek: &Key, json_text: &str, hmac: &str) -> Value {
    json!({
        "status": "1",
        "rek": aes_encrypt_b64(sek, rek),
        "data": aes_encrypt_b64(rek, json_text.as_bytes()),
        "hmac": hmac,
    })
}

#[test]
fn ewaybill_reply_verification_refuses_every_wrong_hmac() {
    let (sek, rek) = (random_key(), random_key());
    let text = r#"{"ewbNo":141000000001,"status":"ACT"}"#;
    let good = hmac_b64(&rek, b64(text.as_bytes()).as_bytes());

    let v = ewaybill::open_rek_reply(&sek, &ewb_reply(&sek, &rek, text, &good)).unwrap();
    assert_eq!(v["ewbNo"], 141000000001u64);

    // Over other data, under another key, over the JSON rather than its base64, or truncated.
    let other_data = hmac_b64(&rek, b64(br#"{"ewbNo":1}"#).as_bytes());
    let other_key = hmac_b64(&sek, b64(text.as_bytes()).as_bytes());
    let over_json = hmac_b64(&rek, text.as_bytes());
    let truncated = b64(&unb64(&good, "hmac").unwrap()[..31]);
    for bad in [&other_data, &other_key, &over_json, &truncated] {
        let why = expect_crypto(ewaybill::open_rek_reply(
            &sek,
            &ewb_reply(&sek, &rek, text, bad),
        ));
        assert!(why.contains("hmac"), "{why}");
    }
    expect_crypto(ewaybill::open_rek_reply(
        &sek,
        &ewb_reply(&sek, &rek, text, "%%"),
    ));
    // A REK wrapped under another SEK does not unwrap to a key that opens the data.
    expect_crypto(ewaybill::open_rek_reply(
        &random_key(),
        &ewb_reply(&sek, &rek, text, &good),
    ));
}

#[test]
fn ewaybill_error_codes_are_read_from_every_documented_form() {
    let nic = Value::String(b64(br#"{"errorCodes":"238,"}"#));
    assert_eq!(ewaybill::error_codes(&nic), ["238"]);
    let two = Value::String(b64(br#"{"errorCodes":"106, 238,"}"#));
    assert_eq!(ewaybill::error_codes(&two), ["106", "238"]);
    assert_eq!(ewaybill::error_codes(&json!({"errorCodes": 240})), ["240"]);
    assert_eq!(
        ewaybill::error_codes(&json!({"errorCodes": "240"})),
        ["240"]
    );
    assert!(ewaybill::error_codes(&json!("not base64 or JSON")).is_empty());
}

// ---------------------------------------------------------------------------------------------
// GSTN returns
// ---------------------------------------------------------------------------------------------

/// The OTP the simulator "sent" the taxpayer.
async fn pending_otp(sim: &Sim) -> String {
    sim.get_json(&format!("/_sim/otp?gstin={GSTIN}&username={USER}"))
        .await["otp"]
        .as_str()
        .unwrap()
        .to_string()
}

/// OTPREQUEST, the OTP from the simulator, AUTHTOKEN.
async fn gstn_logged_in(sim: &Sim) -> GstnClient {
    let mut c = GstnClient::new(config(sim)).unwrap();
    c.otp_request().await.unwrap();
    let otp = pending_otp(sim).await;
    c.auth_token(&otp).await.unwrap();
    c
}

#[tokio::test]
async fn gstn_otp_login_return_summary_save_and_refresh() {
    let sim = Sim::start(SimOpts::default()).await;
    let mut c = gstn_logged_in(&sim).await;
    assert_eq!(c.logins, 1);
    let first = c.token().unwrap().to_string();
    assert!(first.len() == 32 && first.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(about_hours_ahead(c.token_expiry().unwrap(), 6));

    let sum = c.return_summary("gstr1", PERIOD).await.unwrap();
    assert_eq!(sum["gstin"], GSTIN, "{sum}");
    assert_eq!(sum["ret_period"], PERIOD, "{sum}");
    assert!(sum["sec_sum"].is_array(), "{sum}");

    let saved = c
        .put(
            "/taxpayerapi/v1.0/returns/gstr1",
            PERIOD,
            "RETSAVE",
            &json!({"gstin": GSTIN, "fp": PERIOD, "b2b": []}),
        )
        .await
        .unwrap();
    assert_eq!(
        saved["reference_id"].as_str().map(str::len),
        Some(15),
        "{saved}"
    );

    let old_sek = c.sek().unwrap();
    c.refresh().await.unwrap();
    assert_eq!((c.logins, c.refreshes), (1, 1));
    assert_ne!(c.token().unwrap(), first);
    assert_ne!(c.sek().unwrap(), old_sek);
    assert_eq!(sim.count(GSTIN, "refreshes").await, 1);
    // The new SEK opens the next reply; the replaced token is dead at once.
    let sum = c.return_summary("gstr3b", PERIOD).await.unwrap();
    assert_eq!(sum["ret_period"], PERIOD, "{sum}");
    let replay = c
        .authenticate_raw(&json!({
            "action": "REFRESHTOKEN",
            "username": USER,
            "auth_token": first,
            "app_key": aes_encrypt_b64(&old_sek, &random_ascii_key()),
        }))
        .await;
    expect_code(replay, gstn::INVALID_SESSION);

    // Every request carried the seven headers, with a txn of its own.
    let requests = sim.requests(50).await;
    assert_eq!(requests.len(), 7, "{requests:?}");
    let mut txns = HashSet::new();
    for r in &requests {
        let h = &r["headers"];
        assert_eq!(h["state-cd"], "27", "{r}");
        assert_eq!(h["clientid"], common::CLIENT_ID, "{r}");
        for name in ["client-secret", "ip-usr", "username", "gstin"] {
            assert!(h[name].is_string(), "{name} missing: {r}");
        }
        assert!(txns.insert(h["txn"].as_str().unwrap().to_string()), "{r}");
    }
}

/// GSTN publishes its key as an X.509 certificate: one over the simulator's own key pair.
fn sim_certificate_pem() -> String {
    let key_pem = std::fs::read_to_string(common::sim_key_file()).unwrap();
    let key = rcgen::KeyPair::from_pem_and_sign_algo(&key_pem, &rcgen::PKCS_RSA_SHA256).unwrap();
    rcgen::CertificateParams::new(vec!["gsp.example.test".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap()
        .pem()
}

#[tokio::test]
async fn gstn_client_configured_with_a_certificate_logs_in() {
    let sim = Sim::start(SimOpts::default()).await;
    let cert = sim_certificate_pem();
    let cfg = config(&sim);
    assert_eq!(
        public_key_from_pem(&cert).unwrap(),
        public_key_from_pem(&cfg.public_key_pem).unwrap()
    );
    let mut c = GstnClient::new(SpecConfig {
        public_key_pem: cert,
        ..cfg
    })
    .unwrap();
    c.otp_request().await.unwrap();
    c.auth_token(&pending_otp(&sim).await).await.unwrap();
    assert_eq!(
        c.return_summary("gstr1", PERIOD).await.unwrap()["gstin"],
        GSTIN
    );
}

#[tokio::test]
async fn gstn_refuses_a_foreign_key_and_a_wrong_otp() {
    let sim = Sim::start(SimOpts::default()).await;
    let mut c = GstnClient::new(config(&sim)).unwrap();
    expect_code(c.otp_request_with(&other_key()).await, "TEC4002");
    // Without a session there is nothing to send: GSTN cannot log in without an OTP.
    assert!(
        matches!(
            c.return_summary("gstr1", PERIOD).await,
            Err(ClientError::Usage(_))
        ),
        "a data call before the OTP login"
    );
    assert_eq!(sim.count(GSTIN, "requests").await, 0);

    c.otp_request().await.unwrap();
    let otp = pending_otp(&sim).await;
    let wrong = if otp == "123456" { "654321" } else { "123456" };
    expect_code(c.auth_token(wrong).await, "AUTH4034");
    assert_eq!(c.token(), None);
    // A wrong guess does not use the OTP up: the right one still logs in.
    c.auth_token(&otp).await.unwrap();
    assert_eq!(c.logins, 2);
    assert!(c.token().is_some());
}

#[tokio::test]
async fn gstn_reply_with_a_wrong_hmac_is_a_crypto_error() {
    let sim = Sim::start(SimOpts::default()).await;
    let mut c = gstn_logged_in(&sim).await;
    sim.control("/_sim/knobs", json!({"tamper_hmac": true}))
        .await;
    let why = expect_crypto(c.return_summary("gstr1", PERIOD).await);
    assert!(why.contains("hmac"), "{why}");
    sim.control("/_sim/knobs", json!({"tamper_hmac": false}))
        .await;
    c.return_summary("gstr1", PERIOD).await.unwrap();
    assert_eq!((c.logins, c.refreshes), (1, 0));
}

#[tokio::test]
async fn gstn_ended_session_is_refreshed_once_then_reported() {
    let sim = Sim::start(SimOpts::default()).await;
    let mut c = gstn_logged_in(&sim).await;
    sim.control(
        "/_sim/gstn/end-session",
        json!({"gstin": GSTIN, "username": USER}),
    )
    .await;
    // AUTH4038 on the data call, one refresh that the ended session also refuses, no more.
    expect_code(
        c.return_summary("gstr1", PERIOD).await,
        gstn::SESSION_EXPIRED,
    );
    assert_eq!((c.logins, c.refreshes), (1, 1));
    assert_eq!(sim.count(GSTIN, "token_rejections").await, 1);
}

#[test]
fn gstn_reply_verification_needs_the_extra_base64_layer() {
    let (sek, rek) = (random_key(), random_key());
    let json_b64 = b64(br#"{"ret_period":"032025"}"#);
    let reply = |data_plain: &[u8], hmac: &str| {
        json!({
            "status_cd": "1",
            "rek": aes_encrypt_b64(&sek, &rek),
            "data": aes_encrypt_b64(&rek, data_plain),
            "hmac": hmac,
        })
    };
    let good = hmac_b64(&rek, json_b64.as_bytes());
    let v = gstn::open_rek_reply(&sek, &reply(json_b64.as_bytes(), &good)).unwrap();
    assert_eq!(v["ret_period"], PERIOD);
    // The e-way bill shape (JSON directly under the REK) is not a GSTN reply.
    let json_text = br#"{"ret_period":"032025"}"#;
    expect_crypto(gstn::open_rek_reply(&sek, &reply(json_text, &good)));
    let bad = hmac_b64(&sek, json_b64.as_bytes());
    expect_crypto(gstn::open_rek_reply(
        &sek,
        &reply(json_b64.as_bytes(), &bad),
    ));
}
