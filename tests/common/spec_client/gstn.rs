//! GSTN returns client (as a GSP passes the API through): OTP login with an RSA-wrapped app
//! key, token refresh under the current SEK, and data replies under a per-reply REK with an
//! HMAC — one base64 layer more inside `data` than NIC's e-way bill.

use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use reqwest::Method;
use rsa::RsaPublicKey;
use serde_json::{json, Value};

use super::crypto::{
    aes_decrypt_b64, aes_encrypt_b64, b64, hmac_b64, public_key_from_pem, random_ascii_key,
    rsa_encrypt_b64, unb64, unwrap_key_b64, verify_hmac_b64, Key,
};
use super::{
    http_client, is_one, json_from, required_str, send, text_of, ApiFailure, ClientError, Reply,
    SpecConfig,
};

/// The authentication path (all actions).
pub const AUTH_PATH: &str = "/taxpayerapi/v1.0/authenticate";

/// Invalid session: the token is unknown or dead; only an OTP login helps.
pub const INVALID_SESSION: &str = "AUTH4033";

/// Session expired: the token (or the portal session) has expired; a refresh may help.
pub const SESSION_EXPIRED: &str = "AUTH4038";

struct Session {
    token: String,
    sek: Key,
    expires_at: DateTime<Utc>,
}

/// A GSTN returns API client that keeps its own session.
pub struct GstnClient {
    /// What the client was configured with (`password` unused: GSTN logs in with an OTP).
    pub config: SpecConfig,
    /// The `ip-usr` header: the taxpayer's IP address as the ASP saw it.
    pub ip_usr: String,
    /// `AUTHTOKEN` requests sent (OTP logins).
    pub logins: u32,
    /// `REFRESHTOKEN` requests sent, automatic ones included.
    pub refreshes: u32,
    public_key: RsaPublicKey,
    /// The app key of the pending OTP: GSTN pairs AUTHTOKEN with the OTPREQUEST's key.
    app_key: Option<Key>,
    session: Option<Session>,
    txn_prefix: String,
    http: reqwest::Client,
}

/// `status_cd: "1"` → the body; otherwise `error.error_cd` as an ApiFailure.
fn envelope(reply: &Reply) -> Result<&Value, ClientError> {
    let body = &reply.body;
    if is_one(&body["status_cd"]) {
        return Ok(body);
    }
    Err(ClientError::Api(ApiFailure {
        http_status: reply.status,
        codes: text_of(&body["error"]["error_cd"]).into_iter().collect(),
        message: body["error"]["message"]
            .as_str()
            .unwrap_or("reply is not status_cd 1")
            .to_string(),
        body: body.clone(),
    }))
}

/// Opens a data reply `{"rek","data","hmac"}`: REK = AES⁻¹(SEK, rek), B64(JSON) =
/// AES⁻¹(REK, data), HMAC-SHA256(REK, B64(JSON)) must equal `hmac` (constant-time check), and
/// only then is the JSON decoded. A failed check is a crypto error, never data.
pub fn open_rek_reply(sek: &Key, reply: &Value) -> Result<Value, ClientError> {
    let field = |name: &str| {
        reply[name]
            .as_str()
            .ok_or_else(|| ClientError::Crypto(format!("reply has no `{name}` text")))
    };
    let rek = unwrap_key_b64(sek, field("rek")?, "rek")?;
    let json_b64 = aes_decrypt_b64(&rek, field("data")?, "data")?;
    verify_hmac_b64(&rek, &json_b64, field("hmac")?)?;
    let text = std::str::from_utf8(&json_b64)
        .map_err(|_| ClientError::Crypto("data does not decrypt to base64 text".into()))?;
    json_from(&unb64(text, "decrypted data")?, "data")
}

/// `{"action","data": B64(AES(SEK, B64(JSON))),"hmac": B64(HMAC-SHA256(SEK, B64(JSON)))}`, the
/// body of a GSTN save call.
pub fn seal_payload(sek: &Key, action: &str, payload: &Value) -> Value {
    let json_b64 = b64(payload.to_string().as_bytes());
    json!({
        "action": action,
        "data": aes_encrypt_b64(sek, json_b64.as_bytes()),
        "hmac": hmac_b64(sek, json_b64.as_bytes()),
    })
}

