//! What keeps one drop-in client from hurting a taxpayer or the other clients:
//!
//! * A client whose logins keep failing on its own guesses (a wrong password, an unknown
//!   user, a wrong OTP) is stopped for a while: a client's secret must not turn into an
//!   unlimited password oracle for the taxpayers it may act for.
//! * The OTPs clients can make the GST portal send a taxpayer are capped per day: each is an
//!   SMS and an e-mail to the taxpayer, and only an operator should be able to send more.
//!
//! Both are counted by this replica, in memory, over windows that slide.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::problem::GatewayError;
use crate::window::{prune, wait_for_room};

/// A client may fail this many logins on its own guesses per [`FAILURE_WINDOW`].
const MAX_FAILURES: usize = 5;
/// The window of [`MAX_FAILURES`]: NIC's own login window.
const FAILURE_WINDOW: Duration = Duration::from_secs(15 * 60);
/// Clients together may make the portal send one taxpayer user this many OTPs per
/// [`OTP_WINDOW`]; the operator's admin API is not limited by it.
const MAX_CLIENT_OTPS: usize = 3;
/// The window of [`MAX_CLIENT_OTPS`].
const OTP_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Sliding-window counts, by key.
#[derive(Default)]
struct Counts(Mutex<HashMap<Arc<str>, VecDeque<Instant>>>);

impl Counts {
    /// `Err` with the wait until one more fits, if `key` already has `max` in `window`.
    fn check(&self, key: &Arc<str>, max: usize, window: Duration) -> Result<(), Duration> {
        let now = crate::clock::now();
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(times) = all.get_mut(key) else {
            return Ok(());
        };
        prune(times, window, now);
        if times.is_empty() {
            all.remove(key);
            return Ok(());
        }
        match wait_for_room(times, 1, max, window, now) {
            Some(wait) => Err(wait),
            None => Ok(()),
        }
    }

    fn add(&self, key: &Arc<str>) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.entry(key.clone())
            .or_default()
            .push_back(crate::clock::now());
    }
}

/// The drop-in limits of one replica.
#[derive(Default)]
pub struct Limits {
    failures: Counts,
    otps: Counts,
}

/// The refusal for a limit reached, retried after `wait`.
fn throttled(wait: Duration) -> GatewayError {
    GatewayError::LoginThrottled {
        retry_after_secs: wait.as_secs().max(1),
    }
}

impl Limits {
    /// Admits a login by `client`, unless its recent logins failed too often.
    pub fn admit_login(&self, client: &Arc<str>) -> Result<(), GatewayError> {
        self.failures
            .check(client, MAX_FAILURES, FAILURE_WINDOW)
            .map_err(throttled)
    }

    /// A login by `client` failed on its own guess.
    pub fn failed_login(&self, client: &Arc<str>) {
        self.failures.add(client);
    }

    /// Admits a client's OTP request for the taxpayer user `slot`, unless clients already had
    /// the portal send it [`MAX_CLIENT_OTPS`] today.
    pub fn admit_otp_request(&self, slot: &Arc<str>) -> Result<(), GatewayError> {
        self.otps
            .check(slot, MAX_CLIENT_OTPS, OTP_WINDOW)
            .map_err(throttled)
    }

    /// A client's request made the portal send `slot` an OTP.
    pub fn otp_sent(&self, slot: &Arc<str>) {
        self.otps.add(slot);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failed_logins_stop_a_client_for_the_rest_of_the_window() {
        let limits = Limits::default();
        let (erp, other): (Arc<str>, Arc<str>) = ("erp".into(), "other".into());
        for _ in 0..MAX_FAILURES {
            limits.admit_login(&erp).unwrap();
            limits.failed_login(&erp);
        }
        let Err(GatewayError::LoginThrottled { retry_after_secs }) = limits.admit_login(&erp)
        else {
            panic!("a sixth guess is admitted");
        };
        assert_eq!(retry_after_secs, FAILURE_WINDOW.as_secs());
        limits.admit_login(&other).unwrap();
        tokio::time::advance(FAILURE_WINDOW).await;
        limits.admit_login(&erp).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn clients_make_the_portal_send_a_taxpayer_few_otps_a_day() {
        let limits = Limits::default();
        let slot: Arc<str> = "gstn:27AAPFU0939F1ZV:api_user".into();
        for _ in 0..MAX_CLIENT_OTPS {
            limits.admit_otp_request(&slot).unwrap();
            limits.otp_sent(&slot);
            tokio::time::advance(Duration::from_secs(600)).await;
        }
        assert!(matches!(
            limits.admit_otp_request(&slot),
            Err(GatewayError::LoginThrottled { .. })
        ));
        tokio::time::advance(OTP_WINDOW).await;
        limits.admit_otp_request(&slot).unwrap();
    }
}
