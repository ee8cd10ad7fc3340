//! The simulator's NIC e-invoice protocol, driven over loopback by an ASP-side client that
//! does the real crypto (RSA login, SEK unwrap, AES data) with `gstgate::crypto`.
//!
//! Simulators run in-process ([`gstgate::sim::start`]) on ephemeral ports with one RSA key
//! shared by the whole target directory; one test runs the `gstgate sim` binary.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chrono::{NaiveDateTime, Utc};
use gstgate::crypto::{AesKey, KeyPair, PublicKey};
use gstgate::sim::{start, SimClient, SimConfig, SimHandle, SimUser};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const GSTIN: &str = "27AAPFU0939F1ZV";
const GSTIN_B: &str = "27AAACR5055K1Z7";
const USER: &str = "asp_user";
const PASSWORD: &str = "Pa55:word";
const CLIENT_ID: &str = "asp-client";
const CLIENT_SECRET: &str = "asp-secret-123";
const INVOICE: &str = "/eicore/v1.03/Invoice";
const AUTH: &str = "/eivital/v1.04/auth";

/// A private key shared by every simulator in this target directory, made once.
fn key_file() -> PathBuf {
    static KEY: OnceLock<PathBuf> = OnceLock::new();
    KEY.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let path = dir.join("sim-test-key.pem");
        if !path.exists() {
            let pem = KeyPair::generate().unwrap().to_pkcs8_pem().unwrap();
            // Write then rename: test binaries may race to create it.
            let tmp = dir.join(format!("sim-test-key.{}.tmp", std::process::id()));
            std::fs::write(&tmp, pem.as_bytes()).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        path
    })
    .clone()
}

fn config() -> SimConfig {
    SimConfig {
        key_file: Some(key_file()),
        users: vec![
            SimUser {
                gstin: GSTIN.into(),
                username: USER.into(),
                password: PASSWORD.into(),
            },
            SimUser {
                gstin: GSTIN_B.into(),
                username: USER.into(),
                password: PASSWORD.into(),
            },
        ],
        clients: vec![SimClient {
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
        }],
        ..SimConfig::default()
    }
}

async fn sim_with(f: impl FnOnce(&mut SimConfig)) -> (SimHandle, Asp) {
    let mut cfg = config();
    f(&mut cfg);
    let sim = start(cfg).await.expect("simulator starts");
    let asp = Asp::new(&sim, GSTIN);
    (sim, asp)
}

async fn sim() -> (SimHandle, Asp) {
    sim_with(|_| {}).await
}

/// An HTTP reply: status, raw body, and the body as JSON when it is JSON.
struct Reply {
    status: u16,
    text: String,
    json: Value,
}

impl Reply {
    fn status_field(&self) -> i64 {
        self.json["Status"].as_i64().unwrap_or(-1)
    }

    fn error_code(&self) -> &str {
        self.json["ErrorDetails"][0]["ErrorCode"]
            .as_str()
            .unwrap_or("")
    }

    #[track_caller]
    fn assert_error(&self, code: &str) {
        assert_eq!(self.status_field(), 0, "expected Status 0: {}", self.text);
        assert_eq!(self.error_code(), code, "{}", self.text);
    }
}

/// A logged-in session as the ASP holds it.
#[derive(Clone)]
struct Session {
    token: String,
    sek: AesKey,
    expiry: String,
}

/// The ASP side of the protocol.
struct Asp {
    http: reqwest::Client,
    base: String,
    public: PublicKey,
    gstin: String,
    user: String,
    password: String,
    client_id: String,
    client_secret: String,
}

impl Asp {
    fn new(sim: &SimHandle, gstin: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap(),
            base: format!("http://{}", sim.local_addr()),
            public: PublicKey::from_pem_or_cert(sim.public_key_pem().as_bytes()).unwrap(),
            gstin: gstin.into(),
            user: USER.into(),
            password: PASSWORD.into(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
        }
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Result<Reply, reqwest::Error> {
        let res = req.send().await?;
        let status = res.status().as_u16();
        let text = res.text().await?;
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Ok(Reply { status, text, json })
    }

    /// The login body for this user: B64(RSA(B64(json))).
    fn login_body(&self, app_key: &AesKey, force: bool) -> Value {
        let inner = json!({
            "UserName": self.user,
            "Password": self.password,
            "AppKey": app_key.to_base64().as_str(),
            "ForceRefreshAccessToken": force,
        });
        let b64 = gstgate::crypto::b64_encode(inner.to_string().as_bytes());
        json!({"Data": gstgate::crypto::b64_encode(&self.public.encrypt(b64.as_bytes()).unwrap())})
    }

    fn auth_request(&self, body: &Value) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{AUTH}", self.base))
            .header("client_id", &self.client_id)
            .header("client_secret", &self.client_secret)
            .header("Gstin", &self.gstin)
            .header("content-type", "application/json")
            .body(body.to_string())
    }

