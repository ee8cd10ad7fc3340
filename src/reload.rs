//! Live configuration reload, on `SIGHUP` or `POST /admin/reload`.
//!
//! The file is read and checked exactly as at start-up (`check-config`'s checks). If it
//! passes, its `[[client]]` and `[[credential]]` entries take effect at once: the sessions of
//! credentials that did not change are not touched, a changed password or session lifetime
//! keeps the session but clears that credential's lockout, removed credentials are dropped
//! and added ones start cold. Secret files (`password_file`, …) are read again, so a rotated
//! password applies at once. If it does not pass, it is refused with the reason and the
//! running configuration stays. Everything else is read at start-up only; a change to the
//! listener addresses, to the set of upstreams or to another setting — a rotated
//! `client_secret_file` included — is reported as needing a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::clients::Clients;
use crate::config::{Config, ConfigError};
use crate::proxy::Proxy;
use crate::session::{Changes, Sessions, SessionsError};

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load or fails a check.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A client entry cannot be used.
    #[error("{0}")]
    Clients(String),
    /// A credential names an upstream this process does not run.
    #[error("credential {gstin}/{username} names upstream `{upstream}`, which is not running: adding an upstream needs a restart")]
    NewUpstream {
        /// The credential's GSTIN.
        gstin: String,
        /// The credential's user.
        username: String,
        /// The upstream it names.
        upstream: String,
    },
    /// The slot table could not be built.
    #[error(transparent)]
    Sessions(#[from] SessionsError),
}

/// What a reload changed.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Credential slots added.
    pub added: usize,
    /// Credential slots removed.
    pub removed: usize,
    /// Credential slots whose password or session lifetime changed.
    pub changed: usize,
    /// Credential slots left exactly as they were.
    pub unchanged: usize,
    /// Clients now configured.
    pub clients: usize,
    /// Changed settings that take effect only after a restart.
    pub restart_needed: Vec<String>,
}

/// Reloads the configuration of a running gateway.
pub struct Reloader {
    path: PathBuf,
    sessions: Arc<Sessions>,
    proxy: Arc<Proxy>,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    upstreams: Vec<String>,
    /// The running file's settings that only a restart applies, as written (before `${VAR}`
    /// interpolation: the environment of a running process does not change).
    fixed: toml::Table,
    /// Digests of the running secret settings a reload does not apply: a rotated file behind
    /// one of them is reported as needing a restart.
    fixed_secrets: Vec<(String, [u8; 32])>,
    /// One reload at a time: two at once could apply an older file last.
    one_at_a_time: Mutex<()>,
}

impl Reloader {
    /// A reloader for the gateway started from `config`, read from `path`.
    pub fn new(path: PathBuf, config: &Config, sessions: Arc<Sessions>, proxy: Arc<Proxy>) -> Self {
        let fixed = Config::read(&path)
            .ok()
            .and_then(|text| fixed_settings(&text))
            .unwrap_or_default();
        Self {
            path,
            sessions,
            proxy,
            listen: config.server.listen,
            admin_listen: config.server.admin_listen,
            upstreams: config.upstreams.iter().map(|u| u.name.clone()).collect(),
            fixed,
            fixed_secrets: config.fixed_secret_digests(),
            one_at_a_time: Mutex::new(()),
        }
    }

    /// Reads the file again and applies its clients and credentials, or refuses it whole.
    pub fn reload(&self) -> Result<Report, ReloadError> {
        let outcome = self.apply();
        // The parse's memory is free now, whatever the outcome.
        crate::heap::release_free_memory();
        outcome
    }

