//! Single-flight: one login per slot at a time, however many callers need one.
//!
//! A [`Flight`] is the proof that a task holds the slot's single-flight lock. Only this file
//! makes one, and every turn to log in ([`super::group`]) asks for one: a login outside the
//! single-flight does not compile.

use std::sync::Arc;

use tokio::sync::OwnedMutexGuard;

use super::{Sessions, Slot};
use crate::problem::GatewayError;

/// The slot's single-flight lock, held until dropped.
pub(super) struct Flight {
    _held: OwnedMutexGuard<()>,
}

impl Flight {
    /// Waits for the slot's single-flight lock, in a task that already runs on its own (the
    /// scheduler's refresh, rejoining the group): nothing waits on it to go away.
    pub(super) async fn wait(slot: &Slot) -> Self {
        Self {
            _held: slot.single_flight().await,
        }
    }
}

impl Sessions {
    /// Takes the slot's single-flight lock, then runs `work` under it in a task of its own
    /// and waits for it. The wait for the lock is the caller's: one that goes away stops
    /// waiting and leaves nothing behind. Once the lock is taken, the work runs to the end
    /// whatever the caller does: the upstream may already have issued a token (and, for a
    /// GSTN refresh or an e-invoice force refresh, retired the old one), and the slot must
    /// record it and leave its `refreshing` state.
    pub(super) async fn fly<T, F, Fut>(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        work: F,
    ) -> Result<T, GatewayError>
    where
        F: FnOnce(Arc<Self>, Arc<Slot>, Flight) -> Fut,
        Fut: std::future::Future<Output = Result<T, GatewayError>> + Send + 'static,
        T: Send + 'static,
    {
        let flight = Flight::wait(slot).await;
        let work = work(self.clone(), slot.clone(), flight);
        // The login's log lines name the request that caused it.
        let request = crate::request::current();
        self.tasks
            .spawn(crate::request::carry(request, work))
            .await
            .unwrap_or_else(|e| {
                tracing::error!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                    error = %e, "login task failed");
                Err(GatewayError::Internal("the login task failed".into()))
            })
    }
}
