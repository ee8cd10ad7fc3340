//! The drop-in sessions: who holds which token and SEK until when, in memory, written through
//! to the session store (sealed like the slots' records) so that a restart or another replica
//! accepts the tokens too.
//!
//! A token is looked up by its SHA-256 digest, and the store names its record by that digest:
//! neither the map keys nor the store's names reveal a token. One session per owner (client,
//! upstream, GSTIN, user), as NIC gives one token per user: a repeat login while it is live
//! gets the same token and SEK, so a looping client cannot fill the store, and each client is
//! held to its `max_dropin_sessions` besides.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::crypto::{b64_decode, b64_encode, AesKey};
use crate::gstin::Gstin;
use crate::metrics::{DropinLabels, Metrics};
use crate::problem::GatewayError;
use crate::store::{Store, DROPIN_PREFIX};

/// A live token is handed out again only with at least this much life left; a repeat login
/// closer to expiry gets a new one, so a client never gets a token about to lapse.
const REUSE_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Who a drop-in session belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Owner {
    /// The client's name.
    pub client: Arc<str>,
    /// The upstream's name.
    pub upstream: Arc<str>,
    /// The taxpayer.
    pub gstin: Gstin,
    /// The API user.
    pub username: Arc<str>,
}

/// A drop-in session: a token and SEK gstgate issued to a client.
pub struct DropinSession {
    /// Whose it is.
    pub owner: Owner,
    token: SecretString,
    /// The key the client encrypts its payloads with.
    pub sek: AesKey,
    /// When the token stops being accepted.
    pub expires_at: SystemTime,
    /// The store record's name.
    name: Arc<str>,
}

impl DropinSession {
    /// The token, to put in a login reply.
    pub fn token(&self) -> &str {
        self.token.expose_secret()
    }

    fn expired(&self, now: SystemTime) -> bool {
        self.expires_at <= now
    }
}

/// The layout version of a stored drop-in session; a record of another version is not one
/// this gstgate can read (its client logs in again).
const STORED_VERSION: u32 = 1;

/// The record of a session as the store keeps it (inside the seal). Borrowed where the JSON
/// has no escapes, owned where it has (a user name may hold `"` or `\`).
#[derive(Serialize, Deserialize)]
struct Stored<'a> {
    v: u32,
    #[serde(borrow)]
    client: Cow<'a, str>,
    #[serde(borrow)]
    upstream: Cow<'a, str>,
    #[serde(borrow)]
    gstin: Cow<'a, str>,
    #[serde(borrow)]
    username: Cow<'a, str>,
    #[serde(borrow)]
    token: Cow<'a, str>,
    #[serde(borrow)]
    sek: Cow<'a, str>,
    expires_unix_ms: u64,
}

#[derive(Default)]
struct Inner {
    by_digest: HashMap<[u8; 32], Arc<DropinSession>>,
    by_owner: HashMap<Owner, [u8; 32]>,
    per_client: HashMap<Arc<str>, usize>,
}

