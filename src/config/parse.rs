//! The configuration's TOML text to a [`Config`], with the `[[credential]]` tables parsed a
//! slice at a time, and parse errors that say where without quoting the line.
//!
//! The TOML parser holds a token for every lexeme of the text it parses, and a tree of every
//! value with its position, at once: about 5 KB per credential table, 500 MB at the peak of
//! a 100 000-credential file. A GSP sizes a container by what the gateway holds at rest, so
//! that peak would be the limit a restart dies of. A first pass (the lexer only, keeping
//! where the headers are) finds the top-level table headers; the credential tables are then
//! parsed [`CHUNK`] at a time and the rest of the file on its own, so the peak is one slice's.
//!
//! The result is the whole-file parse's: every slice starts at a `[[credential]]` header, so
//! it means what it means in the file. Where the first pass cannot tell that for sure, the
//! file is parsed whole (with the old peak), and its error is the parser's: a top-level key
//! that is not bare, or is `credential`; a table name whose first part is quoted, or that
//! starts with `credential` without being exactly `[[credential]]`; brackets that do not
//! balance.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use toml_parser::lexer::TokenKind;

use super::{Config, CredentialConfig};

/// Credential tables parsed together: about 5 MB of parser memory at a time.
pub(super) const CHUNK: usize = 1_000;

/// A parse error: the parser's complaint and where it is in the whole file.
#[derive(Debug)]
pub(super) struct ParseError {
    complaint: String,
    span: Option<Range<usize>>,
}

impl ParseError {
    fn new(e: &toml::de::Error, offset: usize) -> Self {
        Self {
            complaint: e.message().trim_end().replace('\n', "; "),
            span: e.span().map(|s| s.start + offset..s.end + offset),
        }
    }

    /// The complaint and its line, column and key, without the source line the parser
    /// quotes: that line can hold a password or a token, and the message reaches logs and
    /// the reload answer.
    pub(super) fn message(&self, text: &str) -> String {
        let complaint = &self.complaint;
        let Some(before) = self.span.as_ref().and_then(|span| text.get(..span.start)) else {
            return complaint.clone();
        };
        let line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let column = before[line_start..].chars().count() + 1;
        // The key of a `key = value` line is named; its value never is. A line inside a
        // multi-line string is a value's, whatever it looks like.
        let key = Some(&text[line_start..])
            .filter(|_| !in_multiline_string(text, line_start))
            .and_then(|line| line.split_once('='))
            .map(|(k, _)| k.trim())
            .filter(|k| {
                !k.is_empty()
                    && k.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
            });
        match key {
            Some(key) => format!("line {line}, column {column}, key `{key}`: {complaint}"),
            None => format!("line {line}, column {column}: {complaint}"),
        }
    }
}

/// Whether offset `at` of `text` falls inside a multi-line string.
fn in_multiline_string(text: &str, at: usize) -> bool {
    toml_parser::Source::new(text)
        .lex()
        .take_while(|t| t.span().start() < at)
        .any(|t| {
            matches!(
                t.kind(),
                TokenKind::MlBasicString | TokenKind::MlLiteralString
            ) && t.span().end() > at
        })
}

/// Parses the whole configuration text, credential tables [`CHUNK`] at a time.
pub(super) fn document(text: &str) -> Result<Config, ParseError> {
    document_in(text, CHUNK)
}

/// The text without its `[[credential]]` tables, for a look at the other settings that need
/// not hold 100 000 tables in the parser's memory; the whole text where the split is unsure.
pub fn without_credentials(text: &str) -> Cow<'_, str> {
    match Layout::scan(text, CHUNK) {
        Some(layout) => Cow::Owned(layout.rest(text).text),
        None => Cow::Borrowed(text),
    }
}

