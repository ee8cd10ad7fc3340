//! The configuration file: TOML schema (a contract with operators, documented in
//! `docs/configuration.md`), `${VAR}` interpolation and validation.
//!
//! Interpolation happens inside deserialization, field by field, so that every error — an
//! unknown key, a missing environment variable, a malformed duration — comes out of the TOML
//! parser with the line, the column and the offending key in it. Semantic checks that span
//! several fields (an upstream named by a credential exists, a public key parses) run after.
//!
//! The schema and its limits live here; `defaults` holds what an omitted setting becomes,
//! `headers` the header names the schema speaks of, `env` the interpolation, `load` reading a
//! file through to a validated [`Config`], `error` what loading fails with, `validate` the
//! checks that span fields, `store` the `[store]` rules and `read` the size limit of every
//! file read for the configuration.

mod defaults;
mod env;
mod error;
mod headers;
mod idempotency;
mod load;
mod parse;
mod rate;
mod read;
mod rebase;
mod secrets;
mod server;
mod store;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

pub use defaults::{
    DEFAULT_BREAKER_COOL_DOWN, DEFAULT_BREAKER_FAILURES, DEFAULT_IP_USR, DEFAULT_LEASE,
    DEFAULT_LOGINS_PER_SECOND, DEFAULT_LOGIN_WINDOW, DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONCURRENT_LOGINS, DEFAULT_MAX_HEADER_BYTES, DEFAULT_MAX_LOGINS,
    DEFAULT_MAX_RESPONSE_BYTES, DEFAULT_REFRESH_BEFORE, DEFAULT_TOKEN_LIFETIME,
};
pub use env::interpolate;
pub use error::{client_entry, credential_entry, upstream_entry, ConfigError};
pub use headers::{HEADER_ROLES, RESERVED_HEADERS, ROLE_COUNT};
pub use idempotency::IdempotencyConfig;
pub use parse::without_credentials;
pub use rate::Rate;
pub use read::{read_limited, shown_path, MAX_CONFIG_BYTES, MAX_SECRET_FILE_BYTES};
pub use secrets::read_secret_file;
pub use validate::{check_otp_warning, check_webhook_url};

use defaults::{
    default_admin_listen, default_breaker_cool_down, default_breaker_failures, default_checksum,
    default_connect_timeout, default_duplicate, default_encryption, default_header_timeout,
    default_idle_ttl, default_ip_usr, default_key_prefix, default_lease, default_listen,
    default_login_window, default_logins_per_second, default_max_body,
    default_max_concurrent_logins, default_max_dropin_sessions, default_max_header,
    default_max_logins, default_max_response, default_refresh_before, default_replicas,
    default_request_timeout, default_shutdown_grace, default_token_lifetime,
    default_upstream_timeout, empty_secret,
};
use env::{
    env_duration, env_duration_opt, env_map, env_map_plain, env_one_or_many, env_parse,
    env_path_map, env_path_opt, env_secret, env_secret_opt, env_string_opt, env_vec,
};

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
/// The longest API-access period a taxpayer can enable on the GST portal.
pub const MAX_SESSION_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);
/// The shortest API-access period the GST portal offers.
pub const MIN_SESSION_LIFETIME: Duration = Duration::from_secs(6 * 3600);
/// A shorter warning than this cannot reach a person in time; it is a typo (`"48"` for `"48h"`).
pub const MIN_OTP_WARNING: Duration = Duration::from_secs(60);

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
    /// The `Idempotency-Key` answers kept in the session store.
    #[serde(default)]
    pub idempotency: IdempotencyConfig,
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
    /// A file holding `admin_token`; after loading, `admin_token` holds its contents.
    #[serde(default, deserialize_with = "env_path_opt")]
    pub admin_token_file: Option<PathBuf>,
    /// Bearer token for `GET /metrics` and `GET /status`; without it both are open.
    #[serde(default, deserialize_with = "env_secret_opt")]
    pub monitoring_token: Option<SecretString>,
    /// A file holding `monitoring_token`.
    #[serde(default, deserialize_with = "env_path_opt")]
    pub monitoring_token_file: Option<PathBuf>,
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
    /// PEM certificate chain: with `tls_key`, both listeners serve HTTPS.
    #[serde(default, deserialize_with = "env_path_opt")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(default, deserialize_with = "env_path_opt")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA certificates: callers of the proxy listener must present a client certificate
    /// signed by one of them.
    #[serde(default, deserialize_with = "env_path_opt")]
    pub tls_client_ca: Option<PathBuf>,
}

