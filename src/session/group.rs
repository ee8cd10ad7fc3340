//! Replicas as one gateway: with a shared store, the replicas log in for each other.
//!
//! * **One login per slot for the group.** A replica that needs a login takes the slot's
//!   lease in the store first ([`Sessions::take_turn`]), reads the group's record afresh and
//!   takes it up. If the record already has the session it needed (another replica logged in
//!   meanwhile), that is the answer and no login is made. Otherwise it logs in, counted in the
//!   record's guard before the login leaves, writes the outcome, releases the lease and
//!   announces the record's new revision ([`Sessions::end_turn`]). A replica that finds the
//!   lease taken waits for that announcement (or polls the lease), and a replica killed while
//!   holding the lease holds the others up only until it expires.
//! * **No store on the hot path.** Each replica keeps the sessions it uses in memory; the
//!   announcements ([`Sessions::follow`]) tell it when the record moved on, and only then is
//!   the record read.
//! * **Store unreachable.** Logins go ahead without the lease, each replica within its share
//!   of the login allowance (`max_logins / store.replicas` per window); sessions made that way
//!   are written when the store answers again, where the first one written wins and the other
//!   replicas take it up, so the group converges on one session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::slot::TakenUp;
use super::{Session, Sessions, Slot};
use crate::problem::GatewayError;
use crate::store::{Event, Lease, Store};

/// The lease is polled this often at most while another replica holds it (an announcement
/// usually ends the wait sooner).
const LEASE_POLL_MAX: Duration = Duration::from_millis(250);
/// ... and this often at least.
const LEASE_POLL_MIN: Duration = Duration::from_millis(20);
/// After reconnecting, reading the group's records is tried this often...
const REJOIN_ATTEMPTS: u32 = 20;
/// ... this far apart.
const REJOIN_RETRY: Duration = Duration::from_millis(500);

/// How the replicas sharing a store coordinate.
#[derive(Debug, Clone, Copy)]
pub struct Group {
    /// How long a lease lasts unless its holder extends it.
    pub lease: Duration,
    /// How many replicas share the store.
    pub replicas: u32,
}

impl Group {
    /// A replica's part of `max_logins` while the store is unreachable.
    fn share(&self, max_logins: u32) -> u32 {
        max_logins / self.replicas.max(1)
    }
}

/// Whose turn a login is, and how it is counted.
pub(super) enum Turn {
    /// No shared store: the local single-flight is all there is.
    Alone,
    /// The shared store is unreachable: this replica logs in within its share.
    Offline {
        /// Logins this replica may make per window.
        share: u32,
    },
    /// This replica holds the slot's lease for the group.
    Held(Held),
}

/// A held lease, kept alive while the login runs.
pub(super) struct Held {
    store: Arc<Store>,
    name: String,
    lease: Arc<Lease>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// What taking a turn found.
pub(super) enum Taken {
    /// The group already has a newer session than the one this replica had: use it.
    Adopted(Arc<Session>),
    /// This replica's turn to act.
    Turn(Turn),
}

impl Sessions {
    /// From now on logins take the group's lease in the shared store attached by
    /// [`Sessions::resume`], and announcements of other replicas are followed.
    pub fn join_group(self: &Arc<Self>, group: Group) {
        let _ = self.group.set(group);
        let Some(events) = self.store.get().and_then(|s| s.subscribe()) else {
            return;
        };
        self.follow(events);
    }

    /// The shared store and how the group uses it, if there is one.
    fn shared(&self) -> Option<(&Arc<Store>, Group)> {
        let store = self.store.get().filter(|s| s.is_shared())?;
        Some((store, *self.group.get()?))
    }

