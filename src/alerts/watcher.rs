//! Where alerts come from: a task that reads the sessions needing attention every
//! [`POLL_INTERVAL`] and turns what it sees into alert episodes.
//!
//! Reading the session manager's rows — the same data `/admin/sessions` and the status page
//! show — keeps it free of alerting code: it only has to report its state truthfully, and the
//! rules for when an operator is told live here, in one place. The price is latency of at most
//! one interval, which is nothing next to how fast a person reacts to an alert. Each pass
//! runs on the blocking pool: with 100,000 slots it is a pass over all of them, which the
//! proxy's worker threads should not wait behind.
//!
//! | alert | open while | closed when |
//! |---|---|---|
//! | `credentials_rejected` | the slot is `credentials_rejected` | it is anything else (an operator reset it) |
//! | `refresh_failing` | the slot has a login error in two passes in a row (it keeps failing, not a blip) | a login succeeded (no error) |
//! | `otp_required` | the slot is `needs_otp` | it is anything else |
//! | `otp_needed_soon` | the GSTN portal session ends within `otp_warning` and no OTP is needed yet | the session was extended, or an OTP is needed now (`otp_required` takes over) |

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use super::{AlertKind, Alerts, Detail, Subject};
use crate::session::{SessionInfo, Sessions, State};
use crate::tasks::Tasks;

/// How often sessions are checked: a refresh failure is reported within about two of these.
pub const POLL_INTERVAL: Duration = Duration::from_secs(15);

/// Starts watching `sessions` every `every`, on `tasks` until shutdown. The task holds the
/// session manager weakly, so it never keeps it alive, and ends when it is gone. Shutdown
/// stops it between two checks, never during one: a check raises and resolves episodes,
/// whose store writes shutdown waits for.
pub fn spawn(tasks: &Tasks, sessions: &Arc<Sessions>, alerts: Arc<Alerts>, every: Duration) {
    let sessions: Weak<Sessions> = Arc::downgrade(sessions);
    let stop = tasks.clone();
    tasks.spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut rules = Rules::default();
        loop {
            tokio::select! {
                () = stop.stopped() => break,
                _ = ticks.tick() => {}
            }
            let Some(sessions) = sessions.upgrade() else {
                break;
            };
            let alerts = alerts.clone();
            let pass = tokio::task::spawn_blocking(move || {
                let rows = sessions.needing_attention(alerts.otp_warning());
                drop(sessions);
                rules.observe(&rows, &alerts);
                rules
            });
            rules = match pass.await {
                Ok(rules) => rules,
                // A pass that panicked lost its memory of failing logins; the next pass
                // starts again (a "refresh failing" alert waits one pass longer).
                Err(e) => {
                    tracing::error!(error = %e, "alert pass failed");
                    Rules::default()
                }
            };
        }
    });
}

/// The alert rules, with the little memory they need between passes.
#[derive(Debug, Default)]
pub struct Rules {
    /// Slots that had a login error in the previous pass.
    failing: HashSet<Subject>,
}

impl Rules {
    /// One pass: raises and resolves episodes by the table in the module doc. `sessions`
    /// holds at least every slot that needs attention ([`Sessions::needing_attention`]); an
    /// open episode of any other slot is resolved (it recovered, or its credential is gone).
    pub fn observe(&mut self, sessions: &[SessionInfo], alerts: &Alerts) {
        let mut failing = HashSet::new();
        let mut present = HashSet::with_capacity(sessions.len());
        for s in sessions {
            let subject = Subject {
                upstream: s.upstream.as_str().into(),
                gstin: s.gstin.clone(),
                username: s.username.as_str().into(),
            };
            let message =
                |fallback: &str| s.last_error.clone().unwrap_or_else(|| fallback.to_string());

            toggle(
                alerts,
                AlertKind::CredentialsRejected,
                &subject,
                s.state == State::CredentialsRejected,
                || Detail {
                    message: message("the upstream rejected the credentials"),
                    upstream_code: s.last_upstream_code.clone(),
                    ..Detail::default()
                },
            );

            toggle(
                alerts,
                AlertKind::OtpRequired,
                &subject,
                s.state == State::NeedsOtp,
                || Detail {
                    message: message("the GSTN session needs a new OTP"),
                    upstream_code: s.last_upstream_code.clone(),
                    ..Detail::default()
                },
            );

            let ends_soon = s.state != State::NeedsOtp
                && s.session_ends_in_secs
                    .is_some_and(|secs| secs <= alerts.otp_warning().as_secs());
            toggle(
                alerts,
                AlertKind::OtpNeededSoon,
                &subject,
                ends_soon,
                || {
                    let deadline = s.session_ends_at.as_deref().and_then(parse_time);
                    let within = s
                        .session_ends_in_secs
                        .map(|secs| {
                            humantime::format_duration(Duration::from_secs(secs)).to_string()
                        })
                        .unwrap_or_default();
                    Detail {
                        message: format!(
                            "the GSTN session ends in {within}; a new OTP will be needed"
                        ),
                        deadline,
                        ..Detail::default()
                    }
                },
            );

            // A lockout or an OTP wait has its own alert; "refresh failing" is for errors
            // that gstgate is still retrying.
            let failing_now = s.last_error.is_some()
                && !matches!(s.state, State::CredentialsRejected | State::NeedsOtp);
            if failing_now {
                if self.failing.contains(&subject) {
                    alerts.raise(
                        AlertKind::RefreshFailing,
                        &subject,
                        Detail {
                            message: message("logins keep failing"),
                            upstream_code: s.last_upstream_code.clone(),
                            // Calls start failing when the current token runs out.
                            deadline: s.expires_at.as_deref().and_then(parse_time),
                        },
                    );
                }
                failing.insert(subject.clone());
            } else if s.last_error.is_none() {
                alerts.resolve(AlertKind::RefreshFailing, &subject);
            }
            present.insert(subject);
        }
        self.failing = failing;
        alerts.resolve_absent(&present);
    }
}