/// The `expiry` of a token reply, in minutes (a number, or numeric text).
fn expiry_minutes(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
    .filter(|m| m.is_finite() && *m >= 0.0)
}

impl GstnClient {
    /// A client without a session; fails only when the public key PEM does not parse.
    pub fn new(config: SpecConfig) -> Result<Self, ClientError> {
        let tag: u32 = rand::random();
        Ok(Self {
            public_key: public_key_from_pem(&config.public_key_pem)?,
            config,
            ip_usr: "127.0.0.1".into(),
            logins: 0,
            refreshes: 0,
            app_key: None,
            session: None,
            txn_prefix: format!("SPEC{tag:08X}"),
            http: http_client(),
        })
    }

    /// The server key app keys are encrypted with.
    pub fn public_key(&self) -> &RsaPublicKey {
        &self.public_key
    }

    /// The current `auth_token`, if logged in.
    pub fn token(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.token.as_str())
    }

    /// The current SEK, so that a test can build or open payloads the way this client does.
    pub fn sek(&self) -> Option<Key> {
        self.session.as_ref().map(|s| s.sek)
    }

    /// When the current token expires: the reply's `expiry` minutes after it came.
    pub fn token_expiry(&self) -> Option<DateTime<Utc>> {
        self.session.as_ref().map(|s| s.expires_at)
    }

    /// The `state-cd` header: the GSTIN's first two digits.
    pub fn state_cd(&self) -> &str {
        self.config.gstin.get(..2).unwrap_or("")
    }

    /// The seven headers of every call; `txn` is new for each request, as GSTN requires.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        static TXN: AtomicU64 = AtomicU64::new(1);
        let c = &self.config;
        self.http
            .request(method, c.url(path))
            .header("clientid", &c.client_id)
            .header("client-secret", &c.client_secret)
            .header("state-cd", self.state_cd())
            .header("ip-usr", &self.ip_usr)
            .header(
                "txn",
                format!(
                    "{}{:06}",
                    self.txn_prefix,
                    TXN.fetch_add(1, Ordering::Relaxed)
                ),
            )
            .header("username", &c.username)
            .header("gstin", &c.gstin)
    }

    async fn post_auth(&self, body: &Value) -> Result<Reply, ClientError> {
        send(self.request(Method::POST, AUTH_PATH).json(body)).await
    }

    /// Sends any `authenticate` body with the client's headers; returns the success reply as
    /// is, or the refusal. Touches no state.
    pub async fn authenticate_raw(&self, body: &Value) -> Result<Value, ClientError> {
        envelope(&self.post_auth(body).await?).cloned()
    }

    /// OTPREQUEST: a new app key, RSA-encrypted under the server's key.
    pub async fn otp_request(&mut self) -> Result<(), ClientError> {
        let key = self.public_key.clone();
        self.otp_request_with(&key).await
    }

    /// OTPREQUEST with the app key RSA-encrypted under `key` (another server's, in tests).
    pub async fn otp_request_with(&mut self, key: &RsaPublicKey) -> Result<(), ClientError> {
        let app_key = random_ascii_key();
        // The 32 ASCII bytes go into RSA as they are: no base64 layer before RSA here.
        let body = json!({
            "action": "OTPREQUEST",
            "username": self.config.username,
            "app_key": rsa_encrypt_b64(key, &app_key)?,
        });
        self.app_key = Some(app_key);
        self.authenticate_raw(&body).await.map(|_| ())
    }

    /// AUTHTOKEN with the OTP the taxpayer received, under the OTPREQUEST's app key (a fresh
    /// one, which the server will refuse, if no OTP was requested).
    pub async fn auth_token(&mut self, otp: &str) -> Result<(), ClientError> {
        let app_key = *self.app_key.get_or_insert_with(random_ascii_key);
        let body = json!({
            "action": "AUTHTOKEN",
            "username": self.config.username,
            "app_key": rsa_encrypt_b64(&self.public_key, &app_key)?,
            "otp": aes_encrypt_b64(&app_key, otp.as_bytes()),
        });
        self.logins += 1;
        self.take_token_reply(&body, &app_key).await
    }

    /// REFRESHTOKEN: a new app key under the current SEK; the new SEK comes under the new key.
    pub async fn refresh(&mut self) -> Result<(), ClientError> {
        let (token, sek) = match &self.session {
            Some(s) => (s.token.clone(), s.sek),
            None => return Err(ClientError::Usage("no GSTN session to refresh".into())),
        };
        let app_key = random_ascii_key();
        let body = json!({
            "action": "REFRESHTOKEN",
            "username": self.config.username,
            "auth_token": token,
            "app_key": aes_encrypt_b64(&sek, &app_key),
        });
        self.refreshes += 1;
        self.take_token_reply(&body, &app_key).await?;
        self.app_key = Some(app_key);
        Ok(())
    }

    /// Sends an AUTHTOKEN or REFRESHTOKEN body and keeps the token and SEK it answers.
    async fn take_token_reply(&mut self, body: &Value, app_key: &Key) -> Result<(), ClientError> {
        let received = Utc::now();
        let reply = self.post_auth(body).await?;
        let ok = envelope(&reply)?;
        let token = required_str(&reply, ok, "auth_token")?.to_string();
        let sek = unwrap_key_b64(app_key, required_str(&reply, ok, "sek")?, "sek")?;
        let minutes = expiry_minutes(&ok["expiry"])
            .ok_or_else(|| ApiFailure::malformed(&reply, "`expiry` is not a number of minutes"))?;
        let lifetime = chrono::Duration::milliseconds((minutes * 60_000.0) as i64);
        self.session = Some(Session {
            token,
            sek,
            expires_at: received + lifetime,
        });
        Ok(())
    }

    /// One data call with the current session, no retry: the success body and its SEK.
    async fn send_data(
        &self,
        method: Method,
        path_and_query: &str,
        ret_period: &str,
        save: Option<(&str, &Value)>,
    ) -> Result<(Value, Key), ClientError> {
        let s = self.session.as_ref().ok_or_else(|| {
            ClientError::Usage("no GSTN session: otp_request and auth_token first".into())
        })?;
        let mut req = self
            .request(method, path_and_query)
            .header("auth-token", &s.token)
            .header("ret_period", ret_period);
        if let Some((action, payload)) = save {
            // Sealed per attempt: a refresh between attempts brings a new SEK.
            req = req.json(&seal_payload(&s.sek, action, payload));
        }
        let reply = send(req).await?;
        Ok((envelope(&reply)?.clone(), s.sek))
    }

    /// A data call as a real client makes it: refreshes a token it knows has expired, and on
    /// AUTH4038 refreshes once and retries once. AUTH4033 needs an OTP login: returned as is.
    async fn call(
        &mut self,
        method: Method,
        path_and_query: &str,
        ret_period: &str,
        save: Option<(&str, &Value)>,
    ) -> Result<Value, ClientError> {
        if self
            .session
            .as_ref()
            .is_some_and(|s| s.expires_at <= Utc::now())
        {
            self.refresh().await?;
        }
        let (reply, sek) = match self
            .send_data(method.clone(), path_and_query, ret_period, save)
            .await
        {
            Err(e) if e.has_code(SESSION_EXPIRED) => {
                self.refresh().await?;
                self.send_data(method, path_and_query, ret_period, save)
                    .await?
            }
            other => other?,
        };
        open_rek_reply(&sek, &reply)
    }

    /// A GET data call (`path_and_query` from the base URL), its reply's HMAC checked.
    pub async fn get(
        &mut self,
        path_and_query: &str,
        ret_period: &str,
    ) -> Result<Value, ClientError> {
        self.call(Method::GET, path_and_query, ret_period, None)
            .await
    }

    /// A PUT save call (`RETSAVE`): the payload sealed under the SEK with its HMAC.
    pub async fn put(
        &mut self,
        path_and_query: &str,
        ret_period: &str,
        action: &str,
        payload: &Value,
    ) -> Result<Value, ClientError> {
        self.call(
            Method::PUT,
            path_and_query,
            ret_period,
            Some((action, payload)),
        )
        .await
    }

    /// `RETSUM` of a return (`gstr1`, `gstr3b`) for a period (MMYYYY).
    pub async fn return_summary(
        &mut self,
        ret: &str,
        ret_period: &str,
    ) -> Result<Value, ClientError> {
        let path = format!(
            "/taxpayerapi/v1.0/returns/{ret}?action=RETSUM&gstin={}&ret_period={ret_period}",
            self.config.gstin
        );
        self.get(&path, ret_period).await
    }
}
