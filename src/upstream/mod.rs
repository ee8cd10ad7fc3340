//! Upstream GSP APIs: one [`Profile`] per API kind, and the HTTP client that calls them.
//!
//! Profiles are the one place where NIC e-invoice, e-way bill and GSTN differ: how to log in,
//! which headers a call carries, how a body is encrypted and a reply decrypted, and how a
//! reply is classified, how sessions are renewed. The rest of the gateway speaks only of
//! sessions and [`Class`]es.
//!
//! * `profile`: the [`Profile`] trait and the types profiles speak.
//! * [`dropin`]: each API's drop-in face, for unmodified NIC/GSTN clients.
//! * [`einvoice`], [`ewaybill`], [`gstn`]: the three profiles; [`nic`]: what NIC's two share.
//! * [`renewal`]: the session-renewal strategies the profiles pick from.
//! * [`envelope`], [`sealed`]: reading and rewriting JSON replies, and the REK-sealed payloads.
//! * [`generate`]: what a profile says about a call that creates a document, for the outcome
//!   phase.
//! * `headers`: the header values and names injected upstream.
//! * [`client`], [`tls`]: the pooled HTTP client and its TLS set-up.
//! * [`targets`]: the base URLs an upstream's calls may go to (NIC's IRPs), each behind its
//!   circuit breaker, and which one a call goes to.
//! * `config_checks`: what `check-config` and `serve` check of a loaded configuration beyond
//!   what the configuration can check alone (each profile's rules, key and CA files).
//! * Here: [`Upstream`], a configured upstream ready to call, and its `send` and `dispatch`.

pub mod client;
mod config_checks;
pub mod dropin;
pub mod einvoice;
pub mod envelope;
pub mod ewaybill;
pub mod generate;
pub mod gstn;
mod headers;
pub mod nic;
mod profile;
pub mod renewal;
pub mod sealed;
pub mod targets;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use secrecy::ExposeSecret;

use crate::config::{ApiKind, ChecksumPolicy, Duplicate, Encryption, UpstreamConfig};
pub use crate::config::{HEADER_ROLES, ROLE_COUNT};
use crate::crypto::{KeyPair, PublicKey};
use crate::metrics::{Metrics, UpstreamLabel};
use crate::path::CallerPath;
use crate::problem::{Cause, GatewayError};
pub use config_checks::{check_files, check_profiles, config_warnings};
pub use generate::Generate;
pub use headers::{
    named_by_connection, transaction_id, HeaderContext, HeaderNames, GENERIC_CALLER_HEADERS,
};
pub(crate) use profile::{accepted_login, bodiless};
pub use profile::{
    Class, Expiry, Login, LoginFailure, LoginKind, LoginRequest, Portals, Profile, Reply, Verdict,
};
use targets::{Health, Order, Target, Turn};

/// A configured upstream, ready to call.
pub struct Upstream {
    /// Name in metrics, logs and admin paths.
    pub name: Arc<str>,
    /// The API-specific behaviour.
    pub profile: Box<dyn Profile>,
    /// Where requests go: the base URLs (`scheme://authority/base-path`), each behind its
    /// circuit breaker; a request goes to one of them + the caller's validated path.
    pub targets: targets::Targets,
    /// Path prefixes routed here.
    pub routes: Vec<String>,
    /// Login path.
    pub auth_path: CallerPath,
    /// The upstream's RSA key.
    pub public_key: PublicKey,
    /// gstgate's own RSA key pair, with which drop-in clients log in; `None`: no drop-in.
    pub dropin_key: Option<Arc<KeyPair>>,
    /// Who encrypts payloads.
    pub encryption: Encryption,
    /// What a caller's generate answered "duplicate" gets.
    pub duplicate: Duplicate,
    /// Client id header value (sensitive).
    pub client_id: HeaderValue,
    /// Client secret header value (sensitive).
    pub client_secret: HeaderValue,
    /// The `ip-usr` value sent to APIs that want the end user's IP (GSTN).
    pub ip_usr: HeaderValue,
    /// Header names.
    pub names: HeaderNames,
    /// Static extra headers (sensitive).
    pub static_headers: Vec<(HeaderName, HeaderValue)>,
    /// Caller headers that may travel upstream: the generic ones, the profile's and
    /// `forward_headers`.
    pub forwarded: Vec<HeaderName>,
    /// Refresh this long before expiry.
    pub refresh_before: Duration,
    /// GSTIN checksum policy.
    pub checksum: ChecksumPolicy,
    /// Per-call timeout.
    pub timeout: Duration,
    /// Token lifetime when the login reply has no expiry.
    pub token_lifetime: Duration,
    /// Logins allowed per credential per window.
    pub max_logins: u32,
    /// Login-limit window.
    pub login_window: Duration,
    /// Logins in flight toward this upstream at once, at most.
    pub max_concurrent_logins: u32,
    /// Logins started per second toward this upstream (the group's), at most.
    pub logins_per_second: u32,
    /// Idle sessions are dropped after this.
    pub idle_ttl: Duration,
    /// Largest reply accepted.
    pub max_response_bytes: usize,
    http: client::HttpClient,
    metrics: Arc<Metrics>,
    label: UpstreamLabel,
}

