//! The human-readable line's frame (time, level, target) written directly, for gstgate's own
//! events outside any span, byte for byte as `tracing_subscriber`'s compact format writes it.
//!
//! That format writes the time through a calendar computation and `write!` every line, the
//! level through `Formatter::pad` and the target through colour styles even when colours are
//! off: about a third of the access line's cost, which every proxied request pays. Here the
//! date and time to the second are computed once a second per thread and the rest copied.
//! Events in a span, from other crates, or with colours on go to the compact format itself.

use std::cell::Cell;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::{Compact, Format, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;

/// The compact format, with a direct path for gstgate's own events.
#[derive(Debug)]
pub struct Frame {
    compact: Format<Compact>,
}

impl Default for Frame {
    fn default() -> Self {
        Self {
            compact: Format::default().compact(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for Frame
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        // The compact format names the event's parent span, or else the current one, even
        // for an event marked as having none: the direct path is for events with neither.
        let direct = !writer.has_ansi_escapes()
            && meta.target().starts_with("gstgate")
            && event.parent().is_none()
            && ctx.lookup_current().is_none();
        if !direct {
            return self.compact.format_event(ctx, writer, event);
        }
        match Second::now() {
            Some((second, micros)) => {
                writer.write_str(second.text())?;
                write_micros(&mut writer, micros)?;
            }
            // Before 1970 or after 9999: the compact format knows how to write it.
            None => return self.compact.format_event(ctx, writer, event),
        }
        writer.write_str(level(meta.level()))?;
        writer.write_str(meta.target())?;
        writer.write_str(": ")?;
        ctx.format_fields(writer.by_ref(), event)?;
        writer.write_char('\n')
    }
}

/// The level as the compact format pads it, with the spaces around it.
fn level(level: &Level) -> &'static str {
    match *level {
        Level::TRACE => " TRACE ",
        Level::DEBUG => " DEBUG ",
        Level::INFO => "  INFO ",
        Level::WARN => "  WARN ",
        _ => " ERROR ",
    }
}

/// `.` and six digits of microseconds, then `Z`.
fn write_micros(writer: &mut Writer<'_>, micros: u32) -> fmt::Result {
    let text = micros_text(micros);
    // Only ASCII was written into it.
    writer.write_str(std::str::from_utf8(&text).unwrap_or_default())
}

/// `.` and six digits of `micros` (below a million), then `Z`.
fn micros_text(micros: u32) -> [u8; 8] {
    let mut text = *b".000000Z";
    let mut rest = micros;
    for at in (1..7).rev() {
        text[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    text
}

/// A second since the epoch and its text, `YYYY-MM-DDTHH:MM:SS`.
#[derive(Clone, Copy)]
pub(super) struct Second {
    since_epoch: u64,
    text: [u8; 19],
}

thread_local! {
    /// The second this thread last wrote a line in.
    static LAST: Cell<Option<Second>> = const { Cell::new(None) };
}

impl Second {
    /// The current second and microsecond; `None` outside years 1970 to 9999.
    pub(super) fn now() -> Option<(Second, u32)> {
        Self::at(SystemTime::now())
    }

    /// The second and microsecond of `time`; `None` outside years 1970 to 9999.
    pub(super) fn at(time: SystemTime) -> Option<(Second, u32)> {
        let since = time.duration_since(UNIX_EPOCH).ok()?;
        let micros = since.subsec_micros();
        let since_epoch = since.as_secs();
        if let Some(last) = LAST.get().filter(|l| l.since_epoch == since_epoch) {
            return Some((last, micros));
        }
        let at = chrono::DateTime::from_timestamp(i64::try_from(since_epoch).ok()?, 0)?;
        // Once a second per thread; a year past 9999 does not fit and is left to the default.
        let text = at.format("%Y-%m-%dT%H:%M:%S").to_string();
        let text: [u8; 19] = text.as_bytes().try_into().ok()?;
        let second = Second { since_epoch, text };
        LAST.set(Some(second));
        Some((second, micros))
    }

    fn text(&self) -> &str {
        // Only ASCII was written into it.
        std::str::from_utf8(&self.text).unwrap_or_default()
    }

    /// Appends the time as a line starts with it: this second, `micros`, `Z`.
    pub(super) fn write(&self, out: &mut Vec<u8>, micros: u32) {
        out.extend_from_slice(&self.text);
        out.extend_from_slice(&micros_text(micros));
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::fields::{tests::Captured, Fields};
    use super::*;

    /// gstgate's own events outside a span (the direct path), then some the default writes.
    fn events() {
        tracing::info!(target: "gstgate::access", request_id = "3f2a", status = 200u16, "request");
        tracing::warn!(target: "gstgate::session", gstin = "27AAPFU0939F1ZV", "refresh failed");
        tracing::error!(target: "gstgate::store", path = "a\tb", "no store");
        tracing::debug!(target: "gstgate::x", "debugging");
        tracing::trace!(target: "gstgate::x", n = 1u64, "tracing");
        tracing::info!(target: "hyper::client", "another crate's");
        let outer = tracing::info_span!("outer", n = 1u64);
        tracing::info!(target: "gstgate::access", parent: &outer, "an explicit parent");
        let span = tracing::info_span!("serving", request_id = "abc");
        let _entered = span.enter();
        tracing::info!(target: "gstgate::access", "in a span");
        tracing::info!(target: "gstgate::access", parent: None, "no parent, in a span");
    }

    fn render(frame: bool) -> Vec<String> {
        let out = Captured::default();
        let builder = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .with_max_level(Level::TRACE)
            .fmt_fields(Fields);
        let before = SystemTime::now();
        if frame {
            tracing::subscriber::with_default(
                builder.event_format(Frame::default()).finish(),
                events,
            );
        } else {
            tracing::subscriber::with_default(builder.compact().finish(), events);
        }
        let after = SystemTime::now();
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| {
                // The time differs between the two renderings: check it, then drop it.
                let (time, rest) = line.split_at(27);
                let at = chrono::DateTime::parse_from_rfc3339(time).unwrap();
                let at = SystemTime::from(at);
                assert!(
                    at + Duration::from_micros(1) >= before && at <= after,
                    "{line}"
                );
                rest.to_owned()
            })
            .collect()
    }

    #[test]
    fn lines_are_byte_for_byte_the_compact_formats() {
        let compact = render(false);
        assert_eq!(compact.len(), 9, "{compact:?}");
        assert_eq!(
            compact[0],
            "  INFO gstgate::access: request request_id=\"3f2a\" status=200"
        );
        assert_eq!(render(true), compact);
    }

    #[test]
    fn the_time_is_the_compact_formats_to_the_microsecond() {
        let start = 1_796_000_000u64;
        for offset_us in [
            0u64,
            1,
            999_999,
            1_000_000,
            1_000_001,
            86_399_999_999,
            3_000_000_000_123,
        ] {
            let time = UNIX_EPOCH + Duration::from_secs(start) + Duration::from_micros(offset_us);
            let (second, micros) = Second::at(time).unwrap();
            let ours = format!("{}.{micros:06}Z", second.text());
            let expected = chrono::DateTime::<chrono::Utc>::from(time)
                .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                .to_string();
            assert_eq!(ours, expected);
        }
        assert!(Second::at(UNIX_EPOCH - Duration::from_secs(1)).is_none());
        let far = UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        assert!(Second::at(far).is_none(), "year 10000");
    }
}
