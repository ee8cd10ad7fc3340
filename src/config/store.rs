//! The `[store]` rules: which settings each backend takes, and the encryption keys.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::validate::check_duration;
use super::{Config, StoreBackend};

impl Config {
    /// The `[store]` rules.
    pub(super) fn validate_store(&self) -> Result<(), (String, String)> {
        let store = &self.store;
        self.validate_store_keys()?;
        let key = |k: &str, m: &str| Err((format!("store.{k}"), m.to_owned()));
        if store.backend != StoreBackend::Redis {
            for (set, name) in [
                (store.redis_url.is_some(), "redis_url"),
                (store.redis_ca_file.is_some(), "redis_ca_file"),
            ] {
                if set {
                    return key(name, "is only used with backend = \"redis\"");
                }
            }
            return Ok(());
        }
        let Some(url) = &store.redis_url else {
            return key("redis_url", "is required with backend = \"redis\"");
        };
        let url = url.expose_secret();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            // The URL is not quoted back: it may hold a password.
            return key("redis_url", "must start with redis:// or rediss://");
        }
        if store.redis_ca_file.is_some() && !url.starts_with("rediss://") {
            return key("redis_ca_file", "needs a rediss:// (TLS) redis_url");
        }
        if store.encryption_key.is_none() {
            return key(
                "encryption_key",
                "is required with backend = \"redis\": every replica seals and opens the shared records with it (generate one with `openssl rand -base64 32`)",
            );
        }
        if store.path.is_some() {
            return key("path", "is only used with backend = \"embedded\"");
        }
        if store.key_prefix.is_empty()
            || !store
                .key_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.{}".contains(&b))
        {
            return key(
                "key_prefix",
                "must be letters, digits, `-`, `_`, `.`, `{` or `}`, and not empty",
            );
        }
        check_duration(
            store.lease,
            Duration::from_secs(1),
            Duration::from_secs(600),
        )
        .map_err(|m| ("store.lease".to_owned(), m))?;
        if !(1..=1000).contains(&store.replicas) {
            return key("replicas", "must be from 1 to 1000");
        }
        Ok(())
    }

    /// The keys and the file, whatever the backend.
    fn validate_store_keys(&self) -> Result<(), (String, String)> {
        for (field, key) in [
            ("encryption_key", &self.store.encryption_key),
            (
                "previous_encryption_key",
                &self.store.previous_encryption_key,
            ),
        ] {
            if let Some(key) = key {
                check_store_key(key.expose_secret()).map_err(|m| (format!("store.{field}"), m))?;
            }
        }
        if self.store.previous_encryption_key.is_some() && self.store.encryption_key.is_none() {
            return Err((
                "store.previous_encryption_key".into(),
                "needs store.encryption_key, the key it was rotated to".into(),
            ));
        }
        if self
            .store
            .path
            .as_ref()
            .is_some_and(|p| p.as_os_str().is_empty())
        {
            return Err(("store.path".into(), "must not be empty".into()));
        }
        Ok(())
    }
}

/// Checks a store encryption key: base64 of exactly 32 bytes. The message never repeats it.
fn check_store_key(text: &str) -> Result<(), String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text.trim())
        .map_err(|_| "is not base64; generate one with `openssl rand -base64 32`".to_string())?;
    if bytes.len() != 32 {
        return Err(format!(
            "must be base64 of 32 bytes (got {}); generate one with `openssl rand -base64 32`",
            bytes.len()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn the_store_defaults_to_an_embedded_file_beside_the_config_and_its_keys_are_checked() {
        let config = |store: &str| {
            format!(
                r#"
[server]
{store}
[[upstream]]
name = "einv"
api = "einvoice"
base_url = "http://127.0.0.1:1"
routes = ["/eicore/"]
auth_path = "/eivital/v1.04/auth"
public_key = "k.pem"
client_id = "a"
client_secret = "b"
"#
            )
        };
        let parse = |text: String| Config::parse(&text, Path::new("/etc/gw/c.toml"));
        let c = parse(config("")).unwrap();
        assert_eq!(c.store.backend, StoreBackend::Embedded);
        assert_eq!(
            c.store.path.as_deref(),
            Some(Path::new("/etc/gw/gstgate-sessions.redb"))
        );
        let c = parse(config("[store]\nbackend = \"memory\"")).unwrap();
        assert_eq!(
            (c.store.backend, c.store.path),
            (StoreBackend::Memory, None)
        );
        let c = parse(config("[store]\npath = \"/data/s.redb\"")).unwrap();
        assert_eq!(c.store.path.as_deref(), Some(Path::new("/data/s.redb")));

        let key = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
        assert!(parse(config(&format!("[store]\nencryption_key = \"{key}\""))).is_ok());
        for (store, field) in [
            ("encryption_key = \"c2hvcnQ=\"", "store.encryption_key"),
            ("encryption_key = \"not base64!\"", "store.encryption_key"),
            (
                &format!("encryption_key = \"{key}\"\nprevious_encryption_key = \"eA==\""),
                "store.previous_encryption_key",
            ),
            (
                &format!("previous_encryption_key = \"{key}\""),
                "store.previous_encryption_key",
            ),
            ("path = \"\"", "store.path"),
            ("backend = \"redis\"", "store.redis_url"),
            (
                "backend = \"redis\"\nredis_url = \"http://u:pw-secret@h\"",
                "store.redis_url",
            ),
            (
                "backend = \"redis\"\nredis_url = \"redis://u:pw-secret@h\"",
                "store.encryption_key",
            ),
            (
                &format!("backend = \"redis\"\nredis_url = \"redis://h\"\nencryption_key = \"{key}\"\nredis_ca_file = \"ca.pem\""),
                "store.redis_ca_file",
            ),
            (
                &format!("backend = \"redis\"\nredis_url = \"redis://h\"\nencryption_key = \"{key}\"\nlease = \"100ms\""),
                "store.lease",
            ),
            (
                &format!("backend = \"redis\"\nredis_url = \"redis://h\"\nencryption_key = \"{key}\"\nreplicas = 0"),
                "store.replicas",
            ),
            (
                &format!("backend = \"redis\"\nredis_url = \"redis://h\"\nencryption_key = \"{key}\"\nkey_prefix = \"a b\""),
                "store.key_prefix",
            ),
            ("redis_url = \"redis://h\"", "store.redis_url"),
            ("backend = \"disk\"", "backend"),
        ] {
            let err = parse(config(&format!("[store]\n{store}")))
                .unwrap_err()
                .to_string();
            assert!(err.contains(field), "{store}: {err}");
            assert!(!err.contains(key), "the key is not repeated: {err}");
            assert!(!err.contains("pw-secret"), "the URL is not repeated: {err}");
        }
        let c = parse(config(&format!(
            "[store]\nbackend = \"redis\"\nredis_url = \"rediss://gw:pw@redis:6380\"\nredis_ca_file = \"ca.pem\"\nencryption_key = \"{key}\"\nreplicas = 3"
        )))
        .unwrap();
        assert_eq!(
            (c.store.backend, c.store.replicas),
            (StoreBackend::Redis, 3)
        );
        assert_eq!(
            (c.store.key_prefix.as_str(), c.store.lease),
            ("gstgate", crate::config::DEFAULT_LEASE)
        );
        assert!(c.store.path.is_none());
    }
}
