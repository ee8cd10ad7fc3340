//! The GSTN taxpayer (returns) profile, through a GSP.
//!
//! A session starts with an OTP the taxpayer receives (`OTPREQUEST`, then `AUTHTOKEN`) and is
//! then kept alive with `REFRESHTOKEN` — no OTP — for as long as the API access the taxpayer
//! enabled on the portal lasts. The app key is 32 ASCII characters used as the AES key, RSA-
//! encrypted as is for the OTP calls and AES-encrypted under the current SEK for a refresh.
//! Data replies are sealed with a response key (`rek`) and carry one more base64 layer than
//! e-way bill's.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use secrecy::SecretString;
use serde::Deserialize;
use serde_json::{json, Value};

use super::envelope::Envelope;
use super::sealed::{open_reply, seal_request, Layers};
use super::{
    renewal, transaction_id, Class, Expiry, HeaderContext, Login, LoginFailure, LoginKind,
    LoginRequest, Profile, Reply, Verdict, ROLE_COUNT,
};
use crate::config::{CredentialConfig, Duplicate, UpstreamConfig};
use crate::crypto::{b64_encode, gstn_app_key, AesKey, PublicKey};
use crate::gstin::Gstin;
use crate::path::CallerPath;
use crate::problem::GatewayError;

/// The GSTN taxpayer API.
pub struct Gstn;

/// The class of a GSTN error code.
fn classify_code(code: &str) -> Class {
    match code {
        "AUTH4033" | "AUTH4038" => Class::TokenRejected,
        "AUTH4034" => Class::OtpRejected,
        "AUTH4037" => Class::AccessDisabled,
        "AUTH403" => Class::SessionLimit,
        "AUTH4041" | "TEC4002" => Class::Configuration,
        _ => Class::Business,
    }
}

#[derive(Deserialize)]
struct ErrorObject {
    error_cd: Option<String>,
    message: Option<String>,
}

fn verdict_of(envelope: &Envelope) -> Verdict {
    if envelope.status(&["status_cd"]) == Some(1) {
        return Verdict::success();
    }
    let error: Option<ErrorObject> = envelope.get("error");
    let (code, message) = error.map_or((None, None), |e| (e.error_cd, e.message));
    Verdict {
        class: code
            .as_deref()
            .map(classify_code)
            .unwrap_or(Class::Business),
        code,
        message,
    }
}

/// `expiry` is minutes, as a number or a string; fractions are honoured (the simulator uses
/// them for tokens of a few seconds).
fn lifetime_of(envelope: &Envelope) -> Option<Duration> {
    let minutes = match envelope.get::<Value>("expiry")? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    // Capped before converting: a garbled huge `expiry` must neither keep a token in use for
    // months nor overflow the conversion.
    let cap = crate::config::MAX_TOKEN_LIFETIME.as_secs_f64();
    (minutes.is_finite() && minutes > 0.0)
        .then(|| Duration::try_from_secs_f64((minutes * 60.0).min(cap)).ok())
        .flatten()
}

fn rsa_app_key(app_key: &AesKey, key: &PublicKey) -> Result<String, GatewayError> {
    key.encrypt(app_key.as_bytes())
        .map(|sealed| b64_encode(&sealed))
        .map_err(|e| GatewayError::UpstreamConfigRejected {
            upstream_code: None,
            message: format!("the app key cannot be encrypted with the upstream's key: {e}"),
        })
}

impl Profile for Gstn {
    fn default_header_names(&self) -> [&'static str; ROLE_COUNT] {
        [
            "clientid",
            "client-secret",
            "gstin",
            "username",
            "auth-token",
            "state-cd",
            "ip-usr",
            "txn",
        ]
    }

