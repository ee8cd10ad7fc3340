//! The simulator's NIC e-way bill protocol, driven over loopback against the real `gstgate sim`
//! process by a client that does the real crypto (RSA login, SEK unwrap, AES data, REK and
//! HMAC) with `gstgate::crypto`, as an ASP would.

mod common;

use std::time::Duration;

use chrono::NaiveDateTime;
use common::{Sim, SimOpts, CLIENT_ID, CLIENT_SECRET, GSTIN, PASSWORD, USER};
use gstgate::crypto::{b64_decode, b64_encode, AesKey, PublicKey};
use serde_json::{json, Value};

const GSTIN_B: &str = "27AAACR5055K1Z7";
const AUTH: &str = "/ewaybillapi/v1.03/auth";
const EWAYAPI: &str = "/ewaybillapi/v1.03/ewayapi";
const EWB_TIME: &str = "%d/%m/%Y %I:%M:%S %p";

/// A simulator with the default user in two GSTINs, plus extra arguments.
async fn sim_with(extra: &[&str]) -> Sim {
    Sim::start(SimOpts {
        users: vec![
            (GSTIN.into(), USER.into(), PASSWORD.into()),
            (GSTIN_B.into(), USER.into(), PASSWORD.into()),
        ],
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..SimOpts::default()
    })
    .await
}

/// An HTTP reply: status, raw body, and the body as JSON when it is JSON.
struct Reply {
    status: u16,
    text: String,
    json: Value,
}

impl Reply {
    /// The raw `error` field's code list: base64-decoded JSON's `errorCodes`, or the plain
    /// object's, exactly as sent.
    #[track_caller]
    fn error_codes(&self) -> String {
        assert_eq!(self.json["status"], "0", "expected status 0: {}", self.text);
        match &self.json["error"] {
            Value::String(b64) => {
                let inner: Value = serde_json::from_slice(&b64_decode(b64).unwrap()).unwrap();
                inner["errorCodes"].as_str().unwrap().to_string()
            }
            Value::Object(o) => match &o["errorCodes"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            },
            other => panic!("error is neither base64 text nor an object: {other}"),
        }
    }

    /// Asserts the base64 form carrying exactly one code, NIC style (`"238,"`).
    #[track_caller]
    fn assert_error(&self, code: &str) {
        assert!(self.json["error"].is_string(), "base64 form: {}", self.text);
        assert_eq!(self.error_codes(), format!("{code},"), "{}", self.text);
    }

    #[track_caller]
    fn assert_ok(&self) {
        assert_eq!(self.json["status"], "1", "expected status 1: {}", self.text);
    }
}

/// A logged-in e-way bill session as the ASP holds it.
struct Session {
    token: String,
    sek: AesKey,
}

/// The ASP side of the e-way bill protocol.
struct Ewb {
    http: reqwest::Client,
    base: String,
    public: PublicKey,
    gstin: String,
    user: String,
    password: String,
    client_id: String,
    client_secret: String,
}

impl Ewb {
    fn new(sim: &Sim) -> Self {
        let pem = std::fs::read(&sim.public_key).unwrap();
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            base: sim.url(),
            public: PublicKey::from_pem_or_cert(&pem).unwrap(),
            gstin: GSTIN.into(),
            user: USER.into(),
            password: PASSWORD.into(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { status, text, json }
    }

    /// `{"Data": B64(RSA(B64(json)))}` for an ACCESSTOKEN login.
    fn login_body(&self, app_key: &AesKey) -> Value {
        let inner = json!({
            "action": "ACCESSTOKEN",
            "username": self.user,
            "password": self.password,
            "app_key": app_key.to_base64().as_str(),
        });
        let b64 = b64_encode(inner.to_string().as_bytes());
        json!({"Data": b64_encode(&self.public.encrypt(b64.as_bytes()).unwrap())})
    }

    async fn login_with_body(&self, body: &Value) -> Reply {
        self.send(
            self.http
                .post(format!("{}{AUTH}", self.base))
                .header("client-id", &self.client_id)
                .header("client-secret", &self.client_secret)
                .header("Gstin", &self.gstin)
                .json(body),
        )
        .await
    }

    async fn login_raw(&self) -> (Reply, AesKey) {
        let app_key = AesKey::random();
        (
            self.login_with_body(&self.login_body(&app_key)).await,
            app_key,
        )
    }

    async fn login(&self) -> Session {
        let (r, app_key) = self.login_raw().await;
        r.assert_ok();
        Session {
            token: r.json["authtoken"].as_str().unwrap().into(),
            sek: app_key.unwrap_key(r.json["sek"].as_str().unwrap()).unwrap(),
        }
    }

    fn data_request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header("client-id", &self.client_id)
            .header("client-secret", &self.client_secret)
            .header("Gstin", &self.gstin);
        if let Some(t) = token {
            req = req.header("authtoken", t);
        }
        req
    }

