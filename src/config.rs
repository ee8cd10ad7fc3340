//! The configuration file (DESIGN.md §4, a contract): TOML schema, `${VAR}` interpolation and
//! validation.
//!
//! Interpolation happens inside deserialization, field by field, so that every error — an
//! unknown key, a missing environment variable, a malformed duration — comes out of the TOML
//! parser with the line, the column and the offending key in it. Semantic checks that span
//! several fields (an upstream named by a credential exists, a public key parses) run after.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use crate::gstin::Gstin;

/// NIC allows a forced refresh only in the last 10 minutes of a token's life (PROTOCOL.md §1).
pub const DEFAULT_REFRESH_BEFORE: Duration = Duration::from_secs(10 * 60);
/// NIC and GSTN tokens live 360 minutes.
pub const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(6 * 60 * 60);
/// GSP help pages report a block after 5 logins in 15 minutes; stay one under it.
pub const DEFAULT_MAX_LOGINS: u32 = 4;
/// The window of the reported login limit.
pub const DEFAULT_LOGIN_WINDOW: Duration = Duration::from_secs(15 * 60);
/// NIC e-way bill reportedly blocks a user for 15 minutes after 5 logins in 15 minutes
/// (GSP help pages): a configured limit above it would walk into the block.
pub const EWAYBILL_MAX_LOGINS: u32 = 5;
/// The longest token life gstgate believes: every GST API issues 6-hour tokens, and a longer
/// claim (a misconfigured `token_lifetime`, an upstream's far-future expiry) is cut to this so
/// that timers stay in range and a session is re-checked at least daily.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// Proxy settings other HTTP clients honour and gstgate does not: an operator who set one
/// expects its traffic to go through the proxy, so start-up says it will not.
pub const PROXY_VARIABLES: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// The longest timeout or grace period the config accepts.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// GSTN's `ip-usr` when none is configured: the gateway stands in for the end user.
pub const DEFAULT_IP_USR: &str = "127.0.0.1";
/// The longest API-access period a taxpayer can enable on the GST portal.
pub const MAX_SESSION_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// The shortest API-access period the GST portal offers.
pub const MIN_SESSION_LIFETIME: Duration = Duration::from_secs(6 * 3600);
/// A caller request body above this is refused with 413 (DESIGN.md §4 default).
pub const DEFAULT_MAX_BODY_BYTES: usize = 2 * 1024 * 1024;
/// Request headers above this (all of them together) are refused.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 32 * 1024;
/// Upstream responses above this are refused with 502: e-invoice replies are kilobytes, a
/// GSTN return summary at most a few megabytes.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;

/// The header roles whose names an upstream's `header_names` may override.
pub const HEADER_ROLES: &[&str] = &[
    "client_id",
    "client_secret",
    "gstin",
    "user_name",
    "auth_token",
    "state_cd",
    "ip_usr",
    "txn",
];

/// `HEADER_ROLES.len()`: each profile's default names come as an array in that order.
pub const ROLE_COUNT: usize = HEADER_ROLES.len();

/// Headers `forward_headers` may not name: hop-by-hop and framing headers, the caller's own
/// credentials, the ones gstgate sets itself, and every spelling of a GST identity or
/// credential header, which only gstgate may send (the configured `header_names` and static
/// `headers` are refused too).
pub const RESERVED_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "http2-settings",
    "host",
    "content-length",
    "expect",
    "x-api-key",
    "authorization",
    "cookie",
    "x-request-id",
    "user-agent",
    "client_id",
    "client-id",
    "clientid",
    "client_secret",
    "client-secret",
    "clientsecret",
    "gstin",
    "user_name",
    "user-name",
    "username",
    "password",
    "authtoken",
    "auth-token",
    "auth_token",
    "sek",
    "appkey",
    "app_key",
    "app-key",
    "state-cd",
    "state_cd",
    "ip-usr",
    "ip_usr",
    "txn",
];

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners and limits.
    pub server: ServerConfig,
    /// Where sessions live.
    #[serde(default)]
    pub store: StoreConfig,
    /// The GSP APIs gstgate fronts.
    #[serde(default, rename = "upstream")]
    pub upstreams: Vec<UpstreamConfig>,
    /// Taxpayer API credentials.
    #[serde(default, rename = "credential")]
    pub credentials: Vec<CredentialConfig>,
    /// Operator alerts.
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// ASP backends allowed to call gstgate.
    #[serde(default, rename = "client")]
    pub clients: Vec<ClientConfig>,
    /// Run the built-in GSP simulator in-process (demo and sandboxes; not for production).
    #[serde(default)]
    pub simulator: Option<SimulatorConfig>,
}

