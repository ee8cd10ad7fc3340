//! The built-in GSP simulator: the server side of the NIC e-invoice protocol, with real RSA
//! and AES, IST token expiry, same-token-within-validity, the force-refresh window and NIC's
//! error codes, plus NIC e-way bill and GSTN returns, and a control
//! API for tests (`/_sim/…`, see `control.rs`).
//!
//! ASP developers run it as a local sandbox (`gstgate sim`); our integration tests and
//! benchmarks run it in-process ([`start`]) as the upstream. Layout, by concept:
//!
//! - `einvoice.rs` — the e-invoice profile: login, data calls, error codes (table there);
//! - `ewaybill.rs` — the e-way bill profile, every path under `/ewaybillapi/`;
//! - `gstn.rs` — the GSTN returns profile (OTP, refresh, portal sessions), under `/taxpayerapi/`;
//! - `state.rs` — sessions, tokens, documents, counters, request log (and which lock, why),
//!   which [`SimState`] here puts together with each profile's own state;
//! - `clock.rs` — NIC's IST wall-clock time format;
//! - `control.rs` — the `/_sim/` API; `faults.rs` — fault injection;
//! - `server.rs` — accept loop and the intercept layer (log, count, fault, latency);
//! - `portals.rs` — the e-invoice portals (IRP 1, 2, …) on their own listeners, down and up.
//!
//! The three profiles are routed by path prefix in one process and share the users, clients,
//! RSA key, knobs, counters, request log, revocation, token rejection and faults.
//!
//! `plain` ("enriched GSP") mode: a POST whose `Data` is a JSON object is answered with a
//! plain `Data` object, one whose `Data` is a string is answered encrypted, and GETs (which
//! carry no body to tell) are answered plain.
//!
//! Token semantics: tokens belong to (GSTIN, username). A login while the current token is
//! valid returns the same token, expiry and SEK (wrapped under the new AppKey).
//! `ForceRefreshAccessToken: true` issues a new token and SEK only within `force_window` of
//! expiry and is otherwise ignored. After a force refresh the previous token keeps working
//! (with its own SEK) until its own expiry, as NIC's documentation implies; set
//! `force_refresh_revokes_old` for the stricter behaviour some field reports describe.

mod clock;
mod control;
mod einvoice;
mod ewaybill;
mod faults;
mod gstn;
mod portals;
mod server;
mod state;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::crypto::{CryptoError, KeyPair};
use crate::gstin::Gstin;
use state::{lock, Counters, Documents, Knobs, RejectSet, RequestLog, TokenBook};

pub use clock::to_ist;
pub use einvoice::financial_year;
pub use ewaybill::{
    DEFAULT_LOGIN_WINDOW as DEFAULT_EWB_LOGIN_WINDOW, LOGIN_LIMIT as EWB_LOGIN_LIMIT,
};
pub use faults::{FaultMode, FaultRule};
pub use gstn::{
    DEFAULT_MAX_SESSIONS as DEFAULT_GSTN_MAX_SESSIONS,
    DEFAULT_SESSION_TTL as DEFAULT_GSTN_SESSION_TTL,
};
pub use portals::{Portal, PortalState};

/// Token lifetime: NIC production's 360 minutes (the sandbox uses 60).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(360 * 60);

/// NIC honours `ForceRefreshAccessToken` only in the last 10 minutes of a token's life.
pub const DEFAULT_FORCE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// Where `gstgate sim` listens by default.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";

/// The demo taxpayer's GSTIN (a documented valid GSTIN).
pub const DEMO_GSTIN: &str = "27AAPFU0939F1ZV";
/// The demo taxpayer's API username.
pub const DEMO_USERNAME: &str = "demo_user";
/// The demo taxpayer's API password.
pub const DEMO_PASSWORD: &str = "demo_password";
/// The demo API client id.
pub const DEMO_CLIENT_ID: &str = "demo_client";
/// The demo API client secret.
pub const DEMO_CLIENT_SECRET: &str = "demo_secret";

/// A taxpayer API user the simulator accepts.
#[derive(Clone, PartialEq, Eq)]
pub struct SimUser {
    /// The GSTIN the user logs in for (compared case-insensitively).
    pub gstin: String,
    /// API username (case-sensitive).
    pub username: String,
    /// API password.
    pub password: String,
}

