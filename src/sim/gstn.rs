//! The GSTN taxpayer (returns) profile of the simulator, as a GSP passes it through: OTP login,
//! token refresh within the portal session, and returns data calls with `rek` + `hmac`.
//! Every path starts with `/taxpayerapi/`.
//!
//! Model. `AUTHTOKEN` (OTP login) starts a *portal session* for (GSTIN, username) that lasts
//! the `gstn_session_ttl` knob — the "API access" period a taxpayer enables on the GST portal.
//! The session holds exactly one token at a time; `REFRESHTOKEN` replaces it (and its SEK)
//! without an OTP and without moving the session's end, and the replaced token dies at once.
//! Once the session ends, only a new OTP login helps.
//!
//! Deviation: `expiry` (token lifetime in minutes, from the `token_ttl` knob) is an integer
//! when the lifetime is whole minutes, as GSTN sends it, and otherwise a decimal number of
//! minutes (4 s → `0.0667`) so that tests can use tokens of a few seconds.
//!
//! Errors are `{"status_cd":"0","error":{"error_cd":…,"message":…}}`. Codes marked * are the
//! simulator's choice where GSTN's public documents name none:
//!
//! | code | when |
//! |---|---|
//! | AUTH4040 * | one of the headers `clientid`, `client-secret`, `state-cd`, `ip-usr`, `txn`, `username`, `gstin` missing (data calls: also `auth-token`) |
//! | AUTH4010 * | no client with that `clientid`, or the secret does not match |
//! | AUTH4041 | `state-cd` is not the first two digits of `gstin` |
//! | AUTH4001 * | auth body not JSON, unknown `action`, a required field missing, body `username` ≠ header `username`, or the REFRESHTOKEN `app_key` does not decrypt under the current SEK to 32 bytes |
//! | TEC4002 | OTPREQUEST/AUTHTOKEN `app_key` does not RSA-decrypt under the simulator's key to 32 bytes |
//! | AUTH4031 * | no such user for this GSTIN |
//! | AUTH4037 | API access switched off for the user (`POST /_sim/gstn/access`): OTPREQUEST and AUTHTOKEN |
//! | AUTH4034 | OTP wrong, absent, used already, older than [`OTP_TTL`], or not decryptable under the `app_key`; or AUTHTOKEN's `app_key` is not the one the OTP was requested with (GSTN pairs them) |
//! | AUTH403 | AUTHTOKEN while the user already holds `gstn_max_sessions` live portal sessions |
//! | AUTH4033 | token unknown, revoked, replaced by a refresh, issued to another GSTIN or user; data calls of a GSTIN switched to "reject" |
//! | AUTH4038 | the portal session ended (REFRESHTOKEN and data calls), or the token expired (data calls) |
//! | RET11416 * | data call: `ret_period` header missing or not `MMYYYY`, or the query's `ret_period` differs |
//! | RET11417 * | data call: the query's `gstin` (or a RETSAVE payload's `gstin`) is not the header GSTIN |
//! | RET11401 * | data call: `action` not `RETSUM` (GET) / `RETSAVE` (PUT) |
//! | RET11402 * | RETSAVE body not `{"action","data","hmac"}` JSON, or `data` does not decrypt under the SEK to base64 of JSON |
//! | RET11403 * | RETSAVE `hmac` is not HMAC-SHA256(SEK, B64(JSON)) |

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use rand::distributions::{Alphanumeric, Distribution};
use rand::Rng as _;
use serde::Deserialize;
use serde_json::{json, Value};

use super::clock::to_ist;
use super::einvoice::{ct_eq, header, header_gstin};
use super::ewaybill::rek_envelope;
use super::state::{capped, lock, SessionView};
use super::SimState;
use crate::crypto::{b64_decode, b64_encode, AesKey};

/// Login paths (v1.0; v2.0 is accepted too).
pub const AUTH_PATHS: [&str; 2] = [
    "/taxpayerapi/v1.0/authenticate",
    "/taxpayerapi/v2.0/authenticate",
];

/// Return API versions served at `/taxpayerapi/{version}/returns/{return}`.
const RETURN_VERSIONS: [&str; 2] = ["v1.0", "v1.1"];
/// Returns served under each version.
const RETURNS: [&str; 2] = ["gstr1", "gstr3b"];

