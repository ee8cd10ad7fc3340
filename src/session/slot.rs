//! A slot: one (upstream, GSTIN, user), its credential, its session and what the session
//! manager knows about it. Every change of a slot's session goes through the seam —
//! [`SlotState::install`], `restore`, `invalidate`, `end_portal`, `forget` and `open_portal` —
//! which writes the slot's new durable state through to the store, if there is one, without
//! waiting for the disk. A store shared by replicas is written only by the replica holding
//! the slot's login lease: the record is the group's, and this replica's view (a session it
//! saw rejected, say) is not.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use secrecy::SecretString;
use serde::Serialize;

use super::guard::Guard;
use super::EXPIRY_MARGIN;
use crate::classify::Whose;
use crate::crypto::AesKey;
use crate::gstin::Gstin;
use crate::store::{record_name, Record, Store, StoredSession};
use crate::upstream::renewal::{Held, Renewal};
use crate::upstream::{HeaderContext, Upstream};

/// A session whose token the upstream rejected on a data call, yet handed back unchanged to
/// the re-login that followed.
#[derive(Debug, Clone, Copy)]
pub(super) struct KnownRejected {
    /// The generation whose token came back.
    pub(super) generation: u64,
    /// Until then a rejection of `generation` causes no login.
    pub(super) until: Instant,
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
    /// Whether a request sent with it now would arrive before it expires.
    pub(super) fn usable(&self, now: Instant) -> bool {
        self.deadline > now + EXPIRY_MARGIN
    }

    /// What the renewal strategy looks at.
    pub(super) fn held(&self) -> Held<'_> {
        Held {
            token: &self.token,
            sek: &self.sek,
            deadline: self.deadline,
        }
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
    pub(super) gstin_header: HeaderValue,
    pub(super) user_header: HeaderValue,
    pub(super) state_header: HeaderValue,
}

impl Credential {
    /// Whose credential this is, for the errors that name it.
    pub fn whose(&self) -> Whose<'_> {
        Whose {
            gstin: &self.gstin,
            username: &self.username,
        }
    }
}

/// The taxpayer's portal API session (GSTN): started with an OTP, ends when the API-access
/// period the taxpayer enabled runs out.
#[derive(Debug, Clone, Copy)]
struct Portal {
    /// When a new OTP will be needed, by the credential's `session_lifetime`.
    ends_at: SystemTime,
}

/// The mutable part of a slot.
pub(super) struct SlotState {
    /// The session callers use; cleared when the upstream rejects its token.
    session: Option<Arc<Session>>,
    /// The upstream's latest session, kept after a rejection: a GSTN refresh proves
    /// possession of its token and SEK. `None` for an OTP API means an OTP is needed.
    latest: Option<Arc<Session>>,
    /// The portal session (GSTN).
    portal: Option<Portal>,
    /// Set while a login runs.
    pub(super) refreshing: bool,
    /// Why the last login failed, without secrets.
    pub(super) last_error: Option<String>,
    /// The upstream's error code of the last failed login.
    pub(super) last_upstream_code: Option<String>,
    /// When the last successful login was sent.
    pub(super) last_refresh: Option<SystemTime>,
    /// The current session's token was rejected and a re-login returned it all the same.
    pub(super) known_rejected: Option<KnownRejected>,
    /// Last caller use, for idle expiry.
    pub(super) last_used: Instant,
    /// The generation the next new token gets.
    pub(super) next_generation: u64,
    /// Login limits, backoff and lockout.
    pub(super) guard: Guard,
    /// The API user's password; a configuration reload may change it.
    pub(super) password: SecretString,
    /// How long the taxpayer enables API access for with an OTP (GSTN); a reload may change it.
    pub(super) session_lifetime: Duration,
    /// Where changes are written through to; `None` with the memory backend.
    durable: Option<Durable>,
    /// This replica holds the group's login lease for the slot (shared store only).
    pub(super) leased: bool,
    /// The session was made while the shared store was unreachable: the group has not
    /// seen it yet.
    pub(super) unshared: bool,
    /// The revision of the group's record this replica last wrote or took up.
    pub(super) revision: u64,
    /// A reload changed the password: the group's lockout (from the old one) is cleared on
    /// this replica's next turn, after taking up the record that still holds it.
    pub(super) clear_group_lockout: bool,
    /// The app key of the OTP requested last and not used yet, and when it was requested.
    pub(super) otp_app_key: Option<(AesKey, SystemTime)>,
}

