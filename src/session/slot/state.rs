//! A slot's mutable state and the only ways to change it.
//!
//! The fields are private to this file (and its `durable` child, which converts them to and
//! from store records). Code elsewhere reads them through accessors on a [`SlotState`] it
//! borrowed from [`super::Slot::view`], and changes them through the methods of a [`Change`]
//! from [`super::Slot::change`] or [`super::Slot::change_on`]. A `Change` writes the slot's
//! record through to the store when it is dropped, if any method marked the state changed
//! and its [`Reach`] lets it: durability follows from the type, not from remembering a call.

mod durable;

use std::ops::Deref;
use std::sync::{Arc, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use secrecy::SecretString;

use super::super::guard::{Admit, Guard, Need};
use super::super::otp::OTP_LIFE;
use super::super::Invalidation;
use super::{Session, State};
use crate::crypto::AesKey;
use crate::problem::GatewayError;
use crate::store::Store;

/// A session whose token the upstream rejected on a data call although a login had just
/// renewed it: its token came back unchanged from the re-login, or the re-login's new token
/// was rejected too.
#[derive(Debug, Clone, Copy)]
struct KnownRejected {
    /// The generation rejected.
    generation: u64,
    /// Until then a rejection of `generation` causes no login.
    until: Instant,
}

/// The taxpayer's portal API session (GSTN): started with an OTP, ends when the API-access
/// period the taxpayer enabled runs out.
#[derive(Debug, Clone, Copy)]
struct Portal {
    /// When a new OTP will be needed, by the credential's `session_lifetime`.
    ends_at: SystemTime,
}

/// A slot's record in the store.
#[derive(Clone)]
struct Durable {
    name: Arc<str>,
    store: Arc<Store>,
}

/// The mutable part of a slot.
pub(in crate::session) struct SlotState {
    /// The session callers use; cleared when the upstream rejects its token.
    session: Option<Arc<Session>>,
    /// The upstream's latest session, kept after a rejection (a GSTN refresh proves
    /// possession of its token and SEK) and after expiry (a NIC login decides by its expiry
    /// whether to force a new token). `None` for an OTP API means an OTP is needed.
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
    /// A generation whose rejections cost no login for a while.
    known_rejected: Option<KnownRejected>,
    /// Last caller use, for idle expiry.
    last_used: Instant,
    /// The generation the next new token gets.
    next_generation: u64,
    /// Logins this replica completed for the slot (wrapping): a request that waited for a
    /// session tells by it whether a login happened meanwhile.
    logins: u32,
    /// Login limits, backoff and lockout.
    guard: Guard,
    /// The API user's password; a configuration reload may change it.
    password: SecretString,
    /// How long the taxpayer enables API access for with an OTP (GSTN); a reload may change it.
    session_lifetime: Duration,
    /// Where changes are written through to; `None` without a store.
    durable: Option<Durable>,
    /// The session was made while the shared store was unreachable: the group has not
    /// seen it yet.
    offline_session: bool,
    /// The revision of the group's record this replica last wrote or took up.
    revision: u64,
    /// A reload changed the password: the group's lockout (from the old one) is cleared on
    /// this replica's next turn, after taking up the record that still holds it.
    clear_group_lockout: bool,
    /// The app key of the OTP requested last and not used yet, and when it was requested.
    /// Boxed: rare (GSTN, between an OTP request and its use), 48 bytes inline otherwise.
    otp_app_key: Option<Box<(AesKey, SystemTime)>>,
    /// An OTP login was made with that key (and refused): the room its request left is
    /// spent. Kept in memory only: after a restart one more OTP login may use the room.
    otp_tried: bool,
}

impl SlotState {
    /// A slot with no session yet, whose logins `guard` admits.
    pub(in crate::session) fn new(
        guard: Guard,
        password: SecretString,
        session_lifetime: Duration,
    ) -> Self {
        Self {
            session: None,
            latest: None,
            portal: None,
            refreshing: false,
            last_error: None,
            last_upstream_code: None,
            last_refresh: None,
            known_rejected: None,
            last_used: crate::clock::now(),
            next_generation: 1,
            logins: 0,
            guard,
            password,
            session_lifetime,
            durable: None,
            offline_session: false,
            revision: 0,
            clear_group_lockout: false,
            otp_app_key: None,
            otp_tried: false,
        }
    }

    /// The current session if it is usable at `now`; marks the slot as used (the hot path:
    /// one lock, no write).
    pub(super) fn touch(&mut self, now: Instant) -> Option<Arc<Session>> {
        self.last_used = now;
        self.session.as_ref().filter(|s| s.usable(now)).cloned()
    }

    /// How many logins this replica has completed for the slot (wrapping).
    pub(super) fn logins(&self) -> u32 {
        self.logins
    }

    /// The session callers use, if any (it may have expired).
    pub(in crate::session) fn session(&self) -> Option<&Arc<Session>> {
        self.session.as_ref()
    }

    /// The latest session the upstream issued, kept after a rejection or expiry.
    pub(in crate::session) fn latest(&self) -> Option<&Arc<Session>> {
        self.latest.as_ref()
    }

    /// When the portal session opened with an OTP ends, if one is open.
    pub(in crate::session) fn portal_ends_at(&self) -> Option<SystemTime> {
        self.portal.map(|p| p.ends_at)
    }

    /// The generation of the newest session this replica knows, 0 for none.
    pub(in crate::session) fn newest_generation(&self) -> u64 {
        [&self.session, &self.latest]
            .into_iter()
            .flatten()
            .map(|s| s.generation)
            .max()
            .unwrap_or(0)
    }

    /// Why the last login failed, and the upstream's code for it.
    pub(in crate::session) fn last_error(&self) -> (Option<&str>, Option<&str>) {
        (
            self.last_error.as_deref(),
            self.last_upstream_code.as_deref(),
        )
    }

    /// When the last successful login was sent.
    pub(in crate::session) fn last_refresh(&self) -> Option<SystemTime> {
        self.last_refresh
    }

    /// The revision of the group's record this replica last wrote or took up.
    pub(in crate::session) fn revision(&self) -> u64 {
        self.revision
    }

    /// The API user's password.
    pub(in crate::session) fn password(&self) -> SecretString {
        self.password.clone()
    }

    /// Whether a reload gave this credential another password or session lifetime.
    pub(in crate::session) fn same_credential(
        &self,
        password: &SecretString,
        session_lifetime: Duration,
    ) -> bool {
        use secrecy::ExposeSecret;
        self.password.expose_secret() == password.expose_secret()
            && self.session_lifetime == session_lifetime
    }

    /// Whether changes are written through to a store already.
    pub(in crate::session) fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    /// Whether this replica holds a session the group has not seen.
    pub(in crate::session) fn has_offline_session(&self) -> bool {
        self.offline_session
    }

    /// How long since a caller last used the slot.
    pub(in crate::session) fn idle_for(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.last_used)
    }

    /// How long until the guard would admit a login again.
    pub(in crate::session) fn retry_delay(&self) -> Duration {
        self.guard.retry_delay()
    }

    /// The app key of an OTP requested less than `max_age` ago and not used yet.
    pub(in crate::session) fn otp_app_key(&self, max_age: Duration) -> Option<AesKey> {
        let (key, at) = self.otp_app_key.as_deref()?;
        let age = crate::clock::wall().duration_since(*at).ok()?;
        (age < max_age).then(|| key.clone())
    }

    /// The slot's state as shown to operators; `otp_sessions` says whether its API starts
    /// sessions with an OTP.
    pub(in crate::session) fn state(&self, now: Instant, otp_sessions: bool) -> State {
        if let Some(s) = self.guard.locked_state() {
            return s;
        }
        if self.refreshing {
            return State::Refreshing;
        }
        match &self.session {
            Some(s) if s.usable(now) => State::Valid,
            _ if otp_sessions && !self.portal_open() => State::NeedsOtp,
            _ if self.last_error.is_some() => State::Failed,
            _ => State::Cold,
        }
    }

    /// Whether a session started with an OTP can still be refreshed without a new one.
    fn portal_open(&self) -> bool {
        self.latest.is_some()
    }
}

