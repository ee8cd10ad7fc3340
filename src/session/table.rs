//! The slot table: one slot per configured (upstream, GSTIN, user), built from the
//! credentials at start-up and built again on a configuration reload. A reload keeps the slot
//! of every credential that did not change, so its session, schedule and guard are untouched;
//! a changed credential keeps its slot and session but starts with a clear guard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::slot::{Credential, Slot, SlotState};
use super::{Guard, SessionsError, DEFAULT_SESSION_LIFETIME};
use crate::config::CredentialConfig;
use crate::gstin::Gstin;
use crate::store::record_name;
use crate::upstream::Upstream;

/// The slots, and how a caller's (upstream, GSTIN) finds them. Immutable once built: a
/// reload builds a new table and swaps it in whole.
pub(super) struct Table {
    /// In configuration order, for the snapshot and the gauges.
    pub(super) slots: Vec<Arc<Slot>>,
    /// Slot id → position in `slots`; the scheduler refers to slots by id.
    by_id: HashMap<usize, usize>,
    /// Upstream name → GSTIN → that GSTIN's slots on it: a caller's lookup borrows, never
    /// allocates, and names the upstream rather than its position in some list.
    by_gstin: HashMap<Arc<str>, HashMap<Gstin, Vec<Arc<Slot>>>>,
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
        // The previous slots are found by their store record name, which the new table
        // needs anyway: a reload of 100,000 credentials builds no map of the old ones.
        let mut taken = vec![false; previous.map_or(0, |t| t.slots.len())];
        // Slots taken over whose password or session lifetime changes, with the new values.
        let mut changed = Vec::new();
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
                let upstream = upstreams
                    .iter()
                    .find(|u| &*u.name == name)
                    .ok_or_else(|| err(format!("no upstream `{name}`")))?;
                let lifetime = c.session_lifetime.unwrap_or(DEFAULT_SESSION_LIFETIME);
                let record: Arc<str> = record_name(name, gstin.as_str(), &c.username).into();
                let before = previous.and_then(|t| {
                    let at = *t.by_record.get(&record)?;
                    let first = !std::mem::replace(taken.get_mut(at)?, true);
                    first.then(|| t.slots.get(at)).flatten()
                });
                let slot = match before {
                    Some(s) => {
                        if s.view().same_credential(&c.password, lifetime) {
                            changes.unchanged += 1;
                        } else {
                            // The same slot, so its single-flight, session and store record
                            // stay one: a login in flight finishes where callers look.
                            changes.changed += 1;
                            changed.push((
                                s.clone(),
                                c.password.clone(),
                                lifetime,
                                Guard::new(upstream.max_logins, upstream.login_window),
                            ));
                        }
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
                table.by_record.insert(record, at);
                table
                    .by_gstin
                    .entry(upstream.name.clone())
                    .or_default()
                    .entry(gstin.clone())
                    .or_default()
                    .push(slot.clone());
                table.slots.push(slot);
            }
        }
        changes.removed = taken.iter().filter(|&&t| !t).count();
        // Only now that every credential was taken: a build that fails part-way (a reload
        // naming an upstream this process does not run) changes no slot it shares.
        for (slot, password, lifetime, guard) in changed {
            slot.change().change_credential(password, lifetime, guard);
        }
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

    /// The slots of `gstin` on the upstream named `upstream`.
    pub(super) fn of(&self, upstream: &str, gstin: &Gstin) -> Option<&[Arc<Slot>]> {
        self.by_gstin.get(upstream)?.get(gstin).map(Vec::as_slice)
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
    let credential = Credential::new(upstream.name.clone(), gstin.clone(), &c.username)
        .ok_or_else(|| "username is not a valid header value".to_owned())?;
    Ok(Arc::new(Slot::new(
        id,
        upstream.clone(),
        credential,
        SlotState::new(
            Guard::new(upstream.max_logins, upstream.login_window),
            c.password.clone(),
            session_lifetime,
        ),
    )))
}