/// `[store]`: session storage backend.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` (a file beside the config), `memory` (lost on restart) or `redis`.
    #[serde(default, deserialize_with = "env_parse")]
    pub backend: StoreBackend,
    /// The embedded store's file; after loading, set for the `embedded` backend (by default
    /// [`DEFAULT_STORE_FILE`] in the config file's directory).
    #[serde(default, deserialize_with = "env_path_opt")]
    pub path: Option<PathBuf>,
    /// `redis://` or `rediss://` URL of the shared store; may hold an ACL user and password.
    #[serde(default, deserialize_with = "env_secret_opt")]
    pub redis_url: Option<SecretString>,
    /// A file holding `redis_url`.
    #[serde(default, deserialize_with = "env_path_opt")]
    pub redis_url_file: Option<PathBuf>,
    /// PEM file of the CA that signs the Redis server's certificate, for `rediss://`.
    #[serde(default, deserialize_with = "env_path_opt")]
    pub redis_ca_file: Option<PathBuf>,
    /// Namespace of gstgate's keys and channel in Redis.
    #[serde(default = "default_key_prefix", deserialize_with = "env_parse")]
    pub key_prefix: String,
    /// How long one replica may take to log in for the group before another may try.
    #[serde(default = "default_lease", deserialize_with = "env_duration")]
    pub lease: Duration,
    /// How many replicas share the store: while it is unreachable each may use only its share
    /// of a credential's `max_logins`.
    #[serde(default = "default_replicas")]
    pub replicas: u32,
    /// Base64 of 32 bytes: encrypts tokens and SEKs at rest.
    #[serde(default, deserialize_with = "env_secret_opt")]
    pub encryption_key: Option<SecretString>,
    /// A file holding `encryption_key`.
    #[serde(default, deserialize_with = "env_path_opt")]
    pub encryption_key_file: Option<PathBuf>,
    /// Base64 of 32 bytes: the key before the last rotation, only ever read with.
    #[serde(default, deserialize_with = "env_secret_opt")]
    pub previous_encryption_key: Option<SecretString>,
    /// A file holding `previous_encryption_key`.
    #[serde(default, deserialize_with = "env_path_opt")]
    pub previous_encryption_key_file: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: StoreBackend::default(),
            path: None,
            redis_url: None,
            redis_url_file: None,
            redis_ca_file: None,
            key_prefix: default_key_prefix(),
            lease: default_lease(),
            replicas: default_replicas(),
            encryption_key: None,
            encryption_key_file: None,
            previous_encryption_key: None,
            previous_encryption_key_file: None,
        }
    }
}

/// The embedded store's file name when `store.path` is not set.
pub const DEFAULT_STORE_FILE: &str = "gstgate-sessions.redb";

/// Session store backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StoreBackend {
    /// A crash-safe encrypted file: sessions survive restarts of one gateway process.
    #[default]
    Embedded,
    /// In-process map only: sessions are lost on restart (tests, throwaway demos).
    Memory,
    /// Shared through Redis: several replicas.
    Redis,
}