/// Who a change is recorded for: decided by how the change was taken, never by a flag
/// looked at later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::session) enum Reach {
    /// This replica's own view (a rejection it saw, an idle session it dropped, a reload):
    /// recorded in a store only this replica uses, never in one the group shares.
    Replica,
    /// A turn with no group: recorded in the store, if there is one.
    Alone,
    /// A turn holding the group's lease for the slot: recorded for the group.
    Leased,
    /// A turn taken while the shared store is unreachable: recorded nowhere yet; the group
    /// hears of it when this replica rejoins.
    Offline,
}

/// What a failed login means for the next ones.
#[derive(Debug, Clone, Copy)]
pub(in crate::session) enum Setback {
    /// Rejected credentials or configuration: no login until an operator or a reload, and
    /// the slot shows this state.
    LockOut(State),
    /// The taxpayer disabled API access: the portal session is over, and only the
    /// operator's OTP calls (which clear the lockout) start another.
    AccessDisabled,
    /// The upstream no longer knows the session a refresh proved (an OTP API): it is gone.
    SessionGone,
    /// The upstream asked to wait at least this long.
    HoldOff(Duration),
    /// The login never reached the upstream: it is given back, and a short backoff paces
    /// the next one.
    Unreachable,
    /// Anything else: back off.
    BackOff,
}