impl std::fmt::Debug for SimUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimUser")
            .field("gstin", &self.gstin)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl SimUser {
    /// The demo user: [`DEMO_GSTIN`], [`DEMO_USERNAME`], [`DEMO_PASSWORD`].
    pub fn demo() -> Self {
        Self {
            gstin: DEMO_GSTIN.into(),
            username: DEMO_USERNAME.into(),
            password: DEMO_PASSWORD.into(),
        }
    }
}

impl std::str::FromStr for SimUser {
    type Err = String;
    /// Parses `GSTIN:USERNAME:PASSWORD` (the password may contain ':').
    fn from_str(s: &str) -> Result<Self, String> {
        let mut it = s.splitn(3, ':');
        let (Some(g), Some(u), Some(p)) = (it.next(), it.next(), it.next()) else {
            return Err("expected GSTIN:USERNAME:PASSWORD".into());
        };
        // Shape only: sandbox GSTINs often fail the checksum.
        let gstin = Gstin::parse(g).map_err(|e| format!("invalid GSTIN {g:?}: {e}"))?;
        if u.is_empty() || p.is_empty() {
            return Err("username and password must not be empty".into());
        }
        Ok(Self {
            gstin: gstin.as_str().to_string(),
            username: u.to_string(),
            password: p.to_string(),
        })
    }
}

/// An API client (the GSP-issued client id and secret).
#[derive(Clone, PartialEq, Eq)]
pub struct SimClient {
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: String,
}

impl std::fmt::Debug for SimClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimClient")
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

impl SimClient {
    /// The demo client: [`DEMO_CLIENT_ID`], [`DEMO_CLIENT_SECRET`].
    pub fn demo() -> Self {
        Self {
            client_id: DEMO_CLIENT_ID.into(),
            client_secret: DEMO_CLIENT_SECRET.into(),
        }
    }
}

impl std::str::FromStr for SimClient {
    type Err = String;
    /// Parses `ID:SECRET` (the secret may contain ':').
    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once(':') {
            Some((id, secret)) if !id.is_empty() && !secret.is_empty() => Ok(Self {
                client_id: id.to_string(),
                client_secret: secret.to_string(),
            }),
            _ => Err("expected CLIENT_ID:CLIENT_SECRET".into()),
        }
    }
}

/// Everything the handlers share, behind one `Arc`: the pieces all three APIs share (from
/// `state.rs`) and each API's own protocol state. It is assembled here, above the API modules,
/// because it holds a piece of each of them.
pub struct SimState {
    /// The simulator's RSA key: logins are encrypted to its public half.
    pub keypair: KeyPair,
    /// The public key, PEM (SubjectPublicKeyInfo).
    pub public_key_pem: String,
    /// Users that may log in: fixed at start, but their passwords can be changed through
    /// the control API, to rehearse a taxpayer's password change.
    pub users: Mutex<Vec<SimUser>>,
    /// `--path-prefix`: where the protocol routes are mounted, which fault prefixes must
    /// include.
    pub path_prefix: Option<String>,
    /// API clients (fixed at start).
    pub clients: Vec<SimClient>,
    /// Enriched-GSP mode: plain JSON `Data` accepted and answered.
    pub plain: bool,
    /// A repeat generate answers success with the existing IRN instead of 2150.
    pub allow_duplicate_irn: bool,
    /// Runtime-adjustable settings.
    pub knobs: Mutex<Knobs>,
    /// Sessions and tokens.
    pub sessions: Mutex<TokenBook>,
    /// Generated documents.
    pub documents: Mutex<Documents>,
    /// Counters for `/_sim/counters`.
    pub counters: Mutex<Counters>,
    /// Recent requests for `/_sim/requests`.
    pub requests: Mutex<RequestLog>,
    /// GSTINs whose data calls are all answered 1005.
    pub rejected: Mutex<RejectSet>,
    /// The active fault rule.
    pub faults: Mutex<faults::Faults>,
    /// The e-invoice portals: their listeners and whether each serves.
    pub portals: Mutex<portals::Portals>,
    /// E-way bill tokens, e-way bills and the login limiter (one lock: a login touches both).
    pub ewb: Mutex<ewaybill::EwbState>,
    /// GSTN OTPs, portal sessions and tokens.
    pub gstn: Mutex<gstn::GstnState>,
}

