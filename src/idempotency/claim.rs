//! A held claim on a key: renewed while its request is in flight, so that a waiter on any
//! replica keeps waiting, and settled once: the answer stored, or the key released. A claim
//! dropped unsettled (the request was cancelled, e.g. by its timeout) is released as "may
//! have reached the upstream"; a claim whose replica died is not renewed and is taken over
//! once its lease runs out.
//!
//! A claim knows until when its lease is surely its own (the last lease it wrote), and a
//! keyed request asks [`Claim::still_held`] before every send: a claim whose renewals have
//! failed for half its lease (a store outage, a paused process) may soon be taken over, and
//! another replica may then send the same request, so this one sends nothing more.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::AbortHandle;

use super::record::{Answer, Fingerprint, Owner, State};
use super::Release;
use crate::store::{wall_ms, KeyWritten, Store};
use crate::tasks::Tasks;

/// What a claim and its renewal task share.
pub(super) struct Held {
    /// The store the record lives in.
    pub(super) store: Arc<Store>,
    /// Where the renewal and a dropped claim's release run.
    pub(super) tasks: Tasks,
    /// The record's name.
    pub(super) name: String,
    /// The request the key stands for.
    pub(super) fingerprint: Fingerprint,
    /// This claim's holder identity.
    pub(super) owner: Owner,
    /// How long the claim lives without renewal.
    pub(super) lease: Duration,
    /// How long the record lives.
    pub(super) window: Duration,
    /// The record's sealed bytes as last written by this claim, which its next write must
    /// find; held across the store call so that a renewal and the settlement never race.
    pub(super) current: Mutex<Option<Vec<u8>>>,
    /// The lease (Unix milliseconds) of the last claim record this claim wrote: no other
    /// replica takes the key over before it.
    pub(super) held_until: AtomicU64,
    /// Whether the record was found taken over (or settled): nothing more is sent for it.
    pub(super) lost: AtomicBool,
}

/// A key this request owns until it settles it.
pub struct Claim {
    /// The claim's record, shared with its renewal.
    held: Arc<Held>,
    /// The renewal task.
    renewal: AbortHandle,
    /// Whether an earlier attempt of this request may have reached the upstream.
    earlier_attempt_unknown: bool,
    /// Whether the claim was settled (its answer stored or its key released).
    settled: bool,
}

impl Held {
    /// The claim record with a lease from now, and that lease.
    pub(super) fn claim_record(&self) -> (Vec<u8>, u64) {
        let lease_until = wall_ms().saturating_add(super::millis(self.lease));
        let record = State::Claimed {
            fingerprint: self.fingerprint,
            owner: self.owner,
            lease_until,
        }
        .encode();
        (record, lease_until)
    }

    /// Whether this claim surely still holds its key for at least half its lease more: a
    /// send made now ends (the upstream timeout being shorter than half the lease, as
    /// documented) before any other replica may take the key over.
    pub(super) fn still_held(&self) -> bool {
        let margin = super::millis(self.lease / 2);
        !self.lost.load(Ordering::Acquire)
            && self.held_until.load(Ordering::Acquire) > wall_ms().saturating_add(margin)
    }

    /// Renews the claim: its record with a new lease; false once the key is lost.
    async fn renew(&self) -> bool {
        let (record, lease_until) = self.claim_record();
        let written = self.write(Some(&record)).await;
        if written {
            self.held_until.fetch_max(lease_until, Ordering::AcqRel);
        }
        written
    }

