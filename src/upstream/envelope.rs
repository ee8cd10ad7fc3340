//! The JSON envelope of a GST API reply, read without building a tree.
//!
//! Members are kept in their original order as raw JSON text borrowed from the reply body. The
//! gateway reads the few it needs (status, error codes, `Data`) and replaces `Data` with its
//! decrypted value; every other member goes back to the caller byte for byte — "all other
//! fields pass through unchanged" — and none is copied or parsed into a tree.

use std::borrow::Cow;

use serde::de::DeserializeOwned;

use crate::json::{self, Json};

/// A JSON object's members, in order, names and values borrowed from the body (a name is
/// copied only when it holds an escape). Values stay bytes (checked UTF-8): the largest,
/// `Data`, goes back to the caller without a second look.
pub struct Envelope<'a> {
    members: Vec<Entry<'a>>,
}

/// One member: its name (decoded), its value's JSON text, and whether that is a string
/// holding no escape (from the scan, so that reading it needs no second look for one).
struct Entry<'a> {
    name: Cow<'a, str>,
    value: Cow<'a, [u8]>,
    plain: bool,
}

impl<'a> Envelope<'a> {
    /// Parses a JSON object; `None` for anything else (garbage, an array, an HTML page).
    pub fn parse(body: &'a [u8]) -> Option<Self> {
        let members = json::members(body).ok()?;
        let mut out = Vec::with_capacity(members.len());
        for m in members {
            let name = if m.escaped {
                // Decoded as serde_json decodes a name: a lone surrogate is refused.
                Cow::Owned(serde_json::from_str::<String>(&format!("\"{}\"", m.name)).ok()?)
            } else {
                Cow::Borrowed(m.name)
            };
            out.push(Entry {
                name,
                value: Cow::Borrowed(m.value),
                plain: m.plain,
            });
        }
        Some(Envelope { members: out })
    }

    /// The JSON text of the first member named `key`.
    pub fn raw(&self, key: &str) -> Option<&str> {
        std::str::from_utf8(self.raw_bytes(key)?).ok()
    }

    fn raw_bytes(&self, key: &str) -> Option<&[u8]> {
        self.entry(key).map(|e| e.value.as_ref())
    }

    fn entry(&self, key: &str) -> Option<&Entry<'a>> {
        self.members.iter().find(|e| e.name == key)
    }

    /// The member named `key`, deserialised; `None` when absent or of another shape.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_slice(self.raw_bytes(key)?).ok()
    }

    /// The string member named `key`, borrowed from the body when it holds no escape (base64
    /// never does), else decoded; `None` when absent or not a string. A reply's `Data` is its
    /// largest member: read this way it is not copied, and the scan already told whether it
    /// holds an escape.
    pub fn str(&self, key: &str) -> Option<Cow<'_, str>> {
        let entry = self.entry(key)?;
        let inner = entry
            .value
            .strip_prefix(b"\"")
            .and_then(|r| r.strip_suffix(b"\""));
        match inner {
            Some(inner) if entry.plain => std::str::from_utf8(inner).ok().map(Cow::Borrowed),
            _ => self.get::<String>(key).map(Cow::Owned),
        }
    }

    /// The reply's status, from the first of `names` present: the GST APIs send it as `1` or
    /// `"1"`, so both count.
    pub fn status(&self, names: &[&str]) -> Option<i64> {
        let value = names
            .iter()
            .find_map(|n| self.get::<serde_json::Value>(n))?;
        match value {
            serde_json::Value::Number(n) => n.as_i64(),
            serde_json::Value::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    /// Replaces the value of `key` (or appends it).
    pub fn set(&mut self, key: &str, value: impl Into<Json>) {
        let value = Cow::Owned(value.into().into_string().into_bytes());
        // Not known to be a plain string: read through serde_json if ever read back.
        match self.members.iter_mut().find(|e| e.name == key) {
            Some(e) => {
                e.value = value;
                e.plain = false;
            }
            None => self.members.push(Entry {
                name: Cow::Owned(key.to_owned()),
                value,
                plain: false,
            }),
        }
    }

    /// Removes every member named `key`.
    pub fn remove(&mut self, key: &str) {
        self.members.retain(|e| e.name != key);
    }

    /// The envelope as JSON bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let size = self
            .members
            .iter()
            .map(|e| e.name.len() + e.value.len() + 4)
            .sum::<usize>();
        let mut out = Vec::with_capacity(size + 2);
        out.push(b'{');
        for (i, e) in self.members.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Writing a string into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut out, &e.name);
            out.push(b':');
            out.extend_from_slice(&e.value);
        }
        out.push(b'}');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn members_keep_their_order_and_bytes_when_one_is_replaced() {
        let text = br#"{"Status":1,"Data":"abc","InfoDtls":null,"Zeta":{"b":1, "a":2}}"#;
        let mut e = Envelope::parse(text).unwrap();
        assert_eq!(e.get::<i64>("Status"), Some(1));
        assert_eq!(e.get::<String>("Data").as_deref(), Some("abc"));
        e.set(
            "Data",
            RawValue::from_string(r#"{"Irn":"x"}"#.into()).unwrap(),
        );
        assert_eq!(
            String::from_utf8(e.to_vec()).unwrap(),
            r#"{"Status":1,"Data":{"Irn":"x"},"InfoDtls":null,"Zeta":{"b":1, "a":2}}"#
        );
    }

    #[test]
    fn strings_are_borrowed_without_escapes_and_decoded_with_them() {
        let text = br#"{"a":"abc+/=","b":"x\u0041\"y","c":1,"d":null,"e":"\\"}"#;
        let e = Envelope::parse(text).unwrap();
        assert!(matches!(e.str("a"), Some(Cow::Borrowed("abc+/="))));
        assert_eq!(e.str("b").as_deref(), Some("xA\"y"));
        assert!(matches!(e.str("b"), Some(Cow::Owned(_))));
        assert_eq!(e.str("e").as_deref(), Some("\\"));
        assert_eq!(e.str("c"), None);
        assert_eq!(e.str("d"), None);
        assert_eq!(e.str("missing"), None);
    }

    #[test]
    fn names_with_escapes_are_decoded_and_found() {
        let text = br#"{"St\u0061tus":1,"Data":"x"}"#;
        let mut e = Envelope::parse(text).unwrap();
        assert_eq!(e.get::<i64>("Status"), Some(1));
        e.remove("Data");
        assert_eq!(String::from_utf8(e.to_vec()).unwrap(), r#"{"Status":1}"#);
    }

    #[test]
    fn non_objects_are_not_envelopes() {
        assert!(Envelope::parse(b"[1,2]").is_none());
        assert!(Envelope::parse(b"<html>").is_none());
        assert!(Envelope::parse(b"{\"a\":").is_none());
    }
}
