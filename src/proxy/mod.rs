//! The request path, one function per phase. `Proxy::process` calls them in order and is
//! the one place to read a request's story:
//!
//! 1. accept: request id, in-flight gauge, overall timeout, access log ([`Proxy::serve`])
//! 2. admit: header size, caller key → client → its rate limit, method, path normalised and validated
//!    ([`crate::path::CallerPath`]) → upstream by route prefix, `gstin` (+ `user_name`) → allowed? →
//!    credential slot, and the caller's body (`admit`)
//!    2b. idempotency: a POST's `Idempotency-Key` replayed, or claimed until the answer is
//!    settled ([`crate::idempotency`], `idempotency`)
//! 3. session: a usable session for the slot, logging in single-flight if needed
//!    ([`Sessions::session`])
//! 4. build: the caller headers the API accepts (an allow-list) + the injected upstream
//!    headers and request id, body encrypted (`call`)
//! 5. send: pooled client, timeouts, size cap (`call`)
//! 6. classify: respond, renew and replay, or fail, the same for every API ([`crate::classify`])
//! 7. respond: decrypt or pass the reply through (`respond`)
//! 8. outcome, for a generate (IRN, e-way bill): a lost or duplicate answer looked up and
//!    answered with the document, one safe retry, or `outcome_unknown` (`outcome`, rule in
//!    [`crate::outcome`])
//!
//! A token rejection invalidates that session generation, gets a session once more and
//! replays (`Proxy::replay`): one renewal and one send after it at most, never a loop. A
//! token that a re-login after a rejection handed back unchanged is not replayed nor logged
//! in for again for a while.

mod admit;
mod call;
mod dropin;
mod idempotency;
mod outcome;
mod respond;

use std::convert::Infallible;
use std::error::Error;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response};

use crate::classify::{self, Decision};
use crate::clients::Clients;
use crate::config::Encryption;
use crate::dropin::Dropin;
use crate::gstin::Gstin;
use crate::idempotency::{Claim, Idempotency};
use crate::metrics::{
    status_class, Metrics, RequestLabels, ResultLabels, UpstreamErrorLabels, UpstreamLabel,
};
use crate::problem::{chain, problem_response, ErrorCode, GatewayError, Origin};
use crate::request::{id_header, loggable_path, request_id, REQUEST_ID};
use crate::session::{Invalidation, Session, Sessions, Trigger};
use crate::upstream::{Class, Upstream, Verdict};

use admit::{Admission, Admitted};
use call::{Aim, Call};
use idempotency::Keyed;
use outcome::{Attempted, Observed};

/// The proxy listener's state.
pub struct Proxy {
    /// The callers; a configuration reload swaps in new ones.
    clients: RwLock<Arc<Clients>>,
    upstreams: Vec<Arc<Upstream>>,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
    max_header_bytes: usize,
    max_body_bytes: usize,
    request_timeout: Duration,
    no_route: Arc<str>,
    /// `store.replicas`, which divides each client's rate.
    replicas: u32,
    /// The `code` label of an upstream code its profile does not classify.
    other_code: Arc<str>,
    /// The drop-in sessions.
    dropin: Arc<Dropin>,
    /// Whether any upstream has drop-in on: without one, no request is taken for a drop-in
    /// caller's.
    dropin_on: bool,
    /// The `Idempotency-Key` records; `None` until the store is attached.
    idempotency: Option<Idempotency>,
}

/// The proxy's limits on a request, from `[server]`.
pub struct Limits {
    /// The most bytes of request line and headers.
    pub max_header_bytes: usize,
    /// The most bytes of body.
    pub max_body_bytes: usize,
    /// The most time for the whole request.
    pub request_timeout: Duration,
    /// How many replicas share the callers (`store.replicas`): each enforces this share of
    /// a client's `rate`.
    pub replicas: u32,
}

/// What the access log line reports about a request.
#[derive(Default)]
struct Outcome {
    client: Option<Arc<str>>,
    upstream: Option<Arc<Upstream>>,
    gstin: Option<Gstin>,
    upstream_status: Option<u16>,
    upstream_code: Option<String>,
    /// The upstream target (IRP) that had the last attempt, set even when it failed: a
    /// lookup after an unknown outcome names it in the portal header.
    target: Option<Arc<str>>,
    retries: u32,
    /// How many sends of this request that may act upstream (not lookups) may have been
    /// acted on: sent, and not answered with a refusal that did nothing. Its key is never
    /// freed after one.
    sends_unsettled: u32,
    /// Whether the caller's whole body has arrived: a timeout before that is the caller's
    /// (408), after it the upstream's (504).
    body_read: bool,
    /// When the request was accepted: what its deadline counts from.
    accepted: Option<Instant>,
}