/// [`document`] with `chunk` credential tables per slice (tests use small ones). A file with
/// several mistakes may have a different one named first than a whole parse would name: the
/// rest of the file is parsed before the credential slices.
pub(super) fn document_in(text: &str, chunk: usize) -> Result<Config, ParseError> {
    let Some(layout) = Layout::scan(text, chunk.max(1)) else {
        return toml::from_str(text).map_err(|e| ParseError::new(&e, 0));
    };
    let rest = layout.rest(text);
    let mut config: Config = toml::from_str(&rest.text).map_err(|e| {
        let mut err = ParseError::new(&e, 0);
        // An empty span at 0 is about the whole document (a missing `[server]`): it stays
        // at the file's start rather than the first piece's.
        err.span = err.span.map(|s| match s {
            s if s == (0..0) => s,
            s => rest.original(s.start)..rest.original(s.end),
        });
        err
    })?;
    for slice in &layout.slices {
        let part: Credentials =
            toml::from_str(&text[slice.clone()]).map_err(|e| ParseError::new(&e, slice.start))?;
        config.credentials.extend(part.credential);
    }
    Ok(config)
}

/// A slice of credential tables on its own.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Credentials {
    credential: Vec<CredentialConfig>,
}

/// Where the credential tables are: slices of the text, in file order.
struct Layout {
    slices: Vec<Range<usize>>,
}

/// The text without its credential slices, and where each of its pieces came from.
struct Rest {
    text: String,
    /// (offset in `text`, offset in the file) at the start of each piece.
    pieces: Vec<(usize, usize)>,
}

impl Rest {
    fn original(&self, at: usize) -> usize {
        let i = self.pieces.partition_point(|&(start, _)| start <= at);
        match i.checked_sub(1).and_then(|i| self.pieces.get(i)) {
            Some(&(start, from)) => from + (at - start),
            None => at,
        }
    }
}

/// What a top-level table header names, as far as the split needs to know.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Header {
    /// `[[credential]]`: a new credential table; a slice may start here.
    Credential,
    /// Any table whose name's first part is bare and not `credential`.
    Other,
}

impl Layout {
    /// The credential slices of `text`, `chunk` tables at most each; `None` when the split
    /// could change the meaning (or there is nothing to split) and the text is parsed whole.
    fn scan(text: &str, chunk: usize) -> Option<Self> {
        let mut slices: Vec<Range<usize>> = Vec::new();
        let mut open: Option<(usize, usize)> = None; // (start, tables in it so far)
        for (at, header) in headers(text)? {
            open = match (header, open) {
                (Header::Credential, Some((start, tables))) if tables < chunk => {
                    Some((start, tables + 1))
                }
                (Header::Credential, open) => {
                    slices.extend(open.map(|(start, _)| start..at));
                    Some((at, 1))
                }
                (Header::Other, open) => {
                    slices.extend(open.map(|(start, _)| start..at));
                    None
                }
            };
        }
        slices.extend(open.map(|(start, _)| start..text.len()));
        (!slices.is_empty()).then_some(Self { slices })
    }

    /// The text outside the credential slices, pieced together.
    fn rest(&self, text: &str) -> Rest {
        let mut rest = Rest {
            text: String::new(),
            pieces: Vec::new(),
        };
        let mut from = 0;
        for slice in self
            .slices
            .iter()
            .chain(std::iter::once(&(text.len()..text.len())))
        {
            // A piece ends where a header starts a line (or at the end of the file), and
            // the next one starts with a header: joined, each header still starts its line.
            // Nothing is added between them: a lone `\r` at a piece's end stays the error
            // it is in the file.
            if slice.start > from {
                rest.pieces.push((rest.text.len(), from));
                rest.text.push_str(&text[from..slice.start]);
            }
            from = slice.end;
        }
        rest
    }
}

