//! The access line, one per proxied request: written straight into the log's batch in the
//! human-readable format, byte for byte as the `tracing` event it stands for would be, and
//! logged as that event otherwise (JSON lines, colours, a span around it, a `RUST_LOG`
//! directive that names spans or fields).
//!
//! Every request pays for this line. As an event it went through the dispatcher, the filter,
//! the formatter and a visitor call per field, each field written in three or four calls
//! through a `dyn fmt::Write`: ≈ 6 500 instructions a request, 8 % of a passthrough request's
//! (BENCHMARKS.md). Written here it is one buffer filled with slices.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tracing::Level;

use super::fields::{debug_is_quoted, decimal_before, whole_thousandths};
use super::line::Second;

/// Whether the global subscriber writes lines human-readable without colours and filters by
/// target and level alone: only then is the line written directly. Set once, by `init`.
static DIRECT: AtomicBool = AtomicBool::new(false);

/// Called by `init`: whether the line may be written directly (see [`DIRECT`]).
pub(super) fn set_direct(direct: bool) {
    DIRECT.store(direct, Ordering::Relaxed);
}

/// What the access line says about one request; `None` fields are left out.
pub struct Access<'a> {
    /// The request id, the caller's or gstgate's.
    pub request_id: &'a str,
    /// The caller's client name, once authenticated.
    pub client: Option<&'a str>,
    /// The upstream the request was routed to (`none` before routing).
    pub upstream: &'a str,
    /// The taxpayer's GSTIN, once read.
    pub gstin: Option<&'a str>,
    /// The request's method.
    pub method: &'a str,
    /// The request's path, made loggable.
    pub path: &'a str,
    /// The status gstgate answered.
    pub status: u16,
    /// The upstream target (IRP) of the last attempt.
    pub target: Option<&'a str>,
    /// The upstream's HTTP status.
    pub upstream_status: Option<u16>,
    /// The upstream's API error code.
    pub upstream_code: Option<&'a str>,
    /// gstgate's error code, when it answered with a problem.
    pub error: Option<&'a str>,
    /// What caused that problem, for operators.
    pub cause: Option<&'a str>,
    /// How many times the request was sent again (a refreshed token, another IRP).
    pub retries: u32,
    /// From accepting the request to its answer.
    pub latency: Duration,
}

thread_local! {
    /// The line being written, kept between requests so that it is not allocated each time.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl Access<'_> {
    /// Logs the line at `info` under the target `gstgate::access`, as `RUST_LOG` allows: a
    /// directive by target and level is asked directly, any other goes with the event.
    pub fn log(&self) {
        let direct = DIRECT.load(Ordering::Relaxed)
            && tracing::enabled!(target: "gstgate::access", Level::INFO)
            // In a span the compact format names it: the event writes that.
            && tracing::Span::current().is_none();
        if !(direct && self.write_direct()) {
            self.event();
        }
    }

    /// Writes the line into the log's batch; `false` when it cannot be written here (a time
    /// outside years 1970 to 9999, or a log call made while this thread writes one): then
    /// the event writes it.
    fn write_direct(&self) -> bool {
        let Some((second, micros)) = Second::now() else {
            return false;
        };
        LINE.with(|line| match line.try_borrow_mut() {
            Ok(mut line) => {
                line.clear();
                second.write(&mut line, micros);
                self.frame_and_fields(&mut line);
                // Standard error cannot be written: there is nowhere to say so.
                let _ = super::write_line(&line);
                true
            }
            // Only a re-entrant log call could hold it: the event path still works.
            Err(_) => false,
        })
    }

    /// The line after its time: level, target, message and fields, and the newline.
    fn frame_and_fields(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"  INFO gstgate::access: request");
        let mut fields = FieldWriter(out);
        fields.str("request_id", Some(self.request_id));
        fields.str("client", self.client);
        fields.str("upstream", Some(self.upstream));
        fields.str("gstin", self.gstin);
        fields.str("method", Some(self.method));
        fields.str("path", Some(self.path));
        fields.int("status", Some(u64::from(self.status)));
        fields.str("target", self.target);
        fields.int("upstream_status", self.upstream_status.map(u64::from));
        fields.str("upstream_code", self.upstream_code);
        fields.str("error", self.error);
        fields.str("cause", self.cause);
        fields.int("retries", Some(u64::from(self.retries)));
        fields.latency("latency_ms", self);
        out.push(b'\n');
    }

    /// Milliseconds to the microsecond: the log writes such a number without the float
    /// formatter.
    fn latency_ms(&self) -> f64 {
        self.latency.as_micros() as f64 / 1000.0
    }

    /// The same line as a `tracing` event (its fields in the same order as above).
    fn event(&self) {
        tracing::info!(
            target: "gstgate::access",
            request_id = self.request_id,
            client = self.client,
            upstream = self.upstream,
            gstin = self.gstin,
            method = self.method,
            path = self.path,
            status = self.status,
            target = self.target,
            upstream_status = self.upstream_status,
            upstream_code = self.upstream_code,
            error = self.error,
            cause = self.cause,
            retries = self.retries,
            latency_ms = self.latency_ms(),
            "request"
        );
    }
}