/// Everything the simulator is started with.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Address to listen on; port 0 picks an ephemeral port.
    pub listen: SocketAddr,
    /// PKCS#8 PEM private key: loaded if the file exists, else generated and written there (0600).
    pub key_file: Option<PathBuf>,
    /// Where to write the public key PEM (SubjectPublicKeyInfo).
    pub public_key_out: Option<PathBuf>,
    /// Lifetime of issued tokens.
    pub token_ttl: Duration,
    /// How close to expiry `ForceRefreshAccessToken` is honoured.
    pub force_window: Duration,
    /// Whether a force refresh invalidates the previous token at once (default: it lives on).
    pub force_refresh_revokes_old: bool,
    /// Users that may log in.
    pub users: Vec<SimUser>,
    /// API clients that may call.
    pub clients: Vec<SimClient>,
    /// Artificial latency on every data call.
    pub latency: Duration,
    /// Enriched-GSP mode: data calls also accept `Data` as a plain JSON object and answer plain.
    pub plain: bool,
    /// Load tests: a repeat generate answers success with the same IRN instead of 2150.
    pub allow_duplicate_irn: bool,
    /// HTTP status of `Status: 0` replies.
    pub error_http_status: u16,
    /// E-way bill errors as a plain object instead of base64 text.
    pub ewb_plain_errors: bool,
    /// E-way bill login limit window (and block length).
    pub ewb_login_window: Duration,
    /// Every `rek`/`hmac` reply carries a wrong HMAC.
    pub tamper_hmac: bool,
    /// GSTN: every OTP is this value (GSTN's sandbox uses 575757).
    pub fixed_otp: Option<String>,
    /// GSTN: how long the portal session an OTP login starts lasts.
    pub gstn_session_ttl: Duration,
    /// GSTN: most live portal sessions per user before AUTH403.
    pub gstn_max_sessions: usize,
    /// Serve the protocol APIs under this path (`/gus/irp/nic`), as GSPs do; the control API
    /// stays at `/_sim/`.
    pub path_prefix: Option<String>,
    /// More e-invoice portals (`NIC2`, `NIC3`, …) serving the same routes and state; the
    /// main `listen` address is `NIC1`.
    pub irp_listen: Vec<SocketAddr>,
}

impl Default for SimConfig {
    /// Loopback with an ephemeral port, NIC production timings, the demo user and client.
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            key_file: None,
            public_key_out: None,
            token_ttl: DEFAULT_TOKEN_TTL,
            force_window: DEFAULT_FORCE_WINDOW,
            force_refresh_revokes_old: false,
            users: vec![SimUser::demo()],
            clients: vec![SimClient::demo()],
            latency: Duration::ZERO,
            plain: false,
            allow_duplicate_irn: false,
            error_http_status: 200,
            ewb_plain_errors: false,
            ewb_login_window: DEFAULT_EWB_LOGIN_WINDOW,
            tamper_hmac: false,
            fixed_otp: None,
            gstn_session_ttl: DEFAULT_GSTN_SESSION_TTL,
            gstn_max_sessions: DEFAULT_GSTN_MAX_SESSIONS,
            path_prefix: None,
            irp_listen: Vec::new(),
        }
    }
}

