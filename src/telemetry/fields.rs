//! The human-readable format's fields, written as `tracing_subscriber`'s default formatter
//! writes them, byte for byte, but without its per-character work where that cannot change
//! a byte.
//!
//! The default formats every field through `Debug` (a string is escaped character by
//! character, a number goes through the formatting machinery and the colour styles even when
//! colours are off): about a third of the access line's cost. Here a string of printable
//! ASCII with no quote or backslash, whose `Debug` form is itself in quotes, an integer, a
//! boolean and a whole number of thousandths (the latency) are written directly; everything
//! else (the message, errors, other floats, other text, colours on) goes to the default
//! formatter.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultVisitor, Writer};

/// Makes the field visitor for each event and span.
#[derive(Debug, Default, Clone, Copy)]
pub struct Fields;

impl<'a> MakeVisitor<Writer<'a>> for Fields {
    type Visitor = FieldVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        FieldVisitor {
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// Writes one event's or span's fields.
pub struct FieldVisitor<'a> {
    writer: Writer<'a>,
    /// Nothing written yet: the next field needs no separating space.
    is_empty: bool,
    result: fmt::Result,
}

impl FieldVisitor<'_> {
    /// Whether a field may be written here rather than by the default: not the message, not
    /// `log` metadata (which the default skips), not a raw identifier (which it renames), and
    /// no colours.
    fn direct(&self, field: &Field) -> bool {
        let name = field.name();
        self.result.is_ok()
            && !self.writer.has_ansi_escapes()
            && name != "message"
            && !name.starts_with("log.")
            && !name.starts_with("r#")
    }

    /// Writes `name=` after a separating space if needed.
    fn name(&mut self, field: &Field) -> fmt::Result {
        if !std::mem::replace(&mut self.is_empty, false) {
            self.writer.write_char(' ')?;
        }
        self.writer.write_str(field.name())?;
        self.writer.write_char('=')
    }

    /// Hands the field to the default formatter, which knows whether it wrote anything.
    fn default(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() {
            return;
        }
        let mut default = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut default);
        self.result = default.finish();
        // The default writes every field but `log` metadata.
        if !field.name().starts_with("log.") {
            self.is_empty = false;
        }
    }

    fn integer(&mut self, field: &Field, negative: bool, magnitude: u64) {
        if !self.direct(field) {
            return self.default(field, |d| {
                if negative {
                    d.record_i64(field, (magnitude as i64).wrapping_neg())
                } else {
                    d.record_u64(field, magnitude)
                }
            });
        }
        let mut digits = [0u8; 20];
        let at = decimal_before(&mut digits, 20, magnitude);
        self.result = self.name(field).and_then(|()| {
            if negative {
                self.writer.write_char('-')?;
            }
            // Only ASCII digits were written into it.
            self.writer
                .write_str(std::str::from_utf8(&digits[at..]).unwrap_or_default())
        });
    }
}

/// `value`'s `Debug` text, written into `text`, when `value` is a whole number of thousandths
/// from 0 to 10⁹ (the access line's latency, milliseconds to the microsecond); `None` for
/// any other float. The float formatter searches for the shortest digits that read back as
/// `value`; for such a value they are the thousandths' own digits without trailing zeros
/// (two numbers 0.001 apart are far more than a rounding step apart below 10⁹), at least one
/// after the point, which is what is written here.
pub(super) fn thousandths(value: f64, text: &mut [u8; 24]) -> Option<&str> {
    // `-0.0` passes `>= 0.0` but its `Debug` form has a sign.
    if !(value.is_sign_positive() && value < 1e9) {
        return None;
    }
    let whole = (value * 1000.0).round();
    if whole / 1000.0 != value {
        return None;
    }
    // Below 10¹² and not negative: exact as an integer.
    whole_thousandths(whole as u64, text)
}

/// The `Debug` text of `whole / 1000` as an `f64`, written into `text`, for `whole` below
/// 10¹² (see [`thousandths`], which checks it for every value it writes); `None` above.
pub(super) fn whole_thousandths(whole: u64, text: &mut [u8; 24]) -> Option<&str> {
    if whole >= 1_000_000_000_000 {
        return None;
    }
    let (int, mut frac) = (whole / 1000, whole % 1000);
    let mut at = text.len();
    // The fraction's digits, trailing zeros dropped, at least one.
    let mut digits = 3;
    while digits > 1 && frac % 10 == 0 {
        frac /= 10;
        digits -= 1;
    }
    for _ in 0..digits {
        at -= 1;
        text[at] = b'0' + (frac % 10) as u8;
        frac /= 10;
    }
    at -= 1;
    text[at] = b'.';
    let at = decimal_before(text, at, int);
    std::str::from_utf8(&text[at..]).ok()
}

/// Writes `n`'s decimal digits into `buf` so that they end just before `end`; where they
/// start. `buf` must have room: 20 bytes for any `u64`.
pub(super) fn decimal_before(buf: &mut [u8], end: usize, n: u64) -> usize {
    let mut at = end;
    let mut rest = n;
    loop {
        at -= 1;
        buf[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            return at;
        }
    }
}

/// Whether `value`'s `Debug` form is `value` in quotes: printable ASCII, no `"` or `\`.
pub(super) fn debug_is_quoted(value: &str) -> bool {
    let quoted = |b: u8| (0x20..0x7f).contains(&b) & (b != b'"') & (b != b'\\');
    // Sixteen bytes at a time without an early exit: the compiler makes them vector compares.
    let mut blocks = value.as_bytes().chunks_exact(16);
    blocks
        .by_ref()
        .all(|block| block.iter().fold(true, |all, &b| all & quoted(b)))
        && blocks.remainder().iter().all(|&b| quoted(b))
}

