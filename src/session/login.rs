//! Logging in: renewing a slot's session the way its API allows, and recording the outcome
//! (the new session, or the failure and what it means for further logins).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::HeaderValue;
use secrecy::ExposeSecret;

use super::auth::{LoginError, Sent};
use super::group::{Taken, Turn};
use super::slot::{KnownRejected, SlotState};
use super::{Session, Sessions, Slot, State, Trigger};
use crate::classify;
use crate::metrics::{ResultLabels, TriggerLabels};
use crate::problem::{chain, GatewayError};
use crate::upstream::renewal::Step;
use crate::upstream::Class;

impl Sessions {
    /// Gets the slot a new session: the group's, if another replica sharing the store has
    /// made a newer one than this replica knew of (an operator's refresh always logs in);
    /// else by a login, on this replica's turn. An operator's refresh clears a lockout first.
    /// Must be called with the slot's `login` lock held.
    pub(super) async fn login(
        &self,
        slot: &Slot,
        trigger: Trigger,
    ) -> Result<Arc<Session>, GatewayError> {
        let seen = (trigger != Trigger::Manual).then(|| slot.lock().newest_generation());
        let turn = match self.take_turn(slot, seen).await? {
            Taken::Adopted(session) => return Ok(session),
            Taken::Turn(turn) => turn,
        };
        if trigger == Trigger::Manual {
            slot.lock().guard.reset();
        }
        let result = self.renew(slot, trigger, &turn).await;
        self.end_turn(slot, turn, result.is_ok()).await;
        result
    }

    /// Renews the slot's session the way its API's renewal strategy says, on `turn`.
    async fn renew(
        &self,
        slot: &Slot,
        trigger: Trigger,
        turn: &Turn,
    ) -> Result<Arc<Session>, GatewayError> {
        let renewal = slot.renewal();
        // After a rejection the session is gone, but its token is what the upstream may hand
        // back: compare against (and time the login by) the latest one issued.
        let (current, latest, portal_ends_at) = {
            let st = slot.lock();
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
                .filter(|_| !s.usable(Instant::now()))
        }) {
            // Hold the requests that straddle the boundary until the token has expired by
            // the upstream's clock too; a login before that returns the same token.
            tokio::time::sleep_until(at.into()).await;
        }
        let reissue = renewal.reissue();
        let mut asks = 1;
        loop {
            let now = Instant::now();
            let kind = match renewal.step(
                current.as_deref().map(Session::held),
                latest.as_deref().map(Session::held),
                portal_ends_at,
                now,
            ) {
                Step::Login(kind) => kind,
                Step::NeedsOtp(reason) => {
                    slot.lock().end_portal();
                    return Err(self.otp_required(slot, reason));
                }
            };
            self.admit(slot, turn, now, true).await?;
            let result = self.login_call(slot, kind).await;
            let stale = reissue.is_some()
                && matches!((&result, &current), (Ok(sent), Some(c))
                    if sent.login.token.expose_secret().as_bytes() == c.token.as_bytes()
                        && !c.usable(Instant::now()));
            if let Some(reissue) = reissue.filter(|r| stale && asks < r.asks) {
                // The upstream still thinks the old token is alive: ask again shortly,
                // holding the callers rather than handing them a token about to die.
                slot.lock().refreshing = false;
                asks += 1;
                tokio::time::sleep(reissue.gap).await;
                continue;
            }
            let purpose = if stale {
                // The upstream vouched for the token at every ask: count it as issued now
                // rather than fail callers or spend the login budget on more asks. If it does
                // expire sooner, the rejection path logs in again.
                tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                    "the upstream keeps returning a token gstgate counts as expired: is the upstream's token_lifetime set shorter than the real one?");
                Purpose::AcceptReissued
            } else {
                Purpose::Renew
            };
            return self.settle(slot, trigger, result, current, now, purpose);
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

