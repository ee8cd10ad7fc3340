//! Phase 8, outcome: a generate (IRN, e-way bill, e-way bill by IRN) whose reply was lost or
//! said "duplicate" is answered with the document the upstream holds, found by a lookup on
//! the same session through the same build and send code (asked about each IRP in turn,
//! for an upstream with several); or sent once more when the lookups say the upstream never
//! saw it; or answered `outcome_unknown`. The rule is
//! [`crate::outcome`]'s; this phase carries it out and counts
//! `gstgate_generate_outcomes_total`.

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Response};

use super::call::{Aim, Call, Sent};
use super::respond::api_answer;
use super::{Outcome, Proxy};
use crate::metrics::GenerateOutcome;
use crate::outcome::{self as rule, Found, Reason, Round, Seen, Settle, Step};
use crate::problem::GatewayError;
use crate::session::{Invalidation, Session, Trigger};
use crate::upstream::{Class, Generate, Reply};

/// What one sending of a call came to: the answer as it stands, and what gstgate can tell of
/// the upstream's side.
pub(super) struct Attempted {
    /// The answer for the caller: a reply to relay, or a gateway error.
    pub(super) answer: Result<Response<Body>, GatewayError>,
    /// What the upstream's reply said, if it came.
    observed: Observed,
}

/// What a reply says of the call's outcome, before it is answered.
#[derive(Default)]
pub(super) struct Observed {
    /// The upstream may have acted without the reply saying so.
    unknown: bool,
    /// The reply is a success.
    success: bool,
    /// The reply's upstream error code.
    code: Option<String>,
}

impl Attempted {
    /// An attempt that ended in `err` before any reply: unknown if it may have been sent.
    pub(super) fn failed(err: GatewayError) -> Self {
        Self {
            observed: Observed {
                unknown: rule::unknown_after(&err),
                ..Observed::default()
            },
            answer: Err(err),
        }
    }

    /// The attempt an earlier, abandoned try of this very request may have made (a dead
    /// replica's): its outcome is unknown, so the document is looked up before anything is
    /// sent.
    fn earlier() -> Self {
        Self {
            answer: Err(GatewayError::OutcomeUnknown(
                "an earlier attempt of this request was abandoned".to_owned(),
            )),
            observed: Observed {
                unknown: true,
                ..Observed::default()
            },
        }
    }

    /// An attempt whose answer says all (nothing was sent, or gstgate refused it).
    pub(super) fn known(answer: Result<Response<Body>, GatewayError>) -> Self {
        Self {
            answer,
            observed: Observed::default(),
        }
    }
}

impl Observed {
    /// What `reply` says of the outcome.
    pub(super) fn of(sent: &Sent, reply: &Reply<'_>) -> Self {
        Self {
            unknown: rule::unknown_reply(sent.status, reply),
            success: reply.verdict.class == Class::Success,
            code: reply.verdict.code.clone(),
        }
    }

    /// The attempt answered with `answer`: a success that could not be read (undecryptable)
    /// leaves the outcome unknown too.
    pub(super) fn with(mut self, answer: Result<Response<Body>, GatewayError>) -> Attempted {
        if let Err(err) = &answer {
            self.unknown |= rule::unknown_after(err);
        }
        Attempted {
            answer,
            observed: self,
        }
    }

    /// How the rule sees it, for a generate that answers `duplicate` codes when the document
    /// exists.
    fn seen(&self, generate: &Generate) -> Seen {
        if self.unknown {
            Seen::Unknown
        } else if self
            .code
            .as_deref()
            .is_some_and(|c| generate.duplicate.contains(&c))
        {
            Seen::Duplicate
        } else {
            Seen::Known
        }
    }
}

