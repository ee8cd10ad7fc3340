//! The session manager (DESIGN.md §3): one slot per configured (upstream, GSTIN, user), each
//! holding the current session, its state and the lockout guard.
//!
//! * **Single-flight.** A login happens under the slot's async `login` mutex; callers that
//!   queue behind it re-check the slot when they get the lock and find the new session.
//! * **Compare-and-invalidate.** A token rejection invalidates only the generation that
//!   failed, so fifty requests failing with one old token cause one re-login. A token that
//!   a re-login after a rejection handed back unchanged is not logged in for again for a
//!   while (see [`Invalidation::KnownRejected`]).
//! * **Proactive refresh.** Every new session is handed to the [`scheduler`], a timer queue
//!   that refreshes it `refresh_before` its expiry.
//! * **Lockout guard.** See [`guard`]: credential rejections stop logins, logins are
//!   rate-limited, transient failures back off with jitter.
//!
//! Slot state sits behind a `std::sync::Mutex`: it is held for a few field reads or writes and
//! never across an `.await`, which is cheaper than an async mutex and cannot deadlock a task.

pub mod gauges;
mod guard;
pub mod scheduler;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue, Method};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::config::{CredentialConfig, MAX_TOKEN_LIFETIME};
use crate::crypto::AesKey;
use crate::gstin::Gstin;
use crate::metrics::{Metrics, ResultLabels, TriggerLabels};
use crate::problem::GatewayError;
use crate::upstream::{
    Class, Expiry, HeaderContext, Login, LoginFailure, LoginKind, Renewal, Upstream, Verdict,
};

pub use guard::Guard;

/// A session whose token has less than this left is treated as expired: a request sent with
/// it would likely arrive after expiry.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

/// After a refresh got the old token back, never ask again sooner than this.
const SAME_TOKEN_MIN_RETRY: Duration = Duration::from_secs(10);

/// An API without a force-refresh (NIC e-way bill) logs in again this long after the token's
/// expiry: gstgate counts the lifetime from when it *sent* the login, so the upstream's clock
/// for the token runs a little later, and a login at the very deadline gets the old token back.
const AT_EXPIRY_DELAY: Duration = Duration::from_secs(1);

/// Logins at expiry that still get the old token back are retried this many times, this far
/// apart, before the callers waiting for them are answered with an error.
const AT_EXPIRY_RETRIES: u32 = 3;
const AT_EXPIRY_RETRY_GAP: Duration = Duration::from_secs(1);

/// A GSTN session lasts this long when the credential does not say (the portal's longest
/// API-access period).
const DEFAULT_SESSION_LIFETIME: Duration = crate::config::MAX_SESSION_LIFETIME;

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

/// What a token rejection did to the slot's session ([`Sessions::invalidate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// The rejected generation was the current session and is gone: get a session again (a
    /// re-login, single-flight) and replay.
    Invalidated,
    /// Another request already replaced or cleared that generation: pick up the current
    /// session (or wait for the login under way) and replay.
    Superseded,
    /// A re-login after a rejection of this very generation got the same token back, less
    /// than `login_window` ago. Another login would only get it back again: the request
    /// fails with `token_rejected` and the session stays as it is.
    KnownRejected,
}

/// A session whose token the upstream rejected on a data call, yet handed back unchanged to
/// the re-login that followed.
#[derive(Debug, Clone, Copy)]
struct KnownRejected {
    generation: u64,
    /// Until then a rejection of `generation` causes no login.
    until: Instant,
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
    /// How long the taxpayer enabled API access for (GSTN).
    pub session_lifetime: Duration,
    gstin_header: HeaderValue,
    user_header: HeaderValue,
    state_header: HeaderValue,
}

/// The taxpayer's portal API session (GSTN): started with an OTP, ends when the API-access
/// period the taxpayer enabled runs out.
#[derive(Debug, Clone, Copy)]
struct Portal {
    /// When a new OTP will be needed, by the credential's `session_lifetime`.
    ends_at: SystemTime,
}

/// The mutable part of a slot.
struct SlotState {
    /// The session callers use; cleared when the upstream rejects its token.
    session: Option<Arc<Session>>,
    /// The upstream's latest session, kept after a rejection: a GSTN refresh proves
    /// possession of its token and SEK. `None` for an OTP API means an OTP is needed.
    latest: Option<Arc<Session>>,
    /// The portal session (GSTN).
    portal: Option<Portal>,
    /// Set while a login runs.
    refreshing: bool,
    /// Why the last login failed, without secrets.
    last_error: Option<String>,
    /// The upstream's error code of the last failed login.
    last_upstream_code: Option<String>,
    /// When the last successful login was sent.
    last_refresh: Option<SystemTime>,
    /// The current session's token was rejected and a re-login returned it all the same.
    known_rejected: Option<KnownRejected>,
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
    /// Held for the whole of a login: this is the single-flight. Shared so that the task a
    /// login runs in can own its guard.
    login: Arc<tokio::sync::Mutex<()>>,
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

