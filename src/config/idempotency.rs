//! `[idempotency]`: how long and how many `Idempotency-Key` answers the session store keeps,
//! and the lease that marks a key's first request as in flight. Its own file so that the
//! rest of the schema does not grow with it.

use std::time::Duration;

use serde::Deserialize;

use super::env::env_duration;

/// How long a stored answer is replayed, unless configured.
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(24 * 3600);
/// How many keys the store holds at once, unless configured.
pub const DEFAULT_IDEMPOTENCY_MAX_KEYS: usize = 100_000;
/// The largest answer stored for a key, unless configured: NIC's signed invoices are tens
/// of kilobytes.
pub const DEFAULT_IDEMPOTENCY_MAX_RESPONSE_BYTES: usize = 1024 * 1024;
/// How long a key's claim outlives a replica that stopped renewing it, unless configured.
pub const DEFAULT_IDEMPOTENCY_LEASE: Duration = Duration::from_secs(10);

/// `[idempotency]`: the `Idempotency-Key` answers kept in the session store.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencyConfig {
    /// How long an answer is replayed for its key (and the key refused for another body).
    #[serde(default = "default_window", deserialize_with = "env_duration")]
    pub window: Duration,
    /// The most keys held at once; a new key beyond it is refused with 503.
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
    /// The largest answer body stored; a larger answer is passed on but not kept.
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: usize,
    /// How long a claim stays valid without renewal: after a replica died mid-request, how
    /// long a retry waits before it takes the key over.
    #[serde(default = "default_lease", deserialize_with = "env_duration")]
    pub lease: Duration,
}

impl Default for IdempotencyConfig {
    fn default() -> Self {
        Self {
            window: DEFAULT_IDEMPOTENCY_WINDOW,
            max_keys: DEFAULT_IDEMPOTENCY_MAX_KEYS,
            max_response_bytes: DEFAULT_IDEMPOTENCY_MAX_RESPONSE_BYTES,
            lease: DEFAULT_IDEMPOTENCY_LEASE,
        }
    }
}

impl IdempotencyConfig {
    /// The checks of `[idempotency]`: `(key, message)` of the first that fails.
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        if self.window < Duration::from_secs(1) || self.window > Duration::from_secs(30 * 24 * 3600)
        {
            return Err((
                "idempotency.window".into(),
                "must be between 1s and 30 days".into(),
            ));
        }
        if self.max_keys == 0 {
            return Err(("idempotency.max_keys".into(), "must be at least 1".into()));
        }
        if self.max_response_bytes == 0 {
            return Err((
                "idempotency.max_response_bytes".into(),
                "must be at least 1".into(),
            ));
        }
        if self.lease < Duration::from_secs(1) || self.lease > Duration::from_secs(600) {
            return Err((
                "idempotency.lease".into(),
                "must be between 1s and 10m".into(),
            ));
        }
        Ok(())
    }
}

fn default_window() -> Duration {
    DEFAULT_IDEMPOTENCY_WINDOW
}

fn default_max_keys() -> usize {
    DEFAULT_IDEMPOTENCY_MAX_KEYS
}

fn default_max_response_bytes() -> usize {
    DEFAULT_IDEMPOTENCY_MAX_RESPONSE_BYTES
}

fn default_lease() -> Duration {
    DEFAULT_IDEMPOTENCY_LEASE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_optional_its_keys_known_and_its_bounds_checked() {
        let all: IdempotencyConfig = toml::from_str(
            "window = \"1h\"\nmax_keys = 5\nmax_response_bytes = 10\nlease = \"3s\"",
        )
        .unwrap();
        assert_eq!(all.window, Duration::from_secs(3600));
        assert_eq!((all.max_keys, all.max_response_bytes), (5, 10));
        assert!(all.check().is_ok());
        let defaults: IdempotencyConfig = toml::from_str("").unwrap();
        assert_eq!(defaults.window, DEFAULT_IDEMPOTENCY_WINDOW);
        assert!(defaults.check().is_ok());
        let unknown = toml::from_str::<IdempotencyConfig>("windw = \"1h\"").unwrap_err();
        assert!(unknown.to_string().contains("windw"), "{unknown}");
        for (text, key) in [
            ("window = \"0s\"", "idempotency.window"),
            ("window = \"31days\"", "idempotency.window"),
            ("max_keys = 0", "idempotency.max_keys"),
            ("max_response_bytes = 0", "idempotency.max_response_bytes"),
            ("lease = \"500ms\"", "idempotency.lease"),
        ] {
            let config: IdempotencyConfig = toml::from_str(text).unwrap();
            assert_eq!(config.check().unwrap_err().0, key, "{text}");
        }
    }
}
