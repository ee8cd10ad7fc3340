//! The memory backend: records in a map, gone when the process ends (`store.backend =
//! "memory"`, for tests and throwaway sandboxes), and a group of replicas in one process
//! (`Group`): one memory store that several session managers share, with leases and
//! announcements as Redis gives them. The session manager's tests run replicas on it on a
//! paused clock, and can make it unreachable.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use zeroize::Zeroizing;

use super::backend::{
    BackendError, Coordination, Event, KeySwap, Lease, Pending, Records, Rows, Swapped,
};
use super::seal::{Sealer, KEY_LEN};
use crate::tasks::Tasks;

/// What a memory store holds.
#[derive(Default)]
struct Held {
    records: HashMap<String, Vec<u8>>,
    episodes: HashSet<String>,
    /// Lease name → (holder, until).
    leases: HashMap<String, (String, Instant)>,
    /// The subscribers' channels.
    subscribers: Vec<mpsc::UnboundedSender<Event>>,
    /// Idempotency record name → (sealed bytes, expiry in Unix milliseconds).
    keys: HashMap<String, (Vec<u8>, u64)>,
}

/// A memory store; clones share it.
#[derive(Clone)]
pub struct Memory {
    held: Arc<Mutex<Held>>,
    /// While true, every operation fails as an unreachable Redis does.
    down: Arc<AtomicBool>,
    /// Numbers the lease holders.
    holders: Arc<AtomicU64>,
    /// The records' sealing key: random, since the records never outlive the process, and
    /// shared by every store on this memory, which must open each other's records.
    key: Arc<Zeroizing<[u8; KEY_LEN]>>,
}

impl Default for Memory {
    fn default() -> Self {
        Self {
            held: Arc::default(),
            down: Arc::default(),
            holders: Arc::default(),
            key: Arc::new(super::key::random_key()),
        }
    }
}

impl Memory {
    /// The same memory seen by a gateway with another sealing key (as during a key
    /// rotation): it cannot open the records of this one (tests only).
    #[cfg(test)]
    pub fn with_another_key(&self) -> Self {
        Self {
            key: Arc::new(super::key::random_key()),
            ..self.clone()
        }
    }

    /// The sealer of this memory's records.
    pub(super) fn sealer(&self) -> Sealer {
        Sealer::new(&self.key, None)
    }

    fn held(&self) -> Result<MutexGuard<'_, Held>, BackendError> {
        if self.down.load(Ordering::Relaxed) {
            return Err(BackendError::Unreachable(
                "the memory store is set down".into(),
            ));
        }
        // Whole map operations only happen under this lock; a panic cannot leave it torn.
        Ok(self.held.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Makes every operation fail as an unreachable store does (`down`), or work again; on
    /// the way back up, subscribers hear that they may have missed announcements.
    #[cfg(test)]
    pub fn set_down(&self, down: bool) {
        let was = self.down.swap(down, Ordering::Relaxed);
        if was && !down {
            let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            held.subscribers
                .retain(|tx| tx.send(Event::Reconnected).is_ok());
        }
    }
}

/// An answer now, as a backend future.
fn ready<T: Send + 'static>(
    value: Result<T, BackendError>,
) -> Pending<'static, Result<T, BackendError>> {
    Box::pin(std::future::ready(value))
}

