//! The session manager: one slot per configured (upstream, GSTIN, user), each holding the
//! current session, its state and the lockout guard. One file per job:
//!
//! * `slot`: a slot, its session and state. The state has one owner: it changes only
//!   through a `Change`, which records it in the store when dropped.
//! * `single_flight`: one login per slot at a time. Callers that queue behind a login
//!   re-check the slot when they get the lock and find the new session.
//! * `group`: a login's turn (which only the single-flight can take) and, with a shared
//!   store, the group's lease.
//! * `login`: renewing a session the way the API's renewal strategy says, and settling the
//!   outcome. The strategy (force window, at expiry, OTP then refresh) is the upstream
//!   profile's; nothing here depends on which one it is.
//! * `auth`: the login seam, the one way to the upstream's auth endpoint.
//! * `otp`: the operator's GSTN OTP flows.
//! * `refresh` and [`scheduler`]: the proactive refresh and its timer queue.
//! * `pacer`: each upstream's `max_concurrent_logins` and `logins_per_second`, admitting
//!   logins someone waits for before proactive refreshes, and those by deadline.
//! * `resume`: taking up the sessions a store kept, at start-up.
//! * `guard`: credential rejections stop logins, logins are rate-limited, transient
//!   failures back off with jitter.
//! * `snapshot` and [`gauges`]: what the admin API, status page and metrics show.
//!
//! Here: the slot table, lookups, and compare-and-invalidate. A token rejection invalidates
//! only the generation that failed, so fifty requests failing with one old token cause one
//! re-login. A generation a re-login has shown cannot help (its token came back unchanged,
//! or the new token was rejected too) is not logged in for again for a while (see
//! [`Invalidation::KnownRejected`]).
//!
//! Time is read from [`crate::clock`], so the unit tests prove every rule on Tokio's paused
//! clock against a scripted upstream behind the login seam.

mod auth;
pub mod gauges;
mod group;
mod guard;
mod login;
mod otp;
mod pacer;
mod refresh;
mod resume;
pub mod scheduler;
mod single_flight;
mod slot;
mod snapshot;
mod table;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::config::CredentialConfig;
use crate::gstin::Gstin;
use crate::metrics::{Metrics, UpstreamLabel};
use crate::problem::GatewayError;
use crate::store::Store;
use crate::tasks::Tasks;
use crate::upstream::Upstream;

use auth::{AuthEndpoint, HttpAuth};
pub use group::Group;
pub use guard::Guard;
pub use otp::Asker;
pub use slot::{Session, Slot, State};
pub use snapshot::SessionInfo;
pub use table::Changes;

use table::Table;

/// A session whose token has less than this left is treated as expired: a request sent with
/// it would likely arrive after expiry.
const EXPIRY_MARGIN: Duration = Duration::from_secs(1);

/// After a refresh got the old token back, never ask again sooner than this.
const SAME_TOKEN_MIN_RETRY: Duration = Duration::from_secs(10);

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
    /// The label value.
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
    /// A re-login after a rejection has already shown, less than `login_window` ago, that
    /// logging in does not help this generation: the re-login got this very token back, or
    /// this generation is the re-login's new token and was rejected too. Another login would
    /// only do the same: the request fails with `token_rejected` and the session stays as it
    /// is, so that once the upstream accepts tokens again, requests simply succeed.
    KnownRejected,
}

/// The session manager.
pub struct Sessions {
    /// The current slot table; a reload swaps in a new one.
    table: RwLock<Arc<Table>>,
    /// Held for a whole reload, so that each builds on the table the one before swapped in.
    reloading: Mutex<()>,
    /// The upstreams, in configuration order.
    upstreams: Vec<Arc<Upstream>>,
    /// The login seam: how logins reach the upstreams' auth endpoints.
    auth: Arc<dyn AuthEndpoint>,
    /// Each upstream's login pacer, by upstream name: logins toward it take a permit here.
    pacers: HashMap<Arc<str>, pacer::Pacer>,
    /// The next new slot's id.
    next_id: AtomicUsize,
    /// The store new slots write through to, once [`Sessions::resume`] attached one.
    store: OnceLock<Arc<Store>>,
    /// How replicas sharing the store coordinate, once [`Sessions::join_group`] was called.
    group: OnceLock<Group>,
    metrics: Arc<Metrics>,
    scheduler: scheduler::Handle,
    /// Where logins, refreshes and the group's loops run, so that shutdown stops them.
    tasks: Tasks,
}

