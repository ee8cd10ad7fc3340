//! Turns to log in, and replicas as one gateway: with a shared store, the replicas log in for
//! each other.
//!
//! * **A turn.** Every login (and OTP call) happens on a [`Turn`], which only a task holding
//!   the slot's single-flight ([`Flight`]) can take, and which is finished by consuming it
//!   ([`Sessions::end_turn`]). The turn decides how far the slot's changes are recorded (see
//!   [`Reach`]): there is no flag to set and clear.
//! * **One login per slot for the group.** A replica that needs a login takes the slot's
//!   lease in the store first ([`Sessions::take_turn`]), reads the group's record afresh and
//!   takes it up. If the record already has the session it needed (another replica logged in
//!   meanwhile), that is the answer and no login is made. Otherwise it logs in, counted in the
//!   record's guard before the login leaves, writes the outcome, releases the lease and
//!   announces the record's new revision. A replica that finds the lease taken waits for that
//!   announcement (or polls the lease), and a replica killed while holding the lease holds
//!   the others up only until it expires. An operator's refresh or OTP call
//!   ([`Sessions::turn_to_act`]) never adopts what the group holds: it is another call, so
//!   "adopted without asking" cannot happen.
//! * **No store on the hot path.** Each replica keeps the sessions it uses in memory; the
//!   announcements ([`Sessions::follow`]) tell it when the record moved on, and only then is
//!   the record read.
//! * **Store unreachable.** Logins go ahead without the lease, each replica within its share
//!   of the login allowance (`max_logins / store.replicas` per window); sessions made that way
//!   are written when the store answers again, where the first one written wins and the other
//!   replicas take it up, so the group converges on one session.

use super::guard::Admit;
use futures_util::StreamExt as _;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::single_flight::Flight;
use super::slot::{Reach, TurnReach};
use super::{Session, Sessions, Slot};
use crate::problem::GatewayError;
use crate::store::{Event, Lease, Record, Store};
use crate::tasks::Tasks;

/// The lease is polled this often at most while another replica holds it (an announcement
/// usually ends the wait sooner).
const LEASE_POLL_MAX: Duration = Duration::from_millis(250);
/// ... and this often at least.
const LEASE_POLL_MIN: Duration = Duration::from_millis(20);
/// How many slots a rejoining replica offers to the group at once.
const REJOIN_CONCURRENCY: usize = 32;

/// Slots taken up between two yields to the scheduler when a serving replica rejoins.
const TAKE_UP_CHUNK: usize = 1024;

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

/// A slot's turn to log in (or make an OTP call).
#[must_use = "a turn ends with Sessions::end_turn, which records and announces what it did"]
pub(super) struct Turn {
    kind: Kind,
}

/// Whose turn it is, and how its logins are counted.
enum Kind {
    /// No shared store: the local single-flight is all there is.
    Alone,
    /// The shared store is unreachable: this replica logs in within its share.
    Offline {
        /// Logins this replica may make per window.
        share: u32,
    },
    /// This replica holds the slot's lease for the group.
    Leased(KeptLease),
}

impl TurnReach for Turn {
    fn reach(&self) -> Reach {
        match self.kind {
            Kind::Alone => Reach::Alone,
            Kind::Offline { .. } => Reach::Offline,
            Kind::Leased(_) => Reach::Leased,
        }
    }
}

impl Turn {
    /// This replica's share of the login allowance, while the shared store is unreachable.
    pub(super) fn offline_share(&self) -> Option<u32> {
        match self.kind {
            Kind::Offline { share } => Some(share),
            Kind::Alone | Kind::Leased(_) => None,
        }
    }
}

/// A held lease, kept alive while the turn lasts.
struct KeptLease {
    store: Arc<Store>,
    name: String,
    lease: Arc<Lease>,
    keeper: tokio::task::JoinHandle<()>,
}

