//! Logging set-up: `tracing` to standard error, JSON or human-readable, filtered by
//! `RUST_LOG` (default `info`), lines gathered while a worker is busy ([`batch`]).
//!
//! Secrets never reach a log line because they never reach a `tracing` field: tokens, SEKs,
//! passwords and client secrets live in `secrecy` types or sensitive `HeaderValue`s, and the
//! access log names only the client, GSTIN, path, statuses and codes.

mod access;
mod batch;
mod fields;
mod line;

pub use access::Access;

use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use tracing_subscriber::EnvFilter;

use batch::{Batch, Taken};

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
    if LINES.set(Batch::new(io::stderr())).is_ok() {
        watch_lines();
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // A directive naming spans or fields (`[...]`) is matched against the event itself, which
    // the access line's direct path does not build: with one, that line is an event.
    let plain_filter = !std::env::var(EnvFilter::DEFAULT_ENV).is_ok_and(|f| f.contains('['));
    // Colour escapes are noise in a file or a collector's pipe, and rendering them was
    // ≈ 8 % of the CPU gstgate spends on a proxied request (BENCHMARKS.md).
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| Line)
        .with_ansi(ansi);
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder
            .event_format(line::Frame::default())
            .fmt_fields(fields::Fields)
            .try_init(),
    };
    // Only lines this subscriber would write human-readable and plain are written directly.
    if installed.is_ok() {
        access::set_direct(format == LogFormat::Pretty && !ansi && plain_filter);
    }
}

/// For Tokio's `on_thread_park`: the calling worker is about to wait for work, so its lines
/// are gathered from now on and everything gathered is written now, unless another thread is
/// writing at this moment: then the worker does not wait for it (lines that thread did not
/// take started a batch, which the age check writes within twice `MAX_DELAY` if no one else
/// does; without the age check's thread the worker waits).
pub fn worker_waits() {
    batch::worker_waits();
    if let Some(lines) = LINES.get() {
        // Standard error cannot be written: there is nowhere to say so.
        let _ = if AGE_CHECK.get().is_some() {
            lines.flush_unless_busy()
        } else {
            lines.flush()
        };
    }
}

/// Writes every gathered line (a worker's stop, the end of `main`).
pub fn flush() {
    if let Some(lines) = LINES.get() {
        // Standard error cannot be written: there is nowhere to say so.
        let _ = lines.flush();
    }
}

/// The two things that write gathered lines besides a worker's wait: a thread that writes a
/// batch once its oldest line is `MAX_DELAY` old (workers of a saturated gateway may not wait
/// for a long time), and a panic, whose message would otherwise come before lines logged
/// earlier.
fn watch_lines() {
    let spawned = std::thread::Builder::new()
        .name("gstgate-log".into())
        .spawn(age_check);
    match spawned {
        Ok(handle) => {
            let _ = AGE_CHECK.set(handle.thread().clone());
        }
        // Lines are still written at every worker's wait and at the size bound.
        Err(e) => eprintln!("gstgate: cannot start the log writer's thread: {e}"),
    }
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Some(lines) = LINES.get() {
            let _ = lines.try_flush();
        }
        report(info);
    }));
}

/// The age check's thread, for waking it when a batch starts.
static AGE_CHECK: OnceLock<std::thread::Thread> = OnceLock::new();

/// Whether the age check is parked, waiting for a batch to start (then the line that starts
/// one wakes it). It sleeps only while there is a batch to check, so an idle gateway costs no
/// wake-ups, and a busy one at most one per `MAX_DELAY`.
static AGE_CHECK_PARKED: AtomicBool = AtomicBool::new(false);

/// The age check's loop: park until a batch starts, give it `MAX_DELAY`, write it if it is
/// still there and old enough, and again.
fn age_check() {
    loop {
        AGE_CHECK_PARKED.store(true, Ordering::SeqCst);
        // A batch that started before the flag was up woke no one: look before parking.
        if !LINES.get().is_some_and(Batch::is_pending) {
            std::thread::park();
        }
        AGE_CHECK_PARKED.store(false, Ordering::SeqCst);
        std::thread::sleep(batch::MAX_DELAY);
        if let Some(lines) = LINES.get() {
            let _ = lines.flush_aged(Instant::now());
        }
    }
}

/// One log line on its way to standard error; the formatter writes each line in one call.
struct Line;

/// Gathers or writes one whole line.
fn write_line(line: &[u8]) -> io::Result<()> {
    match LINES.get() {
        Some(lines) => {
            let taken = lines.line(line, batch::gathers(), Instant::now)?;
            if taken == Taken::Started && AGE_CHECK_PARKED.swap(false, Ordering::SeqCst) {
                if let Some(thread) = AGE_CHECK.get() {
                    thread.unpark();
                }
            }
            Ok(())
        }
        None => io::stderr().write_all(line),
    }
}

impl Write for Line {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        write_line(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