/// A slot's record in the store.
#[derive(Clone)]
struct Durable {
    name: Arc<str>,
    store: Arc<Store>,
}

/// What taking up the group's record did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TakenUp {
    /// The record was no newer than what this replica holds: nothing changed but the guard.
    Nothing,
    /// The record's sessions replaced this replica's.
    Sessions,
}

impl SlotState {
    /// A slot with no session yet, whose logins `guard` admits.
    pub(super) fn new(guard: Guard, password: SecretString, session_lifetime: Duration) -> Self {
        Self {
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
            guard,
            password,
            session_lifetime,
            durable: None,
            leased: false,
            unshared: false,
            revision: 0,
            clear_group_lockout: false,
            otp_app_key: None,
        }
    }

    /// From now on, every change through the seam is written to `store` as record `name`.
    pub(super) fn write_through(&mut self, store: Arc<Store>, name: Arc<str>) {
        self.durable = Some(Durable { name, store });
    }

    /// Takes a reloaded credential's new password and session lifetime. The session stays
    /// (the new password says nothing against it); the guard is `guard`, so a lockout the old
    /// password caused is over; a portal session in progress ends as the new lifetime says.
    pub(super) fn change_credential(
        &mut self,
        password: SecretString,
        session_lifetime: Duration,
        guard: Guard,
    ) {
        if let Some(p) = &mut self.portal {
            let started = p.ends_at.checked_sub(self.session_lifetime);
            if let Some(started) = started {
                p.ends_at = started + session_lifetime;
            }
        }
        self.password = password;
        self.session_lifetime = session_lifetime;
        self.guard = guard;
        self.clear_group_lockout = true;
        self.persist();
    }

    /// Stops writing through: the credential is no longer configured, and a login still in
    /// flight on it must not bring its record back.
    pub(super) fn detach(&mut self) {
        self.durable = None;
    }

    /// Whether changes are written through to a store already.
    pub(super) fn is_durable(&self) -> bool {
        self.durable.is_some()
    }

    /// Queues the slot's durable state for the store (a shared one only under the lease).
    pub(super) fn persist(&self) {
        if let Some(d) = &self.durable {
            if d.store.is_shared() && !self.leased {
                return;
            }
            d.store.put(&d.name, self.record());
        }
    }

    /// The slot's durable state.
    fn record(&self) -> Record {
        let (now, wall) = (Instant::now(), SystemTime::now());
        Record {
            session: self.session.as_deref().map(stored),
            latest: self.latest.as_deref().map(stored),
            portal_ends_at: self.portal_ends_at(),
            next_generation: self.next_generation,
            guard: self.guard.stored(now, wall),
            revision: self.revision,
            last_error: self.last_error.clone(),
            last_upstream_code: self.last_upstream_code.clone(),
            otp_app_key: self.otp_app_key.clone(),
        }
    }

    /// The generation of the newest session this replica knows, 0 for none.
    pub(super) fn newest_generation(&self) -> u64 {
        [&self.session, &self.latest]
            .into_iter()
            .flatten()
            .map(|s| s.generation)
            .max()
            .unwrap_or(0)
    }