    fn apply(&self) -> Result<Report, ReloadError> {
        let _one = self.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        let text = Config::read(&self.path)?;
        let config = Config::parse(&text, &self.path)?;
        crate::upstream::check_profiles(&config, &self.path)?;
        crate::upstream::check_files(&config, &self.path)?;
        let clients = Clients::from_config(&config.clients).map_err(ReloadError::Clients)?;
        for c in &config.credentials {
            if let Some(upstream) = c.upstreams.iter().find(|u| !self.upstreams.contains(u)) {
                return Err(ReloadError::NewUpstream {
                    gstin: c.gstin.clone(),
                    username: c.username.clone(),
                    upstream: upstream.clone(),
                });
            }
        }
        let mut restart_needed = Vec::new();
        if config.server.listen != self.listen {
            restart_needed.push(format!(
                "server.listen {} -> {}",
                self.listen, config.server.listen
            ));
        }
        if config.server.admin_listen != self.admin_listen {
            restart_needed.push(format!(
                "server.admin_listen {} -> {}",
                self.admin_listen, config.server.admin_listen
            ));
        }
        let upstreams: Vec<String> = config.upstreams.iter().map(|u| u.name.clone()).collect();
        if upstreams != self.upstreams {
            restart_needed.push(format!(
                "[[upstream]] {:?} -> {:?}",
                self.upstreams, upstreams
            ));
        }
        if let Some(new) = fixed_settings(&text) {
            restart_needed.extend(
                changed_settings(&self.fixed, &new)
                    .into_iter()
                    .filter(|name| name != "server.listen" && name != "server.admin_listen"),
            );
        }
        let secrets = config.fixed_secret_digests();
        for (key, digest) in &secrets {
            let running = self.fixed_secrets.iter().find(|(k, _)| k == key);
            if running.is_some_and(|(_, d)| d != digest) && !restart_needed.contains(key) {
                restart_needed.push(key.clone());
            }
        }
        let Changes {
            added,
            removed,
            changed,
            unchanged,
        } = self.sessions.reload(&config.credentials)?;
        self.proxy.set_clients(clients);
        let report = Report {
            added,
            removed,
            changed,
            unchanged,
            clients: config.clients.len(),
            restart_needed,
        };
        tracing::info!(
            path = %self.path.display(),
            added, removed, changed, unchanged,
            clients = report.clients,
            restart_needed = ?report.restart_needed,
            "configuration reloaded"
        );
        Ok(report)
    }
}

/// The settings of a configuration text that only a restart applies: everything but the
/// clients and credentials. Those are skipped, not built into tables and dropped: with
/// 100,000 credentials they are most of an 11 MB file, and this runs at every start and
/// every reload. The credential tables are cut out before the parser sees them, or its
/// tokens and tree of the whole file would be start-up's memory peak.
fn fixed_settings(text: &str) -> Option<toml::Table> {
    use serde::de::Deserializer as _;
    toml::Deserializer::parse(&crate::config::without_credentials(text))
        .ok()?
        .deserialize_map(FixedSettings)
        .ok()
}

/// Visits a configuration's top-level table, keeping every entry but `client` and
/// `credential`.
struct FixedSettings;

impl<'de> serde::de::Visitor<'de> for FixedSettings {
    type Value = toml::Table;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a configuration table")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<toml::Table, A::Error> {
        let mut table = toml::Table::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "client" || key == "credential" {
                map.next_value::<serde::de::IgnoredAny>()?;
            } else {
                let value = map.next_value::<toml::Value>()?;
                table.insert(key, value);
            }
        }
        Ok(table)
    }
}

