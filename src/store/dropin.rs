//! The drop-in sessions' records (`crate::dropin`) beside the slots': their own name prefix,
//! opened as bytes their owner decodes, read one at a time (another replica may have written
//! one), and the announcement that one ended, so that no replica keeps serving its cached copy.

use std::sync::Arc;

use zeroize::Zeroizing;

use super::seal::Opened;
use super::{Entry, Store};

/// The names of drop-in session records start with this; every other record is a slot's.
pub const DROPIN_PREFIX: &str = "dropin:";

impl Store {
    /// Opens a drop-in record, saying under which key; `None` (with a warning) if it does
    /// not open.
    pub(super) fn open_dropin(
        &self,
        name: &str,
        sealed: &[u8],
    ) -> Option<(Zeroizing<Vec<u8>>, Opened)> {
        match self.sealer.open(name.as_bytes(), sealed) {
            Ok(opened) => Some(opened),
            Err(e) => {
                tracing::warn!(store = %self.place, reason = %e,
                    "skipping a stored drop-in session that does not open; its client logs in again");
                None
            }
        }
    }

    /// The drop-in records the store held when it was opened (once; later calls get none).
    pub fn take_dropins_at_open(&self) -> Vec<(String, Zeroizing<Vec<u8>>)> {
        std::mem::take(
            &mut *self
                .dropins_at_open
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    /// Reads one drop-in record afresh (another replica may have written it).
    pub async fn fetch_dropin(&self, name: &str) -> Option<Zeroizing<Vec<u8>>> {
        let got = self.records.get(name).await;
        let bytes = match self.coordination {
            Some(_) => self.outcome("get", got),
            None => got,
        };
        match bytes {
            Ok(Some(sealed)) => self.open_dropin(name, &sealed).map(|(plain, _)| plain),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(store = %self.place, error = %e, "cannot read a drop-in session");
                None
            }
        }
    }

    /// Queues a drop-in record's new contents; never waits.
    pub fn put_dropin(&self, name: &Arc<str>, encoded: Zeroizing<Vec<u8>>) {
        self.queue(name.clone(), Some(Entry::Dropin(Arc::new(encoded))));
    }

    /// Tells the other replicas that record `name` is gone (a drop-in session ended), so that
    /// none keeps serving what it cached of it. Nothing to tell for a store nobody shares.
    pub async fn announce_gone(&self, name: &str) {
        let Some(group) = &self.coordination else {
            return;
        };
        if let Err(e) = self.outcome("publish", group.announce(name, 0).await) {
            tracing::warn!(store = %self.place, error = %e,
                "cannot announce an ended drop-in session; other replicas accept its token until it expires");
        }
    }
}