    /// Takes the slot's turn to act for the group: without a shared store at once; with one,
    /// once this replica holds the slot's lease and has taken up the group's record. `seen`
    /// is the newest generation this replica knew when it decided to log in: if the group has
    /// a usable session newer than that, it is adopted instead. `None` never adopts (an
    /// operator's refresh or OTP acts whatever the group holds). Call with the slot's
    /// single-flight lock held.
    pub(super) async fn take_turn(
        &self,
        slot: &Slot,
        seen: Option<u64>,
    ) -> Result<Taken, GatewayError> {
        let Some((store, group)) = self.shared() else {
            return Ok(Taken::Turn(Turn::Alone));
        };
        let name = slot.record_name();
        let adoptable = || {
            let seen = seen?;
            slot.current().filter(|s| s.generation > seen)
        };
        let give_up = Instant::now() + group.lease * 2;
        let poll = (group.lease / 20).clamp(LEASE_POLL_MIN, LEASE_POLL_MAX);
        let mut waited = false;
        loop {
            let news = slot.news.notified();
            tokio::pin!(news);
            news.as_mut().enable();
            let lease = match store.lease(&name, group.lease).await {
                Ok(lease) => lease,
                Err(e) => return Ok(self.offline(slot, group, &e.to_string())),
            };
            let Some(lease) = lease.map(Arc::new) else {
                if let Some(s) = adoptable() {
                    return Ok(Taken::Adopted(s));
                }
                if !waited {
                    waited = true;
                    tracing::debug!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                        "another replica holds the login lease; waiting for its session");
                }
                if Instant::now() >= give_up {
                    return Err(GatewayError::UpstreamUnavailable(
                        "another gstgate replica's login for this credential has not finished"
                            .into(),
                    ));
                }
                tokio::select! {
                    () = &mut news => {}
                    () = tokio::time::sleep(poll) => {}
                }
                continue;
            };
            let held = Held {
                keeper: keep(store.clone(), name.clone(), lease.clone(), group.lease),
                store: store.clone(),
                name,
                lease,
            };
            match store.fetch(&held.name).await {
                Ok(Some(loaded)) => {
                    self.take_up(slot, loaded.record);
                }
                Ok(None) => {}
                Err(e) => {
                    let revision = slot.lock().revision;
                    store.release(&held.name, &held.lease, revision).await;
                    return Ok(self.offline(slot, group, &e.to_string()));
                }
            }
            if let Some(s) = adoptable() {
                let revision = slot.lock().revision;
                store.release(&held.name, &held.lease, revision).await;
                return Ok(Taken::Adopted(s));
            }
            {
                let mut st = slot.lock();
                if std::mem::take(&mut st.clear_group_lockout) {
                    st.guard.reset();
                }
                st.leased = true;
            }
            return Ok(Taken::Turn(Turn::Held(held)));
        }
    }

