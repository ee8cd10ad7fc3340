//! The proactive refresh: what the scheduler runs when a session's refresh is due, and when
//! that is.

use std::time::{Duration, Instant};

use super::single_flight::Flight;
use super::{Session, Sessions, Slot, Trigger, SAME_TOKEN_MIN_RETRY};
use crate::problem::{chain, Origin};

impl Sessions {
    /// The scheduler's refresh of `generation`, if it is still current and in use.
    pub(crate) async fn refresh_due(&self, id: usize, generation: u64) {
        let Some(slot) = self.table().get(id).cloned() else {
            return;
        };
        {
            let mut change = slot.change();
            if change.session().map(|s| s.generation) != Some(generation) {
                return;
            }
            // An idle GSTN session is kept alive all the same: dropping it would cost the
            // taxpayer a new OTP, which is what gstgate exists to avoid.
            if !slot.otp_sessions()
                && change.idle_for(crate::clock::now()) >= slot.upstream.idle_ttl
            {
                tracing::info!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                    "dropping idle session instead of refreshing it");
                change.forget();
                return;
            }
        }
        let flight = Flight::wait(&slot).await;
        if slot.view().session().map(|s| s.generation) != Some(generation) {
            return;
        }
        if let Err(e) = self.login(&slot, &flight, Trigger::Proactive).await {
            // Retry only when waiting can help, and no sooner than the guard allows: a
            // lockout or a missing OTP needs an operator, and hammering a throttled login
            // only extends the block. A refresh has no caller, so a caller-side refusal (an
            // OTP refused where none was sent) is an odd upstream answer, retried like a
            // transient one.
            let waiting_helps = e.retryable() || e.origin() == Origin::Caller;
            let retry = waiting_helps.then(|| {
                e.retry_after()
                    .map(Duration::from_secs)
                    .unwrap_or_else(|| slot.view().retry_delay())
            });
            tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                error = %chain(&e), retry_in_secs = retry.map(|r| r.as_secs_f64()),
                "proactive refresh failed");
            if let Some(retry) = retry {
                let at = crate::clock::now() + retry;
                self.scheduler.schedule(slot.id, generation, at);
            }
        }
    }

    /// When to refresh a new session sent at `sent`: the renewal strategy's choice.
    pub(super) fn refresh_at(&self, slot: &Slot, session: &Session, sent: Instant) -> Instant {
        slot.renewal()
            .refresh_at(session.deadline, sent, slot.upstream.refresh_before)
    }

    /// After a login returned the same token. Before the normal refresh time (an operator's
    /// early refresh, a re-login after a rejection that the upstream did not honour), keep
    /// the normal schedule; past it (the upstream's force window is narrower than
    /// `refresh_before`), try again after a third of the remaining life, while that is worth it.
    pub(super) fn schedule_after_same_token(&self, slot: &Slot, session: &Session) {
        let now = crate::clock::now();
        let normal = session
            .deadline
            .checked_sub(slot.upstream.refresh_before)
            .filter(|t| *t > now);
        let at = match normal {
            Some(t) => t,
            None => {
                let remaining = session.deadline.saturating_duration_since(now);
                if remaining < 3 * SAME_TOKEN_MIN_RETRY {
                    // Too close to expiry to matter: the next caller logs in afresh.
                    return;
                }
                now + (remaining / 3).max(SAME_TOKEN_MIN_RETRY)
            }
        };
        self.scheduler.schedule(slot.id, session.generation, at);
    }
}