    /// POSTs an action with `data` encrypted under the SEK; returns the reply and its
    /// decrypted `data` (Null on errors).
    async fn action(&self, s: &Session, action: &str, data: &Value) -> (Reply, Value) {
        let body =
            json!({"action": action, "data": s.sek.encrypt_b64(data.to_string().as_bytes())});
        let r = self
            .send(
                self.data_request(reqwest::Method::POST, EWAYAPI, Some(&s.token))
                    .json(&body),
            )
            .await;
        let out = match &r.json["data"] {
            Value::String(d) if r.json["status"] == "1" => {
                serde_json::from_slice(&s.sek.decrypt_b64(d).expect("data decrypts under the SEK"))
                    .unwrap()
            }
            _ => Value::Null,
        };
        (r, out)
    }

    async fn get_bill(&self, s: &Session, no: &str) -> Reply {
        self.send(self.data_request(
            reqwest::Method::GET,
            &format!("{EWAYAPI}/GetEwayBill?ewbNo={no}"),
            Some(&s.token),
        ))
        .await
    }

    async fn knobs(&self, body: Value) {
        let r = self
            .send(
                self.http
                    .post(format!("{}/_sim/knobs", self.base))
                    .json(&body),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text);
    }
}

/// Opens a `rek`/`data`/`hmac` reply the way a careful client must: unwrap the REK with the
/// SEK, decrypt `data` with the REK, and check the HMAC over the base64 of the JSON.
fn open_rek_reply(s: &Session, r: &Reply) -> Result<Value, &'static str> {
    let rek = s.sek.unwrap_key(r.json["rek"].as_str().unwrap()).unwrap();
    let json_bytes = rek.decrypt_b64(r.json["data"].as_str().unwrap()).unwrap();
    rek.verify_hmac_b64(
        b64_encode(&json_bytes).as_bytes(),
        r.json["hmac"].as_str().unwrap(),
    )
    .map_err(|_| "hmac mismatch")?;
    Ok(serde_json::from_slice(&json_bytes).unwrap())
}

fn bill(gstin: &str, doc_no: &str) -> Value {
    json!({
        "supplyType": "O",
        "subSupplyType": "1",
        "docType": "INV",
        "docNo": doc_no,
        "docDate": "15/03/2025",
        "fromGstin": gstin,
        "toGstin": GSTIN_B,
        "totInvValue": 11800.0,
        "transDistance": "250",
        "itemList": [],
    })
}

