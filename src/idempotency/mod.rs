//! `Idempotency-Key` (the IETF httpapi idempotency-key draft): a caller that sends the key
//! on a POST gets, for the same key and the same request within the window, the stored
//! answer instead of a second upstream call. The rule lives here, whole:
//!
//! * **Which key**: one header value of 1 to [`MAX_KEY_LEN`] visible ASCII characters, bare
//!   or as a structured-field string (`"…"`); anything else is 400. Only POSTs are keyed (the
//!   others are safe or idempotent by themselves): on another method the header is ignored.
//! * **Whose key**: scoped by client, upstream, GSTIN and user ([`record_name`]), so one client's
//!   key never answers another's request. A key stands for one request: its method, path
//!   and query, and body ([`fingerprint`]); the same key with another request is 422.
//! * **One request at a time**: the first request claims the key atomically in the session
//!   store (so across replicas and restarts) and renews the claim's lease while in flight. A
//!   concurrent duplicate waits for the answer, polling with backoff, until its deadline, and
//!   only then gets 409: never a second upstream call. A claim whose lease ran out (its
//!   replica died) is taken over, and the new holder is told that an earlier attempt may
//!   have reached the upstream.
//! * **What is stored**: every answer the upstream gave (success or business error) is
//!   stored and replayed byte for byte (status, content type, body) with
//!   `gstgate-outcome: replayed`; a relayed throttle, transient error or 5xx is not an answer
//!   (the proxy's `settle_key` frees or leaves the key open by the reply's class). A gateway
//!   failure stores nothing ([`after_failure`]): the key is freed when the request cannot
//!   have reached the upstream, and left open (the next attempt is told) when it may have,
//!   and never freed once the key was open or anything the request sent may have been
//!   acted on.
//! * **Whose store**: a record this gateway cannot open (sealed under a key it lacks) is
//!   refused (503), never taken over; one client creates at most its quota of keys.

mod claim;
mod record;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Method, Response};
use http_body_util::BodyExt as _;
use rand::RngCore as _;
use sha2::{Digest, Sha256};

use crate::config::IdempotencyConfig;
use crate::problem::GatewayError;
use crate::store::{wall_ms, KeyWritten, Store, IDEMPOTENCY_PREFIX};
use crate::tasks::Tasks;

pub use claim::Claim;
pub use record::{Answer, Fingerprint, State};

use claim::Held;

/// The caller's header.
pub const HEADER: HeaderName = HeaderName::from_static("idempotency-key");
/// The longest key accepted: a UUID is 36 characters; the draft sets no bound.
pub const MAX_KEY_LEN: usize = 255;
/// A waiter's first pause between two reads of the key.
const FIRST_PAUSE: Duration = Duration::from_millis(20);
/// A waiter's longest pause between two reads of the key.
const MAX_PAUSE: Duration = Duration::from_millis(500);

/// The caller's key on a POST; `None` without one or on another method (ignored there).
pub fn key(method: &Method, headers: &HeaderMap) -> Result<Option<String>, GatewayError> {
    if method != Method::POST {
        return Ok(None);
    }
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(GatewayError::IdempotencyKeyInvalid("sent more than once"));
    }
    let raw = value.as_bytes();
    let bare = match raw {
        [b'"', inner @ .., b'"'] => inner,
        _ => raw,
    };
    if bare.is_empty() {
        return Err(GatewayError::IdempotencyKeyInvalid("empty"));
    }
    if bare.len() > MAX_KEY_LEN {
        return Err(GatewayError::IdempotencyKeyInvalid(
            "longer than 255 characters",
        ));
    }
    if !bare
        .iter()
        .all(|b| (0x21..=0x7e).contains(b) && *b != b'"' && *b != b'\\')
    {
        return Err(GatewayError::IdempotencyKeyInvalid(
            "only visible ASCII characters, without quotes or backslashes, may make up a key",
        ));
    }
    Ok(Some(String::from_utf8_lossy(bare).into_owned()))
}

/// The record name of `key` for `client` on `upstream` for `gstin` as `user` (the
/// credential's username: two users of one GSTIN are two scopes): a digest, so that the
/// caller's characters never reach a store key, and each part length-prefixed, so that no
/// two scopes share a name.
pub fn record_name(client: &str, upstream: &str, gstin: &str, user: &str, key: &str) -> String {
    let mut hash = Sha256::new();
    for part in [client, upstream, gstin, user, key] {
        hash.update(u32::try_from(part.len()).unwrap_or(u32::MAX).to_be_bytes());
        hash.update(part.as_bytes());
    }
    let digest = hash.finalize();
    let mut name = String::from(IDEMPOTENCY_PREFIX);
    for b in digest {
        name.push_str(&format!("{b:02x}"));
    }
    name
}

/// What a key stands for: the request's method, path and query, and body.
pub fn fingerprint(method: &Method, path_and_query: &str, body: &[u8]) -> Fingerprint {
    let mut hash = Sha256::new();
    for part in [method.as_str().as_bytes(), path_and_query.as_bytes(), body] {
        hash.update(u64::try_from(part.len()).unwrap_or(u64::MAX).to_be_bytes());
        hash.update(part);
    }
    hash.finalize().into()
}

