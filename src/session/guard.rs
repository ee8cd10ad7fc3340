//! The lockout guard: what stands between a burst of caller requests and an
//! upstream that blocks taxpayers whose software hammers its login.
//!
//! * Credential and configuration rejections lock the credential out until an operator
//!   resets it (or the config changes): retrying a wrong password only gets the user blocked.
//! * Logins are rate-limited per credential (sliding window).
//! * Transient failures back off exponentially with full jitter, so that many gateways or
//!   many GSTINs failing together do not retry in lock-step.

use std::collections::VecDeque;
use std::time::{Duration, Instant, SystemTime};

use super::State;
use crate::classify::Whose;
use crate::problem::GatewayError;
use crate::store::{LockoutKind, StoredGuard, StoredLockout};
use crate::window::{prune, wait_for_room};

/// First backoff step after a transient login failure.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest backoff between login attempts.
const BACKOFF_CAP: Duration = Duration::from_secs(60);

/// What a login needs of the allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Room for this many logins in the window; the login takes one. More than one where
    /// the room must outlast it: an OTP request needs room for the OTP login it brings, and
    /// any other login leaves that room to an OTP login already owed it.
    Room(usize),
    /// The OTP login of an OTP request that was admitted with room for it: never refused for
    /// the count (the taxpayer has the OTP), though still for a lockout or a backoff.
    Reserved,
}

/// Why a login is being admitted, which decides what it [`Need`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// A login that makes or renews a session (password, refresh).
    Login,
    /// An OTP request: it must leave room for the OTP login it brings.
    OtpRequest,
    /// The OTP login: in the room its request left, if that request is still owed it.
    OtpLogin,
}

/// Per-credential login admission.
#[derive(Debug)]
pub struct Guard {
    max_logins: u32,
    window: Duration,
    /// Send times of recent logins, oldest first.
    recent: VecDeque<Instant>,
    /// Boxed: rare, and 100 bytes inline in every slot of a 100,000-credential table.
    lockout: Option<Box<(State, GatewayError)>>,
    failures: u32,
    backoff_until: Option<Instant>,
    last_failure: Option<String>,
    /// Send times of recent logins made while the shared store was unreachable.
    offline: VecDeque<Instant>,
}

impl Guard {
    /// A guard allowing `max_logins` per `window`.
    pub fn new(max_logins: u32, window: Duration) -> Self {
        Self {
            max_logins,
            window,
            recent: VecDeque::new(),
            lockout: None,
            failures: 0,
            backoff_until: None,
            last_failure: None,
            offline: VecDeque::new(),
        }
    }

    /// Admits a login while the store shared with other replicas is unreachable: as
    /// [`Guard::admit`], and only while this replica's own logins of the window are fewer
    /// than `share`, its part of the group's allowance.
    pub fn take_login_offline(
        &mut self,
        now: Instant,
        share: u32,
        need: Need,
    ) -> Result<(), GatewayError> {
        prune(&mut self.offline, self.window, now);
        if let Need::Room(room) = need {
            if let Some(wait) = wait_for_room(&self.offline, room, share as usize, self.window, now)
            {
                return Err(GatewayError::LoginThrottled {
                    retry_after_secs: secs_ceil(wait),
                });
            }
        }
        self.admit(now, need)?;
        self.offline.push_back(now);
        Ok(())
    }

    /// The state to store, by the wall clock (`wall` is the wall-clock reading of `now`).
    pub fn stored(&self, now: Instant, wall: SystemTime) -> StoredGuard {
        let to_wall = |t: Instant| match t.checked_duration_since(now) {
            Some(ahead) => wall + ahead,
            None => wall - now.duration_since(t),
        };
        StoredGuard {
            recent: self
                .recent
                .iter()
                .filter(|t| now.duration_since(**t) < self.window)
                .map(|t| to_wall(*t))
                .collect(),
            backoff_until: self.backoff_until.filter(|u| *u > now).map(to_wall),
            failures: self.failures,
            lockout: self
                .lockout
                .as_deref()
                .and_then(|(_, err)| stored_lockout(err)),
        }
    }

