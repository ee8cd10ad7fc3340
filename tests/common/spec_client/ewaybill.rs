//! NIC e-way bill client: `ACCESSTOKEN` login, `data` under the SEK, and GETs whose `data` is
//! under a per-reply REK (itself under the SEK) with an HMAC the client must check.

use chrono::{DateTime, Utc};
use reqwest::Method;
use rsa::RsaPublicKey;
use serde_json::{json, Value};

use super::crypto::{
    aes_decrypt_b64, aes_encrypt_b64, b64, public_key_from_pem, random_key, rsa_encrypt_b64, unb64,
    unwrap_key_b64, verify_hmac_b64, Key,
};
use super::{
    http_client, is_one, json_from, required_str, send, ApiFailure, ClientError, Reply, SpecConfig,
};

/// The login path.
pub const AUTH_PATH: &str = "/ewaybillapi/v1.03/auth";

/// Generate, cancel and the other `action` calls.
pub const EWAYAPI_PATH: &str = "/ewaybillapi/v1.03/ewayapi";

/// Codes that mean the token is no good (105 none sent, 106 expired, 238 invalid): log in
/// again once.
pub const TOKEN_CODES: [&str; 3] = ["105", "106", "238"];

/// NIC sends no expiry: an e-way bill token lives six hours from issue.
const TOKEN_LIFETIME: chrono::Duration = chrono::Duration::hours(6);

struct Session {
    token: String,
    sek: Key,
    expires_at: DateTime<Utc>,
}

/// An e-way bill API client that keeps its own session.
pub struct EwaybillClient {
    /// What the client was configured with (the public key is read once, by [`Self::new`]).
    pub config: SpecConfig,
    /// `ACCESSTOKEN` requests sent by [`Self::login`], automatic ones included.
    pub logins: u32,
    public_key: RsaPublicKey,
    session: Option<Session>,
    http: reqwest::Client,
}

/// The codes of an `error` field: base64 of `{"errorCodes":"238,"}` as NIC sends it, that JSON
/// as text, or the plain object; codes may be a comma-separated list or a number.
pub fn error_codes(error: &Value) -> Vec<String> {
    let object = match error {
        Value::String(s) => unb64(s, "error")
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            .or_else(|| serde_json::from_str::<Value>(s).ok())
            .unwrap_or(Value::Null),
        other => other.clone(),
    };
    match &object["errorCodes"] {
        Value::String(s) => s
            .split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(str::to_string)
            .collect(),
        Value::Number(n) => vec![n.to_string()],
        _ => vec![],
    }
}

/// `status: "1"` → the body; otherwise its `error` codes as an ApiFailure.
fn envelope(reply: &Reply) -> Result<&Value, ClientError> {
    if is_one(&reply.body["status"]) {
        return Ok(&reply.body);
    }
    let codes = error_codes(&reply.body["error"]);
    Err(ClientError::Api(ApiFailure {
        http_status: reply.status,
        message: if codes.is_empty() {
            "reply is not status 1 and names no error code".into()
        } else {
            "status 0".into()
        },
        codes,
        body: reply.body.clone(),
    }))
}

/// Opens a GET reply `{"rek","data","hmac"}`: REK = AES⁻¹(SEK, rek), JSON = AES⁻¹(REK, data),
/// and HMAC-SHA256(REK, B64(JSON)) must equal `hmac` (checked in constant time) — a reply that
/// fails the check is a crypto error, never data.
pub fn open_rek_reply(sek: &Key, reply: &Value) -> Result<Value, ClientError> {
    let field = |name: &str| {
        reply[name]
            .as_str()
            .ok_or_else(|| ClientError::Crypto(format!("reply has no `{name}` text")))
    };
    let rek = unwrap_key_b64(sek, field("rek")?, "rek")?;
    let json = aes_decrypt_b64(&rek, field("data")?, "data")?;
    verify_hmac_b64(&rek, b64(&json).as_bytes(), field("hmac")?)?;
    json_from(&json, "data")
}

impl EwaybillClient {
    /// A client without a session; fails only when the public key PEM does not parse.
    pub fn new(config: SpecConfig) -> Result<Self, ClientError> {
        Ok(Self {
            public_key: public_key_from_pem(&config.public_key_pem)?,
            config,
            logins: 0,
            session: None,
            http: http_client(),
        })
    }

    /// The server key logins are encrypted with.
    pub fn public_key(&self) -> &RsaPublicKey {
        &self.public_key
    }

