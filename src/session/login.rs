//! Logging in: renewing a slot's session the way its API allows, and recording the outcome
//! (the new session, or the failure and what it means for further logins).

use super::guard::Admit;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use secrecy::ExposeSecret;

use super::auth::{LoginError, LoginReply};
use super::group::{Next, Turn};
use super::pacer::{Permit, Priority};
use super::single_flight::Flight;
use super::slot::{Issued, Setback};
use super::{Session, Sessions, Slot, State, Trigger};
use crate::classify;
use crate::metrics::{ResultLabels, TriggerLabels};
use crate::problem::{chain, GatewayError};
use crate::upstream::renewal::{Reask, Step};
use crate::upstream::{Class, LoginKind};

impl Sessions {
    /// A caller's (or the scheduler's) login: the group's session, if another replica
    /// sharing the store has made a newer one than this replica knew of; else a login on this
    /// replica's turn.
    pub(super) async fn login(
        &self,
        slot: &Slot,
        flight: &Flight,
        trigger: Trigger,
    ) -> Result<Arc<Session>, GatewayError> {
        // A caller that finds no session because another request just had it rejected logs
        // in for that rejection, whoever takes the flight first: the trigger says why the
        // session is renewed, not which caller happened to lead.
        let trigger = match trigger {
            Trigger::Cold if rejected_just_now(slot) => Trigger::Rejected,
            other => other,
        };
        // What this replica knew before any wait: a session the group made meanwhile is
        // adopted, not renewed again.
        let seen = slot.view().newest_generation();
        // A proactive refresh waits for the pacer before it takes the group's lease, not while
        // holding it: queued for minutes behind a storm's backlog with the lease, it would
        // hold up every other replica's refresh of the slot, which would poll the lease and
        // give up. If the group's session is then adopted instead, the permit is given back
        // unused and costs no start.
        let deadline = slot.view().session().map(|s| s.deadline);
        let early = match (trigger, deadline) {
            (Trigger::Proactive, Some(deadline)) => {
                self.pace(slot, refresh_priority(slot, deadline)).await
            }
            _ => None,
        };
        let turn = match self.take_turn(slot, flight, seen).await? {
            Next::Adopt(session) => return Ok(session),
            Next::LogIn(turn) => turn,
        };
        let result = self.renew(slot, trigger, &turn, early).await;
        self.end_turn(slot, turn, result.is_ok()).await;
        result
    }

    /// An operator's refresh: clears a lockout and logs in now, whatever the group holds.
    pub(super) async fn operator_login(
        &self,
        slot: &Slot,
        flight: &Flight,
    ) -> Result<Arc<Session>, GatewayError> {
        let turn = self.turn_to_act(slot, flight).await?;
        slot.change_on(&turn).reset_guard();
        let result = self.renew(slot, Trigger::Manual, &turn, None).await;
        self.end_turn(slot, turn, result.is_ok()).await;
        result
    }

