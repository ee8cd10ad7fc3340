//! What a profile is: the API-specific behaviour of an upstream, and the types it speaks
//! (reply classes and verdicts, logins, replies).

use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use secrecy::SecretString;

use super::envelope;
use super::generate::Generate;
use super::headers::HeaderContext;
use super::renewal::Renewal;
use crate::config::{CredentialConfig, UpstreamConfig, ROLE_COUNT};
use crate::crypto::{AesKey, PublicKey};
use crate::gstin::Gstin;
use crate::path::CallerPath;
use crate::problem::GatewayError;

/// What an upstream reply means to the gateway; the classify phase decides what each class
/// means to the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// It worked.
    Success,
    /// The token is expired, revoked or does not match the headers: re-login once, replay.
    TokenRejected,
    /// The taxpayer's username/password are wrong: never retry.
    CredentialsRejected,
    /// gstgate's own client id/secret/key are wrong: never retry.
    Configuration,
    /// The caller sent something wrong; pass the reply through.
    CallerInput,
    /// The upstream is having trouble; worth retrying later.
    Transient,
    /// The upstream asks us to slow down.
    Throttled,
    /// A business answer (duplicate IRN, validation error): pass through unchanged.
    Business,
    /// The OTP was wrong or already used.
    OtpRejected,
    /// The taxpayer has not enabled API access on the portal.
    AccessDisabled,
    /// The user has too many live sessions with this GSP.
    SessionLimit,
}

impl Class {
    /// The class as a metric label.
    pub fn label(self) -> &'static str {
        match self {
            Class::Success => "success",
            Class::TokenRejected => "token_rejected",
            Class::CredentialsRejected => "credentials_rejected",
            Class::Configuration => "configuration",
            Class::CallerInput => "caller_input",
            Class::Transient => "transient",
            Class::Throttled => "throttled",
            Class::Business => "business",
            Class::OtpRejected => "otp_rejected",
            Class::AccessDisabled => "access_disabled",
            Class::SessionLimit => "session_limit",
        }
    }
}

/// A classified upstream reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The class.
    pub class: Class,
    /// The first upstream error code, if any.
    pub code: Option<String>,
    /// The first upstream error message, if any.
    pub message: Option<String>,
}

/// The most of an upstream's error message gstgate keeps: it travels into logs, the status
/// page, the admin API and webhooks, and an upstream's text is untrusted input.
const MAX_MESSAGE_BYTES: usize = 1024;
/// The most of an upstream's error code gstgate keeps.
const MAX_CODE_BYTES: usize = 64;

impl Verdict {
    /// The verdict with its upstream text made safe to show anywhere: control characters
    /// (CR, LF, ANSI escapes), line and paragraph separators and bidirectional overrides are
    /// escaped as `\u{…}`, and the text is cut to a bounded length.
    fn tamed(self) -> Self {
        Self {
            class: self.class,
            code: self.code.map(|c| tame(c, MAX_CODE_BYTES)),
            message: self.message.map(|m| tame(m, MAX_MESSAGE_BYTES)),
        }
    }

    /// A success.
    pub fn success() -> Self {
        Self {
            class: Class::Success,
            code: None,
            message: None,
        }
    }
}

/// When a new token expires, as the upstream put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// An absolute time (NIC e-invoice's `TokenExpiry`).
    At(SystemTime),
    /// A lifetime from issue (GSTN's `expiry` in minutes).
    After(Duration),
    /// The reply says nothing (NIC e-way bill): the upstream's `token_lifetime` applies.
    Unstated,
}

/// What a successful login yields.
pub struct Login {
    /// The auth token.
    pub token: SecretString,
    /// The session encryption key.
    pub sek: AesKey,
    /// When the token expires.
    pub expiry: Expiry,
}

/// Which kind of call to the upstream's auth endpoint.
pub enum LoginKind<'a> {
    /// Username and password; `force` asks for a new token inside the force window.
    Password {
        /// Ask for a new token even if the current one is valid.
        force: bool,
    },
    /// Ask the portal to send the taxpayer an OTP.
    OtpRequest {
        /// The app key the OTP will be exchanged with: the portal pairs them.
        app_key: &'a AesKey,
    },
    /// Exchange the OTP the taxpayer received for a session.
    Otp {
        /// The OTP.
        otp: &'a str,
        /// The app key the OTP was requested with.
        app_key: &'a AesKey,
    },
    /// Extend a session without an OTP, proving possession of its token and SEK.
    Refresh {
        /// The session's current token.
        token: &'a HeaderValue,
        /// The session's current SEK.
        sek: &'a AesKey,
    },
}

