//! Outcome-safe generation: the rule for a call that creates a document (an IRN, an e-way
//! bill) when its reply does not say what happened, and for a "duplicate" answer.
//!
//! An outcome is unknown when the request may have reached the upstream and no readable
//! answer came back: a timeout or a broken connection after sending, an HTTP 5xx, a reply
//! that is not the API's JSON, or a success whose content cannot be read. A connection that
//! could not be made is not unknown: nothing was sent. After an unknown outcome gstgate looks
//! the document up (on the same session) and answers with what it finds; only a lookup that
//! says "not there" allows the one retry, and a duplicate answer to that retry is the first
//! attempt's document. A request whose earlier attempt may have reached the upstream (an
//! idempotency claim abandoned by a dead replica) starts as if its first attempt were that
//! one, with an unknown outcome: it is looked up before anything is sent. Never a second
//! generate for a document the upstream may have.
//!
//! This module decides; `crate::proxy`'s outcome phase acts, and each profile says what a
//! generate and its lookup are (`crate::upstream::Generate`).

use http::StatusCode;

use crate::config::Duplicate;
use crate::problem::GatewayError;
use crate::upstream::{Class, Reply};

/// The response header that marks an answer gstgate made up from a lookup or a stored reply:
/// `recovered`, `existing` or `replayed`. An answer without it is the upstream's own.
pub const HEADER: &str = "gstgate-outcome";

/// What one attempt of a generate came to, as far as gstgate can see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Its reply (or an error before sending) says what happened.
    Known,
    /// The upstream may have created the document without saying so.
    Unknown,
    /// The upstream answered that the document exists already.
    Duplicate,
}

/// Whether gstgate has already sent the generate again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// The caller's attempt (with its token replay, if any).
    First,
    /// gstgate's one retry after a lookup said the document was not there.
    Retry,
}

/// Why a document is looked up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// An attempt's outcome is unknown.
    Unknown,
    /// A duplicate answer to a generate gstgate (or an earlier attempt of the same request)
    /// may have made: the document is that attempt's.
    OwnDuplicate,
    /// A duplicate answer to the caller's generate, with `duplicate = "return_existing"`.
    Existing,
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Answer with the attempt's own reply or error.
    Answer,
    /// Look the document up.
    LookUp(Reason),
}

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// The document, as the generate's own success reply (plain JSON).
    Document(Vec<u8>),
    /// The upstream says it holds no such document.
    Absent,
    /// The lookup's own reply was lost (as a generate's is unknown): a read, safe to repeat.
    Lost,
    /// The lookup was refused, or its answer cannot stand for the document.
    CannotTell,
}

/// The most lookups for one generate (about each IRP, for an upstream with several): a GSP
/// that just lost a reply may lose the next one too, and a read is safe to repeat.
pub const LOOKUPS: u32 = 5;

/// What to answer after a lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle {
    /// The document the generate created (`gstgate-outcome: recovered`).
    Recovered(Vec<u8>),
    /// The document that existed before (`gstgate-outcome: existing`).
    Existing(Vec<u8>),
    /// Send the generate once more: the upstream does not have it.
    Retry,
    /// Answer the attempt's own reply, as if nothing had been looked up.
    Original,
    /// Answer `outcome_unknown`.
    Unknown,
}

/// Whether an error of an attempt leaves its outcome unknown: the request may have been
/// written to the upstream (a timeout, a broken connection, a reply too large or
/// undecryptable). A refused connection, a bad request body and gstgate's own failures
/// happen before anything is sent.
pub fn unknown_after(err: &GatewayError) -> bool {
    matches!(
        err,
        GatewayError::UpstreamConnectionFailed(_)
            | GatewayError::UpstreamTimeout(_)
            | GatewayError::UpstreamBadResponse(_)
    )
}

/// Whether a reply leaves the outcome unknown: a body that is not the API's JSON (an error
/// page, garbage), a transient error (the upstream's own trouble, which may have struck after
/// it committed), or an HTTP 5xx without an error code of the API's.
pub fn unknown_reply(status: StatusCode, reply: &Reply<'_>) -> bool {
    reply.envelope.is_none()
        || reply.verdict.class == Class::Transient
        || (status.is_server_error() && reply.verdict.code.is_none())
}

/// The step after an attempt.
pub fn after_attempt(seen: Seen, round: Round, duplicate: Duplicate) -> Step {
    match seen {
        Seen::Known => Step::Answer,
        Seen::Unknown => Step::LookUp(Reason::Unknown),
        Seen::Duplicate if round == Round::Retry => Step::LookUp(Reason::OwnDuplicate),
        Seen::Duplicate => match duplicate {
            Duplicate::ReturnExisting => Step::LookUp(Reason::Existing),
            Duplicate::Pass => Step::Answer,
        },
    }
}

/// Whether to look the document up once more after the `lookups`-th lookup found `found`:
/// its own reply was lost, and fewer than [`LOOKUPS`] were made.
pub fn look_again(found: &Found, lookups: u32) -> bool {
    *found == Found::Lost && lookups < LOOKUPS
}

