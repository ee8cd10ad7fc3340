//! The drop-in login: a client's call to an upstream's auth path, answered by gstgate as the
//! API would answer it. Every check is against gstgate's configuration, before anything
//! reaches the upstream: a refused login costs no upstream call and no login allowance.
//!
//! Password logins (NIC) make sure the real session exists, then grant a drop-in session.
//! GSTN's OTP request and OTP login reach the portal only while no portal session lives for
//! the GSTIN and user; otherwise they are answered from the running session, whatever OTP
//! was sent. Its refresh is answered here, with a new drop-in token.

use std::sync::Arc;

use http::HeaderMap;
use secrecy::{ExposeSecret, SecretString};

use super::{gstin_header, Dropin, DropinSession, Owner};
use crate::clients::Client;
use crate::config::ChecksumPolicy;
use crate::crypto::{b64_encode, AesKey};
use crate::metrics::ResultLabels;
use crate::problem::GatewayError;
use crate::session::{Asker, Sessions, Slot, Trigger};
use crate::upstream::dropin::{CallerLogin, Grant, Refusal};
use crate::upstream::Upstream;

/// Why a drop-in call was not served: the API's own refusal, or a gateway failure (the
/// upstream session could not be had, a limit).
#[derive(Debug)]
pub enum Refused {
    /// Answered as the API answers it (or a problem where the API has no code).
    Api(Refusal),
    /// Answered with gstgate's problem.
    Gateway(GatewayError),
}

impl From<Refusal> for Refused {
    fn from(r: Refusal) -> Self {
        Self::Api(r)
    }
}

impl From<GatewayError> for Refused {
    fn from(e: GatewayError) -> Self {
        Self::Gateway(e)
    }
}

/// The length of a GSTN OTP.
const OTP_LEN: usize = 6;