/// Why the session table could not be built.
#[derive(Debug, thiserror::Error)]
#[error("credential for {gstin}: {message}")]
pub struct SessionsError {
    gstin: String,
    message: String,
}

impl Sessions {
    /// Builds one slot per (credential, upstream) and starts the refresh scheduler on
    /// `tasks`.
    pub fn new(
        upstreams: &[Arc<Upstream>],
        credentials: &[CredentialConfig],
        metrics: Arc<Metrics>,
        tasks: &Tasks,
    ) -> Result<Arc<Self>, SessionsError> {
        Self::with_auth(upstreams, credentials, metrics, tasks, Arc::new(HttpAuth))
    }

    /// As [`Sessions::new`], logging in through `auth`.
    fn with_auth(
        upstreams: &[Arc<Upstream>],
        credentials: &[CredentialConfig],
        metrics: Arc<Metrics>,
        tasks: &Tasks,
        auth: Arc<dyn AuthEndpoint>,
    ) -> Result<Arc<Self>, SessionsError> {
        let next_id = AtomicUsize::new(0);
        let (table, _) = Table::build(upstreams, credentials, None, &next_id)?;
        let pacers = upstreams
            .iter()
            .map(|u| {
                let waiting = metrics.logins_waiting.get_or_create(&UpstreamLabel {
                    upstream: u.name.clone().into(),
                });
                let pacer = pacer::Pacer::new(
                    u.max_concurrent_logins,
                    u.logins_per_second,
                    waiting.clone(),
                );
                (u.name.clone(), pacer)
            })
            .collect();
        let sessions = Arc::new_cyclic(|weak: &Weak<Sessions>| Sessions {
            table: RwLock::new(Arc::new(table)),
            reloading: Mutex::new(()),
            upstreams: upstreams.to_vec(),
            auth,
            pacers,
            next_id,
            store: OnceLock::new(),
            group: OnceLock::new(),
            metrics,
            scheduler: {
                let sessions = weak.clone();
                let refreshes = tasks.clone();
                scheduler::spawn(tasks, move |id, generation| {
                    if let Some(sessions) = sessions.upgrade() {
                        refreshes.spawn(async move { sessions.refresh_due(id, generation).await });
                    }
                })
            },
            tasks: tasks.clone(),
        });
        Ok(sessions)
    }

    /// The current slot table.
    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Applies a reloaded configuration's credentials: slots of unchanged credentials stay as
    /// they are, changed ones keep their session with a clear guard, removed ones are dropped
    /// (with their stored record), added ones start cold. Nothing changes on an error.
    ///
    /// The new table is built beside the current one, which callers keep using meanwhile
    /// (with 100,000 credentials the build takes a good part of a second), and swapped in
    /// whole. Reloads run one at a time.
    pub fn reload(&self, credentials: &[CredentialConfig]) -> Result<Changes, SessionsError> {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.table();
        let (table, changes) =
            Table::build(&self.upstreams, credentials, Some(&current), &self.next_id)?;
        let store = self.store.get();
        if let Some(store) = store {
            for slot in &table.slots {
                let mut change = slot.change();
                if !change.is_durable() {
                    change.attach(store.clone(), slot.record_name().into());
                }
            }
        }
        let gone: Vec<Arc<Slot>> = table.gone(&current).into_iter().cloned().collect();
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        // Detached once no caller can find them any more.
        if let Some(store) = store {
            for slot in gone {
                slot.change().detach();
                // A shared record may still serve replicas that have not reloaded yet.
                if !store.is_shared() {
                    store.delete(&slot.record_name());
                }
            }
        }
        Ok(changes)
    }