#[tokio::test]
async fn repeat_login_returns_the_same_token_and_sek_and_generate_is_idempotent_by_604() {
    let sim = sim_with(&[]).await;
    let ewb = Ewb::new(&sim);
    let (r, _) = ewb.login_raw().await;
    r.assert_ok();
    assert!(
        r.json.get("expiry").is_none() && r.json.get("tokenExpiry").is_none(),
        "no expiry field: {}",
        r.text
    );
    let a = ewb.login().await;
    let b = ewb.login().await;
    assert_eq!(a.token, b.token, "same token while valid");
    assert_eq!(
        a.sek.as_bytes(),
        b.sek.as_bytes(),
        "same SEK, wrapped under each new app key"
    );
    let parts: Vec<usize> = a.token.split('-').map(str::len).collect();
    assert_eq!(parts, [8, 4, 4, 4, 12], "uuid-like token {}", a.token);
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 3);
    assert_eq!(sim.count(GSTIN, "new_tokens").await, 1);
    // The session is listed, secrets included, for the log-leak tests.
    let sessions = sim.get_json("/_sim/sessions").await;
    let mine: Vec<&Value> = sessions["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["api"] == "ewaybill")
        .collect();
    assert_eq!(mine.len(), 1, "{sessions}");
    assert_eq!(mine[0]["token"], a.token.as_str());
    assert_eq!(mine[0]["sek"], b64_encode(a.sek.as_bytes()).as_str());

    let (r, gen) = ewb.action(&a, "GENEWAYBILL", &bill(GSTIN, "EWB/001")).await;
    r.assert_ok();
    let no = gen["ewayBillNo"].as_u64().unwrap();
    assert_eq!(no.to_string().len(), 12, "{gen}");
    NaiveDateTime::parse_from_str(gen["ewayBillDate"].as_str().unwrap(), EWB_TIME).unwrap();
    NaiveDateTime::parse_from_str(gen["validUpto"].as_str().unwrap(), EWB_TIME).unwrap();
    assert_eq!(gen["alert"], "");

    // The same (fromGstin, docType, docNo) again — case aside — is 604; another number is not.
    let (dup, _) = ewb.action(&a, "GENEWAYBILL", &bill(GSTIN, "ewb/001")).await;
    dup.assert_error("604");
    let (r, other) = ewb.action(&a, "GENEWAYBILL", &bill(GSTIN, "EWB/002")).await;
    r.assert_ok();
    assert_ne!(other["ewayBillNo"], gen["ewayBillNo"]);

    // Missing fields and someone else's fromGstin are refused with the documented codes.
    let mut missing = bill(GSTIN, "EWB/003");
    missing.as_object_mut().unwrap().remove("totInvValue");
    ewb.action(&a, "GENEWAYBILL", &missing)
        .await
        .0
        .assert_error("5002");
    ewb.action(&a, "GENEWAYBILL", &bill(GSTIN_B, "EWB/003"))
        .await
        .0
        .assert_error("5003");

    // Cancel once; the second time it is no longer active.
    let (r, c) = ewb
        .action(
            &a,
            "CANEWB",
            &json!({"ewbNo": other["ewayBillNo"], "cancelRsnCode": 2, "cancelRmrk": "x"}),
        )
        .await;
    r.assert_ok();
    assert_eq!(c["ewayBillNo"], other["ewayBillNo"]);
    NaiveDateTime::parse_from_str(c["cancelDate"].as_str().unwrap(), EWB_TIME).unwrap();
    ewb.action(
        &a,
        "CANEWB",
        &json!({"ewbNo": other["ewayBillNo"], "cancelRsnCode": 2}),
    )
    .await
    .0
    .assert_error("312");
}

#[tokio::test]
async fn get_replies_carry_a_fresh_rek_and_an_hmac_and_the_tamper_knob_breaks_it() {
    let sim = sim_with(&[]).await;
    let ewb = Ewb::new(&sim);
    let s = ewb.login().await;
    let (r, gen) = ewb.action(&s, "GENEWAYBILL", &bill(GSTIN, "GET/1")).await;
    r.assert_ok();
    let no = gen["ewayBillNo"].as_u64().unwrap().to_string();

    let r1 = ewb.get_bill(&s, &no).await;
    r1.assert_ok();
    let got = open_rek_reply(&s, &r1).expect("hmac verifies");
    assert_eq!(got["ewbNo"].as_u64().unwrap().to_string(), no);
    assert_eq!(got["docNo"], "GET/1");
    assert_eq!(got["fromGstin"], GSTIN);
    assert_eq!(got["status"], "ACT");
    let r2 = ewb.get_bill(&s, &no).await;
    assert_ne!(r1.json["rek"], r2.json["rek"], "a fresh REK per reply");
    open_rek_reply(&s, &r2).unwrap();

    ewb.get_bill(&s, "999999999999").await.assert_error("325");
    ewb.get_bill(&s, "abc").await.assert_error("5005");

    ewb.knobs(json!({"tamper_hmac": true})).await;
    let bad = ewb.get_bill(&s, &no).await;
    bad.assert_ok();
    assert_eq!(open_rek_reply(&s, &bad), Err("hmac mismatch"));
    ewb.knobs(json!({"tamper_hmac": false})).await;
    open_rek_reply(&s, &ewb.get_bill(&s, &no).await).unwrap();
}

#[tokio::test]
async fn login_errors_are_nic_codes_in_base64_or_plain_form() {
    let sim = sim_with(&["--error-http-status", "400"]).await;
    let good = Ewb::new(&sim);

    let mut e = Ewb::new(&sim);
    e.client_id = "nobody".into();
    let (r, _) = e.login_raw().await;
    r.assert_error("103");
    assert_eq!(r.status, 400, "error_http_status applies");
    let mut e = Ewb::new(&sim);
    e.client_secret = "wrong".into();
    e.login_raw().await.0.assert_error("104");
    let mut e = Ewb::new(&sim);
    e.user = "nobody".into();
    e.login_raw().await.0.assert_error("101");
    let mut e = Ewb::new(&sim);
    e.password = "wrong".into();
    let (r, _) = e.login_raw().await;
    r.assert_error("102");
    // Exactly NIC's shape: a base64 string of {"errorCodes":"102,"}.
    let raw = b64_decode(r.json["error"].as_str().unwrap()).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&raw).unwrap(),
        json!({"errorCodes": "102,"})
    );
    // A payload encrypted under another key does not decrypt.
    let other = gstgate::crypto::KeyPair::generate().unwrap().public_key();
    let body = json!({"Data": b64_encode(&other.encrypt(b"eyJ4IjoxfQ==").unwrap())});
    good.login_with_body(&body).await.assert_error("110");
    good.login_with_body(&json!({"nonsense": 1}))
        .await
        .assert_error("110");

    good.knobs(json!({"ewb_plain_errors": true})).await;
    let (r, _) = e.login_raw().await;
    assert_eq!(
        r.json,
        json!({"status": "0", "error": {"errorCodes": "102"}}),
        "{}",
        r.text
    );
    good.knobs(json!({"ewb_plain_errors": false})).await;
    e.login_raw().await.0.assert_error("102");
}

