//! The request path (DESIGN.md §1), one function per phase, called in order from
//! [`Proxy::process`]:
//!
//! 1. accept — request id, in-flight gauge, overall timeout ([`Proxy::serve`])
//! 2. caller auth — API key → client
//! 3. route — the path, normalised and validated ([`CallerPath`]), → upstream by prefix
//! 4. identity — `gstin` (+ `user_name`) → allowed? → credential slot
//! 5. session — a usable session, logging in single-flight if needed
//! 6. build — the caller headers the API needs (an allow-list) + injected upstream headers
//!    and request id, body encrypted
//! 7. send — pooled client, timeouts, size cap
//! 8. classify — read the body's status and error codes
//! 9. respond — decrypt, pass through, or a problem
//!
//! A token rejection invalidates that session generation, gets a session once more and
//! replays once: two upstream attempts at most, never a loop. A token that a re-login after
//! a rejection handed back unchanged is not replayed nor logged in for again for a while.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;

use crate::clients::{Client, Clients};
use crate::config::{ChecksumPolicy, Encryption};
use crate::gstin::Gstin;
use crate::metrics::{status_class, Metrics, RequestLabels, ResultLabels, UpstreamLabel};
use crate::path::CallerPath;
use crate::problem::{problem_response, ErrorCode, GatewayError};
use crate::request::{head_len, request_id, REQUEST_ID};
use crate::session::{Invalidation, Session, Sessions, Slot, Trigger};
use crate::upstream::{Class, Upstream};

/// Upstream reply headers not relayed to the caller.
const DROPPED_REPLY_HEADERS: &[&str] = &[
    "connection",
    "keep-alive",
    "transfer-encoding",
    "trailer",
    "upgrade",
    "content-length",
    "proxy-authenticate",
    "set-cookie",
];

/// The proxy listener's state.
pub struct Proxy {
    clients: Clients,
    upstreams: Vec<Arc<Upstream>>,
    sessions: Arc<Sessions>,
    metrics: Arc<Metrics>,
    max_header_bytes: usize,
    max_body_bytes: usize,
    request_timeout: Duration,
    no_route: Arc<str>,
}