    /// The slot for a caller's (upstream name, GSTIN, optional user).
    pub fn lookup(
        &self,
        upstream: &str,
        gstin: &Gstin,
        user: Option<&str>,
    ) -> Result<Arc<Slot>, GatewayError> {
        let table = self.table();
        let slots = table
            .of(upstream, gstin)
            .ok_or_else(|| GatewayError::NoCredential {
                upstream: upstream.to_owned(),
                gstin: gstin.to_string(),
            })?;
        let pick = match (user, slots) {
            (None, [only]) => Some(only),
            (Some(u), slots) => slots.iter().find(|s| &*s.credential.username == u),
            (None, _) => None,
        };
        pick.cloned().ok_or_else(|| GatewayError::UserRequired {
            upstream: upstream.to_owned(),
            gstin: gstin.to_string(),
        })
    }

    /// A slot by (upstream name, GSTIN, optional user), for the admin API: chosen as for a
    /// caller, so a GSTIN with several users needs one named (never silently the first).
    pub fn find(
        &self,
        upstream: &str,
        gstin: &Gstin,
        user: Option<&str>,
    ) -> Result<Arc<Slot>, GatewayError> {
        if !self.upstreams.iter().any(|u| &*u.name == upstream) {
            return Err(GatewayError::UpstreamNotFound {
                upstream: upstream.to_owned(),
                known: self
                    .upstreams
                    .iter()
                    .map(|u| &*u.name)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        self.lookup(upstream, gstin, user)
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
        self.fly(slot, move |me, slot, flight| async move {
            if let Some(s) = slot.current() {
                return Ok(s);
            }
            me.login(&slot, &flight, trigger).await
        })
        .await
    }

    /// Compare-and-invalidate after the upstream rejected the token of `rejected`: forgets
    /// the session only if it is still that one, and not while a re-login has already shown
    /// that it cannot help (see [`Invalidation`]).
    pub fn invalidate(&self, slot: &Slot, rejected: &Session) -> Invalidation {
        slot.change().invalidate(rejected, crate::clock::now())
    }

    /// The upstream rejected `renewed` too, the session a request was replayed with after a
    /// rejection: a renewal did not help, so for `login_window` rejections of it cost no
    /// login (a rejection spell on one GSTIN must not spend the login allowance every tenant
    /// of that GSTIN shares). The session stays: once the upstream accepts tokens again,
    /// requests succeed with it.
    pub fn renewal_rejected(&self, slot: &Slot, renewed: &Session) {
        let until = crate::clock::now() + slot.upstream.login_window;
        slot.change().mark_rejected(renewed.generation, until);
        tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
            user = %slot.credential.username, generation = renewed.generation,
            no_relogin_for_secs = slot.upstream.login_window.as_secs(),
            "the upstream rejected a renewed token too; requests rejected with it fail without another login");
    }

    /// An operator-requested refresh: clears a lockout and logs in now (see `login`).
    pub async fn refresh_now(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
    ) -> Result<Arc<Session>, GatewayError> {
        self.fly(slot, |me, slot, flight| async move {
            me.operator_login(&slot, &flight).await
        })
        .await
    }

    /// Whether `given` is the password of the slot's credential (a drop-in client's login),
    /// compared as SHA-256 digests in constant time, so that neither the time taken nor an
    /// early exit says how much of it was right.
    pub fn password_matches(&self, slot: &Slot, given: &SecretString) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let ours: [u8; 32] =
            Sha256::digest(slot.view().password().expose_secret().as_bytes()).into();
        let theirs: [u8; 32] = Sha256::digest(given.expose_secret().as_bytes()).into();
        bool::from(ours.ct_eq(&theirs))
    }

    /// The metrics handle.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}