    /// Takes up the group's record: its guard always (every login of the group is counted
    /// there); its sessions and portal when they are news to this replica. They are when the
    /// record's counter is ahead of this replica's; when this replica has no usable session
    /// and the record has a newer one (an idle session this replica dropped, say); and when
    /// this replica's session was made while the store was unreachable and the group got as
    /// far without it (the first session written wins, so the group converges on one).
    pub(super) fn take_up(&mut self, record: Record, whose: Whose<'_>) -> TakenUp {
        let (now, wall) = (Instant::now(), SystemTime::now());
        self.guard.take_up(&record.guard, now, wall, whose);
        if record.revision > self.revision {
            self.revision = record.revision;
            self.last_error.clone_from(&record.last_error);
            self.last_upstream_code
                .clone_from(&record.last_upstream_code);
            self.otp_app_key.clone_from(&record.otp_app_key);
        }
        let record_newest = [&record.session, &record.latest]
            .into_iter()
            .flatten()
            .map(|s| s.generation)
            .max()
            .unwrap_or(0);
        let unusable = !self.session.as_ref().is_some_and(|s| s.usable(now));
        let news = record.next_generation > self.next_generation
            || (self.unshared && record.next_generation >= self.next_generation)
            || (unusable && record_newest > self.newest_generation());
        if !news {
            return TakenUp::Nothing;
        }
        let next = self.next_generation.max(record.next_generation);
        self.known_rejected = None;
        self.unshared = false;
        self.resume(record, whose);
        self.next_generation = self.next_generation.max(next);
        TakenUp::Sessions
    }

    /// Takes up a stored record at start-up: the session if its token has life left, the
    /// latest session and the portal session while the portal session lasts (so the next
    /// refresh needs no OTP), the login guard, and the generation counter. Returns the
    /// usable session.
    pub(super) fn resume(&mut self, record: Record, whose: Whose<'_>) -> Option<Arc<Session>> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        self.guard.take_up(&record.guard, now, wall, whose);
        self.revision = self.revision.max(record.revision);
        self.otp_app_key.clone_from(&record.otp_app_key);
        let portal = record.portal_ends_at.filter(|&end| end > wall);
        // A portal session that ended while gstgate was down is over as if it had ended
        // while running: nothing may be refreshed any more (see `end_portal`).
        let ended = record.portal_ends_at.is_some() && portal.is_none();
        let session = record
            .session
            .map(|s| revive(s, now, wall))
            .filter(|s| s.usable(now));
        let latest = match (record.latest, &session) {
            (Some(l), Some(s)) if l.generation == s.generation => Some(s.clone()),
            (Some(l), _) => Some(revive(l, now, wall)),
            (None, _) => None,
        }
        .filter(|l| !ended && (portal.is_some() || l.usable(now)));
        let newest = [&session, &latest]
            .into_iter()
            .flatten()
            .map(|s| s.generation)
            .max()
            .unwrap_or(0);
        self.next_generation = record.next_generation.max(newest + 1);
        self.last_refresh = latest.as_ref().map(|l| l.issued_at);
        self.portal = portal.map(|ends_at| Portal { ends_at });
        self.latest = latest;
        self.session = session.clone();
        session
    }

    /// The session callers use, if any (it may have expired).
    pub(super) fn session(&self) -> Option<&Arc<Session>> {
        self.session.as_ref()
    }

    /// The latest session the upstream issued, kept after a rejection.
    pub(super) fn latest(&self) -> Option<&Arc<Session>> {
        self.latest.as_ref()
    }

    /// When the portal session opened with an OTP ends, if one is open.
    pub(super) fn portal_ends_at(&self) -> Option<SystemTime> {
        self.portal.map(|p| p.ends_at)
    }

    /// Puts a newly issued session in place: callers use it, a refresh proves it.
    pub(super) fn install(&mut self, session: Arc<Session>) {
        self.session = Some(session.clone());
        self.latest = Some(session);
        self.known_rejected = None;
        self.persist();
    }

    /// Puts back a session whose token a login handed back unchanged.
    pub(super) fn restore(&mut self, session: Arc<Session>) {
        self.session = Some(session);
        self.persist();
    }

    /// Stops callers using the session after the upstream rejected its token; the latest
    /// stays, for a refresh to prove possession of.
    pub(super) fn invalidate(&mut self) {
        self.session = None;
        self.persist();
    }

    /// Records that the portal session is over (its API-access period ended, or the taxpayer
    /// disabled API access): nothing can be refreshed any more and the next session needs an
    /// OTP. A session callers still hold stays usable until its token expires.
    pub(super) fn end_portal(&mut self) {
        self.latest = None;
        self.portal = None;
        self.announce_loss();
        self.persist();
    }

