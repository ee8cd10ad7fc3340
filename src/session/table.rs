//! The slot table: one slot per configured (upstream, GSTIN, user), built from the
//! credentials at start-up and built again on a configuration reload. A reload keeps the slot
//! of every credential that did not change, so its session, schedule and guard are untouched;
//! a changed credential keeps its slot and session but starts with a clear guard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::HeaderValue;
use secrecy::ExposeSecret;

use super::slot::{Credential, Slot, SlotState};
use super::{Guard, SessionsError, DEFAULT_SESSION_LIFETIME};
use crate::config::CredentialConfig;
use crate::gstin::Gstin;
use crate::upstream::Upstream;

/// The slots, and how a caller's (upstream, GSTIN) finds them. Immutable once built: a
/// reload builds a new table and swaps it in whole.
pub(super) struct Table {
    /// In configuration order, for the snapshot and the gauges.
    pub(super) slots: Vec<Arc<Slot>>,
    /// Slot id → position in `slots`; the scheduler refers to slots by id.
    by_id: HashMap<usize, usize>,
    /// (upstream position, GSTIN) → positions in `slots`.
    by_gstin: HashMap<(usize, Gstin), Vec<usize>>,
    /// Store record name → position in `slots`, for what other replicas announce.
    by_record: HashMap<Arc<str>, usize>,
}

/// What a reload did to the slots.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Changes {
    /// New (upstream, GSTIN, user) slots.
    pub added: usize,
    /// Slots whose credential is gone.
    pub removed: usize,
    /// Slots whose password or session lifetime changed: session kept, guard cleared.
    pub changed: usize,
    /// Slots left exactly as they were.
    pub unchanged: usize,
}

impl Table {
    /// Builds the table for `credentials`. Slots of `previous` whose credential is unchanged
    /// are taken over as they are; new slots get ids from `next_id`.
    pub(super) fn build(
        upstreams: &[Arc<Upstream>],
        credentials: &[CredentialConfig],
        previous: Option<&Table>,
        next_id: &AtomicUsize,
    ) -> Result<(Self, Changes), SessionsError> {
        let mut old: HashMap<(String, String, String), &Arc<Slot>> = previous
            .map(|t| {
                t.slots
                    .iter()
                    .map(|s| {
                        let key = (
                            s.upstream.name.to_string(),
                            s.credential.gstin.to_string(),
                            s.credential.username.to_string(),
                        );
                        (key, s)
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut table = Table {
            slots: Vec::new(),
            by_id: HashMap::new(),
            by_gstin: HashMap::new(),
            by_record: HashMap::new(),
        };
        let mut changes = Changes::default();
        for c in credentials {
            let err = |message: String| SessionsError {
                gstin: c.gstin.clone(),
                message,
            };
            let gstin = Gstin::parse(&c.gstin).map_err(|e| err(e.to_string()))?;
            for name in &c.upstreams {
                let (position, upstream) = upstreams
                    .iter()
                    .enumerate()
                    .find(|(_, u)| &*u.name == name)
                    .ok_or_else(|| err(format!("no upstream `{name}`")))?;
                let lifetime = c.session_lifetime.unwrap_or(DEFAULT_SESSION_LIFETIME);
                // At start-up there is nothing to compare with, and nothing to allocate for it.
                let before = if old.is_empty() {
                    None
                } else {
                    old.remove(&(name.clone(), gstin.to_string(), c.username.clone()))
                };
                let slot = match before {
                    Some(s) => {
                        let mut st = s.lock();
                        if st.password.expose_secret() == c.password.expose_secret()
                            && st.session_lifetime == lifetime
                        {
                            changes.unchanged += 1;
                        } else {
                            // The same slot, so its single-flight, session and store record
                            // stay one: a login in flight finishes where callers look.
                            changes.changed += 1;
                            st.change_credential(
                                c.password.clone(),
                                lifetime,
                                Guard::new(upstream.max_logins, upstream.login_window),
                            );
                        }
                        drop(st);
                        s.clone()
                    }
                    None => {
                        changes.added += 1;
                        let id = next_id.fetch_add(1, Ordering::Relaxed);
                        new_slot(id, upstream, &gstin, c, lifetime).map_err(err)?
                    }
                };
                let at = table.slots.len();
                table.by_id.insert(slot.id, at);
                table.by_record.insert(slot.record_name().into(), at);
                table
                    .by_gstin
                    .entry((position, gstin.clone()))
                    .or_default()
                    .push(at);
                table.slots.push(slot);
            }
        }
        changes.removed = old.len();
        Ok((table, changes))
    }

    /// The slot with this id, if it is still configured.
    pub(super) fn get(&self, id: usize) -> Option<&Arc<Slot>> {
        self.by_id.get(&id).map(|&at| &self.slots[at])
    }

    /// The slot whose store record is `name`.
    pub(super) fn by_record(&self, name: &str) -> Option<&Arc<Slot>> {
        self.by_record.get(name).map(|&at| &self.slots[at])
    }

    /// The slots of (upstream position, GSTIN).
    pub(super) fn of(&self, upstream: usize, gstin: &Gstin) -> Option<Vec<&Arc<Slot>>> {
        self.by_gstin
            .get(&(upstream, gstin.clone()))
            .map(|at| at.iter().map(|&i| &self.slots[i]).collect())
    }

    /// Slots of `previous` that this table no longer has.
    pub(super) fn gone<'a>(&self, previous: &'a Table) -> Vec<&'a Arc<Slot>> {
        previous
            .slots
            .iter()
            .filter(|s| self.get(s.id).is_none())
            .collect()
    }
}

/// A fresh slot for credential `c` on `upstream`.
fn new_slot(
    id: usize,
    upstream: &Arc<Upstream>,
    gstin: &Gstin,
    c: &CredentialConfig,
    session_lifetime: std::time::Duration,
) -> Result<Arc<Slot>, String> {
    let gstin_header = HeaderValue::from_str(gstin.as_str()).map_err(|e| e.to_string())?;
    let user_header = HeaderValue::from_str(&c.username)
        .map_err(|_| "username is not a valid header value".to_owned())?;
    let state_header = HeaderValue::from_str(gstin.state_code()).map_err(|e| e.to_string())?;
    Ok(Arc::new(Slot {
        id,
        upstream: upstream.clone(),
        credential: Credential {
            gstin: gstin.clone(),
            username: c.username.as_str().into(),
            gstin_header,
            user_header,
            state_header,
        },
        state: Mutex::new(SlotState::new(
            Guard::new(upstream.max_logins, upstream.login_window),
            c.password.clone(),
            session_lifetime,
        )),
        login: Arc::new(tokio::sync::Mutex::new(())),
        news: tokio::sync::Notify::new(),
    }))
}