    /// Takes up stored state: after a restart, or what the group's record says. The logins
    /// this replica made while the store was unreachable stay counted too.
    pub fn take_up(&mut self, g: &StoredGuard, now: Instant, wall: SystemTime, whose: Whose<'_>) {
        let to_instant = |t: SystemTime| match t.duration_since(wall) {
            Ok(ahead) => now + ahead,
            Err(e) => now.checked_sub(e.duration()).unwrap_or(now),
        };
        let mut recent: Vec<Instant> = g.recent.iter().map(|t| to_instant(*t)).collect();
        // Once written for the group, an offline login is in both: counting it twice errs on
        // the side of fewer logins, and only until it leaves the window.
        recent.extend(self.offline.iter().copied());
        recent.sort();
        self.recent = recent.into();
        self.backoff_until = g.backoff_until.map(to_instant).filter(|u| *u > now);
        self.failures = g.failures;
        if self.backoff_until.is_none() {
            self.last_failure = None;
        }
        // A lockout this replica found itself that the record cannot carry stays.
        let local_only = self
            .lockout
            .as_deref()
            .is_some_and(|(_, err)| stored_lockout(err).is_none());
        if !local_only {
            self.lockout = g.lockout.as_ref().map(|l| Box::new(lockout(l, whose)));
        }
    }

    /// Admits a login that needs `need` of the allowance now, or says why not (with how long
    /// until it would fit). An admitted login counts against the limit.
    pub fn admit(&mut self, now: Instant, need: Need) -> Result<(), GatewayError> {
        if let Some((_, err)) = self.lockout.as_deref() {
            return Err(err.clone());
        }
        if let Some(until) = self.backoff_until.filter(|u| *u > now) {
            return Err(GatewayError::LoginBackoff {
                retry_after_secs: secs_ceil(until - now),
                reason: self
                    .last_failure
                    .clone()
                    .unwrap_or_else(|| "previous login failed".into()),
            });
        }
        prune(&mut self.recent, self.window, now);
        if let Need::Room(room) = need {
            let max = self.max_logins as usize;
            if let Some(wait) = wait_for_room(&self.recent, room, max, self.window, now) {
                return Err(GatewayError::LoginThrottled {
                    retry_after_secs: secs_ceil(wait),
                });
            }
        }
        self.recent.push_back(now);
        Ok(())
    }

    /// A login succeeded: forget past failures.
    pub fn succeeded(&mut self) {
        self.failures = 0;
        self.backoff_until = None;
        self.last_failure = None;
    }

    /// A login failed transiently: back off. While more than one login is left in the
    /// window, briefly (a blip is over in seconds); when only the last one is left, for at
    /// least a fair share of the window, so that a few seconds of upstream errors cannot spend
    /// the whole allowance and leave a recovered upstream unreachable for the rest of it.
    pub fn failed(&mut self, now: Instant, reason: String) {
        let mut wait = self.next_backoff();
        if self.remaining(now) <= 1 {
            let share = self.window / self.max_logins.max(1);
            wait = wait.max(share.mul_f64(0.5 + rand::random::<f64>() / 2.0));
        }
        self.backoff_until = Some(now + wait);
        self.last_failure = Some(reason);
    }

    /// The login admitted at `admitted` never reached the upstream (no connection could be
    /// made), so it cannot count towards the upstream's lockout: it is given back, and only
    /// the exponential backoff from `now` paces the next attempt.
    pub fn unreachable(&mut self, admitted: Instant, now: Instant, reason: String) {
        if let Some(i) = self.recent.iter().rposition(|t| *t == admitted) {
            self.recent.remove(i);
        }
        self.backoff_until = Some(now + self.next_backoff());
        self.last_failure = Some(reason);
    }

    /// Counts a failure and draws the exponential, full-jitter backoff for it.
    fn next_backoff(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ceiling = BACKOFF_BASE
            .saturating_mul(1u32 << self.failures.min(16))
            .min(BACKOFF_CAP);
        ceiling.mul_f64(rand::random::<f64>())
    }

    /// Logins still allowed in the window as of `now`.
    fn remaining(&self, now: Instant) -> usize {
        let used = self
            .recent
            .iter()
            .filter(|t| now.duration_since(**t) < self.window)
            .count();
        (self.max_logins as usize).saturating_sub(used)
    }