/// Why the simulator could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The listen address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The key file exists but could not be read or parsed, or could not be written.
    #[error("key file {}: {reason}", path.display())]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// Key generation or encoding failed.
    #[error("RSA key: {0}")]
    Key(#[from] CryptoError),
    /// The public key could not be written.
    #[error("cannot write the public key to {}: {source}", path.display())]
    PublicKeyOut {
        /// The output path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A setting is out of range.
    #[error("invalid simulator setting: {0}")]
    Config(String),
}

/// A running simulator. Dropping the handle stops it too; [`SimHandle::shutdown`] also waits.
pub struct SimHandle {
    addr: SocketAddr,
    portal_addrs: Vec<SocketAddr>,
    public_key_pem: String,
    stop: watch::Sender<bool>,
    state: Arc<SimState>,
}

impl SimHandle {
    /// The address it listens on (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The public key logins must be encrypted with, PEM (SubjectPublicKeyInfo).
    pub fn public_key_pem(&self) -> &str {
        &self.public_key_pem
    }

    /// `http://ADDR`, the base URL to point a client at.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `http://ADDR` of e-invoice portal `n` (1 is the main listener, `NIC1`), if there is
    /// one.
    pub fn irp_base_url(&self, n: usize) -> Option<String> {
        let addr = n.checked_sub(1).and_then(|i| self.portal_addrs.get(i))?;
        Some(format!("http://{addr}"))
    }

    /// Stops accepting, lets in-flight requests finish briefly, drops the rest, and waits.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let tasks = lock(&self.state.portals).take_tasks();
        for task in tasks {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        // The server task watches this channel; it stops whether sent to or dropped.
        let _ = self.stop.send(true);
    }
}

/// Starts the simulator; returns once it is listening.
pub async fn start(cfg: SimConfig) -> Result<SimHandle, SimError> {
    if StatusCode::from_u16(cfg.error_http_status).is_err()
        || !(100..=599).contains(&cfg.error_http_status)
    {
        return Err(SimError::Config(format!(
            "error_http_status {} is not an HTTP status",
            cfg.error_http_status
        )));
    }
    if let Some(otp) = &cfg.fixed_otp {
        if !is_otp(otp) {
            return Err(SimError::Config(format!(
                "fixed_otp {otp:?} is not six digits"
            )));
        }
    }
    if let Some(prefix) = &cfg.path_prefix {
        if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") {
            return Err(SimError::Config(format!(
                "path_prefix {prefix:?} must start with `/` and not end with one"
            )));
        }
    }
    let keypair = load_or_generate_key(cfg.key_file.as_deref()).await?;
    let public_key_pem = keypair.public_key().to_pem()?;
    if let Some(path) = &cfg.public_key_out {
        std::fs::write(path, &public_key_pem).map_err(|source| SimError::PublicKeyOut {
            path: path.clone(),
            source,
        })?;
    }
    let mut listeners = Vec::new();
    let mut portal_addrs = Vec::new();
    for want in std::iter::once(cfg.listen).chain(cfg.irp_listen.iter().copied()) {
        let bind_err = |source| SimError::Bind { addr: want, source };
        let listener = TcpListener::bind(want).await.map_err(bind_err)?;
        portal_addrs.push(listener.local_addr().map_err(bind_err)?);
        listeners.push(listener);
    }
    let addr = portal_addrs[0];
    let (stop, stop_rx) = watch::channel(false);

    let state = Arc::new(SimState {
        keypair,
        public_key_pem: public_key_pem.clone(),
        users: Mutex::new(cfg.users),
        path_prefix: cfg.path_prefix.clone(),
        clients: cfg.clients,
        plain: cfg.plain,
        allow_duplicate_irn: cfg.allow_duplicate_irn,
        knobs: Mutex::new(Knobs {
            latency: cfg.latency,
            reply_latency: Duration::ZERO,
            token_ttl: cfg.token_ttl,
            force_window: cfg.force_window,
            error_http_status: cfg.error_http_status,
            force_refresh_revokes_old: cfg.force_refresh_revokes_old,
            ewb_plain_errors: cfg.ewb_plain_errors,
            ewb_login_window: cfg.ewb_login_window,
            tamper_hmac: cfg.tamper_hmac,
            fixed_otp: cfg.fixed_otp,
            gstn_session_ttl: cfg.gstn_session_ttl,
            gstn_max_sessions: cfg.gstn_max_sessions,
            stated_expiry_early: Duration::ZERO,
        }),
        sessions: Mutex::new(TokenBook::default()),
        documents: Mutex::new(Documents::default()),
        counters: Mutex::new(Counters::default()),
        requests: Mutex::new(RequestLog::default()),
        rejected: Mutex::new(Default::default()),
        faults: Mutex::new(Default::default()),
        ewb: Mutex::new(Default::default()),
        gstn: Mutex::new(Default::default()),
        portals: Mutex::new(portals::Portals::new(&portal_addrs, stop_rx)),
    });
    for (i, listener) in listeners.into_iter().enumerate() {
        let portal = Portal(i + 1);
        tracing::info!(addr = %portal_addrs[i], irp = %portal.name(), "sim: listening");
        server::launch(&state, portal, listener, PortalState::Up);
    }
    Ok(SimHandle {
        addr,
        portal_addrs,
        public_key_pem,
        stop,
        state,
    })
}

