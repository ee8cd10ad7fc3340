//! Phases 4 and 5, build and send: one upstream call of a request, made again with a new
//! session if the first attempt's token was rejected.

use std::cell::Cell;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};

use super::Outcome;
use crate::config::Encryption;
use crate::dropin::DropinSession;
use crate::idempotency::{after_failure, Claim, Release};
use crate::path::CallerPath;
use crate::problem::GatewayError;
use crate::session::{Session, Slot};
use crate::upstream::{Class, Generate, Pending, Reply, Upstream};

/// What one upstream call of a request is made of, fixed across its (at most three) attempts.
pub(super) struct Call<'a> {
    /// Where it goes.
    pub(super) upstream: &'a Upstream,
    /// Whose credential it uses.
    pub(super) slot: &'a Arc<Slot>,
    /// The caller's headers, before the allow-list.
    pub(super) caller: &'a HeaderMap,
    /// The request id gstgate sends upstream.
    pub(super) request_id: Option<&'a HeaderValue>,
    /// The caller's method.
    pub(super) method: &'a Method,
    /// The validated path and query.
    pub(super) path: &'a CallerPath,
    /// The caller's body, buffered so that it can be sent twice (a drop-in caller's,
    /// opened).
    pub(super) body: &'a Bytes,
    /// The drop-in session of a drop-in caller: its reply is sealed with its SEK.
    pub(super) dropin: Option<&'a DropinSession>,
    /// An earlier attempt of this very request may have reached the upstream (an
    /// idempotency claim abandoned by a dead replica).
    pub(super) earlier_attempt_unknown: bool,
    /// Which of the upstream's targets to try first.
    pub(super) aim: Aim<'a>,
    /// The request's idempotency claim, if it holds one: asked before every send whether
    /// it is still held ([`Call::exchange`]).
    pub(super) claim: Option<&'a Claim>,
}

/// Where an attempt goes among the upstream's targets (IRPs), when one of them may just have
/// failed the call.
#[derive(Clone, Copy)]
pub(super) enum Aim<'a> {
    /// As configured, or to the holder of the document the call names.
    Usual,
    /// A lookup of a document IRP `portal` may hold, with `irp` naming it (NIC answers a
    /// document held on another IRP as absent); sent to the IRPs other than `avoiding` first:
    /// the one that had the generate whose outcome is unknown, which may be failing.
    About {
        /// The IRP (target label) the lookup asks about.
        portal: &'a str,
        /// The IRP that may have just failed the generate: tried last.
        avoiding: Option<&'a str>,
    },
    /// A generate sent again after this IRP failed it and a lookup found nothing: the other
    /// IRPs first.
    Avoiding(&'a str),
}

/// The upstream's answer to one attempt.
pub(super) struct Sent<'a> {
    /// Its HTTP status.
    pub(super) status: StatusCode,
    /// Its headers, until the answer that relays them takes them.
    pub(super) headers: Cell<HeaderMap>,
    /// Its whole body.
    pub(super) body: Bytes,
    /// The label of the target (IRP) that answered.
    pub(super) target: Option<Arc<str>>,
    /// Whether the call may act upstream (not a lookup).
    acts: bool,
    /// The reply's verdict for its target's circuit, given when the reply is read.
    pending: Cell<Pending<'a>>,
}

impl<'a> Call<'a> {
    /// Who encrypts the payloads to the upstream: gstgate, always, for a drop-in caller (its
    /// payloads arrive opened); else as the upstream is configured.
    pub(super) fn encryption(&self) -> Encryption {
        if self.dropin.is_some() {
            Encryption::Gateway
        } else {
            self.upstream.encryption
        }
    }

    /// The generate this call is, where gstgate reads its plain body (gateway encryption or
    /// drop-in): a passthrough body is the caller's ciphertext.
    pub(super) fn generate(&self) -> Option<Generate> {
        if self.encryption() != Encryption::Gateway {
            return None;
        }
        self.upstream
            .profile
            .generate(self.method, self.path, self.body)
    }

    /// Whether this call may create a document (a generate), by method, path and the body's
    /// plain parts: cheap, unlike reading it as a generate, and true of a passthrough body
    /// gstgate cannot read.
    pub(super) fn may_generate(&self) -> bool {
        self.upstream
            .profile
            .may_generate(self.method, self.path, self.body)
    }