    /// Holds logins off for at least `wait`: the upstream asked us to slow down.
    pub fn hold_off(&mut self, now: Instant, wait: Duration) {
        self.failures = self.failures.saturating_add(1);
        self.backoff_until = Some(now + wait);
        self.last_failure = Some("the upstream asked to retry later".into());
    }

    /// Stops all logins until [`Guard::reset`].
    pub fn lock_out(&mut self, state: State, err: GatewayError) {
        self.lockout = Some(Box::new((state, err)));
    }

    /// Clears a lockout and the backoff (operator action).
    pub fn reset(&mut self) {
        self.lockout = None;
        self.succeeded();
    }

    /// The state a lockout imposes, if any.
    pub fn locked_state(&self) -> Option<State> {
        self.lockout.as_deref().map(|(s, _)| *s)
    }

    /// How long until the next attempt is worth making.
    pub fn retry_delay(&self) -> Duration {
        self.backoff_until
            .map(|u| u.saturating_duration_since(crate::clock::now()))
            .unwrap_or(BACKOFF_BASE)
            .max(BACKOFF_BASE)
    }
}

/// A lockout as the store keeps it, for the errors that other replicas can rebuild.
fn stored_lockout(err: &GatewayError) -> Option<StoredLockout> {
    let (kind, upstream_code, message) = match err {
        GatewayError::CredentialsRejected { upstream_code, .. } => (
            LockoutKind::CredentialsRejected,
            upstream_code,
            String::new(),
        ),
        GatewayError::UpstreamConfigRejected {
            upstream_code,
            message,
        } => (LockoutKind::ConfigRejected, upstream_code, message.clone()),
        GatewayError::ApiAccessDisabled { upstream_code, .. } => {
            (LockoutKind::AccessDisabled, upstream_code, String::new())
        }
        _ => return None,
    };
    Some(StoredLockout {
        kind,
        upstream_code: upstream_code.clone(),
        message,
    })
}

/// The lockout a stored one stands for: the state it puts the slot in and the error logins get.
fn lockout(l: &StoredLockout, whose: Whose<'_>) -> (State, GatewayError) {
    let upstream_code = l.upstream_code.clone();
    match l.kind {
        LockoutKind::CredentialsRejected => (
            State::CredentialsRejected,
            GatewayError::CredentialsRejected {
                upstream: whose.upstream.to_owned(),
                gstin: whose.gstin.to_string(),
                username: whose.username.to_owned(),
                upstream_code,
            },
        ),
        LockoutKind::ConfigRejected => (
            State::Failed,
            GatewayError::UpstreamConfigRejected {
                upstream_code,
                message: l.message.clone(),
            },
        ),
        LockoutKind::AccessDisabled => (
            State::NeedsOtp,
            GatewayError::ApiAccessDisabled {
                gstin: whose.gstin.to_string(),
                upstream_code,
            },
        ),
    }
}