/// A change of a slot's state, holding its lock. Dropping it writes the slot's record
/// through to the store (without waiting for the disk or the network) if the state changed
/// and the change's [`Reach`] records it there.
#[must_use = "a change is written through when it is dropped"]
pub(in crate::session) struct Change<'a> {
    st: MutexGuard<'a, SlotState>,
    reach: Reach,
    /// A durable part of the state changed.
    dirty: bool,
}

impl Deref for Change<'_> {
    type Target = SlotState;

    fn deref(&self) -> &SlotState {
        &self.st
    }
}

impl Drop for Change<'_> {
    fn drop(&mut self) {
        if !self.dirty {
            return;
        }
        let Some(d) = &self.st.durable else {
            return;
        };
        let records = match self.reach {
            Reach::Replica => !d.store.is_shared(),
            Reach::Alone | Reach::Leased => true,
            Reach::Offline => false,
        };
        if records {
            d.store.put(&d.name, self.st.record());
        }
    }
}

impl<'a> Change<'a> {
    /// A change of the state behind `st`, recorded as `reach` says.
    pub(super) fn new(st: MutexGuard<'a, SlotState>, reach: Reach) -> Self {
        Self {
            st,
            reach,
            dirty: false,
        }
    }

    /// From now on, changes are written to `store` as record `name`.
    pub(in crate::session) fn attach(&mut self, store: Arc<Store>, name: Arc<str>) {
        self.st.durable = Some(Durable { name, store });
    }

    /// Stops writing through: the credential is no longer configured, and a login still in
    /// flight on it must not bring its record back.
    pub(in crate::session) fn detach(&mut self) {
        self.st.durable = None;
    }

    /// Admits a login (or OTP request) now, counted by the guard: within `offline_share`
    /// logins of this replica's own when the shared store is unreachable. `refreshing`
    /// shows the slot as refreshing until the login settles.
    pub(in crate::session) fn take_login(
        &mut self,
        now: Instant,
        offline_share: Option<u32>,
        refreshing: bool,
        purpose: Admit,
    ) -> Result<(), GatewayError> {
        // An OTP request leaves room for the OTP login it brings; until that OTP is used or
        // stale, no other login may take that room.
        let owed = !self.st.otp_tried
            && self.st.otp_app_key.as_deref().is_some_and(|(_, at)| {
                crate::clock::wall()
                    .duration_since(*at)
                    .is_ok_and(|age| age < OTP_LIFE)
            });
        let need = match purpose {
            Admit::Login => Need::Room(1 + usize::from(owed)),
            Admit::OtpRequest => Need::Room(2),
            Admit::OtpLogin if owed => Need::Reserved,
            Admit::OtpLogin => Need::Room(1),
        };
        match offline_share {
            Some(share) => self.st.guard.take_login_offline(now, share, need)?,
            None => self.st.guard.admit(now, need)?,
        }
        if purpose == Admit::OtpLogin {
            self.st.otp_tried = true;
        }
        self.st.refreshing |= refreshing;
        self.dirty = true;
        Ok(())
    }

