//! The request path of a drop-in caller: an unmodified NIC/GSTN client holding a token of
//! gstgate's (see [`crate::dropin`]). Its login is answered by gstgate; its data calls are
//! opened with its SEK and then take the gateway-mode path (`Proxy::forward`), and the reply
//! is sealed for it again in `respond`.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderValue, Response};

use super::call::{Aim, Call};
use super::respond::api_answer;
use super::{Outcome, Proxy};
use crate::dropin::Refused;
use crate::path::CallerPath;
use crate::problem::{ErrorCode, GatewayError};
use crate::session::Trigger;
use crate::upstream::dropin::Refusal;
use crate::upstream::Upstream;

impl Proxy {
    /// Serves a drop-in caller's request on `upstream`: its login, or a data call.
    pub(super) async fn process_dropin<B>(
        &self,
        parts: &Parts,
        body: B,
        upstream: &Arc<Upstream>,
        path: CallerPath,
        request_id: Option<&HeaderValue>,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, GatewayError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        // The client first, from its headers alone: nobody without a client id and secret
        // makes gstgate buffer a body or touch its private key.
        let client = match crate::dropin::identify(&self.clients(), &parts.headers) {
            Ok(c) => c,
            Err(r) => {
                if upstream.is_auth_path(&path) {
                    self.dropin.count_login(upstream, r.label());
                }
                return refused(upstream, parts, r);
            }
        };
        outcome.client = Some(client.name.clone());
        // The client's rate next, before anything of the request is read.
        client.admit_rate()?;
        outcome.gstin = parts
            .headers
            .get(&crate::request::GSTIN)
            .and_then(|v| v.to_str().ok())
            .and_then(|g| crate::gstin::Gstin::parse(g.trim()).ok());
        let body = self.read_body(body).await?;
        outcome.body_read = true;
        if upstream.is_auth_path(&path) {
            let answer = self
                .dropin
                .login(&self.sessions, &client, upstream, &parts.headers, &body)
                .await;
            return match answer {
                Ok(reply) => Ok(api_answer(reply)),
                Err(Refused::Api(r)) => refused(upstream, parts, r),
                Err(Refused::Gateway(e)) => Err(e),
            };
        }
        let session = match self
            .dropin
            .authorize(&client, upstream, &parts.headers)
            .await
        {
            Ok(s) => s,
            Err(r) => return refused(upstream, parts, r),
        };
        outcome.gstin = Some(session.owner.gstin.clone());
        let slot = self.sessions.lookup(
            &upstream.name,
            &session.owner.gstin,
            Some(&session.owner.username),
        )?;
        upstream
            .profile
            .check_request(&path, &slot.credential.gstin)?;
        let opened =
            match upstream
                .profile
                .dropin()
                .open_request(&parts.method, &body, &session.sek)
            {
                Ok(plain) => Bytes::from(plain),
                Err(r) => return refused(upstream, parts, r),
            };
        let upstream_session = match self.sessions.session(&slot, Trigger::Cold).await {
            Ok(s) => s,
            // GSTN with no portal session: the API's invalid-session code sends the client
            // into its own OTP flow, which gstgate then takes to the portal.
            Err(GatewayError::OtpRequired { .. }) => {
                return refused(upstream, parts, Refusal::TokenInvalid)
            }
            Err(e) => return Err(e),
        };
        let call = Call {
            upstream,
            slot: &slot,
            caller: &parts.headers,
            request_id,
            method: &parts.method,
            path: &path,
            body: &opened,
            dropin: Some(&session),
            earlier_attempt_unknown: false,
            aim: Aim::Usual,
            claim: None,
        };
        self.forward(&call, &upstream_session, outcome).await
    }
}

/// A drop-in refusal as the caller gets it: the API's own error reply where the API has a
/// code for the case, else gstgate's problem.
fn refused(
    upstream: &Upstream,
    parts: &Parts,
    refusal: Refusal,
) -> Result<Response<Body>, GatewayError> {
    tracing::debug!(upstream = %upstream.name, reason = refusal.describe(), "drop-in caller refused");
    if let Some(body) = upstream.profile.dropin().refusal_reply(refusal) {
        let mut res = api_answer(body);
        // For the access log: the reply is the API's, the reason gstgate's.
        res.extensions_mut().insert(ErrorCode(refusal.label()));
        return Ok(res);
    }
    let gstin = || {
        parts
            .headers
            .get(&crate::request::GSTIN)
            .and_then(|v| v.to_str().ok())
            .map(|g| g.chars().take(15).collect())
            .unwrap_or_default()
    };
    Err(match refusal {
        Refusal::ClientIdMissing | Refusal::ClientSecretMissing | Refusal::ClientRejected => {
            GatewayError::ClientRejected
        }
        Refusal::TokenInvalid | Refusal::PasswordWrong => GatewayError::ClientRejected,
        Refusal::GstinMissing => GatewayError::GstinMissing,
        Refusal::GstinNotAllowed => GatewayError::GstinNotAllowed(gstin()),
        Refusal::UserMissing | Refusal::UserUnknown => GatewayError::NoCredential {
            upstream: upstream.name.to_string(),
            gstin: gstin(),
        },
        Refusal::OtpInvalid => GatewayError::OtpInvalid {
            upstream_code: None,
            detail: refusal.describe().into(),
        },
        Refusal::PayloadMalformed
        | Refusal::PayloadUndecryptable
        | Refusal::AppKeyInvalid
        | Refusal::DataInvalid => GatewayError::BodyInvalid(refusal.describe().into()),
    })
}