impl Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if !self.direct(field) || !debug_is_quoted(value) {
            return self.default(field, |d| d.record_str(field, value));
        }
        self.result = self.name(field).and_then(|()| {
            self.writer.write_char('"')?;
            self.writer.write_str(value)?;
            self.writer.write_char('"')
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.integer(field, false, value);
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.integer(field, value < 0, value.unsigned_abs());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if !self.direct(field) {
            return self.default(field, |d| d.record_bool(field, value));
        }
        self.result = self
            .name(field)
            .and_then(|()| self.writer.write_str(if value { "true" } else { "false" }));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        let mut text = [0u8; 24];
        match thousandths(value, &mut text) {
            Some(text) if self.direct(field) => {
                self.result = self.name(field).and_then(|()| self.writer.write_str(text));
            }
            _ => self.default(field, |d| d.record_f64(field, value)),
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.default(field, |d| d.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.default(field, |d| d.record_debug(field, value));
    }
}

impl VisitOutput<fmt::Result> for FieldVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for FieldVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::format::DefaultFields;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// A log writer into memory.
    #[derive(Clone, Default)]
    pub(in crate::telemetry) struct Captured(pub(in crate::telemetry) Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] io::Error);

    /// Every kind of field, in the spellings the fast path must leave to the default.
    fn events() {
        let span = tracing::info_span!("serving", request_id = "abc-123", n = 7u64);
        let _entered = span.enter();
        tracing::info!(
            target: "gstgate::access",
            request_id = "3f2a-ok",
            client = "acme",
            gstin = Option::<&str>::None,
            path = "/eicore/v1.03/Invoice?x=1&y='z'",
            quoted = "say \"hi\"",
            slash = "C:\\tmp",
            control = "a\tb\nc\u{7f}",
            unicode = "caf\u{e9} \u{200b}",
            empty = "",
            status = 200u16,
            big = u64::MAX,
            negative = -42i64,
            smallest = i64::MIN,
            zero = 0u64,
            yes = true,
            latency_ms = 0.125f64,
            whole_ms = 1000.0f64,
            tiny = 0.001f64,
            signed_zero = -0.0f64,
            nearly = 0.1f64 + 0.2f64,
            huge = 1e20f64,
            small = 1e-5f64,
            not_a_number = f64::NAN,
            r#type = "raw",
            debugged = ?vec![1, 2],
            shown = %"display",
            error = &Outer(io::Error::other("inner")) as &(dyn std::error::Error + 'static),
            "request {}", "done"
        );
        tracing::warn!(only = "one");
        tracing::warn!("no fields at all");
    }

    fn render(fast: bool, ansi: bool) -> String {
        let out = Captured::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(ansi)
            .without_time()
            .compact();
        if fast {
            tracing::subscriber::with_default(builder.fmt_fields(Fields).finish(), events);
        } else {
            tracing::subscriber::with_default(
                builder.fmt_fields(DefaultFields::new()).finish(),
                events,
            );
        }
        let bytes = out.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn lines_are_byte_for_byte_the_default_formatters() {
        let default = render(false, false);
        assert!(default.contains("status=200"), "{default}");
        assert_eq!(render(true, false), default);
    }

    /// Every seventh thousandth up to 10 s, and two million spread up to 10⁹, written as
    /// `Debug` writes them; other floats are refused.
    #[test]
    fn thousandths_are_written_as_debug_writes_them() {
        let mut checked = 0;
        let spread =
            (0..2_000_000u64).map(|i| i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 1_000_000_000_000);
        for whole in (0..10_000_000u64).step_by(7).chain(spread) {
            let value = whole as f64 / 1000.0;
            let mut text = [0u8; 24];
            let written = thousandths(value, &mut text);
            assert_eq!(written, Some(format!("{value:?}").as_str()), "{whole}");
            // The access line writes its latency from the whole number of microseconds.
            let direct = whole_thousandths(whole, &mut [0u8; 24]).map(str::to_owned);
            assert_eq!(
                direct.as_deref(),
                Some(format!("{value:?}").as_str()),
                "{whole}"
            );
            checked += 1;
        }
        assert!(checked > 3_000_000);
        for refused in [
            -0.0,
            -1.0,
            0.1 + 0.2,
            0.0005,
            1.0005,
            999_999_999.999_5,
            5e-324,
            1e9,
            1e20,
            f64::NAN,
            f64::INFINITY,
        ] {
            assert_eq!(thousandths(refused, &mut [0u8; 24]), None, "{refused:?}");
        }
    }

    /// Every ASCII byte at every position of strings up to 40 bytes: quoted exactly when
    /// `Debug` writes the string as it is in quotes; anything beyond ASCII is not.
    #[test]
    fn debug_is_quoted_as_debug_writes_it() {
        for len in 1..=40 {
            for at in 0..len {
                for b in 0u8..0x80 {
                    let mut text = vec![b'a'; len];
                    text[at] = b;
                    let text = String::from_utf8(text).unwrap();
                    let debug = format!("{text:?}") == format!("\"{text}\"");
                    assert_eq!(debug_is_quoted(&text), debug, "{text:?}");
                }
                let mut text = "a".repeat(len - 1);
                text.insert(at, '\u{e9}');
                assert!(!debug_is_quoted(&text), "{text:?}");
            }
        }
        assert!(debug_is_quoted(""));
        assert!(whole_thousandths(1_000_000_000_000, &mut [0u8; 24]).is_none());
    }

    #[test]
    fn with_colours_every_field_is_the_default_formatters() {
        let default = render(false, true);
        assert!(default.contains('\u{1b}'), "{default}");
        assert_eq!(render(true, true), default);
    }
}
