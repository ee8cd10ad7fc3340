//! The session manager (DESIGN.md §3): one slot per configured (upstream, GSTIN, user), each
//! holding the current session, its state and the lockout guard.
//!
//! * **Single-flight.** A login happens under the slot's async `login` mutex; callers that
//!   queue behind it re-check the slot when they get the lock and find the new session.
//! * **Compare-and-invalidate.** A token rejection invalidates only the generation that
//!   failed, so fifty requests failing with one old token cause one re-login.
//! * **Proactive refresh.** Every new session is handed to the [`scheduler`], a timer queue
//!   that refreshes it `refresh_before` its expiry.
//! * **Lockout guard.** See [`guard`]: credential rejections stop logins, logins are
//!   rate-limited, transient failures back off with jitter.
//!
//! Slot state sits behind a `std::sync::Mutex`: it is held for a few field reads or writes and
//! never across an `.await`, which is cheaper than an async mutex and cannot deadlock a task.

mod guard;
pub mod scheduler;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue, Method};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::config::CredentialConfig;
use crate::crypto::AesKey;
use crate::gstin::Gstin;
use crate::metrics::{Metrics, ResultLabels, TriggerLabels};
use crate::problem::GatewayError;
use crate::upstream::{Class, LoginFailure, Upstream};

pub use guard::Guard;

/// A session whose token has less than this left is treated as expired: a request sent with
/// it would likely arrive after expiry.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

/// After a refresh got the old token back, never ask again sooner than this.
const SAME_TOKEN_MIN_RETRY: Duration = Duration::from_secs(10);

/// Why a session is being (re)established — the `trigger` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// No session yet (or it expired unused).
    Cold,
    /// The scheduler, ahead of expiry.
    Proactive,
    /// The upstream rejected the token.
    Rejected,
    /// An operator asked.
    Manual,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Cold => "cold",
            Trigger::Proactive => "proactive",
            Trigger::Rejected => "rejected",
            Trigger::Manual => "manual",
        }
    }
}

/// The state of a slot, as shown on `/admin/sessions` and in `gstgate_sessions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// No session has been established (or it was dropped as idle).
    Cold,
    /// A usable token.
    Valid,
    /// A login is under way.
    Refreshing,
    /// The last login failed; no usable token.
    Failed,
    /// An OTP is needed (GSTN).
    NeedsOtp,
    /// The upstream rejected the credentials; logins are stopped.
    CredentialsRejected,
}

impl State {
    /// Every state, for gauges that must report zeros too.
    pub const ALL: [State; 6] = [
        State::Cold,
        State::Valid,
        State::Refreshing,
        State::Failed,
        State::NeedsOtp,
        State::CredentialsRejected,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Cold => "cold",
            State::Valid => "valid",
            State::Refreshing => "refreshing",
            State::Failed => "failed",
            State::NeedsOtp => "needs_otp",
            State::CredentialsRejected => "credentials_rejected",
        }
    }
}

/// An established upstream session. Immutable: a refresh makes a new one.
pub struct Session {
    /// The token as a header value (marked sensitive).
    pub token: HeaderValue,
    /// The session encryption key.
    pub sek: AesKey,
    /// When the token expires, wall clock (UTC).
    pub expires_at: SystemTime,
    /// When the token expires, monotonic: what validity checks use.
    pub deadline: Instant,
    /// When the login that produced it was sent.
    pub issued_at: SystemTime,
    /// Monotonic per slot; compare-and-invalidate keys on it.
    pub generation: u64,
}

impl Session {
    fn usable(&self, now: Instant) -> bool {
        self.deadline > now + EXPIRY_MARGIN
    }
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("generation", &self.generation)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A taxpayer user's credential on one upstream.
pub struct Credential {
    /// The taxpayer.
    pub gstin: Gstin,
    /// API user name.
    pub username: Arc<str>,
    password: SecretString,
    gstin_header: HeaderValue,
    user_header: HeaderValue,
}

/// The mutable part of a slot.
struct SlotState {
    session: Option<Arc<Session>>,
    /// Set while a login runs.
    refreshing: bool,
    /// Why the last login failed, without secrets.
    last_error: Option<String>,
    /// When the last successful login was sent.
    last_refresh: Option<SystemTime>,
    /// Last caller use, for idle expiry.
    last_used: Instant,
    next_generation: u64,
    guard: Guard,
}

/// One (upstream, GSTIN, user): its credential, session and guard.
pub struct Slot {
    /// Position in the manager's table; the scheduler refers to slots by it.
    pub id: usize,
    /// The upstream.
    pub upstream: Arc<Upstream>,
    /// The credential.
    pub credential: Credential,
    state: Mutex<SlotState>,
    /// Held for the whole of a login: this is the single-flight.
    login: tokio::sync::Mutex<()>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding this lock cannot leave the state half-written in a way that
        // matters more than stopping service would: recover the guard.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current session if it is usable now; marks the slot as used.
    pub fn current(&self) -> Option<Arc<Session>> {
        let now = Instant::now();
        let mut st = self.lock();
        st.last_used = now;
        st.session.as_ref().filter(|s| s.usable(now)).cloned()
    }