/// Why a login failed.
#[derive(Debug)]
pub enum LoginFailure {
    /// The upstream answered with an error code.
    Refused(Verdict),
    /// The reply could not be understood or decrypted.
    BadReply(String),
}

/// A login request body and the AppKey needed to unwrap the SEK of its reply.
pub struct LoginRequest {
    /// The encrypted request body.
    pub body: Vec<u8>,
    /// The AppKey sent in it.
    pub app_key: AesKey,
}

/// A parsed upstream reply: the verdict, and the JSON envelope (borrowing the body) when the
/// body was JSON.
pub struct Reply<'a> {
    /// The classification.
    pub verdict: Verdict,
    /// The parsed top-level JSON object.
    pub envelope: Option<envelope::Envelope<'a>>,
}

impl<'a> Reply<'a> {
    /// Parses a reply body and classifies it with the profile's `verdict_of`; a body that is
    /// not a JSON object is judged by its HTTP status alone.
    pub fn parse(
        status: StatusCode,
        body: &'a [u8],
        verdict_of: impl Fn(&envelope::Envelope) -> Verdict,
    ) -> Self {
        match envelope::Envelope::parse(body) {
            Some(envelope) => Reply {
                verdict: verdict_of(&envelope).tamed(),
                envelope: Some(envelope),
            },
            None => Reply {
                verdict: non_json_verdict(status),
                envelope: None,
            },
        }
    }

    /// The envelope of a reply that is to be decoded.
    pub fn into_envelope(self) -> Result<envelope::Envelope<'a>, GatewayError> {
        self.envelope
            .ok_or_else(|| GatewayError::UpstreamBadResponse("the reply is not JSON".into()))
    }
}

/// The envelope of a successful login reply, or why the login failed.
pub(crate) fn accepted_login<'a>(
    body: &'a [u8],
    verdict_of: impl Fn(&envelope::Envelope) -> Verdict,
) -> Result<envelope::Envelope<'a>, LoginFailure> {
    let envelope = envelope::Envelope::parse(body)
        .ok_or_else(|| LoginFailure::BadReply("login reply is not a JSON object".into()))?;
    let verdict = verdict_of(&envelope).tamed();
    if verdict.class == Class::Success {
        Ok(envelope)
    } else {
        Err(LoginFailure::Refused(verdict))
    }
}

/// Whether a request has no body to encrypt (a GET and the like).
pub(crate) fn bodiless(method: &Method, body: &[u8]) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::DELETE) && body.is_empty()
}

/// The portals of an API that several serve with one login, and the header that names the
/// portal holding a call's document.
#[derive(Debug)]
pub struct Portals {
    /// The header (lower case).
    pub header: &'static str,
    /// The portal names it takes, which `[[upstream.targets]]`' `irp` must be one of.
    pub names: &'static [&'static str],
}