    /// A login is about to be asked again: the slot is not shown refreshing meanwhile.
    pub(in crate::session) fn pause_refreshing(&mut self) {
        self.st.refreshing = false;
    }

    /// Clears a lockout and the backoff (an operator's action, or a changed password).
    pub(in crate::session) fn reset_guard(&mut self) {
        self.st.guard.reset();
        self.dirty = true;
    }

    /// On a turn holding the group's lease: clears the lockout the group's record still
    /// holds from a password a reload replaced.
    pub(in crate::session) fn clear_replaced_password_lockout(&mut self) {
        if std::mem::take(&mut self.st.clear_group_lockout) {
            self.reset_guard();
        }
    }

    /// A login succeeded (sent at `sent_at`): past failures are forgotten.
    pub(in crate::session) fn login_succeeded(&mut self, sent_at: SystemTime) {
        let st = &mut *self.st;
        st.logins = st.logins.wrapping_add(1);
        st.refreshing = false;
        st.guard.succeeded();
        st.last_error = None;
        st.last_upstream_code = None;
        st.last_refresh = Some(sent_at);
        self.dirty = true;
    }

    /// A login failed with `err` (admitted at `admitted`); `setback` is what that means for
    /// the next ones.
    pub(in crate::session) fn login_failed(
        &mut self,
        err: &GatewayError,
        setback: Setback,
        admitted: Instant,
    ) {
        let now = crate::clock::now();
        {
            let st = &mut *self.st;
            st.refreshing = false;
            st.last_error = Some(err.to_string());
            st.last_upstream_code = err.upstream_code().map(str::to_owned);
        }
        match setback {
            Setback::LockOut(state) => self.st.guard.lock_out(state, err.clone()),
            Setback::AccessDisabled => {
                self.end_portal();
                self.st.guard.lock_out(State::NeedsOtp, err.clone());
            }
            Setback::SessionGone => self.forget(),
            // Backoffs run from the failure, not the admission: a login that took its whole
            // timeout to fail must not find its backoff already over.
            Setback::HoldOff(wait) => self.st.guard.hold_off(now, wait),
            Setback::Unreachable => self.st.guard.unreachable(admitted, now, err.to_string()),
            Setback::BackOff => self.st.guard.failed(now, err.to_string()),
        }
        self.dirty = true;
    }

    /// Installs a newly issued token as the next generation: callers use it, a refresh
    /// proves it.
    pub(in crate::session) fn install(&mut self, issued: Issued) -> Arc<Session> {
        let st = &mut *self.st;
        let session = Arc::new(Session {
            token: issued.token,
            sek: issued.sek,
            expires_at: issued.expires_at,
            deadline: issued.deadline,
            issued_at: issued.issued_at,
            generation: st.next_generation,
            accepted: Default::default(),
        });
        st.next_generation += 1;
        st.session = Some(session.clone());
        st.latest = Some(session.clone());
        st.known_rejected = None;
        self.dirty = true;
        session
    }

    /// Puts back a session whose token a login handed back unchanged.
    pub(in crate::session) fn restore(&mut self, session: Arc<Session>) {
        self.st.session = Some(session);
        self.dirty = true;
    }

    /// Rejections of `generation` cost no login until `until`: a login has just shown it
    /// cannot help (see [`Invalidation::KnownRejected`]).
    pub(in crate::session) fn mark_rejected(&mut self, generation: u64, until: Instant) {
        self.st.known_rejected = Some(KnownRejected { generation, until });
    }

    /// Compare-and-invalidate after the upstream rejected `rejected`'s token at `now`: the
    /// session is forgotten only if it is still that one (generation and token: replicas
    /// that logged in while their shared store was unreachable may share a generation), and
    /// not while its generation is marked as known rejected.
    pub(in crate::session) fn invalidate(
        &mut self,
        rejected: &Session,
        now: Instant,
    ) -> Invalidation {
        let st = &mut *self.st;
        let current = st
            .session
            .as_ref()
            .is_some_and(|s| s.generation == rejected.generation && s.token == rejected.token);
        if !current {
            return Invalidation::Superseded;
        }
        if st
            .known_rejected
            .is_some_and(|k| k.generation == rejected.generation && k.until > now)
        {
            return Invalidation::KnownRejected;
        }
        st.session = None;
        self.dirty = true;
        Invalidation::Invalidated
    }