    /// The `gstin` header value.
    pub fn gstin_header(&self) -> &HeaderValue {
        &self.credential.gstin_header
    }

    /// The user name header value.
    pub fn user_header(&self) -> &HeaderValue {
        &self.credential.user_header
    }

    fn state_now(&self, st: &SlotState, now: Instant) -> State {
        if let Some(s) = st.guard.locked_state() {
            return s;
        }
        if st.refreshing {
            return State::Refreshing;
        }
        match &st.session {
            Some(s) if s.usable(now) => State::Valid,
            _ if st.last_error.is_some() => State::Failed,
            _ => State::Cold,
        }
    }
}

/// What `/admin/sessions` shows of a slot: no token, SEK or password.
#[derive(Debug, Serialize)]
pub struct SessionInfo {
    /// Upstream name.
    pub upstream: String,
    /// The GSTIN.
    pub gstin: String,
    /// API user.
    pub username: String,
    /// State.
    pub state: State,
    /// Token expiry, RFC 3339 UTC.
    pub expires_at: Option<String>,
    /// Seconds until the token expires.
    pub expires_in_secs: Option<u64>,
    /// When the last successful login was sent, RFC 3339 UTC.
    pub last_refresh: Option<String>,
    /// The last login error.
    pub last_error: Option<String>,
    /// Session generation.
    pub generation: Option<u64>,
    /// When the taxpayer's portal API session ends and a new OTP is needed (GSTN), RFC 3339 UTC.
    pub session_ends_at: Option<String>,
    /// Seconds until the portal API session ends (GSTN).
    pub session_ends_in_secs: Option<u64>,
}

fn rfc3339(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The session manager.
pub struct Sessions {
    slots: Vec<Arc<Slot>>,
    /// (upstream index, GSTIN) → slot ids; immutable after start-up, so lookups take no lock.
    index: HashMap<(usize, Gstin), Vec<usize>>,
    upstream_names: Vec<Arc<str>>,
    metrics: Arc<Metrics>,
    scheduler: scheduler::Handle,
}

/// Why the session table could not be built.
#[derive(Debug, thiserror::Error)]
#[error("credential for {gstin}: {message}")]
pub struct SessionsError {
    gstin: String,
    message: String,
}

impl Sessions {
    /// Builds one slot per (credential, upstream) and starts the refresh scheduler.
    pub fn new(
        upstreams: &[Arc<Upstream>],
        credentials: &[CredentialConfig],
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, SessionsError> {
        let mut slots = Vec::new();
        let mut index: HashMap<(usize, Gstin), Vec<usize>> = HashMap::new();
        for c in credentials {
            let err = |message: String| SessionsError {
                gstin: c.gstin.clone(),
                message,
            };
            let gstin = Gstin::parse(&c.gstin).map_err(|e| err(e.to_string()))?;
            let gstin_header =
                HeaderValue::from_str(gstin.as_str()).map_err(|e| err(e.to_string()))?;
            let user_header = HeaderValue::from_str(&c.username)
                .map_err(|_| err("username is not a valid header value".into()))?;
            for name in &c.upstreams {
                let (u_idx, upstream) = upstreams
                    .iter()
                    .enumerate()
                    .find(|(_, u)| &*u.name == name)
                    .ok_or_else(|| err(format!("no upstream `{name}`")))?;
                let id = slots.len();
                slots.push(Arc::new(Slot {
                    id,
                    upstream: upstream.clone(),
                    credential: Credential {
                        gstin: gstin.clone(),
                        username: c.username.as_str().into(),
                        password: c.password.clone(),
                        gstin_header: gstin_header.clone(),
                        user_header: user_header.clone(),
                    },
                    state: Mutex::new(SlotState {
                        session: None,
                        refreshing: false,
                        last_error: None,
                        last_refresh: None,
                        last_used: Instant::now(),
                        next_generation: 1,
                        guard: Guard::new(upstream.max_logins, upstream.login_window),
                    }),
                    login: tokio::sync::Mutex::new(()),
                }));
                index.entry((u_idx, gstin.clone())).or_default().push(id);
            }
        }
        let sessions = Arc::new_cyclic(|weak: &Weak<Sessions>| Sessions {
            slots,
            index,
            upstream_names: upstreams.iter().map(|u| u.name.clone()).collect(),
            metrics,
            scheduler: scheduler::spawn(weak.clone()),
        });
        Ok(sessions)
    }

    /// The slot for a caller's (upstream, GSTIN, optional user).
    pub fn lookup(
        &self,
        upstream: usize,
        gstin: &Gstin,
        user: Option<&str>,
    ) -> Result<Arc<Slot>, GatewayError> {
        let ids = self.index.get(&(upstream, gstin.clone())).ok_or_else(|| {
            GatewayError::NoCredential {
                upstream: self.upstream_name(upstream),
                gstin: gstin.to_string(),
            }
        })?;
        let pick = match (user, ids.as_slice()) {
            (None, [only]) => Some(*only),
            (Some(u), ids) => ids
                .iter()
                .copied()
                .find(|&i| &*self.slots[i].credential.username == u),
            (None, _) => None,
        };
        pick.map(|i| self.slots[i].clone())
            .ok_or_else(|| GatewayError::UserRequired {
                upstream: self.upstream_name(upstream),
                gstin: gstin.to_string(),
            })
    }

    fn upstream_name(&self, idx: usize) -> String {
        self.upstream_names
            .get(idx)
            .map(|n| n.to_string())
            .unwrap_or_default()
    }

    /// A slot by (upstream name, GSTIN, optional user), for the admin API.
    pub fn find(&self, upstream: &str, gstin: &Gstin, user: Option<&str>) -> Option<Arc<Slot>> {
        self.slots
            .iter()
            .find(|s| {
                &*s.upstream.name == upstream
                    && s.credential.gstin == *gstin
                    && user.is_none_or(|u| &*s.credential.username == u)
            })
            .cloned()
    }

    /// A usable session for the slot, logging in (once, for all concurrent callers) if needed.
    pub async fn session(
        &self,
        slot: &Slot,
        trigger: Trigger,
    ) -> Result<Arc<Session>, GatewayError> {
        if let Some(s) = slot.current() {
            return Ok(s);
        }
        let _single_flight = slot.login.lock().await;
        if let Some(s) = slot.current() {
            return Ok(s);
        }
        self.login(slot, trigger).await
    }

    /// Compare-and-invalidate: forgets the session only if it is still `generation`.
    /// Returns whether it did.
    pub fn invalidate(&self, slot: &Slot, generation: u64) -> bool {
        let mut st = slot.lock();
        if st
            .session
            .as_ref()
            .is_some_and(|s| s.generation == generation)
        {
            st.session = None;
            true
        } else {
            false
        }
    }

    /// An operator-requested refresh: clears a lockout and logs in now.
    pub async fn refresh_now(&self, slot: &Slot) -> Result<Arc<Session>, GatewayError> {
        let _single_flight = slot.login.lock().await;
        slot.lock().guard.reset();
        self.login(slot, Trigger::Manual).await
    }

    /// The scheduler's refresh of `generation`, if it is still current and in use.
    pub(crate) async fn refresh_due(&self, id: usize, generation: u64) {
        let Some(slot) = self.slots.get(id) else {
            return;
        };
        {
            let mut st = slot.lock();
            if st.session.as_ref().map(|s| s.generation) != Some(generation) {
                return;
            }
            if st.last_used.elapsed() >= slot.upstream.idle_ttl {
                tracing::info!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                    "dropping idle session instead of refreshing it");
                st.session = None;
                return;
            }
        }
        let _single_flight = slot.login.lock().await;
        let current = slot.lock().session.clone();
        match current {
            Some(s) if s.generation == generation => {
                if let Err(e) = self.login(slot, Trigger::Proactive).await {
                    // Retry only when waiting can help, and no sooner than the guard allows:
                    // a lockout needs an operator, and hammering a throttled login only
                    // extends the block.
                    let retry = match &e {
                        GatewayError::CredentialsRejected { .. }
                        | GatewayError::UpstreamConfigRejected { .. } => None,
                        GatewayError::LoginThrottled { retry_after_secs }
                        | GatewayError::LoginBackoff {
                            retry_after_secs, ..
                        } => Some(Duration::from_secs(*retry_after_secs)),
                        _ => Some(slot.lock().guard.retry_delay()),
                    };
                    tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                        error = %e, retry_in_secs = retry.map(|r| r.as_secs_f64()),
                        "proactive refresh failed");
                    if let Some(retry) = retry {
                        let at = Instant::now() + retry;
                        if s.deadline > at {
                            self.scheduler.schedule(id, generation, at);
                        }
                    }
                }
            }
            _ => {}
        }
    }

    /// Performs one login. Must be called with the slot's `login` lock held.
    async fn login(&self, slot: &Slot, trigger: Trigger) -> Result<Arc<Session>, GatewayError> {
        let upstream = &slot.upstream;
        let now = Instant::now();
        let current = {
            let mut st = slot.lock();
            st.guard.admit(now)?;
            st.refreshing = true;
            st.session.clone()
        };
        // Ask for a new token only inside the API's force window; outside it the upstream
        // ignores the flag (NIC) or may refuse it.
        let force = match (&current, upstream.profile.force_window()) {
            (Some(s), Some(window)) => s.deadline.saturating_duration_since(now) <= window,
            _ => false,
        };
        let result = self.login_call(slot, force).await;
        let mut st = slot.lock();
        st.refreshing = false;
        let label = |result: &'static str| ResultLabels {
            upstream: upstream.name.clone().into(),
            result,
        };
        match result {
            Ok((login, sent_at, sent_instant, server_date)) => {
                self.metrics
                    .auth_requests
                    .get_or_create(&label("success"))
                    .inc();
                st.guard.succeeded();
                st.last_error = None;
                st.last_refresh = Some(sent_at);
                let token = login.token.expose_secret();
                // The same token means the upstream kept the old session: keep its expiry
                // rather than restarting the clock on it.
                if let Some(existing) = st.session.clone().or(current) {
                    if existing.token.as_bytes() == token.as_bytes() {
                        st.session = Some(existing.clone());
                        drop(st);
                        self.schedule_after_same_token(slot, &existing);
                        return Ok(existing);
                    }
                }
                // The lifetime runs from when the login was sent, on the monotonic clock, so
                // latency makes gstgate early, never late. An absolute expiry is measured
                // against the upstream's own clock (its `Date` header) when it sent one, so a
                // host clock running behind the upstream's cannot stretch a token's life.
                let (expires_at, lifetime) = match login.expires_at {
                    Some(at) => {
                        let reference = server_date.unwrap_or(sent_at);
                        (at, at.duration_since(reference).unwrap_or(Duration::ZERO))
                    }
                    None => (sent_at + upstream.token_lifetime, upstream.token_lifetime),
                };
                let mut token_header = HeaderValue::from_str(token).map_err(|_| {
                    GatewayError::UpstreamBadResponse(
                        "the token is not a valid header value".into(),
                    )
                })?;
                token_header.set_sensitive(true);
                let session = Arc::new(Session {
                    token: token_header,
                    sek: login.sek,
                    expires_at,
                    deadline: sent_instant + lifetime,
                    issued_at: sent_at,
                    generation: st.next_generation,
                });
                st.next_generation += 1;
                st.session = Some(session.clone());
                drop(st);
                self.metrics
                    .token_refreshes
                    .get_or_create(&TriggerLabels {
                        upstream: upstream.name.clone().into(),
                        trigger: trigger.label(),
                    })
                    .inc();
                tracing::info!(upstream = %upstream.name, gstin = %slot.credential.gstin,
                    user = %slot.credential.username, trigger = trigger.label(),
                    generation = session.generation, expires_in_secs = lifetime.as_secs(),
                    "session established");
                self.scheduler.schedule(
                    slot.id,
                    session.generation,
                    self.refresh_at(slot, &session, sent_instant),
                );
                Ok(session)
            }
            Err(LoginError::Refused(verdict)) => {
                let err = match verdict.class {
                    Class::CredentialsRejected => {
                        self.metrics
                            .auth_requests
                            .get_or_create(&label("credentials_rejected"))
                            .inc();
                        GatewayError::CredentialsRejected {
                            gstin: slot.credential.gstin.to_string(),
                            username: slot.credential.username.to_string(),
                            upstream_code: verdict.code.clone(),
                        }
                    }
                    Class::Configuration => {
                        self.metrics
                            .auth_requests
                            .get_or_create(&label("error"))
                            .inc();
                        GatewayError::UpstreamConfigRejected {
                            upstream_code: verdict.code.clone(),
                            message: verdict
                                .message
                                .clone()
                                .unwrap_or_else(|| "login refused".into()),
                        }
                    }
                    Class::Throttled => {
                        self.metrics
                            .auth_requests
                            .get_or_create(&label("error"))
                            .inc();
                        GatewayError::UpstreamThrottled {
                            upstream_code: verdict.code.clone(),
                        }
                    }
                    _ => {
                        self.metrics
                            .auth_requests
                            .get_or_create(&label("error"))
                            .inc();
                        GatewayError::UpstreamUnavailable(format!(
                            "login refused with code {}",
                            verdict.code.as_deref().unwrap_or("(none)")
                        ))
                    }
                };
                self.fail(slot, &mut st, verdict.class, &err, now);
                Err(err)
            }
            Err(LoginError::Gateway(err)) => {
                self.metrics
                    .auth_requests
                    .get_or_create(&label("error"))
                    .inc();
                // A login that cannot even be built (credentials too long for the RSA key)
                // will not get better by retrying.
                let class = match err {
                    GatewayError::UpstreamConfigRejected { .. } => Class::Configuration,
                    _ => Class::Transient,
                };
                self.fail(slot, &mut st, class, &err, now);
                Err(err)
            }
        }
    }