    /// The current `authtoken`, if logged in.
    pub fn token(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.token.as_str())
    }

    /// The current SEK, so that a test can build or open replies the way this client does.
    pub fn sek(&self) -> Option<Key> {
        self.session.as_ref().map(|s| s.sek)
    }

    /// When the client believes its token expires: six hours after the login that issued it.
    pub fn token_expiry(&self) -> Option<DateTime<Utc>> {
        self.session.as_ref().map(|s| s.expires_at)
    }

    /// Forgets the session, as a restarted client would.
    pub fn clear_session(&mut self) {
        self.session = None;
    }

    /// The three headers of every call, login included.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let c = &self.config;
        self.http
            .request(method, c.url(path))
            .header("client-id", &c.client_id)
            .header("client-secret", &c.client_secret)
            .header("Gstin", &c.gstin)
    }

    async fn post_login(&self, payload: &Value, key: &RsaPublicKey) -> Result<Reply, ClientError> {
        // As for e-invoice: base64 of the JSON goes into RSA.
        let data = rsa_encrypt_b64(key, b64(payload.to_string().as_bytes()).as_bytes())?;
        send(
            self.request(Method::POST, AUTH_PATH)
                .json(&json!({ "Data": data })),
        )
        .await
    }

    /// Sends a login payload (plain JSON, before the base64 and RSA layers) encrypted with any
    /// key; returns the whole success reply as is, or the refusal. Keeps no session.
    pub async fn login_raw(
        &self,
        payload: &Value,
        encrypt_with: &RsaPublicKey,
    ) -> Result<Value, ClientError> {
        envelope(&self.post_login(payload, encrypt_with).await?).cloned()
    }

    /// Logs in with a fresh app key and keeps the token and SEK; returns the token.
    pub async fn login(&mut self) -> Result<String, ClientError> {
        let app_key = random_key();
        let payload = json!({
            "action": "ACCESSTOKEN",
            "username": self.config.username,
            "password": self.config.password,
            "app_key": b64(&app_key),
        });
        self.logins += 1;
        let issued = Utc::now();
        let reply = self.post_login(&payload, &self.public_key).await?;
        let body = envelope(&reply)?;
        let token = required_str(&reply, body, "authtoken")?.to_string();
        let sek = unwrap_key_b64(&app_key, required_str(&reply, body, "sek")?, "sek")?;
        self.session = Some(Session {
            token: token.clone(),
            sek,
            expires_at: issued + TOKEN_LIFETIME,
        });
        Ok(token)
    }

    /// One data call with the current session, no retry: the success body and the SEK it is
    /// under. An `action` payload is encrypted here, per attempt, because a re-login between
    /// attempts brings a new SEK.
    async fn send_data(
        &self,
        method: Method,
        path_and_query: &str,
        action: Option<(&str, &Value)>,
    ) -> Result<(Value, Key), ClientError> {
        let s = self
            .session
            .as_ref()
            .ok_or_else(|| ClientError::Usage("no e-way bill session".into()))?;
        let mut req = self
            .request(method, path_and_query)
            .header("authtoken", &s.token);
        if let Some((action, payload)) = action {
            req = req.json(&json!({
                "action": action,
                "data": aes_encrypt_b64(&s.sek, payload.to_string().as_bytes()),
            }));
        }
        let reply = send(req).await?;
        Ok((envelope(&reply)?.clone(), s.sek))
    }

    /// A data call as a real client makes it: logs in first if it has no live session, and on
    /// 105, 106 or 238 logs in again once and retries once.
    async fn call(
        &mut self,
        method: Method,
        path_and_query: &str,
        action: Option<(&str, &Value)>,
    ) -> Result<(Value, Key), ClientError> {
        if self
            .session
            .as_ref()
            .is_none_or(|s| s.expires_at <= Utc::now())
        {
            self.login().await?;
        }
        match self.send_data(method.clone(), path_and_query, action).await {
            Err(e) if TOKEN_CODES.iter().any(|c| e.has_code(c)) => {
                self.login().await?;
                self.send_data(method, path_and_query, action).await
            }
            other => other,
        }
    }

    /// A POST `action` call (`GENEWAYBILL`, `CANEWB`, …): `data` under the SEK both ways.
    pub async fn action(&mut self, action: &str, payload: &Value) -> Result<Value, ClientError> {
        let (reply, sek) = self
            .call(Method::POST, EWAYAPI_PATH, Some((action, payload)))
            .await?;
        let data = reply["data"]
            .as_str()
            .ok_or_else(|| ClientError::Crypto("status 1 without `data` text".into()))?;
        json_from(&aes_decrypt_b64(&sek, data, "data")?, "data")
    }

    /// Generates an e-way bill; returns `{"ewayBillNo","ewayBillDate","validUpto",…}`.
    pub async fn generate(&mut self, ewb: &Value) -> Result<Value, ClientError> {
        self.action("GENEWAYBILL", ewb).await
    }

    /// Reads an e-way bill, checking the reply's HMAC.
    pub async fn get(&mut self, ewb_no: impl std::fmt::Display) -> Result<Value, ClientError> {
        let path = format!("{EWAYAPI_PATH}/GetEwayBill?ewbNo={ewb_no}");
        let (reply, sek) = self.call(Method::GET, &path, None).await?;
        open_rek_reply(&sek, &reply)
    }
}
