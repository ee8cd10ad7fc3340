//! Upstream GSP APIs: one [`Profile`] per API kind, and the HTTP client that calls them.
//!
//! Profiles are the one place where NIC e-invoice, e-way bill and GSTN differ: how to log in,
//! which headers a call carries, how a body is encrypted and a reply decrypted, and how a
//! reply is classified. The rest of the gateway speaks only of sessions and [`Class`]es.

pub mod client;
pub mod einvoice;
pub mod envelope;
pub mod ewaybill;
pub mod gstn;
pub mod nic;
pub mod renewal;
pub mod sealed;
pub mod tls;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{ApiKind, ChecksumPolicy, Config, ConfigError, Encryption, UpstreamConfig};
pub use crate::config::{HEADER_ROLES, ROLE_COUNT};
use crate::crypto::{AesKey, PublicKey};
use crate::gstin::Gstin;
use crate::metrics::{Metrics, UpstreamLabel};
use crate::path::CallerPath;
use crate::problem::GatewayError;

/// What an upstream reply means to the gateway (DESIGN.md §1 step 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// It worked.
    Success,
    /// The token is expired, revoked or does not match the headers: re-login once, replay once.
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

impl Verdict {
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
    OtpRequest,
    /// Exchange the OTP the taxpayer received for a session.
    Otp(&'a str),
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
                verdict: verdict_of(&envelope),
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
    let verdict = verdict_of(&envelope);
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

/// The header values a profile injects, precomputed so the request path does not allocate.
pub struct HeaderContext<'a> {
    /// The upstream's header names.
    pub names: &'a HeaderNames,
    /// Client id (sensitive).
    pub client_id: &'a HeaderValue,
    /// Client secret (sensitive).
    pub client_secret: &'a HeaderValue,
    /// The taxpayer's GSTIN.
    pub gstin: &'a HeaderValue,
    /// The API user name.
    pub user_name: &'a HeaderValue,
    /// The GSTIN's two-digit state code.
    pub state_cd: &'a HeaderValue,
    /// The end user's IP address, as configured (GSTN's `ip-usr`).
    pub ip_usr: &'a HeaderValue,
}

impl HeaderContext<'_> {
    /// Inserts the headers every call of every GST API carries: client id, client secret
    /// and GSTIN.
    pub fn insert_client(&self, out: &mut HeaderMap) {
        out.insert(self.names.client_id.clone(), self.client_id.clone());
        out.insert(self.names.client_secret.clone(), self.client_secret.clone());
        out.insert(self.names.gstin.clone(), self.gstin.clone());
    }
}

/// The header names an upstream uses, after `header_names` overrides.
#[derive(Debug, Clone)]
pub struct HeaderNames {
    /// Client id header.
    pub client_id: HeaderName,
    /// Client secret header.
    pub client_secret: HeaderName,
    /// GSTIN header.
    pub gstin: HeaderName,
    /// User name header.
    pub user_name: HeaderName,
    /// Auth token header.
    pub auth_token: HeaderName,
    /// State code header (GSTN).
    pub state_cd: HeaderName,
    /// End-user IP header (GSTN).
    pub ip_usr: HeaderName,
    /// Per-request transaction id header (GSTN).
    pub txn: HeaderName,
}

/// The API-specific behaviour of an upstream.
pub trait Profile: Send + Sync + 'static {
    /// Default header names, in [`HEADER_ROLES`] order.
    fn default_header_names(&self) -> [&'static str; ROLE_COUNT];

    /// How sessions are renewed before they expire.
    fn renewal(&self) -> &'static dyn renewal::Renewal;

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
    /// ones every API may carry ([`GENERIC_CALLER_HEADERS`]); all others are dropped.
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

    /// Parses and classifies a data reply.
    fn read_reply<'a>(&self, status: StatusCode, body: &'a [u8]) -> Reply<'a>;

    /// Turns a successful reply into the caller's plain JSON (gateway encryption mode).
    fn decode_reply(&self, reply: Reply<'_>, sek: &AesKey) -> Result<Vec<u8>, GatewayError>;

    /// The body gstgate answers a caller's login call with: a success that reveals neither
    /// token nor SEK.
    fn auth_answer(&self, username: &str, expires_at: SystemTime) -> Vec<u8>;
}

/// Caller headers every API may receive: what the body is and what the caller accepts.
/// `x-request-id` is not among them: gstgate always sends its own, validated id.
pub const GENERIC_CALLER_HEADERS: &[&str] = &["content-type", "accept"];

/// The `User-Agent` gstgate sends upstream.
static USER_AGENT: HeaderValue =
    HeaderValue::from_static(concat!("gstgate/", env!("CARGO_PKG_VERSION")));