    /// Renews the slot's session the way its API's renewal strategy says, on `turn`; the
    /// first login uses `early`, the pacer's permit taken before the turn, if there is one.
    async fn renew(
        &self,
        slot: &Slot,
        trigger: Trigger,
        turn: &Turn,
        mut early: Option<Permit<'_>>,
    ) -> Result<Arc<Session>, GatewayError> {
        let renewal = slot.renewal();
        // After a rejection or expiry the session is gone, but its token is what the upstream
        // may hand back: compare against (and time the login by) the latest one issued.
        let (current, latest, portal_ends_at) = {
            let st = slot.view();
            let latest = st.latest().cloned();
            (
                st.session().cloned().or_else(|| latest.clone()),
                latest,
                st.portal_ends_at(),
            )
        };
        if let Some(at) = current.as_ref().and_then(|s| {
            renewal
                .renewable_from(s.deadline)
                .filter(|_| !s.usable(crate::clock::now()))
        }) {
            // Hold the requests that straddle the boundary until the token has expired by
            // the upstream's clock too; a login before that returns the same token.
            tokio::time::sleep_until(at.into()).await;
        }
        let mut asks = 1;
        let mut forced_next = false;
        loop {
            let now = crate::clock::now();
            let kind = match renewal.step(
                current.as_deref().map(Session::held),
                latest.as_deref().map(Session::held),
                portal_ends_at,
                now,
            ) {
                Step::Login(LoginKind::Password { .. }) if forced_next => {
                    LoginKind::Password { force: true }
                }
                Step::Login(kind) => kind,
                Step::NeedsOtp(reason) => {
                    slot.change_on(turn).end_portal();
                    return Err(self.otp_required(slot, reason));
                }
            };
            let forced = matches!(kind, LoginKind::Password { force: true });
            self.count_login(slot, turn, now, true, Admit::Login)
                .await?;
            let priority = match (trigger, current.as_deref()) {
                (Trigger::Proactive, Some(s)) => refresh_priority(slot, s.deadline),
                _ => Priority::Waited,
            };
            let result = self.login_call(slot, kind, priority, early.take()).await;
            let purpose = if !stale(&result, current.as_deref()) {
                Purpose::Renew
            } else {
                match renewal.reissued(forced, asks) {
                    Reask::Again { force, after } => {
                        // The upstream still holds the old token by its clock: ask again
                        // (forcing, where the API can), holding the callers rather than
                        // handing them a token about to die.
                        slot.change_on(turn).pause_refreshing();
                        asks += 1;
                        forced_next = force;
                        tokio::time::sleep(after).await;
                        continue;
                    }
                    Reask::Accept => {
                        // The upstream vouched for the token at every ask: count it as issued
                        // now rather than fail callers or spend the login budget on more
                        // asks. If it does expire sooner, the rejection path logs in again.
                        tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                            "the upstream keeps returning a token gstgate counts as expired: is the upstream's token_lifetime set shorter than the real one?");
                        Purpose::AcceptReissued
                    }
                }
            };
            return self.record_outcome(slot, trigger, turn, result, current, now, purpose);
        }
    }

    /// The error for a slot that cannot go on without an OTP.
    pub(super) fn otp_required(&self, slot: &Slot, reason: &str) -> GatewayError {
        GatewayError::OtpRequired {
            upstream: slot.upstream.name.to_string(),
            gstin: slot.credential.gstin.to_string(),
            reason: reason.to_owned(),
        }
    }

    /// Records the outcome of a login admitted at `admitted` on `turn`: the new session, or
    /// the failure and what it means for further logins.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn record_outcome(
        &self,
        slot: &Slot,
        trigger: Trigger,
        turn: &Turn,
        result: Result<LoginReply, LoginError>,
        current: Option<Arc<Session>>,
        admitted: Instant,
        purpose: Purpose,
    ) -> Result<Arc<Session>, GatewayError> {
        let upstream = &slot.upstream;
        let mut change = slot.change_on(turn);
        let label = |result: &'static str| ResultLabels {
            upstream: upstream.name.clone().into(),
            result,
        };
        // The same token means the upstream kept the old session: it keeps its own expiry
        // (the clock is never restarted on an old token), so only a new token must come with
        // a usable life.
        let known = change
            .session()
            .cloned()
            .or(current)
            .filter(|_| purpose != Purpose::AcceptReissued);
        let result = result.and_then(|sent| {
            let token = sent.login.token.expose_secret().as_bytes();
            match known.filter(|k| k.token.as_bytes() == token) {
                Some(existing) => Ok((sent, Renewed::Same(existing))),
                None => match sent.life {
                    Ok(life) => Ok((sent, Renewed::New(life))),
                    Err(why) => Err(LoginError::Gateway(GatewayError::UpstreamBadResponse(
                        why.into(),
                    ))),
                },
            }
        });
        let (sent, renewed) = match result {
            Ok(renewed) => renewed,
            Err(e) => {
                let credentials =
                    matches!(&e, LoginError::Refused(v) if v.class == Class::CredentialsRejected);
                self.metrics
                    .auth_requests
                    .get_or_create(&label(if credentials {
                        "credentials_rejected"
                    } else {
                        "error"
                    }))
                    .inc();
                let setback = setback(slot, &e);
                let err = self.refusal(slot, e);
                if purpose == Purpose::StartWithOtp {
                    // The operator who sent the OTP gets the answer directly; a typo or a
                    // portal refusal says nothing about the running session's health.
                    change.pause_refreshing();
                    drop(change);
                    tracing::warn!(upstream = %upstream.name, gstin = %slot.credential.gstin,
                        code = err.code(), upstream_code = err.upstream_code(),
                        error = %chain(&err), "OTP login failed");
                } else {
                    change.login_failed(&err, setback, admitted);
                    drop(change);
                    tracing::warn!(upstream = %upstream.name, gstin = %slot.credential.gstin,
                        user = %slot.credential.username, code = err.code(), upstream_code = err.upstream_code(),
                        error = %chain(&err), request_id = crate::request::current().as_deref(),
                        "login failed");
                }
                return Err(err);
            }
        };
        self.metrics
            .auth_requests
            .get_or_create(&label("success"))
            .inc();
        change.login_succeeded(sent.at);
        if purpose == Purpose::StartWithOtp {
            change.open_portal(sent.at);
        }
        let (expires_at, lifetime) = match renewed {
            Renewed::Same(existing) => {
                // A re-login because the upstream rejected this token, answered with this
                // token: the upstream says the session is alive (NIC hands back a valid token
                // to every login outside its force window) while its data calls refuse it
                // (revoked on one side only, a header it does not accept with this user). A
                // login cannot fix that, and compare-and-invalidate alone would not stop the
                // next rejection from logging in again, until the guard answered every caller
                // 429 for the rest of the window. So the session is kept as it is
                // (generation, expiry, refresh schedule) and marked: for `login_window`, a
                // rejection of it fails the request with `token_rejected` at once, without a
                // login. Recovery needs no operator: once the upstream accepts the token
                // again, requests succeed with it; a new token (the proactive refresh, the
                // expiry) is a new generation the mark does not cover; and after
                // `login_window` the next rejection tries one re-login again.
                if trigger == Trigger::Rejected {
                    change.mark_rejected(
                        existing.generation,
                        crate::clock::now() + upstream.login_window,
                    );
                    tracing::warn!(upstream = %upstream.name, gstin = %slot.credential.gstin,
                        user = %slot.credential.username, generation = existing.generation,
                        no_relogin_for_secs = upstream.login_window.as_secs(),
                        "the upstream rejected the token its login hands back; requests rejected with it fail without another login");
                }
                change.restore(existing.clone());
                drop(change);
                self.schedule_after_same_token(slot, &existing);
                return Ok(existing);
            }
            Renewed::New(life) => life,
        };
        let LoginReply {
            login,
            at: sent_at,
            instant: sent_instant,
            ..
        } = sent;
        let mut token = HeaderValue::from_str(login.token.expose_secret()).map_err(|_| {
            GatewayError::UpstreamBadResponse("the token is not a valid header value".into())
        })?;
        token.set_sensitive(true);
        let session = change.install(Issued {
            token,
            sek: login.sek,
            expires_at,
            deadline: sent_instant + lifetime,
            issued_at: sent_at,
        });
        drop(change);
        self.metrics
            .token_refreshes
            .get_or_create(&TriggerLabels {
                upstream: upstream.name.clone().into(),
                trigger: trigger.label(),
            })
            .inc();
        tracing::info!(upstream = %upstream.name, gstin = %slot.credential.gstin,
            user = %slot.credential.username, trigger = trigger.label(),
            generation = session.generation, expires_in_secs = lifetime.as_secs(),
            request_id = crate::request::current().as_deref(), "session established");
        self.scheduler.schedule(
            slot.id,
            session.generation,
            self.refresh_at(slot, &session, sent_instant),
        );
        Ok(session)
    }

    /// The gateway error for a failed auth call.
    pub(super) fn refusal(&self, slot: &Slot, e: LoginError) -> GatewayError {
        let verdict = match e {
            LoginError::Gateway(err) => return err,
            LoginError::Refused(v) => v,
        };
        if verdict.class == Class::TokenRejected && slot.otp_sessions() {
            // A refresh whose token the upstream no longer knows: the portal session is
            // over, and only a new OTP starts another.
            let code = verdict.code.as_deref().unwrap_or("no code");
            return self.otp_required(slot, &format!("the upstream ended the session ({code})"));
        }
        classify::login_refusal(verdict, slot.credential.whose())
    }
}

