//! Request paths, normalised and validated once, before anything looks at them.
//!
//! Routing, the auth-path shortcut and the upstream URL all read the [`CallerPath`] made
//! here, never the raw request target, so what gstgate decides on is exactly what the upstream
//! receives. The rule is an allow-list of what GST API paths are made of, not a list of known
//! attacks: every segment, once percent-decoded, is letters, digits, `-`, `_` and `.`, is not
//! made of dots only (`.`, `..`, `...`) and does not end in a dot (Windows servers drop a
//! trailing dot, so `auth.` would reach `auth`). Nothing else passes: no encoded or literal
//! backslash, no encoded slash, no `;` (Java servers read `..;` as `..`), no `%25` double
//! encoding, no empty segment except one trailing slash.
//!
//! Because every allowed byte is an RFC 3986 unreserved character, the decoded path is also
//! its own canonical encoding: the upstream gets it verbatim after the base URL's path, and no
//! server on the way can resolve it to anything else.

/// Why a path was refused (the `path_invalid` problem's detail).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The target is not an absolute path (`*`, an empty path).
    #[error("the path must start with `/`")]
    NotAbsolute,
    /// A `.` or `..` segment, plain or percent-encoded, or any segment of dots only.
    #[error("segment {0} is a dot segment (`.`, `..`, plain or percent-encoded)")]
    DotSegment(usize),
    /// A segment ending in `.`, which some servers strip.
    #[error("segment {0} ends with a dot")]
    TrailingDot(usize),
    /// `//` inside the path.
    #[error("segment {0} is empty (`//`)")]
    EmptySegment(usize),
    /// `%2F` inside a segment.
    #[error("segment {0} contains an encoded slash (`%2F`)")]
    EncodedSlash(usize),
    /// `\` or `%5C`, which many servers treat as `/`.
    #[error("segment {0} contains a backslash")]
    Backslash(usize),
    /// A `%` not followed by two hex digits.
    #[error("segment {0} has a malformed percent-encoding")]
    BadEncoding(usize),
    /// Any other byte outside letters, digits, `-`, `_` and `.`.
    #[error("segment {segment} contains {what}, which no GST API path uses")]
    Disallowed {
        /// The 1-based segment index.
        segment: usize,
        /// The byte, described without echoing control characters.
        what: String,
    },
    /// A query parameter name that is empty or holds a byte other than letters, digits, `_`
    /// and `-`, where the API's query names the taxpayer.
    #[error("query parameter {parameter} has {what} in its name; parameter names are letters, digits, `_` and `-`, unencoded")]
    QueryName {
        /// The 1-based parameter index.
        parameter: usize,
        /// The byte, described without echoing control characters, or that it is empty.
        what: String,
    },
    /// A `;` in the query, which some servers split parameters on, as on `&`.
    #[error("the query contains `;`, which some servers read as a parameter separator")]
    QuerySeparator,
}

/// A validated request path and its raw query, as the upstream will receive them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerPath {
    path: String,
    query: Option<String>,
}

impl CallerPath {
    /// Validates `path` (as it arrived, still percent-encoded) and keeps `query` as sent.
    ///
    /// The query is not decoded or changed: it cannot move the request to another path, and
    /// the upstream reads it as the caller wrote it.
    pub fn parse(path: &str, query: Option<&str>) -> Result<Self, PathError> {
        Ok(Self {
            path: canonical(path)?,
            query: query.map(str::to_owned),
        })
    }

    /// The canonical path: decoded, and equal to its own encoding.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query string as the caller sent it, without the `?`.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }

    /// The decoded values of every query parameter whose decoded name is `name` (ASCII case
    /// ignored), in order. `+` is a space; an undecodable escape is kept as sent, so it can
    /// only fail a comparison, never pass one.
    pub fn query_values(&self, name: &str) -> Vec<String> {
        self.query
            .as_deref()
            .unwrap_or("")
            .split('&')
            .filter_map(|pair| {
                let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                decode_query(k)
                    .eq_ignore_ascii_case(name)
                    .then(|| decode_query(v))
            })
            .collect()
    }