    fn dropin(&self) -> &'static dyn super::dropin::Face {
        &super::dropin::GstnFace
    }

    fn renewal(&self) -> &'static dyn renewal::Renewal {
        &renewal::OtpThenRefresh
    }

    fn otp_app_key(&self) -> AesKey {
        gstn_app_key()
    }

    fn login_request(
        &self,
        kind: LoginKind<'_>,
        username: &str,
        _password: &SecretString,
        key: &PublicKey,
    ) -> Result<LoginRequest, GatewayError> {
        let (app_key, body) = match kind {
            LoginKind::OtpRequest { app_key } => (
                app_key.clone(),
                json!({
                    "action": "OTPREQUEST",
                    "username": username,
                    "app_key": rsa_app_key(app_key, key)?,
                }),
            ),
            LoginKind::Otp { otp, app_key } => (
                app_key.clone(),
                json!({
                    "action": "AUTHTOKEN",
                    "username": username,
                    "app_key": rsa_app_key(app_key, key)?,
                    "otp": app_key.encrypt_b64(otp.as_bytes()),
                }),
            ),
            LoginKind::Refresh { token, sek } => {
                let app_key = gstn_app_key();
                let body = json!({
                    "action": "REFRESHTOKEN",
                    "username": username,
                    "auth_token": token.to_str().map_err(|_| GatewayError::Internal("token is not text".into()))?,
                    "app_key": sek.encrypt_b64(app_key.as_bytes()),
                });
                (app_key, body)
            }
            LoginKind::Password { .. } => {
                return Err(GatewayError::Internal(
                    "GSTN sessions start with an OTP, not a password".into(),
                ))
            }
        };
        let body = serde_json::to_vec(&body).map_err(|e| GatewayError::Internal(e.to_string()))?;
        Ok(LoginRequest { body, app_key })
    }

    fn login_headers(
        &self,
        out: &mut HeaderMap,
        ctx: &HeaderContext<'_>,
        token: Option<&HeaderValue>,
    ) {
        ctx.insert_client(out);
        out.insert(ctx.names.state_cd.clone(), ctx.state_cd.clone());
        out.insert(ctx.names.ip_usr.clone(), ctx.ip_usr.clone());
        out.insert(ctx.names.txn.clone(), transaction_id());
        out.insert(ctx.names.user_name.clone(), ctx.user_name.clone());
        if let Some(token) = token {
            out.insert(ctx.names.auth_token.clone(), token.clone());
        }
    }

    fn parse_login(&self, body: &[u8], app_key: &AesKey) -> Result<Login, LoginFailure> {
        let envelope = super::accepted_login(body, verdict_of)?;
        let field = |name: &str| {
            envelope
                .get::<String>(name)
                .ok_or_else(|| LoginFailure::BadReply(format!("login reply has no {name}")))
        };
        let token = SecretString::from(field("auth_token")?);
        let sek = app_key
            .unwrap_key(&field("sek")?)
            .map_err(|e| LoginFailure::BadReply(format!("cannot decrypt the SEK: {e}")))?;
        let lifetime = lifetime_of(&envelope).ok_or_else(|| {
            LoginFailure::BadReply("login reply has no usable expiry (minutes)".into())
        })?;
        Ok(Login {
            token,
            sek,
            expiry: Expiry::After(lifetime),
        })
    }

    /// GSTN data calls name the return period in a header.
    fn caller_headers(&self) -> &'static [&'static str] {
        &["ret_period"]
    }

    /// GSTN data calls repeat the GSTIN in the query (`?action=RETSUM&gstin=…`). Every
    /// `gstin` parameter must be the header's: the tenant check was made on the header, and
    /// which of two disagreeing GSTINs an upstream would act on is not something to leave to it.
    /// A query a parser could read another `gstin` out of (`gstin[]=`, `;gstin=`, …) is
    /// refused before that comparison, which reads only plain names.
    fn check_request(&self, path: &CallerPath, gstin: &Gstin) -> Result<(), GatewayError> {
        path.check_query_names()?;
        match path
            .query_values("gstin")
            .into_iter()
            .find(|q| !q.eq_ignore_ascii_case(gstin.as_str()))
        {
            None => Ok(()),
            Some(_) => Err(GatewayError::GstinMismatch(gstin.to_string())),
        }
    }

    fn data_headers(&self, out: &mut HeaderMap, ctx: &HeaderContext<'_>, token: &HeaderValue) {
        self.login_headers(out, ctx, Some(token));
    }

    fn encode_request(
        &self,
        method: &Method,
        body: &[u8],
        sek: &AesKey,
    ) -> Result<Vec<u8>, GatewayError> {
        if super::bodiless(method, body) {
            return Ok(Vec::new());
        }
        seal_request(body, sek, Layers::Base64Json, true)
    }

    fn classify_code(&self, code: &str) -> Class {
        classify_code(code)
    }

    fn read_reply<'a>(&self, status: StatusCode, body: &'a [u8]) -> Reply<'a> {
        Reply::parse(status, body, verdict_of)
    }

    fn decode_reply(&self, reply: Reply<'_>, sek: &AesKey) -> Result<Vec<u8>, GatewayError> {
        let mut envelope = reply.into_envelope()?;
        open_reply(&mut envelope, sek, Layers::Base64Json)?;
        Ok(envelope.to_vec())
    }

    fn auth_answer(&self, _username: &str, expires_at: SystemTime) -> Vec<u8> {
        let minutes = expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .as_secs()
            / 60;
        serde_json::to_vec(&json!({
            "status_cd": "1",
            "auth_token": "managed-by-gstgate",
            "expiry": minutes,
            "sek": null,
        }))
        .unwrap_or_default()
    }

    fn check_upstream(&self, upstream: &UpstreamConfig) -> Result<(), (&'static str, String)> {
        // An OTP request is admitted only with room for the OTP login it brings, so that an
        // OTP the taxpayer received is never refused for the allowance.
        if upstream.max_logins < 2 {
            return Err((
                "max_logins",
                "a GSTN session starts with an OTP request and an OTP login, two logins: use at least 2".into(),
            ));
        }
        Ok(())
    }

    fn check_credential(
        &self,
        _upstream: &UpstreamConfig,
        _credential: &CredentialConfig,
    ) -> Result<(), (&'static str, String)> {
        // Sessions start with an OTP the taxpayer receives and go on with refreshes: no
        // login sends the password, so a GSTN-only credential may omit it.
        Ok(())
    }

    fn config_warnings(&self, upstream: &UpstreamConfig) -> Vec<String> {
        if upstream.duplicate == Duplicate::Pass {
            return Vec::new();
        }
        vec![format!(
            "upstream `{}`: duplicate = \"return_existing\" has no effect: GSTN has no generate call",
            upstream.name
        )]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::config_checks::tests::one_upstream;

    #[test]
    fn return_existing_is_warned_of_on_gstn() {
        assert!(Gstn
            .config_warnings(&one_upstream("gstn", "", "").upstreams[0])
            .is_empty());
        let config = one_upstream("gstn", "duplicate = \"return_existing\"", "");
        let warnings = Gstn.config_warnings(&config.upstreams[0]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("GSTN has no generate call"));
    }

    #[test]
    fn an_otp_flow_needs_two_logins_of_allowance() {
        let config = one_upstream("gstn", "max_logins = 1", "");
        let (field, message) = Gstn.check_upstream(&config.upstreams[0]).unwrap_err();
        assert_eq!(field, "max_logins");
        assert!(message.contains("at least 2"), "{message}");
        let config = one_upstream("gstn", "max_logins = 2", "");
        assert!(Gstn.check_upstream(&config.upstreams[0]).is_ok());
    }

    #[test]
    fn error_codes_are_classified() {
        let p = Gstn;
        for (code, class) in [
            ("AUTH4033", Class::TokenRejected),
            ("AUTH4038", Class::TokenRejected),
            ("AUTH4034", Class::OtpRejected),
            ("AUTH4037", Class::AccessDisabled),
            ("AUTH403", Class::SessionLimit),
            ("AUTH4041", Class::Configuration),
            ("RET191106", Class::Business),
        ] {
            let body =
                format!(r#"{{"status_cd":"0","error":{{"error_cd":"{code}","message":"m"}}}}"#);
            let r = p.read_reply(StatusCode::OK, body.as_bytes());
            assert_eq!(r.verdict.class, class, "{code}");
            assert_eq!(r.verdict.code.as_deref(), Some(code));
        }
        let r = p.read_reply(StatusCode::OK, br#"{"status_cd":1,"data":"x"}"#);
        assert_eq!(r.verdict.class, Class::Success);
    }

    #[test]
    fn login_reply_honours_fractional_minutes_and_unwraps_the_sek() {
        let app_key = gstn_app_key();
        let sek = AesKey::random();
        let body = format!(
            r#"{{"status_cd":"1","auth_token":"t","expiry":0.1,"sek":"{}"}}"#,
            app_key.encrypt_b64(sek.as_bytes())
        );
        let login = Gstn.parse_login(body.as_bytes(), &app_key).unwrap();
        assert_eq!(login.expiry, Expiry::After(Duration::from_secs(6)));
        assert_eq!(login.sek.as_bytes(), sek.as_bytes());
        let body = r#"{"status_cd":"1","auth_token":"t","expiry":-1,"sek":"x"}"#;
        assert!(Gstn.parse_login(body.as_bytes(), &app_key).is_err());
        // Absurd lifetimes are believed for a day, and never overflow the conversion.
        for huge in ["1e18", "1e308", "\"99999999999999999999\""] {
            let body = format!(
                r#"{{"status_cd":"1","auth_token":"t","expiry":{huge},"sek":"{}"}}"#,
                app_key.encrypt_b64(sek.as_bytes())
            );
            let login = Gstn.parse_login(body.as_bytes(), &app_key).unwrap();
            assert_eq!(
                login.expiry,
                Expiry::After(crate::config::MAX_TOKEN_LIFETIME),
                "{huge}"
            );
        }
    }

    #[test]
    fn a_credential_needs_no_password() {
        let config = one_upstream("gstn", "", "");
        assert!(Gstn
            .check_credential(&config.upstreams[0], &config.credentials[0])
            .is_ok());
    }
}