/// What becomes of a key whose request failed in the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Nothing reached the upstream, or it refused before acting: the key is free, and a
    /// retry is a first attempt.
    Free,
    /// The request may have reached the upstream and been acted on: the key stays (open),
    /// and the next attempt is told that an earlier one may have reached the upstream.
    Unknown,
}

/// The one rule for a failed request's key, by the failure's class. Every variant answers
/// for itself, so that a new one must too.
pub fn after_failure(err: &GatewayError) -> Release {
    use GatewayError::*;
    match err {
        // The request was sent and its outcome is not known: a timeout, a broken connection,
        // a 5xx or transient code, a reply that could not be read.
        UpstreamTimeout(_)
        | UpstreamConnectionFailed(_)
        | UpstreamUnavailable(_)
        | UpstreamBadResponse(_)
        | OutcomeUnknown(_)
        | AdminActionTimeout(_) => Release::Unknown,
        // Refused before anything was sent (the caller's mistake, gstgate's limits, no
        // session), not connected, or refused by the upstream without acting (a throttle,
        // a token or credential rejection).
        Unauthenticated
        | ClientRejected
        | DropinSessionsExhausted { .. }
        | GstinMissing
        | GstinInvalid(_)
        | GstinMismatch(_)
        | GstinNotAllowed(_)
        | NoCredential { .. }
        | UpstreamNotFound { .. }
        | UserRequired { .. }
        | PathInvalid(_)
        | MethodNotAllowed(_)
        | RouteNotFound(_)
        | AdminUnauthenticated
        | MonitoringUnauthenticated
        | AdminRouteNotFound(_)
        | AdminMethodNotAllowed { .. }
        | AdminRequestInvalid(_)
        | BodyTooLarge(_)
        | AdminBodyTooLarge(_)
        | RequestTimeout(_)
        | ConfigInvalid(_)
        | AdminBodyInvalid(_)
        | HeadersTooLarge(_)
        | BodyInvalid(_)
        | OtpNotApplicable { .. }
        | CredentialsRejected { .. }
        | UpstreamConfigRejected { .. }
        | ClientRateLimited { .. }
        | LoginThrottled { .. }
        | LoginBackoff { .. }
        | TokenRejected { .. }
        | UpstreamThrottled { .. }
        | UpstreamUnreachable(_)
        | OtpRequired { .. }
        | OtpInvalid { .. }
        | ApiAccessDisabled { .. }
        | TooManySessions { .. }
        | IdempotencyKeyInvalid(_)
        | IdempotencyKeyReused
        | IdempotencyKeyInFlight
        | IdempotencyUnavailable(_)
        | NotReady(_)
        | Internal(_) => Release::Free,
    }
}

/// How a keyed request goes on.
pub enum Begin {
    /// The key's answer is stored: replay it.
    Replay(Answer),
    /// This request holds the key: send it, then settle the claim.
    Claimed(Claim),
}

/// The idempotency keys: the store they live in and their bounds.
pub struct Idempotency {
    /// Where the keys' records live.
    store: Arc<Store>,
    /// Where claims renew their leases.
    tasks: Tasks,
    /// `idempotency.window`.
    window: Duration,
    /// `idempotency.max_keys`.
    max_keys: usize,
    /// `idempotency.max_response_bytes`.
    max_response_bytes: usize,
    /// `idempotency.lease`.
    lease: Duration,
    /// This replica's share of `idempotency.max_keys_per_client`.
    max_keys_per_client: usize,
    /// The keys each client created on this replica within the window, as their expiries
    /// (Unix milliseconds, oldest first): one client cannot hold every key.
    created: std::sync::Mutex<HashMap<String, VecDeque<u64>>>,
}

impl Idempotency {
    /// Keys in `store`, bounded as `config` says (a client's quota shared by `replicas`);
    /// claims renew on `tasks`.
    pub fn new(store: Arc<Store>, tasks: Tasks, config: &IdempotencyConfig, replicas: u32) -> Self {
        let replicas = usize::try_from(replicas.max(1)).unwrap_or(1);
        Self {
            max_keys_per_client: (config.max_keys_per_client / replicas).max(1),
            created: std::sync::Mutex::default(),
            store,
            tasks,
            window: config.window,
            max_keys: config.max_keys,
            max_response_bytes: config.max_response_bytes,
            lease: config.lease,
        }
    }

    /// The largest answer kept.
    pub fn max_response_bytes(&self) -> usize {
        self.max_response_bytes
    }