impl Records for Memory {
    fn scan(&self) -> Pending<'_, Result<Rows, BackendError>> {
        ready(self.held().map(|h| {
            h.records
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        }))
    }

    fn get<'a>(&'a self, name: &'a str) -> Pending<'a, Result<Option<Vec<u8>>, BackendError>> {
        ready(self.held().map(|h| h.records.get(name).cloned()))
    }

    fn commit(
        &self,
        rows: Vec<(String, Option<Vec<u8>>)>,
    ) -> Pending<'_, Result<(), BackendError>> {
        ready(self.held().map(|mut h| {
            for (name, value) in rows {
                match value {
                    Some(v) => h.records.insert(name, v),
                    None => h.records.remove(&name),
                };
            }
        }))
    }

    fn episodes(&self) -> Pending<'_, Result<Vec<String>, BackendError>> {
        ready(self.held().map(|h| h.episodes.iter().cloned().collect()))
    }

    fn set_episode<'a>(
        &'a self,
        key: &'a str,
        open: bool,
    ) -> Pending<'a, Result<bool, BackendError>> {
        ready(self.held().map(|mut h| {
            if open {
                h.episodes.insert(key.to_owned())
            } else {
                h.episodes.remove(key)
            }
        }))
    }

    fn get_key<'a>(
        &'a self,
        name: &'a str,
        now_ms: u64,
    ) -> Pending<'a, Result<Option<Vec<u8>>, BackendError>> {
        ready(self.held().map(|h| {
            h.keys
                .get(name)
                .filter(|(_, until)| *until > now_ms)
                .map(|(v, _)| v.clone())
        }))
    }

    fn swap_key(&self, swap: KeySwap) -> Pending<'_, Result<Swapped, BackendError>> {
        ready(self.held().map(|mut h| {
            let now = swap.now_ms;
            let current = h.keys.get(&swap.name).filter(|(_, until)| *until > now);
            if current.map(|(v, _)| v) != swap.expected.as_ref() {
                return Swapped::Changed;
            }
            let Some(new) = swap.new else {
                h.keys.remove(&swap.name);
                return Swapped::Done;
            };
            // Expired records are swept only when the bound is reached: a sweep per new key
            // would cost every key a pass over all of them.
            if swap.expected.is_none() && h.keys.len() >= swap.limit {
                h.keys.retain(|_, (_, until)| *until > now);
                if h.keys.len() >= swap.limit {
                    return Swapped::Full;
                }
            }
            let until = now.saturating_add(millis(swap.ttl));
            h.keys.insert(swap.name, (new, until));
            Swapped::Done
        }))
    }
}

/// `d` in whole milliseconds, saturating.
pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl Coordination for Memory {
    fn lease<'a>(
        &'a self,
        name: &'a str,
        ttl: Duration,
    ) -> Pending<'a, Result<Option<Lease>, BackendError>> {
        let now = crate::clock::now();
        let owner = self.holders.fetch_add(1, Ordering::Relaxed).to_string();
        ready(self.held().map(|mut h| {
            if h.leases.get(name).is_some_and(|(_, until)| *until > now) {
                return None;
            }
            h.leases.insert(name.to_owned(), (owner.clone(), now + ttl));
            Some(Lease {
                key: name.to_owned(),
                owner,
            })
        }))
    }

    fn extend<'a>(
        &'a self,
        lease: &'a Lease,
        ttl: Duration,
    ) -> Pending<'a, Result<bool, BackendError>> {
        let now = crate::clock::now();
        ready(self.held().map(|mut h| match h.leases.get_mut(&lease.key) {
            Some((owner, until)) if *owner == lease.owner && *until > now => {
                *until = now + ttl;
                true
            }
            _ => false,
        }))
    }

    fn release<'a>(&'a self, lease: &'a Lease) -> Pending<'a, Result<(), BackendError>> {
        ready(self.held().map(|mut h| {
            if h.leases
                .get(&lease.key)
                .is_some_and(|(owner, _)| *owner == lease.owner)
            {
                h.leases.remove(&lease.key);
            }
        }))
    }

    fn announce<'a>(
        &'a self,
        name: &'a str,
        revision: u64,
    ) -> Pending<'a, Result<(), BackendError>> {
        ready(self.held().map(|mut h| {
            h.subscribers.retain(|tx| {
                tx.send(Event::Revision {
                    name: name.to_owned(),
                    revision,
                })
                .is_ok()
            });
        }))
    }

    fn subscribe(&self, _tasks: &Tasks) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .subscribers
            .push(tx);
        rx
    }

    fn ping(&self) -> Pending<'_, Result<(), BackendError>> {
        ready(self.held().map(|_| ()))
    }

    fn is_up(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
    }
}