/// The API-specific behaviour of an upstream.
pub trait Profile: Send + Sync + 'static {
    /// Default header names, in [`crate::config::HEADER_ROLES`] order.
    fn default_header_names(&self) -> [&'static str; ROLE_COUNT];

    /// How sessions are renewed before they expire.
    fn renewal(&self) -> &'static dyn Renewal;

    /// What drop-in clients of this API send and expect back.
    fn dropin(&self) -> &'static dyn super::dropin::Face;

    /// A new app key for an OTP request, in the API's own form.
    fn otp_app_key(&self) -> AesKey {
        AesKey::random()
    }

    /// Builds the encrypted body of a call to the auth endpoint.
    fn login_request(
        &self,
        kind: LoginKind<'_>,
        username: &str,
        password: &SecretString,
        key: &PublicKey,
    ) -> Result<LoginRequest, GatewayError>;

    /// Adds the auth call's headers; `token` is the current token for a refresh.
    fn login_headers(
        &self,
        out: &mut HeaderMap,
        ctx: &HeaderContext<'_>,
        token: Option<&HeaderValue>,
    );

    /// Reads the reply to a call that yields a session (password, OTP or refresh).
    fn parse_login(&self, body: &[u8], app_key: &AesKey) -> Result<Login, LoginFailure>;

    /// Reads the reply to a call that yields no session (an OTP request).
    fn parse_ack(&self, body: &[u8]) -> Result<(), LoginFailure> {
        let reply = self.read_reply(StatusCode::OK, body);
        match (reply.envelope, reply.verdict.class) {
            (None, _) => Err(LoginFailure::BadReply(
                "the reply is not a JSON object".into(),
            )),
            (Some(_), Class::Success) => Ok(()),
            (Some(_), _) => Err(LoginFailure::Refused(reply.verdict)),
        }
    }

    /// The caller headers a call of this API legitimately carries (lower case), besides the
    /// ones every API may carry ([`super::GENERIC_CALLER_HEADERS`]); all others are dropped.
    fn caller_headers(&self) -> &'static [&'static str] {
        &[]
    }

    /// Refuses a data call whose path or query names another taxpayer than the session's,
    /// where the API puts the GSTIN there; the header GSTIN alone picks the session.
    fn check_request(&self, _path: &CallerPath, _gstin: &Gstin) -> Result<(), GatewayError> {
        Ok(())
    }

    /// Adds a data call's headers.
    fn data_headers(&self, out: &mut HeaderMap, ctx: &HeaderContext<'_>, token: &HeaderValue);

    /// Wraps a caller's plain JSON body for the upstream (gateway encryption mode).
    fn encode_request(
        &self,
        method: &Method,
        body: &[u8],
        sek: &AesKey,
    ) -> Result<Vec<u8>, GatewayError>;

    /// The class of one of the API's error codes; [`Class::Business`] for a code it does not
    /// single out.
    fn classify_code(&self, code: &str) -> Class;

    /// Parses and classifies a data reply.
    fn read_reply<'a>(&self, status: StatusCode, body: &'a [u8]) -> Reply<'a>;

    /// Turns a successful reply into the caller's plain JSON (gateway encryption mode).
    fn decode_reply(&self, reply: Reply<'_>, sek: &AesKey) -> Result<Vec<u8>, GatewayError>;

    /// The body gstgate answers a caller's login call with: a success that reveals neither
    /// token nor SEK.
    fn auth_answer(&self, username: &str, expires_at: SystemTime) -> Vec<u8>;

    /// Checks the rules this API sets for an upstream's settings, beyond those every upstream
    /// follows: `Err` holds the offending field and what to write instead.
    fn check_upstream(&self, _upstream: &UpstreamConfig) -> Result<(), (&'static str, String)> {
        Ok(())
    }

    /// Checks that a credential logging in to `upstream` has what this API's login needs:
    /// `Err` holds the credential's offending field and what to write instead.
    fn check_credential(
        &self,
        upstream: &UpstreamConfig,
        credential: &CredentialConfig,
    ) -> Result<(), (&'static str, String)>;

    /// The portals of an API served by several that share one login (NIC's IRPs), which an
    /// upstream may list as `[[upstream.targets]]`; `None`: one base URL only.
    fn portals(&self) -> Option<&'static Portals> {
        None
    }

    /// The document a call is about (an IRN: in a read's path, in a cancel's body), so that
    /// it goes to the portal that generated it; `body` is the caller's plain JSON in gateway
    /// mode.
    fn document_named(&self, _method: &Method, _path: &CallerPath, _body: &[u8]) -> Option<String> {
        None
    }

    /// The document a successful generate created, from its plain reply (an IRN), so that
    /// reads of it go to the portal that generated it.
    fn generated_document(
        &self,
        _method: &Method,
        _path: &CallerPath,
        _plain: &[u8],
    ) -> Option<String> {
        None
    }

    /// Settings of `upstream` this API accepts but that are likely a mistake.
    fn config_warnings(&self, _upstream: &UpstreamConfig) -> Vec<String> {
        Vec::new()
    }

    /// The generate a call is, if it creates a document and its plain `body` names it well
    /// enough to look the document up; `None` for every other call.
    fn generate(&self, _method: &Method, _path: &CallerPath, _body: &[u8]) -> Option<Generate> {
        None
    }

    /// Whether a call may create a document, as far as its method, path and what of its
    /// `body` is plain tell (a passthrough body's payload is the caller's ciphertext): such a
    /// call whose earlier attempt may have reached the upstream is never sent blindly.
    fn may_generate(&self, _method: &Method, _path: &CallerPath, _body: &[u8]) -> bool {
        false
    }
}