impl Drop for KeptLease {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

/// What a caller's turn found.
pub(super) enum Next {
    /// The group already has a newer session than the one this replica had: use it.
    Adopt(Arc<Session>),
    /// This replica's turn to log in.
    LogIn(Turn),
}

impl Sessions {
    /// From now on logins take the group's lease in the shared store attached by
    /// [`Sessions::resume`], and announcements of other replicas are followed.
    pub fn join_group(self: &Arc<Self>, group: Group) {
        let _ = self.group.set(group);
        // The configured login rate is the group's: each replica paces its own logins at its
        // share, as it takes its share of the login allowance while offline.
        for pacer in self.pacers.values() {
            pacer.share(group.replicas);
        }
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

    /// A caller's turn to log in. `seen` is the newest generation this replica knew when it
    /// decided to log in: if, once the group's lease is held, the group has a usable session
    /// newer than that, it is adopted instead.
    pub(super) async fn take_turn(
        &self,
        slot: &Slot,
        flight: &Flight,
        seen: u64,
    ) -> Result<Next, GatewayError> {
        let adoptable = || slot.current().filter(|s| s.generation > seen);
        Ok(match self.acquire(slot, flight, adoptable).await? {
            Ok(turn) => Next::LogIn(turn),
            Err(session) => Next::Adopt(session),
        })
    }

    /// A turn to act whatever the group holds: an operator's refresh or OTP call, or
    /// offering the group a session made while the store was unreachable.
    pub(super) async fn turn_to_act(
        &self,
        slot: &Slot,
        flight: &Flight,
    ) -> Result<Turn, GatewayError> {
        let never = || None::<Infallible>;
        Ok(match self.acquire(slot, flight, never).await? {
            Ok(turn) => turn,
            Err(never) => match never {},
        })
    }

    /// Takes the slot's turn: without a shared store at once; with one, once this replica
    /// holds the slot's lease and has taken up the group's record. `adoptable` is asked
    /// whenever the group may have moved on; what it returns ends the wait without a turn.
    async fn acquire<T>(
        &self,
        slot: &Slot,
        _flight: &Flight,
        adoptable: impl Fn() -> Option<T>,
    ) -> Result<Result<Turn, T>, GatewayError> {
        let Some((store, group)) = self.shared() else {
            return Ok(Ok(Turn { kind: Kind::Alone }));
        };
        let name = slot.record_name();
        let give_up = crate::clock::now() + group.lease * 2;
        let poll = (group.lease / 20).clamp(LEASE_POLL_MIN, LEASE_POLL_MAX);
        let mut waited = false;
        loop {
            let announced = slot.announcements().notified();
            tokio::pin!(announced);
            announced.as_mut().enable();
            let lease = match store.lease(&name, group.lease).await {
                Ok(lease) => lease,
                Err(e) => return Ok(Ok(self.offline(slot, group, &e.to_string()))),
            };
            let Some(lease) = lease.map(Arc::new) else {
                if let Some(found) = adoptable() {
                    return Ok(Err(found));
                }
                if !waited {
                    waited = true;
                    tracing::debug!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                        "another replica holds the login lease; waiting for its session");
                }
                if crate::clock::now() >= give_up {
                    return Err(GatewayError::UpstreamUnavailable(
                        "another gstgate replica's login for this credential has not finished"
                            .into(),
                    ));
                }
                tokio::select! {
                    () = &mut announced => {}
                    () = tokio::time::sleep(poll) => {}
                }
                continue;
            };
            let held = KeptLease {
                keeper: keep(
                    &self.tasks,
                    store.clone(),
                    name.clone(),
                    lease.clone(),
                    group.lease,
                ),
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
                    let revision = slot.view().revision();
                    store.release(&held.name, &held.lease, revision).await;
                    return Ok(Ok(self.offline(slot, group, &e.to_string())));
                }
            }
            if let Some(found) = adoptable() {
                let revision = slot.view().revision();
                store.release(&held.name, &held.lease, revision).await;
                return Ok(Err(found));
            }
            let turn = Turn {
                kind: Kind::Leased(held),
            };
            slot.change_on(&turn).clear_replaced_password_lockout();
            return Ok(Ok(turn));
        }
    }

