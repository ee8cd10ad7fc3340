//! The embedded session store: every slot's durable state, sealed with AES-256-GCM, in one
//! crash-safe redb file, so that a restart (clean or not) resumes sessions without a login or
//! an OTP.
//!
//! * `file`: the redb file — open (moving an unreadable one aside), read all, commit a batch.
//! * `seal`: AES-256-GCM under the current key, opening with the previous one too.
//! * `key`: the keys, from the configuration or a generated `0600` key file.
//! * `record`: what is kept of a slot and its byte layout.
//!
//! Here: [`Store`], whose [`Store::put`] only queues a slot's new state in a map (the latest
//! state per slot wins) and wakes a writer task; the writer seals the batch and commits it on
//! the blocking pool. So a change under a slot's lock never waits for the disk.

mod file;
mod key;
mod record;
mod seal;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::Notify;

use crate::metrics::{Metrics, StoreLabels};

pub use record::{Record, StoredSession};

use seal::{Opened, Sealer};

/// After a failed commit, the writer waits this long before trying the batch again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Why the store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A configured key is not base64 of 32 bytes.
    #[error("{origin}: not base64 of 32 bytes")]
    Key {
        /// The setting or file the key came from.
        origin: String,
    },
    /// The generated key file could not be read or written.
    #[error("store key file {path}: {source}")]
    KeyFile {
        /// The key file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file or directory of the store could not be created or moved.
    #[error("store {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another process has the store open.
    #[error("store {0}: already open in another process (two gateways cannot share one store file; give each its own store.path)")]
    InUse(PathBuf),
    /// The database could not be created.
    #[error("store {path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// redb's error.
        source: file::DbError,
    },
}

/// A record read at start-up.
pub struct Loaded {
    /// The slot's state.
    pub record: Record,
    /// Opened under the previous key: rewrite it under the current one.
    pub rewrite: bool,
}

/// Changes not yet in the file.
#[derive(Default)]
struct Pending {
    /// Queued: record name → new record, or `None` to delete it.
    changes: HashMap<Arc<str>, Option<Record>>,
    /// Taken by the commit under way.
    committing: usize,
}

/// The embedded store.
pub struct Store {
    path: PathBuf,
    db: Arc<redb::Database>,
    sealer: Arc<Sealer>,
    metrics: Arc<Metrics>,
    pending: Mutex<Pending>,
    wake: Notify,
    /// Held while a batch is taken and committed, so batches reach the file in order.
    committing: tokio::sync::Mutex<()>,
}

/// The record name of a slot. Upstream names and GSTINs contain no `:`, so the name is
/// unambiguous whatever the user name holds.
pub fn record_name(upstream: &str, gstin: &str, user: &str) -> String {
    format!("{upstream}:{gstin}:{user}")
}

impl Store {
    /// Opens the store at `path` (moving an unreadable file aside) and reads every record
    /// that opens under the keys; a record that does not is skipped with a warning. Blocks on
    /// the disk: call it at start-up.
    pub fn open(
        path: &Path,
        encryption_key: Option<&SecretString>,
        previous_key: Option<&SecretString>,
        metrics: Arc<Metrics>,
    ) -> Result<(Arc<Self>, HashMap<String, Loaded>), StoreError> {
        let sealer = key::sealer(path, encryption_key, previous_key)?;
        let db = file::open(path)?;
        let count = |op: &'static str, result: &'static str| {
            metrics
                .store_operations
                .get_or_create(&StoreLabels { op, result })
                .inc();
        };
        let rows = match file::read_all(&db) {
            Ok(rows) => rows,
            Err(e) => {
                count("load", "error");
                tracing::error!(store = %path.display(), error = %e, "cannot read the session store; starting without stored sessions");
                Vec::new()
            }
        };
        let mut loaded = HashMap::new();
        for (name, sealed) in rows {
            let opened = sealer
                .open(name.as_bytes(), &sealed)
                .map_err(|e| e.to_string())
                .and_then(|(plain, how)| {
                    record::Record::decode(&plain)
                        .map(|record| (record, how))
                        .map_err(|e| e.to_string())
                });
            match opened {
                Ok((record, how)) => {
                    count("load", "ok");
                    let rewrite = how == Opened::Previous;
                    loaded.insert(name, Loaded { record, rewrite });
                }
                Err(reason) => {
                    count("load", "error");
                    tracing::warn!(store = %path.display(), record = %name, reason = %reason,
                        "skipping a stored session that does not open (encryption key changed without previous_encryption_key?); it will log in afresh");
                }
            }
        }
        tracing::info!(store = %path.display(), records = loaded.len(), "session store opened");
        let store = Arc::new(Self {
            path: path.to_owned(),
            db: Arc::new(db),
            sealer: Arc::new(sealer),
            metrics,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            committing: tokio::sync::Mutex::new(()),
        });
        Ok((store, loaded))
    }

    /// The store file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queues `record` as the new state of `name`; never waits for the disk.
    pub fn put(&self, name: &Arc<str>, record: Record) {
        self.queue(name.clone(), Some(record));
    }

    /// Queues the deletion of `name`.
    pub fn delete(&self, name: &str) {
        self.queue(name.into(), None);
    }

    fn queue(&self, name: Arc<str>, change: Option<Record>) {
        let mut pending = self.lock_pending();
        pending.changes.insert(name, change);
        self.show(&pending);
        drop(pending);
        self.wake.notify_one();
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Only whole map operations happen under this lock; a panic cannot leave it torn.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the pending gauge; called under the pending lock, so it never shows a stale count.
    fn show(&self, pending: &Pending) {
        let n = pending.changes.len() + pending.committing;
        self.metrics
            .store_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Starts the writer task: it commits queued changes as they come.
    pub fn spawn_writer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            loop {
                store.wake.notified().await;
                if !store.flush().await {
                    tokio::time::sleep(RETRY_AFTER).await;
                }
            }
        })
    }

    /// Commits every queued change now; on shutdown, after the last change. Returns whether
    /// the commit succeeded (a failed batch is queued again unless newer changes replaced it).
    pub async fn flush(&self) -> bool {
        let _order = self.committing.lock().await;
        let batch = {
            let mut pending = self.lock_pending();
            let batch = std::mem::take(&mut pending.changes);
            pending.committing = batch.len();
            self.show(&pending);
            batch
        };
        if batch.is_empty() {
            return true;
        }
        let db = self.db.clone();
        let sealer = self.sealer.clone();
        let names: Vec<(Arc<str>, Option<Record>)> = batch.into_iter().collect();
        let work = names.clone();
        let result = tokio::task::spawn_blocking(move || {
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
            file::commit(&db, &rows).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        let ok = result.is_ok();
        let label = if ok { "ok" } else { "error" };
        for (_, change) in &names {
            let op = if change.is_some() { "write" } else { "delete" };
            self.metrics
                .store_operations
                .get_or_create(&StoreLabels { op, result: label })
                .inc();
        }
        let mut pending = self.lock_pending();
        pending.committing = 0;
        if let Err(e) = &result {
            tracing::error!(store = %self.path.display(), error = %e, records = names.len(),
                "cannot write sessions to the store; retrying");
            for (name, change) in names {
                pending.changes.entry(name).or_insert(change);
            }
            self.wake.notify_one();
        }
        self.show(&pending);
        ok
    }
}