    fn offline(&self, slot: &Slot, group: Group, why: &str) -> Taken {
        tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
            user = %slot.credential.username, error = %why,
            "the shared store is unreachable: logging in without the group's lease, within this replica's share of the login limit");
        Taken::Turn(Turn::Offline {
            share: group.share(slot.upstream.max_logins),
        })
    }

    /// Admits one login (or OTP request) on the turn: counted by the guard and, with a store,
    /// recorded before it leaves, so that neither a restart nor another replica can spend the
    /// upstream's login allowance twice. `now` is the admission time the guard records (a
    /// login that never connects is given back by it). Marks the slot refreshing if
    /// `refreshing`.
    pub(super) async fn admit(
        &self,
        slot: &Slot,
        turn: &Turn,
        now: Instant,
        refreshing: bool,
    ) -> Result<(), GatewayError> {
        {
            let mut st = slot.lock();
            match turn {
                Turn::Offline { share } => st.guard.admit_offline(now, *share)?,
                Turn::Alone | Turn::Held(_) => st.guard.admit(now)?,
            }
            st.refreshing |= refreshing;
            st.persist();
        }
        if let Some(store) = self.store.get() {
            store.flush().await;
        }
        Ok(())
    }

    /// Ends a turn: the slot's state as this replica left it is written for the group as a
    /// new revision, the lease released and the revision announced. `acted` says the login succeeded
    /// (offline, that makes a session the group has not seen).
    pub(super) async fn end_turn(&self, slot: &Slot, turn: Turn, acted: bool) {
        match turn {
            Turn::Alone => {}
            Turn::Offline { .. } => {
                if acted {
                    slot.lock().unshared = true;
                }
            }
            Turn::Held(held) => {
                let revision = {
                    let mut st = slot.lock();
                    st.revision += 1;
                    st.persist();
                    st.leased = false;
                    st.revision
                };
                held.store.flush().await;
                held.keeper.abort();
                held.store.release(&held.name, &held.lease, revision).await;
            }
        }
    }

    /// Takes up the group's record for the slot, and schedules the proactive refresh of a
    /// session that came with it. Returns whether the slot's sessions were replaced.
    fn take_up(&self, slot: &Slot, record: crate::store::Record) -> bool {
        let session = {
            let mut st = slot.lock();
            match st.take_up(record, slot.credential.whose()) {
                TakenUp::Nothing => None,
                TakenUp::Sessions => st.session().cloned(),
            }
        };
        let Some(session) = session else {
            return false;
        };
        tracing::debug!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
            generation = session.generation, "took up the group's session");
        self.schedule_taken_up(slot, &session);
        true
    }

    /// Follows the other replicas' announcements: a record whose revision moved past this
    /// replica's is read and taken up, and logins waiting for the lease are woken.
    fn follow(self: &Arc<Self>, mut events: tokio::sync::mpsc::UnboundedReceiver<Event>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                let Some(me) = weak.upgrade() else {
                    return;
                };
                match event {
                    Event::Revision { name, revision } => {
                        let Some(slot) = me.table().by_record(&name).cloned() else {
                            continue;
                        };
                        if revision > slot.lock().revision {
                            // In a task of its own: one slow read must not hold up the rest.
                            tokio::spawn(async move {
                                me.catch_up(&slot).await;
                                slot.news.notify_waiters();
                            });
                        } else {
                            slot.news.notify_waiters();
                        }
                    }
                    Event::Reconnected => {
                        tokio::spawn(async move { me.rejoin().await });
                    }
                }
            }
        });
    }

    /// Reads the slot's record and takes it up.
    async fn catch_up(&self, slot: &Slot) {
        let Some((store, _)) = self.shared() else {
            return;
        };
        match store.fetch(&slot.record_name()).await {
            Ok(Some(loaded)) => {
                self.take_up(slot, loaded.record);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                error = %e, "cannot read the group's session; this replica picks it up when it needs it")
            }
        }
    }

    /// After the store was unreachable (or at start-up): every record is read and taken up,
    /// then the sessions this replica made meanwhile are offered to the group.
    async fn rejoin(self: Arc<Self>) {
        let Some((store, _)) = self.shared() else {
            return;
        };
        // The subscription may come back a moment before the command connection does.
        let mut attempts = 0;
        let mut records = loop {
            match store.fetch_all().await {
                Ok(records) => break records,
                Err(e) if attempts >= REJOIN_ATTEMPTS => {
                    tracing::warn!(error = %e,
                        "cannot read the group's sessions after reconnecting; each is taken up when next needed");
                    return;
                }
                Err(_) => {
                    attempts += 1;
                    tokio::time::sleep(REJOIN_RETRY).await;
                }
            }
        };
        let table = self.table();
        let (mut taken_up, mut offered) = (0usize, 0usize);
        let mut unshared = Vec::new();
        for slot in &table.slots {
            if let Some(loaded) = records.remove(slot.record_name().as_str()) {
                taken_up += usize::from(self.take_up(slot, loaded.record));
            }
            if slot.lock().unshared {
                unshared.push(slot.clone());
            }
            slot.news.notify_waiters();
        }
        for slot in unshared {
            let _single_flight = slot.login.lock().await;
            match self.take_turn(&slot, None).await {
                Ok(Taken::Turn(turn)) => {
                    // Still unshared after taking up the record: the group has nothing newer,
                    // so this replica's session becomes the group's.
                    if std::mem::take(&mut slot.lock().unshared) {
                        offered += 1;
                    } else {
                        taken_up += 1;
                    }
                    self.end_turn(&slot, turn, true).await;
                }
                Ok(Taken::Adopted(_)) => taken_up += 1,
                Err(e) => {
                    tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                        error = %e, "cannot offer this replica's session to the group yet");
                }
            }
        }
        tracing::info!(
            taken_up,
            offered,
            "rejoined the group: took up the sessions other replicas made, offered the ones made while the store was unreachable"
        );
    }
}

/// Extends the lease every third of its time while the turn lasts, so that a slow login
/// keeps it and a killed replica's lapses within one lease time.
fn keep(
    store: Arc<Store>,
    name: String,
    lease: Arc<Lease>,
    ttl: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(ttl / 3).await;
            match store.extend(&lease, ttl).await {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(record = %name, "lost the login lease (it expired): another replica may log in too");
                    return;
                }
                Err(e) => {
                    tracing::warn!(record = %name, error = %e, "cannot extend the login lease");
                    return;
                }
            }
        }
    })
}