/// Every top-level table header's offset and kind, in file order; `None` where the first
/// pass is unsure (see the module's doc).
fn headers(text: &str) -> Option<Vec<(usize, Header)>> {
    let source = toml_parser::Source::new(text);
    let mut tokens = source.lex().peekable();
    let mut headers = Vec::new();
    let mut depth = 0usize; // brackets and braces open in a value
    let mut line_start = true;
    let mut before_first_header = true;
    while let Some(token) = tokens.next() {
        let kind = token.kind();
        match kind {
            TokenKind::Whitespace | TokenKind::Comment => continue,
            TokenKind::Newline => {
                line_start |= depth == 0;
                continue;
            }
            TokenKind::Eof => break,
            _ => {}
        }
        let at_line_start = std::mem::replace(&mut line_start, false);
        if at_line_start && depth == 0 {
            if kind == TokenKind::LeftSquareBracket {
                headers.push((token.span().start(), header(&source, &mut tokens)?));
                before_first_header = false;
                continue;
            }
            // A top-level key that is (or may be) `credential` would merge with the tables.
            if before_first_header {
                let key = source.get(token.span())?;
                if kind != TokenKind::Atom || key.as_str() == "credential" {
                    return None;
                }
            }
        }
        match kind {
            TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => depth += 1,
            TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                depth = depth.checked_sub(1)?;
            }
            _ => {}
        }
    }
    (depth == 0).then_some(headers)
}