fn secs_ceil(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_admits_max_logins_per_window() {
        let mut g = Guard::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(g.admit(t0, Need::Room(1)).is_ok());
        assert!(g.admit(t0, Need::Room(1)).is_ok());
        let err = g
            .admit(t0 + Duration::from_secs(1), Need::Room(1))
            .unwrap_err();
        assert!(matches!(
            err,
            GatewayError::LoginThrottled {
                retry_after_secs: 59
            }
        ));
        assert!(g.admit(t0 + Duration::from_secs(60), Need::Room(1)).is_ok());
    }

    #[test]
    fn lockout_stops_logins_until_reset() {
        let mut g = Guard::new(10, Duration::from_secs(60));
        let err = GatewayError::CredentialsRejected {
            upstream: "einvoice".into(),
            gstin: "g".into(),
            username: "u".into(),
            upstream_code: Some("1019".into()),
        };
        g.lock_out(State::CredentialsRejected, err.clone());
        assert_eq!(g.admit(Instant::now(), Need::Room(1)).unwrap_err(), err);
        assert_eq!(g.locked_state(), Some(State::CredentialsRejected));
        g.reset();
        assert!(g.admit(Instant::now(), Need::Room(1)).is_ok());
    }

    #[test]
    fn the_last_login_of_the_window_is_kept_for_after_a_pause() {
        let window = Duration::from_secs(900);
        let share = window / 4;
        let now = Instant::now();
        // Three logins left after a failure: a short backoff, as for a blip.
        let mut g = Guard::new(4, window);
        g.admit(now, Need::Room(1)).unwrap();
        g.failed(now, "503".into());
        assert!(g.backoff_until.unwrap() <= now + BACKOFF_BASE * 2);
        // One login left: half to all of a fair share of the window first.
        let mut g = Guard::new(4, window);
        for _ in 0..3 {
            g.admit(now, Need::Room(1)).unwrap();
        }
        g.failed(now, "503".into());
        let until = g.backoff_until.unwrap();
        assert!(
            until >= now + share / 2 && until <= now + share,
            "{:?}",
            until - now
        );
        assert!(matches!(
            g.admit(now + share / 4, Need::Room(1)),
            Err(GatewayError::LoginBackoff { .. })
        ));
        assert!(g.admit(now + share, Need::Room(1)).is_ok());
    }

    #[test]
    fn a_login_that_never_left_is_given_back() {
        let mut g = Guard::new(1, Duration::from_secs(900));
        let t0 = Instant::now();
        g.admit(t0, Need::Room(1)).unwrap();
        g.unreachable(t0, t0, "connect".into());
        // Only the short backoff, not a share of the window, before the next attempt.
        let next = g.backoff_until.unwrap();
        assert!(next <= t0 + BACKOFF_BASE * 2);
        assert!(g.admit(next, Need::Room(1)).is_ok());
        assert!(g
            .admit(next + Duration::from_secs(1), Need::Room(1))
            .is_err());
    }

    /// What is stored comes back as the same limits, lockout included, on another clock
    /// reading; logins made offline stay counted.
    #[test]
    fn stored_state_round_trips_by_the_wall_clock() {
        let window = Duration::from_secs(900);
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut g = Guard::new(2, window);
        g.admit(now, Need::Room(1)).unwrap();
        g.failed(now, "503".into());
        g.lock_out(
            State::CredentialsRejected,
            GatewayError::CredentialsRejected {
                upstream: "einvoice".into(),
                gstin: "27AAPFU0939F1ZV".into(),
                username: "u".into(),
                upstream_code: Some("2150".into()),
            },
        );
        let stored = g.stored(now, wall);
        assert_eq!(stored.recent.len(), 1);
        assert!(stored.lockout.is_some());

        let gstin = crate::gstin::Gstin::parse("27AAPFU0939F1ZV").unwrap();
        let whose = Whose {
            upstream: "einvoice",
            gstin: &gstin,
            username: "u",
        };
        let mut other = Guard::new(2, window);
        other.take_login_offline(now, 1, Need::Room(1)).unwrap();
        assert!(
            other.take_login_offline(now, 1, Need::Room(1)).is_err(),
            "its share is spent"
        );
        let later = now + Duration::from_secs(5);
        other.take_up(&stored, later, wall + Duration::from_secs(5), whose);
        assert_eq!(other.recent.len(), 2, "the group's login and its own");
        assert_eq!(other.locked_state(), Some(State::CredentialsRejected));
        assert!(matches!(
            other.admit(later, Need::Room(1)),
            Err(GatewayError::CredentialsRejected { upstream_code: Some(c), .. }) if c == "2150"
        ));
        other.reset();
        assert!(matches!(
            other.admit(later, Need::Room(1)),
            Err(GatewayError::LoginThrottled { .. })
        ));
    }

    #[test]
    fn transient_failures_back_off_within_the_cap() {
        let mut g = Guard::new(100, Duration::from_secs(60));
        let now = Instant::now();
        for _ in 0..20 {
            g.failed(now, "x".into());
        }
        let until = g.backoff_until.unwrap();
        assert!(until <= now + BACKOFF_CAP);
        g.succeeded();
        assert!(g.admit(now, Need::Room(1)).is_ok());
    }
}
