//! The classify phase: what an upstream's reply means, decided once for every API.
//!
//! A profile reads a reply into a [`Verdict`], because error codes are API-specific; what each
//! [`Class`] then means to the caller is decided here, for data calls ([`reply`]) and for
//! gstgate's own logins ([`login_refusal`]) alike. The two differ only where a login has no
//! reply of the caller's to relay: a data call the upstream throttles or refuses is answered
//! with the upstream's own reply (its codes are what the caller's client understands), while
//! a login it throttles or refuses becomes gstgate's problem.

use http::StatusCode;

use crate::gstin::Gstin;
use crate::problem::GatewayError;
use crate::upstream::{Class, Reply, Verdict};

/// What to do with a data call's reply.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision {
    /// Relay the reply (decrypted in gateway mode).
    Respond,
    /// The upstream rejected the token: invalidate that session, get one again and replay
    /// the call, once.
    Replay,
    /// Answer the caller with this error instead of the reply.
    Fail(GatewayError),
}

/// Whose credential a reply is about, for the errors that name it.
#[derive(Clone, Copy)]
pub struct Whose<'a> {
    /// The upstream the credential logs in to.
    pub upstream: &'a str,
    /// The taxpayer.
    pub gstin: &'a Gstin,
    /// The API user.
    pub username: &'a str,
}

/// Decides what to do with the reply to a caller's call, whatever its API.
pub fn reply(status: StatusCode, reply: &Reply<'_>, whose: Whose<'_>) -> Decision {
    if reply.envelope.is_none() {
        // Every GST API answers JSON; anything else is an error page or garbage.
        return Decision::Fail(not_json(status));
    }
    if reply.verdict.class == Class::TokenRejected {
        return Decision::Replay;
    }
    match never_relayed(&reply.verdict, whose, "request refused") {
        Some(err) => Decision::Fail(err),
        None => Decision::Respond,
    }
}

/// The error for a login the upstream refused with `verdict`. A token rejection of a refresh
/// is not decided here: it ends an OTP session, which the session manager knows about.
pub fn login_refusal(verdict: Verdict, whose: Whose<'_>) -> GatewayError {
    if let Some(err) = never_relayed(&verdict, whose, "login refused") {
        return err;
    }
    let Verdict {
        class,
        code,
        message,
    } = verdict;
    match class {
        Class::Throttled => GatewayError::UpstreamThrottled {
            upstream_code: code,
        },
        Class::OtpRejected => GatewayError::OtpInvalid {
            upstream_code: code,
            detail: message.unwrap_or_else(|| "the upstream refused the OTP".into()),
        },
        _ => GatewayError::UpstreamUnavailable(format!(
            "login refused with code {}",
            code.as_deref().unwrap_or("(none)")
        )),
    }
}

/// The classes no caller ever sees as the upstream's reply: they are about gstgate's own
/// credentials, configuration or the taxpayer's portal settings, which only an operator can
/// fix, so the caller gets gstgate's explanation instead. `refused` describes a refusal that
/// came without a message.
fn never_relayed(verdict: &Verdict, whose: Whose<'_>, refused: &str) -> Option<GatewayError> {
    let code = verdict.code.clone();
    Some(match verdict.class {
        Class::CredentialsRejected => GatewayError::CredentialsRejected {
            upstream: whose.upstream.to_owned(),
            gstin: whose.gstin.to_string(),
            username: whose.username.to_owned(),
            upstream_code: code,
        },
        Class::Configuration => GatewayError::UpstreamConfigRejected {
            upstream_code: code,
            message: verdict.message.clone().unwrap_or_else(|| refused.into()),
        },
        Class::AccessDisabled => GatewayError::ApiAccessDisabled {
            gstin: whose.gstin.to_string(),
            upstream_code: code,
        },
        Class::SessionLimit => GatewayError::TooManySessions {
            upstream_code: code,
        },
        Class::Success
        | Class::TokenRejected
        | Class::CallerInput
        | Class::Transient
        | Class::Throttled
        | Class::Business
        | Class::OtpRejected => return None,
    })
}

/// The error for a reply whose body is not JSON: only its status says anything.
fn not_json(status: StatusCode) -> GatewayError {
    if status.is_server_error() {
        GatewayError::UpstreamUnavailable(format!(
            "the upstream answered HTTP {status} without a JSON body"
        ))
    } else if status == StatusCode::TOO_MANY_REQUESTS {
        GatewayError::UpstreamThrottled {
            upstream_code: None,
        }
    } else {
        GatewayError::UpstreamBadResponse(format!("HTTP {status} with a body that is not JSON"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdict(class: Class) -> Verdict {
        Verdict {
            class,
            code: Some("X".into()),
            message: None,
        }
    }

    /// Every class, through both decisions: the data path relays what the caller's client
    /// understands, replays a token rejection, and fails only on what an operator must fix.
    #[test]
    fn each_class_has_one_meaning_for_data_calls_and_logins() {
        let gstin = Gstin::parse("27AAPFU0939F1ZV").unwrap();
        let whose = Whose {
            upstream: "einvoice",
            gstin: &gstin,
            username: "u",
        };
        let body = br#"{"status":0}"#;
        let cases = [
            (Class::Success, "respond", "upstream_unavailable"),
            (Class::TokenRejected, "replay", "upstream_unavailable"),
            (Class::CallerInput, "respond", "upstream_unavailable"),
            (Class::Transient, "respond", "upstream_unavailable"),
            (Class::Business, "respond", "upstream_unavailable"),
            (Class::Throttled, "respond", "upstream_throttled"),
            (Class::OtpRejected, "respond", "otp_invalid"),
            (
                Class::CredentialsRejected,
                "credentials_rejected",
                "credentials_rejected",
            ),
            (
                Class::Configuration,
                "upstream_config_rejected",
                "upstream_config_rejected",
            ),
            (
                Class::AccessDisabled,
                "api_access_disabled",
                "api_access_disabled",
            ),
            (
                Class::SessionLimit,
                "too_many_sessions",
                "too_many_sessions",
            ),
        ];
        for (class, data, login) in cases {
            let parsed = Reply::parse(StatusCode::OK, body, |_| verdict(class));
            let decided = match reply(StatusCode::OK, &parsed, whose) {
                Decision::Respond => "respond",
                Decision::Replay => "replay",
                Decision::Fail(e) => e.code(),
            };
            assert_eq!(decided, data, "{class:?} on a data call");
            assert_eq!(
                login_refusal(verdict(class), whose).code(),
                login,
                "{class:?} on a login"
            );
        }
    }

    #[test]
    fn a_reply_that_is_not_json_is_judged_by_its_status() {
        let gstin = Gstin::parse("27AAPFU0939F1ZV").unwrap();
        let whose = Whose {
            upstream: "einvoice",
            gstin: &gstin,
            username: "u",
        };
        let code = |status: u16| {
            let status = StatusCode::from_u16(status).unwrap();
            let parsed = Reply::parse(status, b"<html>", |_| Verdict::success());
            match reply(status, &parsed, whose) {
                Decision::Fail(e) => e.code(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(code(502), "upstream_unavailable");
        assert_eq!(code(429), "upstream_throttled");
        assert_eq!(code(200), "upstream_bad_response");
    }
}