/// `[server]`: listeners, admin token, limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The proxy port ASP backends call.
    #[serde(deserialize_with = "env_parse", default = "default_listen")]
    pub listen: SocketAddr,
    /// Health, readiness, metrics and admin API.
    #[serde(deserialize_with = "env_parse", default = "default_admin_listen")]
    pub admin_listen: SocketAddr,
    /// Bearer token for `/admin/*`; without it the admin API is disabled.
    #[serde(default, deserialize_with = "env_secret_opt")]
    pub admin_token: Option<SecretString>,
    /// Largest caller request body.
    #[serde(default = "default_max_body")]
    pub max_body_bytes: usize,
    /// Largest total size of a caller's request headers.
    #[serde(default = "default_max_header")]
    pub max_header_bytes: usize,
    /// Time from accepting a request to sending its response, retries included.
    #[serde(deserialize_with = "env_duration", default = "default_request_timeout")]
    pub request_timeout: Duration,
    /// How long a client may take to send its request headers.
    #[serde(deserialize_with = "env_duration", default = "default_header_timeout")]
    pub header_read_timeout: Duration,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[serde(deserialize_with = "env_duration", default = "default_shutdown_grace")]
    pub shutdown_grace: Duration,
}

/// `[store]`: session storage backend.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `memory` (one process) or `redis` (replicas).
    #[serde(default, deserialize_with = "env_parse")]
    pub backend: StoreBackend,
    /// Redis URL for the `redis` backend.
    #[serde(default, deserialize_with = "env_string_opt")]
    pub redis_url: Option<String>,
    /// Base64 of 32 bytes: encrypts tokens and SEKs at rest in Redis.
    #[serde(default, deserialize_with = "env_secret_opt")]
    pub encryption_key: Option<SecretString>,
}

/// Session store backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreBackend {
    /// In-process map: one gateway process.
    #[default]
    Memory,
    /// Shared through Redis: several replicas.
    Redis,
}

impl FromStr for StoreBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "memory" => Ok(Self::Memory),
            "redis" => Ok(Self::Redis),
            other => Err(format!(
                "unknown store backend `{other}`, expected `memory` or `redis`"
            )),
        }
    }
}

/// The kind of GST API an upstream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiKind {
    /// NIC e-invoice (IRP).
    Einvoice,
    /// NIC e-way bill.
    Ewaybill,
    /// GSTN taxpayer (returns) API.
    Gstn,
}

impl FromStr for ApiKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "einvoice" => Ok(Self::Einvoice),
            "ewaybill" => Ok(Self::Ewaybill),
            "gstn" => Ok(Self::Gstn),
            other => Err(format!(
                "unknown api `{other}`, expected `einvoice`, `ewaybill` or `gstn`"
            )),
        }
    }
}

impl fmt::Display for ApiKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Einvoice => "einvoice",
            Self::Ewaybill => "ewaybill",
            Self::Gstn => "gstn",
        })
    }
}

/// Who encrypts payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encryption {
    /// gstgate encrypts requests and decrypts responses with the session key.
    Gateway,
    /// Bodies go through untouched (the GSP does the crypto, "enriched" APIs).
    Passthrough,
}

impl FromStr for Encryption {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "gateway" => Ok(Self::Gateway),
            "passthrough" => Ok(Self::Passthrough),
            other => Err(format!(
                "unknown encryption `{other}`, expected `gateway` or `passthrough`"
            )),
        }
    }
}

/// Whether a bad GSTIN check character refuses the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumPolicy {
    /// Refuse with 400 `gstin_invalid` (production).
    Enforce,
    /// Log a warning and go on (sandboxes, whose sample GSTINs often fail the checksum).
    Warn,
}

impl FromStr for ChecksumPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "enforce" => Ok(Self::Enforce),
            "warn" => Ok(Self::Warn),
            other => Err(format!(
                "unknown gstin_checksum `{other}`, expected `enforce` or `warn`"
            )),
        }
    }
}

