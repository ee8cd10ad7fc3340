//! Start-up with a store: every slot takes up its stored record, still-valid sessions are
//! scheduled for their proactive refresh as after a login, and from then on every change of
//! a slot is written through.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Session, Sessions, Slot};
use crate::store::{Loaded, Store};

impl Sessions {
    /// Attaches `store` to every slot and resumes the sessions in `loaded` (read from it at
    /// start-up, before serving). Records of credentials no longer configured are deleted.
    /// Returns how many slots got a usable session back.
    pub fn resume(&self, store: &Arc<Store>, mut loaded: HashMap<String, Loaded>) -> usize {
        let mut resumed = 0;
        // Slots a reload adds write through to it too.
        let _ = self.store.set(store.clone());
        for slot in &self.table().slots {
            let name = slot.record_name();
            let session = {
                let mut change = slot.change();
                change.attach(store.clone(), name.as_str().into());
                let Some(Loaded { record, rewrite }) = loaded.remove(&name) else {
                    continue;
                };
                change.resume(
                    record,
                    slot.credential.whose(),
                    slot.otp_sessions(),
                    rewrite,
                )
            };
            let Some(session) = session else {
                continue;
            };
            resumed += 1;
            self.schedule_taken_up(slot, &session);
            tracing::info!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                user = %slot.credential.username, generation = session.generation,
                expires_in_secs = session.deadline.saturating_duration_since(crate::clock::now()).as_secs(),
                "session resumed from the store");
        }
        // A shared store's records may belong to replicas whose configuration is newer.
        if !store.is_shared() {
            for name in loaded.into_keys() {
                tracing::info!(record = %name, "deleting a stored session of a credential no longer configured");
                store.delete(&name);
            }
        }
        resumed
    }

    /// Schedules the proactive refresh of a session that came from the store rather than
    /// from a login of this process, by when it was issued.
    pub(super) fn schedule_taken_up(&self, slot: &Slot, session: &Session) {
        let now = crate::clock::now();
        let age = crate::clock::wall()
            .duration_since(session.issued_at)
            .unwrap_or_default();
        let sent = now.checked_sub(age).unwrap_or(now);
        self.scheduler.schedule(
            slot.id,
            session.generation,
            self.refresh_at(slot, session, sent),
        );
    }
}
