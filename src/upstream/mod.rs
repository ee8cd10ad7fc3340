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

pub mod base;
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
mod routing;
pub mod sealed;
pub mod targets;
pub mod tls;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use http_body_util::Full;
use prometheus_client::metrics::histogram::Histogram;
use secrecy::ExposeSecret;

use crate::config::{ApiKind, ChecksumPolicy, Duplicate, Encryption, UpstreamConfig};
pub use crate::config::{HEADER_ROLES, ROLE_COUNT};
use crate::crypto::{KeyPair, PublicKey};
use crate::metrics::{Metrics, UpstreamLabel};
use crate::path::CallerPath;
use crate::problem::{Cause, GatewayError};
pub use config_checks::{check_files, check_profiles, config_warnings};
pub use generate::Generate;
pub use headers::{transaction_id, HeaderContext, HeaderNames, GENERIC_CALLER_HEADERS};
pub(crate) use profile::{accepted_login, bodiless};
pub use profile::{
    Class, Expiry, Login, LoginFailure, LoginKind, LoginRequest, Portals, Profile, Reply, Verdict,
};
pub use routing::{Pending, Routed};

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
    /// `gstgate_upstream_request_duration_seconds` of this upstream, looked up once.
    upstream_duration: Histogram,
    /// `gstgate_request_duration_seconds` of the requests routed here, looked up once: a
    /// lookup per request hashed the label and took the family's lock.
    pub request_duration: Histogram,
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
        let http = client::HttpClient::new(tls, cfg.connect_timeout);
        let endpoints = cfg
            .endpoints()
            .into_iter()
            .map(|(url, irp)| {
                let base = base::Base::parse(url).map_err(|e| UpstreamError::Setting {
                    name: name.clone(),
                    what: format!("base_url `{url}`: {e}"),
                })?;
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
        let label = UpstreamLabel {
            upstream: crate::metrics::Name(name.as_str().into()),
        };
        let upstream_duration = metrics.upstream_duration.get_or_create(&label).clone();
        let request_duration = metrics.request_duration.get_or_create(&label).clone();
        Ok(Self {
            upstream_duration,
            request_duration,
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

    /// One attempt on one target, within the timeout, timed in the upstream's histogram.
    async fn attempt(
        &self,
        base: &base::Base,
        method: Method,
        path: &CallerPath,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GatewayError> {
        let uri = base.uri(path)?;
        headers.insert(http::header::HOST, base.host().clone());
        let started = Instant::now();
        let result =
            match tokio::time::timeout(self.timeout, self.exchange(method, uri, headers, body))
                .await
            {
                Ok(result) => result,
                Err(_) => Err(GatewayError::UpstreamTimeout(self.timeout.as_millis())),
            };
        self.upstream_duration
            .observe(started.elapsed().as_secs_f64());
        result
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
        match self.http.exchange(req, self.max_response_bytes).await {
            Ok((parts, body)) => Ok((parts.status, parts.headers, body)),
            Err(client::ExchangeError::Connect(e)) => {
                Err(GatewayError::UpstreamUnreachable(tls::connect_cause(e)))
            }
            Err(client::ExchangeError::Failed(e)) => {
                Err(GatewayError::UpstreamConnectionFailed(Cause::from(e)))
            }
            Err(e @ client::ExchangeError::TooLarge(_)) => {
                Err(GatewayError::UpstreamBadResponse(e.to_string()))
            }
            Err(e @ client::ExchangeError::NoHost) => Err(GatewayError::Internal(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
