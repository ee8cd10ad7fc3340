//! Caller authentication: API keys (stored as SHA-256 digests, compared in constant time) and
//! each client's GSTIN allow-list.

use std::collections::HashSet;
use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ClientConfig;
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
}

/// All configured clients.
#[derive(Debug)]
pub struct Clients {
    clients: Vec<Arc<Client>>,
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
                Ok(Arc::new(Client {
                    name: c.name.as_str().into(),
                    digests,
                    gstins,
                }))
            })
            .collect::<Result<_, String>>()?;
        Ok(Self { clients })
    }

    /// Finds the client whose key the request carries (`x-api-key` or `Authorization: Bearer`).
    ///
    /// Every digest of every client is compared, in constant time, whatever matches: the time
    /// taken says nothing about which key or how much of it was right.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Arc<Client>, GatewayError> {
        let key = api_key(headers).ok_or(GatewayError::Unauthenticated)?;
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        let mut found = None;
        for c in &self.clients {
            for d in &c.digests {
                if bool::from(d.ct_eq(&digest)) {
                    found = Some(c);
                }
            }
        }
        found.cloned().ok_or(GatewayError::Unauthenticated)
    }
}

/// The caller's API key from `x-api-key`, else from `Authorization: Bearer`.
fn api_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get("x-api-key") {
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
            },
            ClientConfig {
                name: "b".into(),
                api_key_sha256: vec![hex_sha256(b"key-b")],
                gstins: vec!["*".into()],
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
}
