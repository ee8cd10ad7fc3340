//! The simulator's GSTN taxpayer (returns) protocol, driven over loopback against the real
//! `gstgate sim` process by a client that does the real crypto (RSA app key, AES OTP and SEK,
//! REK + HMAC with GSTN's extra base64 layer) with `gstgate::crypto`, as a GSP client would.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Sim, SimOpts, CLIENT_ID, CLIENT_SECRET, GSTIN, PASSWORD, USER};
use gstgate::crypto::{b64_decode, b64_encode, gstn_app_key, AesKey, PublicKey};
use serde_json::{json, Value};

const AUTH: &str = "/taxpayerapi/v1.0/authenticate";
const GSTR1: &str = "/taxpayerapi/v1.0/returns/gstr1";
const PERIOD: &str = "032025";

async fn sim_with(token_ttl: &'static str, extra: &[&str]) -> Sim {
    Sim::start(SimOpts {
        token_ttl,
        extra: extra.iter().map(|s| s.to_string()).collect(),
        ..SimOpts::default()
    })
    .await
}

/// An HTTP reply: status, raw body, and the body as JSON when it is JSON.
struct Reply {
    text: String,
    json: Value,
}

impl Reply {
    #[track_caller]
    fn assert_ok(&self) {
        assert_eq!(
            self.json["status_cd"], "1",
            "expected status_cd 1: {}",
            self.text
        );
    }

    #[track_caller]
    fn assert_error(&self, code: &str) {
        assert_eq!(
            self.json["status_cd"], "0",
            "expected status_cd 0: {}",
            self.text
        );
        assert_eq!(self.json["error"]["error_cd"], code, "{}", self.text);
        assert!(self.json["error"]["message"].is_string(), "{}", self.text);
    }
}

/// A GSTN session as the client holds it.
struct Session {
    token: String,
    sek: AesKey,
    expiry: Value,
}

/// The client side of the GSTN protocol.
struct Gstn {
    http: reqwest::Client,
    base: String,
    public: PublicKey,
    gstin: String,
    state_cd: String,
    user: String,
    client_id: String,
    client_secret: String,
}

impl Gstn {
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
            state_cd: GSTIN[..2].into(),
            user: USER.into(),
            client_id: CLIENT_ID.into(),
            client_secret: CLIENT_SECRET.into(),
        }
    }

    /// The seven headers of every call; `txn` is unique per request.
    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        static TXN: AtomicU64 = AtomicU64::new(1);
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("clientid", &self.client_id)
            .header("client-secret", &self.client_secret)
            .header("state-cd", &self.state_cd)
            .header("ip-usr", "127.0.0.1")
            .header("txn", format!("TXN{}", TXN.fetch_add(1, Ordering::Relaxed)))
            .header("username", &self.user)
            .header("gstin", &self.gstin)
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> Reply {
        let res = req.send().await.unwrap();
        let text = res.text().await.unwrap();
        let json = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply { text, json }
    }

    async fn authenticate(&self, body: Value) -> Reply {
        self.send(self.request(reqwest::Method::POST, AUTH).json(&body))
            .await
    }

    /// B64(RSA(app key bytes)): the 32 ASCII bytes themselves, no base64 layer before RSA.
    fn rsa_app_key(&self, app_key: &AesKey) -> String {
        b64_encode(&self.public.encrypt(app_key.as_bytes()).unwrap())
    }

    async fn otp_request(&self, app_key: &AesKey) -> Reply {
        self.authenticate(json!({
            "action": "OTPREQUEST",
            "username": self.user,
            "app_key": self.rsa_app_key(app_key),
        }))
        .await
    }

    async fn auth_token(&self, app_key: &AesKey, otp: &str) -> Reply {
        self.authenticate(json!({
            "action": "AUTHTOKEN",
            "username": self.user,
            "app_key": self.rsa_app_key(app_key),
            "otp": app_key.encrypt_b64(otp.as_bytes()),
        }))
        .await
    }

    /// The OTP the taxpayer would receive, read from the simulator.
    async fn pending_otp(&self) -> Option<String> {
        let res = self
            .http
            .get(format!("{}/_sim/otp", self.base))
            .query(&[
                ("gstin", self.gstin.as_str()),
                ("username", self.user.as_str()),
            ])
            .send()
            .await
            .unwrap();
        if res.status() == 404 {
            return None;
        }
        assert!(res.status().is_success());
        let v: Value = res.json().await.unwrap();
        Some(v["otp"].as_str().unwrap().to_string())
    }

    fn session_from(app_key: &AesKey, r: &Reply) -> Session {
        r.assert_ok();
        Session {
            token: r.json["auth_token"].as_str().unwrap().into(),
            sek: app_key.unwrap_key(r.json["sek"].as_str().unwrap()).unwrap(),
            expiry: r.json["expiry"].clone(),
        }
    }

    /// OTPREQUEST, read the OTP, AUTHTOKEN.
    async fn login(&self) -> Session {
        let app_key = gstn_app_key();
        self.otp_request(&app_key).await.assert_ok();
        let otp = self.pending_otp().await.expect("an OTP is pending");
        Self::session_from(&app_key, &self.auth_token(&app_key, &otp).await)
    }

    /// REFRESHTOKEN with `token`, whose SEK is `sek`; returns the reply and the new app key.
    async fn refresh_raw(&self, token: &str, sek: &AesKey) -> (Reply, AesKey) {
        let new_key = gstn_app_key();
        let r = self
            .authenticate(json!({
                "action": "REFRESHTOKEN",
                "username": self.user,
                "auth_token": token,
                "app_key": sek.encrypt_b64(new_key.as_bytes()),
            }))
            .await;
        (r, new_key)
    }

    fn data_request(
        &self,
        s: &Session,
        method: reqwest::Method,
        path: &str,
    ) -> reqwest::RequestBuilder {
        self.request(method, path)
            .header("auth-token", &s.token)
            .header("ret_period", PERIOD)
    }

    async fn retsum(&self, s: &Session, path: &str) -> Reply {
        self.send(self.data_request(s, reqwest::Method::GET, path).query(&[
            ("action", "RETSUM"),
            ("gstin", self.gstin.as_str()),
            ("ret_period", PERIOD),
        ]))
        .await
    }

    /// RETSAVE: data = B64(AES(SEK, B64(JSON))), hmac = B64(HMAC(SEK, B64(JSON))).
    async fn retsave(&self, s: &Session, payload: &Value, hmac_key: &AesKey) -> Reply {
        let inner = b64_encode(payload.to_string().as_bytes());
        let body = json!({
            "action": "RETSAVE",
            "data": s.sek.encrypt_b64(inner.as_bytes()),
            "hmac": hmac_key.hmac_b64(inner.as_bytes()),
        });
        self.send(
            self.data_request(s, reqwest::Method::PUT, GSTR1)
                .json(&body),
        )
        .await
    }

    async fn knobs(&self, body: Value) -> Value {
        let res = self
            .http
            .post(format!("{}/_sim/knobs", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success());
        res.json().await.unwrap()
    }
}