/// `[[upstream]]`: one GSP API.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name used in metrics, logs, credentials and admin paths.
    #[serde(deserialize_with = "env_parse")]
    pub name: String,
    /// Which protocol profile.
    #[serde(deserialize_with = "env_parse")]
    pub api: ApiKind,
    /// Requests go to `base_url` + caller path.
    #[serde(deserialize_with = "env_parse")]
    pub base_url: String,
    /// Path prefixes served by this upstream.
    #[serde(deserialize_with = "env_vec")]
    pub routes: Vec<String>,
    /// The login path (relative to `base_url`).
    #[serde(deserialize_with = "env_parse")]
    pub auth_path: String,
    /// PEM public key or X.509 certificate of the upstream.
    #[serde(deserialize_with = "env_parse")]
    pub public_key: PathBuf,
    /// Extra CA certificates (PEM) to trust for this upstream's TLS, besides the public roots.
    #[serde(default, deserialize_with = "env_path_opt")]
    pub ca_file: Option<PathBuf>,
    /// Who encrypts payloads.
    #[serde(deserialize_with = "env_parse", default = "default_encryption")]
    pub encryption: Encryption,
    /// GSP/NIC client id.
    #[serde(deserialize_with = "env_secret")]
    pub client_id: SecretString,
    /// GSP/NIC client secret.
    #[serde(deserialize_with = "env_secret")]
    pub client_secret: SecretString,
    /// Refresh a session this long before its token expires.
    #[serde(deserialize_with = "env_duration", default = "default_refresh_before")]
    pub refresh_before: Duration,
    /// GSTIN check-character policy.
    #[serde(deserialize_with = "env_parse", default = "default_checksum")]
    pub gstin_checksum: ChecksumPolicy,
    /// Total time for one upstream call (headers and body).
    #[serde(
        deserialize_with = "env_duration",
        default = "default_upstream_timeout"
    )]
    pub timeout: Duration,
    /// Time to establish a connection to the upstream.
    #[serde(deserialize_with = "env_duration", default = "default_connect_timeout")]
    pub connect_timeout: Duration,
    /// Token lifetime for APIs whose login reply carries no expiry (e-way bill).
    #[serde(default, deserialize_with = "env_duration_opt")]
    pub token_lifetime: Option<Duration>,
    /// At most this many logins per credential per `login_window`.
    #[serde(default = "default_max_logins")]
    pub max_logins: u32,
    /// The window of `max_logins`.
    #[serde(deserialize_with = "env_duration", default = "default_login_window")]
    pub login_window: Duration,
    /// Sessions unused for this long are dropped instead of refreshed.
    #[serde(deserialize_with = "env_duration", default = "default_idle_ttl")]
    pub session_idle_ttl: Duration,
    /// Largest upstream response body accepted.
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// Static extra headers sent on every call (GSP subscription keys…).
    #[serde(default, deserialize_with = "env_map")]
    pub headers: BTreeMap<String, SecretString>,
    /// The end user's IP address sent as GSTN's `ip-usr` header.
    #[serde(deserialize_with = "env_parse", default = "default_ip_usr")]
    pub ip_usr: String,
    /// Overrides of the profile's header names (`client_id`, `client_secret`, `gstin`,
    /// `user_name`, `auth_token`, `state_cd`, `ip_usr`, `txn`), for GSPs that spell them
    /// differently.
    #[serde(default, deserialize_with = "env_map_plain")]
    pub header_names: BTreeMap<String, String>,
    /// Caller headers this upstream needs besides the ones its API uses (a GSP's own
    /// headers); every other caller header is dropped.
    #[serde(default, deserialize_with = "env_vec")]
    pub forward_headers: Vec<String>,
}

/// `[[credential]]`: one taxpayer user's API login.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialConfig {
    /// The taxpayer.
    #[serde(deserialize_with = "env_parse")]
    pub gstin: String,
    /// API user name created on the portal.
    #[serde(deserialize_with = "env_parse")]
    pub username: String,
    /// API password (not used by GSTN, whose sessions start with an OTP).
    #[serde(deserialize_with = "env_secret", default = "empty_secret")]
    pub password: SecretString,
    /// Upstream names this credential logs in to.
    #[serde(deserialize_with = "env_vec")]
    pub upstreams: Vec<String>,
    /// GSTN: the API-access period the taxpayer enabled on the portal.
    #[serde(default, deserialize_with = "env_duration_opt")]
    pub session_lifetime: Option<Duration>,
}

/// `[alerts]`: operator notifications.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AlertsConfig {
    /// JSON alerts are POSTed here.
    #[serde(default, deserialize_with = "env_string_opt")]
    pub webhook_url: Option<String>,
    /// Warn this long before a GSTN session needs a new OTP.
    #[serde(default, deserialize_with = "env_duration_opt")]
    pub otp_warning: Option<Duration>,
    /// How often session states are checked for alerts.
    #[serde(default, deserialize_with = "env_duration_opt")]
    pub check_interval: Option<Duration>,
}

/// `[[client]]`: one ASP backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// Name in logs.
    #[serde(deserialize_with = "env_parse")]
    pub name: String,
    /// Lower-case hex SHA-256 of the API key (`gstgate hash-key`).
    #[serde(deserialize_with = "env_parse")]
    pub api_key_sha256: String,
    /// GSTINs this client may act for; `"*"` for all.
    #[serde(deserialize_with = "env_vec")]
    pub gstins: Vec<String>,
}