    /// Refuses a query that parsers could read differently: a `;` anywhere (some split on it
    /// as on `&`), or a parameter name that is empty or holds anything but ASCII letters,
    /// digits, `_` and `-`. `gstin[]`, `+gstin`, `gstin+`, `gstin%00`, `gstin.` are each read
    /// as `gstin` by some server-side parser; names are checked as sent, so a percent-encoded
    /// name (`%67stin`) is refused too, whatever it decodes to. Empty pairs (`a=1&&b=2`, a
    /// trailing `&`) name nothing and pass.
    pub fn check_query_names(&self) -> Result<(), PathError> {
        let Some(query) = self.query.as_deref() else {
            return Ok(());
        };
        if query.contains(';') {
            return Err(PathError::QuerySeparator);
        }
        for (i, pair) in query.split('&').enumerate() {
            if pair.is_empty() {
                continue;
            }
            let name = pair.split_once('=').map_or(pair, |(name, _)| name);
            let what = if name.is_empty() {
                Some("nothing".to_owned())
            } else {
                name.bytes()
                    .find(|&b| !(b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-')))
                    .map(describe)
            };
            if let Some(what) = what {
                return Err(PathError::QueryName {
                    parameter: i + 1,
                    what,
                });
            }
        }
        Ok(())
    }

    /// Whether this is `pattern`'s path in another spelling the upstream would accept: ASCII
    /// case is ignored, a trailing slash too, and a version segment of `pattern` (`v1.04`)
    /// matches any version segment, so `/eivital/v1.03/auth` is the e-invoice auth path too.
    pub fn matches_loosely(&self, pattern: &str) -> bool {
        // Bytes, and compared from the end: it runs on every request, and the last segment
        // (`auth`) tells nearly every path apart at once.
        let mut ours = segments(&self.path).rev();
        let mut theirs = segments(pattern).rev();
        loop {
            match (ours.next(), theirs.next()) {
                (None, None) => return true,
                (Some(a), Some(b))
                    if a.eq_ignore_ascii_case(b) || (is_version(a) && is_version(b)) => {}
                _ => return false,
            }
        }
    }
}

/// A path's segments, trailing slashes ignored.
pub(crate) fn segments(path: &str) -> impl DoubleEndedIterator<Item = &[u8]> {
    let bytes = path.as_bytes();
    let end = bytes.iter().rposition(|&b| b != b'/').map_or(0, |i| i + 1);
    bytes[..end].split(|&b| b == b'/')
}

/// A query component decoded (`%XX` and `+`); bytes that are not UTF-8 come out lossily.
fn decode_query(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (hex, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `v` or `V`, then digits and dots: an API version segment, as NIC numbers them.
pub(crate) fn is_version(segment: &[u8]) -> bool {
    matches!(segment, [b'v' | b'V', rest @ ..]
        if !rest.is_empty() && rest.iter().all(|b| b.is_ascii_digit() || *b == b'.'))
}

/// The decoded, validated form of a raw path (see the module doc for the rule).
pub fn canonical(raw: &str) -> Result<String, PathError> {
    if already_canonical(raw) {
        return Ok(raw.to_owned());
    }
    decoded(raw)
}

/// Whether `raw` passes the rule as it is, with nothing to decode: what callers send. One
/// pass over the bytes, where decoding segment by segment cost ≈ 60 instructions a byte;
/// any path this does not pass is decoded and judged by [`decoded`], which also says why.
fn already_canonical(raw: &str) -> bool {
    let Some(rest) = raw.strip_prefix('/') else {
        return false;
    };
    // The byte before the current one, `/` at a segment's start.
    let mut before = b'/';
    for &b in rest.as_bytes() {
        if b == b'/' {
            // An empty segment before a `/`, or one ending in a dot (dots only, too).
            if before == b'/' || before == b'.' {
                return false;
            }
        } else if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
            return false;
        }
        before = b;
    }
    // The last segment may be empty (a trailing slash, or `/` alone), not end in a dot.
    before != b'.'
}

/// [`canonical`]'s full reading: percent-decoded segment by segment, each checked.
fn decoded(raw: &str) -> Result<String, PathError> {
    let rest = raw.strip_prefix('/').ok_or(PathError::NotAbsolute)?;
    let mut out = String::with_capacity(raw.len());
    let mut segments = rest.split('/').enumerate().peekable();
    while let Some((i, segment)) = segments.next() {
        let n = i + 1;
        out.push('/');
        if segment.is_empty() {
            // `/` alone, or one trailing slash, is a path; `//` inside one is not.
            if segments.peek().is_none() {
                continue;
            }
            return Err(PathError::EmptySegment(n));
        }
        let start = out.len();
        decode_segment(segment, n, &mut out)?;
        let decoded = &out[start..];
        if decoded.bytes().all(|b| b == b'.') {
            return Err(PathError::DotSegment(n));
        }
        if decoded.ends_with('.') {
            return Err(PathError::TrailingDot(n));
        }
    }
    Ok(out)
}

/// Percent-decodes one segment into `out`, refusing any byte outside the allow-list.
fn decode_segment(segment: &str, n: usize, out: &mut String) -> Result<(), PathError> {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let byte = if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(PathError::BadEncoding(n))?;
            i += 3;
            match hex {
                b'/' => return Err(PathError::EncodedSlash(n)),
                b'\\' => return Err(PathError::Backslash(n)),
                b => b,
            }
        } else {
            i += 1;
            match bytes[i - 1] {
                b'\\' => return Err(PathError::Backslash(n)),
                b => b,
            }
        };
        if !(byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')) {
            return Err(PathError::Disallowed {
                segment: n,
                what: describe(byte),
            });
        }
        out.push(char::from(byte));
    }
    Ok(())
}

/// A byte as the error names it: printable ASCII quoted, anything else as hex.
fn describe(byte: u8) -> String {
    if byte.is_ascii_graphic() {
        format!("`{}`", char::from(byte))
    } else {
        format!("byte 0x{byte:02X}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_paths_pass_unchanged() {
        for p in [
            "/",
            "/eicore/v1.03/Invoice",
            "/eicore/v1.03/Invoice/",
            "/eivital/v1.04/Master/gstin/27AAPFU0939F1ZV",
            "/taxpayerapi/v1.0/returns/gstr1",
            "/ewaybillapi/v1.03/ewayapi/GetEwayBill",
            "/a_b-c.d",
        ] {
            assert_eq!(canonical(p).as_deref(), Ok(p), "{p}");
        }
    }

    #[test]
    fn encoded_unreserved_bytes_are_decoded_to_the_canonical_form() {
        assert_eq!(
            canonical("/eicore/v1.03/%49nvoice").as_deref(),
            Ok("/eicore/v1.03/Invoice")
        );
        assert_eq!(canonical("/a%2db%5Fc").as_deref(), Ok("/a-b_c"));
    }

    #[test]
    fn every_traversal_spelling_is_refused() {
        for p in [
            "/eicore/../_sim/sessions",
            "/eicore/./x",
            "/eicore/%2e%2e/_sim",
            "/eicore/%2E%2E/_sim",
            "/eicore/.%2e/_sim",
            "/eicore/%2e./_sim",
            "/eicore/%2E./_sim",
            "/eicore/..",
            "/eicore/.",
            "/eicore/...",
            "/..",
        ] {
            assert!(
                matches!(canonical(p), Err(PathError::DotSegment(_))),
                "{p}: {:?}",
                canonical(p)
            );
        }
        for p in ["/eicore/..\\_sim", "/eicore/%5c..", "/eicore/%5C", "/x\\y"] {
            assert!(matches!(canonical(p), Err(PathError::Backslash(_))), "{p}");
        }
        for p in ["/eicore/a%2fb", "/eicore/%2F..%2F_sim"] {
            assert!(
                matches!(canonical(p), Err(PathError::EncodedSlash(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        assert_eq!(canonical("eicore"), Err(PathError::NotAbsolute));
        assert_eq!(canonical("*"), Err(PathError::NotAbsolute));
        assert_eq!(canonical(""), Err(PathError::NotAbsolute));
        assert_eq!(canonical("//x"), Err(PathError::EmptySegment(1)));
        assert_eq!(canonical("/a//b"), Err(PathError::EmptySegment(2)));
        assert_eq!(canonical("/a/b//"), Err(PathError::EmptySegment(3)));
        assert_eq!(canonical("/auth."), Err(PathError::TrailingDot(1)));
        assert_eq!(canonical("/a%2"), Err(PathError::BadEncoding(1)));
        assert_eq!(canonical("/a%zz"), Err(PathError::BadEncoding(1)));
        assert_eq!(canonical("/a%"), Err(PathError::BadEncoding(1)));
        for p in [
            "/a;b", "/..;/x", "/a%252e", "/a%00", "/a b", "/a%20", "/~x", "/a:b",
        ] {
            assert!(
                matches!(canonical(p), Err(PathError::Disallowed { .. })),
                "{p}: {:?}",
                canonical(p)
            );
        }
        // A multi-byte character is refused byte by byte, never split into a bad string.
        assert!(matches!(canonical("/é"), Err(PathError::Disallowed { .. })));
    }

    /// Every string of up to six pieces over path bytes, escapes and refused bytes, and every
    /// ASCII byte and a few beyond at every position of real paths: what passes as it is
    /// passes the full reading unchanged, and anything else gets the full reading's answer.
    #[test]
    fn the_shortcut_agrees_with_the_full_reading() {
        for path in ["/eicore/v1.03/Invoice", "/a/b/", "/x"] {
            for at in 0..=path.len() {
                let bytes = (0u8..0x80)
                    .map(char::from)
                    .chain(['\u{e9}', '\u{2028}', '\u{ff0e}']);
                for c in bytes {
                    let mut text = path.to_owned();
                    text.insert(at, c);
                    assert_eq!(canonical(&text), decoded(&text), "{text:?}");
                }
            }
        }
        let alphabet = [
            "/", ".", "a", "Z", "9", "-", "_", "%", "2F", "%2e", "\\", ";", " ", "\u{e9}",
        ];
        let mut texts = vec![String::new()];
        let mut passed = 0;
        for _ in 0..6 {
            let mut longer = Vec::new();
            for text in &texts {
                for piece in alphabet {
                    let text = format!("{text}{piece}");
                    if already_canonical(&text) {
                        assert_eq!(decoded(&text).as_deref(), Ok(text.as_str()), "{text:?}");
                        passed += 1;
                    }
                    assert_eq!(canonical(&text), decoded(&text), "{text:?}");
                    longer.push(text);
                }
            }
            // Keep the search to strings that start like paths, and to a bounded number.
            texts = longer
                .into_iter()
                .filter(|t| t.starts_with('/') && t.len() <= 7)
                .collect();
        }
        assert!(passed > 10_000, "{passed}");
        for refused in [
            "/a/.", "/a/..", "/a./b", "//a", "/a//", "/.", "/a.", "a/b", "",
        ] {
            assert!(!already_canonical(refused), "{refused:?}");
        }
        for kept in ["/", "/a/", "/a.b/c", "/eicore/v1.03/Invoice", "/a_b-c/d"] {
            assert!(already_canonical(kept), "{kept:?}");
        }
    }

    #[test]
    fn canonical_is_idempotent() {
        let once = canonical("/eicore/v1.03/%49nvoice/").unwrap();
        assert_eq!(canonical(&once).as_deref(), Ok(once.as_str()));
    }

    #[test]
    fn query_values_are_decoded_and_matched_by_name() {
        let p = CallerPath::parse(
            "/x",
            Some("action=RETSUM&gstin=27A&GSTIN=%32%37B&%67stin=C+D&other=1&gstin"),
        )
        .unwrap();
        assert_eq!(p.query_values("gstin"), ["27A", "27B", "C D", ""]);
        assert!(p.query_values("missing").is_empty());
        assert!(CallerPath::parse("/x", None)
            .unwrap()
            .query_values("gstin")
            .is_empty());
    }

    #[test]
    fn query_names_other_than_plain_words_are_refused() {
        let check = |q: &str| {
            CallerPath::parse("/x", Some(q))
                .unwrap()
                .check_query_names()
        };
        for q in [
            "action=RETSUM&gstin=27A&ret_period=102026",
            "action=RETSUM&GSTIN=27A&state-cd=27&x_y=%3B",
            "action=RETSUM&&gstin=27A&",
            "flag",
        ] {
            assert_eq!(check(q), Ok(()), "{q}");
        }
        for q in [
            "gstin[]=27A",
            "+gstin=27A",
            "gstin+=27A",
            "gstin%00=27A",
            "a=1&gstin.=27A",
            "%67stin=27A",
            "=27A",
        ] {
            assert!(
                matches!(check(q), Err(PathError::QueryName { .. })),
                "{q}: {:?}",
                check(q)
            );
        }
        assert_eq!(
            check("a=1&gstin%00=27A"),
            Err(PathError::QueryName {
                parameter: 2,
                what: "`%`".into()
            })
        );
        for q in [";gstin=27A", "action=RETSUM;gstin=27A"] {
            assert_eq!(check(q), Err(PathError::QuerySeparator), "{q}");
        }
        assert_eq!(
            CallerPath::parse("/x", None).unwrap().check_query_names(),
            Ok(())
        );
    }

    #[test]
    fn auth_paths_match_in_any_case_version_or_trailing_slash() {
        let p = |s: &str| CallerPath::parse(s, None).unwrap();
        let auth = "/eivital/v1.04/auth";
        assert!(p("/eivital/v1.04/auth").matches_loosely(auth));
        assert!(p("/eivital/v1.04/auth/").matches_loosely(auth));
        assert!(p("/EIVITAL/V1.04/AUTH").matches_loosely(auth));
        assert!(p("/eivital/v1.03/auth").matches_loosely(auth));
        assert!(p("/eivital/v2/Auth").matches_loosely(auth));
        assert!(p("/eivital/v1.04/%61uth").matches_loosely(auth));
        assert!(!p("/eivital/v1.04/authx").matches_loosely(auth));
        assert!(!p("/eivital/v1.04/auth/x").matches_loosely(auth));
        assert!(!p("/eivital/auth").matches_loosely(auth));
        assert!(!p("/eivital/x1.04/auth").matches_loosely(auth));
        assert!(
            p("/taxpayerapi/v0.2/authenticate").matches_loosely("/taxpayerapi/v1.0/authenticate")
        );
        assert!(!p("/").matches_loosely(auth));
        assert!(!p("/v1.04/auth").matches_loosely(auth));
        assert!(!p("/x/eivital/v1.04/auth").matches_loosely(auth));
        assert!(!p("/eivital/v/auth").matches_loosely(auth));
        assert!(p("/").matches_loosely("/"));
    }
}
