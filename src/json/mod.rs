//! Strict JSON (RFC 8259) checked in one pass over the bytes, reading a top-level object's
//! members on the way.
//!
//! Every upstream reply is checked before it is relayed (a reply that is not JSON is a 502,
//! never a success), and in gateway mode so is every caller body and decrypted `Data`. A NIC
//! reply is mostly one long string (a signed invoice is kilobytes of base64), so the cost is
//! the string scan. serde_json's pass finds a string's end 8 bytes at a time and then checks
//! the whole value's UTF-8 a second time. Here a plain ASCII string that ends within 16 bytes
//! (most names, codes and dates; a caller's invoice is mostly those) is two word compares,
//! inlined where the string starts. Any other string's first 32 bytes are looked at a word at
//! a time; for the rest `memchr` finds the closing quote or an escape with the CPU's widest
//! vector compares, and the run before it is checked for controls and bytes above ASCII in
//! blocks of 64 bytes, then 16, then byte by byte, one signed compare a byte. Only a string holding a byte above ASCII
//! has its UTF-8 checked (outside strings such a byte is a syntax error).
//!
//! What is accepted is what serde_json accepts in UTF-8 text: a property test in
//! `tests/fuzz.rs` compares the two on random and mutated documents. `cargo bench --bench
//! payload` times both.

use std::fmt;
use std::ops::Range;

/// Why a text is not JSON, and where (1-based line, and byte column within the line).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    what: &'static str,
    line: usize,
    column: usize,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} at line {} column {}",
            self.what, self.line, self.column
        )
    }
}

impl std::error::Error for Error {}

/// A text known to be one JSON value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Json(Box<str>);

impl Json {
    /// Checks `text` and keeps its value, without the whitespace around it.
    pub fn parse(text: String) -> Result<Self, Error> {
        let span = value_span(text.as_bytes())?;
        if span.len() == text.len() {
            return Ok(Self(text.into_boxed_str()));
        }
        Ok(Self(text[span].into()))
    }

    /// The JSON text.
    pub fn get(&self) -> &str {
        &self.0
    }

    /// The JSON text, owned.
    pub fn into_string(self) -> String {
        self.0.into_string()
    }
}

impl From<Box<serde_json::value::RawValue>> for Json {
    fn from(raw: Box<serde_json::value::RawValue>) -> Self {
        Self(raw.into())
    }
}

/// A member of an object: its name as written between the quotes, and its value's JSON text
/// (UTF-8, checked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member<'a> {
    /// The name's text between its quotes, escapes not decoded.
    pub name: &'a str,
    /// Whether the name holds an escape (then it must be decoded to be compared).
    pub escaped: bool,
    /// The value, from its first byte to its last (no surrounding whitespace).
    pub value: &'a [u8],
    /// Whether the value is a string holding no escape: the bytes between its quotes are then
    /// its text (already checked).
    pub plain: bool,
}

/// Checks that `text` is one JSON value, with only whitespace around it.
pub fn validate(text: &[u8]) -> Result<(), Error> {
    value_span(text).map(drop)
}

/// Where the one JSON value in `text` is, when only whitespace is around it.
fn value_span(text: &[u8]) -> Result<Range<usize>, Error> {
    let mut scan = Scanner::new(text);
    scan.whitespace();
    let from = scan.at;
    scan.value()?;
    let to = scan.at;
    scan.end()?;
    Ok(from..to)
}

