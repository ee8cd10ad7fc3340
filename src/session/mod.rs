//! The session manager: one slot per configured (upstream, GSTIN, user), each holding the
//! current session, its state and the lockout guard. One file per job:
//!
//! * `slot`: a slot, its session and state; the seam where a store records sessions.
//! * `single_flight`: one login per slot at a time. Callers that queue behind a login
//!   re-check the slot when they get the lock and find the new session.
//! * `login`: renewing a session the way the API's renewal strategy says, and settling the
//!   outcome. The strategy (force window, at expiry, OTP then refresh) is the upstream
//!   profile's; nothing here depends on which one it is.
//! * `auth`: the calls to the upstream's auth endpoint.
//! * `otp`: the operator's GSTN OTP flows.
//! * `refresh` and [`scheduler`]: the proactive refresh and its timer queue.
//! * `resume`: taking up the sessions a store kept, at start-up.
//! * `guard`: credential rejections stop logins, logins are rate-limited, transient
//!   failures back off with jitter.
//! * `snapshot` and [`gauges`]: what the admin API, status page and metrics show.
//!
//! Here: the slot table, lookups, and compare-and-invalidate. A token rejection invalidates
//! only the generation that failed, so fifty requests failing with one old token cause one
//! re-login. A token that a re-login after a rejection handed back unchanged is not logged in
//! for again for a while (see [`Invalidation::KnownRejected`]).
//!
//! Slot state sits behind a `std::sync::Mutex`: it is held for a few field reads or writes and
//! never across an `.await`, which is cheaper than an async mutex and cannot deadlock a task.

mod auth;
pub mod gauges;
mod group;
mod guard;
mod login;
mod otp;
mod refresh;
mod resume;
pub mod scheduler;
mod single_flight;
mod slot;
mod snapshot;
mod table;

use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use crate::config::CredentialConfig;
use crate::gstin::Gstin;
use crate::metrics::Metrics;
use crate::problem::GatewayError;
use crate::store::Store;
use crate::upstream::Upstream;

pub use group::Group;
pub use guard::Guard;
pub use slot::{Credential, Session, Slot, State};
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
    /// A re-login after a rejection of this very generation got the same token back, less
    /// than `login_window` ago. Another login would only get it back again: the request
    /// fails with `token_rejected` and the session stays as it is.
    KnownRejected,
}

