//! NIC e-invoice (IRP) client: RSA login with `ForceRefreshAccessToken`, the SEK under the
//! AppKey, `Data` as AES-256-ECB under the SEK both ways.

use chrono::{DateTime, FixedOffset, NaiveDateTime, TimeZone, Utc};
use reqwest::Method;
use rsa::RsaPublicKey;
use serde_json::{json, Value};

use super::crypto::{
    aes_decrypt_b64, aes_encrypt_b64, b64, public_key_from_pem, random_key, rsa_encrypt_b64,
    unwrap_key_b64, Key,
};
use super::{
    http_client, is_one, json_from, required_str, send, text_of, ApiFailure, ClientError, Reply,
    SpecConfig,
};

/// The login path (v1.04, the current one).
pub const AUTH_PATH: &str = "/eivital/v1.04/auth";

/// The error code of an unknown, expired or revoked `AuthToken`: log in again.
pub const INVALID_TOKEN: &str = "1005";

/// NIC's `TokenExpiry` is IST wall-clock time without an offset.
const IST_SECS: i32 = 5 * 3600 + 30 * 60;

/// A session as the client holds it.
#[derive(Clone)]
struct Session {
    token: String,
    sek: Key,
    expires_at: DateTime<Utc>,
}

/// An e-invoice API client that keeps its own session.
pub struct EinvoiceClient {
    /// What the client was configured with (the public key is read once, by [`Self::new`]).
    pub config: SpecConfig,
    /// Login requests sent by [`Self::login`], automatic ones included ([`Self::login_raw`]
    /// is a probe and does not count): tests assert "did not log in again" with it.
    pub logins: u32,
    public_key: RsaPublicKey,
    session: Option<Session>,
    /// The AppKey of the last login sent, kept for tests only (a real client forgets it once
    /// the SEK is unwrapped): the secret scans look for it where it must not be.
    last_app_key: Option<Key>,
    http: reqwest::Client,
}

/// Parses NIC's `TokenExpiry` ("yyyy-MM-dd HH:mm:ss", IST) into UTC.
pub fn parse_token_expiry(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    let naive = NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()?;
    let ist = FixedOffset::east_opt(IST_SECS)?;
    ist.from_local_datetime(&naive)
        .single()
        .map(|t| t.with_timezone(&Utc))
}

/// `Status: 1` → `Data`; otherwise the `ErrorDetails` codes (text or numbers) as an ApiFailure.
fn envelope(reply: &Reply) -> Result<Value, ClientError> {
    let body = &reply.body;
    if is_one(&body["Status"]) {
        return Ok(body["Data"].clone());
    }
    let details = body["ErrorDetails"].as_array().cloned().unwrap_or_default();
    let codes = details
        .iter()
        .filter_map(|d| text_of(&d["ErrorCode"]))
        .collect();
    let message = details
        .iter()
        .filter_map(|d| d["ErrorMessage"].as_str())
        .collect::<Vec<_>>()
        .join("; ");
    Err(ClientError::Api(ApiFailure {
        http_status: reply.status,
        codes,
        message: if message.is_empty() {
            "reply is not Status 1".into()
        } else {
            message
        },
        body: body.clone(),
    }))
}

impl EinvoiceClient {
    /// A client without a session; fails only when the public key PEM does not parse.
    pub fn new(config: SpecConfig) -> Result<Self, ClientError> {
        Ok(Self {
            public_key: public_key_from_pem(&config.public_key_pem)?,
            config,
            logins: 0,
            session: None,
            last_app_key: None,
            http: http_client(),
        })
    }

    /// The server key logins are encrypted with.
    pub fn public_key(&self) -> &RsaPublicKey {
        &self.public_key
    }