/// GSTN's default portal session, the longest "API access" period a taxpayer can enable.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Live portal sessions one user may hold with this GSP before AUTH403. GSTN publishes no
/// figure; three lets a test reach the limit quickly and leaves room for a blue/green pair.
pub const DEFAULT_MAX_SESSIONS: usize = 3;

/// How long an OTP can be used after OTPREQUEST (GSTN does not publish it; SMS OTPs commonly
/// last 10 minutes).
pub const OTP_TTL: Duration = Duration::from_secs(10 * 60);

/// How long an ended portal session is remembered, so that its token is answered AUTH4038
/// (session expired) rather than AUTH4033 (unknown).
const ENDED_SESSION_MEMORY: Duration = Duration::from_secs(24 * 3600);

/// The `/taxpayerapi/` routes.
pub fn routes() -> Router<Arc<SimState>> {
    let mut r = Router::new();
    for p in AUTH_PATHS {
        r = r.route(p, post(authenticate));
    }
    for v in RETURN_VERSIONS {
        for ret in RETURNS {
            r = r.route(
                &format!("/taxpayerapi/{v}/returns/{ret}"),
                get(
                    move |s: State<Arc<SimState>>, q: Query<ReturnsQuery>, h: HeaderMap| {
                        returns_get(ret, s, q, h)
                    },
                )
                .put(
                    move |s: State<Arc<SimState>>,
                          q: Query<ReturnsQuery>,
                          h: HeaderMap,
                          b: Bytes| returns_save(ret, s, q, h, b),
                ),
            );
        }
    }
    r
}

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------

/// An OTP sent and not yet used.
struct PendingOtp {
    otp: String,
    expires_at: DateTime<Utc>,
    /// The app key OTPREQUEST came with: AUTHTOKEN must bring the same one.
    app_key: AesKey,
}

/// One portal session: the API-access period an OTP login opened, and its current token.
struct PortalSession {
    gstin: String,
    username: String,
    ends_at: DateTime<Utc>,
    token: String,
    sek: AesKey,
    token_expires_at: DateTime<Utc>,
}

/// Everything the GSTN API keeps between calls, behind one mutex: each operation is a few map
/// updates that must agree (a refresh swaps the token in the session and in the index).
#[derive(Default)]
pub struct GstnState {
    /// Pending OTPs by (GSTIN, username); a new OTPREQUEST replaces the previous one.
    otps: HashMap<(String, String), PendingOtp>,
    /// Portal sessions by id.
    sessions: HashMap<u64, PortalSession>,
    /// Current tokens → session id.
    tokens: HashMap<String, u64>,
    /// Users whose API access is switched off.
    disabled: HashSet<(String, String)>,
    next_id: u64,
}

fn key(gstin: &str, username: &str) -> (String, String) {
    (gstin.to_ascii_uppercase(), username.to_string())
}

impl GstnState {
    /// The pending, unexpired OTP of a user (for `/_sim/otp`).
    pub fn pending_otp(&self, gstin: &str, username: &str, now: DateTime<Utc>) -> Option<String> {
        self.otps
            .get(&key(gstin, username))
            .filter(|o| o.expires_at > now)
            .map(|o| o.otp.clone())
    }

    /// Switches a user's API access on or off.
    pub fn set_access(&mut self, gstin: &str, username: &str, enabled: bool) {
        if enabled {
            self.disabled.remove(&key(gstin, username));
        } else {
            self.disabled.insert(key(gstin, username));
        }
    }

    /// Ends the user's live portal sessions now; returns how many were live.
    pub fn end_sessions(&mut self, gstin: &str, username: &str, now: DateTime<Utc>) -> usize {
        let (g, u) = key(gstin, username);
        let mut n = 0;
        for s in self.sessions.values_mut() {
            if s.gstin == g && s.username == u && s.ends_at > now {
                s.ends_at = now;
                n += 1;
            }
        }
        n
    }