/// `text` with every character that could forge a log line or reorder what a reader sees
/// escaped, cut after at most `max` bytes (at a character boundary, marked with `…`).
fn tame(text: String, max: usize) -> String {
    // Printable ASCII that fits, the usual error message, is kept as it is.
    if text.len() <= max && text.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return text;
    }
    let mut out = String::with_capacity(text.len().min(max));
    let mut utf8 = [0u8; 4];
    for c in text.chars() {
        let escaped;
        let piece: &str = if invisible(c) {
            escaped = format!("\\u{{{:x}}}", u32::from(c));
            &escaped
        } else {
            c.encode_utf8(&mut utf8)
        };
        if out.len() + piece.len() > max {
            out.push('…');
            break;
        }
        out.push_str(piece);
    }
    out
}

/// Whether `c` could end a line, move the cursor, reorder what a reader sees or hide text:
/// control characters, zero-width and joiner characters, bidirectional marks, embeddings and
/// isolates, the line and paragraph separators, the soft hyphen, the byte order mark and the
/// tag characters.
fn invisible(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{E0000}'..='\u{E007F}')
}

/// The verdict on a reply that is not JSON: only the HTTP status says anything.
fn non_json_verdict(status: StatusCode) -> Verdict {
    Verdict {
        class: if status.is_server_error() {
            Class::Transient
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            Class::Throttled
        } else {
            Class::Business
        },
        code: None,
        message: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{einvoice::Einvoice, ewaybill::Ewaybill, gstn::Gstn};

    /// An upstream's error text reaches logs, `/status` and webhooks: whatever it holds, what
    /// gstgate keeps of it is short and has no character that forges a line or hides text.
    #[test]
    fn hostile_upstream_error_text_is_escaped_and_capped() {
        let hostile = format!(
            "bad\r\nlevel=INFO forged\u{1b}[31m red \u{202e}txet\u{2028}\u{61c}\u{ad}\u{2060}\u{e0041}{}",
            "x".repeat(8 << 20)
        );
        let code = format!("1008\n{}", "9".repeat(1000));
        let bodies = [
            (
                &Einvoice as &dyn Profile,
                serde_json::json!({"Status": 0, "ErrorDetails": [{"ErrorCode": code, "ErrorMessage": hostile}]}),
            ),
            (
                &Gstn,
                serde_json::json!({"status_cd": "0", "error": {"error_cd": code, "message": hostile}}),
            ),
            (
                &Ewaybill,
                serde_json::json!({"status": "0", "error": {"errorCodes": code}, "message": hostile}),
            ),
        ];
        for (profile, body) in bodies {
            let body = serde_json::to_vec(&body).unwrap();
            let verdict = profile.read_reply(StatusCode::OK, &body).verdict;
            for text in [&verdict.message, &verdict.code].into_iter().flatten() {
                assert!(
                    text.len() <= MAX_MESSAGE_BYTES + '…'.len_utf8(),
                    "{}",
                    text.len()
                );
                assert!(!text.chars().any(char::is_control), "{text:?}");
                for c in [
                    '\u{202e}',
                    '\u{2028}',
                    '\u{61c}',
                    '\u{ad}',
                    '\u{2060}',
                    '\u{e0041}',
                ] {
                    assert!(!text.contains(c), "{c:?} kept in {text:?}");
                }
            }
            if let Some(m) = &verdict.message {
                assert!(
                    m.starts_with("bad\\u{d}\\u{a}level=INFO forged\\u{1b}[31m"),
                    "{m}"
                );
            }
            assert!(verdict.code.is_some_and(|c| c.len() <= MAX_CODE_BYTES + 3));
            let refused = profile.parse_login(&body, &AesKey::random());
            assert!(
                matches!(&refused, Err(LoginFailure::Refused(v)) if v.message.as_ref().is_none_or(|m| m.len() < 2048)),
                "a login refusal is tamed too"
            );
        }
    }
}
