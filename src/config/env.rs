//! `${VAR}` interpolation, and the serde deserialisers that apply it to each field as it is
//! parsed, so that a missing variable is reported with the line and key that name it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
use serde::{Deserialize, Deserializer};

/// Replaces every `${VAR}` in `text` with the environment variable's value; `$$` is a literal
/// `$`. A missing variable is an error naming it.
pub fn interpolate(text: &str) -> Result<String, String> {
    interpolate_with(text, |name| std::env::var(name).ok())
}

fn interpolate_with(text: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(tail) = after.strip_prefix('{') {
            let end = tail
                .find('}')
                .ok_or_else(|| "unterminated `${` (write `$$` for a literal `$`)".to_string())?;
            let name = &tail[..end];
            let valid =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !valid {
                return Err(format!("`${{{name}}}` is not a valid variable name"));
            }
            let value =
                lookup(name).ok_or_else(|| format!("environment variable `{name}` is not set"))?;
            out.push_str(&value);
            rest = &tail[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

pub(super) fn env_parse<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr,
    T::Err: fmt::Display,
{
    let raw = String::deserialize(d)?;
    let text = interpolate(&raw).map_err(serde::de::Error::custom)?;
    text.parse().map_err(serde::de::Error::custom)
}

pub(super) fn env_string_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    env_parse(d).map(Some)
}

pub(super) fn env_path_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(env_string_opt(d)?.map(PathBuf::from))
}

/// What a secret setting given as something other than a string is refused with. serde's own
/// message quotes the value (`invalid type: integer `98765432`, expected a string`), and this
/// one reaches `check-config`, the log and the reload answer.
const SECRET_NOT_A_STRING: &str =
    "expected a string (write the value in quotes); the value is a secret and is not shown";

/// The text of a secret setting, as written; a value of another type is refused without
/// being quoted.
struct SecretText(String);

impl<'de> Deserialize<'de> for SecretText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)
            .map(SecretText)
            .map_err(|_| serde::de::Error::custom(SECRET_NOT_A_STRING))
    }
}

/// What an empty secret is refused with: most often a `${VAR}` set to nothing, which would
/// otherwise log in with an empty password or leave a store unencrypted-looking.
const SECRET_EMPTY: &str =
    "is empty: a secret setting needs a value (is its environment variable set but empty?); leave the setting out to not use it";

pub(super) fn env_secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    let SecretText(raw) = SecretText::deserialize(d)?;
    let text = interpolate(&raw).map_err(serde::de::Error::custom)?;
    if text.is_empty() {
        return Err(serde::de::Error::custom(SECRET_EMPTY));
    }
    Ok(SecretString::from(text))
}

pub(super) fn env_secret_opt<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<SecretString>, D::Error> {
    env_secret(d).map(Some)
}

pub(super) fn env_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let raw = String::deserialize(d)?;
    let text = interpolate(&raw).map_err(serde::de::Error::custom)?;
    humantime::parse_duration(text.trim()).map_err(|e| {
        serde::de::Error::custom(format!(
            "`{text}` is not a duration ({e}); write e.g. \"45s\", \"10m\", \"6h\""
        ))
    })
}

pub(super) fn env_duration_opt<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    env_duration(d).map(Some)
}

pub(super) fn env_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let raw = Vec::<String>::deserialize(d)?;
    raw.iter()
        .map(|s| interpolate(s).map_err(serde::de::Error::custom))
        .collect()
}

/// One string or a list of them, each with `${VAR}`s replaced.
pub(super) fn env_one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let raw = match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    };
    raw.iter()
        .map(|s| interpolate(s).map_err(serde::de::Error::custom))
        .collect()
}

pub(super) fn env_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, SecretString>, D::Error> {
    let raw = BTreeMap::<String, SecretText>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, SecretText(v))| {
            let v = interpolate(&v)
                .map_err(|e| serde::de::Error::custom(format!("header `{k}`: {e}")))?;
            if v.is_empty() {
                return Err(serde::de::Error::custom(format!(
                    "header `{k}` {SECRET_EMPTY}"
                )));
            }
            Ok((k, SecretString::from(v)))
        })
        .collect()
}

pub(super) fn env_path_map<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, PathBuf>, D::Error> {
    Ok(env_map_plain(d)?
        .into_iter()
        .map(|(k, v)| (k, PathBuf::from(v)))
        .collect())
}

pub(super) fn env_map_plain<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, String>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let v = interpolate(&v).map_err(|e| serde::de::Error::custom(format!("`{k}`: {e}")))?;
            Ok((k, v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolation_replaces_variables_and_escapes() {
        let lookup = |n: &str| (n == "A").then(|| "x\"y".to_string());
        assert_eq!(interpolate_with("p${A}q", lookup).unwrap(), "px\"yq");
        assert_eq!(interpolate_with("$$5 and $x", lookup).unwrap(), "$5 and $x");
        assert!(interpolate_with("${B}", lookup)
            .unwrap_err()
            .contains("`B`"));
        assert!(interpolate_with("${A", lookup)
            .unwrap_err()
            .contains("unterminated"));
        assert!(interpolate_with("${A-B}", lookup)
            .unwrap_err()
            .contains("not a valid"));
    }
}