/// The answer after the last lookup made for `reason` in `round`.
pub fn after_lookup(reason: Reason, round: Round, found: Found) -> Settle {
    match (reason, found) {
        (Reason::Existing, Found::Document(doc)) => Settle::Existing(doc),
        (Reason::Existing, Found::Absent | Found::CannotTell | Found::Lost) => Settle::Original,
        (Reason::Unknown | Reason::OwnDuplicate, Found::Document(doc)) => Settle::Recovered(doc),
        (Reason::Unknown, Found::Absent) if round == Round::First => Settle::Retry,
        // A duplicate the lookup cannot find, an unknown retry, or no answer: only the
        // caller, with the document's details, can go on safely.
        (
            Reason::Unknown | Reason::OwnDuplicate,
            Found::Absent | Found::CannotTell | Found::Lost,
        ) => Settle::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::problem::Cause;
    use crate::upstream::Verdict;

    #[test]
    fn only_errors_after_sending_leave_the_outcome_unknown() {
        let io = || Cause::new(std::io::Error::other("x"));
        assert!(unknown_after(&GatewayError::UpstreamTimeout(1)));
        assert!(unknown_after(&GatewayError::UpstreamConnectionFailed(io())));
        assert!(unknown_after(&GatewayError::UpstreamBadResponse(
            "x".into()
        )));
        assert!(!unknown_after(&GatewayError::UpstreamUnreachable(io())));
        assert!(!unknown_after(&GatewayError::BodyInvalid("x".into())));
        assert!(!unknown_after(&GatewayError::TokenRejected {
            upstream_code: None
        }));
        assert!(!unknown_after(&GatewayError::LoginBackoff {
            retry_after_secs: 1,
            reason: "x".into()
        }));
    }

    #[test]
    fn a_5xx_a_transient_error_or_a_reply_that_is_not_json_is_unknown() {
        let reply = |class, code: Option<&str>| Reply {
            verdict: Verdict {
                class,
                code: code.map(str::to_owned),
                message: None,
            },
            envelope: crate::upstream::envelope::Envelope::parse(b"{}"),
        };
        let error = StatusCode::INTERNAL_SERVER_ERROR;
        assert!(unknown_reply(error, &reply(Class::Business, None)));
        assert!(unknown_reply(
            StatusCode::OK,
            &reply(Class::Transient, Some("5002"))
        ));
        assert!(!unknown_reply(error, &reply(Class::Business, Some("2150"))));
        assert!(!unknown_reply(StatusCode::OK, &reply(Class::Success, None)));
        assert!(!unknown_reply(
            StatusCode::BAD_REQUEST,
            &reply(Class::CallerInput, None)
        ));
        let garbage = Reply::parse(StatusCode::OK, b"<html>", |_| Verdict::success());
        assert!(unknown_reply(StatusCode::OK, &garbage));
    }

    #[test]
    fn an_unknown_outcome_is_looked_up_and_retried_once_only_when_absent() {
        let pass = Duplicate::Pass;
        assert_eq!(
            after_attempt(Seen::Unknown, Round::First, pass),
            Step::LookUp(Reason::Unknown)
        );
        let doc = || Found::Document(b"{}".to_vec());
        assert_eq!(
            after_lookup(Reason::Unknown, Round::First, doc()),
            Settle::Recovered(b"{}".to_vec())
        );
        assert_eq!(
            after_lookup(Reason::Unknown, Round::First, Found::Absent),
            Settle::Retry
        );
        assert_eq!(
            after_lookup(Reason::Unknown, Round::Retry, Found::Absent),
            Settle::Unknown
        );
        assert_eq!(
            after_lookup(Reason::Unknown, Round::First, Found::CannotTell),
            Settle::Unknown
        );
        assert_eq!(after_attempt(Seen::Known, Round::First, pass), Step::Answer);
    }

    #[test]
    fn a_lost_lookup_is_made_again_a_bounded_number_of_times() {
        assert!(look_again(&Found::Lost, 1));
        assert!(!look_again(&Found::Lost, LOOKUPS));
        assert!(!look_again(&Found::CannotTell, 1));
        assert!(!look_again(&Found::Absent, 1));
        for reason in [Reason::Unknown, Reason::OwnDuplicate] {
            assert_eq!(
                after_lookup(reason, Round::First, Found::Lost),
                Settle::Unknown,
                "never a retry of the generate on lookups that said nothing"
            );
        }
        assert_eq!(
            after_lookup(Reason::Existing, Round::First, Found::Lost),
            Settle::Original
        );
    }

    #[test]
    fn a_duplicate_is_the_first_attempts_after_a_retry() {
        for duplicate in [Duplicate::Pass, Duplicate::ReturnExisting] {
            assert_eq!(
                after_attempt(Seen::Duplicate, Round::Retry, duplicate),
                Step::LookUp(Reason::OwnDuplicate)
            );
        }
        assert_eq!(
            after_lookup(Reason::OwnDuplicate, Round::Retry, Found::Absent),
            Settle::Unknown,
            "a duplicate the lookup cannot find is never generated again"
        );
    }

    #[test]
    fn a_callers_duplicate_is_passed_or_answered_with_the_existing_document() {
        assert_eq!(
            after_attempt(Seen::Duplicate, Round::First, Duplicate::Pass),
            Step::Answer
        );
        assert_eq!(
            after_attempt(Seen::Duplicate, Round::First, Duplicate::ReturnExisting),
            Step::LookUp(Reason::Existing)
        );
        assert_eq!(
            after_lookup(
                Reason::Existing,
                Round::First,
                Found::Document(b"d".to_vec())
            ),
            Settle::Existing(b"d".to_vec())
        );
        assert_eq!(
            after_lookup(Reason::Existing, Round::First, Found::CannotTell),
            Settle::Original
        );
    }
}
