//! Logging set-up: `tracing` to standard error, JSON or human-readable, filtered by
//! `RUST_LOG` (default `info`).
//!
//! Secrets never reach a log line because they never reach a `tracing` field: tokens, SEKs,
//! passwords and client secrets live in `secrecy` types or sensitive `HeaderValue`s, and the
//! access log names only the client, GSTIN, path, statuses and codes.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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
        .with_writer(std::io::stderr)
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