/// The members of the JSON object `text`, in order, when the whole text is valid JSON and
/// its value an object.
pub fn members(text: &[u8]) -> Result<Vec<Member<'_>>, Error> {
    let mut scan = Scanner::new(text);
    let mut members = Vec::with_capacity(4);
    match scan.whitespace() {
        Some(b'{') => scan.at += 1,
        Some(_) => return Err(scan.error("expected an object")),
        None => return Err(scan.error("EOF while parsing a value")),
    }
    match scan.whitespace() {
        Some(b'}') => scan.at += 1,
        Some(b'"') => loop {
            scan.at += 1;
            let start = scan.at;
            let escaped = scan.string()?;
            // Checked by the scan; a name is short, so this second look costs little.
            let name = std::str::from_utf8(&scan.text[start..scan.at - 1])
                .map_err(|_| scan.error("invalid UTF-8"))?;
            scan.colon()?;
            let next = scan.whitespace();
            let from = scan.at;
            let plain = match next {
                Some(b'"') => {
                    scan.at += 1;
                    !scan.string()?
                }
                _ => {
                    scan.value()?;
                    false
                }
            };
            members.push(Member {
                name,
                escaped,
                value: &scan.text[from..scan.at],
                plain,
            });
            match scan.whitespace() {
                Some(b',') => {
                    scan.at += 1;
                    match scan.whitespace() {
                        Some(b'"') => {}
                        Some(_) => return Err(scan.error("key must be a string")),
                        None => return Err(scan.error("EOF while parsing an object")),
                    }
                }
                Some(b'}') => {
                    scan.at += 1;
                    break;
                }
                Some(_) => return Err(scan.error("expected `,` or `}`")),
                None => return Err(scan.error("EOF while parsing an object")),
            }
        },
        Some(_) => return Err(scan.error("key must be a string")),
        None => return Err(scan.error("EOF while parsing an object")),
    }
    scan.end()?;
    Ok(members)
}

/// A position in a text.
struct Scanner<'a> {
    text: &'a [u8],
    at: usize,
}

impl<'a> Scanner<'a> {
    fn new(text: &'a [u8]) -> Self {
        Self { text, at: 0 }
    }

