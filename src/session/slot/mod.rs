//! A slot: one (upstream, GSTIN, user), its credential, its session and what the session
//! manager knows about it.
//!
//! The slot owns its state: the fields live in `state`, private to it, and change only
//! through a [`Change`] taken here, which writes the slot's record through to the store when
//! it is dropped. How far a change is recorded is fixed when it is taken: a change on a
//! login's turn ([`Slot::change_on`]) is recorded for the group when the turn holds the
//! group's lease; a change this replica makes on its own ([`Slot::change`]: a rejection it
//! saw, an idle session it dropped) is recorded only in a store nobody else shares.

mod state;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use http::HeaderValue;
use serde::Serialize;

use super::EXPIRY_MARGIN;
use crate::classify::Whose;
use crate::crypto::AesKey;
use crate::gstin::Gstin;
use crate::store::record_name;
use crate::upstream::renewal::{Held, Renewal};
use crate::upstream::{HeaderContext, Upstream};

pub(super) use state::{Change, Issued, Reach, Setback, SlotState};

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
    /// Whether the upstream has accepted its token: a rejection after that is news (the
    /// token was revoked since), not a renewal that failed.
    pub(super) accepted: AtomicBool,
}

impl Session {
    /// Whether a request sent with it now would arrive before it expires.
    pub(super) fn usable(&self, now: Instant) -> bool {
        self.deadline > now + EXPIRY_MARGIN
    }

    /// Records that the upstream accepted the token.
    pub fn mark_accepted(&self) {
        // A load first: the flag is set once, and a store on every request would bounce
        // the cache line between cores.
        if !self.accepted.load(Ordering::Relaxed) {
            self.accepted.store(true, Ordering::Relaxed);
        }
    }

    /// Whether the upstream has accepted the token at least once.
    pub fn was_accepted(&self) -> bool {
        self.accepted.load(Ordering::Relaxed)
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
    /// The upstream it logs in to.
    upstream: Arc<str>,
    /// The taxpayer.
    pub gstin: Gstin,
    /// API user name.
    pub username: Arc<str>,
    gstin_header: HeaderValue,
    user_header: HeaderValue,
    state_header: HeaderValue,
}

impl Credential {
    /// The credential of `username` for `gstin`, with the header values its calls carry;
    /// `None` if the user name cannot be a header value.
    pub(super) fn new(upstream: Arc<str>, gstin: Gstin, username: &str) -> Option<Self> {
        Some(Self {
            upstream,
            gstin_header: HeaderValue::from_str(gstin.as_str()).ok()?,
            user_header: HeaderValue::from_str(username).ok()?,
            state_header: HeaderValue::from_str(gstin.state_code()).ok()?,
            gstin,
            username: username.into(),
        })
    }

    /// Whose credential this is, for the errors that name it.
    pub fn whose(&self) -> Whose<'_> {
        Whose {
            upstream: &self.upstream,
            gstin: &self.gstin,
            username: &self.username,
        }
    }
}

/// A login's turn, as far as the slot's changes on it go: how far they are recorded. The
/// session manager's turns (`super::group`) are the one kind.
pub(in crate::session) trait TurnReach {
    /// How far a change on this turn is recorded.
    fn reach(&self) -> Reach;
}

/// A slot's state borrowed to read: it derefs to the state, never mutably.
pub(super) struct View<'a>(MutexGuard<'a, SlotState>);

impl std::ops::Deref for View<'_> {
    type Target = SlotState;

    fn deref(&self) -> &SlotState {
        &self.0
    }
}

/// One (upstream, GSTIN, user): its credential, session and guard.
pub struct Slot {
    /// Identifies the slot for as long as it is configured; the scheduler refers to it.
    pub id: usize,
    /// The upstream.
    pub upstream: Arc<Upstream>,
    /// The credential.
    pub credential: Credential,
    /// The slot's state: a `std::sync::Mutex` held for a few field reads or writes and never
    /// across an `.await`, which is cheaper than an async mutex and cannot deadlock a task.
    state: Mutex<SlotState>,
    /// Held for the whole of a login: the single-flight (see `super::single_flight`).
    flight: Arc<tokio::sync::Mutex<()>>,
    /// Woken when another replica announces a new revision of this slot's record.
    announced: tokio::sync::Notify,
}

impl Slot {
    /// A slot for `credential` on `upstream` in state `state`.
    pub(super) fn new(
        id: usize,
        upstream: Arc<Upstream>,
        credential: Credential,
        state: SlotState,
    ) -> Self {
        Self {
            id,
            upstream,
            credential,
            state: Mutex::new(state),
            flight: Arc::new(tokio::sync::Mutex::new(())),
            announced: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // A panic while holding this lock cannot leave the state half-written in a way that
        // matters more than stopping service would: recover the guard.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The slot's state, to read (never held across an `.await`).
    pub(super) fn view(&self) -> View<'_> {
        View(self.lock())
    }

    /// A change this replica makes on its own, outside a login's turn: recorded only in a
    /// store no other replica shares.
    pub(super) fn change(&self) -> Change<'_> {
        Change::new(self.lock(), Reach::Replica)
    }

    /// A change made on a login's `turn`: recorded for the group when the turn holds the
    /// group's lease, in the local store when there is no group, and nowhere while the
    /// shared store is unreachable.
    pub(super) fn change_on(&self, turn: &impl TurnReach) -> Change<'_> {
        Change::new(self.lock(), turn.reach())
    }

    /// Waits for the slot's single-flight lock, held until the guard is dropped (only
    /// `super::single_flight` makes one, into a `Flight`).
    pub(super) async fn single_flight(&self) -> tokio::sync::OwnedMutexGuard<()> {
        self.flight.clone().lock_owned().await
    }

    /// Woken when another replica announces a new revision of this slot's record.
    pub(super) fn announcements(&self) -> &tokio::sync::Notify {
        &self.announced
    }

    /// The current session if it is usable now; marks the slot as used.
    pub fn current(&self) -> Option<Arc<Session>> {
        self.lock().touch(crate::clock::now())
    }

    /// How many logins this replica has completed for the slot (wrapping): compared before
    /// and after a wait for a session, it says whether a login happened meanwhile.
    pub fn logins(&self) -> u32 {
        self.lock().logins()
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

    /// Whether the upstream's sessions start with an OTP the taxpayer receives.
    pub(crate) fn otp_sessions(&self) -> bool {
        self.renewal().otp_sessions()
    }
}