/// Reads a header after its first `[` up to its closing bracket(s).
fn header(
    source: &toml_parser::Source<'_>,
    tokens: &mut std::iter::Peekable<toml_parser::lexer::Lexer<'_>>,
) -> Option<Header> {
    let array = tokens
        .next_if(|t| t.kind() == TokenKind::LeftSquareBracket)
        .is_some();
    // The name's parts (each bare or quoted) and the dots between them.
    let mut parts: Vec<(&str, bool)> = Vec::new();
    let mut dots = 0;
    loop {
        let token = tokens.next()?;
        match token.kind() {
            TokenKind::Whitespace => {}
            TokenKind::Dot => dots += 1,
            TokenKind::Atom => parts.push((source.get(token.span())?.as_str(), false)),
            TokenKind::BasicString | TokenKind::LiteralString => {
                parts.push((source.get(token.span())?.as_str(), true));
            }
            TokenKind::RightSquareBracket => break,
            _ => return None,
        }
    }
    if array && tokens.next()?.kind() != TokenKind::RightSquareBracket {
        return None;
    }
    match parts.first() {
        Some(&("credential", false)) if array && parts.len() == 1 && dots == 0 => {
            Some(Header::Credential)
        }
        // `[credential]`, `[credential.x]`, and a quoted first part, which may spell
        // `credential` with escapes, are left to the whole parse.
        Some(&("credential", false)) | Some(&(_, true)) => None,
        _ => Some(Header::Other),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use secrecy::ExposeSecret;

    use super::*;
    use crate::config::validate::tests::ONE_UPSTREAM;

    /// What a parse gives, secrets included, for comparing two parses.
    fn seen(config: &Config) -> String {
        let passwords: Vec<&str> = config
            .credentials
            .iter()
            .map(|c| c.password.expose_secret())
            .collect();
        format!("{config:?} {passwords:?}")
    }

    fn whole(text: &str) -> Result<Config, ParseError> {
        toml::from_str(text).map_err(|e| ParseError::new(&e, 0))
    }

    /// Both parses agree: the same configuration, or both refuse the file. With several
    /// mistakes in a file they may name different ones first: the whole parse goes through
    /// the tables by name, the split one through the rest of the file first.
    fn agree(text: &str, chunk: usize) -> Result<(), String> {
        match (whole(text), document_in(text, chunk)) {
            (Ok(a), Ok(b)) if seen(&a) == seen(&b) => Ok(()),
            (Err(_), Err(_)) => Ok(()),
            (Ok(_), Ok(_)) => Err("different configurations".into()),
            (a, b) => Err(format!(
                "whole: {:?}, in slices of {chunk}: {:?}",
                a.err().map(|e| e.message(text)),
                b.err().map(|e| e.message(text))
            )),
        }
    }

    /// A file full of traps for the first pass; `{ONE_UPSTREAM}` is filled in by [`tricky`].
    const TRICKY: &str = r#"# top
[server]
listen = "127.0.0.1:1"

  [[credential]]   # indented, with a comment
gstin = "27AAAPA0001A1Z5"
username = "u1"
password = """
[[credential]]
gstin = "not a table"
"""
upstreams = [
  "einvoice",
]

[[client]]
name = "between"
api_key_sha256 = "00"
gstins = [
"*", # [[credential]]
]

[[credential]]
gstin = "27AAAPA0002A1Z3"
username = 'u2'
password = '[[credential]]'
upstreams = ["einvoice", "ewaybill"]
session_lifetime = "30d"
[[credential]]
gstin = "27AAAPA0003A1Z1"
username = "u3"
upstreams = []
{ONE_UPSTREAM}[upstream.headers]
"X-A" = "b"
[[credential]]
gstin = "27AAAPA0004A1Z9"
username = "u4"
upstreams = [ "einvoice" ]"#;

    fn tricky() -> String {
        TRICKY.replace("{ONE_UPSTREAM}", ONE_UPSTREAM)
    }

    #[test]
    fn slices_mean_what_the_whole_file_means() {
        let tricky = tricky();
        let config = document_in(&tricky, 1).expect("parses");
        let gstins: Vec<&str> = config
            .credentials
            .iter()
            .map(|c| c.gstin.as_str())
            .collect();
        assert_eq!(
            gstins,
            [
                "27AAAPA0001A1Z5",
                "27AAAPA0002A1Z3",
                "27AAAPA0003A1Z1",
                "27AAAPA0004A1Z9"
            ]
        );
        assert_eq!(
            config.credentials[1].password.expose_secret(),
            "[[credential]]"
        );
        assert_eq!(config.clients.len(), 1);
        assert_eq!(config.upstreams.len(), 1);
        for chunk in [1, 2, 3, 4, CHUNK] {
            agree(&tricky, chunk).unwrap();
        }
        let slices = Layout::scan(&tricky, 2).expect("splits").slices;
        assert_eq!(slices.len(), 3, "{slices:?}");
        // A value's nested array at the start of a line is not a header.
        let text = "[server]\nx = [\n[\"not a header\"],\n]\n[[credential]]\n";
        let slices = Layout::scan(text, 1).expect("splits").slices;
        assert_eq!(slices.len(), 1);
        assert_eq!(slices[0], text.find("[[credential]]").unwrap()..text.len());
    }

    #[test]
    fn what_could_merge_with_the_tables_is_parsed_whole() {
        for text in [
            "credential = []\n[server]\n[[credential]]\ngstin = \"x\"\n",
            "credential.gstin = \"x\"\n[server]\n",
            "\"credential\" = 1\n[server]\n[[credential]]\n",
            "[server]\n[credential]\ngstin = \"x\"\n[[credential]]\n",
            "[server]\n[[credential]]\ngstin = \"x\"\n[credential.extra]\n",
            "[server]\n[[\"credential\"]]\ngstin = \"x\"\n",
            "[server]\nx = [1, [2]\n[[credential]]\ngstin = \"x\"\n",
            "[server]\n",
        ] {
            assert!(Layout::scan(text, 1).is_none(), "{text}");
            agree(text, 1).unwrap();
        }
    }

    #[test]
    fn an_error_in_a_later_slice_or_after_it_is_placed_in_the_file() {
        let mut text = String::from("[server]\n");
        for i in 0..5 {
            text.push_str(&format!(
                "[[credential]]\ngstin = \"g{i}\"\nusername = \"u\"\nupstreams = []\n"
            ));
        }
        let typo = text.replace("gstin = \"g3\"", "gstn = \"g3\"");
        let err = document_in(&typo, 2).expect_err("refused").message(&typo);
        assert!(err.starts_with("line 15, column 1, key `gstn`"), "{err}");
        agree(&typo, 2).unwrap();
        let after = format!("{text}[[client]]\nname = \"c\"\nbogus = 1\n");
        let err = document_in(&after, 2).expect_err("refused").message(&after);
        assert!(err.starts_with("line 24, column 1, key `bogus`"), "{err}");
        agree(&after, 2).unwrap();
    }

    #[test]
    fn what_only_the_whole_file_shows_is_still_seen() {
        let credential = "[[credential]]\ngstin = \"g\"\nusername = \"u\"\nupstreams = []\n";
        // A lone carriage return before a cut is the error it is in the file.
        for text in [
            format!("[server]\r{credential}"),
            format!("[server] # c\r{credential}"),
            format!("{credential}[server]\r"),
            format!("\r{credential}[server]\n"),
        ] {
            assert!(document_in(&text, 1).is_err(), "{text:?}");
            agree(&text, 1).unwrap();
        }
        // A missing `[server]` is the document's fault: line 1, not the first piece's line.
        let text = format!("{credential}[alerts]\n");
        let err = document_in(&text, 1).expect_err("refused").message(&text);
        assert!(err.starts_with("line 1, column 1:"), "{err}");
        assert!(err.contains("server"), "{err}");
    }

    #[test]
    fn a_line_of_a_multi_line_string_names_no_key() {
        let text = "[server]\nadmin_token = \"\"\"\nabc123=\\q\"\"\"\n";
        let err = document(text).expect_err("refused").message(text);
        assert!(err.starts_with("line 3, column "), "{err}");
        assert!(!err.contains("abc123"), "{err}");
    }

    /// Pieces of a configuration file: mostly valid ones, some of them traps for the first
    /// pass, and some mistakes (a whole parse refuses a file with one).
    fn piece() -> impl Strategy<Value = &'static str> {
        let valid = prop::sample::select(vec![
            "[[credential]]\ngstin = \"a\"\nusername = \"u\"\nupstreams = [\"einvoice\"]\n",
            "[[credential]]\ngstin = \"b\"\nusername = \"u\"\npassword = \"\"\"\n[[credential]]\n\"\"\"\nupstreams = [\n  \"x\",\n]\n",
            "  [[credential]] # c\ngstin = 'c'\nusername = 'u'\nupstreams = []\n",
            "[[credential]]\r\ngstin = \"g\"\r\nusername = \"u\"\r\nupstreams = []\r\n",
            "[[client]]\nname = \"c\"\napi_key_sha256 = \"00\"\ngstins = [\n\"*\",\n]\n",
            "[[upstream]]\nname = \"u\"\napi = \"gstn\"\nbase_url = \"b\"\nroutes = []\nauth_path = \"a\"\npublic_key = \"k\"\nclient_id = \"i\"\nclient_secret = \"s\"\n[upstream.headers]\n\"X-A\" = \"b\"\n",
            "[alerts]\n",
            "# a comment [[credential]]\n",
        ]);
        let mistake = prop::sample::select(vec![
            "[[credential]]\ngstin = \"d\"\nupstreams = []\n",
            "[[credential]]\ngstin = \"e\"\nusername = \"u\"\nupstreams = []\nextra = 1\n",
            "[alerts]\nx = [\n[\"*\"],\n]\n",
            "[credential]\ngstin = \"f\"\n",
            "[credential.sub]\n",
            "x = 1\n",
            "[[credential]]\ngstin = \"h\"\nusername = \"u\"\nupstreams = [\"a\",\n",
            "]\n",
            "[alerts]\r",
            "# c\r",
        ]);
        prop_oneof![12 => valid, 1 => mistake]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        /// Whatever the file, the parse in slices gives what the whole parse gives.
        #[test]
        fn any_file_parses_in_slices_as_it_parses_whole(
            pieces in prop::collection::vec(piece(), 0..12),
            chunk in 1usize..4,
        ) {
            let text = format!("[server]\n{}", pieces.concat());
            prop_assert_eq!(agree(&text, chunk), Ok(()), "{}", text);
        }
    }
}