/// Opens a GSTN data reply: unwrap the REK with the SEK, decrypt `data` with the REK to
/// B64(JSON), check the HMAC over that text, then decode the extra base64 layer.
fn open_rek_reply(s: &Session, r: &Reply) -> Result<Value, &'static str> {
    r.assert_ok();
    let rek = s.sek.unwrap_key(r.json["rek"].as_str().unwrap()).unwrap();
    let b64_json = rek.decrypt_b64(r.json["data"].as_str().unwrap()).unwrap();
    rek.verify_hmac_b64(&b64_json, r.json["hmac"].as_str().unwrap())
        .map_err(|_| "hmac mismatch")?;
    let json =
        b64_decode(std::str::from_utf8(&b64_json).unwrap()).expect("data holds base64 of JSON");
    Ok(serde_json::from_slice(&json).unwrap())
}

/// The simulator's view of this user's GSTN sessions.
async fn gstn_sessions(sim: &Sim) -> Vec<Value> {
    sim.get_json("/_sim/sessions").await["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["api"] == "gstn")
        .cloned()
        .collect()
}

#[tokio::test]
async fn otp_login_gives_a_token_whose_sek_opens_return_data_with_the_extra_base64_layer() {
    let sim = sim_with("6h", &[]).await;
    let g = Gstn::new(&sim);
    let app_key = gstn_app_key();
    assert_eq!(g.pending_otp().await, None, "404 before any OTPREQUEST");
    g.otp_request(&app_key).await.assert_ok();
    assert_eq!(sim.count(GSTIN, "otp_requests").await, 1);
    let otp = g.pending_otp().await.unwrap();
    assert!(
        otp.len() == 6 && otp.bytes().all(|b| b.is_ascii_digit()),
        "{otp}"
    );

    // The portal pairs the OTP with the app key it was requested under: another key is
    // refused, and the OTP stays usable with the right one.
    g.auth_token(&gstn_app_key(), &otp)
        .await
        .assert_error("AUTH4034");
    let r = g.auth_token(&app_key, &otp).await;
    let s = Gstn::session_from(&app_key, &r);
    assert_eq!(s.expiry, json!(360), "whole minutes are an integer");
    assert!(
        s.token.len() == 32 && s.token.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{}",
        s.token
    );
    // The OTP is used up.
    assert_eq!(g.pending_otp().await, None);
    g.auth_token(&app_key, &otp).await.assert_error("AUTH4034");
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 4);
    assert_eq!(sim.count(GSTIN, "new_tokens").await, 1);

    let sum = open_rek_reply(&s, &g.retsum(&s, GSTR1).await).expect("hmac verifies");
    assert_eq!(
        (sum["gstin"].as_str(), sum["ret_period"].as_str()),
        (Some(GSTIN), Some(PERIOD))
    );
    assert!(sum["sec_sum"].is_array(), "{sum}");
    let r3b = open_rek_reply(&s, &g.retsum(&s, "/taxpayerapi/v1.1/returns/gstr3b").await).unwrap();
    assert_eq!(r3b["gstin"], GSTIN);
    assert!(r3b["sup_details"].is_object(), "{r3b}");

    // ret_period is required, and must agree with the query; the query GSTIN must be ours.
    let no_period = g
        .send(
            g.request(reqwest::Method::GET, GSTR1)
                .header("auth-token", &s.token)
                .query(&[
                    ("action", "RETSUM"),
                    ("gstin", GSTIN),
                    ("ret_period", PERIOD),
                ]),
        )
        .await;
    no_period.assert_error("RET11416");
    let other_gstin = g
        .send(g.data_request(&s, reqwest::Method::GET, GSTR1).query(&[
            ("action", "RETSUM"),
            ("gstin", "27AAACR5055K1Z7"),
            ("ret_period", PERIOD),
        ]))
        .await;
    other_gstin.assert_error("RET11417");

    // RETSAVE checks the HMAC under the SEK and answers a reference id the same way.
    let payload = json!({"gstin": GSTIN, "fp": PERIOD, "b2b": []});
    let saved = open_rek_reply(&s, &g.retsave(&s, &payload, &s.sek).await).unwrap();
    assert!(
        saved["reference_id"]
            .as_str()
            .is_some_and(|r| !r.is_empty()),
        "{saved}"
    );
    g.retsave(&s, &payload, &AesKey::random())
        .await
        .assert_error("RET11403");

    // The tamper knob makes every rek reply fail its HMAC check.
    g.knobs(json!({"tamper_hmac": true})).await;
    assert_eq!(
        open_rek_reply(&s, &g.retsum(&s, GSTR1).await),
        Err("hmac mismatch")
    );
    g.knobs(json!({"tamper_hmac": false})).await;
    open_rek_reply(&s, &g.retsum(&s, GSTR1).await).unwrap();

    // The session shows up (token and SEK) for the log-leak tests, and revoke kills it.
    let views = gstn_sessions(&sim).await;
    assert_eq!(views.len(), 1);
    assert_eq!(views[0]["token"], s.token.as_str());
    assert_eq!(views[0]["sek"], b64_encode(s.sek.as_bytes()).as_str());
    assert!(views[0]["session_end"].is_string());
    sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
        .await;
    g.retsum(&s, GSTR1).await.assert_error("AUTH4033");
    assert!(gstn_sessions(&sim).await.is_empty());
    assert_eq!(sim.count(GSTIN, "token_rejections").await, 1);
}

