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
/// How many keys one client creates within the window, unless configured: a tenant that
/// sends a fresh key per request fills its own quota, not the store.
pub const DEFAULT_IDEMPOTENCY_MAX_KEYS_PER_CLIENT: usize = 10_000;
/// The largest answer stored for a key, unless configured. A generate's answer is the
/// largest NIC sends: an IRN with its signed invoice (the whole invoice, signed) and QR code
/// is a few kilobytes for an invoice of tens of lines, and about 1 KiB more per line, so a
/// few hundred lines fit; e-way bills and cancels are under a kilobyte. A larger answer is
/// not lost: its key is left open, and the retry looks the document up and gets the same
/// document. This bound times `max_keys` is what the store may have to hold.
pub const DEFAULT_IDEMPOTENCY_MAX_RESPONSE_BYTES: usize = 256 * 1024;
/// How long a key's claim outlives a replica that stopped renewing it, unless configured:
/// more than twice the longest upstream `timeout` of the shipped examples (30 s for NIC's
/// APIs, 60 s for GSTN's), since a holder stops sending once less than half its lease is surely its
/// own, and a send it made must end before any other replica may take the key over (a
/// shorter lease is warned of at start-up).
pub const DEFAULT_IDEMPOTENCY_LEASE: Duration = Duration::from_secs(150);

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
    /// The most keys one client creates within the window (shared among `store.replicas`);
    /// a new key beyond it is refused with 503.
    #[serde(default = "default_max_keys_per_client")]
    pub max_keys_per_client: usize,
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
            max_keys_per_client: DEFAULT_IDEMPOTENCY_MAX_KEYS_PER_CLIENT,
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
        if self.max_keys_per_client == 0 {
            return Err((
                "idempotency.max_keys_per_client".into(),
                "must be at least 1".into(),
            ));
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

fn default_max_keys_per_client() -> usize {
    DEFAULT_IDEMPOTENCY_MAX_KEYS_PER_CLIENT
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
            ("max_keys_per_client = 0", "idempotency.max_keys_per_client"),
            ("max_response_bytes = 0", "idempotency.max_response_bytes"),
            ("lease = \"500ms\"", "idempotency.lease"),
        ] {
            let config: IdempotencyConfig = toml::from_str(text).unwrap();
            assert_eq!(config.check().unwrap_err().0, key, "{text}");
        }
    }
}