/// Whether a login's token is one gstgate already counts as expired: the expired token it
/// held, handed back, or a token whose stated expiry is already past. The upstream still
/// holds that token by its own clock (NIC's `TokenExpiry` is whole seconds, and a login
/// without the force flag returns the live token).
fn stale(result: &Result<LoginReply, LoginError>, current: Option<&Session>) -> bool {
    let Ok(sent) = result else {
        return false;
    };
    sent.life.is_err()
        || current.is_some_and(|c| {
            sent.login.token.expose_secret().as_bytes() == c.token.as_bytes()
                && !c.usable(crate::clock::now())
        })
}

/// A proactive refresh's place in the pacer's queue: by when it must be renewed, the
/// session's expiry or, where the API renews only after it (e-way bill), then.
fn refresh_priority(slot: &Slot, deadline: Instant) -> Priority {
    Priority::Refresh(slot.renewal().renewable_from(deadline).unwrap_or(deadline))
}

/// Whether the slot's session was taken away by a token rejection: none is current, yet the
/// latest one has not expired (an expired or forgotten one makes the next login cold).
fn rejected_just_now(slot: &Slot) -> bool {
    let view = slot.view();
    view.session().is_none()
        && view
            .latest()
            .is_some_and(|latest| latest.usable(crate::clock::now()))
}