/// What [`Upstream::dispatch`] came to: the reply or the failure, and the target that had
/// the request last.
pub struct Routed<'a> {
    /// The label of the target that had the request (`NIC1`, `default`); `None` only if
    /// none was tried.
    pub target: Option<Arc<str>>,
    /// Its reply (status, headers, body) or why there is none.
    pub result: Result<(StatusCode, HeaderMap, Bytes), GatewayError>,
    /// The target's verdict on a reply, left to whoever reads the reply anyway, so that no
    /// reply is parsed twice on the request path.
    pub pending: Pending<'a>,
}

/// A reply's effect on its target's circuit, until the reply is read ([`Pending::judge`]).
/// Dropped unjudged, it leaves the circuit as it was (a probe's slot is freed).
#[derive(Default)]
pub struct Pending<'a>(Option<Turn<'a>>);

impl Pending<'_> {
    /// Records the reply's verdict in its target's circuit and gauge.
    pub fn judge(self, status: StatusCode, verdict: &Verdict) {
        if let Some(turn) = self.0 {
            turn.judge(reply_health(status, verdict));
        }
    }
}

/// A routed result's health, judged as the request path judges it: an error at once, a reply
/// once read ([`reply_health`]).
#[cfg(test)]
fn health(
    profile: &dyn Profile,
    result: &Result<(StatusCode, HeaderMap, Bytes), GatewayError>,
) -> Health {
    match result {
        Ok((status, _, body)) => reply_health(*status, &profile.read_reply(*status, body).verdict),
        Err(err) => error_health(err),
    }
}

/// What an attempt's result says of its target's health: a reply is a failure when it says
/// the upstream is in trouble, whatever its HTTP status: a transient API error (NIC's 5001 and
/// 5002 "application error", a GSP's `GSPGSTDOWN`: an IRP that is down answers so, often with
/// a 200), or a 5xx without an API error code (an error page, a JSON body from a proxy). A
/// 5xx that carries one of the API's own answers (a GSP that sends NIC's business errors with
/// a 5xx status) is an answer.
fn reply_health(status: StatusCode, verdict: &Verdict) -> Health {
    let troubled =
        verdict.class == Class::Transient || (status.is_server_error() && verdict.code.is_none());
    if troubled {
        Health::Failed
    } else {
        Health::Answered
    }
}

/// What a failed attempt says of its target: unreached (nothing sent), failed (sent, no
/// answer), or nothing (gstgate's own failure).
fn error_health(err: &GatewayError) -> Health {
    match err {
        GatewayError::UpstreamUnreachable(_) => Health::Unreached,
        GatewayError::UpstreamTimeout(_) | GatewayError::UpstreamConnectionFailed(_) => {
            Health::Failed
        }
        _ => Health::Unknown,
    }
}

/// Why an upstream could not be built from its configuration.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The public key file is missing or unreadable.
    #[error("upstream `{name}`: cannot read public key {path}: {source}")]
    KeyFile {
        /// Upstream name.
        name: String,
        /// The file.
        path: String,
        /// I/O error.
        source: std::io::Error,
    },
    /// The public key does not parse.
    #[error("upstream `{name}`: public key {path}: {source}")]
    Key {
        /// Upstream name.
        name: String,
        /// The file.
        path: String,
        /// Parse error.
        source: crate::crypto::CryptoError,
    },
    /// A configured value cannot be a header.
    #[error("upstream `{name}`: {what} is not a valid HTTP header value")]
    Header {
        /// Upstream name.
        name: String,
        /// Which value.
        what: String,
    },
    /// A URL or path setting cannot be used.
    #[error("upstream `{name}`: {what}")]
    Setting {
        /// Upstream name.
        name: String,
        /// What is wrong with which setting.
        what: String,
    },
    /// The HTTP client could not be built.
    #[error("upstream `{name}`: HTTP client: {source}")]
    Client {
        /// Upstream name.
        name: String,
        /// TLS set-up error.
        source: tls::TlsError,
    },
}