#[tokio::test]
async fn data_calls_answer_105_without_token_238_for_unknown_foreign_revoked_rejected_and_106_when_expired(
) {
    let sim = Sim::start(SimOpts {
        users: vec![
            (GSTIN.into(), USER.into(), PASSWORD.into()),
            (GSTIN_B.into(), USER.into(), PASSWORD.into()),
        ],
        token_ttl: "2s",
        ..SimOpts::default()
    })
    .await;
    let ewb = Ewb::new(&sim);
    let s = ewb.login().await;
    let get = |token: Option<&str>| {
        ewb.send(ewb.data_request(
            reqwest::Method::GET,
            &format!("{EWAYAPI}/GetEwayBill?ewbNo=999999999999"),
            token,
        ))
    };
    // A valid token reaches the operation (325: no such bill).
    get(Some(&s.token)).await.assert_error("325");
    get(None).await.assert_error("105");
    get(Some("00000000-0000-0000-0000-000000000000"))
        .await
        .assert_error("238");

    let mut b = Ewb::new(&sim);
    b.gstin = GSTIN_B.into();
    let sb = b.login().await;
    get(Some(&sb.token)).await.assert_error("238");

    sim.control(
        "/_sim/reject-tokens",
        json!({"gstin": GSTIN, "enabled": true}),
    )
    .await;
    get(Some(&s.token)).await.assert_error("238");
    sim.control(
        "/_sim/reject-tokens",
        json!({"gstin": GSTIN, "enabled": false}),
    )
    .await;
    get(Some(&s.token)).await.assert_error("325");

    let mut bad_client = Ewb::new(&sim);
    bad_client.client_secret = "wrong".into();
    bad_client
        .send(bad_client.data_request(
            reqwest::Method::GET,
            &format!("{EWAYAPI}/GetEwayBill?ewbNo=1"),
            Some(&s.token),
        ))
        .await
        .assert_error("104");

    // Sleeping past a 2-second token is the point of this step.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    get(Some(&s.token)).await.assert_error("106");
    let fresh = ewb.login().await;
    assert_ne!(fresh.token, s.token, "a new token after expiry");
    get(Some(&fresh.token)).await.assert_error("325");

    sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
        .await;
    get(Some(&fresh.token)).await.assert_error("238");
    // 105, 238 ×3 and 106 for GSTIN A; the foreign-token call counts for A's header too.
    assert_eq!(sim.count(GSTIN, "token_rejections").await, 6);
}

#[tokio::test]
async fn five_logins_in_the_window_block_the_user_for_one_window() {
    let sim = sim_with(&["--ewb-login-window", "3s"]).await;
    assert_eq!(
        sim.get_json("/_sim/knobs").await["ewb_login_window_secs"],
        3
    );
    let ewb = Ewb::new(&sim);
    let mut wrong = Ewb::new(&sim);
    wrong.password = "wrong".into();

    // Failed logins count too: four good and one bad make five.
    let s = ewb.login().await;
    for _ in 0..3 {
        ewb.login().await;
    }
    wrong.login_raw().await.0.assert_error("102");
    ewb.login_raw().await.0.assert_error("118");
    ewb.login_raw().await.0.assert_error("118");
    assert_eq!(sim.count(GSTIN, "blocked_logins").await, 2);
    // Counted per (GSTIN, user): the same user name in another GSTIN is not blocked.
    let mut b = Ewb::new(&sim);
    b.gstin = GSTIN_B.into();
    b.login().await;
    // The token already issued keeps working during the block.
    let (r, _) = ewb.action(&s, "GENEWAYBILL", &bill(GSTIN, "BLK/1")).await;
    r.assert_ok();

    // Sleeping past the 3-second block is the point of this step.
    tokio::time::sleep(Duration::from_millis(3300)).await;
    let again = ewb.login().await;
    assert_eq!(again.token, s.token, "still the same valid token");
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 8);
}