    /// The values the upstream's profile puts in headers for this slot.
    pub fn header_context(&self) -> HeaderContext<'_> {
        self.upstream.header_context(
            &self.credential.gstin_header,
            &self.credential.user_header,
            &self.credential.state_header,
        )
    }

    fn needs_otp(&self) -> bool {
        self.upstream.profile.renewal() == Renewal::OtpThenRefresh
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
            _ if self.needs_otp() && st.latest.is_none() => State::NeedsOtp,
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
    /// The upstream's error code of the last failed login.
    pub last_upstream_code: Option<String>,
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
            let state_header =
                HeaderValue::from_str(gstin.state_code()).map_err(|e| err(e.to_string()))?;
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
                        session_lifetime: c.session_lifetime.unwrap_or(DEFAULT_SESSION_LIFETIME),
                        gstin_header: gstin_header.clone(),
                        user_header: user_header.clone(),
                        state_header: state_header.clone(),
                    },
                    state: Mutex::new(SlotState {
                        session: None,
                        latest: None,
                        portal: None,
                        refreshing: false,
                        last_error: None,
                        last_upstream_code: None,
                        last_refresh: None,
                        known_rejected: None,
                        last_used: Instant::now(),
                        next_generation: 1,
                        guard: Guard::new(upstream.max_logins, upstream.login_window),
                    }),
                    login: Arc::new(tokio::sync::Mutex::new(())),
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

    /// A slot by (upstream name, GSTIN, optional user), for the admin API: chosen as for a
    /// caller, so a GSTIN with several users needs one named (never silently the first).
    pub fn find(
        &self,
        upstream: &str,
        gstin: &Gstin,
        user: Option<&str>,
    ) -> Result<Arc<Slot>, GatewayError> {
        let index = self
            .upstream_names
            .iter()
            .position(|n| &**n == upstream)
            .ok_or_else(|| GatewayError::NoCredential {
                upstream: upstream.to_owned(),
                gstin: gstin.to_string(),
            })?;
        self.lookup(index, gstin, user)
    }

    /// A usable session for the slot, logging in (once, for all concurrent callers) if needed.
    pub async fn session(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        trigger: Trigger,
    ) -> Result<Arc<Session>, GatewayError> {
        if let Some(s) = slot.current() {
            return Ok(s);
        }
        self.detached(slot, move |me, slot| async move {
            if let Some(s) = slot.current() {
                return Ok(s);
            }
            me.login(&slot, trigger).await
        })
        .await
    }

    /// Takes the slot's single-flight lock, then runs `work` under it in a task of its own
    /// and waits for it. The wait for the lock is the caller's: one that goes away stops
    /// waiting and leaves nothing behind. Once the lock is taken, the work runs to the end
    /// whatever the caller does: the upstream may already have issued a token (and, for a
    /// GSTN refresh or an e-invoice force refresh, retired the old one), and the slot must
    /// record it and leave its `refreshing` state.
    async fn detached<T, F, Fut>(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        work: F,
    ) -> Result<T, GatewayError>
    where
        F: FnOnce(Arc<Self>, Arc<Slot>) -> Fut,
        Fut: std::future::Future<Output = Result<T, GatewayError>> + Send + 'static,
        T: Send + 'static,
    {
        let single_flight = slot.login.clone().lock_owned().await;
        let work = work(self.clone(), slot.clone());
        tokio::spawn(async move {
            let result = work.await;
            drop(single_flight);
            result
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                    error = %e, "login task failed");
            Err(GatewayError::Internal("the login task failed".into()))
        })
    }

    /// Compare-and-invalidate after the upstream rejected the token of `generation`: forgets
    /// the session only if it is still that generation, and not when a re-login has already
    /// shown that the upstream hands that token back (see [`Invalidation`]).
    pub fn invalidate(&self, slot: &Slot, generation: u64) -> Invalidation {
        let now = Instant::now();
        let mut st = slot.lock();
        if st.session.as_ref().map(|s| s.generation) != Some(generation) {
            return Invalidation::Superseded;
        }
        if st
            .known_rejected
            .is_some_and(|k| k.generation == generation && k.until > now)
        {
            return Invalidation::KnownRejected;
        }
        st.session = None;
        Invalidation::Invalidated
    }

    /// An operator-requested refresh: clears a lockout and logs in now.
    pub async fn refresh_now(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
    ) -> Result<Arc<Session>, GatewayError> {
        self.detached(slot, |me, slot| async move {
            slot.lock().guard.reset();
            me.login(&slot, Trigger::Manual).await
        })
        .await
    }

    /// Asks the upstream to send the taxpayer an OTP (GSTN). An operator's call: it clears a
    /// lockout, but still counts against the login limit (each one is an SMS to the taxpayer).
    pub async fn request_otp(self: &Arc<Self>, slot: &Arc<Slot>) -> Result<(), GatewayError> {
        self.require_otp_api(slot)?;
        self.detached(
            slot,
            |me, slot| async move { me.send_otp_request(&slot).await },
        )
        .await
    }

    /// Sends OTPREQUEST; the caller holds the single-flight lock.
    async fn send_otp_request(&self, slot: &Slot) -> Result<(), GatewayError> {
        {
            let mut st = slot.lock();
            st.guard.reset();
            st.guard.admit(Instant::now())?;
        }
        let sent = self.auth_call(slot, LoginKind::OtpRequest).await;
        let label = |result: &'static str| ResultLabels {
            upstream: slot.upstream.name.clone().into(),
            result,
        };
        let outcome = sent.and_then(|sent| {
            slot.upstream
                .profile
                .parse_ack(&sent.body)
                .map_err(|f| login_failure(f, sent.status))
        });
        match outcome {
            Ok(()) => {
                self.metrics
                    .auth_requests
                    .get_or_create(&label("success"))
                    .inc();
                tracing::info!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                    user = %slot.credential.username, "OTP requested");
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .auth_requests
                    .get_or_create(&label("error"))
                    .inc();
                let err = self.refusal(slot, e);
                tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                    code = err.code(), upstream_code = err.upstream_code(), "OTP request failed");
                Err(err)
            }
        }
    }

    /// Starts a GSTN session with the OTP the taxpayer received (already checked to be six
    /// digits by the admin API); the portal session it opens lasts the credential's
    /// `session_lifetime`.
    pub async fn submit_otp(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        otp: SecretString,
    ) -> Result<Arc<Session>, GatewayError> {
        self.require_otp_api(slot)?;
        self.detached(slot, |me, slot| async move {
            me.start_with_otp(&slot, otp.expose_secret()).await
        })
        .await
    }

    /// Sends AUTHTOKEN with the OTP; the caller holds the single-flight lock.
    async fn start_with_otp(&self, slot: &Slot, otp: &str) -> Result<Arc<Session>, GatewayError> {
        {
            let mut st = slot.lock();
            st.guard.reset();
            st.guard.admit(Instant::now())?;
            st.refreshing = true;
        }
        let result = self.login_call(slot, LoginKind::Otp(otp)).await;
        self.settle(
            slot,
            Trigger::Manual,
            result,
            None,
            Instant::now(),
            Purpose::StartWithOtp,
        )
    }

    fn require_otp_api(&self, slot: &Slot) -> Result<(), GatewayError> {
        if slot.needs_otp() {
            Ok(())
        } else {
            Err(GatewayError::BodyInvalid(format!(
                "upstream `{}` does not use OTP sessions",
                slot.upstream.name
            )))
        }
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
            // An idle GSTN session is kept alive all the same: dropping it would cost the
            // taxpayer a new OTP, which is what gstgate exists to avoid.
            if !slot.needs_otp() && st.last_used.elapsed() >= slot.upstream.idle_ttl {
                tracing::info!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                    "dropping idle session instead of refreshing it");
                st.session = None;
                st.latest = None;
                return;
            }
        }
        let _single_flight = slot.login.lock().await;
        let current = slot.lock().session.clone();
        match current {
            Some(s) if s.generation == generation => {
                if let Err(e) = self.login(slot, Trigger::Proactive).await {
                    // Retry only when waiting can help, and no sooner than the guard allows:
                    // a lockout or a missing OTP needs an operator, and hammering a
                    // throttled login only extends the block.
                    let retry = match &e {
                        GatewayError::CredentialsRejected { .. }
                        | GatewayError::UpstreamConfigRejected { .. }
                        | GatewayError::OtpRequired { .. }
                        | GatewayError::ApiAccessDisabled { .. } => None,
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
                        self.scheduler.schedule(slot.id, generation, at);
                    }
                }
            }
            _ => {}
        }
    }

    /// Renews the slot's session the way its API allows. Must be called with the slot's
    /// `login` lock held.
    async fn login(&self, slot: &Slot, trigger: Trigger) -> Result<Arc<Session>, GatewayError> {
        let renewal = slot.upstream.profile.renewal();
        let (current, latest) = {
            let mut st = slot.lock();
            if renewal == Renewal::OtpThenRefresh {
                // Never start a GSTN session, or keep one past the API-access period the
                // taxpayer enabled: either needs an OTP, which only an operator may request.
                let reason = match st.portal {
                    _ if st.latest.is_none() => Some("no session has been started with an OTP"),
                    Some(p) if p.ends_at <= SystemTime::now() => {
                        Some("the API-access period the taxpayer enabled has ended")
                    }
                    _ => None,
                };
                if let Some(reason) = reason {
                    st.latest = None;
                    st.portal = None;
                    return Err(self.otp_required(slot, reason));
                }
            }
            // After a rejection the session is gone, but its token is what the upstream may
            // hand back: compare against (and time the login by) the latest one issued.
            (
                st.session.clone().or_else(|| st.latest.clone()),
                st.latest.clone(),
            )
        };
        if let (Renewal::AtExpiry, Some(s)) = (renewal, &current) {
            // Hold the requests that straddle the boundary until the token has expired by
            // the upstream's clock too; a login before that returns the same token.
            let at = s.deadline + AT_EXPIRY_DELAY;
            if at > Instant::now() && s.deadline <= Instant::now() + EXPIRY_MARGIN {
                tokio::time::sleep_until(at.into()).await;
            }
        }
        let mut attempts = 0;
        loop {
            let now = Instant::now();
            {
                let mut st = slot.lock();
                st.guard.admit(now)?;
                st.refreshing = true;
            }
            let kind = match (renewal, &latest) {
                (Renewal::ForceWindow(window), _) => LoginKind::Password {
                    // Ask for a new token only inside the force window; outside it the
                    // upstream ignores the flag (NIC) or may refuse it.
                    force: current
                        .as_ref()
                        .is_some_and(|s| s.deadline.saturating_duration_since(now) <= window),
                },
                (Renewal::AtExpiry, _) => LoginKind::Password { force: false },
                (Renewal::OtpThenRefresh, Some(l)) => LoginKind::Refresh {
                    token: &l.token,
                    sek: &l.sek,
                },
                (Renewal::OtpThenRefresh, None) => {
                    slot.lock().refreshing = false;
                    return Err(self.otp_required(slot, "no session to refresh"));
                }
            };
            let result = self.login_call(slot, kind).await;
            let stale = renewal == Renewal::AtExpiry
                && matches!((&result, &current), (Ok(sent), Some(c))
                    if sent.login.token.expose_secret().as_bytes() == c.token.as_bytes()
                        && !c.usable(Instant::now()));
            if stale && attempts + 1 < AT_EXPIRY_RETRIES {
                // The upstream still thinks the old token is alive: ask again shortly,
                // holding the callers rather than handing them a token about to die.
                slot.lock().refreshing = false;
                attempts += 1;
                tokio::time::sleep(AT_EXPIRY_RETRY_GAP).await;
                continue;
            }
            let purpose = if stale {
                // The upstream vouched for the token at every ask: count it as issued now
                // rather than fail callers or spend the login budget on more asks. If it does
                // expire sooner, the rejection path logs in again.
                tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                    "the upstream keeps returning a token gstgate counts as expired: is the upstream's token_lifetime set shorter than the real one?");
                Purpose::AcceptReissued
            } else {
                Purpose::Renew
            };
            return self.settle(slot, trigger, result, current, now, purpose);
        }
    }

    fn otp_required(&self, slot: &Slot, reason: &str) -> GatewayError {
        GatewayError::OtpRequired {
            upstream: slot.upstream.name.to_string(),
            gstin: slot.credential.gstin.to_string(),
            reason: reason.to_owned(),
        }
    }

    /// Records the outcome of a login: the new session, or the failure and what it means
    /// for further logins.
    fn settle(
        &self,
        slot: &Slot,
        trigger: Trigger,
        result: Result<Sent, LoginError>,
        current: Option<Arc<Session>>,
        started: Instant,
        purpose: Purpose,
    ) -> Result<Arc<Session>, GatewayError> {
        let upstream = &slot.upstream;
        let mut st = slot.lock();
        st.refreshing = false;
        let label = |result: &'static str| ResultLabels {
            upstream: upstream.name.clone().into(),
            result,
        };
        // The same token means the upstream kept the old session: it keeps its own expiry
        // (the clock is never restarted on an old token), so only a new token must come with
        // a usable life.
        let known = st
            .session
            .clone()
            .or(current)
            .filter(|_| purpose != Purpose::AcceptReissued);
        let result = result.and_then(|sent| {
            let token = sent.login.token.expose_secret().as_bytes();
            match known.filter(|k| k.token.as_bytes() == token) {
                Some(existing) => Ok((sent, Renewed::Same(existing))),
                None => match sent.life {
                    Ok(life) => Ok((sent, Renewed::New(life))),
                    Err(why) => Err(LoginError::Gateway(GatewayError::UpstreamBadResponse(
                        why.into(),
                    ))),
                },
            }
        });
        let (sent, renewed) = match result {
            Ok(renewed) => renewed,
            Err(e) => {
                let credentials =
                    matches!(&e, LoginError::Refused(v) if v.class == Class::CredentialsRejected);
                self.metrics
                    .auth_requests
                    .get_or_create(&label(if credentials {
                        "credentials_rejected"
                    } else {
                        "error"
                    }))
                    .inc();
                let class = match &e {
                    LoginError::Refused(v) => v.class,
                    // A login that cannot even be built (credentials too long for the RSA
                    // key) will not get better by retrying.
                    LoginError::Gateway(GatewayError::UpstreamConfigRejected { .. }) => {
                        Class::Configuration
                    }
                    LoginError::Gateway(_) => Class::Transient,
                };
                let err = self.refusal(slot, e);
                if purpose == Purpose::StartWithOtp {
                    // The operator who sent the OTP gets the answer directly; a typo or a
                    // portal refusal says nothing about the running session's health.
                    tracing::warn!(upstream = %upstream.name, gstin = %slot.credential.gstin,
                        code = err.code(), upstream_code = err.upstream_code(), "OTP login failed");
                } else {
                    self.fail(slot, &mut st, class, &err, started);
                }
                return Err(err);
            }
        };
        self.metrics
            .auth_requests
            .get_or_create(&label("success"))
            .inc();
        st.guard.succeeded();
        st.last_error = None;
        st.last_upstream_code = None;
        st.last_refresh = Some(sent.at);
        if purpose == Purpose::StartWithOtp {
            st.portal = Some(Portal {
                ends_at: sent.at + slot.credential.session_lifetime,
            });
        }
        let (expires_at, lifetime) = match renewed {
            Renewed::Same(existing) => {
                // A re-login because the upstream rejected this token, answered with this token:
                // the upstream says the session is alive (NIC hands back a valid token to every
                // login outside its force window) while its data calls refuse it (revoked on one
                // side only, a header it does not accept with this user). A login cannot fix that,
                // and compare-and-invalidate alone would not stop the next rejection from logging
                // in again: the session is back under its generation, so every later request would
                // spend a login until the guard answered 429 `login_rate_limited`. That last
                // rejection would leave no session at all, so even once the upstream accepted the
                // token again every caller would get 429 for the rest of the window. So the session
                // is kept as it is (generation, expiry, refresh schedule: DESIGN §3) and marked:
                // for `login_window`, a rejection of it fails the request with `token_rejected` at
                // once, without a login. That bounds what this can cost to one login per window,
                // one of `max_logins`, and leaves the rest for the proactive refresh, cold starts
                // and operators. Bumping the generation instead would not help: the next rejection
                // would invalidate the new one just the same. Recovery needs no operator: once the
                // upstream accepts the token again, requests succeed with it; a new token (the
                // proactive refresh in the force window, the expiry) is a new generation the mark
                // does not cover; and after `login_window` the next rejection tries one re-login
                // again, in case the upstream now issues a new token.
                if trigger == Trigger::Rejected {
                    st.known_rejected = Some(KnownRejected {
                        generation: existing.generation,
                        until: Instant::now() + upstream.login_window,
                    });
                    tracing::warn!(upstream = %upstream.name, gstin = %slot.credential.gstin,
                        user = %slot.credential.username, generation = existing.generation,
                        no_relogin_for_secs = upstream.login_window.as_secs(),
                        "the upstream rejected the token its login hands back; requests rejected with it fail without another login");
                }
                st.session = Some(existing.clone());
                drop(st);
                self.schedule_after_same_token(slot, &existing);
                return Ok(existing);
            }
            Renewed::New(life) => life,
        };
        let Sent {
            login,
            at: sent_at,
            instant: sent_instant,
            ..
        } = sent;
        let token = login.token.expose_secret();
        let mut token_header = HeaderValue::from_str(token).map_err(|_| {
            GatewayError::UpstreamBadResponse("the token is not a valid header value".into())
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
        st.latest = Some(session.clone());
        st.known_rejected = None;
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

    /// The gateway error for a failed auth call.
    fn refusal(&self, slot: &Slot, e: LoginError) -> GatewayError {
        let verdict = match e {
            LoginError::Gateway(err) => return err,
            LoginError::Refused(v) => v,
        };
        let Verdict {
            class,
            code,
            message,
        } = verdict;
        match class {
            Class::CredentialsRejected => GatewayError::CredentialsRejected {
                gstin: slot.credential.gstin.to_string(),
                username: slot.credential.username.to_string(),
                upstream_code: code,
            },
            Class::Configuration => GatewayError::UpstreamConfigRejected {
                upstream_code: code,
                message: message.unwrap_or_else(|| "login refused".into()),
            },
            Class::Throttled => GatewayError::UpstreamThrottled {
                upstream_code: code,
            },
            Class::OtpRejected => GatewayError::OtpInvalid {
                upstream_code: code,
                detail: message.unwrap_or_else(|| "the upstream refused the OTP".into()),
            },
            Class::AccessDisabled => GatewayError::ApiAccessDisabled {
                gstin: slot.credential.gstin.to_string(),
                upstream_code: code,
            },
            Class::SessionLimit => GatewayError::TooManySessions {
                upstream_code: code,
            },
            // A refresh whose token the upstream no longer knows: the portal session is
            // over, and only a new OTP starts another.
            Class::TokenRejected if slot.needs_otp() => self.otp_required(
                slot,
                &format!(
                    "the upstream ended the session ({})",
                    code.as_deref().unwrap_or("no code")
                ),
            ),
            _ => GatewayError::UpstreamUnavailable(format!(
                "login refused with code {}",
                code.as_deref().unwrap_or("(none)")
            )),
        }
    }

    /// Records a failed login admitted at `admitted` and what it means for further logins.
    fn fail(
        &self,
        slot: &Slot,
        st: &mut SlotState,
        class: Class,
        err: &GatewayError,
        admitted: Instant,
    ) {
        st.last_error = Some(err.to_string());
        st.last_upstream_code = err.upstream_code().map(str::to_owned);
        match class {
            Class::CredentialsRejected => {
                st.guard.lock_out(State::CredentialsRejected, err.clone())
            }
            Class::Configuration => st.guard.lock_out(State::Failed, err.clone()),
            // The session is gone; the operator's OTP calls clear the lockout.
            Class::AccessDisabled => {
                st.latest = None;
                st.guard.lock_out(State::NeedsOtp, err.clone());
            }
            // The upstream no longer knows the session: its token is as dead as the refresh.
            Class::TokenRejected if slot.needs_otp() => {
                st.session = None;
                st.latest = None;
                st.portal = None;
            }
            // NIC e-way bill's 118 says "try after 5 minutes".
            // Backoffs run from the failure, not the admission: a login that took its whole
            // timeout to fail must not find its backoff already over.
            Class::Throttled => st
                .guard
                .hold_off(Instant::now(), slot.upstream.login_window / 3),
            _ if *err == GatewayError::UpstreamUnreachable => {
                st.guard
                    .unreachable(admitted, Instant::now(), err.to_string())
            }
            _ => st.guard.failed(Instant::now(), err.to_string()),
        }
        tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
            user = %slot.credential.username, code = err.code(), upstream_code = err.upstream_code(),
            "login failed");
    }

    /// Sends a call to the auth endpoint and returns the raw reply.
    async fn auth_call(&self, slot: &Slot, kind: LoginKind<'_>) -> Result<RawReply, LoginError> {
        let upstream = &slot.upstream;
        let token = match &kind {
            LoginKind::Refresh { token, .. } => Some((*token).clone()),
            _ => None,
        };
        let req = upstream
            .profile
            .login_request(
                kind,
                &slot.credential.username,
                &slot.credential.password,
                &upstream.public_key,
            )
            .map_err(LoginError::Gateway)?;
        let mut headers = HeaderMap::new();
        upstream
            .profile
            .login_headers(&mut headers, &slot.header_context(), token.as_ref());
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let at = SystemTime::now();
        let instant = Instant::now();
        let (status, headers, body) = upstream
            .send(Method::POST, &upstream.auth_path, headers, req.body.into())
            .await
            .map_err(LoginError::Gateway)?;
        Ok(RawReply {
            status,
            server_date: server_date(&headers),
            body,
            app_key: req.app_key,
            at,
            instant,
        })
    }

    /// Sends a login and reads the session out of its reply.
    async fn login_call(&self, slot: &Slot, kind: LoginKind<'_>) -> Result<Sent, LoginError> {
        let raw = self.auth_call(slot, kind).await?;
        let login = slot
            .upstream
            .profile
            .parse_login(&raw.body, &raw.app_key)
            .map_err(|f| login_failure(f, raw.status))?;
        let life = token_life(
            &login.expiry,
            raw.at,
            raw.server_date,
            slot.upstream.token_lifetime,
        );
        Ok(Sent {
            login,
            at: raw.at,
            instant: raw.instant,
            life,
        })
    }

    /// When to refresh a new session. With a force window (or a refresh call): `refresh_before`
    /// ahead of expiry, plus a little jitter so sessions created together do not refresh
    /// together. The jitter moves the refresh *later*, never earlier: with the default
    /// `refresh_before` equal to NIC's 10-minute force window, an earlier refresh would fall
    /// outside the window and get the old token back. Never in the first half of a token's
    /// life, so a short-lived token cannot cause a refresh storm. Without either (e-way bill):
    /// just after expiry, when a login can issue a new token.
    fn refresh_at(&self, slot: &Slot, session: &Session, sent: Instant) -> Instant {
        if slot.upstream.profile.renewal() == Renewal::AtExpiry {
            return session.deadline + AT_EXPIRY_DELAY;
        }
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
                    last_upstream_code: st.last_upstream_code.clone(),
                    generation: live.map(|s| s.generation),
                    session_ends_at: st.portal.map(|p| rfc3339(p.ends_at)),
                    session_ends_in_secs: st
                        .portal
                        .map(|p| p.ends_at.duration_since(wall).unwrap_or_default().as_secs()),
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

/// What a login that `settle` records was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Renewing (or starting) a session the API's usual way.
    Renew,
    /// Opening a GSTN portal session with an OTP.
    StartWithOtp,
    /// Taking a token the upstream keeps returning past its expiry as newly issued.
    AcceptReissued,
}

/// Why an auth call failed, before it is turned into a gateway error.
enum LoginError {
    Refused(Verdict),
    Gateway(GatewayError),
}

fn login_failure(f: LoginFailure, status: http::StatusCode) -> LoginError {
    match f {
        LoginFailure::Refused(v) => LoginError::Refused(v),
        LoginFailure::BadReply(why) if status.is_server_error() => LoginError::Gateway(
            GatewayError::UpstreamUnavailable(format!("login answered HTTP {status}: {why}")),
        ),
        LoginFailure::BadReply(why) => LoginError::Gateway(GatewayError::UpstreamBadResponse(why)),
    }
}

/// An auth call's reply, with when it was sent by both clocks and the upstream's clock
/// reading from its `Date` header.
struct RawReply {
    status: http::StatusCode,
    server_date: Option<SystemTime>,
    body: bytes::Bytes,
    app_key: AesKey,
    at: SystemTime,
    instant: Instant,
}

/// A successful login and when it was sent.
struct Sent {
    login: Login,
    at: SystemTime,
    instant: Instant,
    /// When the token expires, as reported (capped), and its life from when the login was
    /// sent; or why the reply's expiry is unusable.
    life: Result<(SystemTime, Duration), &'static str>,
}

/// What a successful login brought.
enum Renewed {
    /// The token gstgate already holds: its session and expiry stand.
    Same(Arc<Session>),
    /// A new token: its expiry and life.
    New((SystemTime, Duration)),
}

/// A new token's expiry and life. The life runs from when the login was sent, on the
/// monotonic clock, so latency makes gstgate early, never late. An absolute expiry is measured
/// against the upstream's own clock (its `Date` header) when it sent one, so a host clock
/// running behind the upstream's cannot stretch a token's life. A life over
/// [`MAX_TOKEN_LIFETIME`] is cut to it; an expiry already past is a bad reply (retrying later
/// may help), not a token to schedule refreshes for in a loop.
fn token_life(
    expiry: &Expiry,
    sent_at: SystemTime,
    server_date: Option<SystemTime>,
    configured: Duration,
) -> Result<(SystemTime, Duration), &'static str> {
    let lifetime = match *expiry {
        Expiry::At(at) => at
            .duration_since(server_date.unwrap_or(sent_at))
            .unwrap_or(Duration::ZERO),
        Expiry::After(lifetime) => lifetime,
        Expiry::Unstated => configured,
    };
    if lifetime.is_zero() {
        return Err("the login reply's token expiry is already past");
    }
    let lifetime = lifetime.min(MAX_TOKEN_LIFETIME);
    let expires_at = match *expiry {
        Expiry::At(at) => at.min(sent_at + MAX_TOKEN_LIFETIME),
        _ => sent_at + lifetime,
    };
    Ok((expires_at, lifetime))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A session manager with one GSTN slot (no upstream behind it: `base_url` is a closed
    /// port), and the directory holding its key.
    fn gstn_sessions() -> (Arc<Sessions>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("gstn.pem");
        let pem = crate::crypto::KeyPair::generate()
            .unwrap()
            .public_key()
            .to_pem()
            .unwrap();
        std::fs::write(&key, pem).unwrap();
        let text = format!(
            r#"
[server]
[[upstream]]
name = "gstn"
api = "gstn"
base_url = "http://127.0.0.1:9"
routes = ["/taxpayerapi/"]
auth_path = "/taxpayerapi/v1.0/authenticate"
public_key = "{}"
client_id = "a"
client_secret = "b"
[[credential]]
gstin = "27AAPFU0939F1ZV"
username = "u"
upstreams = ["gstn"]
session_lifetime = "6h"
"#,
            key.display()
        );
        let config = crate::config::Config::parse(&text, std::path::Path::new("c.toml")).unwrap();
        let (metrics, _) = Metrics::new();
        let upstream =
            Arc::new(Upstream::from_config(&config.upstreams[0], metrics.clone()).unwrap());
        let sessions = Sessions::new(&[upstream], &config.credentials, metrics).unwrap();
        (sessions, dir)
    }

    fn session(generation: u64) -> Arc<Session> {
        let now = SystemTime::now();
        Arc::new(Session {
            token: HeaderValue::from_static("t"),
            sek: AesKey::random(),
            expires_at: now + Duration::from_secs(3600),
            deadline: Instant::now() + Duration::from_secs(3600),
            issued_at: now,
            generation,
        })
    }

    /// A GSTN portal session that ended by the credential's `session_lifetime` is not
    /// refreshed: the slot needs an OTP, and the upstream is not called at all (its address
    /// here is a closed port, so a call would fail differently).
    #[tokio::test]
    async fn a_gstn_session_is_not_refreshed_past_the_configured_portal_end() {
        let (sessions, _dir) = gstn_sessions();
        let slot = sessions.slots[0].clone();
        {
            // Started with an OTP six hours ago; its last token has just expired.
            let mut st = slot.lock();
            let now = SystemTime::now();
            st.latest = Some(Arc::new(Session {
                token: HeaderValue::from_static("t"),
                sek: AesKey::random(),
                expires_at: now,
                deadline: Instant::now(),
                issued_at: now - Duration::from_secs(6 * 3600),
                generation: 1,
            }));
            st.portal = Some(Portal {
                ends_at: now - Duration::from_secs(1),
            });
        }
        let err = sessions
            .session(&slot, Trigger::Proactive)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, GatewayError::OtpRequired { reason, .. } if reason.contains("API-access period")),
            "{err:?}"
        );
        let info = &sessions.snapshot()[0];
        assert_eq!(info.state, State::NeedsOtp);
        assert!(info.session_ends_at.is_none(), "{:?}", info.session_ends_at);
        assert_eq!(
            sessions
                .metrics
                .auth_requests
                .get_or_create(&ResultLabels {
                    upstream: Arc::<str>::from("gstn").into(),
                    result: "error",
                })
                .get(),
            0,
            "no auth call was made"
        );
    }

    /// Compare-and-invalidate, and the mark a re-login that got a rejected token back leaves:
    /// while it lasts a rejection of that generation keeps the session and asks for no login;
    /// once it has run out (or for another generation) the rejection invalidates as usual.
    #[tokio::test]
    async fn a_token_handed_back_after_its_rejection_is_not_invalidated_again_for_a_while() {
        let (sessions, _dir) = gstn_sessions();
        let slot = sessions.slots[0].clone();
        slot.lock().session = Some(session(3));
        assert_eq!(sessions.invalidate(&slot, 2), Invalidation::Superseded);
        assert_eq!(sessions.invalidate(&slot, 3), Invalidation::Invalidated);
        assert!(slot.lock().session.is_none());
        assert_eq!(sessions.invalidate(&slot, 3), Invalidation::Superseded);

        let now = Instant::now();
        {
            let mut st = slot.lock();
            st.session = Some(session(3));
            st.known_rejected = Some(KnownRejected {
                generation: 3,
                until: now + Duration::from_secs(900),
            });
        }
        assert_eq!(sessions.invalidate(&slot, 3), Invalidation::KnownRejected);
        assert_eq!(sessions.invalidate(&slot, 3), Invalidation::KnownRejected);
        assert!(slot.lock().session.is_some(), "the session is kept");
        // A rejection of an older generation still just picks up the current session.
        assert_eq!(sessions.invalidate(&slot, 2), Invalidation::Superseded);

        // The mark has run out: the next rejection may try one re-login again.
        slot.lock().known_rejected = Some(KnownRejected {
            generation: 3,
            until: now,
        });
        assert_eq!(sessions.invalidate(&slot, 3), Invalidation::Invalidated);

        // A mark for another generation does not cover the current one.
        {
            let mut st = slot.lock();
            st.session = Some(session(4));
            st.known_rejected = Some(KnownRejected {
                generation: 3,
                until: now + Duration::from_secs(900),
            });
        }
        assert_eq!(sessions.invalidate(&slot, 4), Invalidation::Invalidated);
    }

    #[test]
    fn token_life_is_capped_and_a_past_expiry_refused() {
        let sent = SystemTime::now();
        let six_hours = Duration::from_secs(6 * 3600);
        let far = sent + Duration::from_secs(3 * 365 * 24 * 3600);
        assert_eq!(
            token_life(&Expiry::At(far), sent, None, six_hours),
            Ok((sent + MAX_TOKEN_LIFETIME, MAX_TOKEN_LIFETIME))
        );
        // Measured on the upstream's clock: its Date an hour ahead of ours shortens the life.
        let at = sent + six_hours;
        let upstream_now = sent + Duration::from_secs(3600);
        assert_eq!(
            token_life(&Expiry::At(at), sent, Some(upstream_now), six_hours),
            Ok((at, Duration::from_secs(5 * 3600)))
        );
        assert!(token_life(&Expiry::At(sent), sent, None, six_hours).is_err());
        let past = sent - Duration::from_secs(60);
        assert!(token_life(&Expiry::At(past), sent, None, six_hours).is_err());
        assert_eq!(
            token_life(&Expiry::Unstated, sent, None, six_hours),
            Ok((sent + six_hours, six_hours))
        );
    }
}