/// The whole application: protocol routes behind the intercept layer (under `prefix` when
/// one is set), the control API beside.
fn router(state: Arc<SimState>, prefix: Option<&str>) -> Router {
    // `.layer()` wraps the routes and the fallback added before it, so unknown paths are
    // logged too; the control routes merged afterwards are not logged, counted or faulted.
    let protocol = einvoice::routes()
        .merge(ewaybill::routes())
        .merge(gstn::routes())
        .fallback(server::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            server::intercept,
        ));
    let protocol = match prefix {
        // Paths outside the prefix get the outer router's plain 404, unlogged, as a GSP's
        // other applications would.
        Some(prefix) => Router::new().nest(prefix, protocol),
        None => protocol,
    };
    protocol.merge(control::routes()).with_state(state)
}

/// Which API a protocol path belongs to (by prefix; everything else is e-invoice).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Api {
    /// NIC e-invoice.
    EInvoice,
    /// NIC e-way bill, `/ewaybillapi/…`.
    EwayBill,
    /// GSTN returns, `/taxpayerapi/…`.
    Gstn,
}

impl Api {
    /// The API of `path`.
    pub(crate) fn of(path: &str) -> Self {
        if path.starts_with("/ewaybillapi/") {
            Self::EwayBill
        } else if path.starts_with("/taxpayerapi/") {
            Self::Gstn
        } else {
            Self::EInvoice
        }
    }
}

/// Whether `path` is a login path of any API (for the `auth_calls` counter).
pub(crate) fn is_auth_path(path: &str) -> bool {
    einvoice::is_auth_path(path) || path == ewaybill::AUTH_PATH || gstn::AUTH_PATHS.contains(&path)
}

/// Whether `s` is a six-digit OTP.
pub(crate) fn is_otp(s: &str) -> bool {
    s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit())
}

/// Loads the PKCS#8 key at `path`, or generates one (and writes it there when a path is given).
async fn load_or_generate_key(path: Option<&Path>) -> Result<KeyPair, SimError> {
    let key_err = |path: &Path, reason: String| SimError::KeyFile {
        path: path.to_path_buf(),
        reason,
    };
    if let Some(path) = path {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                return KeyPair::from_pkcs8_pem(&text)
                    .map_err(|e| key_err(path, format!("not a PKCS#8 PEM private key ({e})")))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(key_err(path, e.to_string())),
        }
    }
    // 2048-bit generation takes a noticeable fraction of a second: keep it off the runtime.
    let pair = tokio::task::spawn_blocking(KeyPair::generate)
        .await
        .map_err(|e| SimError::Config(format!("key generation task failed: {e}")))??;
    let Some(path) = path else { return Ok(pair) };
    let pem = pair.to_pkcs8_pem()?;
    // Write to a private temporary file, then hard-link it into place: the link fails if
    // another simulator created the key meanwhile, and then that key is the one to use.
    let tmp = path.with_extension(format!(
        "tmp.{}.{}",
        std::process::id(),
        rand::random::<u32>()
    ));
    // Named by the configured file: the temporary name means nothing to the operator.
    write_private(&tmp, pem.as_bytes())
        .map_err(|e| key_err(path, format!("cannot write a new key beside it: {e}")))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(pair),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let text = std::fs::read_to_string(path).map_err(|e| key_err(path, e.to_string()))?;
            KeyPair::from_pkcs8_pem(&text)
                .map_err(|e| key_err(path, format!("not a PKCS#8 PEM private key ({e})")))
        }
        Err(e) => Err(key_err(path, e.to_string())),
    }
}