impl FromStr for StoreBackend {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "embedded" => Ok(Self::Embedded),
            "memory" => Ok(Self::Memory),
            "redis" => Ok(Self::Redis),
            other => Err(format!(
                "unknown store backend `{other}`, expected `embedded`, `memory` or `redis`"
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

/// What a caller's generate answered "duplicate" (2150, 604, 4002) gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Duplicate {
    /// The upstream's reply, untouched.
    Pass,
    /// The existing document's full details, fetched on the caller's behalf.
    ReturnExisting,
}

impl FromStr for Duplicate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pass" => Ok(Self::Pass),
            "return_existing" => Ok(Self::ReturnExisting),
            other => Err(format!(
                "unknown duplicate `{other}`, expected `pass` or `return_existing`"
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
    /// Requests go to `base_url` + caller path; `None` when the upstream lists `targets`.
    #[serde(default, deserialize_with = "env_string_opt")]
    pub base_url: Option<String>,
    /// `[[upstream.targets]]`: several base URLs sharing this upstream's login (NIC's IRPs),
    /// tried in order, instead of `base_url`.
    #[serde(default)]
    pub targets: Vec<TargetConfig>,
    /// Consecutive failures (connect failures, timeouts, 5xx) that open a target's circuit.
    #[serde(default = "default_breaker_failures")]
    pub breaker_failures: u32,
    /// How long an open circuit stays open before one probe request.
    #[serde(
        deserialize_with = "env_duration",
        default = "default_breaker_cool_down"
    )]
    pub breaker_cool_down: Duration,
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
    /// What a caller's generate answered "duplicate" gets.
    #[serde(deserialize_with = "env_parse", default = "default_duplicate")]
    pub duplicate: Duplicate,
    /// GSP/NIC client id (this or `client_id_file` is required).
    #[serde(deserialize_with = "env_secret", default = "empty_secret")]
    pub client_id: SecretString,
    /// A file holding `client_id`.
    #[serde(default, deserialize_with = "env_path_opt")]
    pub client_id_file: Option<PathBuf>,
    /// GSP/NIC client secret (this or `client_secret_file` is required).
    #[serde(deserialize_with = "env_secret", default = "empty_secret")]
    pub client_secret: SecretString,
    /// A file holding `client_secret`.
    #[serde(default, deserialize_with = "env_path_opt")]
    pub client_secret_file: Option<PathBuf>,
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
    /// At most this many logins (of all credentials) in flight toward this upstream at once.
    #[serde(default = "default_max_concurrent_logins")]
    pub max_concurrent_logins: u32,
    /// At most this many logins started per second toward this upstream, by the whole group.
    #[serde(default = "default_logins_per_second")]
    pub logins_per_second: u32,
    /// Sessions unused for this long are dropped instead of refreshed.
    #[serde(deserialize_with = "env_duration", default = "default_idle_ttl")]
    pub session_idle_ttl: Duration,
    /// Largest upstream response body accepted.
    #[serde(default = "default_max_response")]
    pub max_response_bytes: usize,
    /// Static extra headers sent on every call (GSP subscription keys…).
    #[serde(default, deserialize_with = "env_map")]
    pub headers: BTreeMap<String, SecretString>,
    /// Extra headers whose values are read from files, by header name; after loading they
    /// are in `headers`.
    #[serde(default, deserialize_with = "env_path_map")]
    pub headers_files: BTreeMap<String, PathBuf>,
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
    /// gstgate's own RSA private key (PKCS#8 PEM, `gstgate keygen`): with it, unmodified
    /// NIC/GSTN clients log in to gstgate with its public half and get drop-in sessions.
    #[serde(default, deserialize_with = "env_path_opt")]
    pub dropin_private_key: Option<PathBuf>,
}

/// `[[upstream.targets]]`: one base URL of an upstream that has several (NIC's IRPs).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    /// Requests routed to this target go to `base_url` + caller path.
    #[serde(deserialize_with = "env_parse")]
    pub base_url: String,
    /// The portal's name in the API's own header (`NIC1`, `NIC2`), which reads of a document
    /// held by another portal carry.
    #[serde(default, deserialize_with = "env_string_opt")]
    pub irp: Option<String>,
}

impl UpstreamConfig {
    /// The base URLs requests may go to, in order, with their portal names: `base_url` alone
    /// is one target without a name.
    pub fn endpoints(&self) -> Vec<(&str, Option<&str>)> {
        match &self.base_url {
            Some(url) => vec![(url.as_str(), None)],
            None => self
                .targets
                .iter()
                .map(|t| (t.base_url.as_str(), t.irp.as_deref()))
                .collect(),
        }
    }
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
    /// A file holding `password`.
    #[serde(default, deserialize_with = "env_path_opt")]
    pub password_file: Option<PathBuf>,
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
    /// Hex SHA-256 of the client's API key (`gstgate hash-key`); a list of them while a key
    /// is being rotated, each of which is accepted. May be left out by a client that only
    /// logs in drop-in (`client_id` and `client_secret_sha256`).
    #[serde(default, deserialize_with = "env_one_or_many")]
    pub api_key_sha256: Vec<String>,
    /// The client id a drop-in client sends in the API's own client-id header.
    #[serde(default, deserialize_with = "env_string_opt")]
    pub client_id: Option<String>,
    /// Hex SHA-256 of the client secret a drop-in client sends (`gstgate hash-key`).
    #[serde(default, deserialize_with = "env_string_opt")]
    pub client_secret_sha256: Option<String>,
    /// The most drop-in sessions this client may hold at once, over all upstreams.
    #[serde(default = "default_max_dropin_sessions")]
    pub max_dropin_sessions: usize,
    /// The most requests this client may send, over all upstreams (`"50/s"`, `"600/m"`,
    /// `"10000/h"`); without it, no limit. With several replicas each allows its share.
    #[serde(default, deserialize_with = "env_string_opt")]
    pub rate: Option<String>,
    /// How many requests may come at once within `rate` (default: the rate's count).
    #[serde(default)]
    pub burst: Option<u32>,
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