/// What the access log line reports about a request.
#[derive(Default)]
struct Outcome {
    client: Option<Arc<str>>,
    upstream: Option<Arc<str>>,
    gstin: Option<Gstin>,
    upstream_status: Option<u16>,
    upstream_code: Option<String>,
    retries: u32,
    /// Whether the caller's whole body has arrived: a timeout before that is the caller's
    /// (408), after it the upstream's (504).
    body_read: bool,
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
        max_header_bytes: usize,
        max_body_bytes: usize,
        request_timeout: Duration,
    ) -> Self {
        Self {
            clients,
            upstreams,
            sessions,
            metrics,
            max_header_bytes,
            max_body_bytes,
            request_timeout,
            no_route: "none".into(),
        }
    }

    /// Phase 1, accept: wraps [`Proxy::process`] with the request id, the overall timeout,
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
        // `request_id` keeps visible ASCII only, which is always a valid header value; the
        // same value goes upstream and back to the caller.
        let id_header = HeaderValue::from_str(&request_id).ok();
        let method = req.method().clone();
        let uri = req.uri().clone();
        let mut outcome = Outcome::default();
        let result = tokio::time::timeout(
            self.request_timeout,
            self.process(req, id_header.as_ref(), &mut outcome),
        )
        .await;
        let mut res = match result {
            Ok(Ok(res)) => res,
            Ok(Err(err)) => problem_response(&err, &request_id),
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
            .clone()
            .unwrap_or_else(|| self.no_route.clone());
        let elapsed = started.elapsed();
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                upstream: upstream.clone().into(),
                status: status_class(status),
            })
            .inc();
        self.metrics
            .request_duration
            .get_or_create(&UpstreamLabel {
                upstream: upstream.clone().into(),
            })
            .observe(elapsed.as_secs_f64());
        let error = res.extensions().get::<ErrorCode>().map(|c| c.0);
        tracing::info!(
            target: "gstgate::access",
            request_id = request_id.as_str(),
            client = outcome.client.as_deref(),
            upstream = &*upstream,
            gstin = outcome.gstin.as_ref().map(Gstin::as_str),
            method = method.as_str(),
            path = uri.path(),
            status,
            upstream_status = outcome.upstream_status,
            upstream_code = outcome.upstream_code.as_deref(),
            error,
            retries = outcome.retries,
            latency_ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        );
        Ok(res)
    }

    /// Phases 2–9.
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
        if head_len(&parts.method, &parts.uri, &parts.headers) > self.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge(self.max_header_bytes));
        }
        let client = self.clients.authenticate(&parts.headers)?;
        outcome.client = Some(client.name.clone());
        if !matches!(
            parts.method,
            Method::GET | Method::POST | Method::PUT | Method::DELETE
        ) {
            return Err(GatewayError::MethodNotAllowed(
                parts.method.as_str().chars().take(32).collect(),
            ));
        }
        let path = CallerPath::parse(parts.uri.path(), parts.uri.query())?;
        let (index, upstream) = self.route(&path)?;
        outcome.upstream = Some(upstream.name.clone());
        let slot = self.identity(&client, index, upstream, &parts.headers, outcome)?;
        upstream
            .profile
            .check_request(&path, &slot.credential.gstin)?;
        let body = self.read_body(&parts.headers, body).await?;
        outcome.body_read = true;

        if upstream.is_auth_path(&path) {
            let session = self.sessions.session(&slot, Trigger::Cold).await?;
            return Ok(json_response(
                StatusCode::OK,
                upstream
                    .profile
                    .auth_answer(&slot.credential.username, session.expires_at),
            ));
        }

        // Phases 5-8, then 9; a token rejection earns exactly one more pass through 5-8.
        let session = self.sessions.session(&slot, Trigger::Cold).await?;
        let call = Call {
            upstream,
            slot: &slot,
            caller: &parts.headers,
            request_id,
            method: &parts.method,
            path: &path,
            body: &body,
        };
        let (status, reply_headers, reply) = call.exchange(&session, outcome).await?;
        let parsed = upstream.profile.read_reply(status, &reply);
        outcome.upstream_code = parsed.verdict.code.clone();
        if parsed.verdict.class != Class::TokenRejected {
            return respond(
                upstream,
                &slot,
                &session,
                status,
                &reply_headers,
                &reply,
                parsed,
            );
        }

        // Compare-and-invalidate: if another request already replaced this generation, this
        // one simply picks up the newer session. If a re-login after a rejection already got
        // this very token back, another one would too: fail without spending a login (see
        // `Invalidation::KnownRejected`).
        let rejected = GatewayError::TokenRejected {
            upstream_code: parsed.verdict.code,
        };
        if self.sessions.invalidate(&slot, session.generation) == Invalidation::KnownRejected {
            self.count_replay(upstream, "failed");
            return Err(rejected);
        }
        let session = self
            .sessions
            .session(&slot, Trigger::Rejected)
            .await
            .inspect_err(|_| self.count_replay(upstream, "failed"))?;
        outcome.retries = 1;
        let (status, reply_headers, reply) = call.exchange(&session, outcome).await?;
        let parsed = upstream.profile.read_reply(status, &reply);
        outcome.upstream_code = parsed.verdict.code.clone();
        if parsed.verdict.class == Class::TokenRejected {
            // Never a third attempt.
            self.count_replay(upstream, "failed");
            return Err(GatewayError::TokenRejected {
                upstream_code: parsed.verdict.code,
            });
        }
        self.count_replay(upstream, "recovered");
        respond(
            upstream,
            &slot,
            &session,
            status,
            &reply_headers,
            &reply,
            parsed,
        )
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

    /// Phase 3, route: the upstream whose longest route prefix matches the validated path.
    fn route(&self, path: &CallerPath) -> Result<(usize, &Arc<Upstream>), GatewayError> {
        self.upstreams
            .iter()
            .enumerate()
            .filter_map(|(i, u)| u.route_match(path).map(|len| (len, i, u)))
            .max_by_key(|(len, _, _)| *len)
            .map(|(_, i, u)| (i, u))
            .ok_or_else(|| GatewayError::RouteNotFound(path.path().chars().take(200).collect()))
    }

    /// Phase 4, identity: validated GSTIN, allowed for this client, with a credential.
    fn identity(
        &self,
        client: &Client,
        index: usize,
        upstream: &Upstream,
        headers: &HeaderMap,
        outcome: &mut Outcome,
    ) -> Result<Arc<Slot>, GatewayError> {
        let raw = headers
            .get("gstin")
            .ok_or(GatewayError::GstinMissing)?
            .to_str()
            .map_err(|_| GatewayError::GstinInvalid("not ASCII".into()))?;
        let gstin = Gstin::parse(raw).map_err(|e| GatewayError::GstinInvalid(e.to_string()))?;
        if let Err(e) = gstin.verify_checksum() {
            match upstream.checksum {
                ChecksumPolicy::Enforce => return Err(GatewayError::GstinInvalid(e.to_string())),
                ChecksumPolicy::Warn => {
                    tracing::warn!(gstin = %gstin, upstream = %upstream.name, "GSTIN fails the checksum (gstin_checksum = \"warn\")");
                }
            }
        }
        outcome.gstin = Some(gstin.clone());
        if !client.allows(&gstin) {
            return Err(GatewayError::GstinNotAllowed(gstin.to_string()));
        }
        let user = headers
            .get("user_name")
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|u| !u.is_empty());
        self.sessions.lookup(index, &gstin, user)
    }

    /// Reads the caller's body, refusing more than `max_body_bytes` (buffered so it can be
    /// replayed after a token rejection).
    async fn read_body<B>(&self, headers: &HeaderMap, body: B) -> Result<Bytes, GatewayError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max_body_bytes as u64) {
            return Err(GatewayError::BodyTooLarge(self.max_body_bytes));
        }
        match http_body_util::Limited::new(body, self.max_body_bytes)
            .collect()
            .await
        {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(GatewayError::BodyTooLarge(self.max_body_bytes))
            }
            Err(_) => Err(GatewayError::BodyInvalid(
                "the request body could not be read".into(),
            )),
        }
    }
}

