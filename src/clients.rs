//! Caller authentication: API keys (stored as SHA-256 digests, a caller found by its key's
//! digest), each client's GSTIN allow-list, and its optional request rate limit.
//!
//! A key is found with one hash-map lookup of its digest, whatever the number of clients: a
//! scan comparing each client's digests in constant time cost ≈ 40 ns a client on every
//! request. The lookup's timing can only depend on the digest of the caller's own guess,
//! which tells nothing about any stored key (SHA-256 has no usable preimage), so it needs no
//! constant-time comparison; a drop-in secret is still compared in constant time.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{ClientConfig, Rate};
use crate::gstin::Gstin;
use crate::problem::GatewayError;

/// An ASP backend allowed to call gstgate.
#[derive(Debug)]
pub struct Client {
    /// Name for logs.
    pub name: Arc<str>,
    /// The digests of its keys: more than one while a key is being rotated.
    digests: Vec<[u8; 32]>,
    gstins: Allowed,
    /// The digests of the client id and secret a drop-in caller identifies with.
    dropin: Option<([u8; 32], [u8; 32])>,
    /// The most drop-in sessions it may hold at once.
    pub max_dropin_sessions: usize,
    /// Its configured `rate` and `burst`, for the whole gateway.
    limit: Option<(Rate, u32)>,
    /// This replica's share of `limit`, enforced.
    limiter: Option<Limiter>,
}

/// A client's rate limit on this replica: governor's GCRA bucket, which needs no timer task
/// and takes one atomic compare-and-swap per request.
struct Limiter {
    bucket: DefaultDirectRateLimiter,
    clock: DefaultClock,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Limiter")
    }
}

impl Limiter {
    /// One replica's share of `rate` and `burst` when `replicas` share the load: the rate
    /// divided by them, the burst too (rounded up, at least 1). A replica cannot see the
    /// others' requests, so each enforces its share of a load the balancer spreads evenly.
    fn new((rate, burst): (Rate, u32), replicas: u32) -> Self {
        let replicas = replicas.max(1);
        let period = (rate.per * replicas / rate.count).max(Duration::from_nanos(1));
        let burst = NonZeroU32::new(burst.div_ceil(replicas).max(1)).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::with_period(period)
            .unwrap_or_else(|| Quota::per_second(NonZeroU32::MIN))
            .allow_burst(burst);
        Self {
            bucket: DefaultDirectRateLimiter::direct(quota),
            clock: DefaultClock::default(),
        }
    }

    /// Takes one request from the bucket, or says how long until one is allowed.
    fn check(&self) -> Result<(), Duration> {
        self.bucket
            .check()
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }
}

#[derive(Debug)]
enum Allowed {
    All,
    Some(HashSet<Gstin>),
}

impl Client {
    /// Whether this client may act for the GSTIN.
    pub fn allows(&self, gstin: &Gstin) -> bool {
        match &self.gstins {
            Allowed::All => true,
            Allowed::Some(set) => set.contains(gstin),
        }
    }

    /// Counts a request against the client's rate, refusing it when over: called as soon as
    /// the caller is identified, before any session or upstream work.
    pub fn admit_rate(&self) -> Result<(), GatewayError> {
        let Some(limiter) = &self.limiter else {
            return Ok(());
        };
        limiter
            .check()
            .map_err(|wait| GatewayError::ClientRateLimited {
                client: self.name.to_string(),
                retry_after_secs: wait.as_secs_f64().ceil() as u64,
            })
    }
}

/// All configured clients.
#[derive(Debug)]
pub struct Clients {
    clients: Vec<Arc<Client>>,
    /// Each API key digest's client, by its index in `clients` (validation keeps digests
    /// unique across clients).
    by_key: HashMap<[u8; 32], usize>,
    /// Each drop-in `client_id` digest's client (validation keeps client ids unique).
    by_dropin_id: HashMap<[u8; 32], usize>,
}

