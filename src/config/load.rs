//! Loading: a configuration file read within its size limit, its `${VAR}`s checked all at
//! once, parsed (`parse.rs`), its secrets resolved, the default store file placed, and
//! validated.

use std::path::Path;

use super::{
    env, read_limited, Config, ConfigError, StoreBackend, DEFAULT_STORE_FILE, MAX_CONFIG_BYTES,
};

impl Config {
    /// Reads, parses, interpolates and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::parse(&Self::read(path)?, path)
    }

    /// The text of a configuration file, read within [`MAX_CONFIG_BYTES`].
    pub fn read(path: &Path) -> Result<String, ConfigError> {
        read_limited(path, MAX_CONFIG_BYTES).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Parses and validates configuration text; `path` names the file in messages and places
    /// the default store file. Relative file names in the config are relative to the working
    /// directory.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_under(text, path, None)
    }

    /// [`Config::load`] for `check-config --root`: absolute secret file names are read under
    /// `root`, as [`Config::rebase_files`] moves the other file names after loading.
    pub fn load_under(path: &Path, root: Option<&Path>) -> Result<Self, ConfigError> {
        Self::parse_under(&Self::read(path)?, path, root)
    }

    pub(super) fn parse_under(
        text: &str,
        path: &Path,
        root: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let unset = env::unset_variables(text);
        if !unset.is_empty() {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: unset_message(&unset),
            });
        }
        let mut config = super::parse::document(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.message(text),
        })?;
        // `webhook_url = "${GSTGATE_ALERT_WEBHOOK}"` with the variable set empty switches
        // webhooks off, so that one file serves deployments with and without them.
        if config
            .alerts
            .webhook_url
            .as_deref()
            .is_some_and(|u| u.trim().is_empty())
        {
            config.alerts.webhook_url = None;
        }
        config
            .resolve_secrets(root)
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                message,
            })?;
        if config.store.backend == StoreBackend::Embedded && config.store.path.is_none() {
            let dir = path.parent().unwrap_or(Path::new(""));
            config.store.path = Some(dir.join(DEFAULT_STORE_FILE));
        }
        config
            .validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                message,
            })?;
        Ok(config)
    }
}

/// Every unset variable in one message, in file order, each with the line and key of its
/// first use: an operator sets them all at once instead of one per attempt.
fn unset_message(unset: &[(String, usize, Option<String>)]) -> String {
    let each: Vec<String> = unset
        .iter()
        .map(|(name, line, key)| match key {
            Some(key) => format!("`{name}` (line {line}, key `{key}`)"),
            None => format!("`{name}` (line {line})"),
        })
        .collect();
    match each.as_slice() {
        [one] => format!("environment variable {one} is not set"),
        all => format!(
            "{} environment variables are not set: {}",
            all.len(),
            all.join(", ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parse_error_says_where_without_quoting_the_line() {
        let text = "[server]\nadmin_token = \"s3cret\\q-token-value\"\n";
        let err = Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("c.toml: line 2, column "), "{err}");
        assert!(err.contains("key `admin_token`"), "{err}");
        assert!(err.contains("escape"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        let err = Config::parse("[server]\nlisten_typo = 1\n", Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("listen_typo"),
            "{err}"
        );
    }

    #[test]
    fn a_secret_of_another_type_is_refused_without_its_value() {
        for line in [
            "admin_token = 98765432",
            "monitoring_token = 98765432.5",
            "admin_token = [98765432]",
            "admin_token = 1998-07-06T05:04:03Z",
        ] {
            let text = format!("[server]\n{line}\n");
            let err = Config::parse(&text, Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("line 2"), "{line}: {err}");
            assert!(err.contains("expected a string"), "{line}: {err}");
            assert!(
                !err.contains("98765432") && !err.contains("1998"),
                "{line}: {err}"
            );
        }
        let text =
            "[server]\n[[upstream]]\nname = \"u\"\n[upstream.headers]\n\"X-Key\" = 98765432\n";
        let err = Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("expected a string"), "{err}");
        assert!(!err.contains("98765432"), "{err}");
    }

    #[test]
    fn all_unset_variables_are_reported_at_once_in_file_order() {
        let text = "[server]\nadmin_token = \"${GSTGATE_TEST_UNSET_B}\"\n[[upstream]]\nclient_id = \"${GSTGATE_TEST_UNSET_A}\"\nclient_secret = \"${GSTGATE_TEST_UNSET_B}\"\n";
        let err = Config::parse(text, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "c.toml: 2 environment variables are not set: `GSTGATE_TEST_UNSET_B` (line 2, key `admin_token`), `GSTGATE_TEST_UNSET_A` (line 4, key `client_id`)"
        );
    }
}
