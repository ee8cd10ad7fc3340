//! What a profile says about a call that creates a document (an IRN, an e-way bill): how to
//! find that document again on the same session, and which replies mean "it exists already".
//! The outcome phase (`crate::outcome`) needs this to answer a generate whose reply was lost;
//! each profile fills it in from the caller's plain body, and only the profile knows the API.

use crate::path::{is_version, segments, CallerPath};

/// A caller's generate call, as its profile reads it.
pub struct Generate {
    /// The read that finds the document this call creates, on the same session and GSTIN.
    pub lookup: CallerPath,
    /// The upstream error codes that answer a generate for a document it already holds.
    pub duplicate: &'static [&'static str],
    /// The upstream error codes with which the lookup says it holds no such document.
    pub absent: &'static [&'static str],
    /// Turns the lookup's decoded reply into the generate's own success reply (plain JSON);
    /// `None` when the document found cannot stand for one (cancelled, unreadable, or not the
    /// caller's: its document details differ from the request's).
    pub answer: Answer,
}

/// How a lookup's decoded reply becomes the generate's success reply, knowing the request.
pub type Answer = Box<dyn Fn(&[u8]) -> Option<Vec<u8>> + Send + Sync>;

/// Whether a document detail in a lookup's reply is the request's: both present, equal but
/// for surrounding blanks and ASCII case (NIC takes document numbers in either case).
pub fn same(found: Option<&serde_json::Value>, wanted: &str) -> bool {
    found
        .and_then(serde_json::Value::as_str)
        .is_some_and(|f| f.trim().eq_ignore_ascii_case(wanted.trim()))
}

/// Whether `path` ends with the segments of `pattern`, ASCII case ignored; a `"v"` in the
/// pattern stands for any API version segment (`v1.03`, `v1.04`). A GSP's prefix before them
/// does not matter: the lookup is derived from the caller's own path.
pub fn ends_with(path: &CallerPath, pattern: &[&str]) -> bool {
    let mut segments = segments(path.path()).rev();
    let tail_matches = pattern.iter().rev().all(|want| {
        segments.next().is_some_and(|seg| {
            if *want == "v" {
                is_version(seg)
            } else {
                seg.eq_ignore_ascii_case(want.as_bytes())
            }
        })
    });
    // More segments than the pattern: the path's leading `/` leaves an empty one first.
    tail_matches && segments.next().is_some()
}

/// The lookup path: the generate's path (trailing `/` dropped) + `suffix`, with `query` pairs
/// percent-encoded; `None` if that is not a path gstgate would send.
pub fn lookup(generate: &CallerPath, suffix: &str, query: &[(&str, &str)]) -> Option<CallerPath> {
    let path = format!("{}{suffix}", generate.path().trim_end_matches('/'));
    let query = (!query.is_empty()).then(|| {
        query
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&")
    });
    CallerPath::parse(&path, query.as_deref()).ok()
}

/// `text` percent-encoded for a query value: RFC 3986's unreserved characters stay.
fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> CallerPath {
        CallerPath::parse(p, None).unwrap()
    }

    #[test]
    fn a_detail_is_the_same_only_when_present_and_equal_but_for_case_and_blanks() {
        let v = serde_json::json!({"No": " a/1 ", "n": 1});
        assert!(same(v.get("No"), "A/1"));
        assert!(!same(v.get("No"), "A/2"));
        assert!(!same(v.get("missing"), "A/1"));
        assert!(!same(v.get("n"), "1"));
    }

    #[test]
    fn a_generate_path_is_known_under_any_version_and_gsp_prefix() {
        let pattern = ["eicore", "v", "Invoice"];
        assert!(ends_with(&path("/eicore/v1.03/Invoice"), &pattern));
        assert!(ends_with(
            &path("/gus/irp/nic/eicore/v1.04/invoice/"),
            &pattern
        ));
        assert!(!ends_with(&path("/eicore/v1.03/Invoice/Cancel"), &pattern));
        assert!(!ends_with(&path("/eicore/latest/Invoice"), &pattern));
        assert!(!ends_with(&path("/eicore/v/Invoice"), &pattern));
        assert!(!ends_with(&path("/v1.03/Invoice"), &pattern));
        assert!(!ends_with(&path("/"), &pattern));
    }

    #[test]
    fn the_lookup_keeps_the_generate_path_and_encodes_its_query() {
        let l = lookup(
            &path("/gsp/eicore/v1.04/Invoice/"),
            "/irnbydocdetails",
            &[
                ("doctype", "INV"),
                ("docnum", "A/1 &2"),
                ("docdate", "01/04/2026"),
            ],
        )
        .unwrap();
        assert_eq!(l.path(), "/gsp/eicore/v1.04/Invoice/irnbydocdetails");
        assert_eq!(
            l.query(),
            Some("doctype=INV&docnum=A%2F1%20%262&docdate=01%2F04%2F2026")
        );
        assert_eq!(l.query_values("docnum"), vec!["A/1 &2".to_owned()]);
    }
}