    /// Records the outcome of a login: the new session, or the failure and what it means
    /// for further logins.
    pub(super) fn settle(
        &self,
        slot: &Slot,
        trigger: Trigger,
        result: Result<Sent, LoginError>,
        current: Option<Arc<Session>>,
        started: Instant,
        purpose: Purpose,
    ) -> Result<Arc<Session>, GatewayError> {
        let upstream = &slot.upstream;
        let mut st = slot.lock();
        st.refreshing = false;
        let label = |result: &'static str| ResultLabels {
            upstream: upstream.name.clone().into(),
            result,
        };
        // The same token means the upstream kept the old session: it keeps its own expiry
        // (the clock is never restarted on an old token), so only a new token must come with
        // a usable life.
        let known = st
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
                let class = match &e {
                    LoginError::Refused(v) => v.class,
                    // A login that cannot even be built (credentials too long for the RSA
                    // key) will not get better by retrying: it locks out like a refused
                    // configuration. Anything retrying can cure is backed off from.
                    LoginError::Gateway(err) if !err.retryable() => Class::Configuration,
                    LoginError::Gateway(_) => Class::Transient,
                };
                let err = self.refusal(slot, e);
                if purpose == Purpose::StartWithOtp {
                    // The operator who sent the OTP gets the answer directly; a typo or a
                    // portal refusal says nothing about the running session's health.
                    tracing::warn!(upstream = %upstream.name, gstin = %slot.credential.gstin,
                        code = err.code(), upstream_code = err.upstream_code(),
                        error = %chain(&err), "OTP login failed");
                } else {
                    self.fail(slot, &mut st, class, &err, started);
                }
                return Err(err);
            }
        };
        self.metrics
            .auth_requests
            .get_or_create(&label("success"))
            .inc();
        st.guard.succeeded();
        st.last_error = None;
        st.last_upstream_code = None;
        st.last_refresh = Some(sent.at);
        if purpose == Purpose::StartWithOtp {
            let lifetime = st.session_lifetime;
            st.open_portal(sent.at + lifetime);
        }
        let (expires_at, lifetime) = match renewed {
            Renewed::Same(existing) => {
                // A re-login because the upstream rejected this token, answered with this token:
                // the upstream says the session is alive (NIC hands back a valid token to every
                // login outside its force window) while its data calls refuse it (revoked on one
                // side only, a header it does not accept with this user). A login cannot fix that,
                // and compare-and-invalidate alone would not stop the next rejection from logging
                // in again: the session is back under its generation, so every later request would
                // spend a login until the guard answered 429 `login_rate_limited`. That last
                // rejection would leave no session at all, so even once the upstream accepted the
                // token again every caller would get 429 for the rest of the window. So the session
                // is kept as it is (generation, expiry, refresh schedule) and marked:
                // for `login_window`, a rejection of it fails the request with `token_rejected` at
                // once, without a login. That bounds what this can cost to one login per window,
                // one of `max_logins`, and leaves the rest for the proactive refresh, cold starts
                // and operators. Bumping the generation instead would not help: the next rejection
                // would invalidate the new one just the same. Recovery needs no operator: once the
                // upstream accepts the token again, requests succeed with it; a new token (the
                // proactive refresh in the force window, the expiry) is a new generation the mark
                // does not cover; and after `login_window` the next rejection tries one re-login
                // again, in case the upstream now issues a new token.
                if trigger == Trigger::Rejected {
                    st.known_rejected = Some(KnownRejected {
                        generation: existing.generation,
                        until: Instant::now() + upstream.login_window,
                    });
                    tracing::warn!(upstream = %upstream.name, gstin = %slot.credential.gstin,
                        user = %slot.credential.username, generation = existing.generation,
                        no_relogin_for_secs = upstream.login_window.as_secs(),
                        "the upstream rejected the token its login hands back; requests rejected with it fail without another login");
                }
                st.restore(existing.clone());
                drop(st);
                self.schedule_after_same_token(slot, &existing);
                return Ok(existing);
            }
            Renewed::New(life) => life,
        };
        let Sent {
            login,
            at: sent_at,
            instant: sent_instant,
            ..
        } = sent;
        let token = login.token.expose_secret();
        let mut token_header = HeaderValue::from_str(token).map_err(|_| {
            GatewayError::UpstreamBadResponse("the token is not a valid header value".into())
        })?;
        token_header.set_sensitive(true);
        let session = Arc::new(Session {
            token: token_header,
            sek: login.sek,
            expires_at,
            deadline: sent_instant + lifetime,
            issued_at: sent_at,
            generation: st.next_generation,
        });
        st.next_generation += 1;
        st.install(session.clone());
        drop(st);
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
        if verdict.class == Class::TokenRejected && slot.renewal().otp_sessions() {
            // A refresh whose token the upstream no longer knows: the portal session is
            // over, and only a new OTP starts another.
            let code = verdict.code.as_deref().unwrap_or("no code");
            return self.otp_required(slot, &format!("the upstream ended the session ({code})"));
        }
        classify::login_refusal(verdict, slot.credential.whose())
    }

    /// Records a failed login admitted at `admitted` and what it means for further logins.
    fn fail(
        &self,
        slot: &Slot,
        st: &mut SlotState,
        class: Class,
        err: &GatewayError,
        admitted: Instant,
    ) {
        st.last_error = Some(err.to_string());
        st.last_upstream_code = err.upstream_code().map(str::to_owned);
        match class {
            Class::CredentialsRejected => {
                st.guard.lock_out(State::CredentialsRejected, err.clone())
            }
            Class::Configuration => st.guard.lock_out(State::Failed, err.clone()),
            // The session is gone; the operator's OTP calls clear the lockout.
            Class::AccessDisabled => {
                st.end_portal();
                st.guard.lock_out(State::NeedsOtp, err.clone());
            }
            // The upstream no longer knows the session: its token is as dead as the refresh.
            Class::TokenRejected if slot.renewal().otp_sessions() => {
                st.forget();
            }
            // NIC e-way bill's 118 says "try after 5 minutes".
            // Backoffs run from the failure, not the admission: a login that took its whole
            // timeout to fail must not find its backoff already over.
            Class::Throttled => st
                .guard
                .hold_off(Instant::now(), slot.upstream.login_window / 3),
            _ if matches!(err, GatewayError::UpstreamUnreachable(_)) => {
                st.guard
                    .unreachable(admitted, Instant::now(), err.to_string())
            }
            _ => st.guard.failed(Instant::now(), err.to_string()),
        }
        st.persist();
        tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
            user = %slot.credential.username, code = err.code(), upstream_code = err.upstream_code(),
            error = %chain(err), request_id = crate::request::current().as_deref(),
            "login failed");
    }
}

/// What a login that `settle` records was for.
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
