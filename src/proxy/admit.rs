//! Phase 2, admit: everything decided about a request before its session is: the caller and
//! its rate limit, the method, the path and its upstream, the taxpayer and its credential
//! slot, and the body.

use std::sync::Arc;

use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderMap, Method};

use super::{Outcome, Proxy};
use crate::body::{read_whole, ReadError};
use crate::clients::{Client, Clients};
use crate::config::ChecksumPolicy;
use crate::gstin::Gstin;
use crate::path::CallerPath;
use crate::problem::GatewayError;
use crate::request::{head_len, GSTIN, USER_NAME};
use crate::session::Slot;
use crate::upstream::Upstream;

/// How a request was admitted.
pub(super) enum Admission<'p> {
    /// A gstgate caller, by its API key.
    Caller(Admitted<'p>),
    /// A drop-in caller (a client id header, no API key) of an upstream with drop-in on: who
    /// it is depends on its login or its token, checked in `super::dropin`.
    Dropin {
        /// The upstream its path routes to.
        upstream: &'p Arc<Upstream>,
        /// Its validated path and query.
        path: CallerPath,
    },
}

/// An admitted request: where it goes and for whom.
pub(super) struct Admitted<'p> {
    /// The upstream its path routes to.
    pub(super) upstream: &'p Arc<Upstream>,
    /// The credential slot of its GSTIN (and user).
    pub(super) slot: Arc<Slot>,
    /// Its validated path and query.
    pub(super) path: CallerPath,
}

impl Proxy {
    /// Admits a request's head: size, caller key, method, body coding, path, route and
    /// identity, in that order, so a caller without a valid key learns nothing about routes
    /// or taxpayers. A drop-in caller is routed before it is identified: its API's own
    /// refusal codes depend on the route, and routes are the API's public paths.
    pub(super) fn admit(
        &self,
        parts: &Parts,
        outcome: &mut Outcome,
    ) -> Result<Admission<'_>, GatewayError> {
        if head_len(&parts.method, &parts.uri, &parts.headers) > self.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge(self.max_header_bytes));
        }
        let dropin = self.dropin_on && Clients::is_dropin_caller(&parts.headers);
        let client = if dropin {
            None
        } else {
            let client = self.clients().authenticate(&parts.headers)?;
            outcome.client = Some(client.name.clone());
            // Before routing, sessions or the upstream: a client over its rate costs the
            // others nothing but this check.
            client.admit_rate()?;
            Some(client)
        };
        if !matches!(
            parts.method,
            Method::GET | Method::POST | Method::PUT | Method::DELETE
        ) {
            return Err(GatewayError::MethodNotAllowed(
                parts.method.as_str().chars().take(32).collect(),
            ));
        }
        body_coding(&parts.headers)?;
        let path = CallerPath::parse(parts.uri.path(), parts.uri.query())?;
        let upstream = self.route(&path)?;
        outcome.upstream = Some(upstream.clone());
        let Some(client) = client else {
            if upstream.dropin_key.is_none() {
                return Err(GatewayError::Unauthenticated);
            }
            return Ok(Admission::Dropin { upstream, path });
        };
        let slot = self.identity(&client, upstream, &parts.headers, outcome)?;
        upstream
            .profile
            .check_request(&path, &slot.credential.gstin)?;
        Ok(Admission::Caller(Admitted {
            upstream,
            slot,
            path,
        }))
    }

    /// Route: the upstream whose longest route prefix matches the validated path.
    fn route(&self, path: &CallerPath) -> Result<&Arc<Upstream>, GatewayError> {
        self.upstreams
            .iter()
            .filter_map(|u| u.route_match(path).map(|len| (len, u)))
            .max_by_key(|(len, _)| *len)
            .map(|(_, u)| u)
            .ok_or_else(|| GatewayError::RouteNotFound(path.path().chars().take(200).collect()))
    }

    /// Identity: validated GSTIN, allowed for this client, with a credential.
    fn identity(
        &self,
        client: &Client,
        upstream: &Upstream,
        headers: &HeaderMap,
        outcome: &mut Outcome,
    ) -> Result<Arc<Slot>, GatewayError> {
        let raw = headers
            .get(&GSTIN)
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
            .get(&USER_NAME)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|u| !u.is_empty());
        self.sessions.lookup(&upstream.name, &gstin, user)
    }

    /// Reads the caller's body, refusing more than `max_body_bytes`, announced or sent
    /// (buffered so it can be replayed after a token rejection).
    pub(super) async fn read_body<B>(&self, body: B) -> Result<Bytes, GatewayError>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        match read_whole(body, self.max_body_bytes).await {
            Ok(body) => Ok(body),
            Err(ReadError::TooLarge(limit)) => Err(GatewayError::BodyTooLarge(limit)),
            Err(ReadError::Failed(_)) => Err(GatewayError::BodyInvalid(
                "the request body could not be read".into(),
            )),
        }
    }
}

/// Refuses a compressed body: no GST API takes one, gstgate could neither encrypt it nor read
/// it, and `Content-Encoding` does not travel upstream, so forwarded as is it would reach the
/// upstream as bytes labelled JSON.
fn body_coding(headers: &HeaderMap) -> Result<(), GatewayError> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let coded = value.to_str().map_or(true, |v| {
            v.split(',')
                .any(|c| !c.trim().eq_ignore_ascii_case("identity"))
        });
        if coded {
            return Err(GatewayError::BodyInvalid(format!(
                "the body is sent with Content-Encoding `{}`; the GST APIs take it uncompressed",
                String::from_utf8_lossy(value.as_bytes())
                    .chars()
                    .take(32)
                    .collect::<String>()
            )));
        }
    }
    Ok(())
}
