//! Session records made outside a gateway, byte for byte as a gateway writes them to a Redis
//! store: what the scale benchmark (`benches/gateway/scale.rs`) seeds 100,000 sessions with,
//! since 100,000 real logins would take minutes. Not part of the supported API.

use std::time::SystemTime;

use http::HeaderValue;
use secrecy::SecretString;

use super::key;
use super::record::{Record, StoredSession};
use super::seal::Sealer;
use super::{record_name, redis, StoreError};
use crate::crypto::AesKey;

/// A valid session for one slot (upstream, GSTIN, API user).
pub struct SeedSession<'a> {
    /// The upstream's name in the configuration.
    pub upstream: &'a str,
    /// The credential's GSTIN, as configured.
    pub gstin: &'a str,
    /// The credential's API user.
    pub user: &'a str,
    /// The upstream's token for the session.
    pub token: &'a str,
    /// The session's encryption key.
    pub sek: AesKey,
    /// When the login that made it was sent.
    pub issued_at: SystemTime,
    /// When the token expires.
    pub expires_at: SystemTime,
}

/// Why a session could not be sealed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The encryption key is not base64 of 32 bytes.
    #[error(transparent)]
    Key(#[from] StoreError),
    /// The token is not a valid header value.
    #[error("the token is not a valid header value")]
    Token,
    /// AES-GCM refused the record (never for a record of this size).
    #[error("sealing failed")]
    Seal,
}

/// Seals session records for a Redis store with `key_prefix`, under `encryption_key`.
pub struct RedisSeeder {
    sealer: Sealer,
    prefix: String,
}

impl RedisSeeder {
    /// A seeder for the store whose `[store] encryption_key` and `key_prefix` are these.
    pub fn new(encryption_key: &str, key_prefix: &str) -> Result<Self, SeedError> {
        let key = SecretString::from(encryption_key.to_owned());
        Ok(Self {
            sealer: key::configured(&key, None)?,
            prefix: key_prefix.to_owned(),
        })
    }

    /// The Redis key and value of `session`'s record: the slot's first session (generation
    /// 1), written once (revision 1), no login counted against the slot's allowance.
    pub fn entry(&self, session: SeedSession<'_>) -> Result<(String, Vec<u8>), SeedError> {
        let name = record_name(session.upstream, session.gstin, session.user);
        let mut token = HeaderValue::from_str(session.token).map_err(|_| SeedError::Token)?;
        token.set_sensitive(true);
        let stored = StoredSession {
            token,
            sek: session.sek,
            expires_at: session.expires_at,
            issued_at: session.issued_at,
            generation: 1,
        };
        let record = Record {
            session: Some(stored.clone()),
            latest: Some(stored),
            next_generation: 2,
            revision: 1,
            ..Record::default()
        };
        let sealed = self
            .sealer
            .seal(name.as_bytes(), &record.encode())
            .map_err(|_| SeedError::Seal)?;
        Ok((redis::session_key(&self.prefix, &name), sealed))
    }
}