fn sensitive(value: &str, name: &str, what: &str) -> Result<HeaderValue, UpstreamError> {
    let mut v = HeaderValue::from_str(value).map_err(|_| UpstreamError::Header {
        name: name.to_owned(),
        what: what.to_owned(),
    })?;
    v.set_sensitive(true);
    Ok(v)
}

fn header_name(value: &str, name: &str) -> Result<HeaderName, UpstreamError> {
    HeaderName::from_bytes(value.as_bytes()).map_err(|_| UpstreamError::Header {
        name: name.to_owned(),
        what: format!("header name `{value}`"),
    })
}

/// Reads gstgate's drop-in private key (PKCS#8 PEM), refusing a file other users can read:
/// whoever holds the key can read every drop-in client's login, password included.
pub(crate) fn read_dropin_key(
    name: &str,
    path: &std::path::Path,
) -> Result<KeyPair, UpstreamError> {
    use std::os::unix::fs::PermissionsExt as _;
    let shown = path.display().to_string();
    let key_file = |source| UpstreamError::KeyFile {
        name: name.to_owned(),
        path: shown.clone(),
        source,
    };
    let mode = std::fs::metadata(path)
        .map_err(key_file)?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(UpstreamError::Setting {
            name: name.to_owned(),
            what: format!(
                "dropin_private_key {shown} can be read by other users (mode {:o}): `chmod 600` it (`gstgate keygen` writes it so)",
                mode & 0o777
            ),
        });
    }
    let pem = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(key_file)?);
    KeyPair::from_pkcs8_pem(&pem).map_err(|source| UpstreamError::Key {
        name: name.to_owned(),
        path: shown,
        source,
    })
}

/// The behaviour of an API kind.
pub fn profile(api: ApiKind) -> Box<dyn Profile> {
    match api {
        ApiKind::Einvoice => Box::new(einvoice::Einvoice),
        ApiKind::Ewaybill => Box::new(ewaybill::Ewaybill),
        ApiKind::Gstn => Box::new(gstn::Gstn),
    }
}