/// `[simulator]`: an in-process GSP simulator, so the demo runs with one command and no
/// credentials. Its users and clients are taken from `[[credential]]` and `[[upstream]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Where the simulator listens; upstream `base_url`s point here.
    #[serde(deserialize_with = "env_parse")]
    pub listen: SocketAddr,
    /// Private key file, generated on first start.
    #[serde(deserialize_with = "env_parse")]
    pub key_file: PathBuf,
    /// Where the simulator writes its public key; upstream `public_key`s name this file.
    #[serde(deserialize_with = "env_parse")]
    pub public_key_out: PathBuf,
    /// Lifetime of the simulator's tokens.
    #[serde(deserialize_with = "env_duration", default = "default_token_lifetime")]
    pub token_ttl: Duration,
    /// The simulator's force-refresh window.
    #[serde(deserialize_with = "env_duration", default = "default_refresh_before")]
    pub force_window: Duration,
    /// The demo's caller API key in plain text, so the ready line can print a working `curl`.
    /// Only meaningful for a demo: production keys are stored as digests.
    #[serde(default, deserialize_with = "env_string_opt")]
    pub demo_api_key: Option<String>,
    /// Every GSTN OTP the simulator issues is this one (GSTN's sandbox uses 575757), so a
    /// demo can finish the OTP flow without reading `/_sim/otp`.
    #[serde(default, deserialize_with = "env_string_opt")]
    pub fixed_otp: Option<String>,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 8080))
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_max_body() -> usize {
    DEFAULT_MAX_BODY_BYTES
}
fn default_max_header() -> usize {
    DEFAULT_MAX_HEADER_BYTES
}
fn default_max_response() -> usize {
    DEFAULT_MAX_RESPONSE_BYTES
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_encryption() -> Encryption {
    Encryption::Gateway
}
fn default_refresh_before() -> Duration {
    DEFAULT_REFRESH_BEFORE
}
fn empty_secret() -> SecretString {
    SecretString::from(String::new())
}

fn default_ip_usr() -> String {
    DEFAULT_IP_USR.to_owned()
}

fn default_token_lifetime() -> Duration {
    DEFAULT_TOKEN_LIFETIME
}
fn default_checksum() -> ChecksumPolicy {
    ChecksumPolicy::Enforce
}
fn default_upstream_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_logins() -> u32 {
    DEFAULT_MAX_LOGINS
}
/// A duration within `min..=max`, or what to write instead. Bounded so that no timer or
/// clock arithmetic built from the config can overflow.
fn check_duration(value: Duration, min: Duration, max: Duration) -> Result<(), String> {
    let show = |d: Duration| humantime::format_duration(d).to_string();
    if value < min {
        Err(format!("must be at least {}", show(min)))
    } else if value > max {
        Err(format!("must be at most {}", show(max)))
    } else {
        Ok(())
    }
}

fn default_login_window() -> Duration {
    DEFAULT_LOGIN_WINDOW
}
fn default_idle_ttl() -> Duration {
    Duration::from_secs(7 * 24 * 60 * 60)
}

/// A shorter warning than this cannot reach a person in time; it is a typo (`"48"` for `"48h"`).
pub const MIN_OTP_WARNING: Duration = Duration::from_secs(60);

/// Checks a webhook URL: http or https, with a host, parseable. The message never repeats the
/// URL, which may carry a secret.
pub fn check_webhook_url(text: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(text).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    Ok(url)
}

/// Checks `otp_warning` against [`MIN_OTP_WARNING`].
pub fn check_otp_warning(warning: Duration) -> Result<(), String> {
    if warning < MIN_OTP_WARNING {
        return Err(format!(
            "must be at least 1m (got {}); write e.g. \"48h\"",
            humantime::format_duration(warning)
        ));
    }
    Ok(())
}

/// Whether a configured path is in the canonical form callers' paths are normalised to.
fn check_canonical(path: &str) -> Result<(), String> {
    match crate::path::canonical(path) {
        Ok(c) if c == path => Ok(()),
        Ok(c) => Err(format!("is not in canonical form; write `{c}`")),
        Err(e) => Err(format!("is not a plain path: {e}")),
    }
}

/// Replaces every `${VAR}` in `text` with the environment variable's value; `$$` is a literal
/// `$`. A missing variable is an error naming it.
pub fn interpolate(text: &str) -> Result<String, String> {
    interpolate_with(text, |name| std::env::var(name).ok())
}

fn interpolate_with(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| "unterminated `${` (write `$$` for a literal `$`)".to_string())?;
            let name = &tail[..end];
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(format!("`${{{name}}}` is not a valid variable name"));
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

fn env_parse<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let raw = String::deserialize(d)?;
    let text = interpolate(&raw).map_err(serde::de::Error::custom)?;
    text.parse().map_err(serde::de::Error::custom)
}