    fn offline(&self, slot: &Slot, group: Group, why: &str) -> Turn {
        tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
            user = %slot.credential.username, error = %why,
            "the shared store is unreachable: logging in without the group's lease, within this replica's share of the login limit");
        Turn {
            kind: Kind::Offline {
                share: group.share(slot.upstream.max_logins),
            },
        }
    }

    /// Admits one login (or OTP request) on the turn, as `purpose` needs it: counted by the
    /// guard and, with a store,
    /// recorded before it leaves, so that neither a restart nor another replica can spend the
    /// upstream's login allowance twice. `now` is the admission time the guard records (a
    /// login that never connects is given back by it). Shows the slot refreshing if
    /// `refreshing`.
    pub(super) async fn count_login(
        &self,
        slot: &Slot,
        turn: &Turn,
        now: Instant,
        refreshing: bool,
        purpose: Admit,
    ) -> Result<(), GatewayError> {
        slot.change_on(turn)
            .take_login(now, turn.offline_share(), refreshing, purpose)?;
        if let Some(store) = self.store.get() {
            store.flush().await;
        }
        Ok(())
    }

    /// Ends a turn: with the group's lease, the slot's state as this replica left it is
    /// written for the group as a new revision, the lease released and the revision
    /// announced. `acted` says the login succeeded (offline, that makes a session the group
    /// has not seen).
    pub(super) async fn end_turn(&self, slot: &Slot, turn: Turn, acted: bool) {
        let revision = {
            let mut change = slot.change_on(&turn);
            match turn.kind {
                Kind::Alone => return,
                Kind::Offline { .. } => {
                    if acted {
                        change.made_offline_session();
                    }
                    return;
                }
                Kind::Leased(_) => change.next_revision(),
            }
        };
        if let Kind::Leased(held) = turn.kind {
            held.store.flush().await;
            held.keeper.abort();
            held.store.release(&held.name, &held.lease, revision).await;
        }
    }

    /// Takes up the group's record for the slot, and schedules the proactive refresh of a
    /// session that came with it. Returns whether the slot's sessions were replaced.
    fn take_up(&self, slot: &Slot, record: Record) -> bool {
        let session = {
            let mut change = slot.change();
            if change.take_up(record, slot.credential.whose(), slot.otp_sessions()) {
                change.session().cloned()
            } else {
                None
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
        self.tasks.spawn_until_shutdown(async move {
            while let Some(event) = events.recv().await {
                let Some(me) = weak.upgrade() else {
                    return;
                };
                match event {
                    Event::Revision { name, revision } => {
                        let Some(slot) = me.table().by_record(&name).cloned() else {
                            continue;
                        };
                        if revision > slot.view().revision() {
                            // In a task of its own: one slow read must not hold up the rest.
                            me.tasks.clone().spawn_until_shutdown(async move {
                                me.catch_up(&slot).await;
                                slot.announcements().notify_waiters();
                            });
                        } else {
                            slot.announcements().notify_waiters();
                        }
                    }
                    Event::Reconnected => {
                        me.tasks
                            .clone()
                            .spawn_until_shutdown(async move { me.rejoin().await });
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
        let started = crate::clock::now();
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
        let read = crate::clock::now().saturating_duration_since(started);
        let table = self.table();
        let (mut taken_up, mut offered) = (0usize, 0usize);
        let mut offline = Vec::new();
        for (i, slot) in table.slots.iter().enumerate() {
            if let Some(loaded) = records.remove(slot.record_name().as_str()) {
                taken_up += usize::from(self.take_up(slot, loaded.record));
            }
            if slot.view().has_offline_session() {
                offline.push(slot.clone());
            }
            slot.announcements().notify_waiters();
            // The replica serves meanwhile: 100,000 slots are ≈ 0.3 s of work, which would
            // otherwise hold up every request queued on this worker thread.
            if i % TAKE_UP_CHUNK == TAKE_UP_CHUNK - 1 {
                tokio::task::yield_now().await;
            }
        }
        let (to_offer, offering) = (offline.len(), crate::clock::now());
        // Each offer is a lease, a write and an announcement: one slot after another, a
        // replica that served many GSTINs through an outage would take minutes to rejoin.
        // Slots are independent, so a few dozen go at once.
        let outcomes: Vec<Option<bool>> = futures_util::stream::iter(offline)
            .map(|slot| {
                let me = &self;
                async move {
                    let flight = Flight::wait(&slot).await;
                    match me.turn_to_act(&slot, &flight).await {
                        Ok(turn) => {
                            // Still holding a session made offline after taking up the record:
                            // the group has nothing newer, so this replica's session becomes
                            // the group's.
                            let offer = slot.change_on(&turn).offer_offline_session();
                            me.end_turn(&slot, turn, true).await;
                            Some(offer)
                        }
                        Err(e) => {
                            tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                                error = %e, "cannot offer this replica's session to the group yet");
                            None
                        }
                    }
                }
            })
            .buffer_unordered(REJOIN_CONCURRENCY)
            .collect()
            .await;
        for offer in outcomes.into_iter().flatten() {
            if offer {
                offered += 1;
            } else {
                taken_up += 1;
            }
        }
        tracing::info!(
            taken_up,
            offered,
            to_offer,
            read_ms = read.as_millis(),
            take_up_ms = offering.saturating_duration_since(started + read).as_millis(),
            offer_ms = crate::clock::now()
                .saturating_duration_since(offering)
                .as_millis(),
            "rejoined the group: took up the sessions other replicas made, offered the ones made while the store was unreachable"
        );
    }
}

/// Extends the lease every third of its time while the turn lasts, so that a slow login
/// keeps it and a killed replica's lapses within one lease time.
fn keep(
    tasks: &Tasks,
    store: Arc<Store>,
    name: String,
    lease: Arc<Lease>,
    ttl: Duration,
) -> tokio::task::JoinHandle<()> {
    tasks.spawn_until_shutdown(async move {
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