impl Upstream {
    /// Builds an upstream from validated configuration: reads its key, builds its client.
    pub fn from_config(cfg: &UpstreamConfig, metrics: Arc<Metrics>) -> Result<Self, UpstreamError> {
        let name = cfg.name.clone();
        let profile = profile(cfg.api);
        let path = crate::config::shown_path(&cfg.public_key);
        let pem = std::fs::read(&cfg.public_key).map_err(|source| UpstreamError::KeyFile {
            name: name.clone(),
            path: path.clone(),
            source,
        })?;
        let public_key =
            PublicKey::from_pem_or_cert(&pem).map_err(|source| UpstreamError::Key {
                name: name.clone(),
                path,
                source,
            })?;
        let dropin_key = cfg
            .dropin_private_key
            .as_deref()
            .map(|path| read_dropin_key(&name, path))
            .transpose()?
            .map(Arc::new);
        let defaults = profile.default_header_names();
        let pick = |i: usize| -> Result<HeaderName, UpstreamError> {
            let role = HEADER_ROLES[i];
            header_name(
                cfg.header_names
                    .get(role)
                    .map(String::as_str)
                    .unwrap_or(defaults[i]),
                &name,
            )
        };
        let names = HeaderNames {
            client_id: pick(0)?,
            client_secret: pick(1)?,
            gstin: pick(2)?,
            user_name: pick(3)?,
            auth_token: pick(4)?,
            state_cd: pick(5)?,
            ip_usr: pick(6)?,
            txn: pick(7)?,
        };
        let static_headers = cfg
            .headers
            .iter()
            .map(|(k, v)| {
                Ok((
                    header_name(k, &name)?,
                    sensitive(v.expose_secret(), &name, k)?,
                ))
            })
            .collect::<Result<_, UpstreamError>>()?;
        let mut forwarded: Vec<HeaderName> = Vec::new();
        for raw in GENERIC_CALLER_HEADERS
            .iter()
            .chain(profile.caller_headers())
            .map(|h| h.to_string())
            .chain(cfg.forward_headers.iter().map(|h| h.to_ascii_lowercase()))
        {
            let h = header_name(&raw, &name)?;
            if !forwarded.contains(&h) {
                forwarded.push(h);
            }
        }
        let tls =
            tls::client_config(cfg.ca_file.as_deref()).map_err(|source| UpstreamError::Client {
                name: name.clone(),
                source,
            })?;
        let http = client::build(tls, cfg.connect_timeout);
        let endpoints = cfg
            .endpoints()
            .into_iter()
            .map(|(url, irp)| {
                let base = reqwest::Url::parse(url)
                    .map_err(|_| UpstreamError::Setting {
                        name: name.clone(),
                        what: format!("base_url `{url}` is not a URL"),
                    })?
                    .as_str()
                    .trim_end_matches('/')
                    .to_owned();
                let portal = irp
                    .map(|irp| {
                        HeaderValue::from_str(irp).map_err(|_| UpstreamError::Header {
                            name: name.clone(),
                            what: "targets.irp".into(),
                        })
                    })
                    .transpose()?;
                Ok((base, portal))
            })
            .collect::<Result<Vec<_>, UpstreamError>>()?;
        let targets = targets::Targets::new(
            &name,
            endpoints,
            profile.portals().map(|p| HeaderName::from_static(p.header)),
            (cfg.breaker_failures, cfg.breaker_cool_down),
            &metrics,
        );
        Ok(Self {
            label: UpstreamLabel {
                upstream: crate::metrics::Name(name.as_str().into()),
            },
            name: name.as_str().into(),
            profile,
            targets,
            routes: cfg.routes.clone(),
            auth_path: CallerPath::parse(&cfg.auth_path, None).map_err(|e| {
                UpstreamError::Setting {
                    name: name.clone(),
                    what: format!("auth_path: {e}"),
                }
            })?,
            public_key,
            dropin_key,
            encryption: cfg.encryption,
            duplicate: cfg.duplicate,
            client_id: sensitive(cfg.client_id.expose_secret(), &name, "client_id")?,
            client_secret: sensitive(cfg.client_secret.expose_secret(), &name, "client_secret")?,
            ip_usr: HeaderValue::from_str(&cfg.ip_usr).map_err(|_| UpstreamError::Header {
                name: name.clone(),
                what: "ip_usr".into(),
            })?,
            names,
            static_headers,
            forwarded,
            refresh_before: cfg.refresh_before,
            checksum: cfg.gstin_checksum,
            timeout: cfg.timeout,
            token_lifetime: cfg
                .token_lifetime
                .unwrap_or(crate::config::DEFAULT_TOKEN_LIFETIME),
            max_logins: cfg.max_logins,
            login_window: cfg.login_window,
            max_concurrent_logins: cfg.max_concurrent_logins,
            logins_per_second: cfg.logins_per_second,
            idle_ttl: cfg.session_idle_ttl,
            max_response_bytes: cfg.max_response_bytes,
            http,
            metrics,
        })
    }

    /// The length of the longest route prefix of this upstream that `path` starts with.
    pub fn route_match(&self, path: &CallerPath) -> Option<usize> {
        self.routes
            .iter()
            .filter(|r| path.path().starts_with(r.as_str()))
            .map(String::len)
            .max()
    }

    /// Whether a path is this upstream's login path in any spelling the upstream would take
    /// (case, version, trailing slash): such calls are answered by gstgate itself, so no
    /// caller ever reaches the upstream's auth endpoint with gstgate's client credentials.
    pub fn is_auth_path(&self, path: &CallerPath) -> bool {
        path.matches_loosely(self.auth_path.path())
    }

