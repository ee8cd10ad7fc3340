//! The operator's GSTN OTP flows: asking the portal to send the taxpayer an OTP, and
//! starting a session with it.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use secrecy::{ExposeSecret, SecretString};

use super::auth::login_failure;
use super::group::{Taken, Turn};
use super::login::Purpose;
use super::{Session, Sessions, Slot, Trigger};
use crate::metrics::ResultLabels;
use crate::problem::{chain, GatewayError};
use crate::upstream::LoginKind;

/// An OTP request's app key is used for its OTP no longer than this: portal OTPs expire
/// within minutes, and a stale key is better replaced than kept.
const OTP_APP_KEY_LIFE: Duration = Duration::from_secs(30 * 60);

impl Sessions {
    /// Asks the upstream to send the taxpayer an OTP (GSTN). An operator's call: it clears a
    /// lockout, but still counts against the login limit (each one is an SMS to the taxpayer).
    pub async fn request_otp(self: &Arc<Self>, slot: &Arc<Slot>) -> Result<(), GatewayError> {
        self.require_otp_api(slot)?;
        self.detached(
            slot,
            |me, slot| async move { me.send_otp_request(&slot).await },
        )
        .await
    }

    /// Sends OTPREQUEST on this replica's turn; the caller holds the single-flight lock.
    async fn send_otp_request(&self, slot: &Slot) -> Result<(), GatewayError> {
        let turn = self.operator_turn(slot).await?;
        let result = self.otp_request_on(slot, &turn).await;
        self.end_turn(slot, turn, false).await;
        result
    }

    /// An operator's turn: it never adopts what the group holds, and clears a lockout.
    async fn operator_turn(&self, slot: &Slot) -> Result<Turn, GatewayError> {
        let turn = match self.take_turn(slot, None).await? {
            Taken::Turn(turn) => turn,
            Taken::Adopted(_) => {
                return Err(GatewayError::Internal("adopted without asking".into()))
            }
        };
        slot.lock().guard.reset();
        Ok(turn)
    }

    async fn otp_request_on(&self, slot: &Slot, turn: &Turn) -> Result<(), GatewayError> {
        self.admit(slot, turn, Instant::now(), false).await?;
        let app_key = slot.upstream.profile.otp_app_key();
        let sent = self
            .auth_call(slot, LoginKind::OtpRequest { app_key: &app_key })
            .await;
        let label = |result: &'static str| ResultLabels {
            upstream: slot.upstream.name.clone().into(),
            result,
        };
        let outcome = sent.and_then(|sent| {
            slot.upstream
                .profile
                .parse_ack(&sent.body)
                .map_err(|f| login_failure(f, sent.status))
        });
        match outcome {
            Ok(()) => {
                // The OTP must be exchanged under this very key, maybe through another
                // replica: it is kept (sealed) with the slot's record.
                {
                    let mut st = slot.lock();
                    st.otp_app_key = Some((app_key, SystemTime::now()));
                    st.persist();
                }
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
        self.require_otp_api(slot)?;
        self.detached(slot, |me, slot| async move {
            me.start_with_otp(&slot, otp.expose_secret()).await
        })
        .await
    }

    /// Sends AUTHTOKEN with the OTP on this replica's turn; the caller holds the
    /// single-flight lock.
    async fn start_with_otp(&self, slot: &Slot, otp: &str) -> Result<Arc<Session>, GatewayError> {
        let turn = self.operator_turn(slot).await?;
        let admitted = Instant::now();
        let result = match self.admit(slot, &turn, admitted, true).await {
            Ok(()) => {
                // The key the OTP was requested with; without one (an OTP requested some
                // other way) a fresh key, which the portal may refuse.
                let app_key = slot
                    .lock()
                    .otp_app_key
                    .as_ref()
                    .filter(|(_, at)| at.elapsed().is_ok_and(|age| age < OTP_APP_KEY_LIFE))
                    .map(|(k, _)| k.clone())
                    .unwrap_or_else(|| slot.upstream.profile.otp_app_key());
                let sent = self
                    .login_call(
                        slot,
                        LoginKind::Otp {
                            otp,
                            app_key: &app_key,
                        },
                    )
                    .await;
                if sent.is_ok() {
                    slot.lock().otp_app_key = None;
                }
                self.settle(
                    slot,
                    Trigger::Manual,
                    sent,
                    None,
                    admitted,
                    Purpose::StartWithOtp,
                )
            }
            Err(e) => Err(e),
        };
        self.end_turn(slot, turn, result.is_ok()).await;
        result
    }

    fn require_otp_api(&self, slot: &Slot) -> Result<(), GatewayError> {
        if slot.renewal().otp_sessions() {
            Ok(())
        } else {
            Err(GatewayError::OtpNotApplicable {
                upstream: slot.upstream.name.to_string(),
                gstin: slot.credential.gstin.to_string(),
            })
        }
    }
}