    /// Claims key `name` for the request `fingerprint`, or finds its answer; waits for a
    /// claim in flight elsewhere until `deadline`, then answers 409.
    pub async fn begin(
        &self,
        client: &str,
        name: &str,
        fingerprint: Fingerprint,
        deadline: Instant,
    ) -> Result<Begin, GatewayError> {
        let mut pause = FIRST_PAUSE;
        loop {
            let found = self.store.key_record(name).await.map_err(unavailable)?;
            let (expected, earlier_attempt_unknown) = match found {
                None => (None, false),
                Some(found) => match found.plain.as_deref().and_then(|p| State::decode(p)) {
                    // A record this gateway cannot read (sealed under a key it does not
                    // have, as during a key rotation): it may be another replica's live
                    // claim or answer, so it is never taken over nor overwritten.
                    None => {
                        return Err(GatewayError::IdempotencyUnavailable(
                            "a record of this key is sealed under a key this gateway does not have (store.key rotation under way?)".into(),
                        ))
                    }
                    Some(state) if *state.fingerprint() != fingerprint => {
                        return Err(GatewayError::IdempotencyKeyReused)
                    }
                    Some(State::Answered { answer, .. }) => return Ok(Begin::Replay(answer)),
                    Some(State::Open { .. }) => (Some(found.sealed), true),
                    Some(State::Claimed { lease_until, .. }) if lease_until <= wall_ms() => {
                        (Some(found.sealed), true)
                    }
                    Some(State::Claimed { .. }) => {
                        let now = crate::clock::now();
                        if now >= deadline {
                            return Err(GatewayError::IdempotencyKeyInFlight);
                        }
                        tokio::time::sleep(pause.min(deadline - now)).await;
                        pause = (pause * 2).min(MAX_PAUSE);
                        continue;
                    }
                },
            };
            if let Some(claim) = self
                .claim(client, name, fingerprint, expected, earlier_attempt_unknown)
                .await?
            {
                return Ok(Begin::Claimed(claim));
            }
        }
    }

    /// Writes a claim over `expected`; `None` if another request got there first.
    async fn claim(
        &self,
        client: &str,
        name: &str,
        fingerprint: Fingerprint,
        expected: Option<Vec<u8>>,
        earlier_attempt_unknown: bool,
    ) -> Result<Option<Claim>, GatewayError> {
        let mut owner = [0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut owner);
        let mut held = Held {
            store: self.store.clone(),
            tasks: self.tasks.clone(),
            name: name.to_owned(),
            fingerprint,
            owner,
            lease: self.lease,
            window: self.window,
            current: tokio::sync::Mutex::new(None),
            held_until: AtomicU64::new(0),
            lost: AtomicBool::new(false),
        };
        let (record, lease_until) = held.claim_record();
        let new = expected.is_none();
        if new {
            self.reserve(client)?;
        }
        let written = self
            .store
            .swap_key(
                name,
                expected.as_deref(),
                Some(&record),
                self.window,
                self.max_keys,
            )
            .await
            .map_err(unavailable);
        if new && !matches!(written, Ok(KeyWritten::Done(_))) {
            self.unreserve(client);
        }
        match written? {
            KeyWritten::Done(sealed) => {
                *held.current.get_mut() = sealed;
                *held.held_until.get_mut() = lease_until;
                Ok(Some(Claim::start(held, earlier_attempt_unknown)))
            }
            KeyWritten::Changed => Ok(None),
            KeyWritten::Full => Err(GatewayError::IdempotencyUnavailable(
                "idempotency.max_keys keys are held".into(),
            )),
        }
    }
}

impl Idempotency {
    /// Counts a new key against `client`'s quota on this replica, or refuses it.
    fn reserve(&self, client: &str) -> Result<(), GatewayError> {
        let now = wall_ms();
        let mut created = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        let made = created.entry(client.to_owned()).or_default();
        while made.front().is_some_and(|&until| until <= now) {
            made.pop_front();
        }
        if made.len() >= self.max_keys_per_client {
            return Err(GatewayError::IdempotencyUnavailable(
                "this client holds its idempotency.max_keys_per_client keys".into(),
            ));
        }
        made.push_back(now.saturating_add(millis(self.window)));
        Ok(())
    }

    /// Gives back a reservation whose key was not written.
    fn unreserve(&self, client: &str) {
        let mut created = self.created.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(made) = created.get_mut(client) {
            made.pop_back();
        }
    }
}

/// The answer in `res`, read whole (it is in memory already), and `res` rebuilt from it.
pub async fn capture(res: Response<Body>) -> Result<(Response<Body>, Answer), GatewayError> {
    let (parts, body) = res.into_parts();
    let body: Bytes = body
        .collect()
        .await
        .map_err(|e| GatewayError::Internal(format!("reading an answer to store it: {e}")))?
        .to_bytes();
    let answer = Answer {
        status: parts.status.as_u16(),
        content_type: parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: body.clone(),
    };
    Ok((Response::from_parts(parts, Body::from(body)), answer))
}

/// A store that could not be asked about a key: the request is not sent unguarded.
fn unavailable(e: crate::store::BackendError) -> GatewayError {
    GatewayError::IdempotencyUnavailable(format!("the session store: {e}"))
}

/// `d` in whole milliseconds, saturating.
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests;
