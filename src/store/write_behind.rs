//! The store's write-behind: [`Store::put`] and [`Store::delete`] only queue a record's new
//! contents (the latest per record wins) and wake the writer task, which seals each batch and
//! commits it; [`Store::flush`] commits now, for a login that must be recorded before it goes
//! on, and at shutdown. A change under a slot's lock never waits for the disk or the network.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use zeroize::Zeroizing;

use super::{count, Record, Store};

/// After a failed commit, the writer waits this long before trying the batch again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// A record's new contents.
#[derive(Clone)]
pub(super) enum Entry {
    /// A slot's state.
    Session(Box<Record>),
    /// A drop-in session, encoded by its owner (`crate::dropin`).
    Dropin(Arc<Zeroizing<Vec<u8>>>),
}

impl Entry {
    fn encode(&self) -> Zeroizing<Vec<u8>> {
        match self {
            Entry::Session(record) => record.encode(),
            Entry::Dropin(bytes) => Zeroizing::new(bytes.to_vec()),
        }
    }
}

/// Changes not yet in the store.
#[derive(Default)]
pub(super) struct Pending {
    /// Queued: record name → new contents, or `None` to delete it.
    changes: HashMap<Arc<str>, Option<Entry>>,
    /// Taken by the commit under way.
    committing: usize,
}

impl Store {
    /// Queues `record` as the new state of `name`; never waits for the disk.
    pub fn put(&self, name: &Arc<str>, record: Record) {
        self.queue(name.clone(), Some(Entry::Session(Box::new(record))));
    }

    /// Queues the deletion of `name`.
    pub fn delete(&self, name: &str) {
        self.queue(name.into(), None);
    }

    pub(super) fn queue(&self, name: Arc<str>, change: Option<Entry>) {
        let mut pending = self.lock_pending();
        pending.changes.insert(name, change);
        self.set_pending_gauge(&pending);
        drop(pending);
        self.wake.notify_one();
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Only whole map operations happen under this lock; a panic cannot leave it torn.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the pending gauge; called under the pending lock, so it never shows a stale count.
    fn set_pending_gauge(&self, pending: &Pending) {
        let n = pending.changes.len() + pending.committing;
        self.metrics
            .store_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Starts the writer task: it commits queued changes as they come, until shutdown. A
    /// commit under way is finished first (a dropped one could lose its batch); what is
    /// queued after it is left to the last [`Store::flush`].
    pub fn spawn_writer(self: &Arc<Self>) {
        let store = self.clone();
        self.tasks.spawn(async move {
            loop {
                tokio::select! {
                    () = store.tasks.stopped() => return,
                    () = store.wake.notified() => {}
                }
                if !store.flush().await {
                    tokio::select! {
                        () = store.tasks.stopped() => return,
                        () = tokio::time::sleep(RETRY_AFTER) => {}
                    }
                }
            }
        });
    }

    /// Commits every queued change now; on shutdown, after the last change. Returns whether
    /// the commit succeeded (a failed batch is queued again unless newer changes replaced it).
    pub async fn flush(&self) -> bool {
        let _order = self.committing.lock().await;
        let batch = {
            let mut pending = self.lock_pending();
            let batch = std::mem::take(&mut pending.changes);
            pending.committing = batch.len();
            self.set_pending_gauge(&pending);
            batch
        };
        if batch.is_empty() {
            return true;
        }
        let names: Vec<(Arc<str>, Option<Entry>)> = batch.into_iter().collect();
        let result = self.commit(names.clone()).await;
        let ok = result.is_ok();
        let label = if ok { "ok" } else { "error" };
        for (_, change) in &names {
            let op = if change.is_some() { "write" } else { "delete" };
            count(&self.metrics, op, label);
        }
        self.set_up_gauge();
        if ok {
            self.resealed(names.iter().map(|(name, _)| &**name));
        }
        let mut pending = self.lock_pending();
        pending.committing = 0;
        if let Err(e) = &result {
            tracing::error!(store = %self.place, error = %e, records = names.len(),
                "cannot write sessions to the store; retrying");
            for (name, change) in names {
                pending.changes.entry(name).or_insert(change);
            }
            self.wake.notify_one();
        }
        self.set_pending_gauge(&pending);
        ok
    }

    /// Seals a batch and writes it.
    async fn commit(&self, work: Vec<(Arc<str>, Option<Entry>)>) -> Result<(), String> {
        let sealer = self.sealer.clone();
        let seal = move || {
            let mut rows = Vec::with_capacity(work.len());
            for (name, change) in &work {
                let value = match change {
                    Some(record) => Some(
                        sealer
                            .seal(name.as_bytes(), &record.encode())
                            .map_err(|_| "sealing failed".to_string())?,
                    ),
                    None => None,
                };
                rows.push((name.to_string(), value));
            }
            Ok::<_, String>(rows)
        };
        self.records
            .commit(seal()?)
            .await
            .map_err(|e| e.to_string())
    }
}