    fn error(&self, what: &'static str) -> Error {
        let before = &self.text[..self.at.min(self.text.len())];
        let line_start = before
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |i| i + 1);
        Error {
            what,
            line: 1 + before.iter().filter(|&&b| b == b'\n').count(),
            column: before.len() - line_start + 1,
        }
    }

    /// Skips whitespace; the next byte, if any.
    fn whitespace(&mut self) -> Option<u8> {
        while let Some(&b) = self.text.get(self.at) {
            match b {
                b' ' | b'\n' | b'\t' | b'\r' => self.at += 1,
                _ => return Some(b),
            }
        }
        None
    }

    /// Only whitespace may follow the value.
    fn end(&mut self) -> Result<(), Error> {
        match self.whitespace() {
            None => Ok(()),
            Some(_) => Err(self.error("trailing characters")),
        }
    }

    fn colon(&mut self) -> Result<(), Error> {
        match self.whitespace() {
            Some(b':') => {
                self.at += 1;
                Ok(())
            }
            Some(_) => Err(self.error("expected `:`")),
            None => Err(self.error("EOF while parsing an object")),
        }
    }

    /// One value and everything nested in it, without recursion (nesting has no limit and
    /// costs a bit per level).
    fn value(&mut self) -> Result<(), Error> {
        let mut open = Open::default();
        loop {
            // A value starts here.
            match self.whitespace() {
                Some(b'{') => {
                    self.at += 1;
                    match self.whitespace() {
                        Some(b'}') => self.at += 1,
                        Some(b'"') => {
                            open.push(true);
                            self.key()?;
                            continue;
                        }
                        Some(_) => return Err(self.error("key must be a string")),
                        None => return Err(self.error("EOF while parsing an object")),
                    }
                }
                Some(b'[') => {
                    self.at += 1;
                    match self.whitespace() {
                        Some(b']') => self.at += 1,
                        Some(_) => {
                            open.push(false);
                            continue;
                        }
                        None => return Err(self.error("EOF while parsing a list")),
                    }
                }
                Some(b'"') => {
                    self.at += 1;
                    self.string()?;
                }
                Some(b'-' | b'0'..=b'9') => self.number()?,
                Some(b't') => self.word("true")?,
                Some(b'f') => self.word("false")?,
                Some(b'n') => self.word("null")?,
                Some(_) => return Err(self.error("expected value")),
                None => return Err(self.error("EOF while parsing a value")),
            }
            // A value ended: close what it ends, or go on to the next element.
            loop {
                let Some(object) = open.innermost() else {
                    return Ok(());
                };
                match self.whitespace() {
                    Some(b',') => {
                        self.at += 1;
                        if object {
                            match self.whitespace() {
                                Some(b'"') => self.key()?,
                                Some(_) => return Err(self.error("key must be a string")),
                                None => return Err(self.error("EOF while parsing an object")),
                            }
                        }
                        break;
                    }
                    Some(b'}') if object => {
                        self.at += 1;
                        open.pop();
                    }
                    Some(b']') if !object => {
                        self.at += 1;
                        open.pop();
                    }
                    Some(_) if object => return Err(self.error("expected `,` or `}`")),
                    Some(_) => return Err(self.error("expected `,` or `]`")),
                    None if object => return Err(self.error("EOF while parsing an object")),
                    None => return Err(self.error("EOF while parsing a list")),
                }
            }
        }
    }

    /// A member's name (at its opening quote) and the colon after it.
    fn key(&mut self) -> Result<(), Error> {
        self.at += 1;
        self.string()?;
        self.colon()
    }

    /// The rest of a string whose opening quote is just behind; ends past the closing quote.
    /// Whether it held an escape.
    #[inline(always)]
    fn string(&mut self) -> Result<bool, Error> {
        // Most strings (names, codes, dates) are plain ASCII ending within 16 bytes: those
        // are two word compares here, inlined, without the general scan's set-up.
        for word in 0..2 {
            let from = self.at + 8 * word;
            let Some(bytes) = self.text.get(from..from + 8) else {
                break;
            };
            let word = u64::from_le_bytes(bytes.try_into().unwrap_or_default());
            let hits = special_bytes(word);
            // The bytes before the first hit (all eight when there is none).
            let before = if hits == 0 {
                u64::MAX
            } else {
                (hits & hits.wrapping_neg()) - 1
            };
            if word & HIGH_BITS & before != 0 {
                break;
            }
            if hits != 0 {
                let end = from + (hits.trailing_zeros() / 8) as usize;
                if self.text.get(end) != Some(&b'"') {
                    break;
                }
                self.at = end + 1;
                return Ok(false);
            }
        }
        self.string_scan()
    }

    /// [`Self::string`] for any string: long, escaped, beyond ASCII, at the text's end, or
    /// not one at all.
    #[inline(never)]
    fn string_scan(&mut self) -> Result<bool, Error> {
        let start = self.at;
        let mut escaped = false;
        let mut beyond_ascii = false;
        loop {
            let (plain, high) = special(&self.text[self.at..]);
            self.at += plain;
            beyond_ascii |= high;
            match self.text.get(self.at) {
                Some(b'"') => {
                    // Escapes are ASCII, and no sequence can span the ASCII quotes.
                    if beyond_ascii {
                        if let Err(e) = std::str::from_utf8(&self.text[start..self.at]) {
                            self.at = start + e.valid_up_to();
                            return Err(self.error("invalid UTF-8"));
                        }
                    }
                    self.at += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.at += 1;
                    self.escape()?;
                }
                Some(_) => {
                    return Err(self.error("control character (\\u0000-\\u001F) in a string"))
                }
                None => return Err(self.error("EOF while parsing a string")),
            }
        }
    }

    /// The rest of an escape whose backslash is just behind.
    fn escape(&mut self) -> Result<(), Error> {
        match self.text.get(self.at) {
            Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.at += 1,
            Some(b'u') => {
                self.at += 1;
                for _ in 0..4 {
                    match self.text.get(self.at) {
                        Some(b) if b.is_ascii_hexdigit() => self.at += 1,
                        Some(_) => return Err(self.error("invalid escape")),
                        None => return Err(self.error("EOF while parsing a string")),
                    }
                }
            }
            Some(_) => return Err(self.error("invalid escape")),
            None => return Err(self.error("EOF while parsing a string")),
        }
        Ok(())
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<(), Error> {
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => {
                self.at += 1;
                if self.peek().is_some_and(|b| b.is_ascii_digit()) {
                    return Err(self.error("invalid number"));
                }
            }
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.error("invalid number")),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.error("invalid number"));
            }
            self.digits();
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
                return Err(self.error("invalid number"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.at += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.at).copied()
    }

    fn word(&mut self, word: &str) -> Result<(), Error> {
        for &expected in word.as_bytes() {
            match self.peek() {
                Some(b) if b == expected => self.at += 1,
                Some(_) => return Err(self.error("expected ident")),
                None => return Err(self.error("EOF while parsing a value")),
            }
        }
        Ok(())
    }
}