/// The names of the settings that differ between two such tables — `server.admin_token`,
/// ``upstream `einvoice`.client_secret`` — never their values, which may be secrets.
fn changed_settings(old: &toml::Table, new: &toml::Table) -> Vec<String> {
    let mut changed = Vec::new();
    let sections: std::collections::BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for section in sections {
        match (old.get(section), new.get(section)) {
            (Some(toml::Value::Array(a)), Some(toml::Value::Array(b))) if section == "upstream" => {
                let named = |list: &Vec<toml::Value>| -> Vec<(String, toml::Table)> {
                    list.iter()
                        .filter_map(|u| u.as_table())
                        .map(|t| {
                            let name = t.get("name").and_then(|n| n.as_str()).unwrap_or("?");
                            (name.to_owned(), t.clone())
                        })
                        .collect()
                };
                let (a, b) = (named(a), named(b));
                for (name, before) in &a {
                    if let Some((_, after)) = b.iter().find(|(n, _)| n == name) {
                        for key in keys_differing(before, after) {
                            changed.push(format!("upstream `{name}`.{key}"));
                        }
                    }
                }
            }
            (Some(toml::Value::Table(a)), Some(toml::Value::Table(b))) => {
                for key in keys_differing(a, b) {
                    changed.push(format!("{section}.{key}"));
                }
            }
            (a, b) if a != b => changed.push(format!("[{section}]")),
            _ => {}
        }
    }
    changed
}

/// Keys whose values differ (or that are set in only one table), sorted.
fn keys_differing(a: &toml::Table, b: &toml::Table) -> Vec<String> {
    let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| k.to_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Skipping the clients and credentials keeps every other entry exactly as a whole
    /// parse reads it. Broken by: a skipped key other than those two, or a value converted
    /// differently (a date-time, a nested table, an array of tables).
    #[test]
    fn the_fixed_settings_are_the_whole_table_but_clients_and_credentials() {
        let text = r#"
top = 1
[server]
listen = "127.0.0.1:1"
[alerts]
since = 2026-12-06T10:00:00Z
levels = [1, 2.5, "x"]
[[upstream]]
name = "einvoice"
[upstream.headers]
x-a = "b"
[[upstream]]
name = "gstn"
[[client]]
name = "c"
[[credential]]
gstin = "27AAPFU0939F1ZV"
[credential.headers]
y = "z"
"#;
        // The same with the credential tables cut out before parsing (no `[credential.x]`
        // table, which leaves the file to the whole parse).
        let split = r#"
top = 1
[server]
listen = "127.0.0.1:1"
[[credential]]
gstin = "27AAPFU0939F1ZV"
[[upstream]]
name = "einvoice"
[upstream.headers]
x-a = "b"
[[credential]]
gstin = "29AAPFU0939F1ZR"
  [[credential]]
gstin = """
[server]
"""
[[upstream]]
name = "gstn"
[[client]]
name = "c"
[[credential]]
"#;
        assert!(matches!(
            crate::config::without_credentials(split),
            std::borrow::Cow::Owned(_)
        ));
        for text in [text, split] {
            let mut whole: toml::Table = toml::from_str(text).unwrap();
            whole.remove("client");
            whole.remove("credential");
            assert_eq!(fixed_settings(text).unwrap(), whole, "{text}");
        }
        assert!(fixed_settings("not = [toml").is_none());
    }

    #[test]
    fn changed_settings_are_named_without_their_values() {
        let before = r#"
[server]
listen = "127.0.0.1:1"
admin_token = "old-token-0123456789"
[store]
backend = "memory"
[[upstream]]
name = "einvoice"
client_secret = "old-secret"
timeout = "5s"
[[upstream]]
name = "gstn"
client_secret = "s"
[[credential]]
gstin = "27AAPFU0939F1ZV"
password = "p1"
"#;
        let after = before
            .replace("old-token-0123456789", "new-token-0123456789")
            .replace("old-secret", "new-secret")
            .replace("p1", "p2")
            .replace(
                "[store]\nbackend = \"memory\"",
                "[alerts]\ncheck_interval = \"1s\"",
            );
        let changed = changed_settings(
            &fixed_settings(before).unwrap(),
            &fixed_settings(&after).unwrap(),
        );
        assert_eq!(
            changed,
            [
                "[alerts]",
                "server.admin_token",
                "[store]",
                "upstream `einvoice`.client_secret"
            ]
        );
        assert!(!changed.concat().contains("secret\""));
        assert!(!changed.concat().contains("token-0123"));
    }
}