    /// Records that the portal session is over (its API-access period ended, or the taxpayer
    /// disabled API access): nothing can be refreshed any more and the next session needs an
    /// OTP. A session callers still hold stays usable until its token expires.
    pub(in crate::session) fn end_portal(&mut self) {
        self.st.latest = None;
        self.st.portal = None;
        self.announce_loss();
        self.dirty = true;
    }

    /// Forgets the session, the latest one and the portal session: the next session starts
    /// from scratch.
    pub(in crate::session) fn forget(&mut self) {
        self.st.session = None;
        self.st.latest = None;
        self.st.portal = None;
        self.announce_loss();
        self.dirty = true;
    }

    /// Under the group's lease, a session lost counts as news like a new one: the counter
    /// moves on so that the other replicas see the record is newer than what they hold. A
    /// replica's own loss (an idle session dropped) is not the group's and moves nothing.
    fn announce_loss(&mut self) {
        if self.reach == Reach::Leased {
            self.st.next_generation += 1;
        }
    }

    /// Records a portal session opened with an OTP sent at `sent_at`, lasting the
    /// credential's `session_lifetime`.
    pub(in crate::session) fn open_portal(&mut self, sent_at: SystemTime) {
        let ends_at = sent_at + self.st.session_lifetime;
        self.st.portal = Some(Portal { ends_at });
        self.dirty = true;
    }

    /// Keeps the app key an OTP was requested with, requested at `at`: the OTP must be
    /// exchanged under it, maybe through another replica.
    pub(in crate::session) fn keep_otp_app_key(&mut self, key: AesKey, at: SystemTime) {
        self.st.otp_app_key = Some(Box::new((key, at)));
        self.st.otp_tried = false;
        self.dirty = true;
    }

    /// The OTP was exchanged: its app key is spent.
    pub(in crate::session) fn otp_used(&mut self) {
        self.st.otp_app_key = None;
        self.dirty = true;
    }

    /// Takes a reloaded credential's new password and session lifetime. The session stays
    /// (the new password says nothing against it); the guard is `guard`, so a lockout the old
    /// password caused is over; a portal session in progress ends as the new lifetime says.
    pub(in crate::session) fn change_credential(
        &mut self,
        password: SecretString,
        session_lifetime: Duration,
        guard: Guard,
    ) {
        let st = &mut *self.st;
        if let Some(p) = &mut st.portal {
            if let Some(started) = p.ends_at.checked_sub(st.session_lifetime) {
                p.ends_at = started + session_lifetime;
            }
        }
        st.password = password;
        st.session_lifetime = session_lifetime;
        st.guard = guard;
        st.clear_group_lockout = true;
        self.dirty = true;
    }

    /// An offline turn made a session: the group has not seen it yet.
    pub(in crate::session) fn made_offline_session(&mut self) {
        self.st.offline_session = true;
    }

    /// Whether this replica held a session the group had not seen; it is now offered (the
    /// turn that ends writes it for the group).
    pub(in crate::session) fn offer_offline_session(&mut self) -> bool {
        std::mem::take(&mut self.st.offline_session)
    }

    /// Ends a turn holding the group's lease: the record is written as the next revision,
    /// which is returned for the announcement.
    pub(in crate::session) fn next_revision(&mut self) -> u64 {
        self.st.revision += 1;
        self.dirty = true;
        self.st.revision
    }
}

/// A newly issued token, as [`Change::install`] takes it.
pub(in crate::session) struct Issued {
    /// The token as a header value (marked sensitive).
    pub(in crate::session) token: http::HeaderValue,
    /// The session key.
    pub(in crate::session) sek: AesKey,
    /// When it expires, wall clock.
    pub(in crate::session) expires_at: SystemTime,
    /// When it expires, monotonic.
    pub(in crate::session) deadline: Instant,
    /// When the login was sent.
    pub(in crate::session) issued_at: SystemTime,
}