/// Hex → bytes for a validated 64-hex-digit digest.
fn digest_from_hex(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Clients {
    /// Builds the client table from validated configuration.
    pub fn from_config(configs: &[ClientConfig]) -> Result<Self, String> {
        let clients = configs
            .iter()
            .map(|c| {
                let digests = c
                    .api_key_sha256
                    .iter()
                    .map(|d| {
                        digest_from_hex(d).ok_or_else(|| {
                            format!("client `{}`: api_key_sha256 is not hex", c.name)
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let gstins = if c.gstins.iter().any(|g| g == "*") {
                    Allowed::All
                } else {
                    Allowed::Some(
                        c.gstins
                            .iter()
                            .map(|g| {
                                Gstin::parse(g).map_err(|e| format!("client `{}`: {e}", c.name))
                            })
                            .collect::<Result<_, _>>()?,
                    )
                };
                let dropin = match (&c.client_id, &c.client_secret_sha256) {
                    (Some(id), Some(secret)) => Some((
                        Sha256::digest(id.as_bytes()).into(),
                        digest_from_hex(secret).ok_or_else(|| {
                            format!("client `{}`: client_secret_sha256 is not hex", c.name)
                        })?,
                    )),
                    _ => None,
                };
                let limit = match &c.rate {
                    Some(rate) => {
                        let rate = Rate::parse(rate)
                            .map_err(|e| format!("client `{}`: rate {e}", c.name))?;
                        Some((rate, c.burst.unwrap_or(rate.count)))
                    }
                    None => None,
                };
                Ok(Arc::new(Client {
                    name: c.name.as_str().into(),
                    digests,
                    gstins,
                    dropin,
                    max_dropin_sessions: c.max_dropin_sessions,
                    limiter: limit.map(|l| Limiter::new(l, 1)),
                    limit,
                }))
            })
            .collect::<Result<Vec<Arc<Client>>, String>>()?;
        let mut by_key = HashMap::new();
        let mut by_dropin_id = HashMap::new();
        for (i, c) in clients.iter().enumerate() {
            for d in &c.digests {
                if by_key.insert(*d, i).is_some() {
                    return Err(format!("client `{}`: a key is listed twice", c.name));
                }
            }
            if let Some((id, _)) = &c.dropin {
                if by_dropin_id.insert(*id, i).is_some() {
                    return Err(format!("client `{}`: its client_id is another's", c.name));
                }
            }
        }
        Ok(Self {
            clients,
            by_key,
            by_dropin_id,
        })
    }

    /// The same clients with each rate limit cut to one replica's share of `replicas`. Called
    /// on a table fresh from [`Clients::from_config`], whose clients nobody else holds yet;
    /// the limiters are new, so a reload starts every client with a full burst.
    pub fn shared_by(mut self, replicas: u32) -> Self {
        for c in &mut self.clients {
            if let Some(c) = Arc::get_mut(c) {
                c.limiter = c.limit.map(|l| Limiter::new(l, replicas));
            }
        }
        self
    }

    /// The client of this name, if one is configured.
    #[cfg(test)]
    pub fn named(&self, name: &str) -> Option<&Arc<Client>> {
        self.clients.iter().find(|c| &*c.name == name)
    }

    /// Finds the client whose key the request carries (`x-api-key` or `Authorization: Bearer`),
    /// by the key's digest (see the module doc for why a lookup is safe).
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Client>, GatewayError> {
        let key = api_key(headers).ok_or(GatewayError::Unauthenticated)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_key
            .get(&digest)
            .and_then(|&i| self.clients.get(i))
            .cloned()
            .ok_or(GatewayError::Unauthenticated)
    }
}

/// The client-id header names NIC and GSTN clients send, in their three spellings.
const CLIENT_ID_HEADERS: [&str; 3] = ["client_id", "client-id", "clientid"];
/// The client-secret header names.
const CLIENT_SECRET_HEADERS: [&str; 3] = ["client_secret", "client-secret", "clientsecret"];

/// Why a drop-in caller's client headers identify no client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRefusal {
    /// No client id header.
    IdMissing,
    /// No client secret header.
    SecretMissing,
    /// No client has this id and secret.
    Unknown,
}

impl Clients {
    /// Whether a request identifies itself the drop-in way: a client id header and no API key.
    pub fn is_dropin_caller(headers: &HeaderMap) -> bool {
        api_key(headers).is_none() && first_value(headers, &CLIENT_ID_HEADERS).is_some()
    }

    /// Finds the client whose drop-in id and secret the request carries: the client by its
    /// id's digest (an id is not a secret), then its secret's digest compared in constant time.
    pub fn identify(&self, headers: &HeaderMap) -> Result<Arc<Client>, ClientRefusal> {
        let id = first_value(headers, &CLIENT_ID_HEADERS).ok_or(ClientRefusal::IdMissing)?;
        let secret =
            first_value(headers, &CLIENT_SECRET_HEADERS).ok_or(ClientRefusal::SecretMissing)?;
        let id_digest: [u8; 32] = Sha256::digest(id.as_bytes()).into();
        let digest: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let client = self
            .by_dropin_id
            .get(&id_digest)
            .and_then(|&i| self.clients.get(i))
            .ok_or(ClientRefusal::Unknown)?;
        match &client.dropin {
            Some((_, their_secret)) if bool::from(their_secret.ct_eq(&digest)) => {
                Ok(client.clone())
            }
            _ => Err(ClientRefusal::Unknown),
        }
    }
}

/// The first non-empty value of any of `names`.
fn first_value<'h>(headers: &'h HeaderMap, names: &[&str]) -> Option<&'h str> {
    names
        .iter()
        .filter_map(|n| headers.get(*n)?.to_str().ok())
        .map(str::trim)
        .find(|v| !v.is_empty())
}

/// The caller's API key from `x-api-key`, else from `Authorization: Bearer`.
fn api_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(&crate::request::API_KEY) {
        return v.to_str().ok().map(str::trim).filter(|k| !k.is_empty());
    }
    let auth = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = auth.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| key.trim())
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::hex_sha256;

    fn clients() -> Clients {
        Clients::from_config(&[
            ClientConfig {
                name: "a".into(),
                api_key_sha256: vec![hex_sha256(b"key-a"), hex_sha256(b"key-a-next")],
                gstins: vec!["27AAPFU0939F1ZV".into()],
                client_id: Some("asp-a".into()),
                client_secret_sha256: Some(hex_sha256(b"secret-a")),
                max_dropin_sessions: 10,
                rate: None,
                burst: None,
            },
            ClientConfig {
                name: "b".into(),
                api_key_sha256: vec![hex_sha256(b"key-b")],
                gstins: vec!["*".into()],
                client_id: None,
                client_secret_sha256: None,
                max_dropin_sessions: 10,
                rate: None,
                burst: None,
            },
        ])
        .unwrap()
    }

    #[test]
    fn keys_from_either_header_authenticate_and_allow_lists_apply() {
        let c = clients();
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "key-a".parse().unwrap());
        let a = c.authenticate(&h).unwrap();
        assert_eq!(&*a.name, "a");
        assert!(a.allows(&Gstin::parse("27AAPFU0939F1ZV").unwrap()));
        assert!(!a.allows(&Gstin::parse("27AAACR5055K1Z7").unwrap()));

        // During a rotation both of a client's keys work.
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "key-a-next".parse().unwrap());
        assert_eq!(&*c.authenticate(&h).unwrap().name, "a");

        let mut h = HeaderMap::new();
        h.insert("authorization", "Bearer key-b".parse().unwrap());
        let b = c.authenticate(&h).unwrap();
        assert!(b.allows(&Gstin::parse("27AAACR5055K1Z7").unwrap()));
    }

    #[test]
    fn drop_in_callers_identify_by_client_id_and_secret_in_any_spelling() {
        let c = clients();
        let with = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        for (id, secret) in [
            ("client_id", "client_secret"),
            ("client-id", "client-secret"),
            ("clientid", "client-secret"),
        ] {
            let h = with(&[(id, "asp-a"), (secret, "secret-a")]);
            assert!(Clients::is_dropin_caller(&h));
            assert_eq!(&*c.identify(&h).unwrap().name, "a");
        }
        let wrong = with(&[("client_id", "asp-a"), ("client_secret", "secret-b")]);
        assert_eq!(c.identify(&wrong).unwrap_err(), ClientRefusal::Unknown);
        let unknown = with(&[("client_id", "asp-b"), ("client_secret", "secret-a")]);
        assert_eq!(c.identify(&unknown).unwrap_err(), ClientRefusal::Unknown);
        let no_secret = with(&[("client_id", "asp-a")]);
        assert_eq!(
            c.identify(&no_secret).unwrap_err(),
            ClientRefusal::SecretMissing
        );
        // An API key wins: such a caller is a gstgate caller, not a drop-in one.
        let both = with(&[("x-api-key", "key-a"), ("client_id", "asp-a")]);
        assert!(!Clients::is_dropin_caller(&both));
    }

    fn limited(rate: &str, burst: Option<u32>) -> Clients {
        Clients::from_config(&[ClientConfig {
            name: "batch".into(),
            api_key_sha256: vec![hex_sha256(b"key-batch")],
            gstins: vec!["*".into()],
            client_id: None,
            client_secret_sha256: None,
            max_dropin_sessions: 10,
            rate: Some(rate.into()),
            burst,
        }])
        .unwrap()
    }

    fn admitted(c: &Clients) -> usize {
        let client = c.named("batch").unwrap();
        (0..10).take_while(|_| client.admit_rate().is_ok()).count()
    }

    #[test]
    fn each_replica_enforces_its_share_of_the_rate_and_a_new_table_starts_afresh() {
        // Alone, the whole burst; one of two replicas, half of it.
        assert_eq!(admitted(&limited("4/h", None)), 4);
        assert_eq!(admitted(&limited("4/h", None).shared_by(2)), 2);
        // An odd burst rounds up rather than to nothing.
        assert_eq!(admitted(&limited("1/h", Some(3)).shared_by(2)), 2);
        assert_eq!(admitted(&limited("1/h", Some(1)).shared_by(4)), 1);

        let c = limited("1/h", Some(1));
        assert_eq!(admitted(&c), 1);
        let err = c.named("batch").unwrap().admit_rate().unwrap_err();
        let GatewayError::ClientRateLimited {
            retry_after_secs, ..
        } = err
        else {
            panic!("{err:?}")
        };
        assert!(
            (3500..=3600).contains(&retry_after_secs),
            "{retry_after_secs}"
        );
        // A reload builds the table again: the limit holds, with a fresh bucket.
        assert_eq!(admitted(&limited("1/h", Some(1)).shared_by(1)), 1);
        // A client without a rate is never refused.
        assert_eq!(admitted_unlimited(), 10);
    }

    fn admitted_unlimited() -> usize {
        let c = clients();
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "key-b".parse().unwrap());
        let b = c.authenticate(&h).unwrap();
        (0..10).take_while(|_| b.admit_rate().is_ok()).count()
    }

    #[test]
    fn missing_or_unknown_keys_are_refused() {
        let c = clients();
        assert_eq!(
            c.authenticate(&HeaderMap::new()).unwrap_err(),
            GatewayError::Unauthenticated
        );
        let mut h = HeaderMap::new();
        h.insert("x-api-key", "nope".parse().unwrap());
        assert_eq!(
            c.authenticate(&h).unwrap_err(),
            GatewayError::Unauthenticated
        );
        let mut h = HeaderMap::new();
        h.insert("authorization", "Basic a2V5LWE=".parse().unwrap());
        assert_eq!(
            c.authenticate(&h).unwrap_err(),
            GatewayError::Unauthenticated
        );
    }

    #[test]
    fn among_thousands_of_clients_each_key_and_drop_in_login_finds_its_own() {
        let configs: Vec<ClientConfig> = (0..3000)
            .map(|i| ClientConfig {
                name: format!("asp-{i}"),
                api_key_sha256: vec![hex_sha256(format!("key-{i}").as_bytes())],
                gstins: vec!["*".into()],
                client_id: (i % 2 == 0).then(|| format!("id-{i}")),
                client_secret_sha256: (i % 2 == 0)
                    .then(|| hex_sha256(format!("secret-{i}").as_bytes())),
                max_dropin_sessions: 1,
                rate: None,
                burst: None,
            })
            .collect();
        let c = Clients::from_config(&configs).unwrap();
        let headers = |pairs: &[(&'static str, String)]| {
            let mut h = HeaderMap::new();
            for (name, value) in pairs {
                h.insert(*name, value.parse().unwrap());
            }
            h
        };
        for i in [0, 1, 1499, 2998, 2999] {
            let found = c.authenticate(&headers(&[("x-api-key", format!("key-{i}"))]));
            assert_eq!(&*found.unwrap().name, format!("asp-{i}"));
        }
        let found = c.identify(&headers(&[
            ("client_id", "id-2998".into()),
            ("client_secret", "secret-2998".into()),
        ]));
        assert_eq!(&*found.unwrap().name, "asp-2998");
        // Another client's secret, an odd client's (which has no drop-in), an unknown id.
        for (id, secret) in [
            ("id-2998", "secret-0"),
            ("id-1", "secret-1"),
            ("id-9999", "secret-0"),
        ] {
            let refused = c.identify(&headers(&[
                ("client_id", id.into()),
                ("client_secret", secret.into()),
            ]));
            assert_eq!(refused.unwrap_err(), ClientRefusal::Unknown, "{id}");
        }
        let unknown = c.authenticate(&headers(&[("x-api-key", "key-3000".into())]));
        assert_eq!(unknown.unwrap_err(), GatewayError::Unauthenticated);
    }
}