    /// Forgets the session, the latest one and the portal session: the next session starts
    /// from scratch.
    pub(super) fn forget(&mut self) {
        self.session = None;
        self.latest = None;
        self.portal = None;
        self.announce_loss();
        self.persist();
    }

    /// Under the group's lease, a session lost counts as news like a new one: the counter
    /// moves on so that the other replicas see the record is newer than what they hold. A
    /// replica's own loss (an idle session dropped) is not the group's and moves nothing.
    fn announce_loss(&mut self) {
        if self.leased {
            self.next_generation += 1;
        }
    }

    /// Records a portal session opened with an OTP, lasting until `ends_at`.
    pub(super) fn open_portal(&mut self, ends_at: SystemTime) {
        self.portal = Some(Portal { ends_at });
        self.persist();
    }
}

/// What the store keeps of a session.
fn stored(s: &Session) -> StoredSession {
    StoredSession {
        token: s.token.clone(),
        sek: s.sek.clone(),
        expires_at: s.expires_at,
        issued_at: s.issued_at,
        generation: s.generation,
    }
}

/// A stored session back in memory: its monotonic deadline is now plus the wall-clock life
/// it has left (none if it has expired).
fn revive(s: StoredSession, now: Instant, wall: SystemTime) -> Arc<Session> {
    let left = s.expires_at.duration_since(wall).unwrap_or_default();
    Arc::new(Session {
        token: s.token,
        sek: s.sek,
        expires_at: s.expires_at,
        deadline: now + left,
        issued_at: s.issued_at,
        generation: s.generation,
    })
}

/// One (upstream, GSTIN, user): its credential, session and guard.
pub struct Slot {
    /// Position in the manager's table; the scheduler refers to slots by it.
    pub id: usize,
    /// The upstream.
    pub upstream: Arc<Upstream>,
    /// The credential.
    pub credential: Credential,
    pub(super) state: Mutex<SlotState>,
    /// Held for the whole of a login: this is the single-flight. Shared so that the task a
    /// login runs in can own its guard.
    pub(super) login: Arc<tokio::sync::Mutex<()>>,
    /// Woken when another replica announces news of this slot (shared store only).
    pub(super) news: tokio::sync::Notify,
}

impl Slot {
    /// The slot's state, for a few field reads or writes (never held across an `.await`).
    pub(super) fn lock(&self) -> MutexGuard<'_, SlotState> {
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

    /// The slot's record name in the store.
    pub(super) fn record_name(&self) -> String {
        record_name(
            &self.upstream.name,
            self.credential.gstin.as_str(),
            &self.credential.username,
        )
    }

