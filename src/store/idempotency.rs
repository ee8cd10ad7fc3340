//! The idempotency records (`crate::idempotency`) beside the slots': their own name prefix,
//! sealed like sessions are, and changed only by an atomic compare-and-swap on their sealed
//! bytes, so that one replica at a time owns a key. They never go through the batching
//! writer: a claim must be in the store before its request goes upstream.

use std::time::{Duration, UNIX_EPOCH};

use zeroize::Zeroizing;

use super::backend::{BackendError, KeySwap, Swapped};
use super::Store;

/// The names of idempotency records start with this.
pub const IDEMPOTENCY_PREFIX: &str = "idem:";

/// An idempotency record as read: its sealed bytes (what a swap must expect) and, if it
/// opens under the store's keys, its contents.
pub struct KeyRecord {
    /// The bytes the store holds.
    pub sealed: Vec<u8>,
    /// Its contents; `None` if it does not open (a key changed without the previous one).
    pub plain: Option<Zeroizing<Vec<u8>>>,
}

/// What [`Store::swap_key`] did.
pub enum KeyWritten {
    /// Written: the record's new sealed bytes (`None` once deleted).
    Done(Option<Vec<u8>>),
    /// Another writer changed the record first: nothing was written.
    Changed,
    /// The record would be new and the store already holds `limit` of them.
    Full,
}

/// The wall clock in Unix milliseconds, as idempotency records read expiries.
pub fn wall_ms() -> u64 {
    crate::clock::wall()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl Store {
    /// Reads idempotency record `name` (unless missing or expired).
    pub async fn key_record(&self, name: &str) -> Result<Option<KeyRecord>, BackendError> {
        let got = self.records.get_key(name, wall_ms()).await;
        let sealed = self.outcome("key_get", got)?;
        Ok(sealed.map(|sealed| {
            let plain = self
                .sealer
                .open(name.as_bytes(), &sealed)
                .map(|(plain, _)| plain)
                .ok();
            KeyRecord { sealed, plain }
        }))
    }

    /// Replaces idempotency record `name` with `new` (sealed here; `None` deletes it), living
    /// `ttl`, if it still holds `expected` (`None`: no record); a new record is refused while
    /// `limit` exist.
    pub async fn swap_key(
        &self,
        name: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
        ttl: Duration,
        limit: usize,
    ) -> Result<KeyWritten, BackendError> {
        let sealed = match new {
            Some(plain) => Some(
                self.sealer
                    .seal(name.as_bytes(), plain)
                    .map_err(|_| BackendError::Failed("sealing failed".into()))?,
            ),
            None => None,
        };
        let swap = KeySwap {
            name: name.to_owned(),
            expected: expected.map(<[u8]>::to_vec),
            new: sealed.clone(),
            ttl,
            limit,
            now_ms: wall_ms(),
        };
        let done = self.records.swap_key(swap).await;
        Ok(match self.outcome("key_swap", done)? {
            Swapped::Done => KeyWritten::Done(sealed),
            Swapped::Changed => KeyWritten::Changed,
            Swapped::Full => KeyWritten::Full,
        })
    }
}
