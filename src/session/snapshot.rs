//! What the admin API and the status page show of the slots: no token, SEK or password.
//!
//! A listing ([`Sessions::select`]) reads every slot's state once (a lock and a comparison
//! each) for the summary and the filter, and builds a [`SessionInfo`] (a handful of strings)
//! only for the rows of the page asked for: with 100,000 credentials a page costs one pass over
//! the table, not 100,000 rows of JSON or HTML. The filtering and paging are the admin
//! listener's (`src/admin/listing.rs`).

use std::time::{Duration, Instant, SystemTime};

use crate::timestamp::rfc3339;

use serde::Serialize;

use super::{Sessions, Slot, State};

/// What `/admin/sessions` shows of a slot: no token, SEK or password.
#[derive(Debug, Serialize)]
pub struct SessionInfo {
    /// Upstream name.
    pub upstream: String,
    /// The GSTIN.
    pub gstin: String,
    /// API user.
    pub username: String,
    /// State.
    pub state: State,
    /// Token expiry, RFC 3339 UTC.
    pub expires_at: Option<String>,
    /// Seconds until the token expires.
    pub expires_in_secs: Option<u64>,
    /// When the last successful login was sent, RFC 3339 UTC.
    pub last_refresh: Option<String>,
    /// The last login error.
    pub last_error: Option<String>,
    /// The upstream's error code of the last failed login.
    pub last_upstream_code: Option<String>,
    /// Session generation.
    pub generation: Option<u64>,
    /// When the taxpayer's portal API session ends and a new OTP is needed (GSTN), RFC 3339 UTC.
    pub session_ends_at: Option<String>,
    /// Seconds until the portal API session ends (GSTN).
    pub session_ends_in_secs: Option<u64>,
}

/// A slot as a listing filters and orders it, borrowed from the table so that nothing is
/// built per slot: (upstream, GSTIN, user, state).
pub type SlotRow<'a> = (&'a str, &'a str, &'a str, State);

impl Sessions {
    /// Every slot, for the tests.
    #[cfg(test)]
    pub(crate) fn snapshot(&self) -> Vec<SessionInfo> {
        let (now, wall) = (crate::clock::now(), crate::clock::wall());
        self.table()
            .slots
            .iter()
            .map(|slot| info(slot, now, wall))
            .collect()
    }

    /// The slots an alert rule can act on, for the alert watcher: credentials rejected, an
    /// OTP needed, a failed login on record, or a GSTN portal session ending within
    /// `otp_warning`. One pass (a lock and a few comparisons a slot) that builds rows only for
    /// those: with 100,000 healthy sessions a pass costs milliseconds and allocates nothing
    /// per slot, where rows for every slot cost ≈ 90 ms of a thread and ≈ 45 MB each time.
    pub fn needing_attention(&self, otp_warning: Duration) -> Vec<SessionInfo> {
        let (now, wall) = (crate::clock::now(), crate::clock::wall());
        self.table()
            .slots
            .iter()
            .filter(|slot| {
                let st = slot.view();
                let ends_soon = st.portal_ends_at().is_some_and(|end| {
                    end.duration_since(wall).unwrap_or_default().as_secs() <= otp_warning.as_secs()
                });
                ends_soon
                    || st.last_error().0.is_some()
                    || matches!(
                        st.state(now, slot.otp_sessions()),
                        State::CredentialsRejected | State::NeedsOtp
                    )
            })
            .map(|slot| info(slot, now, wall))
            .collect()
    }

    /// The rows `pick` chooses, as [`SessionInfo`]s: `pick` sees every slot as a [`SlotRow`]
    /// (in configuration order) and returns the positions of the rows it wants, in the order
    /// wanted, with whatever else it computed on the way (a summary). Only the chosen rows are
    /// built, all from the same table even if a reload swaps it meanwhile.
    pub fn select<T>(
        &self,
        pick: impl for<'a> FnOnce(Vec<SlotRow<'a>>) -> (Vec<usize>, T),
    ) -> (Vec<SessionInfo>, T) {
        let (now, wall) = (crate::clock::now(), crate::clock::wall());
        let table = self.table();
        let rows = table
            .slots
            .iter()
            .map(|slot| {
                let state = slot.view().state(now, slot.otp_sessions());
                (
                    &*slot.upstream.name,
                    slot.credential.gstin.as_str(),
                    &*slot.credential.username,
                    state,
                )
            })
            .collect();
        let (chosen, extra) = pick(rows);
        let infos = chosen
            .into_iter()
            .filter_map(|i| table.slots.get(i))
            .map(|slot| info(slot, now, wall))
            .collect();
        (infos, extra)
    }
}

fn info(slot: &Slot, now: Instant, wall: SystemTime) -> SessionInfo {
    let st = slot.view();
    let state = st.state(now, slot.otp_sessions());
    let live = st.session().filter(|s| s.usable(now));
    let (last_error, last_upstream_code) = st.last_error();
    SessionInfo {
        upstream: slot.upstream.name.to_string(),
        gstin: slot.credential.gstin.to_string(),
        username: slot.credential.username.to_string(),
        state,
        expires_at: live.map(|s| rfc3339(s.expires_at)),
        expires_in_secs: live.map(|s| {
            s.expires_at
                .duration_since(wall)
                .unwrap_or_default()
                .as_secs()
        }),
        last_refresh: st.last_refresh().map(rfc3339),
        last_error: last_error.map(str::to_owned),
        last_upstream_code: last_upstream_code.map(str::to_owned),
        generation: live.map(|s| s.generation),
        session_ends_at: st.portal_ends_at().map(rfc3339),
        session_ends_in_secs: st
            .portal_ends_at()
            .map(|end| end.duration_since(wall).unwrap_or_default().as_secs()),
    }
}