#[tokio::test]
async fn wrong_otp_state_code_disabled_access_and_too_many_sessions_are_refused() {
    let sim = sim_with("6h", &["--fixed-otp", "575757", "--gstn-max-sessions", "2"]).await;
    let g = Gstn::new(&sim);
    let app_key = gstn_app_key();
    g.otp_request(&app_key).await.assert_ok();
    assert_eq!(g.pending_otp().await.as_deref(), Some("575757"));
    g.auth_token(&app_key, "123456")
        .await
        .assert_error("AUTH4034");
    // A wrong guess does not use the OTP up.
    Gstn::session_from(&app_key, &g.auth_token(&app_key, "575757").await);

    let mut bad_state = Gstn::new(&sim);
    bad_state.state_cd = "29".into();
    bad_state
        .otp_request(&app_key)
        .await
        .assert_error("AUTH4041");
    let missing = g
        .send(
            g.http
                .post(format!("{}{AUTH}", g.base))
                .header("clientid", CLIENT_ID)
                .header("client-secret", CLIENT_SECRET)
                .header("gstin", GSTIN)
                .json(&json!({"action": "OTPREQUEST", "username": USER, "app_key": g.rsa_app_key(&app_key)})),
        )
        .await;
    missing.assert_error("AUTH4040");
    let mut bad_client = Gstn::new(&sim);
    bad_client.client_secret = PASSWORD.into();
    bad_client
        .otp_request(&app_key)
        .await
        .assert_error("AUTH4010");
    // An app key encrypted under another public key is GSTN's TEC4002.
    let other = gstgate::crypto::KeyPair::generate().unwrap().public_key();
    g.authenticate(json!({
        "action": "OTPREQUEST",
        "username": USER,
        "app_key": b64_encode(&other.encrypt(app_key.as_bytes()).unwrap()),
    }))
    .await
    .assert_error("TEC4002");

    sim.control(
        "/_sim/gstn/access",
        json!({"gstin": GSTIN, "username": USER, "enabled": false}),
    )
    .await;
    g.otp_request(&app_key).await.assert_error("AUTH4037");
    g.auth_token(&app_key, "575757")
        .await
        .assert_error("AUTH4037");
    sim.control(
        "/_sim/gstn/access",
        json!({"gstin": GSTIN, "username": USER, "enabled": true}),
    )
    .await;

    // Two live portal sessions are the limit here; a third OTP login is AUTH403.
    let second = g.login().await;
    let app_key = gstn_app_key();
    g.otp_request(&app_key).await.assert_ok();
    g.auth_token(&app_key, "575757")
        .await
        .assert_error("AUTH403");
    assert_eq!(gstn_sessions(&sim).await.len(), 2);
    // Ending the user's sessions on the portal frees the slots (and kills the tokens).
    sim.control(
        "/_sim/gstn/end-session",
        json!({"gstin": GSTIN, "username": USER}),
    )
    .await;
    g.retsum(&second, GSTR1).await.assert_error("AUTH4038");
    Gstn::session_from(&app_key, &g.auth_token(&app_key, "575757").await);

    // The knob changes the fixed OTP at run time; null goes back to random OTPs.
    let k = g.knobs(json!({"fixed_otp": "111111"})).await;
    assert_eq!(k["fixed_otp"], "111111");
    g.otp_request(&app_key).await.assert_ok();
    assert_eq!(g.pending_otp().await.as_deref(), Some("111111"));
    let k = g.knobs(json!({"fixed_otp": null})).await;
    assert!(k["fixed_otp"].is_null());
}

