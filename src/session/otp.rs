//! The operator's GSTN OTP flows: asking the portal to send the taxpayer an OTP, and
//! starting a session with it.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::group::Turn;
use super::guard::Admit;
use super::login::Purpose;
use super::pacer::{Permit, Priority};
use super::single_flight::Flight;
use super::{Session, Sessions, Slot, Trigger};
use crate::metrics::ResultLabels;
use crate::problem::{chain, GatewayError};
use crate::upstream::LoginKind;

/// An OTP request's app key is used for its OTP no longer than this: portal OTPs expire
/// within minutes, and a stale key is better replaced than kept. For as long, the login
/// allowance keeps room for the OTP login.
pub(in crate::session) const OTP_LIFE: Duration = Duration::from_secs(30 * 60);

/// While an OTP a client's request sent is this fresh, another client's request sends none:
/// the portal's OTPs are valid for 10 minutes, and a second SMS would void the first.
const CLIENT_OTP_PENDING: Duration = Duration::from_secs(10 * 60);

/// Who starts an OTP flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asker {
    /// The operator, through the admin API: the call clears a lockout (a deliberate act).
    Operator,
    /// A drop-in client: the call never clears a lockout, and is answered from a live portal
    /// session or an OTP already on its way, decided inside the single flight.
    Client,
}

impl Sessions {
    /// Asks the upstream to send the taxpayer an OTP (GSTN). An operator's call: it clears a
    /// lockout, but still counts against the login limit (each one is an SMS to the taxpayer).
    pub async fn request_otp(self: &Arc<Self>, slot: &Arc<Slot>) -> Result<(), GatewayError> {
        self.request_otp_as(slot, Asker::Operator).await.map(|_| ())
    }

    /// Asks for an OTP on behalf of `asker`; returns whether one was sent (a client's request
    /// sends none while a portal session lives or an OTP is on its way).
    pub async fn request_otp_as(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        asker: Asker,
    ) -> Result<bool, GatewayError> {
        self.require_otp_api(slot)?;
        self.fly(slot, move |me, slot, flight| async move {
            let turn = me.turn_for(&slot, &flight, asker).await?;
            let answered = asker == Asker::Client
                && (slot.current().is_some()
                    || slot.view().otp_app_key(CLIENT_OTP_PENDING).is_some());
            let result = if answered {
                Ok(false)
            } else {
                me.otp_request_on(&slot, &turn).await.map(|()| true)
            };
            me.end_turn(&slot, turn, false).await;
            result
        })
        .await
    }

    /// The turn of an OTP flow: an operator's clears a lockout, a client's never does.
    async fn turn_for(
        &self,
        slot: &Slot,
        flight: &Flight,
        asker: Asker,
    ) -> Result<Turn, GatewayError> {
        match asker {
            Asker::Operator => self.operator_turn(slot, flight).await,
            Asker::Client => self.turn_to_act(slot, flight).await,
        }
    }

    /// An operator's turn: it never adopts what the group holds, and clears a lockout.
    async fn operator_turn(&self, slot: &Slot, flight: &Flight) -> Result<Turn, GatewayError> {
        let turn = self.turn_to_act(slot, flight).await?;
        slot.change_on(&turn).reset_guard();
        Ok(turn)
    }

    async fn otp_request_on(&self, slot: &Slot, turn: &Turn) -> Result<(), GatewayError> {
        self.count_login(slot, turn, crate::clock::now(), false, Admit::OtpRequest)
            .await?;
        let app_key = slot.upstream.profile.otp_app_key();
        let password = slot.view().password();
        let outcome = {
            let mut permit = self.pace(slot, Priority::Waited).await;
            permit.as_mut().map(Permit::used);
            self.auth.request_otp(slot, &password, &app_key).await
        };
        let label = |result: &'static str| ResultLabels {
            upstream: slot.upstream.name.clone().into(),
            result,
        };
        match outcome {
            Ok(()) => {
                // The OTP must be exchanged under this very key, maybe through another
                // replica: it is kept (sealed) with the slot's record.
                slot.change_on(turn)
                    .keep_otp_app_key(app_key, crate::clock::wall());
                self.metrics
                    .auth_requests
                    .get_or_create(&label("success"))
                    .inc();
                tracing::info!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                    user = %slot.credential.username, "OTP requested");
                Ok(())
            }
            Err(e) => {
                self.metrics
                    .auth_requests
                    .get_or_create(&label("error"))
                    .inc();
                let err = self.refusal(slot, e);
                tracing::warn!(upstream = %slot.upstream.name, gstin = %slot.credential.gstin,
                    code = err.code(), upstream_code = err.upstream_code(),
                    error = %chain(&err), "OTP request failed");
                Err(err)
            }
        }
    }

    /// Starts a GSTN session with the OTP the taxpayer received (already checked to be six
    /// digits by the admin API); the portal session it opens lasts the credential's
    /// `session_lifetime`.
    pub async fn submit_otp(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        otp: SecretString,
    ) -> Result<Arc<Session>, GatewayError> {
        self.submit_otp_as(slot, otp, Asker::Operator).await
    }

    /// Starts a GSTN session with an OTP on behalf of `asker`; a client's OTP is not sent
    /// while a portal session lives (the live session is the answer).
    pub async fn submit_otp_as(
        self: &Arc<Self>,
        slot: &Arc<Slot>,
        otp: SecretString,
        asker: Asker,
    ) -> Result<Arc<Session>, GatewayError> {
        self.require_otp_api(slot)?;
        self.fly(slot, move |me, slot, flight| async move {
            let turn = me.turn_for(&slot, &flight, asker).await?;
            let live = slot.current().filter(|_| asker == Asker::Client);
            let acted = live.is_none();
            let result = match live {
                Some(session) => Ok(session),
                None => me.start_with_otp(&slot, &turn, otp.expose_secret()).await,
            };
            me.end_turn(&slot, turn, acted && result.is_ok()).await;
            result
        })
        .await
    }

    /// Sends AUTHTOKEN with the OTP on `turn`.
    async fn start_with_otp(
        &self,
        slot: &Slot,
        turn: &Turn,
        otp: &str,
    ) -> Result<Arc<Session>, GatewayError> {
        let admitted = crate::clock::now();
        self.count_login(slot, turn, admitted, true, Admit::OtpLogin)
            .await?;
        // The key the OTP was requested with; without one (an OTP requested some other way)
        // a fresh key, which the portal may refuse.
        let app_key = slot
            .view()
            .otp_app_key(OTP_LIFE)
            .unwrap_or_else(|| slot.upstream.profile.otp_app_key());
        let sent = self
            .login_call(
                slot,
                LoginKind::Otp {
                    otp,
                    app_key: &app_key,
                },
                Priority::Waited,
                None,
            )
            .await;
        if sent.is_ok() {
            slot.change_on(turn).otp_used();
        }
        self.record_outcome(
            slot,
            Trigger::Manual,
            turn,
            sent,
            None,
            admitted,
            Purpose::StartWithOtp,
        )
    }

    fn require_otp_api(&self, slot: &Slot) -> Result<(), GatewayError> {
        if slot.otp_sessions() {
            Ok(())
        } else {
            Err(GatewayError::OtpNotApplicable {
                upstream: slot.upstream.name.to_string(),
                gstin: slot.credential.gstin.to_string(),
            })
        }
    }
}