    async fn login_raw(&self, force: bool) -> (Reply, AesKey) {
        let app_key = AesKey::random();
        let reply = self
            .send(self.auth_request(&self.login_body(&app_key, force)))
            .await
            .unwrap();
        (reply, app_key)
    }

    async fn login(&self, force: bool) -> Session {
        let (r, app_key) = self.login_raw(force).await;
        assert_eq!(r.status_field(), 1, "login failed: {}", r.text);
        let d = &r.json["Data"];
        assert_eq!(d["UserName"], self.user.as_str());
        assert_eq!(d["ClientId"], self.client_id.as_str());
        Session {
            token: d["AuthToken"].as_str().unwrap().into(),
            sek: app_key.unwrap_key(d["Sek"].as_str().unwrap()).unwrap(),
            expiry: d["TokenExpiry"].as_str().unwrap().into(),
        }
    }

    fn data_request(
        &self,
        s: &Session,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("client_id", &self.client_id)
            .header("client_secret", &self.client_secret)
            .header("Gstin", &self.gstin)
            .header("user_name", &self.user)
            .header("AuthToken", &s.token)
    }

    /// POSTs `payload` encrypted under the SEK; returns the reply and the decrypted `Data`.
    async fn post(&self, s: &Session, path: &str, payload: &Value) -> (Reply, Value) {
        let body = json!({"Data": s.sek.encrypt_b64(payload.to_string().as_bytes())});
        let req = self
            .data_request(s, reqwest::Method::POST, path)
            .header("content-type", "application/json")
            .body(body.to_string());
        let r = self.send(req).await.unwrap();
        let data = decrypt_data(s, &r);
        (r, data)
    }

    async fn get(&self, s: &Session, path: &str) -> (Reply, Value) {
        let r = self
            .send(self.data_request(s, reqwest::Method::GET, path))
            .await
            .unwrap();
        let data = decrypt_data(s, &r);
        (r, data)
    }