/// Every drop-in session this replica knows.
pub struct Book {
    inner: Mutex<Inner>,
    /// Records of live sessions this replica ended (a re-issue), to announce to the other
    /// replicas once their deletion is committed.
    ended: Mutex<Vec<Arc<str>>>,
    store: OnceLock<Arc<Store>>,
    metrics: Arc<Metrics>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn record_name(digest: &[u8; 32]) -> Arc<str> {
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{DROPIN_PREFIX}{hex}").into()
}

/// The token digest a record name holds, if it is a drop-in record's name.
fn digest_of_name(name: &str) -> Option<[u8; 32]> {
    let hex = name.strip_prefix(DROPIN_PREFIX)?;
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Book {
    /// An empty book.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            ended: Mutex::new(Vec::new()),
            store: OnceLock::new(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Only whole map operations happen under this lock; a panic cannot leave it torn.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes sessions through to `store` from now on, and takes up the live ones it held
    /// when it was opened (the expired ones are deleted). Returns how many were taken up.
    pub fn attach(&self, store: Arc<Store>) -> usize {
        let now = crate::clock::wall();
        let mut taken = 0;
        for (name, plain) in store.take_dropins_at_open() {
            match decode(&plain) {
                Some(session) if !session.expired(now) && *session.name == *name => {
                    self.insert(Arc::new(session));
                    taken += 1;
                }
                _ => store.delete(&name),
            }
        }
        let _ = self.store.set(store);
        taken
    }

    /// The session of `owner`: the live one again unless `renew`, else a new token and SEK
    /// living `lifetime` (the old one, if any, stops being accepted).
    pub fn grant(
        &self,
        owner: Owner,
        lifetime: Duration,
        renew: bool,
        max_per_client: usize,
    ) -> Result<Arc<DropinSession>, GatewayError> {
        let now = crate::clock::wall();
        let mut inner = self.lock();
        let current = inner
            .by_owner
            .get(&owner)
            .and_then(|d| inner.by_digest.get(d))
            .cloned();
        if let Some(live) = &current {
            if !renew && live.expires_at > now + REUSE_MARGIN {
                return Ok(live.clone());
            }
        }
        let held = inner.per_client.get(&owner.client).copied().unwrap_or(0);
        if held.saturating_sub(usize::from(current.is_some())) >= max_per_client {
            return Err(GatewayError::DropinSessionsExhausted {
                client: owner.client.to_string(),
                max: max_per_client,
            });
        }
        if let Some(old) = current {
            self.remove_locked(&mut inner, &old);
            if !old.expired(now) {
                self.ended
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(old.name.clone());
            }
        }
        let token = format!("{:032x}", rand::random::<u128>());
        let name = record_name(&digest(&token));
        let session = Arc::new(DropinSession {
            owner,
            token: token.into(),
            sek: AesKey::random(),
            expires_at: now + lifetime,
            name,
        });
        self.insert_locked(&mut inner, session.clone());
        drop(inner);
        if let Some(store) = self.store.get() {
            store.put_dropin(&session.name, encode(&session));
        }
        Ok(session)
    }

    /// Waits until the sessions granted so far are in the store (a no-op when none is
    /// queued). A login's reply waits for it: the store's writer is asynchronous, and a token
    /// answered before its record is committed is refused by another replica asked at once,
    /// and lost by a `kill -9` right after the reply.
    pub async fn settle(&self) {
        let Some(store) = self.store.get() else {
            return;
        };
        if !store.flush().await {
            // The writer retries the batch; until then only this replica knows the token.
            tracing::warn!(store = %store.place(),
                "a drop-in session is not in the store yet: other replicas refuse its token until it is written");
            return;
        }
        let ended = std::mem::take(&mut *self.ended.lock().unwrap_or_else(|p| p.into_inner()));
        for name in ended {
            store.announce_gone(&name).await;
        }
    }

    /// Forgets what this replica cached of record `name`, which another replica ended: the
    /// token is refused here from now on (the store no longer has it either).
    pub fn forget(&self, name: &str) {
        let Some(key) = digest_of_name(name) else {
            return;
        };
        let mut inner = self.lock();
        if let Some(session) = inner.by_digest.get(&key).cloned() {
            self.drop_locked(&mut inner, &session);
        }
    }

    /// Forgets every cached session: announcements may have been missed. Each is read from
    /// the store again when its token next comes.
    pub fn forget_all(&self) {
        let mut inner = self.lock();
        let all: Vec<Arc<DropinSession>> = inner.by_digest.values().cloned().collect();
        for session in all {
            self.drop_locked(&mut inner, &session);
        }
    }

    /// The live session of `token`: from memory, else (another replica may have issued it)
    /// from a shared store.
    pub async fn find(&self, token: &str) -> Option<Arc<DropinSession>> {
        let now = crate::clock::wall();
        let key = digest(token);
        let known = self.lock().by_digest.get(&key).cloned();
        let session = match known {
            Some(s) => s,
            None => {
                let store = self.store.get().filter(|s| s.is_shared())?;
                let name = record_name(&key);
                let plain = store.fetch_dropin(&name).await?;
                let session = Arc::new(decode(&plain)?);
                if *session.name != *name || session.expired(now) {
                    return None;
                }
                self.insert(session.clone());
                session
            }
        };
        if session.expired(now) {
            self.remove(&session);
            return None;
        }
        Some(session)
    }

    /// Ends a session: its token is no longer accepted, here or (through the store) anywhere.
    pub fn remove(&self, session: &DropinSession) {
        let mut inner = self.lock();
        self.remove_locked(&mut inner, session);
    }

    /// Drops every expired session (and its record).
    pub fn sweep(&self) {
        let now = crate::clock::wall();
        let mut inner = self.lock();
        let expired: Vec<Arc<DropinSession>> = inner
            .by_digest
            .values()
            .filter(|s| s.expired(now))
            .cloned()
            .collect();
        for session in expired {
            self.remove_locked(&mut inner, &session);
        }
    }

    /// How many live sessions each (upstream, client) holds, for the status page.
    pub fn counts(&self) -> Vec<(Arc<str>, Arc<str>, usize)> {
        let inner = self.lock();
        let mut counts: HashMap<(Arc<str>, Arc<str>), usize> = HashMap::new();
        for s in inner.by_digest.values() {
            *counts
                .entry((s.owner.upstream.clone(), s.owner.client.clone()))
                .or_default() += 1;
        }
        let mut out: Vec<_> = counts.into_iter().map(|((u, c), n)| (u, c, n)).collect();
        out.sort();
        out
    }

    fn insert(&self, session: Arc<DropinSession>) {
        let mut inner = self.lock();
        self.insert_locked(&mut inner, session);
    }

    fn insert_locked(&self, inner: &mut Inner, session: Arc<DropinSession>) {
        let key = digest(session.token());
        if inner.by_digest.contains_key(&key) {
            return;
        }
        // Another replica may have issued a newer one for the same owner: the later expiry
        // is the owner's current session; both stay accepted until they expire.
        let newer = match inner
            .by_owner
            .get(&session.owner)
            .and_then(|d| inner.by_digest.get(d))
        {
            Some(current) => session.expires_at > current.expires_at,
            None => true,
        };
        if newer {
            inner.by_owner.insert(session.owner.clone(), key);
        }
        *inner
            .per_client
            .entry(session.owner.client.clone())
            .or_default() += 1;
        self.gauge(&session.owner).inc();
        inner.by_digest.insert(key, session);
    }

    fn remove_locked(&self, inner: &mut Inner, session: &DropinSession) {
        if self.drop_locked(inner, session) {
            if let Some(store) = self.store.get() {
                store.delete(&session.name);
            }
        }
    }

    /// Drops a session from memory only; returns whether it was there.
    fn drop_locked(&self, inner: &mut Inner, session: &DropinSession) -> bool {
        let key = digest(session.token());
        if inner.by_digest.remove(&key).is_none() {
            return false;
        }
        if inner.by_owner.get(&session.owner) == Some(&key) {
            inner.by_owner.remove(&session.owner);
        }
        if let Some(n) = inner.per_client.get_mut(&session.owner.client) {
            *n = n.saturating_sub(1);
        }
        self.gauge(&session.owner).dec();
        true
    }

    fn gauge(
        &self,
        owner: &Owner,
    ) -> prometheus_client::metrics::gauge::Gauge<i64, std::sync::atomic::AtomicI64> {
        self.metrics
            .dropin_sessions
            .get_or_create(&DropinLabels {
                upstream: owner.upstream.clone().into(),
                client: owner.client.clone().into(),
            })
            .clone()
    }
}

/// The store's bytes of a session (sealed by the store).
fn encode(session: &DropinSession) -> Zeroizing<Vec<u8>> {
    let sek = b64_encode(session.sek.as_bytes());
    let stored = Stored {
        v: STORED_VERSION,
        client: Cow::Borrowed(&session.owner.client),
        upstream: Cow::Borrowed(&session.owner.upstream),
        gstin: Cow::Borrowed(session.owner.gstin.as_str()),
        username: Cow::Borrowed(&session.owner.username),
        token: Cow::Borrowed(session.token()),
        sek: Cow::Borrowed(&sek),
        expires_unix_ms: unix_ms(session.expires_at),
    };
    let bytes = Zeroizing::new(serde_json::to_vec(&stored).unwrap_or_default());
    drop(Zeroizing::new(sek));
    bytes
}

/// A session from the store's bytes; `None` if they are not one.
fn decode(plain: &[u8]) -> Option<DropinSession> {
    let stored: Stored<'_> = serde_json::from_slice(plain).ok()?;
    if stored.v != STORED_VERSION {
        return None;
    }
    let sek = Zeroizing::new(b64_decode(&stored.sek).ok()?);
    let token = stored.token.into_owned();
    Some(DropinSession {
        owner: Owner {
            client: stored.client.as_ref().into(),
            upstream: stored.upstream.as_ref().into(),
            gstin: Gstin::parse(&stored.gstin).ok()?,
            username: stored.username.as_ref().into(),
        },
        name: record_name(&digest(&token)),
        token: token.into(),
        sek: AesKey::from_slice(&sek).ok()?,
        expires_at: UNIX_EPOCH + Duration::from_millis(stored.expires_unix_ms),
    })
}

#[cfg(test)]
mod tests;