    /// The current `AuthToken`, if logged in.
    pub fn token(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.token.as_str())
    }

    /// The current SEK, so that a test can build or open payloads the way this client does.
    pub fn sek(&self) -> Option<Key> {
        self.session.as_ref().map(|s| s.sek)
    }

    /// When the current token expires, as `TokenExpiry` said.
    pub fn token_expiry(&self) -> Option<DateTime<Utc>> {
        self.session.as_ref().map(|s| s.expires_at)
    }

    /// Forgets the session, as a restarted client would.
    pub fn clear_session(&mut self) {
        self.session = None;
    }

    /// Test-only: takes `other`'s token, SEK and expiry as this client's session, as two
    /// instances of one ASP backend sharing a token cache do (NIC gives one token per user,
    /// used from wherever). Not a login: `logins` is unchanged.
    pub fn adopt_session(&mut self, other: &EinvoiceClient) {
        self.session = other.session.clone();
    }

    /// Test-only: the AppKey the last login sent (whether or not it succeeded).
    pub fn last_app_key(&self) -> Option<Key> {
        self.last_app_key
    }

    /// The three headers of every call, login included.
    fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let c = &self.config;
        self.http
            .request(method, c.url(path))
            .header("client_id", &c.client_id)
            .header("client_secret", &c.client_secret)
            .header("Gstin", &c.gstin)
    }

    async fn post_login(&self, payload: &Value, key: &RsaPublicKey) -> Result<Reply, ClientError> {
        // The JSON is base64-encoded before RSA, and the cipher base64-encoded after.
        let data = rsa_encrypt_b64(key, b64(payload.to_string().as_bytes()).as_bytes())?;
        send(
            self.request(Method::POST, AUTH_PATH)
                .json(&json!({ "Data": data })),
        )
        .await
    }

    /// Sends a login payload (plain JSON, before the base64 and RSA layers) encrypted with any
    /// key; returns the reply's `Data` object as is, or the refusal. Keeps no session.
    pub async fn login_raw(
        &self,
        payload: &Value,
        encrypt_with: &RsaPublicKey,
    ) -> Result<Value, ClientError> {
        envelope(&self.post_login(payload, encrypt_with).await?)
    }

    /// Logs in with a fresh AppKey and keeps the token and SEK; returns `TokenExpiry` as sent.
    pub async fn login(&mut self, force: bool) -> Result<String, ClientError> {
        let app_key = random_key();
        self.last_app_key = Some(app_key);
        let payload = json!({
            "UserName": self.config.username,
            "Password": self.config.password,
            "AppKey": b64(&app_key),
            "ForceRefreshAccessToken": force,
        });
        self.logins += 1;
        let reply = self.post_login(&payload, &self.public_key).await?;
        let data = envelope(&reply)?;
        let token = required_str(&reply, &data, "AuthToken")?.to_string();
        let sek = unwrap_key_b64(&app_key, required_str(&reply, &data, "Sek")?, "Sek")?;
        let expiry = required_str(&reply, &data, "TokenExpiry")?.to_string();
        let expires_at = parse_token_expiry(&expiry).ok_or_else(|| {
            ApiFailure::malformed(
                &reply,
                format!("TokenExpiry {expiry:?} is not yyyy-MM-dd HH:mm:ss"),
            )
        })?;
        self.session = Some(Session {
            token,
            sek,
            expires_at,
        });
        Ok(expiry)
    }

    /// One data call with the current session, no retry.
    async fn send_data(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let s = self
            .session
            .as_ref()
            .ok_or_else(|| ClientError::Usage("no e-invoice session".into()))?;
        let mut req = self
            .request(method, path)
            .header("user_name", &self.config.username)
            .header("AuthToken", &s.token);
        if let Some(b) = body {
            req = req.json(&json!({ "Data": aes_encrypt_b64(&s.sek, b.to_string().as_bytes()) }));
        }
        let reply = send(req).await?;
        match envelope(&reply)? {
            Value::String(data) => json_from(&aes_decrypt_b64(&s.sek, &data, "Data")?, "Data"),
            other => Err(ClientError::Crypto(format!(
                "Status 1 but Data is not ciphertext: {other}"
            ))),
        }
    }

    /// A data call as a real client makes it: logs in first if it has no live session, and on
    /// 1005 (Invalid Token) logs in again (not forced) once and retries once.
    pub async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        if self
            .session
            .as_ref()
            .is_none_or(|s| s.expires_at <= Utc::now())
        {
            self.login(false).await?;
        }
        match self.send_data(method.clone(), path, body).await {
            Err(e) if e.has_code(INVALID_TOKEN) => {
                self.login(false).await?;
                self.send_data(method, path, body).await
            }
            other => other,
        }
    }

    /// Generates an IRN for an invoice (NIC schema JSON).
    pub async fn generate_irn(&mut self, invoice: &Value) -> Result<Value, ClientError> {
        self.call(Method::POST, "/eicore/v1.03/Invoice", Some(invoice))
            .await
    }

    /// Looks an IRN up.
    pub async fn get_irn(&mut self, irn: &str) -> Result<Value, ClientError> {
        self.call(
            Method::GET,
            &format!("/eicore/v1.03/Invoice/irn/{irn}"),
            None,
        )
        .await
    }

    /// The master details of a GSTIN.
    pub async fn gstin_details(&mut self, gstin: &str) -> Result<Value, ClientError> {
        self.call(
            Method::GET,
            &format!("/eivital/v1.04/Master/gstin/{gstin}"),
            None,
        )
        .await
    }
}