    /// How the upstream's API renews sessions.
    pub(super) fn renewal(&self) -> &'static dyn Renewal {
        self.upstream.profile.renewal()
    }

    /// The slot's state as shown to operators.
    pub(super) fn state_now(&self, st: &SlotState, now: Instant) -> State {
        if let Some(s) = st.guard.locked_state() {
            return s;
        }
        if st.refreshing {
            return State::Refreshing;
        }
        match &st.session {
            Some(s) if s.usable(now) => State::Valid,
            _ if self.renewal().otp_sessions() && st.latest.is_none() => State::NeedsOtp,
            _ if st.last_error.is_some() => State::Failed,
            _ => State::Cold,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(generation: u64, life: Duration, expired: bool) -> StoredSession {
        let wall = SystemTime::now();
        StoredSession {
            token: HeaderValue::from_static("t"),
            sek: AesKey::random(),
            expires_at: if expired { wall - life } else { wall + life },
            issued_at: wall - Duration::from_secs(60),
            generation,
        }
    }

    fn whose() -> Whose<'static> {
        static GSTIN: std::sync::OnceLock<Gstin> = std::sync::OnceLock::new();
        Whose {
            gstin: GSTIN.get_or_init(|| Gstin::parse("27AAPFU0939F1ZV").unwrap()),
            username: "u",
        }
    }

    fn slot_state() -> SlotState {
        SlotState::new(
            Guard::new(4, Duration::from_secs(900)),
            SecretString::from("p"),
            Duration::from_secs(6 * 3600),
        )
    }

    /// A resumed session gets a monotonic deadline from its remaining wall-clock life; what has
    /// run out is not taken up, except the latest session while the portal session lasts.
    #[test]
    fn resume_takes_up_only_what_is_still_valid() {
        let hour = Duration::from_secs(3600);
        let live = stored(3, hour, false);
        let mut st = slot_state();
        let session = st
            .resume(
                Record {
                    session: Some(live.clone()),
                    latest: Some(live),
                    portal_ends_at: Some(SystemTime::now() + hour),
                    next_generation: 4,
                    guard: Default::default(),
                    ..Record::default()
                },
                whose(),
            )
            .expect("a live session is resumed");
        let left = session.deadline.saturating_duration_since(Instant::now());
        assert!(
            left > hour - Duration::from_secs(5) && left <= hour,
            "{left:?}"
        );
        assert!(Arc::ptr_eq(st.latest().unwrap(), &session));
        assert!(st.portal_ends_at().is_some());
        assert_eq!(st.next_generation, 4);

        // The token expired while the gateway was down, the portal session has not: the
        // latest session stays for a refresh, and generations keep going up.
        let expired = stored(7, hour, true);
        let mut st = slot_state();
        let resumed = st.resume(
            Record {
                session: Some(expired.clone()),
                latest: Some(expired.clone()),
                portal_ends_at: Some(SystemTime::now() + hour),
                next_generation: 2,
                guard: Default::default(),
                ..Record::default()
            },
            whose(),
        );
        assert!(resumed.is_none() && st.session().is_none());
        assert_eq!(st.latest().map(|l| l.generation), Some(7));
        assert_eq!(st.next_generation, 8);

        // The portal session ended too: nothing is left but the counter.
        let mut st = slot_state();
        st.resume(
            Record {
                session: Some(expired.clone()),
                latest: Some(expired),
                portal_ends_at: Some(SystemTime::now() - hour),
                next_generation: 8,
                guard: Default::default(),
                ..Record::default()
            },
            whose(),
        );
        assert!(st.session().is_none() && st.latest().is_none());
        assert!(st.portal_ends_at().is_none());
    }

    /// The portal session ended while gstgate was down but the token still has life: the
    /// session serves until it expires, yet nothing is refreshed (no `latest`), exactly as
    /// when the period ends while running.
    #[test]
    fn a_portal_session_that_ended_while_down_is_not_refreshed() {
        let hour = Duration::from_secs(3600);
        let live = stored(5, hour, false);
        let mut st = slot_state();
        let session = st.resume(
            Record {
                session: Some(live.clone()),
                latest: Some(live),
                portal_ends_at: Some(SystemTime::now() - Duration::from_secs(1)),
                next_generation: 6,
                guard: Default::default(),
                ..Record::default()
            },
            whose(),
        );
        assert!(session.is_some(), "the live token still serves");
        assert!(st.latest().is_none(), "but nothing is left to refresh");
        assert!(st.portal_ends_at().is_none());
    }

    /// A reloaded lifetime moves the end of the portal session in progress; a new password
    /// leaves the session and clears the guard's lockout.
    #[test]
    fn a_changed_credential_keeps_the_session_and_moves_the_portal_end() {
        let mut st = slot_state();
        let opened = SystemTime::now();
        st.open_portal(opened + Duration::from_secs(6 * 3600));
        st.install(Arc::new(Session {
            token: HeaderValue::from_static("t"),
            sek: AesKey::random(),
            expires_at: opened + Duration::from_secs(3600),
            deadline: Instant::now() + Duration::from_secs(3600),
            issued_at: opened,
            generation: 1,
        }));
        st.change_credential(
            SecretString::from("new"),
            Duration::from_secs(24 * 3600),
            Guard::new(4, Duration::from_secs(900)),
        );
        assert_eq!(
            st.portal_ends_at(),
            Some(opened + Duration::from_secs(24 * 3600))
        );
        assert!(st.session().is_some());
        assert_eq!(secrecy::ExposeSecret::expose_secret(&st.password), "new");
    }
}