fn toggle(
    alerts: &Alerts,
    kind: AlertKind,
    subject: &Subject,
    on: bool,
    detail: impl FnOnce() -> Detail,
) {
    if on {
        alerts.raise(kind, subject, detail());
    } else {
        alerts.resolve(kind, subject);
    }
}

fn parse_time(text: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AlertsConfig;
    use crate::metrics::Metrics;

    fn info(gstin: &str, state: State, last_error: Option<&str>) -> SessionInfo {
        SessionInfo {
            upstream: "einvoice".into(),
            gstin: gstin.into(),
            username: "u".into(),
            state,
            expires_at: None,
            expires_in_secs: None,
            last_refresh: None,
            last_error: last_error.map(str::to_string),
            last_upstream_code: None,
            generation: None,
            session_ends_at: None,
            session_ends_in_secs: None,
        }
    }

    fn subject(gstin: &str) -> Subject {
        Subject {
            upstream: "einvoice".into(),
            gstin: gstin.into(),
            username: "u".into(),
        }
    }

    fn alerts() -> Arc<Alerts> {
        let (metrics, _) = Metrics::new();
        Alerts::new(&AlertsConfig::default(), metrics).unwrap()
    }

    #[test]
    fn credentials_rejected_opens_and_closes_with_the_state() {
        let a = alerts();
        let mut rules = Rules::default();
        let g = "27AAPFU0939F1ZV";
        rules.observe(&[info(g, State::CredentialsRejected, Some("1019"))], &a);
        assert!(a.is_open(AlertKind::CredentialsRejected, &subject(g)));
        // A lockout is not also "refresh failing".
        rules.observe(&[info(g, State::CredentialsRejected, Some("1019"))], &a);
        assert!(!a.is_open(AlertKind::RefreshFailing, &subject(g)));
        rules.observe(&[info(g, State::Valid, None)], &a);
        assert!(!a.is_open(AlertKind::CredentialsRejected, &subject(g)));
    }

    /// The watcher hands over only the slots that need attention: one that recovered is
    /// simply not among them, and every episode it had closes. Broken by: resolving only
    /// the subjects handed over.
    #[test]
    fn a_slot_no_longer_handed_over_has_its_episodes_closed() {
        let a = alerts();
        let mut rules = Rules::default();
        let g = "27AAPFU0939F1ZV";
        rules.observe(&[info(g, State::CredentialsRejected, Some("1019"))], &a);
        rules.observe(&[info(g, State::Failed, Some("timeout"))], &a);
        rules.observe(&[info(g, State::Failed, Some("timeout"))], &a);
        assert!(a.is_open(AlertKind::RefreshFailing, &subject(g)));
        rules.observe(&[info(g, State::CredentialsRejected, Some("1019"))], &a);
        assert!(a.is_open(AlertKind::CredentialsRejected, &subject(g)));
        rules.observe(&[], &a);
        for kind in [AlertKind::CredentialsRejected, AlertKind::RefreshFailing] {
            assert!(!a.is_open(kind, &subject(g)), "{kind:?}");
        }
    }

    #[test]
    fn refresh_failing_needs_two_passes_in_a_row_and_closes_on_success() {
        let a = alerts();
        let mut rules = Rules::default();
        let g = "27AAPFU0939F1ZV";
        rules.observe(&[info(g, State::Failed, Some("timeout"))], &a);
        assert!(!a.is_open(AlertKind::RefreshFailing, &subject(g)));
        // A proactive refresh failing while the old token still works counts too.
        rules.observe(&[info(g, State::Valid, Some("timeout"))], &a);
        assert!(a.is_open(AlertKind::RefreshFailing, &subject(g)));
        // A login under way keeps the error and the episode.
        rules.observe(&[info(g, State::Refreshing, Some("timeout"))], &a);
        assert!(a.is_open(AlertKind::RefreshFailing, &subject(g)));
        rules.observe(&[info(g, State::Valid, None)], &a);
        assert!(!a.is_open(AlertKind::RefreshFailing, &subject(g)));
        // A single failure after recovery is a blip, not an episode.
        rules.observe(&[info(g, State::Failed, Some("timeout"))], &a);
        assert!(!a.is_open(AlertKind::RefreshFailing, &subject(g)));
    }

    #[test]
    fn otp_needed_soon_within_the_warning_and_otp_required_takes_over() {
        let a = alerts();
        let mut rules = Rules::default();
        let g = "27AAPFU0939F1ZV";
        let mut s = info(g, State::Valid, None);
        s.session_ends_at = Some("2030-01-03T00:00:00Z".into());
        s.session_ends_in_secs = Some(a.otp_warning().as_secs() + 60);
        rules.observe(std::slice::from_ref(&s), &a);
        assert!(!a.is_open(AlertKind::OtpNeededSoon, &subject(g)));
        s.session_ends_in_secs = Some(3600);
        rules.observe(std::slice::from_ref(&s), &a);
        assert!(a.is_open(AlertKind::OtpNeededSoon, &subject(g)));
        s.state = State::NeedsOtp;
        s.session_ends_in_secs = Some(0);
        rules.observe(std::slice::from_ref(&s), &a);
        assert!(!a.is_open(AlertKind::OtpNeededSoon, &subject(g)));
        assert!(a.is_open(AlertKind::OtpRequired, &subject(g)));
    }
}