fn env_string_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    env_parse(d).map(Some)
}

fn env_path_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(env_string_opt(d)?.map(PathBuf::from))
}

fn env_secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    env_parse::<D, String>(d).map(SecretString::from)
}

fn env_secret_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    env_secret(d).map(Some)
}

fn env_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let raw = String::deserialize(d)?;
    let text = interpolate(&raw).map_err(serde::de::Error::custom)?;
    humantime::parse_duration(text.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write e.g. \"45s\", \"10m\", \"6h\""
        ))
    })
}

fn env_duration_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    env_duration(d).map(Some)
}

fn env_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| interpolate(s).map_err(serde::de::Error::custom))
        .collect()
}

fn env_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, SecretString>, D::Error> {
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let v = interpolate(&v)
                .map_err(|e| serde::de::Error::custom(format!("header `{k}`: {e}")))?;
            Ok((k, SecretString::from(v)))
        })
        .collect()
}

fn env_map_plain<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let v = interpolate(&v).map_err(|e| serde::de::Error::custom(format!("`{k}`: {e}")))?;
            Ok((k, v))
        })
        .collect()
}

/// A configuration problem, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax, unknown key, wrong type, missing variable: the parser's message names the
    /// line and the key.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A rule spanning fields is broken.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Dotted key, e.g. `upstream[0].routes`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

