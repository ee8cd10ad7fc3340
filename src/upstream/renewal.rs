//! How an API renews a session before its token expires. Each profile names one of these
//! strategies; the session manager asks the strategy every question that depends on it
//! (which auth call renews, when to schedule the refresh, whether to wait for the expiry,
//! whether sessions start with an OTP) and never looks at which strategy it is.

use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;

use super::LoginKind;
use crate::crypto::AesKey;

/// A session the slot holds, as far as renewal rules look at it.
#[derive(Clone, Copy)]
pub struct Held<'a> {
    /// Its token.
    pub token: &'a HeaderValue,
    /// Its session key.
    pub sek: &'a AesKey,
    /// When it expires, monotonic.
    pub deadline: Instant,
}

/// What renewing takes now.
pub enum Step<'a> {
    /// This auth call.
    Login(LoginKind<'a>),
    /// Nothing gstgate can do alone: the taxpayer must receive an OTP, for this reason.
    NeedsOtp(&'static str),
}

/// What to do when a login hands back a token gstgate already counts as expired (the
/// upstream still holds it by its own clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reask {
    /// Ask again after `after`, with the force flag if `force`.
    Again {
        /// Ask for a new token even if the upstream holds a live one.
        force: bool,
        /// Wait this long first.
        after: Duration,
    },
    /// Take the token as newly issued, with the expiry its reply states.
    Accept,
}

/// A session-renewal strategy.
pub trait Renewal: Send + Sync + 'static {
    /// The auth call that renews now. `current` is the session callers use or, after a
    /// rejection cleared it, the latest one issued; `latest` is the latest one issued (what a
    /// refresh call proves possession of); `portal_ends_at` is when the taxpayer's API-access
    /// period ends, for strategies that track one.
    fn step<'a>(
        &self,
        current: Option<Held<'a>>,
        latest: Option<Held<'a>>,
        portal_ends_at: Option<SystemTime>,
        now: Instant,
    ) -> Step<'a>;

    /// When the refresh of a session sent at `sent` and expiring at `deadline` is due;
    /// `refresh_before` is the upstream's setting.
    fn refresh_at(&self, deadline: Instant, sent: Instant, refresh_before: Duration) -> Instant;

    /// A login for a session that has expired (or is about to) waits until then, if the
    /// upstream would only hand the old token back before it.
    fn renewable_from(&self, _deadline: Instant) -> Option<Instant> {
        None
    }

    /// A login (`forced` or not, the `asks`th in a row) handed back a token gstgate counts
    /// as expired: whether to ask again.
    fn reissued(&self, _forced: bool, _asks: u32) -> Reask {
        Reask::Accept
    }

    /// Whether sessions start with an OTP the taxpayer receives, which only an operator can
    /// ask for: such sessions are kept even when idle, the admin OTP calls apply, and a
    /// refresh the upstream refuses ends the portal session.
    fn otp_sessions(&self) -> bool {
        false
    }
}

/// A password login inside the last `window` of a token's life issues a new token (NIC
/// e-invoice's `ForceRefreshAccessToken`); before that the same token comes back.
pub struct ForceWindow(pub Duration);

impl Renewal for ForceWindow {
    fn step<'a>(
        &self,
        current: Option<Held<'a>>,
        _latest: Option<Held<'a>>,
        _portal_ends_at: Option<SystemTime>,
        now: Instant,
    ) -> Step<'a> {
        // Ask for a new token only inside the force window; outside it the upstream ignores
        // the flag (NIC) or may refuse it.
        let force = current.is_some_and(|s| s.deadline.saturating_duration_since(now) <= self.0);
        Step::Login(LoginKind::Password { force })
    }

    fn refresh_at(&self, deadline: Instant, sent: Instant, refresh_before: Duration) -> Instant {
        ahead_of_expiry(deadline, sent, refresh_before)
    }

    /// A login without the flag while the upstream still holds the token (a restart in its
    /// last seconds, a session dropped as expired) gets that token back, already expired by
    /// gstgate's count and inside the upstream's force window by its own: ask once more,
    /// forcing a new one.
    fn reissued(&self, forced: bool, _asks: u32) -> Reask {
        if forced {
            Reask::Accept
        } else {
            Reask::Again {
                force: true,
                after: Duration::ZERO,
            }
        }
    }
}

/// A password login before expiry returns the same token and nothing forces a new one (NIC
/// e-way bill): renew just after expiry.
pub struct AtExpiry;

/// The login at expiry waits this long past the deadline: gstgate counts a token's life from
/// when it *sent* the login, so the upstream's clock for the token runs a little later, and a
/// login at the very deadline gets the old token back.
const AT_EXPIRY_DELAY: Duration = Duration::from_secs(1);

/// Logins at expiry that still get the old token back are asked this many times in all...
const AT_EXPIRY_ASKS: u32 = 3;
/// ... this far apart, before the token is taken as reissued.
const AT_EXPIRY_GAP: Duration = Duration::from_secs(1);