/// Writes fields as the human-readable format's field visitor does: ` name=value`, a string
/// as its `Debug` form, an absent one not at all.
struct FieldWriter<'a>(&'a mut Vec<u8>);

impl FieldWriter<'_> {
    fn name(&mut self, name: &str) {
        self.0.push(b' ');
        self.0.extend_from_slice(name.as_bytes());
        self.0.push(b'=');
    }

    fn str(&mut self, name: &str, value: Option<&str>) {
        let Some(value) = value else { return };
        self.name(name);
        if debug_is_quoted(value) {
            self.0.push(b'"');
            self.0.extend_from_slice(value.as_bytes());
            self.0.push(b'"');
        } else {
            let mut text = String::new();
            // Writing to a String cannot fail.
            let _ = write!(text, "{value:?}");
            self.0.extend_from_slice(text.as_bytes());
        }
    }

    fn int(&mut self, name: &str, value: Option<u64>) {
        let Some(value) = value else { return };
        self.name(name);
        let mut digits = [0u8; 20];
        let at = decimal_before(&mut digits, 20, value);
        self.0.extend_from_slice(&digits[at..]);
    }

    /// The request's latency in milliseconds to the microsecond, as `Debug` writes the `f64`
    /// the event records.
    fn latency(&mut self, name: &str, access: &Access<'_>) {
        self.name(name);
        let mut text = [0u8; 24];
        let micros = u64::try_from(access.latency.as_micros()).unwrap_or(u64::MAX);
        match whole_thousandths(micros, &mut text) {
            Some(text) => self.0.extend_from_slice(text.as_bytes()),
            None => {
                let mut text = String::new();
                // Writing to a String cannot fail.
                let _ = write!(text, "{:?}", access.latency_ms());
                self.0.extend_from_slice(text.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::fields::{tests::Captured, Fields};
    use super::super::line::Frame;
    use std::time::SystemTime;

    use super::*;

    /// Ordinary lines and every kind of value the fields can hold, hostile text included.
    fn lines() -> Vec<Access<'static>> {
        let plain = Access {
            request_id: "3f2a9c0d11e2b4a7",
            client: Some("acme"),
            upstream: "einvoice",
            gstin: Some("27AAPFU0939F1ZV"),
            method: "POST",
            path: "/eicore/v1.03/Invoice",
            status: 200,
            target: Some("default"),
            upstream_status: Some(200),
            upstream_code: None,
            error: None,
            cause: None,
            retries: 0,
            latency: Duration::from_micros(912),
        };
        let mut out = vec![
            Access { ..plain },
            Access {
                client: None,
                upstream: "none",
                gstin: None,
                path: "/nowhere%0A%1B[31m",
                status: 401,
                target: None,
                upstream_status: None,
                error: Some("unauthenticated"),
                latency: Duration::ZERO,
                ..plain
            },
            Access {
                status: 502,
                upstream_status: Some(500),
                upstream_code: Some("say \"hi\"\\"),
                error: Some("upstream_bad_response"),
                cause: Some("bad\r\nlevel=INFO forged\u{1b}[31m caf\u{e9} \u{202e}\u{7f}"),
                retries: 3,
                latency: Duration::from_secs(999_999_999) + Duration::from_micros(999_999),
                ..plain
            },
            Access {
                request_id: "",
                upstream_code: Some(""),
                retries: u32::MAX,
                latency: Duration::from_secs(2_000_000_000),
                ..plain
            },
        ];
        for micros in [1, 10, 100, 1_000, 1_001, 59_999_999, 60_000_000] {
            out.push(Access {
                latency: Duration::from_micros(micros),
                ..plain
            });
        }
        out
    }

    /// The lines as the event path writes them through the human-readable format.
    fn as_events() -> Vec<u8> {
        let out = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(out.clone())
            .with_ansi(false)
            .fmt_fields(Fields)
            .event_format(Frame::default())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for line in lines() {
                line.event();
            }
        });
        let bytes = out.0.lock().unwrap().clone();
        bytes
    }

    /// Drops each line's time, after checking it is one.
    fn untimed(text: &str) -> Vec<String> {
        text.lines()
            .map(|line| {
                let (time, rest) = line.split_at(27);
                assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{line}");
                rest.to_owned()
            })
            .collect()
    }

    #[test]
    fn direct_lines_are_byte_for_byte_the_events() {
        let events = String::from_utf8(as_events()).unwrap();
        let mut direct = Vec::new();
        for line in lines() {
            let (second, micros) = Second::at(SystemTime::now()).unwrap();
            second.write(&mut direct, micros);
            line.frame_and_fields(&mut direct);
        }
        let direct = String::from_utf8(direct).unwrap();
        let events = untimed(&events);
        assert_eq!(events.len(), lines().len());
        assert!(
            events[0].ends_with("latency_ms=0.912"),
            "the test renders real lines: {}",
            events[0]
        );
        assert!(
            events[2].contains(r#"cause="bad\r\nlevel=INFO"#),
            "{}",
            events[2]
        );
        assert_eq!(untimed(&direct), events);
    }
}
