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

/// Every `${VAR}` of a configuration text whose variable is not set, once each, in file
/// order, with the line and key of the string that first uses it: `(name, line, key)`. Parsing stops at the first error,
/// so this scan runs before it, to name every variable an operator has to set in one go.
/// Comments and keys are skipped; syntax errors are left to the parser.
pub(super) fn unset_variables(text: &str) -> Vec<(String, usize, Option<String>)> {
    unset_variables_with(text, |name| std::env::var_os(name).is_some())
}

fn unset_variables_with(
    text: &str,
    is_set: impl Fn(&str) -> bool,
) -> Vec<(String, usize, Option<String>)> {
    let mut found: Vec<(String, usize, Option<String>)> = Vec::new();
    for (start, content) in string_values(text) {
        let missing = std::cell::RefCell::new(Vec::new());
        let _ = interpolate_with(content, |name| {
            if !is_set(name) {
                missing.borrow_mut().push(name.to_owned());
            }
            Some(String::new())
        });
        for name in missing.into_inner() {
            if found.iter().any(|(n, _, _)| *n == name) {
                continue;
            }
            let before = &text[..start];
            let line = before.matches('\n').count() + 1;
            found.push((name, line, key_above(before)));
        }
    }
    found
}

/// The TOML string values of `text` (not keys, not comments): each one's byte offset and
/// raw contents. Escapes are not decoded: `${` is never written with one.
fn string_values(text: &str) -> Vec<(usize, &str)> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'#' => {
                i = text[i..].find('\n').map_or(bytes.len(), |n| i + n);
                continue;
            }
            quote @ (b'"' | b'\'') => {
                let multi = bytes.get(i + 1) == Some(&quote) && bytes.get(i + 2) == Some(&quote);
                let open = if multi { 3 } else { 1 };
                let start = i + open;
                let mut j = start;
                let end = loop {
                    match bytes.get(j) {
                        None => break bytes.len(),
                        Some(b'\\') if quote == b'"' => j += 2,
                        Some(&c) if c == quote => {
                            if !multi {
                                break j;
                            }
                            if bytes.get(j + 1) == Some(&quote) && bytes.get(j + 2) == Some(&quote)
                            {
                                break j;
                            }
                            j += 1;
                        }
                        Some(b'\n') if !multi => break j,
                        Some(_) => j += 1,
                    }
                };
                let after = (end + open).min(bytes.len());
                let next = text[after..].trim_start_matches([' ', '\t']).bytes().next();
                // A quoted key (`"X-Key" = …`, `a."b".c`) is not interpolated.
                if !matches!(next, Some(b'=' | b'.')) {
                    if let Some(content) = text.get(start..end.min(bytes.len())) {
                        out.push((i, content));
                    }
                }
                i = after;
                continue;
            }
            _ => i += 1,
        }
    }
    out
}

/// The key of the nearest `key = …` line at or above the end of `before`.
fn key_above(before: &str) -> Option<String> {
    before.rsplit('\n').find_map(|line| {
        let (key, _) = line.split_once('=')?;
        let key = key.trim();
        (!key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"')))
        .then(|| key.to_owned())
    })
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

    #[test]
    fn every_unset_variable_is_found_once_in_file_order_outside_comments_and_keys() {
        let text = r#"
# ${IN_COMMENT} is documentation
[server]
admin_token = "${ZED}" # ${ALSO_COMMENT}
[[upstream]]
client_id = '${ALPHA}'
routes = [
  "/a/${MID}",
  "$${NOT_A_VAR}",
]
headers = { "${KEY_NOT_VALUE}" = "${ZED}-${SET}" }
note = """
${MULTI}"""
"#;
        let found = unset_variables_with(text, |name| name == "SET");
        let found: Vec<(&str, usize, Option<&str>)> = found
            .iter()
            .map(|(n, l, k)| (n.as_str(), *l, k.as_deref()))
            .collect();
        assert_eq!(
            found,
            [
                ("ZED", 4, Some("admin_token")),
                ("ALPHA", 6, Some("client_id")),
                ("MID", 8, Some("routes")),
                ("MULTI", 12, Some("note")),
            ]
        );
    }
}