    /// Drops the user's sessions and tokens (as if GSTN invalidated them); returns how many
    /// tokens were live. The next step for the user is an OTP login.
    pub fn revoke(&mut self, gstin: &str, username: &str, now: DateTime<Utc>) -> usize {
        let (g, u) = key(gstin, username);
        let mut live = 0;
        self.sessions.retain(|_, s| {
            let mine = s.gstin == g && s.username == u;
            if mine && s.ends_at > now && s.token_expires_at > now {
                live += 1;
            }
            !mine
        });
        let sessions = &self.sessions;
        self.tokens.retain(|_, id| sessions.contains_key(id));
        live
    }

    /// Every live portal session, for `/_sim/sessions`.
    pub fn views(&self, now: DateTime<Utc>) -> Vec<SessionView> {
        let mut out: Vec<SessionView> = self
            .sessions
            .values()
            .filter(|s| s.ends_at > now)
            .map(|s| SessionView {
                api: "gstn",
                gstin: s.gstin.clone(),
                username: s.username.clone(),
                token: s.token.clone(),
                sek: b64_encode(s.sek.as_bytes()),
                token_expiry: to_ist(s.token_expires_at),
                previous_token: None,
                session_end: Some(to_ist(s.ends_at)),
            })
            .collect();
        out.sort_by(|a, b| {
            (&a.gstin, &a.username, &a.token).cmp(&(&b.gstin, &b.username, &b.token))
        });
        out
    }

    fn live_sessions(&self, gstin: &str, username: &str, now: DateTime<Utc>) -> usize {
        self.sessions
            .values()
            .filter(|s| s.gstin == gstin && s.username == username && s.ends_at > now)
            .count()
    }

    /// Forgets sessions that ended long ago, and their tokens.
    fn prune(&mut self, now: DateTime<Utc>) {
        let memory = capped(ENDED_SESSION_MEMORY);
        self.sessions.retain(|_, s| s.ends_at + memory > now);
        let sessions = &self.sessions;
        self.tokens.retain(|_, id| sessions.contains_key(id));
    }
}

/// A GSTN auth token: 32 hex digits.
fn new_token() -> String {
    let b: [u8; 16] = rand::random();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A six-digit OTP.
fn new_otp() -> String {
    format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000u32))
}

/// The `expiry` field: whole minutes as an integer, otherwise minutes to four decimals.
fn expiry_minutes(ttl: Duration) -> Value {
    if ttl.subsec_nanos() == 0 && ttl.as_secs() % 60 == 0 {
        json!(ttl.as_secs() / 60)
    } else {
        json!((ttl.as_secs_f64() / 60.0 * 10_000.0).round() / 10_000.0)
    }
}

// ---------------------------------------------------------------------------------------------
// Errors and headers
// ---------------------------------------------------------------------------------------------

/// A `status_cd: "0"` reply.
#[derive(Debug)]
pub struct GstnError {
    code: &'static str,
    message: String,
}

impl GstnError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn invalid_session() -> Self {
        Self::new("AUTH4033", "Invalid Session")
    }

    fn session_expired() -> Self {
        Self::new("AUTH4038", "Session Expired")
    }
}

impl SimState {
    /// Renders a GSTN error; `data_call` token rejections are counted.
    fn gstn_error_reply(&self, headers: &HeaderMap, e: GstnError, data_call: bool) -> Response {
        if data_call && matches!(e.code, "AUTH4033" | "AUTH4038") {
            let gstin = header_gstin(headers);
            lock(&self.counters).bump(gstin.as_deref(), |c| c.token_rejections += 1);
        }
        tracing::info!(code = e.code, reason = %e.message, "sim: GSTN error");
        let status =
            StatusCode::from_u16(lock(&self.knobs).error_http_status).unwrap_or(StatusCode::OK);
        let body = json!({
            "status_cd": "0",
            "error": {"error_cd": e.code, "message": e.message},
        });
        (status, Json(body)).into_response()
    }
}

/// The caller as the seven common headers name it.
struct Caller {
    gstin: String,
    username: String,
}