#[tokio::test]
async fn undecryptable_fault_answers_an_ewaybill_envelope() {
    let sim = sim_with(&[]).await;
    let ewb = Ewb::new(&sim);
    let s = ewb.login().await;
    sim.control(
        "/_sim/faults",
        json!({"mode": "undecryptable", "count": 1, "path_prefix": "/ewaybillapi/"}),
    )
    .await;
    let (r, _) = ewb.login_raw().await;
    r.assert_ok();
    let key = AesKey::random();
    assert!(key.unwrap_key(r.json["sek"].as_str().unwrap()).is_err());
    // The fault is used up; the real session is unaffected.
    let (r, _) = ewb.action(&s, "GENEWAYBILL", &bill(GSTIN, "F/1")).await;
    r.assert_ok();
}

#[tokio::test]
async fn get_by_document_answers_the_consigners_bill_for_it_and_325_otherwise() {
    let sim = sim_with(&[]).await;
    let ewb = Ewb::new(&sim);
    let s = ewb.login().await;
    let (r, gen) = ewb.action(&s, "GENEWAYBILL", &bill(GSTIN, "DOC/7")).await;
    r.assert_ok();
    let by_doc = |query: &str| {
        ewb.send(ewb.data_request(
            reqwest::Method::GET,
            &format!("{EWAYAPI}/GetEwayBillGeneratedByConsigner?{query}"),
            Some(&s.token),
        ))
    };

    // Document type and number match case-insensitively, as generate's duplicate check does.
    let found = by_doc("docType=inv&docNo=doc/7").await;
    found.assert_ok();
    let body = open_rek_reply(&s, &found).unwrap();
    assert_eq!(body["ewayBillNo"], gen["ewayBillNo"], "{body}");
    assert_eq!(body["ewayBillDate"], gen["ewayBillDate"]);
    assert_eq!(body["validUpto"], gen["validUpto"]);
    assert_eq!(
        (&body["docNo"], &body["fromGstin"], &body["status"]),
        (&json!("DOC/7"), &json!(GSTIN), &json!("ACT"))
    );

    by_doc("docType=INV&docNo=DOC/8").await.assert_error("325");
    by_doc("docType=BIL&docNo=DOC/7").await.assert_error("325");
    by_doc("docNo=DOC/7").await.assert_error("5002");
    // Another GSTIN did not generate it.
    let other = Ewb {
        gstin: GSTIN_B.into(),
        ..Ewb::new(&sim)
    };
    let t = other.login().await;
    other
        .send(other.data_request(
            reqwest::Method::GET,
            &format!("{EWAYAPI}/GetEwayBillGeneratedByConsigner?docType=INV&docNo=DOC/7"),
            Some(&t.token),
        ))
        .await
        .assert_error("325");
}

#[tokio::test]
async fn commit_drop_keeps_the_bill_the_lost_reply_was_for_and_a_retry_gets_604() {
    let sim = sim_with(&[]).await;
    let ewb = Ewb::new(&sim);
    let s = ewb.login().await;
    sim.control(
        "/_sim/faults",
        json!({"mode": "commit_drop", "count": 1, "path_prefix": EWAYAPI}),
    )
    .await;
    let body = json!({
        "action": "GENEWAYBILL",
        "data": s.sek.encrypt_b64(bill(GSTIN, "CD/1").to_string().as_bytes()),
    });
    let lost = ewb
        .data_request(reqwest::Method::POST, EWAYAPI, Some(&s.token))
        .json(&body)
        .send()
        .await
        .expect_err("the reply is dropped");
    assert!(!lost.is_timeout(), "closed at once: {lost:?}");

    let docs = sim.documents().await;
    assert_eq!(docs["ewb_count"], 1, "the bill was committed: {docs}");
    let (retry, _) = ewb.action(&s, "GENEWAYBILL", &bill(GSTIN, "CD/1")).await;
    retry.assert_error("604");
    let docs = sim.documents().await;
    assert_eq!(
        (
            &docs["ewb_count"],
            &docs["ewbs"][0]["doc_no"],
            &docs["ewbs"][0]["generate_calls"]
        ),
        (&json!(1), &json!("CD/1"), &json!(2)),
        "{docs}"
    );
    assert_eq!(sim.count(GSTIN, "generates").await, 2);
}