/// The `Accept` sent when the caller named none, as gstgate always has.
static ACCEPT_ANY: HeaderValue = HeaderValue::from_static("*/*");

/// A fresh GSTN-style transaction id: 32 hex digits, unique per request.
pub fn transaction_id() -> HeaderValue {
    let text = format!("{:032x}", rand::random::<u128>());
    // Hex digits are always a valid header value.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("0"))
}

/// A configured upstream, ready to call.
pub struct Upstream {
    /// Name in metrics, logs and admin paths.
    pub name: Arc<str>,
    /// The API-specific behaviour.
    pub profile: Box<dyn Profile>,
    /// `scheme://authority/base-path` without a trailing slash; requests go to it + the
    /// caller's validated path.
    base: String,
    /// Path prefixes routed here.
    pub routes: Vec<String>,
    /// Login path.
    pub auth_path: CallerPath,
    /// The upstream's RSA key.
    pub public_key: PublicKey,
    /// Who encrypts payloads.
    pub encryption: Encryption,
    /// Client id header value (sensitive).
    pub client_id: HeaderValue,
    /// Client secret header value (sensitive).
    pub client_secret: HeaderValue,
    /// The `ip-usr` value sent to APIs that want the end user's IP (GSTN).
    pub ip_usr: HeaderValue,
    /// Header names.
    pub names: HeaderNames,
    /// Static extra headers (sensitive).
    pub static_headers: Vec<(HeaderName, HeaderValue)>,
    /// Caller headers that may travel upstream: the generic ones, the profile's and
    /// `forward_headers`.
    pub forwarded: Vec<HeaderName>,
    /// Refresh this long before expiry.
    pub refresh_before: Duration,
    /// GSTIN checksum policy.
    pub checksum: ChecksumPolicy,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Token lifetime when the login reply has no expiry.
    pub token_lifetime: Duration,
    /// Logins allowed per credential per window.
    pub max_logins: u32,
    /// Login-limit window.
    pub login_window: Duration,
    /// Idle sessions are dropped after this.
    pub idle_ttl: Duration,
    /// Largest reply accepted.
    pub max_response_bytes: usize,
    http: client::HttpClient,
    metrics: Arc<Metrics>,
    label: UpstreamLabel,
}

/// Why an upstream could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The public key file is missing or unreadable.
    #[error("upstream `{name}`: cannot read public key {path}: {source}")]
    KeyFile {
        /// Upstream name.
        name: String,
        /// The file.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// The public key does not parse.
    #[error("upstream `{name}`: public key {path}: {source}")]
    Key {
        /// Upstream name.
        name: String,
        /// The file.
        path: String,
        /// Parse error.
        source: crate::crypto::CryptoError,
    },
    /// A configured value cannot be a header.
    #[error("upstream `{name}`: {what} is not a valid HTTP header value")]
    Header {
        /// Upstream name.
        name: String,
        /// Which value.
        what: String,
    },
    /// A URL or path setting cannot be used.
    #[error("upstream `{name}`: {what}")]
    Setting {
        /// Upstream name.
        name: String,
        /// What is wrong with which setting.
        what: String,
    },
    /// The HTTP client could not be built.
    #[error("upstream `{name}`: HTTP client: {source}")]
    Client {
        /// Upstream name.
        name: String,
        /// TLS set-up error.
        source: tls::TlsError,
    },
}