impl Config {
    /// Reads, parses, interpolates and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates configuration text; `path` names the file in messages. Relative
    /// file names in the config are relative to the working directory.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                message,
            })?;
        Ok(config)
    }

    /// Checks the rules that span fields. Returns (key, message) of the first problem.
    fn validate(&self) -> Result<(), (String, String)> {
        if self.store.backend == StoreBackend::Redis {
            return Err((
                "store.backend".into(),
                "the redis backend is not available in this version; use \"memory\"".into(),
            ));
        }
        if self.server.max_body_bytes == 0 {
            return Err(("server.max_body_bytes".into(), "must be above 0".into()));
        }
        let server = &self.server;
        for (field, value, max) in [
            ("request_timeout", server.request_timeout, MAX_TIMEOUT),
            (
                "header_read_timeout",
                server.header_read_timeout,
                MAX_TIMEOUT,
            ),
            ("shutdown_grace", server.shutdown_grace, MAX_TIMEOUT),
        ] {
            check_duration(value, Duration::from_millis(1), max)
                .map_err(|m| (format!("server.{field}"), m))?;
        }
        if self
            .server
            .admin_token
            .as_ref()
            .is_some_and(|t| t.expose_secret().len() < 16)
        {
            return Err((
                "server.admin_token".into(),
                "must be at least 16 characters (it guards the admin API)".into(),
            ));
        }
        if self.upstreams.is_empty() {
            return Err((
                "upstream".into(),
                "at least one [[upstream]] is needed".into(),
            ));
        }
        let mut names = HashSet::new();
        let mut prefixes = HashSet::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            let key = |field: &str| format!("upstream[{i}].{field}");
            if u.name.is_empty()
                || !u
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err((key("name"), "use letters, digits, `-` and `_` only".into()));
            }
            if !names.insert(u.name.as_str()) {
                return Err((
                    key("name"),
                    format!("`{}` is used by two upstreams", u.name),
                ));
            }
            let url = reqwest::Url::parse(&u.base_url)
                .map_err(|e| (key("base_url"), format!("not a URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err((
                    key("base_url"),
                    "must be an http:// or https:// URL with a host".into(),
                ));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err((key("base_url"), "must not have a query or fragment".into()));
            }
            if !url.username().is_empty() || url.password().is_some() {
                return Err((
                    key("base_url"),
                    "must not carry a user or password (it would end up in logs and in HTTP/2's :authority); send GSP credentials as [upstream.headers]".into(),
                ));
            }
            // Routing compares canonical caller paths, and the upstream gets base path +
            // caller path verbatim: every configured path must already be canonical.
            check_canonical(url.path()).map_err(|m| (key("base_url"), format!("its path {m}")))?;
            if u.routes.is_empty() {
                return Err((key("routes"), "at least one path prefix is needed".into()));
            }
            for r in &u.routes {
                check_canonical(r).map_err(|m| (key("routes"), format!("`{r}` {m}")))?;
                if !prefixes.insert(r.as_str()) {
                    return Err((key("routes"), format!("`{r}` is routed by two upstreams")));
                }
            }
            check_canonical(&u.auth_path).map_err(|m| (key("auth_path"), m))?;
            for name in &u.forward_headers {
                let lower = name.to_ascii_lowercase();
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err((
                        key("forward_headers"),
                        format!("`{name}` is not a header name"),
                    ));
                }
                let injected = u
                    .header_names
                    .values()
                    .chain(u.headers.keys())
                    .any(|n| n.eq_ignore_ascii_case(&lower));
                if RESERVED_HEADERS.contains(&lower.as_str()) || injected {
                    return Err((
                        key("forward_headers"),
                        format!("`{name}` is set by gstgate itself or is hop-by-hop; a caller may not send it upstream"),
                    ));
                }
            }
            let one_ms = Duration::from_millis(1);
            for (field, value, min, max) in [
                ("timeout", u.timeout, one_ms, MAX_TIMEOUT),
                ("connect_timeout", u.connect_timeout, one_ms, MAX_TIMEOUT),
                (
                    "refresh_before",
                    u.refresh_before,
                    Duration::ZERO,
                    MAX_TOKEN_LIFETIME,
                ),
                (
                    "login_window",
                    u.login_window,
                    Duration::from_secs(1),
                    MAX_TOKEN_LIFETIME,
                ),
                (
                    "session_idle_ttl",
                    u.session_idle_ttl,
                    one_ms,
                    MAX_SESSION_LIFETIME,
                ),
            ] {
                check_duration(value, min, max).map_err(|m| (key(field), m))?;
            }
            if let Some(l) = u.token_lifetime {
                check_duration(l, Duration::from_secs(1), MAX_TOKEN_LIFETIME)
                    .map_err(|m| (key("token_lifetime"), m))?;
            }
            if u.max_logins == 0 {
                return Err((key("max_logins"), "must be at least 1".into()));
            }
            if u.api == ApiKind::Ewaybill && u.max_logins > EWAYBILL_MAX_LOGINS {
                return Err((
                    key("max_logins"),
                    format!("e-way bill blocks a user for 15 minutes after {EWAYBILL_MAX_LOGINS} logins in 15 minutes; use at most {EWAYBILL_MAX_LOGINS}"),
                ));
            }
            if http::HeaderValue::from_str(&u.ip_usr).is_err() {
                return Err((
                    key("ip_usr"),
                    "must be a valid header value (an IP address)".into(),
                ));
            }
            for name in u.header_names.keys() {
                if !HEADER_ROLES.contains(&name.as_str()) {
                    return Err((
                        key("header_names"),
                        format!(
                            "unknown header role `{name}`, expected one of {}",
                            HEADER_ROLES.join(", ")
                        ),
                    ));
                }
            }
            for (name, value) in u
                .header_names
                .iter()
                .map(|(k, v)| (k, v.as_str()))
                .chain(u.headers.iter().map(|(k, v)| (k, v.expose_secret())))
            {
                if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                    || http::HeaderValue::from_str(value).is_err()
                {
                    return Err((key("headers"), format!("`{name}` is not a valid header")));
                }
            }
        }
        let mut identities = HashSet::new();
        for (i, c) in self.credentials.iter().enumerate() {
            let key = |field: &str| format!("credential[{i}].{field}");
            Gstin::parse(&c.gstin).map_err(|e| (key("gstin"), e.to_string()))?;
            if c.username.is_empty() {
                return Err((key("username"), "must not be empty".into()));
            }
            if let Some(l) = c.session_lifetime {
                if !(MIN_SESSION_LIFETIME..=MAX_SESSION_LIFETIME).contains(&l) {
                    return Err((
                        key("session_lifetime"),
                        "the GST portal enables API access for 6 hours to 30 days: use a value in that range".into(),
                    ));
                }
            }
            if c.upstreams.is_empty() {
                return Err((key("upstreams"), "name at least one upstream".into()));
            }
            for u in &c.upstreams {
                if !names.contains(u.as_str()) {
                    return Err((key("upstreams"), format!("no [[upstream]] is named `{u}`")));
                }
                let api = self.upstreams.iter().find(|x| x.name == *u).map(|x| x.api);
                if api != Some(ApiKind::Gstn) && c.password.expose_secret().is_empty() {
                    return Err((
                        key("password"),
                        format!("upstream `{u}` logs in with a password: set one"),
                    ));
                }
                if !identities.insert((u.clone(), c.gstin.to_ascii_uppercase(), c.username.clone()))
                {
                    return Err((
                        key("username"),
                        format!(
                            "`{}` for {} on `{u}` is configured twice",
                            c.username, c.gstin
                        ),
                    ));
                }
            }
        }
        let mut digests = HashSet::new();
        for (i, c) in self.clients.iter().enumerate() {
            let key = |field: &str| format!("client[{i}].{field}");
            let d = &c.api_key_sha256;
            if d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err((
                    key("api_key_sha256"),
                    "must be 64 hex digits (run `gstgate hash-key`)".into(),
                ));
            }
            if !digests.insert(d.to_ascii_lowercase()) {
                return Err((key("api_key_sha256"), "two clients share this key".into()));
            }
            if c.gstins.is_empty() {
                return Err((key("gstins"), "list GSTINs or [\"*\"]".into()));
            }
            for g in &c.gstins {
                if g != "*" {
                    Gstin::parse(g).map_err(|e| (key("gstins"), format!("`{g}`: {e}")))?;
                }
            }
        }
        if let Some(url) = &self.alerts.webhook_url {
            check_webhook_url(url).map_err(|m| ("alerts.webhook_url".to_string(), m))?;
        }
        if self
            .alerts
            .check_interval
            .is_some_and(|i| i < Duration::from_millis(100))
        {
            return Err((
                "alerts.check_interval".into(),
                "must be at least 100ms".into(),
            ));
        }
        if let Some(warning) = self.alerts.otp_warning {
            check_otp_warning(warning).map_err(|m| ("alerts.otp_warning".to_string(), m))?;
        }
        Ok(())
    }

    /// Settings that are valid but likely a mistake: logged at start-up, printed by
    /// `check-config`.
    pub fn warnings(&self) -> Vec<String> {
        let proxies = PROXY_VARIABLES
            .iter()
            .filter(|v| std::env::var_os(v).is_some_and(|x| !x.is_empty()))
            .map(|v| {
                format!("{v} is set, but gstgate connects to its upstreams directly and does not use it")
            });
        let windows = self
            .upstreams
            .iter()
            .filter(|u| u.api == ApiKind::Ewaybill && u.login_window < DEFAULT_LOGIN_WINDOW)
            .map(|u| {
                format!(
                    "upstream `{}`: login_window {} is shorter than NIC e-way bill's 15 minutes, so {} logins per window can exceed NIC's {EWAYBILL_MAX_LOGINS} per 15 minutes and get the user blocked",
                    u.name,
                    humantime::format_duration(u.login_window),
                    u.max_logins
                )
            });
        proxies.chain(windows).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_the_upstreams_impose_are_checked_by_name() {
        let config = |extra_upstream: &str, extra_credential: &str| {
            format!(
                r#"
[server]
[[upstream]]
name = "ewb"
api = "ewaybill"
base_url = "http://127.0.0.1:1"
routes = ["/ewaybillapi/"]
auth_path = "/ewaybillapi/v1.03/auth"
public_key = "k.pem"
client_id = "a"
client_secret = "b"
{extra_upstream}
[[credential]]
gstin = "27AAPFU0939F1ZV"
username = "u"
password = "p"
upstreams = ["ewb"]
{extra_credential}
"#
            )
        };
        let parse = |text: String| Config::parse(&text, Path::new("c.toml"));
        assert!(parse(config("max_logins = 5", "session_lifetime = \"6h\"")).is_ok());
        let err = parse(config("max_logins = 6", "")).unwrap_err().to_string();
        assert!(err.contains("upstream[0].max_logins"), "{err}");
        let err = parse(config("", "session_lifetime = \"31d\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("credential[0].session_lifetime"), "{err}");
        let err = parse(config("", "session_lifetime = \"1h\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("6 hours"), "{err}");
        // A password is needed where logins use one, and nowhere else.
        let err = parse(config("", "").replace("password = \"p\"\n", ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("credential[0].password"), "{err}");
        let gstn_only = config("", "")
            .replace("api = \"ewaybill\"", "api = \"gstn\"")
            .replace("password = \"p\"\n", "");
        assert!(parse(gstn_only).is_ok());
        // Durations are bounded, so no timer or clock sum built from them can overflow.
        for (line, key) in [
            ("login_window = \"0s\"", "upstream[0].login_window"),
            ("token_lifetime = \"3years\"", "upstream[0].token_lifetime"),
            ("timeout = \"18446744073709551615s\"", "upstream[0].timeout"),
            ("session_idle_ttl = \"0s\"", "upstream[0].session_idle_ttl"),
        ] {
            let err = parse(config(line, "")).unwrap_err().to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
        let err = parse(config("", "").replace("[server]", "[server]\nrequest_timeout = \"2h\""))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("server.request_timeout") && err.contains("1h"),
            "{err}"
        );
        // A window shorter than NIC's 15 minutes is allowed (sandboxes scale it) but warned of.
        let short = parse(config("login_window = \"30s\"", "")).unwrap();
        let warnings = short.warnings();
        assert_eq!(
            warnings
                .iter()
                .filter(|w| w.contains("login_window"))
                .count(),
            1,
            "{warnings:?}"
        );
        assert!(!parse(config("", ""))
            .unwrap()
            .warnings()
            .iter()
            .any(|w| w.contains("login_window")));
    }

    #[test]
    fn paths_must_be_canonical_and_forward_headers_may_not_name_gateway_headers() {
        let config = |extra: &str| {
            format!(
                r#"
[server]
[[upstream]]
name = "einv"
api = "einvoice"
base_url = "https://gsp.example.com/gus/irp/nic"
routes = ["/eicore/"]
auth_path = "/eivital/v1.04/auth"
public_key = "k.pem"
client_id = "a"
client_secret = "b"
{extra}
"#
            )
        };
        let parse = |text: String| Config::parse(&text, Path::new("c.toml"));
        let ok = parse(config(r#"forward_headers = ["X-GSP-Branch"]"#));
        assert!(ok.is_ok(), "{:?}", ok.err());
        for (change, key) in [
            (("\"/eicore/\"", "\"/eicore/../\""), "upstream[0].routes"),
            (("\"/eicore/\"", "\"/ei%63ore/\""), "upstream[0].routes"),
            (
                ("/eivital/v1.04/auth", "/eivital/./auth"),
                "upstream[0].auth_path",
            ),
            (("/gus/irp/nic", "/gus/a;b"), "upstream[0].base_url"),
        ] {
            let err = parse(config("").replace(change.0, change.1))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{change:?}: {err}");
        }
        for extra in [
            r#"forward_headers = ["gstin"]"#,
            r#"forward_headers = ["AuthToken"]"#,
            r#"forward_headers = ["connection"]"#,
            r#"forward_headers = ["x-api-key"]"#,
            r#"forward_headers = ["bad header"]"#,
            "forward_headers = [\"x-sub\"]\n[upstream.headers]\n\"X-Sub\" = \"k\"",
            "forward_headers = [\"x-gstin\"]\n[upstream.header_names]\ngstin = \"X-Gstin\"",
        ] {
            let err = parse(config(extra)).unwrap_err().to_string();
            assert!(
                err.contains("upstream[0].forward_headers"),
                "{extra}: {err}"
            );
        }
    }

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let rsa = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
        let pem = rsa::pkcs8::EncodePublicKey::to_public_key_pem(
            &rsa::RsaPublicKey::from(&rsa),
            rsa::pkcs8::LineEnding::LF,
        )
        .unwrap();
        std::fs::write(&key, pem).unwrap();
        let not_a_cert = dir.path().join("ca.pem");
        std::fs::write(&not_a_cert, "not a certificate\n").unwrap();
        let text = format!(
            r#"
[server]
[[upstream]]
name = "einvoice"
api = "einvoice"
base_url = "https://gsp.example.com"
routes = ["/eicore/"]
auth_path = "/eivital/v1.04/auth"
public_key = "{}"
ca_file = "{}"
client_id = "a"
client_secret = "b"
"#,
            key.display(),
            not_a_cert.display()
        );
        let path = Path::new("c.toml");
        let config = Config::parse(&text, path).unwrap();
        let err = crate::upstream::check_files(&config, path)
            .unwrap_err()
            .to_string();
        assert!(err.contains("upstream[0].ca_file"), "{err}");
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn alerts_need_an_http_webhook_and_an_otp_warning_of_a_minute() {
        let base = r#"
[server]
[[upstream]]
name = "einvoice"
api = "einvoice"
base_url = "http://127.0.0.1:1"
routes = ["/eicore/"]
auth_path = "/eivital/v1.04/auth"
public_key = "k.pem"
client_id = "a"
client_secret = "b"
[alerts]
"#;
        let parse = |extra: &str| Config::parse(&format!("{base}{extra}"), Path::new("c.toml"));
        let ok =
            parse("webhook_url = \"https://ops.example.com/h?token=T\"\notp_warning = \"2d\"\n");
        assert!(ok.is_ok(), "{:?}", ok.err());
        let err = parse("webhook_url = \"ftp://ops.example.com/TOKEN\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("alerts.webhook_url") && !err.contains("TOKEN"),
            "{err}"
        );
        let err = parse("otp_warning = \"30s\"\n").unwrap_err().to_string();
        assert!(err.contains("alerts.otp_warning"), "{err}");
    }

    #[test]
    fn interpolation_replaces_variables_and_escapes() {
        let lookup = |n: &str| (n == "A").then(|| "x\"y".to_string());
        assert_eq!(interpolate_with("p${A}q", lookup).unwrap(), "px\"yq");
        assert_eq!(interpolate_with("$$5 and $x", lookup).unwrap(), "$5 and $x");
        assert!(interpolate_with("${B}", lookup)
            .unwrap_err()
            .contains("`B`"));
        assert!(interpolate_with("${A", lookup)
            .unwrap_err()
            .contains("unterminated"));
        assert!(interpolate_with("${A-B}", lookup)
            .unwrap_err()
            .contains("not a valid"));
    }
}
