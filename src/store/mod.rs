//! The session store: every slot's durable state, sealed with AES-256-GCM, either in one
//! crash-safe redb file (the embedded backend: a restart, clean or not, resumes sessions
//! without a login or an OTP), in Redis (shared by replicas, which then act as one gateway),
//! or in memory.
//!
//! * `backend`: the two seams every backend implements, [`Records`] and [`Coordination`].
//! * `file`: the redb file — open (moving an unreadable one aside), read all, commit a batch.
//! * `redis`: the Redis keys, the login lease and the revisions channel.
//! * `memory`: records in a map, and a group of replicas in one process (for tests).
//! * `seal`: AES-256-GCM under the current key, opening with the previous one too.
//! * `key`: the keys, from the configuration or a generated `0600` key file.
//! * `record`: what is kept of a slot and its byte layout.
//! * `dropin`: the drop-in sessions' records beside the slots'.
//! * `idempotency`: the `Idempotency-Key` records, changed only by compare-and-swap.
//! * `seed`: records made outside a gateway, as it writes them (the scale benchmark's sessions).
//! * `write_behind`: [`Store::put`] only queues a record's new contents (the latest per record wins)
//!   and wakes the writer task, which seals each batch and commits it; a login that must be
//!   recorded before it goes on awaits [`Store::flush`].
//!
//! Here: [`Store`] over any backend: opening it, reading every record at start-up (opening
//! them, resealing those under the previous key), the shared store's reads, leases,
//! announcements and health check.

mod backend;
mod dropin;
mod file;
mod idempotency;
mod key;
mod memory;
mod record;
mod redis;
mod seal;
pub mod seed;
mod write_behind;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use secrecy::SecretString;
use tokio::sync::Notify;
use zeroize::Zeroizing;

use crate::metrics::{Metrics, StoreLabels};
use crate::tasks::Tasks;

pub use backend::{BackendError, Coordination, Event, Lease, Records};
pub use dropin::DROPIN_PREFIX;
pub use file::check_place;
pub use idempotency::{wall_ms, KeyWritten, IDEMPOTENCY_PREFIX};
pub use memory::Memory;
pub use record::{DecodeError, LockoutKind, Record, StoredGuard, StoredLockout, StoredSession};

use self::redis::Redis;
use seal::{Opened, Sealer};
use write_behind::{Entry, Pending};

/// Records opened between two yields to the scheduler when a serving replica reads them all.
const OPEN_CHUNK: usize = 1024;

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
    /// The store file or its key file is a symbolic link.
    #[error("store {0}: is a symbolic link, which gstgate does not follow for the store file or its key file (set store.path to the real location)")]
    Symlink(PathBuf),
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
    /// The Redis URL or CA file is unusable.
    #[error("store.redis_url: {0}")]
    RedisUrl(String),
}

/// A record read from the store.
pub struct Loaded {
    /// The slot's state.
    pub record: Record,
    /// Opened under the previous key: rewrite it under the current one.
    pub rewrite: bool,
}

/// How to reach the shared store.
pub struct RedisSettings<'a> {
    /// `redis://` or `rediss://` URL, credentials included.
    pub url: &'a str,
    /// PEM of the CA that signs the server's certificate, for `rediss://` with a private CA.
    pub ca_pem: Option<Vec<u8>>,
    /// Namespace of the keys.
    pub prefix: &'a str,
}

/// The session store.
pub struct Store {
    /// Where the store is, for logs: the file, or the Redis address without credentials.
    place: String,
    /// Where the sealed records live.
    records: Arc<dyn Records>,
    /// How the replicas sharing the records coordinate; `None` when no other replica does.
    coordination: Option<Arc<dyn Coordination>>,
    sealer: Arc<Sealer>,
    metrics: Arc<Metrics>,
    pending: Mutex<Pending>,
    wake: Notify,
    /// Held while a batch is taken and committed, so batches reach the store in order.
    committing: tokio::sync::Mutex<()>,
    /// The gateway's tasks, where the store's own (writer, health check, subscription) run.
    tasks: Tasks,
    /// The drop-in records read when the store was opened, opened, until taken.
    dropins_at_open: Mutex<Vec<(String, Zeroizing<Vec<u8>>)>>,
    /// The records read at open that only the previous key opened, until each is written
    /// again or deleted: what tells the operator when the previous key can go.
    resealing: Mutex<Resealing>,
}

/// The progress of a key rotation at start-up.
#[derive(Default)]
struct Resealing {
    /// How many records opened under the previous key.
    found: usize,
    /// Those not yet written under the current key (or deleted).
    left: HashSet<String>,
}

/// The record name of a slot. Upstream names and GSTINs contain no `:`, so the name is
/// unambiguous whatever the user name holds.
pub fn record_name(upstream: &str, gstin: &str, user: &str) -> String {
    format!("{upstream}:{gstin}:{user}")
}