    fn fail(
        &self,
        slot: &Slot,
        st: &mut SlotState,
        class: Class,
        err: &GatewayError,
        now: Instant,
    ) {
        st.last_error = Some(err.to_string());
        match class {
            Class::CredentialsRejected => {
                st.guard.lock_out(State::CredentialsRejected, err.clone())
            }
            Class::Configuration => st.guard.lock_out(State::Failed, err.clone()),
            _ => st.guard.failed(now, err.to_string()),
        }
        tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
            user = %slot.credential.username, code = err.code(), upstream_code = err.upstream_code(),
            "login failed");
    }

    /// Sends the login and reads the reply; returns when it was sent, by both clocks, and the
    /// upstream's clock reading from its `Date` header.
    async fn login_call(
        &self,
        slot: &Slot,
        force: bool,
    ) -> Result<
        (
            crate::upstream::Login,
            SystemTime,
            Instant,
            Option<SystemTime>,
        ),
        LoginError,
    > {
        let upstream = &slot.upstream;
        let req = upstream
            .profile
            .login_request(
                &slot.credential.username,
                &slot.credential.password,
                force,
                &upstream.public_key,
            )
            .map_err(LoginError::Gateway)?;
        let mut headers = HeaderMap::new();
        let ctx = upstream.header_context(slot.gstin_header(), slot.user_header());
        upstream.profile.login_headers(&mut headers, &ctx);
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let sent_at = SystemTime::now();
        let sent_instant = Instant::now();
        let (status, reply_headers, body) = upstream
            .send(Method::POST, &upstream.auth_path, headers, req.body.into())
            .await
            .map_err(LoginError::Gateway)?;
        match upstream.profile.parse_login(&body, &req.app_key) {
            Ok(login) => Ok((login, sent_at, sent_instant, server_date(&reply_headers))),
            Err(LoginFailure::Refused(v)) => Err(LoginError::Refused(v)),
            Err(LoginFailure::BadReply(why)) if status.is_server_error() => {
                Err(LoginError::Gateway(GatewayError::UpstreamUnavailable(
                    format!("login answered HTTP {status}: {why}"),
                )))
            }
            Err(LoginFailure::BadReply(why)) => {
                Err(LoginError::Gateway(GatewayError::UpstreamBadResponse(why)))
            }
        }
    }

    /// When to refresh a new session: `refresh_before` ahead of expiry, plus a little jitter
    /// so sessions created together do not refresh together. The jitter moves the refresh
    /// *later*, never earlier: with the default `refresh_before` equal to NIC's 10-minute force
    /// window, an earlier refresh would fall outside the window and get the old token back.
    /// Never in the first half of a token's life, so a short-lived token cannot cause a
    /// refresh storm.
    fn refresh_at(&self, slot: &Slot, session: &Session, sent: Instant) -> Instant {
        let lifetime = session.deadline.saturating_duration_since(sent);
        let before = slot.upstream.refresh_before;
        let jitter_cap = (before / 20).min(Duration::from_secs(30));
        let jitter = jitter_cap.mul_f64(rand::random::<f64>());
        let target = session.deadline.checked_sub(before).unwrap_or(sent) + jitter;
        target.max(sent + lifetime / 2)
    }

    /// After a login returned the same token. Before the normal refresh time (an operator's
    /// early refresh, a re-login after a rejection that the upstream did not honour), keep
    /// the normal schedule; past it (the upstream's force window is narrower than
    /// `refresh_before`), try again after a third of the remaining life, while that is worth it.
    fn schedule_after_same_token(&self, slot: &Slot, session: &Session) {
        let now = Instant::now();
        let normal = session
            .deadline
            .checked_sub(slot.upstream.refresh_before)
            .filter(|t| *t > now);
        let at = match normal {
            Some(t) => t,
            None => {
                let remaining = session.deadline.saturating_duration_since(now);
                if remaining < 3 * SAME_TOKEN_MIN_RETRY {
                    // Too close to expiry to matter: the next caller logs in afresh.
                    return;
                }
                now + (remaining / 3).max(SAME_TOKEN_MIN_RETRY)
            }
        };
        self.scheduler.schedule(slot.id, session.generation, at);
    }

    /// Every slot, for the admin API and status page.
    pub fn snapshot(&self) -> Vec<SessionInfo> {
        let now = Instant::now();
        let wall = SystemTime::now();
        self.slots
            .iter()
            .map(|slot| {
                let st = slot.lock();
                let state = slot.state_now(&st, now);
                let live = st.session.as_ref().filter(|s| s.usable(now));
                SessionInfo {
                    upstream: slot.upstream.name.to_string(),
                    gstin: slot.credential.gstin.to_string(),
                    username: slot.credential.username.to_string(),
                    state,
                    expires_at: live.map(|s| rfc3339(s.expires_at)),
                    expires_in_secs: live.map(|s| {
                        s.expires_at
                            .duration_since(wall)
                            .unwrap_or_default()
                            .as_secs()
                    }),
                    last_refresh: st.last_refresh.map(rfc3339),
                    last_error: st.last_error.clone(),
                    generation: live.map(|s| s.generation),
                    session_ends_at: None,
                    session_ends_in_secs: None,
                }
            })
            .collect()
    }

    /// Per upstream: how many slots are in each state, and the shortest time to expiry of a
    /// valid session.
    pub fn gauges(&self) -> Vec<(Arc<str>, [u64; 6], Option<f64>)> {
        let now = Instant::now();
        let mut out: Vec<(Arc<str>, [u64; 6], Option<f64>)> = self
            .upstream_names
            .iter()
            .map(|n| (n.clone(), [0; 6], None))
            .collect();
        for slot in &self.slots {
            let st = slot.lock();
            let state = slot.state_now(&st, now);
            let Some(entry) = out.iter_mut().find(|(n, _, _)| *n == slot.upstream.name) else {
                continue;
            };
            if let Some(i) = State::ALL.iter().position(|s| *s == state) {
                entry.1[i] += 1;
            }
            if let Some(s) = st.session.as_ref().filter(|s| s.usable(now)) {
                let ttl = s.deadline.saturating_duration_since(now).as_secs_f64();
                entry.2 = Some(entry.2.map_or(ttl, |m: f64| m.min(ttl)));
            }
        }
        out
    }

    /// The metrics handle.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

/// The upstream's `Date` header, rounded up by the second it may have truncated (so the
/// token's remaining life is under- rather than over-estimated).
fn server_date(headers: &HeaderMap) -> Option<SystemTime> {
    let text = headers.get(http::header::DATE)?.to_str().ok()?;
    let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
    Some(SystemTime::from(at) + Duration::from_secs(1))
}

enum LoginError {
    Refused(crate::upstream::Verdict),
    Gateway(GatewayError),
}