impl Renewal for AtExpiry {
    fn step<'a>(
        &self,
        _current: Option<Held<'a>>,
        _latest: Option<Held<'a>>,
        _portal_ends_at: Option<SystemTime>,
        _now: Instant,
    ) -> Step<'a> {
        Step::Login(LoginKind::Password { force: false })
    }

    fn refresh_at(&self, deadline: Instant, _sent: Instant, _refresh_before: Duration) -> Instant {
        deadline + AT_EXPIRY_DELAY
    }

    fn renewable_from(&self, deadline: Instant) -> Option<Instant> {
        Some(deadline + AT_EXPIRY_DELAY)
    }

    fn reissued(&self, _forced: bool, asks: u32) -> Reask {
        if asks < AT_EXPIRY_ASKS {
            Reask::Again {
                force: false,
                after: AT_EXPIRY_GAP,
            }
        } else {
            Reask::Accept
        }
    }
}

/// The first session needs an OTP the taxpayer receives; after that a refresh call extends
/// it without one for as long as the portal session lasts (GSTN).
pub struct OtpThenRefresh;

impl Renewal for OtpThenRefresh {
    fn step<'a>(
        &self,
        _current: Option<Held<'a>>,
        latest: Option<Held<'a>>,
        portal_ends_at: Option<SystemTime>,
        _now: Instant,
    ) -> Step<'a> {
        // Never start a session, or keep one past the API-access period the taxpayer
        // enabled: either needs an OTP, which only an operator may request.
        match (latest, portal_ends_at) {
            (None, _) => Step::NeedsOtp("no session has been started with an OTP"),
            (Some(_), Some(end)) if end <= crate::clock::wall() => {
                Step::NeedsOtp("the API-access period the taxpayer enabled has ended")
            }
            (Some(l), _) => Step::Login(LoginKind::Refresh {
                token: l.token,
                sek: l.sek,
            }),
        }
    }

    fn refresh_at(&self, deadline: Instant, sent: Instant, refresh_before: Duration) -> Instant {
        ahead_of_expiry(deadline, sent, refresh_before)
    }

    fn otp_sessions(&self) -> bool {
        true
    }
}

/// `refresh_before` ahead of expiry, plus a little jitter so sessions created together do
/// not refresh together. The jitter moves the refresh *later*, never earlier: with the default
/// `refresh_before` equal to NIC's 10-minute force window, an earlier refresh would fall
/// outside the window and get the old token back. Never in the first half of a token's life,
/// so a short-lived token cannot cause a refresh storm.
fn ahead_of_expiry(deadline: Instant, sent: Instant, refresh_before: Duration) -> Instant {
    let lifetime = deadline.saturating_duration_since(sent);
    let jitter_cap = (refresh_before / 20).min(Duration::from_secs(30));
    let jitter = jitter_cap.mul_f64(rand::random::<f64>());
    let target = deadline.checked_sub(refresh_before).unwrap_or(sent) + jitter;
    target.max(sent + lifetime / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held<'a>(sek: &'a AesKey, token: &'a HeaderValue, deadline: Instant) -> Held<'a> {
        Held {
            token,
            sek,
            deadline,
        }
    }

    #[test]
    fn a_force_window_forces_only_inside_the_window() {
        let now = Instant::now();
        let key = AesKey::random();
        let token = HeaderValue::from_static("t");
        let renewal = ForceWindow(Duration::from_secs(600));
        let force = |left: u64| match renewal.step(
            Some(held(&key, &token, now + Duration::from_secs(left))),
            None,
            None,
            now,
        ) {
            Step::Login(LoginKind::Password { force }) => force,
            _ => panic!("a force-window renewal always logs in with the password"),
        };
        assert!(force(600));
        assert!(force(30));
        assert!(!force(601));
    }

    #[test]
    fn an_otp_session_refreshes_the_latest_token_until_the_portal_ends() {
        let now = Instant::now();
        let key = AesKey::random();
        let token = HeaderValue::from_static("t");
        let latest = Some(held(&key, &token, now));
        let later = SystemTime::now() + Duration::from_secs(3600);
        let earlier = SystemTime::now() - Duration::from_secs(1);
        assert!(matches!(
            OtpThenRefresh.step(None, None, Some(later), now),
            Step::NeedsOtp(_)
        ));
        assert!(matches!(
            OtpThenRefresh.step(None, latest, Some(earlier), now),
            Step::NeedsOtp(_)
        ));
        assert!(matches!(
            OtpThenRefresh.step(None, latest, Some(later), now),
            Step::Login(LoginKind::Refresh { token: t, .. }) if *t == "t"
        ));
    }

    #[test]
    fn refreshes_come_ahead_of_expiry_but_never_in_the_first_half_of_a_life() {
        let sent = Instant::now();
        let before = Duration::from_secs(600);
        let long = sent + Duration::from_secs(6 * 3600);
        let at = ForceWindow(before).refresh_at(long, sent, before);
        assert!(at >= long - before && at <= long - before + Duration::from_secs(30));
        let short = sent + Duration::from_secs(60);
        assert_eq!(
            ForceWindow(before).refresh_at(short, sent, before),
            sent + Duration::from_secs(30)
        );
        assert_eq!(
            AtExpiry.refresh_at(long, sent, before),
            long + AT_EXPIRY_DELAY
        );
    }
}