/// Creates `path` readable by the owner only and writes `bytes`.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Command-line arguments of `gstgate sim`.
#[derive(clap::Args, Debug)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// PKCS#8 PEM private key; generated and written there (mode 0600) if the file does not exist.
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Write the public key (PEM) here, for the gateway's `public_key`.
    #[arg(long)]
    pub public_key_out: Option<PathBuf>,
    /// Token lifetime (NIC production: 360 minutes; sandbox: 60).
    #[arg(long, default_value = "6h", value_parser = humantime::parse_duration)]
    pub token_ttl: Duration,
    /// How close to expiry `ForceRefreshAccessToken` is honoured.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub force_window: Duration,
    /// A force refresh invalidates the previous token at once.
    #[arg(long)]
    pub force_refresh_revokes_old: bool,
    /// A user, GSTIN:USERNAME:PASSWORD (repeatable; default: the demo user
    /// 27AAPFU0939F1ZV:demo_user:demo_password).
    #[arg(long = "user", value_name = "GSTIN:USERNAME:PASSWORD")]
    pub users: Vec<SimUser>,
    /// An API client, ID:SECRET (repeatable; default: demo_client:demo_secret).
    #[arg(long = "client", value_name = "ID:SECRET")]
    pub clients: Vec<SimClient>,
    /// Artificial latency added to every data call.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub latency: Duration,
    /// Enriched-GSP mode: data calls also accept and answer plain JSON `Data`.
    #[arg(long)]
    pub plain: bool,
    /// A repeat generate answers success with the same IRN instead of 2150 (load tests).
    #[arg(long)]
    pub allow_duplicate_irn: bool,
    /// HTTP status of `Status: 0` error replies.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u16).range(100..=599))]
    pub error_http_status: u16,
    /// E-way bill errors as a plain object `{"errorCodes":"238"}` instead of base64 text.
    #[arg(long)]
    pub ewb_plain_errors: bool,
    /// E-way bill: 5 logins within this window block the user for as long (reported NIC limit).
    #[arg(long, default_value = "15m", value_parser = humantime::parse_duration)]
    pub ewb_login_window: Duration,
    /// Every `rek`/`hmac` reply (e-way bill GET, GSTN data) carries a wrong HMAC.
    #[arg(long)]
    pub tamper_hmac: bool,
    /// GSTN: every OTP is this value instead of a random one (GSTN's sandbox uses 575757).
    #[arg(long, value_name = "OTP", value_parser = parse_otp)]
    pub fixed_otp: Option<String>,
    /// GSTN: how long the portal session an OTP login starts lasts (the portal allows 6h-30d).
    #[arg(long, default_value = "30d", value_parser = humantime::parse_duration)]
    pub gstn_session_ttl: Duration,
    /// GSTN: most live portal sessions per user; one more OTP login is AUTH403.
    #[arg(long, default_value_t = DEFAULT_GSTN_MAX_SESSIONS)]
    pub gstn_max_sessions: usize,
    /// Serve the GST APIs under this path, as a GSP does (e.g. `/gus/irp/nic`); the gateway's
    /// `base_url` then ends with it.
    #[arg(long, value_name = "PATH")]
    pub path_prefix: Option<String>,
    /// Another e-invoice portal on this address (repeatable): NIC2, NIC3, … serving the same
    /// state; `--listen` is NIC1. `GET /_sim/irps` lists the addresses.
    #[arg(long = "irp-listen", value_name = "ADDR")]
    pub irp_listen: Vec<SocketAddr>,
}

fn parse_otp(s: &str) -> Result<String, String> {
    if is_otp(s) {
        Ok(s.to_string())
    } else {
        Err("an OTP is six digits".into())
    }
}

impl SimArgs {
    /// The configuration these arguments describe (demo user and client when none given).
    pub fn into_config(self) -> SimConfig {
        SimConfig {
            listen: self.listen,
            key_file: self.key_file,
            public_key_out: self.public_key_out,
            token_ttl: self.token_ttl,
            force_window: self.force_window,
            force_refresh_revokes_old: self.force_refresh_revokes_old,
            users: if self.users.is_empty() {
                vec![SimUser::demo()]
            } else {
                self.users
            },
            clients: if self.clients.is_empty() {
                vec![SimClient::demo()]
            } else {
                self.clients
            },
            latency: self.latency,
            plain: self.plain,
            allow_duplicate_irn: self.allow_duplicate_irn,
            error_http_status: self.error_http_status,
            ewb_plain_errors: self.ewb_plain_errors,
            ewb_login_window: self.ewb_login_window,
            tamper_hmac: self.tamper_hmac,
            fixed_otp: self.fixed_otp,
            gstn_session_ttl: self.gstn_session_ttl,
            gstn_max_sessions: self.gstn_max_sessions,
            path_prefix: self.path_prefix,
            irp_listen: self.irp_listen,
        }
    }
}

/// Runs the simulator until SIGINT or SIGTERM. Prints exactly one line to stdout once
/// listening — `gstgate-sim listening on http://ADDR` — which scripts and tests wait for.
pub async fn run(args: SimArgs) -> anyhow::Result<()> {
    // Request logs go to stderr; a subscriber installed by the caller wins.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let handle = start(args.into_config()).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "gstgate-sim listening on {}", handle.base_url())?;
        out.flush()?;
    }
    wait_for_signal().await?;
    handle.shutdown().await;
    Ok(())
}

async fn wait_for_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await?;
    Ok(())
}
