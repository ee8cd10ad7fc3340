//! Logging set-up: `tracing` to standard error, JSON or human-readable, filtered by
//! `RUST_LOG` (default `info`), lines gathered while a worker is busy ([`batch`]).
//!
//! Secrets never reach a log line because they never reach a `tracing` field: tokens, SEKs,
//! passwords and client secrets live in `secrecy` types or sensitive `HeaderValue`s, and the
//! access log names only the client, GSTIN, path, statuses and codes.

mod batch;

use std::io::{self, IsTerminal, Write};
use std::sync::OnceLock;
use std::time::Instant;

use tracing_subscriber::EnvFilter;

use batch::Batch;

/// The writer every log line goes through once `init` ran.
static LINES: OnceLock<Batch<io::Stderr>> = OnceLock::new();

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable.
    Pretty,
}

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Line)
        // Colour escapes are noise in a file or a collector's pipe, and rendering them was
        // ≈ 8 % of the CPU gstgate spends on a proxied request (BENCHMARKS.md).
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// For Tokio's `on_thread_park`: the calling worker is about to wait for work, so its lines
/// are gathered from now on and everything gathered is written now.
pub fn worker_waits() {
    batch::worker_waits();
    flush();
}

/// Writes every gathered line (a worker's stop, the end of `main`).
pub fn flush() {
    if let Some(lines) = LINES.get() {
        // Standard error cannot be written: there is nowhere to say so.
        let _ = lines.flush();
    }
}

/// One log line on its way to standard error; the formatter writes each line in one call.
struct Line;

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let lines = LINES.get_or_init(|| Batch::new(io::stderr()));
        lines.line(buf, batch::gathers(), Instant::now())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