impl Proxy {
    /// Sends a generate and settles its outcome: at most two generates, the second only
    /// after a lookup said the upstream does not have the document.
    ///
    /// The profile reads the generate (a JSON pass over the caller's body) only when its
    /// outcome needs settling: a plain success, the usual answer, costs no more than any call.
    pub(super) async fn generate(
        &self,
        call: &Call<'_>,
        session: &Session,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, GatewayError> {
        let upstream = call.upstream;
        let mut round = Round::First;
        let mut attempted = if call.earlier_attempt_unknown {
            Attempted::earlier()
        } else {
            self.attempt(call, session, outcome).await
        };
        if attempted.observed.success && !attempted.observed.unknown {
            return self.answer_attempt(call, attempted, round);
        }
        let Some(generate) = call.generate() else {
            // A body the profile cannot read as a generate (no document details): nothing to
            // look up, so its answer is the attempt's own, unless only a lookup may send it.
            return if call.earlier_attempt_unknown {
                Err(self.unreadable_generate(call))
            } else {
                attempted.answer
            };
        };
        let generate = &generate;
        // The IRP that may hold the document: the one that had the last attempt whose outcome
        // is unknown (a later retry went elsewhere only after a lookup said "not there").
        let mut holder = None;
        loop {
            if attempted.observed.unknown || holder.is_none() {
                holder.clone_from(&outcome.target);
            }
            let seen = attempted.observed.seen(generate);
            let step = rule::after_attempt(seen, round, upstream.duplicate);
            let reason = match step {
                Step::Answer => return self.answer_attempt(call, attempted, round),
                Step::LookUp(reason) => reason,
            };
            let (found, at) = self
                .look_up_everywhere(call, generate, holder.as_ref(), outcome)
                .await;
            match rule::after_lookup(reason, round, found) {
                Settle::Recovered(doc) => {
                    return Ok(self.found(call, doc, at, GenerateOutcome::Recovered))
                }
                Settle::Existing(doc) => {
                    return Ok(self.found(call, doc, at, GenerateOutcome::Existing))
                }
                Settle::Original => {
                    self.metrics
                        .count_generate(&upstream.name, GenerateOutcome::Direct);
                    return attempted.answer;
                }
                Settle::Unknown => {
                    self.metrics
                        .count_generate(&upstream.name, GenerateOutcome::Unknown);
                    return Err(GatewayError::OutcomeUnknown(unknown_detail(reason, round)));
                }
                Settle::Retry => {
                    round = Round::Retry;
                    let again = Call {
                        aim: holder.as_deref().map_or(Aim::Usual, Aim::Avoiding),
                        ..*call
                    };
                    attempted = match self.sessions.session(call.slot, Trigger::Cold).await {
                        Ok(session) => self.attempt(&again, &session, outcome).await,
                        Err(e) => Attempted::known(Err(e)),
                    };
                }
            }
        }
    }

    /// A generate gstgate cannot read (a passthrough body) whose earlier attempt may have
    /// reached the upstream: it cannot be looked up, and sending it again could make a second
    /// document or answer a duplicate. Nothing is sent; the caller, who can read it,
    /// reconciles.
    pub(super) fn unreadable_generate(&self, call: &Call<'_>) -> GatewayError {
        self.metrics
            .count_generate(&call.upstream.name, GenerateOutcome::Unknown);
        GatewayError::OutcomeUnknown(
            "an earlier attempt of this request may have reached the upstream, and gstgate cannot read this generate (its body is encrypted by the caller) to look its document up, so it did not send it again".to_owned(),
        )
    }

    /// The attempt's own answer; a retry's success is the recovered document.
    fn answer_attempt(
        &self,
        call: &Call<'_>,
        attempted: Attempted,
        round: Round,
    ) -> Result<Response<Body>, GatewayError> {
        let recovered = round == Round::Retry && attempted.observed.success;
        let how = if recovered {
            GenerateOutcome::Recovered
        } else {
            GenerateOutcome::Direct
        };
        self.metrics.count_generate(&call.upstream.name, how);
        let mut answer = attempted.answer;
        if let (true, Ok(res)) = (recovered, &mut answer) {
            mark(res, how);
        }
        answer
    }

    /// Looks the generate's document up about each of the upstream's portals (IRPs) in turn,
    /// `holder` (the one that had the last attempt, when known) first: NIC answers a document
    /// held on another IRP as absent, and the document may be on any of them (a generate
    /// failed over, or a dead replica's on another IRP). Absent only when every portal says
    /// so; a document found on any is the answer, with the portal it was found about. An
    /// upstream without portal names makes one lookup.
    async fn look_up_everywhere(
        &self,
        call: &Call<'_>,
        generate: &Generate,
        holder: Option<&Arc<str>>,
        outcome: &mut Outcome,
    ) -> (Found, Option<Arc<str>>) {
        let portals = call.upstream.portals(holder.map(|h| &**h));
        if portals.is_empty() {
            let found = self
                .look_up_about(call, generate, holder, holder, outcome)
                .await;
            return (found, holder.cloned());
        }
        let mut said = Found::Absent;
        for portal in portals {
            match self
                .look_up_about(call, generate, Some(&portal), holder, outcome)
                .await
            {
                Found::Document(doc) => return (Found::Document(doc), Some(portal)),
                Found::Absent => {}
                other => said = other,
            }
        }
        (said, holder.cloned())
    }

    /// Looks the document up as IRP `portal` holds it (asked of the IRPs other than
    /// `avoiding` first), once more while the lookup's own reply is lost, a bounded number
    /// of times.
    async fn look_up_about(
        &self,
        call: &Call<'_>,
        generate: &Generate,
        portal: Option<&Arc<str>>,
        avoiding: Option<&Arc<str>>,
        outcome: &mut Outcome,
    ) -> Found {
        let mut lookups = Lookups {
            made: 0,
            next: Trigger::Cold,
            aim: portal.map_or(Aim::Usual, |portal| Aim::About {
                portal,
                avoiding: avoiding.map(|a| &**a),
            }),
        };
        let mut found = self.look_up(call, generate, &mut lookups, outcome).await;
        while rule::look_again(&found, lookups.made) {
            found = self.look_up(call, generate, &mut lookups, outcome).await;
        }
        found
    }

    /// Looks the generate's document up with the slot's current session, through the same
    /// build and send code as the call (its headers, GSTIN and encryption). A rejected token
    /// is invalidated, and the lookup counts as lost: the next one gets a new session.
    async fn look_up(
        &self,
        call: &Call<'_>,
        generate: &Generate,
        lookups: &mut Lookups<'_>,
        outcome: &mut Outcome,
    ) -> Found {
        lookups.made += 1;
        let Ok(session) = self.sessions.session(call.slot, lookups.next).await else {
            return Found::CannotTell;
        };
        lookups.next = Trigger::Cold;
        let empty = Bytes::new();
        let lookup = Call {
            method: &Method::GET,
            path: &generate.lookup,
            body: &empty,
            aim: lookups.aim,
            ..*call
        };
        let sent = match lookup.exchange(&session, outcome).await {
            Ok(sent) => sent,
            Err(err) if rule::unknown_after(&err) => return Found::Lost,
            Err(_) => return Found::CannotTell,
        };
        let reply = sent.read(call.upstream, outcome);
        if rule::unknown_reply(sent.status, &reply) {
            return Found::Lost;
        }
        if reply.verdict.class == Class::TokenRejected {
            if self.sessions.invalidate(call.slot, &session) == Invalidation::KnownRejected {
                return Found::CannotTell;
            }
            lookups.next = Trigger::Rejected;
            return Found::Lost;
        }
        let code = reply.verdict.code.clone();
        if reply.verdict.class == Class::Success {
            return match call.upstream.profile.decode_reply(reply, &session.sek) {
                Ok(plain) => (generate.answer)(&plain).map_or(Found::CannotTell, Found::Document),
                Err(_) => Found::Lost,
            };
        }
        let absent =
            reply.envelope.is_some() && code.is_some_and(|c| generate.absent.contains(&c.as_str()));
        if absent {
            Found::Absent
        } else {
            Found::CannotTell
        }
    }

    /// The document found, as the generate's success answer: plain JSON, sealed again for a
    /// drop-in caller.
    /// Later reads of it are sent with the `irp` of `holder`, the IRP it was found on.
    fn found(
        &self,
        call: &Call<'_>,
        plain: Vec<u8>,
        holder: Option<Arc<str>>,
        how: GenerateOutcome,
    ) -> Response<Body> {
        self.metrics.count_generate(&call.upstream.name, how);
        if let Some(holder) = holder {
            call.upstream
                .note_generated(call.method, call.path, &plain, &holder);
        }
        let body = match call.dropin {
            Some(dropin) => {
                call.upstream
                    .profile
                    .dropin()
                    .seal_reply(call.method, &plain, &dropin.sek)
            }
            None => plain,
        };
        let mut res = api_answer(body);
        mark(&mut res, how);
        res
    }
}

/// The lookups of one generate about one IRP so far.
struct Lookups<'a> {
    /// How many were made.
    made: u32,
    /// Why the next one may need a new session.
    next: Trigger,
    /// Which IRP they ask about (the `irp` header) and which one they try last.
    aim: Aim<'a>,
}

/// Marks an answer gstgate made up with how it came about.
fn mark(res: &mut Response<Body>, how: GenerateOutcome) {
    res.headers_mut().insert(
        HeaderName::from_static(rule::HEADER),
        HeaderValue::from_static(how.label()),
    );
}

/// What the caller is told of an unknown outcome.
fn unknown_detail(reason: Reason, round: Round) -> String {
    let what = match (reason, round) {
        (Reason::OwnDuplicate, _) => {
            "the upstream answered duplicate, but its lookup did not return the document"
        }
        (_, Round::Retry) => {
            "the reply to the generate was lost twice, and the upstream's lookup did not find the document"
        }
        _ => "the reply to the generate was lost, and the upstream's lookup did not say whether it created the document",
    };
    what.to_owned()
}