/// Where in `s` the first `"`, `\\` or control character is (`s.len()` when none), and
/// whether a byte above ASCII may come before it.
fn special(s: &[u8]) -> (usize, bool) {
    // Most strings (names, codes, dates) end within a few bytes: those are looked at eight
    // bytes a word, cheaper than setting up the vector loop and without a branch per byte.
    let mut high = false;
    let mut plain = 0;
    for word in s.chunks_exact(8).take(HEAD_WORDS) {
        let word = u64::from_le_bytes(word.try_into().unwrap_or_default());
        let hits = special_bytes(word);
        if hits != 0 {
            let at = (hits.trailing_zeros() / 8) as usize;
            high |= !s[plain..plain + at].is_ascii();
            return (plain + at, high);
        }
        high |= word & HIGH_BITS != 0;
        plain += 8;
    }
    let rest = &s[plain..];
    // The quote or escape that ends the plain run: `memchr`'s vector search, the widest the
    // CPU has (picked at run time), where one pass looking for all three kinds of special
    // byte took ≈ 0.9 instructions a byte. Then the run up to it, for a control character
    // (which ends it first) and bytes above ASCII.
    let stop = memchr::memchr2(b'"', b'\\', rest).unwrap_or(rest.len());
    let (end, run_high) = first_control(&rest[..stop]);
    (plain + end, high | run_high)
}

/// Where in `run` (which holds no `"` or `\\`) the first control character is (`run.len()`
/// when none), and whether a byte above ASCII may come before it.
fn first_control(run: &[u8]) -> (usize, bool) {
    let (blocks, mut high) = plain_blocks::<64>(run);
    let (more, more_high) = plain_blocks::<16>(&run[blocks..]);
    high |= more_high;
    let clear = blocks + more;
    let rest = &run[clear..];
    let end = rest.iter().position(|&b| b < 0x20).unwrap_or(rest.len());
    high |= !rest[..end].is_ascii();
    (clear + end, high)
}

/// How many 8-byte words of a string are looked at before the block loop.
const HEAD_WORDS: usize = 4;

/// The top bit of every byte of a word.
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// A word with the top bit set in each byte that is `"`, `\\` or below 0x20, exact up to and
/// including the lowest such byte (the borrow of a hit may mark bytes above it).
fn special_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let zero_in = |v: u64| v.wrapping_sub(ONES) & !v;
    let quote = zero_in(word ^ (ONES * u64::from(b'"')));
    let backslash = zero_in(word ^ (ONES * u64::from(b'\\')));
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    (quote | backslash | control) & HIGH_BITS
}

/// The length of the leading whole `N`-byte blocks of `s` that hold no control character,
/// and whether those blocks or the one after them hold a byte above ASCII (which may lie past
/// the control: then a string is checked for nothing). A control and a byte above ASCII are
/// both below 0x20 as signed bytes, so a block of plain ASCII costs one compare a byte, which
/// the compiler makes vector compares (no early exit inside a block); only a block holding
/// either is looked at again.
#[inline(always)]
fn plain_blocks<const N: usize>(s: &[u8]) -> (usize, bool) {
    let (mut clear, mut high) = (0, false);
    for block in s.chunks_exact(N) {
        let mut odd = false;
        for &b in block {
            odd |= (b as i8) < 0x20;
        }
        if odd {
            let (mut control, mut top) = (false, false);
            for &b in block {
                control |= b < 0x20;
                top |= b >= 0x80;
            }
            high |= top;
            if control {
                break;
            }
        }
        clear += N;
    }
    (clear, high)
}

/// The arrays and objects open around the scan position, innermost last: `true` for an
/// object. The first 128 levels are bits; deeper ones (a hostile or absurd reply) a vector.
#[derive(Default)]
struct Open {
    depth: usize,
    bits: u128,
    deeper: Vec<bool>,
}

impl Open {
    fn push(&mut self, object: bool) {
        if self.depth < 128 {
            self.bits = (self.bits & !(1 << self.depth)) | (u128::from(object) << self.depth);
        } else {
            self.deeper.push(object);
        }
        self.depth += 1;
    }

    fn pop(&mut self) {
        if self.depth > 128 {
            self.deeper.pop();
        }
        self.depth = self.depth.saturating_sub(1);
    }

    fn innermost(&self) -> Option<bool> {
        match self.depth {
            0 => None,
            d if d <= 128 => Some(self.bits >> (d - 1) & 1 == 1),
            _ => self.deeper.last().copied(),
        }
    }
}

#[cfg(test)]
mod tests;