impl Store {
    /// Opens the embedded store at `path` (moving an unreadable file aside) and reads every
    /// record that opens under the keys; a record that does not is skipped with a warning.
    /// Blocks on the disk: call it at start-up. The store's tasks will run on `tasks`.
    pub fn open(
        path: &Path,
        encryption_key: Option<&SecretString>,
        previous_key: Option<&SecretString>,
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> Result<(Arc<Self>, HashMap<String, Loaded>), StoreError> {
        // The directory first: a generated key file is written there before the store.
        file::create_dir(path)?;
        let sealer = key::sealer(path, encryption_key, previous_key)?;
        let db = file::open(path)?;
        let rows = match file::read_all(&db) {
            Ok(rows) => rows,
            Err(e) => {
                count(&metrics, "load", "error");
                tracing::error!(store = %path.display(), error = %e, "cannot read the session store; starting without stored sessions");
                Vec::new()
            }
        };
        let store = Self::new(
            path.display().to_string(),
            (Arc::new(file::File::new(db)), None),
            sealer,
            metrics,
            tasks,
        );
        let loaded = store.open_rows(rows, true);
        store.set_up_gauge();
        tracing::info!(store = %store.place, records = loaded.len(), "session store opened");
        Ok((store, loaded))
    }

    /// Connects to the shared Redis store and reads every record. Redis being unreachable is
    /// not an error: the gateway starts without stored sessions, logs in within its share of
    /// the login allowance, and joins the group when Redis answers. The store's tasks will
    /// run on `tasks`.
    pub async fn open_redis(
        settings: RedisSettings<'_>,
        encryption_key: &SecretString,
        previous_key: Option<&SecretString>,
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> Result<(Arc<Self>, HashMap<String, Loaded>), StoreError> {
        let sealer = key::configured(encryption_key, previous_key)?;
        let redis = Arc::new(
            Redis::new(settings.url, settings.ca_pem, settings.prefix)
                .map_err(|e| StoreError::RedisUrl(e.to_string()))?,
        );
        let store = Self::new(
            redis_place(settings.url),
            (redis.clone(), Some(redis)),
            sealer,
            metrics,
            tasks,
        );
        let loaded = match store.records.scan().await {
            Ok(rows) => store.open_rows(rows, true),
            Err(e) => {
                count(&store.metrics, "load", "error");
                tracing::error!(store = %store.place, error = %e,
                    "cannot read the shared session store; starting without stored sessions");
                HashMap::new()
            }
        };
        store.set_up_gauge();
        tracing::info!(store = %store.place, records = loaded.len(), "shared session store opened");
        Ok((store, loaded))
    }

    /// A store in `memory`: this process's own (`store.backend = "memory"`), or, when
    /// `shared`, one that several session managers in one process share as replicas share
    /// Redis, leases and announcements included. The store's tasks will run on `tasks`.
    pub fn in_memory(
        memory: &Memory,
        shared: bool,
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> Arc<Self> {
        let sealer = memory.sealer();
        let memory = Arc::new(memory.clone());
        let coordination: Option<Arc<dyn Coordination>> =
            if shared { Some(memory.clone()) } else { None };
        let store = Self::new(
            "memory".into(),
            (memory, coordination),
            sealer,
            metrics,
            tasks,
        );
        store.set_up_gauge();
        store
    }

    fn new(
        place: String,
        (records, coordination): (Arc<dyn Records>, Option<Arc<dyn Coordination>>),
        sealer: Sealer,
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> Arc<Self> {
        Arc::new(Self {
            place,
            records,
            coordination,
            sealer: Arc::new(sealer),
            metrics,
            pending: Mutex::new(Pending::default()),
            wake: Notify::new(),
            committing: tokio::sync::Mutex::new(()),
            tasks,
            dropins_at_open: Mutex::new(Vec::new()),
            resealing: Mutex::new(Resealing::default()),
        })
    }

    /// Opens sealed rows; a row that does not open is skipped with a warning. The drop-in
    /// records among them are kept for `take_dropins_at_open` when `at_open`.
    fn open_rows(&self, rows: Vec<(String, Vec<u8>)>, at_open: bool) -> HashMap<String, Loaded> {
        let mut loaded = HashMap::new();
        let mut dropins = Vec::new();
        let mut stale = HashSet::new();
        for (name, sealed) in rows {
            if name.starts_with(DROPIN_PREFIX) {
                if at_open {
                    if let Some((plain, how)) = self.open_dropin(&name, &sealed) {
                        if how == Opened::Previous {
                            // Nothing else rewrites a drop-in record until its client logs
                            // in again, which may be after the previous key is gone.
                            self.put_dropin(&Arc::from(name.as_str()), plain.clone());
                            stale.insert(name.clone());
                        }
                        dropins.push((name, plain));
                    }
                }
                continue;
            }
            if let Some(l) = self.open_row(&name, &sealed, "load") {
                if l.rewrite {
                    stale.insert(name.clone());
                }
                loaded.insert(name, l);
            }
        }
        if at_open {
            *self
                .dropins_at_open
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = dropins;
            self.start_resealing(stale);
        }
        loaded
    }

    /// Reports, once at open, how many records only the previous key opened; they are
    /// re-sealed as the slots and drop-in sessions taking them up write them again.
    fn start_resealing(&self, stale: HashSet<String>) {
        if !self.sealer.has_previous() {
            return;
        }
        if stale.is_empty() {
            tracing::info!(store = %self.place,
                "no stored record is sealed under store.previous_encryption_key; it can be removed from the configuration");
            return;
        }
        tracing::info!(store = %self.place, records = stale.len(),
            "stored records opened under store.previous_encryption_key; re-sealing them under store.encryption_key");
        *self.resealing.lock().unwrap_or_else(|p| p.into_inner()) = Resealing {
            found: stale.len(),
            left: stale,
        };
    }

    /// Notes that `names` were written under the current key (or deleted), and says so once
    /// the last record opened under the previous key is.
    fn resealed<'a>(&self, names: impl Iterator<Item = &'a str>) {
        let mut resealing = self.resealing.lock().unwrap_or_else(|p| p.into_inner());
        if resealing.left.is_empty() {
            return;
        }
        for name in names {
            resealing.left.remove(name);
        }
        if resealing.left.is_empty() {
            tracing::info!(store = %self.place, resealed = resealing.found,
                "re-sealed every stored record opened under store.previous_encryption_key under store.encryption_key; store.previous_encryption_key can be removed from the configuration");
        }
    }

    fn open_row(&self, name: &str, sealed: &[u8], op: &'static str) -> Option<Loaded> {
        let opened = self
            .sealer
            .open(name.as_bytes(), sealed)
            .map_err(|e| (e.to_string(), false))
            .and_then(|(plain, how)| {
                Record::decode(&plain)
                    .map(|record| (record, how))
                    .map_err(|e| (e.to_string(), matches!(e, DecodeError::Newer(_))))
            });
        match opened {
            Ok((record, how)) => {
                count(&self.metrics, op, "ok");
                Some(Loaded {
                    record,
                    rewrite: how == Opened::Previous,
                })
            }
            Err((reason, true)) => {
                count(&self.metrics, op, "error");
                tracing::warn!(store = %self.place, record = %name, reason = %reason,
                    "skipping a stored session a newer gstgate wrote (a rollback, or a rolling update under way); it will log in afresh: see docs/upgrading.md");
                None
            }
            Err((reason, false)) => {
                count(&self.metrics, op, "error");
                tracing::warn!(store = %self.place, record = %name, reason = %reason,
                    "skipping a stored session that does not open (encryption key changed without previous_encryption_key?); it will log in afresh");
                None
            }
        }
    }

    /// Where the store is, for logs.
    pub fn place(&self) -> &str {
        &self.place
    }

    /// Whether other replicas share this store: logins then take the group's lease.
    pub fn is_shared(&self) -> bool {
        self.coordination.is_some()
    }

    /// Sets `gstgate_store_up` from the last operation's outcome.
    fn set_up_gauge(&self) {
        let up = self.coordination.as_ref().is_none_or(|c| c.is_up());
        self.metrics.store_up.set(i64::from(up));
    }

    /// Counts a shared-store operation and keeps `gstgate_store_up` current.
    fn outcome<T>(&self, op: &'static str, r: Result<T, BackendError>) -> Result<T, BackendError> {
        count(&self.metrics, op, if r.is_ok() { "ok" } else { "error" });
        self.set_up_gauge();
        r
    }

    /// Reads record `name` afresh from the shared store (`Ok(None)`: there is none, or it
    /// does not open).
    pub async fn fetch(&self, name: &str) -> Result<Option<Loaded>, BackendError> {
        if self.coordination.is_none() {
            return Ok(None);
        }
        let bytes = self.outcome("get", self.records.get(name).await)?;
        Ok(bytes.and_then(|b| self.open_row(name, &b, "get")))
    }

    /// Every record of the shared store, read afresh. A serving replica calls it (after an
    /// outage): the records are opened `OPEN_CHUNK` at a time, letting the requests queued
    /// behind this task run in between, instead of one pass over 100,000 of them (≈ 150 ms
    /// of AES-GCM and decoding) holding up the worker thread it runs on.
    pub async fn fetch_all(&self) -> Result<HashMap<String, Loaded>, BackendError> {
        if self.coordination.is_none() {
            return Ok(HashMap::new());
        }
        let rows = self.outcome("load", self.records.scan().await)?;
        let mut loaded = HashMap::with_capacity(rows.len());
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<_> = rows.by_ref().take(OPEN_CHUNK).collect();
            loaded.extend(self.open_rows(chunk, false));
            tokio::task::yield_now().await;
        }
        Ok(loaded)
    }

    /// Takes record `name`'s login lease for `ttl`; `Ok(None)` while another replica holds it.
    pub async fn lease(&self, name: &str, ttl: Duration) -> Result<Option<Lease>, BackendError> {
        let Some(group) = &self.coordination else {
            return Err(BackendError::Failed("not a shared store".into()));
        };
        self.outcome("lease", group.lease(name, ttl).await)
    }

    /// Keeps a held lease for `ttl` more; false if it has been lost.
    pub async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, BackendError> {
        let Some(group) = &self.coordination else {
            return Ok(false);
        };
        self.outcome("lease", group.extend(lease, ttl).await)
    }

    /// Releases a held lease, then announces the record's `revision` to the group.
    pub async fn release(&self, name: &str, lease: &Lease, revision: u64) {
        let Some(group) = &self.coordination else {
            return;
        };
        let released = group.release(lease).await;
        if let Err(e) = self.outcome("lease", released) {
            tracing::warn!(store = %self.place, record = %name, error = %e,
                "cannot release the login lease; it expires by itself");
        }
        if let Err(e) = self.outcome("publish", group.announce(name, revision).await) {
            tracing::warn!(store = %self.place, record = %name, error = %e,
                "cannot announce the new session; other replicas pick it up when they need it");
        }
    }

    /// The other replicas' announcements; `None` for a store nobody shares.
    pub fn subscribe(&self) -> Option<tokio::sync::mpsc::UnboundedReceiver<Event>> {
        self.coordination
            .as_ref()
            .map(|group| group.subscribe(&self.tasks))
    }

    /// The open alert episodes (the group's, for a shared store), read at start-up so that a
    /// restart does not send an alert again for an episode already sent.
    pub async fn episodes(&self) -> Vec<String> {
        let read = self.records.episodes().await;
        read.unwrap_or_else(|e| {
            tracing::warn!(store = %self.place, error = %e, "cannot read the open alert episodes");
            Vec::new()
        })
    }

    /// Opens (`true`) or closes alert episode `key`. Returns whether this call changed it: an
    /// episode another replica already opened is not this replica's to send. A store that
    /// cannot be reached answers `true`: an alert sent twice beats one never sent.
    pub async fn set_episode(&self, key: &str, open: bool) -> bool {
        let op = if open {
            "episode_open"
        } else {
            "episode_close"
        };
        let done = self.records.set_episode(key, open).await;
        count(&self.metrics, op, if done.is_ok() { "ok" } else { "error" });
        done.unwrap_or_else(|e| {
            tracing::warn!(store = %self.place, error = %e, "cannot record an alert episode");
            true
        })
    }

    /// For a shared store, starts a task that checks every `every` that Redis answers, so
    /// that `gstgate_store_up` and `/readyz` tell the truth when no session changes (the
    /// request path never touches Redis). It runs until shutdown.
    pub fn spawn_health(self: &Arc<Self>, every: Duration) {
        let Some(group) = self.coordination.clone() else {
            return;
        };
        let store = self.clone();
        self.tasks.spawn_until_shutdown(async move {
            let mut was_up = true;
            loop {
                tokio::time::sleep(every).await;
                let up = group.ping().await.is_ok();
                store.set_up_gauge();
                if up != was_up {
                    if up {
                        tracing::info!(store = %store.place, "the shared store answers again");
                    } else {
                        tracing::error!(store = %store.place,
                            "the shared store is unreachable: serving the sessions held in memory, logging in within this replica's share");
                    }
                    was_up = up;
                }
            }
        });
    }
}

fn count(metrics: &Metrics, op: &'static str, result: &'static str) {
    metrics
        .store_operations
        .get_or_create(&StoreLabels { op, result })
        .inc();
}

/// A Redis URL without its user name and password, for logs.
fn redis_place(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return "redis".into();
    };
    let host_end = rest.find('/').unwrap_or(rest.len());
    let host = &rest[..host_end];
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    format!("{scheme}://{host}")
}

#[cfg(test)]
mod tests {
    use super::redis_place;

    #[test]
    fn the_logged_redis_address_has_no_credentials() {
        assert_eq!(
            redis_place("rediss://gw:s3cret@redis.internal:6380/2"),
            "rediss://redis.internal:6380"
        );
        assert_eq!(
            redis_place("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(redis_place("redis://:p@w@h:1"), "redis://h:1");
        assert_eq!(redis_place("nonsense"), "redis");
    }
}
