//! What loading a configuration file fails with.

use std::path::PathBuf;

/// A configuration problem, with where it is.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax, unknown key, wrong type, missing variable: the parser's message names the
    /// line and the key.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// A rule spanning fields is broken.
    #[error("{path}: {key}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The entry and setting, e.g. `upstream "einvoice".routes`.
        key: String,
        /// What is wrong and how to fix it.
        message: String,
    },
}

/// How errors name an `[[upstream]]`: by its name, or by position while it has none.
pub fn upstream_entry(position: usize, name: &str) -> String {
    if name.is_empty() {
        format!("upstream[{position}]")
    } else {
        format!("upstream \"{name}\"")
    }
}

/// How errors name a `[[credential]]`: by GSTIN and user, or by position while it has none.
pub fn credential_entry(position: usize, gstin: &str, username: &str) -> String {
    if gstin.is_empty() {
        format!("credential[{position}]")
    } else {
        format!("credential {gstin}/{username}")
    }
}

/// How errors name a `[[client]]`: by its name, or by position while it has none.
pub fn client_entry(position: usize, name: &str) -> String {
    if name.is_empty() {
        format!("client[{position}]")
    } else {
        format!("client \"{name}\"")
    }
}