/// Decrements the in-flight gauge however the request ends (including cancellation).
struct Inflight<'a>(&'a Metrics);

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        self.0.inflight.dec();
    }
}

impl Proxy {
    /// Assembles the proxy from its parts.
    pub fn new(
        clients: Clients,
        upstreams: Vec<Arc<Upstream>>,
        sessions: Arc<Sessions>,
        metrics: Arc<Metrics>,
        limits: Limits,
        dropin: Arc<Dropin>,
    ) -> Self {
        let dropin_on = upstreams.iter().any(|u| u.dropin_key.is_some());
        Self {
            dropin,
            dropin_on,
            clients: RwLock::new(Arc::new(clients.shared_by(limits.replicas))),
            replicas: limits.replicas,
            upstreams,
            sessions,
            metrics,
            max_header_bytes: limits.max_header_bytes,
            max_body_bytes: limits.max_body_bytes,
            request_timeout: limits.request_timeout,
            no_route: "none".into(),
            other_code: "other".into(),
            idempotency: None,
        }
    }

    /// Answers `Idempotency-Key`s from `idempotency`'s store.
    pub fn with_idempotency(mut self, idempotency: Idempotency) -> Self {
        self.idempotency = Some(idempotency);
        self
    }

    /// The callers as configured now.
    fn clients(&self) -> Arc<Clients> {
        self.clients
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replaces the callers (a configuration reload); requests under way keep the ones they
    /// were admitted with. Rate limits start afresh with the new clients (a full burst each):
    /// a reload is rare, and the new `rate` may differ.
    pub fn set_clients(&self, clients: Clients) {
        let clients = Arc::new(clients.shared_by(self.replicas));
        *self.clients.write().unwrap_or_else(|p| p.into_inner()) = clients;
    }

    /// Phase 1, accept: wraps `Proxy::process` with the request id, the overall timeout,
    /// metrics and the access log line.
    pub async fn serve<B>(self: Arc<Self>, req: Request<B>) -> Result<Response<Body>, Infallible>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let started = Instant::now();
        self.metrics.inflight.inc();
        let _inflight = Inflight(&self.metrics);
        let request_id = request_id(req.headers());
        // The same value goes upstream and back to the caller.
        let id_header = id_header(&request_id);
        let method = req.method().clone();
        let uri = req.uri().clone();
        let mut outcome = Outcome {
            accepted: Some(started),
            ..Outcome::default()
        };
        let mut cause = None;
        // Boxed once: the phases' state is several KB (every await point down to the upstream
        // exchange), and each wrapper it went into by value, and hyper's slot for the
        // request's future, copied all of it (≈ 5 % of passthrough's user time in memcpy).
        let process = Box::pin(self.process(req, id_header.as_ref(), &mut outcome));
        let result = crate::request::serving(
            request_id.clone(),
            tokio::time::timeout(self.request_timeout, process),
        )
        .await;
        let mut res = match result {
            Ok(Ok(res)) => res,
            Ok(Err(err)) => {
                // The cause (a TLS refusal, a reset, what was wrong with a reply) is for the
                // log: the body never says more than the problem. A caller's own mistake is
                // told to the caller; the log keeps the code.
                if err.source().is_some() || err.origin() != Origin::Caller {
                    cause = Some(chain(&err));
                }
                problem_response(&err, &request_id)
            }
            Err(_) if !outcome.body_read => {
                let mut res = problem_response(
                    &GatewayError::RequestTimeout(self.request_timeout.as_millis()),
                    &request_id,
                );
                // The rest of the body may still come and cannot be told apart from a next
                // request: the connection is not reused.
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                res
            }
            Err(_) => problem_response(
                &GatewayError::UpstreamTimeout(self.request_timeout.as_millis()),
                &request_id,
            ),
        };
        if let Some(v) = id_header {
            res.headers_mut().insert(REQUEST_ID.clone(), v);
        }
        let status = res.status().as_u16();
        let upstream = outcome
            .upstream
            .as_ref()
            .map_or_else(|| self.no_route.clone(), |u| u.name.clone());
        let elapsed = started.elapsed();
        let error = res.extensions().get::<ErrorCode>().map(|c| c.0);
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                upstream: upstream.clone().into(),
                status: status_class(status),
                client: outcome
                    .client
                    .clone()
                    .unwrap_or_else(|| self.no_route.clone())
                    .into(),
                code: error.unwrap_or("none"),
            })
            .inc();
        match &outcome.upstream {
            Some(routed) => routed.request_duration.observe(elapsed.as_secs_f64()),
            None => self
                .metrics
                .request_duration
                .get_or_create(&UpstreamLabel {
                    upstream: upstream.clone().into(),
                })
                .observe(elapsed.as_secs_f64()),
        }
        crate::telemetry::Access {
            request_id: &request_id,
            client: outcome.client.as_deref(),
            upstream: &upstream,
            gstin: outcome.gstin.as_ref().map(Gstin::as_str),
            method: method.as_str(),
            path: &loggable_path(uri.path()),
            status,
            target: outcome.target.as_deref(),
            upstream_status: outcome.upstream_status,
            upstream_code: outcome.upstream_code.as_deref(),
            error,
            cause: cause.as_deref(),
            retries: outcome.retries,
            latency: elapsed,
        }
        .log();
        Ok(res)
    }

    /// Phases 2 to 7, in order.
    async fn process<B>(
        &self,
        req: Request<B>,
        request_id: Option<&HeaderValue>,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, GatewayError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (parts, body) = req.into_parts();
        let admitted = match self.admit(&parts, outcome)? {
            Admission::Caller(admitted) => admitted,
            Admission::Dropin { upstream, path } => {
                return self
                    .process_dropin(&parts, body, upstream, path, request_id, outcome)
                    .await
            }
        };
        let body = self.read_body(body).await?;
        outcome.body_read = true;
        let claim = match self.claim_key(&parts, &admitted, &body, outcome).await? {
            Keyed::Replay(res) => return Ok(res),
            Keyed::Onwards(claim) => claim,
        };
        let answer = self
            .answer(
                &parts,
                &admitted,
                &body,
                request_id,
                claim.as_ref(),
                outcome,
            )
            .await;
        self.settle_key(claim, answer, outcome).await
    }

    /// Phases 3 to 7 of an admitted caller's request: its session, then its login answered
    /// or its call forwarded.
    async fn answer(
        &self,
        parts: &http::request::Parts,
        admitted: &Admitted<'_>,
        body: &Bytes,
        request_id: Option<&HeaderValue>,
        claim: Option<&Claim>,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, GatewayError> {
        let earlier_attempt_unknown = claim.is_some_and(Claim::earlier_attempt_unknown);
        let Admitted {
            upstream,
            slot,
            path,
        } = admitted;
        let session = self.sessions.session(slot, Trigger::Cold).await?;
        if upstream.is_auth_path(path) {
            return Ok(respond::login_answer(upstream, slot, &session));
        }
        let call = Call {
            upstream,
            slot,
            caller: &parts.headers,
            request_id,
            method: &parts.method,
            path,
            body,
            dropin: None,
            earlier_attempt_unknown,
            aim: Aim::Usual,
            claim,
        };
        self.forward(&call, &session, outcome).await
    }

    /// Phases 4 to 7 of a call whose session is in hand: build, send, classify, and respond
    /// or renew and replay; a generate's through the outcome phase (`outcome`), which may look
    /// its document up and send it once more.
    async fn forward(
        &self,
        call: &Call<'_>,
        session: &Session,
        outcome: &mut Outcome,
    ) -> Result<Response<Body>, GatewayError> {
        if !call.may_generate() {
            return self.attempt(call, session, outcome).await.answer;
        }
        if call.encryption() == Encryption::Gateway {
            return self.generate(call, session, outcome).await;
        }
        if call.earlier_attempt_unknown {
            return Err(self.unreadable_generate(call));
        }
        self.attempt(call, session, outcome).await.answer
    }

    /// One sending of a call: build, send, classify, and respond or renew and replay.
    async fn attempt(
        &self,
        call: &Call<'_>,
        session: &Session,
        outcome: &mut Outcome,
    ) -> Attempted {
        let sent_at = crate::clock::wall();
        let sent = match call.exchange(session, outcome).await {
            Ok(sent) => sent,
            Err(err) => return Attempted::failed(err),
        };
        let reply = sent.read(call.upstream, outcome);
        self.count_upstream_error(call.upstream, &reply.verdict);
        let observed = Observed::of(&sent, &reply);
        if reply.verdict.class == Class::Success {
            session.mark_accepted();
        }
        match classify::reply(sent.status, &reply, call.slot.credential.whose()) {
            Decision::Respond => observed.with(respond::respond(call, session, &sent, reply)),
            Decision::Fail(err) => observed.with(Err(err)),
            Decision::Replay => {
                let code = reply.verdict.code;
                self.replay(call, session, sent_at, code, outcome).await
            }
        }
    }

    /// After the upstream rejected the token of `rejected`: compare-and-invalidate, get a
    /// session once more, and send the call again. If another request already replaced that
    /// generation, this one picks up the newer session; if a re-login after a rejection
    /// already got this very token back, another one would too, so the call fails without
    /// spending a login (see `Invalidation::KnownRejected`).
    ///
    /// A request renews at most once, sends at most once after its renewal, and at most
    /// three times in all. The session it replays with is no renewal if no login happened
    /// while it waited and that session was logged in for before the rejected send
    /// (`sent_at`: the slot adopted it meanwhile, say another replica's, as old as the
    /// rejected one) or the upstream has already accepted it (it was revoked since). If that
    /// is rejected too, it is invalidated in turn and the request renews. Every send before
    /// the last was refused for its token, which does nothing upstream.
    async fn replay(
        &self,
        call: &Call<'_>,
        rejected: &Session,
        sent_at: SystemTime,
        upstream_code: Option<String>,
        outcome: &mut Outcome,
    ) -> Attempted {
        let upstream = call.upstream;
        let mut upstream_code = upstream_code;
        let mut adopted_and_rejected: Option<Arc<Session>> = None;
        let mut sends_after_rejection = 0;
        loop {
            let rejected = adopted_and_rejected.as_deref().unwrap_or(rejected);
            let logins = call.slot.logins();
            if self.sessions.invalidate(call.slot, rejected) == Invalidation::KnownRejected {
                self.count_replay(upstream, "failed");
                return Attempted::known(Err(GatewayError::TokenRejected { upstream_code }));
            }
            let session = match self.sessions.session(call.slot, Trigger::Rejected).await {
                Ok(session) => session,
                Err(e) => {
                    // GSTN's AUTH4038 after the portal session's end: the refresh is refused
                    // and only an OTP helps. That is the session's lifetime running out (its
                    // own alert), not a replay that a mapping or a rogue login made fail.
                    let result = if matches!(e, GatewayError::OtpRequired { .. }) {
                        "session_ended"
                    } else {
                        "failed"
                    };
                    self.count_replay(upstream, result);
                    return Attempted::known(Err(e));
                }
            };
            // A login while this request waited (its own, or one it joined) is its renewal;
            // so is a session logged in for after the rejected send and never accepted.
            let renews = call.slot.logins() != logins
                || (session.issued_at >= sent_at && !session.was_accepted());
            sends_after_rejection += 1;
            outcome.retries = outcome.retries.max(sends_after_rejection);
            let sent = match call.exchange(&session, outcome).await {
                Ok(sent) => sent,
                Err(err) => return Attempted::failed(err),
            };
            let reply = sent.read(upstream, outcome);
            self.count_upstream_error(upstream, &reply.verdict);
            let observed = Observed::of(&sent, &reply);
            if reply.verdict.class == Class::Success {
                session.mark_accepted();
            }
            match classify::reply(sent.status, &reply, call.slot.credential.whose()) {
                Decision::Replay if !renews && adopted_and_rejected.is_none() => {
                    upstream_code = reply.verdict.code;
                    adopted_and_rejected = Some(session);
                }
                Decision::Replay => {
                    // No further attempt. After a renewal, no login for the next rejection of
                    // this session either: a renewal did not help.
                    if renews {
                        self.sessions.renewal_rejected(call.slot, &session);
                    }
                    self.count_replay(upstream, "failed");
                    return observed.with(Err(GatewayError::TokenRejected {
                        upstream_code: reply.verdict.code,
                    }));
                }
                Decision::Fail(err) => {
                    self.count_replay(upstream, "recovered");
                    return observed.with(Err(err));
                }
                Decision::Respond => {
                    self.count_replay(upstream, "recovered");
                    return observed.with(respond::respond(call, &session, &sent, reply));
                }
            }
        }
    }

    /// Counts a reply that was not a success by its class and, where the profile classifies
    /// it, its upstream code.
    fn count_upstream_error(&self, upstream: &Upstream, verdict: &Verdict) {
        if verdict.class == Class::Success {
            return;
        }
        let code = verdict
            .code
            .as_deref()
            .filter(|c| upstream.profile.classify_code(c) != Class::Business)
            .map_or_else(|| self.other_code.clone(), Arc::from);
        self.metrics
            .upstream_errors
            .get_or_create(&UpstreamErrorLabels {
                upstream: upstream.name.clone().into(),
                class: verdict.class.label(),
                code: code.into(),
            })
            .inc();
    }

    /// Counts the outcome of a replay after a token rejection.
    fn count_replay(&self, upstream: &Upstream, result: &'static str) {
        self.metrics
            .rejected_retries
            .get_or_create(&ResultLabels {
                upstream: upstream.name.clone().into(),
                result,
            })
            .inc();
    }
}
