//! Single-flight: one login per slot at a time, however many callers need one.

use std::sync::Arc;

use super::{Sessions, Slot};
use crate::problem::GatewayError;

impl Sessions {
    /// Takes the slot's single-flight lock, then runs `work` under it in a task of its own
    /// and waits for it. The wait for the lock is the caller's: one that goes away stops
    /// waiting and leaves nothing behind. Once the lock is taken, the work runs to the end
    /// whatever the caller does: the upstream may already have issued a token (and, for a
    /// GSTN refresh or an e-invoice force refresh, retired the old one), and the slot must
    /// record it and leave its `refreshing` state.
    pub(super) async fn detached<T, F, Fut>(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        work: F,
    ) -> Result<T, GatewayError>
    where
        F: FnOnce(Arc<Self>, Arc<Slot>) -> Fut,
        Fut: std::future::Future<Output = Result<T, GatewayError>> + Send + 'static,
        T: Send + 'static,
    {
        let single_flight = slot.login.clone().lock_owned().await;
        let work = work(self.clone(), slot.clone());
        // The login's log lines name the request that caused it.
        let request = crate::request::current();
        tokio::spawn(async move {
            let result = crate::request::carry(request, work).await;
            drop(single_flight);
            result
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                    error = %e, "login task failed");
            Err(GatewayError::Internal("the login task failed".into()))
        })
    }
}