/// Checks the seven headers every GSTN call carries, the client, and `state-cd`.
fn check_headers(sim: &SimState, h: &HeaderMap) -> Result<Caller, GstnError> {
    const NAMES: [&str; 7] = [
        "clientid",
        "client-secret",
        "state-cd",
        "ip-usr",
        "txn",
        "username",
        "gstin",
    ];
    let missing: Vec<&str> = NAMES
        .into_iter()
        .filter(|n| header(h, &[n]).is_none())
        .collect();
    if !missing.is_empty() {
        return Err(GstnError::new(
            "AUTH4040",
            format!("missing header(s): {}", missing.join(", ")),
        ));
    }
    let id = header(h, &["clientid"]).unwrap_or_default();
    let secret = header(h, &["client-secret"]).unwrap_or_default();
    // Evaluate every client so the time taken does not depend on which one matched.
    let ok = sim.clients.iter().fold(false, |acc, c| {
        acc | (ct_eq(&c.client_id, id) & ct_eq(&c.client_secret, secret))
    });
    if !ok {
        return Err(GstnError::new(
            "AUTH4010",
            "Invalid clientid / client-secret",
        ));
    }
    let gstin = header_gstin(h).unwrap_or_default();
    let state = header(h, &["state-cd"]).unwrap_or_default();
    if gstin.get(..2) != Some(state) {
        return Err(GstnError::new(
            "AUTH4041",
            "state-cd does not match the GSTIN's state code",
        ));
    }
    Ok(Caller {
        gstin,
        username: header(h, &["username"]).unwrap_or_default().to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Authentication
// ---------------------------------------------------------------------------------------------

/// The body of `authenticate`, all actions.
#[derive(Deserialize)]
struct AuthBody {
    action: String,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    app_key: Option<String>,
    #[serde(default)]
    otp: Option<String>,
    #[serde(default)]
    auth_token: Option<String>,
}

async fn authenticate(
    State(sim): State<Arc<SimState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = check_headers(&sim, &headers).and_then(|caller| {
        let b: AuthBody = serde_json::from_slice(&body)
            .map_err(|_| GstnError::new("AUTH4001", "body must be JSON with an action"))?;
        if b.username.as_deref().is_some_and(|u| u != caller.username) {
            return Err(GstnError::new(
                "AUTH4001",
                "body username is not the username header",
            ));
        }
        match b.action.trim().to_ascii_uppercase().as_str() {
            "OTPREQUEST" => otp_request(&sim, &caller, &b),
            "AUTHTOKEN" => auth_token(&sim, &caller, &b),
            "REFRESHTOKEN" => refresh_token(&sim, &caller, &b),
            other => Err(GstnError::new(
                "AUTH4001",
                format!("unknown action {other:?}"),
            )),
        }
    });
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => sim.gstn_error_reply(&headers, e, false),
    }
}

/// The user must exist and have API access.
fn check_user(sim: &SimState, caller: &Caller) -> Result<(), GstnError> {
    if !lock(&sim.users)
        .iter()
        .any(|u| u.gstin.eq_ignore_ascii_case(&caller.gstin) && u.username == caller.username)
    {
        return Err(GstnError::new(
            "AUTH4031",
            "Invalid username for this GSTIN",
        ));
    }
    if lock(&sim.gstn)
        .disabled
        .contains(&key(&caller.gstin, &caller.username))
    {
        return Err(GstnError::new(
            "AUTH4037",
            "API access is not enabled for this user on the GST portal",
        ));
    }
    Ok(())
}

/// The RSA-encrypted app key of OTPREQUEST / AUTHTOKEN: 32 bytes, no base64 layer before RSA.
fn rsa_app_key(sim: &SimState, b: &AuthBody) -> Result<AesKey, GstnError> {
    let wrapped = b
        .app_key
        .as_deref()
        .ok_or_else(|| GstnError::new("AUTH4001", "app_key is required"))?;
    b64_decode(wrapped)
        .ok()
        .and_then(|c| sim.keypair.decrypt(&c).ok())
        .and_then(|k| AesKey::from_slice(&k).ok())
        .ok_or_else(|| {
            GstnError::new(
                "TEC4002",
                "Invalid public key (app_key must be B64(RSA(this server's key, 32 bytes)))",
            )
        })
}

fn otp_request(sim: &SimState, caller: &Caller, b: &AuthBody) -> Result<Value, GstnError> {
    check_user(sim, caller)?;
    let app_key = rsa_app_key(sim, b)?;
    let (fixed, now) = (lock(&sim.knobs).fixed_otp.clone(), Utc::now());
    let otp = fixed.unwrap_or_else(new_otp);
    lock(&sim.gstn).otps.insert(
        key(&caller.gstin, &caller.username),
        PendingOtp {
            otp,
            expires_at: now + capped(OTP_TTL),
            app_key,
        },
    );
    lock(&sim.counters).bump(Some(&caller.gstin), |c| c.otp_requests += 1);
    tracing::info!(gstin = %caller.gstin, user = %caller.username, "sim: GSTN OTP sent");
    Ok(json!({"status_cd": "1"}))
}

fn auth_token(sim: &SimState, caller: &Caller, b: &AuthBody) -> Result<Value, GstnError> {
    check_user(sim, caller)?;
    let app_key = rsa_app_key(sim, b)?;
    let bad_otp = || GstnError::new("AUTH4034", "Invalid OTP");
    let otp = b
        .otp
        .as_deref()
        .and_then(|o| app_key.decrypt_b64(o).ok())
        .and_then(|o| String::from_utf8(o).ok())
        .ok_or_else(bad_otp)?;
    let knobs = lock(&sim.knobs).clone();
    let now = Utc::now();
    let k = key(&caller.gstin, &caller.username);
    let mut st = lock(&sim.gstn);
    let valid = st.otps.get(&k).is_some_and(|p| {
        p.expires_at > now
            && ct_eq(&p.otp, otp.trim())
            && p.app_key.as_bytes() == app_key.as_bytes()
    });
    if !valid {
        return Err(bad_otp());
    }
    if st.live_sessions(&k.0, &k.1, now) >= knobs.gstn_max_sessions {
        return Err(GstnError::new(
            "AUTH403",
            "Too many sessions for this user with this GSP",
        ));
    }
    st.otps.remove(&k);
    st.prune(now);
    let session = PortalSession {
        gstin: k.0,
        username: k.1,
        ends_at: now + capped(knobs.gstn_session_ttl),
        token: new_token(),
        sek: AesKey::random(),
        token_expires_at: now + capped(knobs.token_ttl),
    };
    let reply = token_reply(&session, &app_key, knobs.token_ttl);
    let id = st.next_id;
    st.next_id += 1;
    st.tokens.insert(session.token.clone(), id);
    st.sessions.insert(id, session);
    drop(st);
    lock(&sim.counters).bump(Some(&caller.gstin), |c| c.new_tokens += 1);
    tracing::info!(gstin = %caller.gstin, user = %caller.username, "sim: GSTN OTP login");
    Ok(reply)
}

fn refresh_token(sim: &SimState, caller: &Caller, b: &AuthBody) -> Result<Value, GstnError> {
    let token = b
        .auth_token
        .as_deref()
        .map(str::trim)
        .ok_or_else(|| GstnError::new("AUTH4001", "auth_token is required"))?;
    let wrapped = b
        .app_key
        .as_deref()
        .ok_or_else(|| GstnError::new("AUTH4001", "app_key is required"))?;
    let ttl = lock(&sim.knobs).token_ttl;
    let now = Utc::now();
    let mut st = lock(&sim.gstn);
    let id = *st
        .tokens
        .get(token)
        .ok_or_else(GstnError::invalid_session)?;
    let session = st
        .sessions
        .get_mut(&id)
        .filter(|s| s.gstin == caller.gstin && s.username == caller.username)
        .ok_or_else(GstnError::invalid_session)?;
    if session.ends_at <= now {
        return Err(GstnError::session_expired());
    }
    // The new app key travels under the current SEK; an expired current token is accepted.
    let app_key = session.sek.unwrap_key(wrapped).map_err(|_| {
        GstnError::new(
            "AUTH4001",
            "app_key must be B64(AES(current SEK, 32-byte app key))",
        )
    })?;
    let old = std::mem::replace(&mut session.token, new_token());
    session.sek = AesKey::random();
    session.token_expires_at = now + capped(ttl);
    let reply = token_reply(session, &app_key, ttl);
    let new = session.token.clone();
    st.tokens.remove(&old);
    st.tokens.insert(new, id);
    drop(st);
    lock(&sim.counters).bump(Some(&caller.gstin), |c| {
        c.refreshes += 1;
        c.new_tokens += 1;
    });
    tracing::info!(gstin = %caller.gstin, user = %caller.username, "sim: GSTN token refreshed");
    Ok(reply)
}

fn token_reply(s: &PortalSession, app_key: &AesKey, ttl: Duration) -> Value {
    json!({
        "status_cd": "1",
        "auth_token": s.token,
        "expiry": expiry_minutes(ttl),
        "sek": app_key.encrypt_b64(s.sek.as_bytes()),
    })
}

// ---------------------------------------------------------------------------------------------
// Returns data calls
// ---------------------------------------------------------------------------------------------

/// Query of the returns calls.
#[derive(Deserialize)]
struct ReturnsQuery {
    action: Option<String>,
    gstin: Option<String>,
    ret_period: Option<String>,
}

/// An authorised data call: who, with which SEK, for which period.
struct Authorized {
    gstin: String,
    sek: AesKey,
    ret_period: String,
}

fn authorize(sim: &SimState, h: &HeaderMap, q: &ReturnsQuery) -> Result<Authorized, GstnError> {
    let caller = check_headers(sim, h)?;
    let token = header(h, &["auth-token"])
        .ok_or_else(|| GstnError::new("AUTH4040", "missing header(s): auth-token"))?;
    if lock(&sim.rejected).contains(&caller.gstin) {
        return Err(GstnError::invalid_session());
    }
    let sek = {
        let st = lock(&sim.gstn);
        let s = st
            .tokens
            .get(token)
            .and_then(|id| st.sessions.get(id))
            .filter(|s| s.gstin == caller.gstin && s.username == caller.username)
            .ok_or_else(GstnError::invalid_session)?;
        let now = Utc::now();
        if s.ends_at <= now || s.token_expires_at <= now {
            return Err(GstnError::session_expired());
        }
        s.sek.clone()
    };
    let bad_period = || GstnError::new("RET11416", "ret_period header must be MMYYYY");
    let ret_period = header(h, &["ret_period"])
        .filter(|p| {
            p.len() == 6
                && p.bytes().all(|b| b.is_ascii_digit())
                && matches!(p[..2].parse::<u32>(), Ok(1..=12))
        })
        .ok_or_else(bad_period)?
        .to_string();
    if q.ret_period
        .as_deref()
        .is_some_and(|p| p.trim() != ret_period)
    {
        return Err(bad_period());
    }
    if q.gstin
        .as_deref()
        .is_some_and(|g| !g.trim().eq_ignore_ascii_case(&caller.gstin))
    {
        return Err(GstnError::new(
            "RET11417",
            "gstin parameter is not the gstin header",
        ));
    }
    Ok(Authorized {
        gstin: caller.gstin,
        sek,
        ret_period,
    })
}

/// A `status_cd: "1"` reply carrying `body` under a fresh REK, with the extra base64 layer.
fn rek_reply(sim: &SimState, a: &Authorized, body: &Value) -> Value {
    let tamper = lock(&sim.knobs).tamper_hmac;
    let (rek, data, hmac) = rek_envelope(&a.sek, body, true, tamper);
    json!({"status_cd": "1", "rek": rek, "data": data, "hmac": hmac})
}

async fn returns_get(
    ret: &'static str,
    State(sim): State<Arc<SimState>>,
    Query(q): Query<ReturnsQuery>,
    headers: HeaderMap,
) -> Response {
    let result = authorize(&sim, &headers, &q).and_then(|a| {
        if !q
            .action
            .as_deref()
            .is_some_and(|x| x.eq_ignore_ascii_case("RETSUM"))
        {
            return Err(GstnError::new("RET11401", "action must be RETSUM"));
        }
        Ok(rek_reply(&sim, &a, &return_summary(ret, &a)))
    });
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => sim.gstn_error_reply(&headers, e, true),
    }
}

/// Body of RETSAVE.
#[derive(Deserialize)]
struct SaveBody {
    action: String,
    data: String,
    #[serde(default)]
    hmac: Option<String>,
}

async fn returns_save(
    ret: &'static str,
    State(sim): State<Arc<SimState>>,
    Query(q): Query<ReturnsQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = authorize(&sim, &headers, &q).and_then(|a| {
        let bad = |m: &str| GstnError::new("RET11402", m.to_string());
        let b: SaveBody = serde_json::from_slice(&body)
            .map_err(|_| bad("body must be JSON {\"action\", \"data\", \"hmac\"}"))?;
        if !b.action.trim().eq_ignore_ascii_case("RETSAVE") {
            return Err(GstnError::new("RET11401", "action must be RETSAVE"));
        }
        // data = B64(AES(SEK, B64(JSON))); hmac = B64(HMAC-SHA256(SEK, B64(JSON))).
        let inner = a
            .sek
            .decrypt_b64(&b.data)
            .map_err(|_| bad("data does not decrypt under the SEK of this auth-token"))?;
        a.sek
            .verify_hmac_b64(&inner, b.hmac.as_deref().unwrap_or(""))
            .map_err(|_| GstnError::new("RET11403", "hmac does not match the data"))?;
        let payload: Value = std::str::from_utf8(&inner)
            .ok()
            .and_then(|t| b64_decode(t).ok())
            .and_then(|j| serde_json::from_slice(&j).ok())
            .ok_or_else(|| bad("decrypted data is not base64 of JSON"))?;
        if payload
            .get("gstin")
            .and_then(Value::as_str)
            .is_some_and(|g| !g.trim().eq_ignore_ascii_case(&a.gstin))
        {
            return Err(GstnError::new(
                "RET11417",
                "payload gstin is not the gstin header",
            ));
        }
        let reference: String = {
            let mut rng = rand::rngs::OsRng;
            (0..15)
                .map(|_| char::from(Alphanumeric.sample(&mut rng)).to_ascii_uppercase())
                .collect()
        };
        tracing::info!(gstin = %a.gstin, ret, ret_period = %a.ret_period, "sim: GSTN RETSAVE");
        Ok(rek_reply(&sim, &a, &json!({"reference_id": reference})))
    });
    match result {
        Ok(v) => Json(v).into_response(),
        Err(e) => sim.gstn_error_reply(&headers, e, true),
    }
}

/// A plausible return summary that echoes the GSTIN and period, with figures derived from the
/// period so that different periods differ.
fn return_summary(ret: &str, a: &Authorized) -> Value {
    let seed: u64 = a.ret_period.parse().unwrap_or(1);
    let taxable = (seed % 97 + 3) as f64 * 10_000.0;
    let tax = taxable * 0.18;
    match ret {
        "gstr3b" => json!({
            "gstin": a.gstin,
            "ret_period": a.ret_period,
            "sup_details": {
                "osup_det": {"txval": taxable, "iamt": tax, "camt": 0.0, "samt": 0.0, "csamt": 0.0},
                "osup_zero": {"txval": 0.0, "iamt": 0.0, "csamt": 0.0},
            },
            "itc_elg": {"itc_avl": [{"ty": "OTH", "iamt": tax / 2.0, "camt": 0.0, "samt": 0.0, "csamt": 0.0}]},
        }),
        _ => json!({
            "gstin": a.gstin,
            "ret_period": a.ret_period,
            "summ_typ": "L",
            "chksum": format!("{:064x}", seed),
            "sec_sum": [
                {"sec_nm": "B2B", "ttl_rec": seed % 50 + 1, "ttl_val": taxable + tax, "ttl_tax": taxable, "ttl_igst": tax, "ttl_cgst": 0.0, "ttl_sgst": 0.0, "ttl_cess": 0.0},
                {"sec_nm": "B2CS", "ttl_rec": 1, "ttl_val": 1180.0, "ttl_tax": 1000.0, "ttl_igst": 0.0, "ttl_cgst": 90.0, "ttl_sgst": 90.0, "ttl_cess": 0.0},
            ],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_is_whole_minutes_or_four_decimals() {
        assert_eq!(expiry_minutes(Duration::from_secs(6 * 3600)), json!(360));
        assert_eq!(expiry_minutes(Duration::from_secs(4)), json!(0.0667));
        assert_eq!(expiry_minutes(Duration::from_secs(90)), json!(1.5));
    }

    #[test]
    fn otps_are_six_digits_and_tokens_32_hex() {
        for _ in 0..100 {
            let o = new_otp();
            assert!(o.len() == 6 && o.bytes().all(|b| b.is_ascii_digit()), "{o}");
        }
        let t = new_token();
        assert!(t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