/// What a failed login means for the next ones.
fn setback(slot: &Slot, e: &LoginError) -> Setback {
    let class = match e {
        LoginError::Refused(v) => v.class,
        // A login that cannot even be built (credentials too long for the RSA key) will not
        // get better by retrying: it locks out like a refused configuration. Anything
        // retrying can cure is backed off from.
        LoginError::Gateway(err) if !err.retryable() => Class::Configuration,
        LoginError::Gateway(_) => Class::Transient,
    };
    match class {
        Class::CredentialsRejected => Setback::LockOut(State::CredentialsRejected),
        Class::Configuration => Setback::LockOut(State::Failed),
        Class::AccessDisabled => Setback::AccessDisabled,
        // The upstream no longer knows the session: its token is as dead as the refresh.
        Class::TokenRejected if slot.otp_sessions() => Setback::SessionGone,
        // NIC e-way bill's 118 says "try after 5 minutes".
        Class::Throttled => Setback::HoldOff(slot.upstream.login_window / 3),
        _ if matches!(e, LoginError::Gateway(GatewayError::UpstreamUnreachable(_))) => {
            Setback::Unreachable
        }
        _ => Setback::BackOff,
    }
}

/// What a login that `record_outcome` records was for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Renewing (or starting) a session the API's usual way.
    Renew,
    /// Opening a GSTN portal session with an OTP.
    StartWithOtp,
    /// Taking a token the upstream keeps returning past its expiry as newly issued.
    AcceptReissued,
}

/// What a successful login brought.
enum Renewed {
    /// The token gstgate already holds: its session and expiry stand.
    Same(Arc<Session>),
    /// A new token: its expiry and life.
    New((SystemTime, Duration)),
}
