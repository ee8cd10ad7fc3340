//! The two seams of the session store, which every backend implements:
//!
//! * [`Records`]: where sealed records live (get, scan, commit a batch), the open alert
//!   episodes, and the idempotency records, which change only by an atomic compare-and-swap
//!   ([`KeySwap`]). The embedded file, Redis and memory each implement it.
//! * [`Coordination`]: how replicas sharing the records act as one (the login lease, the
//!   announcement of a record's new revision, the subscription to them). Redis implements it,
//!   and so does the memory backend's group, which lets the session manager's tests run
//!   several replicas in one process on a paused clock.
//!
//! Adding a backend is one file implementing these, plus its configuration section; nothing
//! outside `src/store/` names a backend.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::tasks::Tasks;

/// A boxed future: backends are trait objects, and store calls are rare next to requests.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Records as a backend holds them: `(name, sealed bytes)`.
pub type Rows = Vec<(String, Vec<u8>)>;

/// Why a backend could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend cannot be reached now (refused, timed out, or waiting before the next
    /// attempt).
    #[error("unreachable: {0}")]
    Unreachable(String),
    /// The backend answered with an error, or its storage failed.
    #[error("{0}")]
    Failed(String),
}

/// Something the replicas' announcements brought.
#[derive(Debug)]
pub enum Event {
    /// A replica released record `name`'s lease; the record is now at `revision` (the same
    /// as before if it wrote nothing).
    Revision {
        /// The record.
        name: String,
        /// Its revision.
        revision: u64,
    },
    /// The subscription was (re)established after the backend was unreachable: messages may
    /// have been missed.
    Reconnected,
}

/// A conditional write of an idempotency record: all of it happens atomically, or nothing.
#[derive(Debug)]
pub struct KeySwap {
    /// The record's name.
    pub name: String,
    /// The sealed bytes the record must hold now; `None`: it must not exist (or be expired).
    pub expected: Option<Vec<u8>>,
    /// The record's new sealed bytes; `None` deletes it.
    pub new: Option<Vec<u8>>,
    /// How long the new record lives.
    pub ttl: Duration,
    /// A new record is refused while this many live ones exist.
    pub limit: usize,
    /// The wall clock, in Unix milliseconds, against which expiries are read.
    pub now_ms: u64,
}

/// What a [`KeySwap`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Swapped {
    /// The record held what was expected and now holds the new bytes.
    Done,
    /// The record held something else: nothing was written.
    Changed,
    /// The record would be new, and `limit` live ones exist: nothing was written.
    Full,
}

/// A held login lease: only its holder can extend or release it.
#[derive(Debug)]
pub struct Lease {
    /// The backend's name for the lease.
    pub(super) key: String,
    /// The holder's random identity.
    pub(super) owner: String,
}

/// Where sealed records and alert episodes live.
pub trait Records: Send + Sync + 'static {
    /// Every record: `(name, sealed bytes)`.
    fn scan(&self) -> Pending<'_, Result<Rows, BackendError>>;

    /// One record's sealed bytes.
    fn get<'a>(&'a self, name: &'a str) -> Pending<'a, Result<Option<Vec<u8>>, BackendError>>;

    /// Writes (`Some`) or deletes (`None`) records, all or none.
    fn commit(&self, rows: Vec<(String, Option<Vec<u8>>)>)
        -> Pending<'_, Result<(), BackendError>>;

    /// The open alert episodes.
    fn episodes(&self) -> Pending<'_, Result<Vec<String>, BackendError>>;

    /// Opens (`true`) or closes an alert episode; returns whether this call changed it.
    fn set_episode<'a>(
        &'a self,
        key: &'a str,
        open: bool,
    ) -> Pending<'a, Result<bool, BackendError>>;

    /// Idempotency record `name`'s sealed bytes, unless it is missing or expired at `now_ms`.
    fn get_key<'a>(
        &'a self,
        name: &'a str,
        now_ms: u64,
    ) -> Pending<'a, Result<Option<Vec<u8>>, BackendError>>;

    /// Writes an idempotency record only if it holds what the caller last saw.
    fn swap_key(&self, swap: KeySwap) -> Pending<'_, Result<Swapped, BackendError>>;
}

/// How replicas sharing the records coordinate their logins.
pub trait Coordination: Send + Sync + 'static {
    /// Takes record `name`'s login lease for `ttl`, if no replica holds it.
    fn lease<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> Pending<'a, Result<Option<Lease>, BackendError>>;

    /// Extends a held lease to `ttl` from now; false if it was lost (it expired).
    fn extend<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> Pending<'a, Result<bool, BackendError>>;

    /// Releases a lease this holder still has.
    fn release<'a>(&'a self, lease: &'a Lease) -> Pending<'a, Result<(), BackendError>>;

    /// Announces that record `name`'s lease is free and the record at `revision`.
    fn announce<'a>(
        &'a self,
        name: &'a str,
        revision: u64,
    ) -> Pending<'a, Result<(), BackendError>>;

    /// The other replicas' announcements, from a task on `tasks` that keeps subscribing
    /// until shutdown.
    fn subscribe(&self, tasks: &Tasks) -> mpsc::UnboundedReceiver<Event>;

    /// Checks that the backend answers.
    fn ping(&self) -> Pending<'_, Result<(), BackendError>>;

    /// Whether the last operation reached the backend.
    fn is_up(&self) -> bool;
}