    async fn control(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let r = self
            .send(
                self.http
                    .request(method, format!("{}{path}", self.base))
                    .header("content-type", "application/json")
                    .body(body.to_string()),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        r.json
    }

    async fn counters(&self) -> Value {
        self.control(reqwest::Method::GET, "/_sim/counters", Value::Null)
            .await
    }
}

/// The decrypted `Data` of a `Status: 1` reply (Null otherwise).
fn decrypt_data(s: &Session, r: &Reply) -> Value {
    match (&r.json["Status"], &r.json["Data"]) {
        (Value::Number(n), Value::String(d)) if n.as_i64() == Some(1) => {
            serde_json::from_slice(&s.sek.decrypt_b64(d).expect("Data decrypts under the SEK"))
                .unwrap()
        }
        _ => Value::Null,
    }
}

fn invoice(gstin: &str, no: &str, date: &str) -> Value {
    json!({
        "Version": "1.1",
        "TranDtls": {"TaxSch": "GST", "SupTyp": "B2B"},
        "DocDtls": {"Typ": "INV", "No": no, "Dt": date},
        "SellerDtls": {"Gstin": gstin, "LglNm": "Seller", "Addr1": "x", "Loc": "Mumbai", "Pin": 400001, "Stcd": "27"},
        "BuyerDtls": {"Gstin": GSTIN_B, "LglNm": "Buyer", "Pos": "27", "Addr1": "y", "Loc": "Pune", "Pin": 411001, "Stcd": "27"},
        "ItemList": [],
        "ValDtls": {"AssVal": 100.0, "TotInvVal": 118.0},
    })
}

fn hex_sha256(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn login_generate_and_duplicate_reports_the_existing_irn() {
    let (sim, asp) = sim().await;
    let s = asp.login(false).await;
    assert!(s.token.len() >= 20 && s.token.chars().all(|c| c.is_ascii_alphanumeric()));

    let inv = invoice(GSTIN, "INV/2024/001", "15/03/2025");
    let (r, d) = asp.post(&s, INVOICE, &inv).await;
    assert_eq!(r.status_field(), 1, "{}", r.text);
    let irn = d["Irn"].as_str().unwrap().to_string();
    // Document numbers are case-insensitive: the IRN hashes the upper-cased number.
    assert_eq!(irn, hex_sha256(&format!("{GSTIN}INVINV/2024/0012024-25")));
    assert!(d["AckNo"].is_u64());
    assert_eq!(d["Status"], "ACT");
    assert_eq!(d["SignedInvoice"].as_str().unwrap().split('.').count(), 3);
    assert_eq!(d["SignedQRCode"].as_str().unwrap().split('.').count(), 3);
    assert!(d["EwbNo"].is_null());
    NaiveDateTime::parse_from_str(d["AckDt"].as_str().unwrap(), "%Y-%m-%d %H:%M:%S").unwrap();

    let (dup, _) = asp
        .post(&s, INVOICE, &invoice(GSTIN, "inv/2024/001", "15/03/2025"))
        .await;
    dup.assert_error("2150");
    let desc = &dup.json["InfoDtls"][0];
    assert_eq!(desc["InfCd"], "DUPIRN");
    assert_eq!(desc["Desc"]["Irn"], irn.as_str());
    assert_eq!(desc["Desc"]["AckNo"], d["AckNo"]);
    assert_eq!(desc["Desc"]["AckDt"], d["AckDt"]);

    // The same number in the next financial year is a different document.
    let (r, d2) = asp
        .post(&s, INVOICE, &invoice(GSTIN, "INV/2024/001", "01/04/2025"))
        .await;
    assert_eq!(r.status_field(), 1, "{}", r.text);
    assert_ne!(d2["Irn"], d["Irn"]);

    // Lookups, cancellation, master data.
    let (r, got) = asp
        .get(&s, &format!("/eicore/v1.03/Invoice/irn/{irn}"))
        .await;
    assert_eq!(r.status_field(), 1, "{}", r.text);
    assert_eq!(got["AckNo"], d["AckNo"]);
    let (_, by_doc) = asp
        .get(&s, "/eicore/v1.03/Invoice/irnbydocdetails?doctype=INV&docnum=INV/2024/001&docdate=15/03/2025")
        .await;
    assert_eq!(by_doc["Irn"], irn.as_str());
    let (r, c) = asp
        .post(
            &s,
            "/eicore/v1.03/Invoice/Cancel",
            &json!({"Irn": irn, "CnlRsn": "1", "CnlRem": "dup"}),
        )
        .await;
    assert_eq!(r.status_field(), 1, "{}", r.text);
    assert_eq!(c["Irn"], irn.as_str());
    assert!(c["CancelDate"].is_string());
    let (again, _) = asp
        .post(
            &s,
            "/eicore/v1.03/Invoice/Cancel",
            &json!({"Irn": irn, "CnlRsn": "1", "CnlRem": "dup"}),
        )
        .await;
    again.assert_error("9999");
    let (_, got) = asp
        .get(&s, &format!("/eicore/v1.03/Invoice/irn/{irn}"))
        .await;
    assert_eq!(got["Status"], "CNL");
    asp.get(&s, &format!("/eicore/v1.03/Invoice/irn/{}", "0".repeat(64)))
        .await
        .0
        .assert_error("2148");

    let (r, m) = asp
        .get(&s, &format!("/eivital/v1.04/Master/gstin/{GSTIN_B}"))
        .await;
    assert_eq!(r.status_field(), 1, "{}", r.text);
    assert_eq!(m["Gstin"], GSTIN_B);
    assert_eq!(m["StateCode"], 27);
    for key in [
        "TradeName",
        "LegalName",
        "AddrBno",
        "AddrSt",
        "AddrLoc",
        "AddrPncd",
        "TxpType",
        "Status",
        "BlkStatus",
        "DtReg",
        "DtDReg",
    ] {
        assert!(m.get(key).is_some(), "{key} missing: {m}");
    }
    asp.get(&s, "/eivital/v1.04/Master/gstin/29AWGPV7107B1Z1")
        .await
        .0
        .assert_error("3028");

    // Business validation.
    asp.post(&s, INVOICE, &invoice(GSTIN_B, "X1", "15/03/2025"))
        .await
        .0
        .assert_error("2143");
    let mut no_seller = invoice(GSTIN, "X1", "15/03/2025");
    no_seller["SellerDtls"]
        .as_object_mut()
        .unwrap()
        .remove("Gstin");
    asp.post(&s, INVOICE, &no_seller)
        .await
        .0
        .assert_error("2155");
    asp.post(&s, INVOICE, &invoice(GSTIN, "X1", "2025-03-15"))
        .await
        .0
        .assert_error("2140");

    let unknown = asp
        .send(asp.http.get(format!("{}/eicore/v1.03/Nope", asp.base)))
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);
    sim.shutdown().await;
}

#[tokio::test]
async fn repeat_login_within_validity_returns_the_same_token_expiry_and_sek() {
    let (sim, asp) = sim().await;
    let a = asp.login(false).await;
    let b = asp.login(false).await;
    assert_eq!(a.token, b.token);
    assert_eq!(a.expiry, b.expiry);
    assert_eq!(
        a.sek.as_bytes(),
        b.sek.as_bytes(),
        "same SEK, wrapped under each new AppKey"
    );
    // A force flag far from expiry is ignored.
    let c = asp.login(true).await;
    assert_eq!(c.token, a.token);
    let counters = asp.counters().await;
    assert_eq!(counters["auth_calls"], 3);
    assert_eq!(counters["new_tokens"], 1);
    assert_eq!(counters["force_refreshes"], 0);

    // Concurrent cold logins of another user get one token between them.
    let asp_b = std::sync::Arc::new(Asp::new(&sim, GSTIN_B));
    let logins: Vec<_> = (0..8)
        .map(|_| {
            let asp_b = asp_b.clone();
            tokio::spawn(async move { asp_b.login(false).await.token })
        })
        .collect();
    let mut tokens = std::collections::HashSet::new();
    for l in logins {
        tokens.insert(l.await.unwrap());
    }
    assert_eq!(tokens.len(), 1);
    let counters = asp.counters().await;
    assert_eq!(counters["per_gstin"][GSTIN_B]["new_tokens"], 1);
    assert_eq!(counters["per_gstin"][GSTIN_B]["auth_calls"], 8);
    assert_eq!(counters["per_gstin"][GSTIN]["new_tokens"], 1);
}

#[tokio::test]
async fn force_refresh_is_honoured_only_inside_the_window_and_the_old_token_lives_on() {
    let (_sim, asp) = sim_with(|c| {
        c.token_ttl = Duration::from_secs(3600);
        c.force_window = Duration::from_secs(60);
    })
    .await;
    let old = asp.login(false).await;
    assert_eq!(
        asp.login(true).await.token,
        old.token,
        "outside the window: same token"
    );

    // Widen the window past the whole lifetime: the current token is now "near expiry".
    asp.control(
        reqwest::Method::POST,
        "/_sim/knobs",
        json!({"force_window_secs": 7200}),
    )
    .await;
    let new = asp.login(true).await;
    assert_ne!(new.token, old.token);
    assert_ne!(new.sek.as_bytes(), old.sek.as_bytes());
    // Without the force flag the new token is returned again.
    assert_eq!(asp.login(false).await.token, new.token);

    // Both tokens work, each with its own SEK.
    for s in [&old, &new] {
        let (r, _) = asp
            .get(s, &format!("/eivital/v1.04/Master/gstin/{GSTIN}"))
            .await;
        assert_eq!(r.status_field(), 1, "{}", r.text);
    }
    let c = asp.counters().await;
    assert_eq!(
        (c["new_tokens"].as_u64(), c["force_refreshes"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(c["per_gstin"][GSTIN]["force_refreshes"], 1);

    let sessions = asp
        .control(reqwest::Method::GET, "/_sim/sessions", Value::Null)
        .await;
    let listed = &sessions["sessions"][0];
    assert_eq!(listed["token"], new.token.as_str());
    assert_eq!(listed["previous_token"], old.token.as_str());
    assert_eq!(listed["token_expiry"], new.expiry.as_str());

    // The stricter knob: a force refresh revokes the previous token at once.
    asp.control(
        reqwest::Method::POST,
        "/_sim/knobs",
        json!({"force_refresh_revokes_old": true}),
    )
    .await;
    let newest = asp.login(true).await;
    assert_ne!(newest.token, new.token);
    asp.get(&new, &format!("/eivital/v1.04/Master/gstin/{GSTIN}"))
        .await
        .0
        .assert_error("1005");
}

#[tokio::test]
async fn token_expiry_is_ist_wall_clock_and_expired_tokens_are_rejected() {
    let ttl = Duration::from_secs(2);
    let (_sim, asp) = sim_with(|c| c.token_ttl = ttl).await;
    let s = asp.login(false).await;
    let expiry = NaiveDateTime::parse_from_str(&s.expiry, "%Y-%m-%d %H:%M:%S").unwrap();
    let as_utc = expiry - chrono::Duration::minutes(330);
    let expected = Utc::now().naive_utc() + chrono::Duration::from_std(ttl).unwrap();
    let skew = (as_utc - expected).num_seconds().abs();
    assert!(
        skew <= 3,
        "TokenExpiry {} is not IST of now+ttl (off by {skew}s)",
        s.expiry
    );

    // On the real clock (the HTTP boundary rules out a paused one): wait out the 2 s TTL.
    tokio::time::sleep(ttl + Duration::from_millis(200)).await;
    asp.get(&s, &format!("/eivital/v1.04/Master/gstin/{GSTIN}"))
        .await
        .0
        .assert_error("1005");
    let fresh = asp.login(false).await;
    assert_ne!(
        fresh.token, s.token,
        "an expired token is never handed out again"
    );
}

#[tokio::test]
async fn login_errors_use_nic_codes_and_the_configured_http_status() {
    let (_sim, mut asp) = sim().await;
    let key = AesKey::random();

    asp.password = "wrong".into();
    asp.login_raw(false).await.0.assert_error("1019");
    asp.password = PASSWORD.into();

    asp.user = "nobody".into();
    asp.login_raw(false).await.0.assert_error("1017");
    asp.user = USER.into();

    asp.client_secret = "nope".into();
    asp.login_raw(false).await.0.assert_error("1010");
    asp.client_secret = CLIENT_SECRET.into();

    let body = asp.login_body(&key, false);
    let no_id = asp
        .http
        .post(format!("{}{AUTH}", asp.base))
        .header("client_secret", CLIENT_SECRET)
        .header("Gstin", GSTIN)
        .body(body.to_string());
    asp.send(no_id).await.unwrap().assert_error("1011");
    let hyphens_no_gstin = asp
        .http
        .post(format!("{}/eivital/v1.03/auth", asp.base))
        .header("client-id", CLIENT_ID)
        .header("client-secret", CLIENT_SECRET)
        .body(body.to_string());
    asp.send(hyphens_no_gstin)
        .await
        .unwrap()
        .assert_error("1004");

    let garbage = json!({"Data": gstgate::crypto::b64_encode(&[7u8; 256])});
    asp.send(asp.auth_request(&garbage))
        .await
        .unwrap()
        .assert_error("1013");
    asp.send(asp.auth_request(&json!({"Nope": 1})))
        .await
        .unwrap()
        .assert_error("1007");

    let inner = json!({"UserName": USER, "Password": PASSWORD, "AppKey": "c2hvcnQ=", "ForceRefreshAccessToken": false});
    let b64 = gstgate::crypto::b64_encode(inner.to_string().as_bytes());
    let bad_app_key =
        json!({"Data": gstgate::crypto::b64_encode(&asp.public.encrypt(b64.as_bytes()).unwrap())});
    asp.send(asp.auth_request(&bad_app_key))
        .await
        .unwrap()
        .assert_error("1016");

    // Status 0 replies use HTTP 200 by default and the knob's status when set.
    asp.password = "wrong".into();
    assert_eq!(asp.login_raw(false).await.0.status, 200);
    asp.control(
        reqwest::Method::POST,
        "/_sim/knobs",
        json!({"error_http_status": 401}),
    )
    .await;
    let r = asp.login_raw(false).await.0;
    assert_eq!(r.status, 401);
    r.assert_error("1019");

    let c = asp.counters().await;
    assert_eq!(c["auth_calls"], 10, "failed logins count too: {c}");
    assert_eq!(c["new_tokens"], 0);
}

#[tokio::test]
async fn data_calls_check_token_gstin_user_revocation_and_rejection() {
    let (sim, asp) = sim().await;
    let asp_b = Asp::new(&sim, GSTIN_B);
    let s = asp.login(false).await;
    let s_b = asp_b.login(false).await;
    let master = format!("/eivital/v1.04/Master/gstin/{GSTIN}");

    // A's token with B's GSTIN header.
    asp_b.get(&s, &master).await.0.assert_error("1015");
    // Another user name than the token's.
    let r = asp
        .send(
            asp.http
                .get(format!("{}{master}", asp.base))
                .header("client_id", CLIENT_ID)
                .header("client_secret", CLIENT_SECRET)
                .header("Gstin", GSTIN)
                .header("user_name", "someone_else")
                .header("AuthToken", &s.token),
        )
        .await
        .unwrap();
    r.assert_error("1005");
    // A made-up token.
    let fake = Session {
        token: "A".repeat(26),
        ..s.clone()
    };
    asp.get(&fake, &master).await.0.assert_error("1005");
    // Data encrypted under another key.
    let other = Session {
        sek: AesKey::random(),
        ..s.clone()
    };
    asp.post(&other, INVOICE, &invoice(GSTIN, "X1", "15/03/2025"))
        .await
        .0
        .assert_error("2140");

    // Revocation: the token dies at once, the next login issues a new one.
    let v = asp
        .control(
            reqwest::Method::POST,
            "/_sim/revoke",
            json!({"gstin": GSTIN, "username": USER}),
        )
        .await;
    assert_eq!(v["revoked_tokens"], 1);
    asp.get(&s, &master).await.0.assert_error("1005");
    let s2 = asp.login(false).await;
    assert_ne!(s2.token, s.token);
    assert_eq!(asp.get(&s2, &master).await.0.status_field(), 1);

    // Reject every call of GSTIN B only.
    asp.control(
        reqwest::Method::POST,
        "/_sim/reject-tokens",
        json!({"gstin": GSTIN_B, "enabled": true}),
    )
    .await;
    asp_b.get(&s_b, &master).await.0.assert_error("1005");
    assert_eq!(asp.get(&s2, &master).await.0.status_field(), 1);
    asp.control(
        reqwest::Method::POST,
        "/_sim/reject-tokens",
        json!({"gstin": GSTIN_B, "enabled": false}),
    )
    .await;
    assert_eq!(asp_b.get(&s_b, &master).await.0.status_field(), 1);

    let c = asp.counters().await;
    assert_eq!(c["per_gstin"][GSTIN]["token_rejections"], 3, "{c}");
    assert_eq!(c["per_gstin"][GSTIN_B]["token_rejections"], 1, "{c}");
    assert_eq!(c["token_rejections"], 4);
}

#[tokio::test]
async fn each_fault_mode_fails_the_way_it_says() {
    let (sim, asp) = sim().await;
    let s = asp.login(false).await;
    let master = format!("/eivital/v1.04/Master/gstin/{GSTIN}");
    let fault = |mode: &str, count: Value, prefix: Value| json!({"mode": mode, "count": count, "path_prefix": prefix});
    let post = reqwest::Method::POST;

    for (mode, status) in [("status_500", 500), ("status503", 503)] {
        asp.control(
            post.clone(),
            "/_sim/faults",
            fault(mode, json!(1), Value::Null),
        )
        .await;
        let r = asp.get(&s, &master).await.0;
        assert_eq!(r.status, status);
        assert!(r.text.contains("<html>") && r.json.is_null());
        assert_eq!(
            asp.get(&s, &master).await.0.status_field(),
            1,
            "count 1 is used up"
        );
    }

    asp.control(
        post.clone(),
        "/_sim/faults",
        fault("garbage", json!(1), Value::Null),
    )
    .await;
    let r = asp.get(&s, &master).await.0;
    assert_eq!(r.status, 200);
    assert!(
        serde_json::from_str::<Value>(&r.text).is_err(),
        "not JSON: {}",
        r.text
    );

    asp.control(
        post.clone(),
        "/_sim/faults",
        fault("undecryptable", json!(1), Value::Null),
    )
    .await;
    let r = asp
        .send(asp.data_request(&s, reqwest::Method::GET, &master))
        .await
        .unwrap();
    assert_eq!(r.status_field(), 1);
    assert!(s.sek.decrypt_b64(r.json["Data"].as_str().unwrap()).is_err());

    asp.control(
        post.clone(),
        "/_sim/faults",
        fault("reset", json!(1), Value::Null),
    )
    .await;
    let e = asp
        .send(asp.data_request(&s, reqwest::Method::GET, &master))
        .await
        .err()
        .expect("reset");
    assert!(!e.is_timeout(), "closed, not timed out: {e}");

    asp.control(
        post.clone(),
        "/_sim/faults",
        fault("hang", json!(1), Value::Null),
    )
    .await;
    let started = Instant::now();
    let e = asp
        .send(
            asp.data_request(&s, reqwest::Method::GET, &master)
                .timeout(Duration::from_millis(300)),
        )
        .await
        .err()
        .expect("hang");
    assert!(
        e.is_timeout() && started.elapsed() >= Duration::from_millis(300),
        "{e}"
    );

    // A prefix spares other paths; a null count lasts until cleared; login can be faulted too.
    asp.control(
        post.clone(),
        "/_sim/faults",
        fault("status_503", Value::Null, json!("/eicore/")),
    )
    .await;
    assert_eq!(asp.get(&s, &master).await.0.status_field(), 1);
    for _ in 0..3 {
        assert_eq!(
            asp.post(&s, INVOICE, &invoice(GSTIN, "F1", "15/03/2025"))
                .await
                .0
                .status,
            503
        );
    }
    asp.control(reqwest::Method::DELETE, "/_sim/faults", Value::Null)
        .await;
    assert_eq!(
        asp.post(&s, INVOICE, &invoice(GSTIN, "F1", "15/03/2025"))
            .await
            .0
            .status_field(),
        1
    );

    asp.control(
        post.clone(),
        "/_sim/faults",
        fault("undecryptable", json!(1), json!("/eivital/v1.04/auth")),
    )
    .await;
    let (r, app_key) = asp.login_raw(false).await;
    assert_eq!(r.status_field(), 1);
    assert!(app_key
        .unwrap_key(r.json["Data"]["Sek"].as_str().unwrap())
        .is_err());
    assert_eq!(asp.login(false).await.token, s.token);

    // A hanging request does not keep the simulator from stopping.
    asp.control(
        post.clone(),
        "/_sim/faults",
        fault("hang", Value::Null, Value::Null),
    )
    .await;
    let hung = asp.data_request(&s, reqwest::Method::GET, &master);
    let pending = tokio::spawn(async move { hung.send().await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    sim.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(
        pending.await.unwrap().is_err(),
        "the hung request fails once the simulator stops"
    );
}

#[tokio::test]
async fn counters_and_request_log_show_what_the_client_sent() {
    let (_sim, asp) = sim().await;
    let s = asp.login(false).await;
    let inv = invoice(GSTIN, "LOG/1", "15/03/2025");
    asp.post(&s, INVOICE, &inv).await;
    asp.get(&s, &format!("/eivital/v1.04/Master/gstin/{GSTIN}"))
        .await;

    let c = asp.counters().await;
    assert_eq!(c["auth_calls"], 1);
    assert_eq!(c["requests"], 2);
    assert_eq!(c["new_tokens"], 1);
    assert_eq!(c["per_gstin"][GSTIN]["requests"], 2);
    assert_eq!(c["generates"], 1, "the generate, not the master lookup");
    assert_eq!(c["per_irp"]["NIC1"]["requests"], 2);

    let log = asp
        .control(reqwest::Method::GET, "/_sim/requests?limit=2", Value::Null)
        .await;
    let log = log.as_array().unwrap();
    assert_eq!(log.len(), 2);
    let gen = &log[0];
    assert_eq!(gen["method"], "POST");
    assert_eq!(gen["path"], INVOICE);
    let h = &gen["headers"];
    assert_eq!(h["client_id"], CLIENT_ID);
    assert_eq!(h["client_secret"], CLIENT_SECRET);
    assert_eq!(h["gstin"], GSTIN);
    assert_eq!(h["user_name"], USER);
    assert_eq!(h["authtoken"], s.token.as_str());
    let body: Value = serde_json::from_str(gen["body"].as_str().unwrap()).unwrap();
    let data = body["Data"].as_str().unwrap();
    assert!(!data.contains("LOG/1"), "the body on the wire is encrypted");
    assert!(s.sek.decrypt_b64(data).is_ok());
    assert_eq!(log[1]["method"], "GET");

    // Control calls are neither logged nor counted; reset zeroes everything.
    asp.control(reqwest::Method::POST, "/_sim/counters/reset", Value::Null)
        .await;
    let c = asp.counters().await;
    assert_eq!(
        c,
        json!({"auth_calls":0,"force_refreshes":0,"new_tokens":0,"token_rejections":0,"requests":0,"otp_requests":0,"refreshes":0,"blocked_logins":0,"generates":0,"per_gstin":{},"per_irp":{}})
    );
    let pem = asp
        .send(asp.http.get(format!("{}/_sim/public-key", asp.base)))
        .await
        .unwrap();
    assert!(pem.text.starts_with("-----BEGIN PUBLIC KEY-----"));
}

#[tokio::test]
async fn plain_mode_and_duplicate_irn_knob_and_latency() {
    let (_sim, asp) = sim_with(|c| {
        c.plain = true;
        c.allow_duplicate_irn = true;
    })
    .await;
    let s = asp.login(false).await;
    let inv = invoice(GSTIN, "PLAIN/1", "15/03/2025");
    let req = asp
        .data_request(&s, reqwest::Method::POST, INVOICE)
        .header("content-type", "application/json")
        .body(json!({"Data": inv}).to_string());
    let r = asp.send(req).await.unwrap();
    assert_eq!(r.status_field(), 1, "{}", r.text);
    let irn = r.json["Data"]["Irn"].as_str().unwrap().to_string();
    // Encrypted Data is still accepted, and a repeat answers success with the same IRN.
    let (r, d) = asp.post(&s, INVOICE, &inv).await;
    assert_eq!(r.status_field(), 1, "{}", r.text);
    assert_eq!(d["Irn"], irn.as_str());

    asp.control(
        reqwest::Method::POST,
        "/_sim/knobs",
        json!({"latency_ms": 250}),
    )
    .await;
    let started = Instant::now();
    let r = asp
        .send(asp.data_request(
            &s,
            reqwest::Method::GET,
            &format!("/eivital/v1.04/Master/gstin/{GSTIN}"),
        ))
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(
        r.json["Data"]["Gstin"], GSTIN,
        "GETs answer plain in plain mode"
    );
}

#[tokio::test]
async fn key_file_is_generated_private_and_reused() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("sim.pem");
    let public = dir.path().join("public.pem");
    let a = start(SimConfig {
        key_file: Some(key.clone()),
        public_key_out: Some(public.clone()),
        ..config()
    })
    .await
    .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    assert_eq!(
        std::fs::read_to_string(&public).unwrap(),
        a.public_key_pem()
    );
    let b = start(SimConfig {
        key_file: Some(key.clone()),
        ..config()
    })
    .await
    .unwrap();
    assert_eq!(a.public_key_pem(), b.public_key_pem());

    // Debug output of the configuration never shows a password or client secret.
    let debug = format!("{:?}", config());
    assert!(
        !debug.contains(PASSWORD) && !debug.contains(CLIENT_SECRET),
        "{debug}"
    );

    // A bad key file and a taken port are errors, not panics.
    let bad = dir.path().join("bad.pem");
    std::fs::write(&bad, "not a key").unwrap();
    let e = start(SimConfig {
        key_file: Some(bad),
        ..config()
    })
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("bad.pem"), "{e}");
    let e = start(SimConfig {
        listen: a.local_addr(),
        ..config()
    })
    .await
    .err()
    .unwrap();
    assert!(e.to_string().contains("cannot listen"), "{e}");
}

#[tokio::test]
async fn the_binary_prints_its_address_and_serves() {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_gstgate"))
        .args(["sim", "--listen", "127.0.0.1:0", "--key-file"])
        .arg(key_file())
        .args([
            "--user",
            &format!("{GSTIN}:{USER}:{PASSWORD}"),
            "--client",
            &format!("{CLIENT_ID}:{CLIENT_SECRET}"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let addr = line
        .strip_prefix("gstgate-sim listening on http://")
        .expect(&line);
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    let pem = reqwest::get(format!("http://{addr}/_sim/public-key"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let public = PublicKey::from_pem_or_cert(pem.as_bytes()).unwrap();
    let asp = Asp {
        http: reqwest::Client::new(),
        base: format!("http://{addr}"),
        public,
        gstin: GSTIN.into(),
        user: USER.into(),
        password: PASSWORD.into(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
    };
    asp.login(false).await;
    child.start_kill().unwrap();
    let _ = child.wait().await;

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_gstgate"))
        .args(["sim", "--listen", "127.0.0.1:0", "--user", "nonsense"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("GSTIN:USERNAME:PASSWORD"));
}

/// Control calls take a JSON body whatever its `Content-Type`: none, or what `curl -d` sends.
#[tokio::test]
async fn control_bodies_need_no_json_content_type() {
    let (_sim, asp) = sim().await;
    for content_type in [None, Some("application/x-www-form-urlencoded")] {
        let mut req = asp
            .http
            .post(format!("{}/_sim/knobs", asp.base))
            .body(r#"{"latency_ms": 7}"#);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let r = asp.send(req).await.unwrap();
        assert_eq!(r.status, 200, "{content_type:?}: {}", r.text);
        assert_eq!(r.json["latency_ms"], 7);
    }
    // A body that is not the expected JSON is still refused, saying why.
    let r = asp
        .send(
            asp.http
                .post(format!("{}/_sim/knobs", asp.base))
                .body(r#"{"latency": 7}"#),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text);
    assert!(
        r.json["error"].as_str().unwrap().contains("latency"),
        "{}",
        r.text
    );
}

/// Under `--path-prefix`, a fault's `path_prefix` is matched against the path as the client
/// sends it, prefix included; a prefix outside it, which could never match, is refused.
#[tokio::test]
async fn a_fault_prefix_includes_the_path_prefix_or_is_refused() {
    let (_sim, asp) = sim_with(|c| c.path_prefix = Some("/gsp".into())).await;
    let url = format!("{}/gsp/eicore/v1.03/Invoice/irn/X", asp.base);
    let r = asp
        .send(
            asp.http
                .post(format!("{}/_sim/faults", asp.base))
                .body(r#"{"mode": "status_503", "path_prefix": "/eicore/"}"#),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text);
    let error = r.json["error"].as_str().unwrap();
    assert!(
        error.contains("can never match") && error.contains("\"/gsp/eicore/\""),
        "{error}"
    );
    assert_eq!(asp.send(asp.http.get(&url)).await.unwrap().status, 200);

    asp.control(
        reqwest::Method::POST,
        "/_sim/faults",
        json!({"mode": "status_503", "count": 1, "path_prefix": "/gsp/eicore/"}),
    )
    .await;
    assert_eq!(asp.send(asp.http.get(&url)).await.unwrap().status, 503);
    assert_eq!(asp.send(asp.http.get(&url)).await.unwrap().status, 200);
}

/// A user's password changed through the control API: the old one is refused with 1019, the
/// new one logs in, and an unknown user is refused.
#[tokio::test]
async fn a_changed_password_refuses_the_old_one() {
    let (_sim, mut asp) = sim().await;
    asp.login(false).await;
    asp.control(
        reqwest::Method::POST,
        "/_sim/users/password",
        json!({"gstin": GSTIN.to_lowercase(), "username": USER, "password": "n3w-Pass"}),
    )
    .await;
    asp.login_raw(false).await.0.assert_error("1019");
    asp.password = "n3w-Pass".into();
    asp.login(false).await;
    let r = asp
        .send(
            asp.http
                .post(format!("{}/_sim/users/password", asp.base))
                .body(json!({"gstin": GSTIN, "username": "nobody", "password": "x"}).to_string()),
        )
        .await
        .unwrap();
    assert_eq!(r.status, 400, "{}", r.text);
}
