//! Phase 2b, idempotency: after the body is read and before a session is taken, a POST with
//! an `Idempotency-Key` either gets its key's stored answer (no upstream call), or claims
//! the key and goes on; once answered, the claim is settled (`crate::idempotency` holds the
//! rule).

use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::request::Parts;
use http::{Response, StatusCode};

use super::admit::Admitted;
use super::respond::ReplyClass;
use super::{Outcome, Proxy};
use crate::config::Encryption;
use crate::idempotency::{self, after_failure, Begin, Claim, Release};
use crate::metrics::GenerateOutcome;
use crate::problem::GatewayError;
use crate::upstream::Class;

/// How a request goes on after the idempotency phase.
pub(super) enum Keyed {
    /// Its key's stored answer, replayed.
    Replay(Response<Body>),
    /// Onwards, holding its key's claim if it sent one.
    Onwards(Option<Claim>),
}

/// What a waiter leaves of the request timeout for its own answer (a 409 rather than the
/// overall timeout's 504).
const ANSWER_MARGIN: Duration = Duration::from_millis(250);

impl Proxy {
    /// Phase 2b: replays the key's answer, or claims the key (waiting, within the request's
    /// time, for a first request with it still in flight).
    pub(super) async fn claim_key(
        &self,
        parts: &Parts,
        admitted: &Admitted<'_>,
        body: &Bytes,
        outcome: &Outcome,
    ) -> Result<Keyed, GatewayError> {
        let Some(keys) = &self.idempotency else {
            return Ok(Keyed::Onwards(None));
        };
        let upstream = admitted.upstream;
        // A caller's login is answered from the session gstgate holds; it is never keyed.
        if upstream.is_auth_path(&admitted.path) {
            return Ok(Keyed::Onwards(None));
        }
        let Some(key) = idempotency::key(&parts.method, &parts.headers)? else {
            return Ok(Keyed::Onwards(None));
        };
        let client = outcome.client.as_deref().unwrap_or_default();
        let name = idempotency::record_name(
            client,
            &upstream.name,
            admitted.slot.credential.gstin.as_str(),
            &admitted.slot.credential.username,
            &key,
        );
        let target = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path(), |p| p.as_str());
        let fingerprint = idempotency::fingerprint(&parts.method, target, body);
        let deadline = outcome.accepted.map_or_else(crate::clock::now, |at| {
            at + self.request_timeout.saturating_sub(ANSWER_MARGIN)
        });
        match keys.begin(client, &name, fingerprint, deadline).await? {
            Begin::Replay(answer) => {
                // `generate_outcomes` counts generates only: a replayed cancel or GSTN call
                // is not one.
                let generate = upstream.encryption == Encryption::Gateway
                    && upstream
                        .profile
                        .generate(&parts.method, &admitted.path, body)
                        .is_some();
                if generate {
                    self.metrics
                        .count_generate(&upstream.name, GenerateOutcome::Replayed);
                }
                Ok(Keyed::Replay(answer.replay()))
            }
            Begin::Claimed(claim) => Ok(Keyed::Onwards(Some(claim))),
        }
    }

    /// After phase 7: stores the answer for the key, or releases the key as the failure's
    /// class says. A relayed throttle is a refusal (the key is freed) and a relayed transient
    /// error or 5xx an unknown outcome (the key is left open): neither is the key's answer.
    /// A key is never freed once an earlier attempt or a send of this request may have
    /// been acted on: the next attempt must look the document up first.
    pub(super) async fn settle_key(
        &self,
        claim: Option<Claim>,
        answer: Result<Response<Body>, GatewayError>,
        outcome: &Outcome,
    ) -> Result<Response<Body>, GatewayError> {
        let (Some(claim), Some(keys)) = (claim, &self.idempotency) else {
            return answer;
        };
        let acted = claim.earlier_attempt_unknown() || outcome.sends_unsettled > 0;
        match answer {
            Ok(res) => {
                let class = res.extensions().get::<ReplyClass>().map(|c| c.0);
                match kept(class, res.status(), acted) {
                    Kept::Released(release) => {
                        claim.release(release).await;
                        Ok(res)
                    }
                    Kept::Stored => {
                        let (res, stored) = idempotency::capture(res).await?;
                        claim.answered(stored, keys.max_response_bytes()).await;
                        Ok(res)
                    }
                }
            }
            Err(err) => {
                claim.release(at_least(after_failure(&err), acted)).await;
                Err(err)
            }
        }
    }
}

/// What becomes of a key whose request was answered.
#[derive(Debug, PartialEq, Eq)]
enum Kept {
    /// The answer is the key's: stored and replayed.
    Stored,
    /// The answer is not the key's (a relayed throttle, transient error or 5xx): released.
    Released(Release),
}

/// The rule for an answer relaying an upstream reply of `class` (`None`: an answer gstgate
/// made, such as a recovered document) with `status`, after a request that `acted` (it, or
/// an earlier attempt, may have been acted on upstream).
fn kept(class: Option<Class>, status: StatusCode, acted: bool) -> Kept {
    match class {
        Some(Class::Throttled) => Kept::Released(at_least(Release::Free, acted)),
        Some(Class::Transient) => Kept::Released(Release::Unknown),
        _ if status.is_server_error() => Kept::Released(Release::Unknown),
        _ => Kept::Stored,
    }
}

/// `release`, but never `Free` once the request `acted`.
fn at_least(release: Release, acted: bool) -> Release {
    if acted {
        Release::Unknown
    } else {
        release
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Review finding 5: a relayed throttle frees the key (unless something may have been
    /// acted on), a relayed transient error or 5xx leaves it open, and only the rest is
    /// stored.
    #[test]
    fn only_answers_that_settle_the_request_are_stored() {
        let ok = StatusCode::OK;
        for (class, status, acted, want) in [
            (
                Some(Class::Throttled),
                ok,
                false,
                Kept::Released(Release::Free),
            ),
            (
                Some(Class::Throttled),
                ok,
                true,
                Kept::Released(Release::Unknown),
            ),
            (
                Some(Class::Transient),
                ok,
                false,
                Kept::Released(Release::Unknown),
            ),
            (
                Some(Class::Business),
                StatusCode::SERVICE_UNAVAILABLE,
                false,
                Kept::Released(Release::Unknown),
            ),
            (Some(Class::Success), ok, true, Kept::Stored),
            (Some(Class::Business), ok, false, Kept::Stored),
            (
                Some(Class::CallerInput),
                StatusCode::BAD_REQUEST,
                true,
                Kept::Stored,
            ),
            (None, ok, true, Kept::Stored),
        ] {
            assert_eq!(
                kept(class, status, acted),
                want,
                "{class:?} {status} {acted}"
            );
        }
    }

    /// Review finding 1: a failure that frees the key alone leaves it open once the
    /// request, or an earlier attempt of it, may have been acted on.
    #[test]
    fn a_key_is_never_freed_once_something_may_have_been_acted_on() {
        let err = GatewayError::LoginBackoff {
            retry_after_secs: 1,
            reason: "a login failed".into(),
        };
        assert_eq!(after_failure(&err), Release::Free);
        assert_eq!(at_least(after_failure(&err), false), Release::Free);
        assert_eq!(at_least(after_failure(&err), true), Release::Unknown);
    }
}