    /// The header context for a GSTIN/user.
    pub fn header_context<'a>(
        &'a self,
        gstin: &'a HeaderValue,
        user_name: &'a HeaderValue,
        state_cd: &'a HeaderValue,
    ) -> HeaderContext<'a> {
        HeaderContext {
            names: &self.names,
            client_id: &self.client_id,
            client_secret: &self.client_secret,
            gstin,
            user_name,
            state_cd,
            ip_usr: &self.ip_usr,
        }
    }

    /// `base_url` + the caller's validated path + its query, concatenated and never resolved:
    /// the path was checked by [`CallerPath`], so the upstream gets exactly the path gstgate
    /// routed on, under the base URL's own path. (A URL parser would resolve dot segments,
    /// which is how `..` used to climb out of the base path.)
    fn uri(base: &str, path: &CallerPath) -> Result<Uri, GatewayError> {
        let query = path.query();
        let mut text = String::with_capacity(
            base.len() + path.path().len() + query.map_or(0, |q| q.len() + 1),
        );
        text.push_str(base);
        text.push_str(path.path());
        if let Some(q) = query {
            text.push('?');
            text.push_str(q);
        }
        // The base is a parsed http(s) URL and the path and query passed hyper's parser.
        Uri::try_from(text)
            .map_err(|_| GatewayError::Internal("the upstream URL is not a valid URI".into()))
    }

    /// Sends one request and reads the whole reply, within the timeout and size cap, to
    /// the target routing picks (see [`Upstream::dispatch`]).
    pub async fn send(
        &self,
        method: Method,
        path: &CallerPath,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GatewayError> {
        let routed = self.dispatch(method, path, headers, body).await;
        if let Ok((status, _, body)) = &routed.result {
            let verdict = self.profile.read_reply(*status, body).verdict;
            routed.pending.judge(*status, &verdict);
        }
        routed.result
    }

    /// Names, in the API's portal header, the portal that generated the document a call is
    /// about (the profile reads which from the path or the caller's plain `body`), when
    /// gstgate remembers it and the caller named no portal itself.
    pub fn name_holder(
        &self,
        headers: &mut HeaderMap,
        method: &Method,
        path: &CallerPath,
        body: &[u8],
    ) {
        if !self.targets.has_portals() || self.targets.carries_portal(headers) {
            return;
        }
        let document = self.profile.document_named(method, path, body);
        if let Some((name, value)) = self.targets.portal_for(document.as_deref()) {
            headers.insert(name, value);
        }
    }

    /// Sends one request to the first target whose circuit lets it through (the portal the
    /// request's portal header names first), and says which target had it. A target that
    /// could not be reached (nothing was sent) hands the request to the next one at once; a
    /// timeout or 5xx after sending is never sent again here, it only counts against the
    /// target's circuit.
    pub async fn dispatch(
        &self,
        method: Method,
        path: &CallerPath,
        headers: HeaderMap,
        body: Bytes,
    ) -> Routed<'_> {
        let order = self
            .targets
            .named_in(&headers)
            .map_or(Order::Configured, Order::First);
        self.route(order, method, path, headers, body).await
    }

    /// Sends a read about a document that the target labelled `portal` may hold, with the
    /// portal header naming it; to the targets other than `failed` first (the one that had a
    /// generate whose outcome is unknown, and may be failing), `failed` last.
    pub async fn dispatch_elsewhere(
        &self,
        portal: &str,
        failed: Option<&str>,
        method: Method,
        path: &CallerPath,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Routed<'_> {
        if let Some((name, value)) = self.targets.portal_of(portal) {
            headers.insert(name, value);
        }
        let order = failed
            .and_then(|failed| self.targets.position(failed))
            .map_or(Order::Configured, Order::Last);
        self.route(order, method, path, headers, body).await
    }

    /// The labels of the targets that have a portal name (NIC's IRPs), in configured order
    /// with `first` moved first: the portals a lookup asks about in turn. Empty for an
    /// upstream with one unnamed target.
    pub fn portals(&self, first: Option<&str>) -> Vec<Arc<str>> {
        self.targets.portals(first)
    }

    /// Sends a generate again after its first attempt failed on the target `failed` and a
    /// lookup said no IRP has the document: the other targets first, so that a hanging IRP
    /// whose circuit is not open yet does not fail the retry too.
    pub async fn dispatch_avoiding(
        &self,
        failed: &str,
        method: Method,
        path: &CallerPath,
        headers: HeaderMap,
        body: Bytes,
    ) -> Routed<'_> {
        let order = self
            .targets
            .position(failed)
            .map_or(Order::Configured, Order::Last);
        self.route(order, method, path, headers, body).await
    }

    /// Tries the targets in `order` until one was reached: first those whose circuit admits
    /// the call, then, if none of them could be reached, the others anyway (a connect
    /// failure costs nothing, and an open circuit may hide a target that is back).
    async fn route(
        &self,
        order: Order,
        method: Method,
        path: &CallerPath,
        headers: HeaderMap,
        body: Bytes,
    ) -> Routed<'_> {
        let mut ordered: Vec<(&Target, bool)> = self
            .targets
            .ordered(order)
            .into_iter()
            .map(|t| (t, false))
            .collect();
        let mut untried = ordered.len();
        // The last target that may be tried takes the headers themselves: with one target
        // (the usual upstream) no request copies its header map.
        let mut headers = Some(headers);
        let mut last = None;
        for forced in [false, true] {
            for (target, tried) in &mut ordered {
                let turn = match (*tried, forced) {
                    (true, _) => continue,
                    (false, false) => match target.admit() {
                        Some(turn) => turn,
                        None => continue,
                    },
                    (false, true) => target.force(),
                };
                *tried = true;
                untried -= 1;
                let sent_headers = if untried == 0 {
                    headers.take().unwrap_or_default()
                } else {
                    headers.clone().unwrap_or_default()
                };
                let result = self
                    .attempt(
                        &target.base,
                        method.clone(),
                        path,
                        sent_headers,
                        body.clone(),
                    )
                    .await;
                let target_label = Some(target.label.clone());
                let Err(err) = &result else {
                    return Routed {
                        target: target_label,
                        result,
                        pending: Pending(Some(turn)),
                    };
                };
                let health = error_health(err);
                let unreached = matches!(health, Health::Unreached);
                turn.judge(health);
                let routed = Routed {
                    target: target_label,
                    result,
                    pending: Pending::default(),
                };
                if !unreached {
                    return routed;
                }
                last = Some(routed);
            }
        }
        last.unwrap_or_else(|| Routed {
            target: None,
            result: Err(GatewayError::Internal("no upstream target".into())),
            pending: Pending::default(),
        })
    }

    /// One attempt on one target, within the timeout, timed in the upstream's histogram.
    async fn attempt(
        &self,
        base: &str,
        method: Method,
        path: &CallerPath,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GatewayError> {
        let uri = Self::uri(base, path)?;
        let started = Instant::now();
        let result =
            match tokio::time::timeout(self.timeout, self.exchange(method, uri, headers, body))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(GatewayError::UpstreamTimeout(self.timeout.as_millis())),
            };
        self.metrics
            .upstream_duration
            .get_or_create(&self.label)
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Remembers which target generated the document a successful reply's plain body
    /// reports (the profile reads it), so that reads of it go there.
    pub fn note_generated(&self, method: &Method, path: &CallerPath, plain: &[u8], target: &str) {
        // Without IRPs to choose between there is no holder to remember, and reading the
        // reply's IRN would cost every generate a JSON pass.
        if !self.targets.has_portals() {
            return;
        }
        if let Some(document) = self.profile.generated_document(method, path, plain) {
            self.targets.remember(&document, target);
        }
    }

    async fn exchange(
        &self,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GatewayError> {
        let mut req = http::Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = headers;
        let res = self.http.request(req).await.map_err(|e| {
            if e.is_connect() {
                GatewayError::UpstreamUnreachable(tls::connect_cause(e))
            } else {
                GatewayError::UpstreamConnectionFailed(Cause::new(e))
            }
        })?;
        let (parts, body) = res.into_parts();
        if let Some(len) = hyper::body::Body::size_hint(&body).exact() {
            if len > self.max_response_bytes as u64 {
                return Err(GatewayError::UpstreamBadResponse(format!(
                    "response of {len} bytes exceeds the limit of {}",
                    self.max_response_bytes
                )));
            }
        }
        match Limited::new(body, self.max_response_bytes).collect().await {
            Ok(collected) => Ok((parts.status, parts.headers, collected.to_bytes())),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                Err(GatewayError::UpstreamBadResponse(format!(
                    "response exceeds the limit of {} bytes",
                    self.max_response_bytes
                )))
            }
            Err(e) => Err(GatewayError::UpstreamConnectionFailed(Cause::from(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::sync::mpsc;

    /// A loopback HTTP server that answers every request `200 {}` and sends each request's
    /// head (lower-cased) down the channel.
    async fn recorder() -> (String, mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n")
                        && conn.read(&mut byte).await.unwrap_or(0) == 1
                    {
                        head.push(byte[0]);
                    }
                    let _ = tx.send(String::from_utf8_lossy(&head).to_ascii_lowercase());
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                        )
                        .await;
                });
            }
        });
        (url, rx)
    }

    /// An e-invoice upstream whose targets are `NIC1` at `irp1` and `NIC2` at `irp2`.
    fn two_irps(irp1: &str, irp2: &str) -> (Upstream, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("upstream.pem");
        let pem = KeyPair::generate().unwrap().public_key().to_pem().unwrap();
        std::fs::write(&key, pem).unwrap();
        let text = format!(
            r#"
[server]
[[upstream]]
name = "einvoice"
api = "einvoice"
routes = ["/eicore/"]
auth_path = "/eivital/v1.04/auth"
public_key = "{}"
client_id = "a"
client_secret = "b"
[[upstream.targets]]
base_url = "{irp1}"
irp = "NIC1"
[[upstream.targets]]
base_url = "{irp2}"
irp = "NIC2"
"#,
            key.display()
        );
        let config = crate::config::Config::parse(&text, std::path::Path::new("c.toml")).unwrap();
        let (metrics, _) = Metrics::new();
        (
            Upstream::from_config(&config.upstreams[0], metrics).unwrap(),
            dir,
        )
    }

    fn lookup() -> CallerPath {
        CallerPath::parse(
            "/eicore/v1.03/Invoice/irnbydocdetails",
            Some("doctype=INV&docnum=1&docdate=01/04/2026"),
        )
        .unwrap()
    }

    #[test]
    fn a_5xx_without_an_api_code_a_transient_code_or_a_timeout_fails_a_target_a_business_answer_does_not(
    ) {
        let reply = |status: u16, body: &'static str| {
            Ok((
                StatusCode::from_u16(status).unwrap(),
                HeaderMap::new(),
                Bytes::from_static(body.as_bytes()),
            ))
        };
        let of = |result| health(&einvoice::Einvoice, &result);
        assert!(matches!(
            of(reply(502, "<html>Bad gateway</html>")),
            Health::Failed
        ));
        let down = r#"{"Status":0,"ErrorDetails":[{"ErrorCode":"5002","ErrorMessage":"application error"}]}"#;
        assert!(matches!(of(reply(500, down)), Health::Failed));
        let duplicate =
            r#"{"Status":0,"ErrorDetails":[{"ErrorCode":"2150","ErrorMessage":"Duplicate IRN"}]}"#;
        assert!(matches!(of(reply(500, duplicate)), Health::Answered));
        // An IRP that is down answers 5002 "application error" or GSPGSTDOWN with a 200.
        assert!(matches!(of(reply(200, down)), Health::Failed));
        let gsp_down = r#"{"Status":0,"ErrorDetails":[{"ErrorCode":"GSPGSTDOWN","ErrorMessage":"GST system is down"}]}"#;
        assert!(matches!(of(reply(200, gsp_down)), Health::Failed));
        // A 5xx with a JSON body but no API error code (a proxy's) is the upstream's trouble.
        assert!(matches!(
            of(reply(502, r#"{"message":"bad gateway"}"#)),
            Health::Failed
        ));
        assert!(matches!(of(reply(503, r#"{"Status":0}"#)), Health::Failed));
        let business =
            r#"{"Status":0,"ErrorDetails":[{"ErrorCode":"2148","ErrorMessage":"not found"}]}"#;
        assert!(matches!(of(reply(200, business)), Health::Answered));
        assert!(matches!(
            of(reply(200, r#"{"Status":1}"#)),
            Health::Answered
        ));
        assert!(matches!(
            of(Err(GatewayError::UpstreamTimeout(1000))),
            Health::Failed
        ));
        assert!(matches!(
            of(Err(GatewayError::Internal("x".into()))),
            Health::Unknown
        ));
    }

    #[tokio::test]
    async fn the_holder_of_a_generated_irn_is_named_unless_the_caller_named_a_portal() {
        let (upstream, _dir) = two_irps("http://127.0.0.1:1", "http://127.0.0.1:2");
        let irn = "b".repeat(64);
        let generate = CallerPath::parse("/eicore/v1.03/Invoice", None).unwrap();
        let reply = format!(r#"{{"Status":1,"Data":{{"Irn":"{irn}"}}}}"#);
        upstream.note_generated(&Method::POST, &generate, reply.as_bytes(), "NIC2");
        let read = format!("/eicore/v1.03/Invoice/irn/{}", irn.to_ascii_uppercase());
        let read = CallerPath::parse(&read, None).unwrap();
        let mut headers = HeaderMap::new();
        upstream.name_holder(&mut headers, &Method::GET, &read, b"");
        assert_eq!(
            headers.get("irp").map(HeaderValue::as_bytes),
            Some(&b"NIC2"[..])
        );
        let mut headers = HeaderMap::new();
        headers.insert("irp", HeaderValue::from_static("NIC9"));
        upstream.name_holder(&mut headers, &Method::GET, &read, b"");
        assert_eq!(
            headers.get("irp").map(HeaderValue::as_bytes),
            Some(&b"NIC9"[..])
        );
    }

    #[tokio::test]
    async fn a_target_refusing_connections_hands_the_request_to_the_next_at_once() {
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let (irp2, mut seen) = recorder().await;
        let (upstream, _dir) = two_irps(&refused, &irp2);
        let routed = upstream
            .dispatch(Method::GET, &lookup(), HeaderMap::new(), Bytes::new())
            .await;
        assert_eq!(routed.target.as_deref(), Some("NIC2"));
        assert_eq!(routed.result.map(|r| r.0).ok(), Some(StatusCode::OK));
        assert!(!seen.recv().await.unwrap().contains("\r\nirp:"));
    }

    #[tokio::test]
    async fn an_open_target_is_still_tried_when_no_target_its_circuit_admits_could_be_reached() {
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let (irp1, mut seen) = recorder().await;
        let (upstream, _dir) = two_irps(&irp1, &refused);
        let nic1 = upstream.targets.ordered(Order::Configured)[0];
        while nic1.state() == crate::breaker::State::Closed {
            nic1.admit().expect("closed").judge(Health::Failed);
        }
        let routed = upstream
            .dispatch(Method::GET, &lookup(), HeaderMap::new(), Bytes::new())
            .await;
        assert_eq!(routed.target.as_deref(), Some("NIC1"));
        assert_eq!(routed.result.map(|r| r.0).ok(), Some(StatusCode::OK));
        assert!(seen.recv().await.is_some());
    }

    #[tokio::test]
    async fn a_lookup_after_a_failure_on_one_irp_goes_to_the_other_naming_the_first() {
        let (irp1, mut seen1) = recorder().await;
        let (irp2, mut seen2) = recorder().await;
        let (upstream, _dir) = two_irps(&irp1, &irp2);
        let routed = upstream
            .dispatch_elsewhere(
                "NIC1",
                Some("NIC1"),
                Method::GET,
                &lookup(),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        assert_eq!(routed.target.as_deref(), Some("NIC2"));
        assert!(seen2.recv().await.unwrap().contains("\r\nirp: nic1\r\n"));
        assert!(seen1.try_recv().is_err(), "NIC1 was not asked");
        // Any other call goes to the primary, without an `irp` header.
        let routed = upstream
            .dispatch(Method::GET, &lookup(), HeaderMap::new(), Bytes::new())
            .await;
        assert_eq!(routed.target.as_deref(), Some("NIC1"));
        assert!(!seen1.recv().await.unwrap().contains("\r\nirp:"));
        // A lookup asking about NIC2 while NIC1 is the one that failed: NIC2, naming NIC2.
        let routed = upstream
            .dispatch_elsewhere(
                "NIC2",
                Some("NIC1"),
                Method::GET,
                &lookup(),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        assert_eq!(routed.target.as_deref(), Some("NIC2"));
        assert!(seen2.recv().await.unwrap().contains("\r\nirp: nic2\r\n"));
        assert!(seen1.try_recv().is_err(), "NIC1 was not asked");
        assert_eq!(
            upstream.portals(Some("NIC2")),
            [Arc::from("NIC2"), "NIC1".into()]
        );
        assert_eq!(upstream.portals(None), [Arc::from("NIC1"), "NIC2".into()]);
    }

    #[test]
    fn no_header_a_profile_injects_can_be_forwarded_from_a_caller() {
        let profiles: [Box<dyn Profile>; 3] = [
            Box::new(einvoice::Einvoice),
            Box::new(ewaybill::Ewaybill),
            Box::new(gstn::Gstn),
        ];
        for profile in profiles {
            for name in profile.default_header_names() {
                assert!(
                    crate::config::RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()),
                    "`{name}` is injected but not reserved"
                );
                assert!(!profile.caller_headers().contains(&name));
            }
        }
    }
}