fn sensitive(value: &str, name: &str, what: &str) -> Result<HeaderValue, UpstreamError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| UpstreamError::Header {
        name: name.to_owned(),
        what: what.to_owned(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

fn header_name(value: &str, name: &str) -> Result<HeaderName, UpstreamError> {
    HeaderName::from_bytes(value.as_bytes()).map_err(|_| UpstreamError::Header {
        name: name.to_owned(),
        what: format!("header name `{value}`"),
    })
}

impl Upstream {
    /// Builds an upstream from validated configuration: reads its key, builds its client.
    pub fn from_config(cfg: &UpstreamConfig, metrics: Arc<Metrics>) -> Result<Self, UpstreamError> {
        let name = cfg.name.clone();
        let profile: Box<dyn Profile> = match cfg.api {
            ApiKind::Einvoice => Box::new(einvoice::Einvoice),
            ApiKind::Ewaybill => Box::new(ewaybill::Ewaybill),
            ApiKind::Gstn => Box::new(gstn::Gstn),
        };
        let path = cfg.public_key.display().to_string();
        let pem = std::fs::read(&cfg.public_key).map_err(|source| UpstreamError::KeyFile {
            name: name.clone(),
            path: path.clone(),
            source,
        })?;
        let public_key =
            PublicKey::from_pem_or_cert(&pem).map_err(|source| UpstreamError::Key {
                name: name.clone(),
                path,
                source,
            })?;
        let defaults = profile.default_header_names();
        let pick = |i: usize| -> Result<HeaderName, UpstreamError> {
            let role = HEADER_ROLES[i];
            header_name(
                cfg.header_names
                    .get(role)
                    .map(String::as_str)
                    .unwrap_or(defaults[i]),
                &name,
            )
        };
        let names = HeaderNames {
            client_id: pick(0)?,
            client_secret: pick(1)?,
            gstin: pick(2)?,
            user_name: pick(3)?,
            auth_token: pick(4)?,
            state_cd: pick(5)?,
            ip_usr: pick(6)?,
            txn: pick(7)?,
        };
        let static_headers = cfg
            .headers
            .iter()
            .map(|(k, v)| {
                Ok((
                    header_name(k, &name)?,
                    sensitive(v.expose_secret(), &name, k)?,
                ))
            })
            .collect::<Result<_, UpstreamError>>()?;
        let mut forwarded: Vec<HeaderName> = Vec::new();
        for raw in GENERIC_CALLER_HEADERS
            .iter()
            .chain(profile.caller_headers())
            .map(|h| h.to_string())
            .chain(cfg.forward_headers.iter().map(|h| h.to_ascii_lowercase()))
        {
            let h = header_name(&raw, &name)?;
            if !forwarded.contains(&h) {
                forwarded.push(h);
            }
        }
        let tls =
            tls::client_config(cfg.ca_file.as_deref()).map_err(|source| UpstreamError::Client {
                name: name.clone(),
                source,
            })?;
        let http = client::build(tls, cfg.connect_timeout);
        Ok(Self {
            label: UpstreamLabel {
                upstream: crate::metrics::Name(name.as_str().into()),
            },
            name: name.as_str().into(),
            profile,
            base: reqwest::Url::parse(&cfg.base_url)
                .map_err(|_| UpstreamError::Setting {
                    name: name.clone(),
                    what: "base_url is not a URL".into(),
                })?
                .as_str()
                .trim_end_matches('/')
                .to_owned(),
            routes: cfg.routes.clone(),
            auth_path: CallerPath::parse(&cfg.auth_path, None).map_err(|e| {
                UpstreamError::Setting {
                    name: name.clone(),
                    what: format!("auth_path: {e}"),
                }
            })?,
            public_key,
            encryption: cfg.encryption,
            client_id: sensitive(cfg.client_id.expose_secret(), &name, "client_id")?,
            client_secret: sensitive(cfg.client_secret.expose_secret(), &name, "client_secret")?,
            ip_usr: HeaderValue::from_str(&cfg.ip_usr).map_err(|_| UpstreamError::Header {
                name: name.clone(),
                what: "ip_usr".into(),
            })?,
            names,
            static_headers,
            forwarded,
            refresh_before: cfg.refresh_before,
            checksum: cfg.gstin_checksum,
            timeout: cfg.timeout,
            token_lifetime: cfg
                .token_lifetime
                .unwrap_or(crate::config::DEFAULT_TOKEN_LIFETIME),
            max_logins: cfg.max_logins,
            login_window: cfg.login_window,
            idle_ttl: cfg.session_idle_ttl,
            max_response_bytes: cfg.max_response_bytes,
            http,
            metrics,
        })
    }

    /// The length of the longest route prefix of this upstream that `path` starts with.
    pub fn route_match(&self, path: &CallerPath) -> Option<usize> {
        self.routes
            .iter()
            .filter(|r| path.path().starts_with(r.as_str()))
            .map(String::len)
            .max()
    }

    /// Whether a path is this upstream's login path in any spelling the upstream would take
    /// (case, version, trailing slash): such calls are answered by gstgate itself, so no
    /// caller ever reaches the upstream's auth endpoint with gstgate's client credentials.
    pub fn is_auth_path(&self, path: &CallerPath) -> bool {
        path.matches_loosely(self.auth_path.path())
    }

    /// The header context for a GSTIN/user.
    pub fn header_context<'a>(
        &'a self,
        gstin: &'a HeaderValue,
        user_name: &'a HeaderValue,
        state_cd: &'a HeaderValue,
    ) -> HeaderContext<'a> {
        HeaderContext {
            names: &self.names,
            client_id: &self.client_id,
            client_secret: &self.client_secret,
            gstin,
            user_name,
            state_cd,
            ip_usr: &self.ip_usr,
        }
    }

    /// `base_url` + the caller's validated path + its query, concatenated and never resolved:
    /// the path was checked by [`CallerPath`], so the upstream gets exactly the path gstgate
    /// routed on, under the base URL's own path. (A URL parser would resolve dot segments,
    /// which is how `..` used to climb out of the base path.)
    fn uri(&self, path: &CallerPath) -> Result<Uri, GatewayError> {
        let query = path.query();
        let mut text = String::with_capacity(
            self.base.len() + path.path().len() + query.map_or(0, |q| q.len() + 1),
        );
        text.push_str(&self.base);
        text.push_str(path.path());
        if let Some(q) = query {
            text.push('?');
            text.push_str(q);
        }
        // The base is a parsed http(s) URL and the path and query passed hyper's parser.
        Uri::try_from(text)
            .map_err(|_| GatewayError::Internal("the upstream URL is not a valid URI".into()))
    }

    /// Sends one request and reads the whole reply, within the timeout and size cap.
    pub async fn send(
        &self,
        method: Method,
        path: &CallerPath,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GatewayError> {
        for (k, v) in &self.static_headers {
            headers.insert(k.clone(), v.clone());
        }
        let uri = self.uri(path)?;
        let started = Instant::now();
        let result =
            match tokio::time::timeout(self.timeout, self.exchange(method, uri, headers, body))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(GatewayError::UpstreamTimeout(self.timeout.as_millis())),
            };
        self.metrics
            .upstream_duration
            .get_or_create(&self.label)
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn exchange(
        &self,
        method: Method,
        uri: Uri,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GatewayError> {
        headers
            .entry(header::USER_AGENT)
            .or_insert_with(|| USER_AGENT.clone());
        headers
            .entry(header::ACCEPT)
            .or_insert_with(|| ACCEPT_ANY.clone());
        let mut req = http::Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let res = self.http.request(req).await.map_err(|e| {
            if e.is_connect() {
                GatewayError::UpstreamUnreachable
            } else {
                GatewayError::UpstreamUnavailable(
                    "the upstream closed the connection or sent an invalid HTTP response".into(),
                )
            }
        })?;
        let (parts, body) = res.into_parts();
        if let Some(len) = hyper::body::Body::size_hint(&body).exact() {
            if len > self.max_response_bytes as u64 {
                return Err(GatewayError::UpstreamBadResponse(format!(
                    "response of {len} bytes exceeds the limit of {}",
                    self.max_response_bytes
                )));
            }
        }
        match Limited::new(body, self.max_response_bytes).collect().await {
            Ok(collected) => Ok((parts.status, parts.headers, collected.to_bytes())),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(GatewayError::UpstreamBadResponse(format!(
                    "response exceeds the limit of {} bytes",
                    self.max_response_bytes
                )))
            }
            Err(_) => Err(GatewayError::UpstreamUnavailable(
                "the upstream closed the connection or sent an invalid HTTP response".into(),
            )),
        }
    }
}

/// Checks what `check-config` must check beyond the file's syntax: that every upstream's
/// public key and CA file parse (except the keys the in-process simulator writes at start-up,
/// which need not exist yet). `serve` does the same when it builds the upstreams.
pub fn check_files(config: &Config, path: &Path) -> Result<(), ConfigError> {
    let from_sim = config
        .simulator
        .as_ref()
        .map(|s| s.public_key_out.as_path());
    for (i, u) in config.upstreams.iter().enumerate() {
        if Some(u.public_key.as_path()) == from_sim {
            continue;
        }
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: format!("upstream[{i}].public_key"),
            message,
        };
        let bytes = std::fs::read(&u.public_key)
            .map_err(|e| invalid(format!("cannot read {}: {e}", u.public_key.display())))?;
        crate::crypto::PublicKey::from_pem_or_cert(&bytes)
            .map_err(|e| invalid(format!("{}: {e}", u.public_key.display())))?;
    }
    for (i, u) in config.upstreams.iter().enumerate() {
        if let Some(ca) = &u.ca_file {
            tls::client_config(Some(ca)).map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                key: format!("upstream[{i}].ca_file"),
                message: e.to_string(),
            })?;
        }
    }
    Ok(())
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

    #[test]
    fn no_header_a_profile_injects_can_be_forwarded_from_a_caller() {
        let profiles: [Box<dyn Profile>; 3] = [
            Box::new(einvoice::Einvoice),
            Box::new(ewaybill::Ewaybill),
            Box::new(gstn::Gstn),
        ];
        for profile in profiles {
            for name in profile.default_header_names() {
                assert!(
                    crate::config::RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()),
                    "`{name}` is injected but not reserved"
                );
                assert!(!profile.caller_headers().contains(&name));
            }
        }
    }
}