#[tokio::test]
async fn refresh_replaces_token_and_sek_within_a_portal_session_whose_end_does_not_move() {
    let sim = sim_with("2s", &[]).await;
    let g = Gstn::new(&sim);
    let s = g.login().await;
    assert_eq!(s.expiry, json!(0.0333), "2 s in minutes, four decimals");
    let end = gstn_sessions(&sim).await[0]["session_end"].clone();
    open_rek_reply(&s, &g.retsum(&s, GSTR1).await).unwrap();

    // Sleeping past the 2-second token is the point of this step.
    tokio::time::sleep(Duration::from_millis(2300)).await;
    g.retsum(&s, GSTR1).await.assert_error("AUTH4038");

    // The expired token still refreshes: new token, new SEK under the new app key.
    let (r, new_key) = g.refresh_raw(&s.token, &s.sek).await;
    let s2 = Gstn::session_from(&new_key, &r);
    assert_ne!(s2.token, s.token);
    assert_ne!(s2.sek.as_bytes(), s.sek.as_bytes());
    assert_eq!(s2.expiry, json!(0.0333));
    open_rek_reply(&s2, &g.retsum(&s2, GSTR1).await).unwrap();
    // The replaced token is dead for data calls and for another refresh.
    g.retsum(&s, GSTR1).await.assert_error("AUTH4033");
    g.refresh_raw(&s.token, &s.sek)
        .await
        .0
        .assert_error("AUTH4033");
    let views = gstn_sessions(&sim).await;
    assert_eq!(views.len(), 1);
    assert_eq!(views[0]["token"], s2.token.as_str());
    assert_eq!(
        views[0]["session_end"], end,
        "a refresh does not extend the portal session"
    );
    assert_eq!(sim.count(GSTIN, "refreshes").await, 1);
    assert_eq!(sim.count(GSTIN, "otp_requests").await, 1);

    // A portal session of 1 s: once it ends, refresh needs a new OTP login (AUTH4038).
    g.knobs(json!({"gstn_session_ttl_secs": 1, "token_ttl_secs": 60}))
        .await;
    let short = g.login().await;
    assert_eq!(short.expiry, json!(1));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    g.retsum(&short, GSTR1).await.assert_error("AUTH4038");
    g.refresh_raw(&short.token, &short.sek)
        .await
        .0
        .assert_error("AUTH4038");
    // Ending the first session from the control API does the same to it.
    sim.control(
        "/_sim/gstn/end-session",
        json!({"gstin": GSTIN, "username": USER}),
    )
    .await;
    g.refresh_raw(&s2.token, &s2.sek)
        .await
        .0
        .assert_error("AUTH4038");
    assert_eq!(sim.count(GSTIN, "refreshes").await, 1);
}