/// The session manager.
pub struct Sessions {
    /// The current slot table; a reload swaps in a new one.
    table: RwLock<Arc<Table>>,
    /// The upstreams, in configuration order: callers name them by position.
    upstreams: Vec<Arc<Upstream>>,
    /// The next new slot's id.
    next_id: AtomicUsize,
    /// The store new slots write through to, once [`Sessions::resume`] attached one.
    store: OnceLock<Arc<Store>>,
    /// How replicas sharing the store coordinate, once [`Sessions::join_group`] was called.
    group: OnceLock<Group>,
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
        let next_id = AtomicUsize::new(0);
        let (table, _) = Table::build(upstreams, credentials, None, &next_id)?;
        let sessions = Arc::new_cyclic(|weak: &Weak<Sessions>| Sessions {
            table: RwLock::new(Arc::new(table)),
            upstreams: upstreams.to_vec(),
            next_id,
            store: OnceLock::new(),
            group: OnceLock::new(),
            metrics,
            scheduler: {
                let sessions = weak.clone();
                scheduler::spawn(move |id, generation| {
                    if let Some(sessions) = sessions.upgrade() {
                        tokio::spawn(async move { sessions.refresh_due(id, generation).await });
                    }
                })
            },
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
    pub fn reload(&self, credentials: &[CredentialConfig]) -> Result<Changes, SessionsError> {
        let mut current = self.table.write().unwrap_or_else(|p| p.into_inner());
        let (table, changes) =
            Table::build(&self.upstreams, credentials, Some(&current), &self.next_id)?;
        if let Some(store) = self.store.get() {
            for slot in &table.slots {
                let mut st = slot.lock();
                if !st.is_durable() {
                    st.write_through(store.clone(), slot.record_name().into());
                }
            }
            for slot in table.gone(&current) {
                slot.lock().detach();
                // A shared record may still serve replicas that have not reloaded yet.
                if !store.is_shared() {
                    store.delete(&slot.record_name());
                }
            }
        }
        *current = Arc::new(table);
        Ok(changes)
    }

    /// The slot for a caller's (upstream, GSTIN, optional user).
    pub fn lookup(
        &self,
        upstream: usize,
        gstin: &Gstin,
        user: Option<&str>,
    ) -> Result<Arc<Slot>, GatewayError> {
        let table = self.table();
        let slots = table
            .of(upstream, gstin)
            .ok_or_else(|| GatewayError::NoCredential {
                upstream: self.upstream_name(upstream),
                gstin: gstin.to_string(),
            })?;
        let pick = match (user, slots.as_slice()) {
            (None, [only]) => Some(*only),
            (Some(u), slots) => slots.iter().copied().find(|s| &*s.credential.username == u),
            (None, _) => None,
        };
        pick.cloned().ok_or_else(|| GatewayError::UserRequired {
            upstream: self.upstream_name(upstream),
            gstin: gstin.to_string(),
        })
    }

    fn upstream_name(&self, idx: usize) -> String {
        self.upstreams
            .get(idx)
            .map(|u| u.name.to_string())
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
            .upstreams
            .iter()
            .position(|u| &*u.name == upstream)
            .ok_or_else(|| GatewayError::UpstreamNotFound {
                upstream: upstream.to_owned(),
                known: self
                    .upstreams
                    .iter()
                    .map(|u| &*u.name)
                    .collect::<Vec<_>>()
                    .join(", "),
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

    /// Compare-and-invalidate after the upstream rejected the token of `rejected`: forgets
    /// the session only if it is still that one (generation and token: replicas that logged in
    /// while their shared store was unreachable may have used the same generation), and not
    /// when a re-login has already shown that the upstream hands that token back (see
    /// [`Invalidation`]).
    pub fn invalidate(&self, slot: &Slot, rejected: &Session) -> Invalidation {
        let now = Instant::now();
        let generation = rejected.generation;
        let mut st = slot.lock();
        if !st
            .session()
            .is_some_and(|s| s.generation == generation && s.token == rejected.token)
        {
            return Invalidation::Superseded;
        }
        if st
            .known_rejected
            .is_some_and(|k| k.generation == generation && k.until > now)
        {
            return Invalidation::KnownRejected;
        }
        st.invalidate();
        Invalidation::Invalidated
    }

    /// An operator-requested refresh: clears a lockout and logs in now (see `login`).
    pub async fn refresh_now(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
    ) -> Result<Arc<Session>, GatewayError> {
        self.detached(slot, |me, slot| async move {
            me.login(&slot, Trigger::Manual).await
        })
        .await
    }

    /// The metrics handle.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use http::HeaderValue;

    use super::slot::KnownRejected;
    use super::*;
    use crate::crypto::AesKey;
    use crate::metrics::ResultLabels;

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
        let slot = sessions.table().slots[0].clone();
        {
            // Started with an OTP six hours ago; its last token has just expired.
            let mut st = slot.lock();
            let now = SystemTime::now();
            st.install(Arc::new(Session {
                token: HeaderValue::from_static("t"),
                sek: AesKey::random(),
                expires_at: now,
                deadline: Instant::now(),
                issued_at: now - Duration::from_secs(6 * 3600),
                generation: 1,
            }));
            st.open_portal(now - Duration::from_secs(1));
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
        let slot = sessions.table().slots[0].clone();
        slot.lock().install(session(3));
        assert_eq!(
            sessions.invalidate(&slot, &session(2)),
            Invalidation::Superseded
        );
        assert_eq!(
            sessions.invalidate(&slot, &session(3)),
            Invalidation::Invalidated
        );
        assert!(slot.lock().session().is_none());
        assert_eq!(
            sessions.invalidate(&slot, &session(3)),
            Invalidation::Superseded
        );

        let now = Instant::now();
        {
            let mut st = slot.lock();
            st.install(session(3));
            st.known_rejected = Some(KnownRejected {
                generation: 3,
                until: now + Duration::from_secs(900),
            });
        }
        assert_eq!(
            sessions.invalidate(&slot, &session(3)),
            Invalidation::KnownRejected
        );
        assert_eq!(
            sessions.invalidate(&slot, &session(3)),
            Invalidation::KnownRejected
        );
        assert!(slot.lock().session().is_some(), "the session is kept");
        // A rejection of an older generation still just picks up the current session.
        assert_eq!(
            sessions.invalidate(&slot, &session(2)),
            Invalidation::Superseded
        );

        // The mark has run out: the next rejection may try one re-login again.
        slot.lock().known_rejected = Some(KnownRejected {
            generation: 3,
            until: now,
        });
        assert_eq!(
            sessions.invalidate(&slot, &session(3)),
            Invalidation::Invalidated
        );

        // A mark for another generation does not cover the current one.
        {
            let mut st = slot.lock();
            st.install(session(4));
            st.known_rejected = Some(KnownRejected {
                generation: 3,
                until: now + Duration::from_secs(900),
            });
        }
        assert_eq!(
            sessions.invalidate(&slot, &session(4)),
            Invalidation::Invalidated
        );
    }
}