    /// Writes `new` (or deletes the record) if it still holds what this claim last wrote;
    /// false when another replica took the key over, or the store failed.
    async fn write(&self, new: Option<&[u8]>) -> bool {
        let mut current = self.current.lock().await;
        // Twice at most: once more after finding that an earlier write of this claim was
        // applied although the store's answer was lost (the record then holds this claim
        // under other sealed bytes: each write seals afresh).
        for _ in 0..2 {
            let Some(expected) = current.as_deref() else {
                return false;
            };
            match self
                .store
                .swap_key(&self.name, Some(expected), new, self.window, usize::MAX)
                .await
            {
                Ok(KeyWritten::Done(sealed)) => {
                    *current = sealed;
                    return true;
                }
                Ok(KeyWritten::Changed | KeyWritten::Full) => match self.ours().await {
                    Ok(Some(sealed)) => *current = Some(sealed),
                    Ok(None) => {
                        *current = None;
                        self.lost.store(true, Ordering::Release);
                        tracing::warn!(
                            "an idempotency key was taken over while its request was in flight (its lease ran out: is the store slow, or was this process paused?)"
                        );
                        return false;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read an idempotency record");
                        return false;
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot write an idempotency record");
                    return false;
                }
            }
        }
        false
    }

    /// The record's sealed bytes if it is still this claim's (the same owner); `None` if
    /// another holder has it, or it is settled or gone.
    async fn ours(&self) -> Result<Option<Vec<u8>>, crate::store::BackendError> {
        let found = self.store.key_record(&self.name).await?;
        Ok(found.and_then(|found| {
            let state = found.plain.as_deref().and_then(|p| State::decode(p));
            matches!(state, Some(State::Claimed { owner, .. }) if owner == self.owner)
                .then_some(found.sealed)
        }))
    }

    /// Settles the key as `release` says.
    async fn release(&self, release: Release) {
        let new = match release {
            Release::Free => None,
            Release::Unknown => Some(
                State::Open {
                    fingerprint: self.fingerprint,
                }
                .encode(),
            ),
        };
        self.write(new.as_deref()).await;
    }
}

impl Claim {
    /// Starts renewing `held`'s claim every third of its lease.
    pub(super) fn start(held: Held, earlier_attempt_unknown: bool) -> Self {
        let held = Arc::new(held);
        let renewing = held.clone();
        let renewal = held
            .tasks
            .spawn_until_shutdown(async move {
                let every = renewing.lease / 3;
                loop {
                    tokio::time::sleep(every).await;
                    if !renewing.renew().await && renewing.lost.load(Ordering::Acquire) {
                        return;
                    }
                }
            })
            .abort_handle();
        Self {
            held,
            renewal,
            earlier_attempt_unknown,
            settled: false,
        }
    }

    /// Whether an earlier attempt of this very request may have reached the upstream: the
    /// key was taken over from a dead replica, or released after an unknown outcome.
    pub fn earlier_attempt_unknown(&self) -> bool {
        self.earlier_attempt_unknown
    }

    /// Whether the claim surely still holds its key long enough for one more send (see
    /// [`Held::still_held`]): false once a renewal found it taken over, or when the
    /// renewals have failed for half the lease.
    pub fn still_held(&self) -> bool {
        self.held.still_held()
    }

    /// Stores `answer` for the window; an answer over `max_bytes` is not kept, and the key
    /// is left open as after an unknown outcome (the upstream did act).
    pub async fn answered(mut self, answer: Answer, max_bytes: usize) {
        self.stop_renewing().await;
        if answer.body.len() > max_bytes {
            tracing::warn!(
                bytes = answer.body.len(),
                max_response_bytes = max_bytes,
                "an answer is too large to keep for its idempotency key (idempotency.max_response_bytes); a retry will not get a replay"
            );
            self.held.release(Release::Unknown).await;
            return;
        }
        let record = State::Answered {
            fingerprint: self.held.fingerprint,
            answer,
        }
        .encode();
        self.held.write(Some(&record)).await;
    }

    /// Releases the key after its request failed, as `release` says.
    pub async fn release(mut self, release: Release) {
        self.stop_renewing().await;
        self.held.release(release).await;
    }

    /// Stops the renewal, waiting out a renewal write under way (it holds `current`).
    async fn stop_renewing(&mut self) {
        self.settled = true;
        let _wait = self.held.current.lock().await;
        self.renewal.abort();
    }

    /// Stops renewing without settling, as a replica that died would (tests only).
    #[cfg(test)]
    pub(super) fn abandon(mut self) {
        self.settled = true;
        self.renewal.abort();
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let held = self.held.clone();
        let renewal = self.renewal.clone();
        if tokio::runtime::Handle::try_current().is_err() {
            renewal.abort();
            return;
        }
        self.held.tasks.spawn(async move {
            let renewing = held.current.lock().await;
            renewal.abort();
            drop(renewing);
            held.release(Release::Unknown).await;
        });
    }
}
