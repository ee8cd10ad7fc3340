//! What the store keeps of a slot's state, and taking it up again: at start-up, and when the
//! replicas sharing a store announce that the group's record moved on.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use super::{Change, Portal, SlotState};
use crate::classify::Whose;
use crate::session::Session;
use crate::store::{Record, StoredSession};

impl SlotState {
    /// The slot's durable state.
    pub(super) fn record(&self) -> Record {
        let (now, wall) = (crate::clock::now(), crate::clock::wall());
        Record {
            session: self.session.as_deref().map(stored),
            latest: self.latest.as_deref().map(stored),
            portal_ends_at: self.portal_ends_at(),
            next_generation: self.next_generation,
            guard: self.guard.stored(now, wall),
            revision: self.revision,
            last_error: self.last_error.clone(),
            last_upstream_code: self.last_upstream_code.clone(),
            otp_app_key: self.otp_app_key.as_deref().cloned(),
        }
    }
}

impl Change<'_> {
    /// Takes up the group's record: its guard always (every login of the group is counted
    /// there); its sessions and portal when they are news to this replica. They are when the
    /// record's counter is ahead of this replica's; when this replica has no usable session
    /// and the record has a newer one (an idle session this replica dropped, say); and when
    /// this replica's session was made while the store was unreachable and the group got as
    /// far without it (the first session written wins, so the group converges on one).
    /// Nothing is written: the record is the group's already. Returns whether the record's
    /// sessions replaced this replica's (when they are not news, only the guard changed).
    pub(in crate::session) fn take_up(
        &mut self,
        record: Record,
        whose: Whose<'_>,
        otp_sessions: bool,
    ) -> bool {
        let (now, wall) = (crate::clock::now(), crate::clock::wall());
        let st = &mut *self.st;
        st.guard.take_up(&record.guard, now, wall, whose);
        if record.revision > st.revision {
            st.revision = record.revision;
            st.last_error.clone_from(&record.last_error);
            st.last_upstream_code.clone_from(&record.last_upstream_code);
            st.otp_app_key = record.otp_app_key.clone().map(Box::new);
        }
        let record_newest = [&record.session, &record.latest]
            .into_iter()
            .flatten()
            .map(|s| s.generation)
            .max()
            .unwrap_or(0);
        let unusable = !st.session.as_ref().is_some_and(|s| s.usable(now));
        let news = record.next_generation > st.next_generation
            || (st.offline_session && record.next_generation >= st.next_generation)
            || (unusable && record_newest > st.newest_generation());
        if !news {
            return false;
        }
        let next = st.next_generation.max(record.next_generation);
        st.known_rejected = None;
        st.offline_session = false;
        st.take_up_sessions(record, whose, otp_sessions);
        st.next_generation = st.next_generation.max(next);
        true
    }

    /// Takes up a stored record at start-up: the session if its token has life left, the
    /// latest session (see [`SlotState::take_up_sessions`]), the login guard and the
    /// generation counter. Returns the usable session. A record opened under the previous
    /// key is written again under the current one when `rewrite`.
    pub(in crate::session) fn resume(
        &mut self,
        record: Record,
        whose: Whose<'_>,
        otp_sessions: bool,
        rewrite: bool,
    ) -> Option<Arc<Session>> {
        self.dirty |= rewrite;
        self.st.take_up_sessions(record, whose, otp_sessions)
    }
}

impl SlotState {
    /// Takes up a record's sessions, guard and counters. The latest session is kept while
    /// the portal session lasts, so that the next refresh needs no OTP; for an API without
    /// OTP sessions it is kept even once expired, because the next login decides by its
    /// expiry whether to force a new token (a NIC login without the force flag while the
    /// upstream still holds the old token gets that token back, already expired).
    fn take_up_sessions(
        &mut self,
        record: Record,
        whose: Whose<'_>,
        otp_sessions: bool,
    ) -> Option<Arc<Session>> {
        let (now, wall) = (crate::clock::now(), crate::clock::wall());
        self.guard.take_up(&record.guard, now, wall, whose);
        self.revision = self.revision.max(record.revision);
        self.otp_app_key = record.otp_app_key.clone().map(Box::new);
        let portal = record.portal_ends_at.filter(|&end| end > wall);
        // A portal session that ended while gstgate was down is over as if it had ended
        // while running: nothing may be refreshed any more (see `Change::end_portal`).
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
        .filter(|l| !ended && (portal.is_some() || !otp_sessions || l.usable(now)));
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
        accepted: Default::default(),
    })
}