    /// Builds the request with `session` (the token and SEK may differ between attempts) and
    /// sends it. A request whose idempotency claim may have been taken over sends nothing:
    /// another replica may be sending it. A send that may act upstream (not a lookup's GET)
    /// is counted in `outcome` unless nothing went out.
    pub(super) async fn exchange(
        &self,
        session: &Session,
        outcome: &mut Outcome,
    ) -> Result<Sent<'a>, GatewayError> {
        let acts = self.method != Method::GET;
        if acts && self.claim.is_some_and(|c| !c.still_held()) {
            return Err(GatewayError::IdempotencyUnavailable(
                "this request's Idempotency-Key claim could not be kept (renewals failed, or another replica took the key over), so nothing more was sent".into(),
            ));
        }
        let (headers, wire) = self.build(session)?;
        let (method, upstream) = (self.method.clone(), self.upstream);
        let routed = match self.aim {
            Aim::Usual => upstream.dispatch(method, self.path, headers, wire).await,
            Aim::About { portal, avoiding } => {
                upstream
                    .dispatch_elsewhere(portal, avoiding, method, self.path, headers, wire)
                    .await
            }
            Aim::Avoiding(failed) => {
                upstream
                    .dispatch_avoiding(failed, method, self.path, headers, wire)
                    .await
            }
        };
        outcome.target.clone_from(&routed.target);
        let (status, headers, body) = match routed.result {
            Ok(reply) => reply,
            Err(err) => {
                if acts && after_failure(&err) == Release::Unknown {
                    outcome.sends_unsettled += 1;
                }
                return Err(err);
            }
        };
        outcome.upstream_status = Some(status.as_u16());
        Ok(Sent {
            status,
            headers: Cell::new(headers),
            body,
            target: routed.target,
            acts,
            pending: Cell::new(routed.pending),
        })
    }
}

impl Sent<'_> {
    /// The profile's reading of the reply: its verdict and JSON envelope. A reply to a call
    /// that may act is counted in `outcome` unless it is a refusal that did nothing.
    pub(super) fn read(&self, upstream: &Upstream, outcome: &mut Outcome) -> Reply<'_> {
        let reply = upstream.profile.read_reply(self.status, &self.body);
        self.pending.take().judge(self.status, &reply.verdict);
        outcome.upstream_code = reply.verdict.code.clone();
        let refused = reply.envelope.is_some()
            && matches!(
                reply.verdict.class,
                Class::TokenRejected
                    | Class::CredentialsRejected
                    | Class::Configuration
                    | Class::Throttled
                    | Class::OtpRejected
                    | Class::AccessDisabled
                    | Class::SessionLimit
            );
        if self.acts && !refused {
            outcome.sends_unsettled += 1;
        }
        reply
    }
}

impl Call<'_> {
    /// Phase 4, build: the body, encrypted with this session's SEK in gateway mode, and the
    /// headers for this attempt (the session may have changed).
    fn build(&self, session: &Session) -> Result<(HeaderMap, Bytes), GatewayError> {
        let encryption = self.encryption();
        let upstream = self.upstream;
        let wire = match encryption {
            Encryption::Gateway => Bytes::from(upstream.profile.encode_request(
                self.method,
                self.body,
                &session.sek,
            )?),
            Encryption::Passthrough => self.body.clone(),
        };
        let gstgate_wrote_body = encryption == Encryption::Gateway && !wire.is_empty();
        let mut headers = upstream.data_call_headers(
            &self.slot.header_context(),
            &session.token,
            self.caller,
            self.request_id,
            gstgate_wrote_body,
        );
        upstream.name_holder(&mut headers, self.method, self.path, self.body);
        // Not for an empty body: the client sends no length for one, and neither does this.
        if encryption == Encryption::Passthrough && !wire.is_empty() {
            if let Some(length) = self.caller_length(wire.len()) {
                // Otherwise the client writes the same number into a header value of its own,
                // an allocation a request.
                headers.insert(header::CONTENT_LENGTH, length);
            }
        }
        Ok((headers, wire))
    }

    /// The caller's `Content-Length`, when it says `len` in plain digits: the body goes
    /// upstream unchanged, so its length header can too.
    fn caller_length(&self, len: usize) -> Option<HeaderValue> {
        let value = self.caller.get(header::CONTENT_LENGTH)?;
        let digits = value.as_bytes();
        let plain = !digits.is_empty()
            && digits.len() <= 20
            && digits.iter().all(u8::is_ascii_digit)
            && (digits == b"0" || digits[0] != b'0');
        if !plain {
            return None;
        }
        let said = std::str::from_utf8(digits).ok()?.parse::<usize>().ok()?;
        (said == len).then(|| value.clone())
    }
}