impl Dropin {
    /// Answers a drop-in client's call to `upstream`'s auth path: the reply body, or why not.
    /// `client` is already identified by its client id and secret.
    pub async fn login(
        &self,
        sessions: &Arc<Sessions>,
        client: &Client,
        upstream: &Upstream,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Vec<u8>, Refused> {
        // A client that keeps guessing passwords or OTPs is stopped before gstgate's key
        // touches its next payload.
        if let Err(e) = self.limits.admit_login(&client.name) {
            self.count_login(upstream, "limited");
            return Err(e.into());
        }
        let result = self
            .admit_login(sessions, client, upstream, headers, body)
            .await;
        if let Err(Refused::Api(
            Refusal::PasswordWrong | Refusal::UserUnknown | Refusal::OtpInvalid,
        )) = &result
        {
            self.limits.failed_login(&client.name);
        }
        if result.is_ok() {
            // The reply must not name a token another replica, or this one after a crash,
            // would not accept: it waits until the session is in the store.
            self.book.settle().await;
        }
        self.count_login(
            upstream,
            match &result {
                Ok(_) => "success",
                Err(Refused::Api(r)) => r.label(),
                Err(Refused::Gateway(_)) => "error",
            },
        );
        result
    }

    /// Counts a drop-in login to `upstream` by its result (also one refused before it was
    /// read, for its client id or secret).
    pub fn count_login(&self, upstream: &Upstream, result: &'static str) {
        self.metrics
            .dropin_logins
            .get_or_create(&ResultLabels {
                upstream: upstream.name.clone().into(),
                result,
            })
            .inc();
    }

    async fn admit_login(
        &self,
        sessions: &Arc<Sessions>,
        client: &Client,
        upstream: &Upstream,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Vec<u8>, Refused> {
        let Some(key) = &upstream.dropin_key else {
            return Err(GatewayError::Unauthenticated.into());
        };
        let gstin = gstin_header(headers)?;
        if upstream.checksum == ChecksumPolicy::Enforce && gstin.verify_checksum().is_err() {
            return Err(Refusal::GstinNotAllowed.into());
        }
        if !client.allows(&gstin) {
            return Err(Refusal::GstinNotAllowed.into());
        }
        let face = upstream.profile.dropin();
        let login = face.read_login(body, key)?;
        let slot = sessions
            .lookup(&upstream.name, &gstin, Some(login.username()))
            .map_err(|_| Refusal::UserUnknown)?;
        let owner = Owner {
            client: client.name.clone(),
            upstream: upstream.name.clone(),
            gstin,
            username: slot.credential.username.clone(),
        };
        let client_id = headers
            .get("client_id")
            .or_else(|| headers.get("client-id"))
            .or_else(|| headers.get("clientid"))
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .trim()
            .to_owned();
        let reply = |session: &DropinSession, app_key: &AesKey| {
            let wrapped =
                zeroize::Zeroizing::new(b64_encode(&app_key.encrypt(session.sek.as_bytes())));
            face.login_reply(&Grant {
                client_id: &client_id,
                username: &session.owner.username,
                token: session.token(),
                wrapped_sek: &wrapped,
                expires_at: session.expires_at,
                lifetime: session
                    .expires_at
                    .duration_since(crate::clock::wall())
                    .unwrap_or_default(),
            })
        };
        match login {
            CallerLogin::Password {
                password,
                app_key,
                force,
                ..
            } => {
                if slot.otp_sessions() {
                    return Err(Refusal::PayloadMalformed.into());
                }
                if !sessions.password_matches(&slot, &password) {
                    return Err(Refusal::PasswordWrong.into());
                }
                sessions.session(&slot, Trigger::Cold).await?;
                let session = self.grant(upstream, client, owner, force)?;
                Ok(reply(&session, &app_key))
            }
            CallerLogin::OtpRequest { .. } => {
                // The portal is asked only when no session lives and no OTP is on its way
                // (decided in the slot's single flight): a second client asking meanwhile
                // must not cost the taxpayer another SMS and void the first OTP. And clients
                // together send the taxpayer only so many a day.
                let name: Arc<str> = format!(
                    "{}:{}:{}",
                    slot.upstream.name, slot.credential.gstin, slot.credential.username
                )
                .into();
                if slot.current().is_none() {
                    self.limits.admit_otp_request(&name)?;
                }
                if sessions.request_otp_as(&slot, Asker::Client).await? {
                    self.limits.otp_sent(&name);
                }
                Ok(face.ack_reply())
            }
            CallerLogin::Otp { otp, app_key, .. } => {
                if slot.current().is_none() {
                    start_with_otp(sessions, &slot, otp).await?;
                }
                let session = self.grant(upstream, client, owner, true)?;
                Ok(reply(&session, &app_key))
            }
            CallerLogin::Refresh {
                token,
                wrapped_app_key,
                ..
            } => {
                let current = self
                    .book
                    .find(token.expose_secret())
                    .await
                    .filter(|s| s.owner == owner)
                    .ok_or(Refusal::TokenInvalid)?;
                let app_key = current
                    .sek
                    .unwrap_key(&wrapped_app_key)
                    .map_err(|_| Refusal::AppKeyInvalid)?;
                // A refresh extends the portal session; once it has ended, only an OTP
                // login starts another, which the client does on this refusal.
                if slot.current().is_none() {
                    return Err(Refusal::TokenInvalid.into());
                }
                let session = self.grant(upstream, client, owner, true)?;
                Ok(reply(&session, &app_key))
            }
        }
    }

    fn grant(
        &self,
        upstream: &Upstream,
        client: &Client,
        owner: Owner,
        renew: bool,
    ) -> Result<Arc<DropinSession>, GatewayError> {
        self.book.grant(
            owner,
            upstream.token_lifetime,
            renew,
            client.max_dropin_sessions,
        )
    }
}

/// Starts the GSTN session with the client's OTP; a malformed OTP is refused before the
/// portal sees it, and the portal's refusal is the API's.
async fn start_with_otp(
    sessions: &Arc<Sessions>,
    slot: &Arc<Slot>,
    otp: SecretString,
) -> Result<(), Refused> {
    let digits = otp.expose_secret().trim();
    if digits.len() != OTP_LEN || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Refusal::OtpInvalid.into());
    }
    let otp = SecretString::from(digits.to_owned());
    match sessions.submit_otp_as(slot, otp, Asker::Client).await {
        Ok(_) => Ok(()),
        Err(GatewayError::OtpInvalid { .. }) => Err(Refusal::OtpInvalid.into()),
        Err(e) => Err(e.into()),
    }
}