/// What one upstream call of a request is made of, fixed across its (at most two) attempts.
struct Call<'a> {
    upstream: &'a Upstream,
    slot: &'a Slot,
    caller: &'a HeaderMap,
    request_id: Option<&'a HeaderValue>,
    method: &'a Method,
    path: &'a CallerPath,
    body: &'a Bytes,
}

impl Call<'_> {
    /// Phases 6 and 7 with `session`: build the request (the token and SEK may differ between
    /// attempts) and send it.
    async fn exchange(
        &self,
        session: &Session,
        outcome: &mut Outcome,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GatewayError> {
        let (headers, wire) = build(
            self.upstream,
            self.slot,
            session,
            self.caller,
            self.request_id,
            self.method,
            self.body,
        )?;
        let reply = self
            .upstream
            .send(self.method.clone(), self.path, headers, wire)
            .await?;
        outcome.upstream_status = Some(reply.0.as_u16());
        Ok(reply)
    }
}

/// The caller headers that may travel upstream: only those the upstream's allow-list names
/// (RFC 9110 §7.6.1: minus any the caller's `Connection` header marks hop-by-hop).
fn forwardable(upstream: &Upstream, caller: &HeaderMap) -> HeaderMap {
    let hop_by_hop = |name: &HeaderName| {
        caller.get_all(header::CONNECTION).iter().any(|v| {
            v.to_str().is_ok_and(|v| {
                v.split(',')
                    .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
            })
        })
    };
    let mut out = HeaderMap::with_capacity(upstream.forwarded.len() + 8);
    for name in &upstream.forwarded {
        if !caller.contains_key(name) || hop_by_hop(name) {
            continue;
        }
        for value in caller.get_all(name) {
            out.append(name.clone(), value.clone());
        }
    }
    out
}

/// Phase 6, build: headers for this attempt (the session may have changed) and the body,
/// encrypted with this session's SEK in gateway mode. The injected headers are inserted after
/// the caller's, so each one is always gstgate's value.
fn build(
    upstream: &Upstream,
    slot: &Slot,
    session: &Session,
    caller: &HeaderMap,
    request_id: Option<&HeaderValue>,
    method: &Method,
    body: &Bytes,
) -> Result<(HeaderMap, Bytes), GatewayError> {
    let mut headers = forwardable(upstream, caller);
    let ctx = slot.header_context();
    upstream
        .profile
        .data_headers(&mut headers, &ctx, &session.token);
    if let Some(id) = request_id {
        headers.insert(REQUEST_ID.clone(), id.clone());
    }
    let wire = match upstream.encryption {
        Encryption::Gateway => {
            let encoded = upstream
                .profile
                .encode_request(method, body, &session.sek)?;
            if !encoded.is_empty() {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            Bytes::from(encoded)
        }
        Encryption::Passthrough => body.clone(),
    };
    Ok((headers, wire))
}

/// Phase 9, respond.
fn respond(
    upstream: &Upstream,
    slot: &Slot,
    session: &Session,
    status: StatusCode,
    reply_headers: &HeaderMap,
    reply: &Bytes,
    parsed: crate::upstream::Reply<'_>,
) -> Result<Response<Body>, GatewayError> {
    let verdict = parsed.verdict.clone();
    if parsed.envelope.is_none() {
        // Every GST API answers JSON; anything else is an error page or garbage.
        return Err(if status.is_server_error() {
            GatewayError::UpstreamUnavailable(format!(
                "the upstream answered HTTP {status} without a JSON body"
            ))
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            GatewayError::UpstreamThrottled {
                upstream_code: None,
            }
        } else {
            GatewayError::UpstreamBadResponse(format!("HTTP {status} with a body that is not JSON"))
        });
    }
    match verdict.class {
        Class::CredentialsRejected => {
            return Err(GatewayError::CredentialsRejected {
                gstin: slot.credential.gstin.to_string(),
                username: slot.credential.username.to_string(),
                upstream_code: verdict.code,
            })
        }
        Class::Configuration => {
            return Err(GatewayError::UpstreamConfigRejected {
                upstream_code: verdict.code,
                message: verdict.message.unwrap_or_else(|| "request refused".into()),
            })
        }
        Class::AccessDisabled => {
            return Err(GatewayError::ApiAccessDisabled {
                gstin: slot.credential.gstin.to_string(),
                upstream_code: verdict.code,
            })
        }
        Class::SessionLimit => {
            return Err(GatewayError::TooManySessions {
                upstream_code: verdict.code,
            })
        }
        _ => {}
    }
    let body = if verdict.class == Class::Success && upstream.encryption == Encryption::Gateway {
        Bytes::from(upstream.profile.decode_reply(parsed, &session.sek)?)
    } else {
        reply.clone()
    };
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    let headers = res.headers_mut();
    for (name, value) in reply_headers {
        if !DROPPED_REPLY_HEADERS.contains(&name.as_str()) {
            headers.append(name.clone(), value.clone());
        }
    }
    if upstream.encryption == Encryption::Gateway {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    Ok(res)
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = status;
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    res
}
