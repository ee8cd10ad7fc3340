//! The log writer: lines a busy runtime worker logs are gathered and written in one `write`
//! when it runs out of work, instead of one `write` system call per line.
//!
//! Under load a proxied request's access line was its only system call besides the sockets'
//! (≈ 1–2 µs of the request's CPU, BENCHMARKS.md). A worker thread handles many requests
//! between two waits for I/O, so their lines can share one `write`; when it is about to wait
//! (Tokio's `on_thread_park`) it writes what was gathered, so an idle gateway's line appears as
//! its request ends, and nothing waits on a timer. A line from any other thread (the main
//! thread, the blocking pool, a worker before its first wait) writes everything gathered with
//! it, so lines keep their order. Two bounds keep a busy period from holding lines back:
//! [`LIMIT`] bytes, and [`MAX_DELAY`] since the oldest gathered line, which a thread of its
//! own checks (a saturated gateway's workers may not wait for minutes, and with access lines
//! off its rare warnings must still come).
//! The buffer is the process's, not a worker's: any worker's wait writes every line.
//!
//! What this costs: a `kill -9` under load loses the lines gathered since a worker last
//! waited (about [`LIMIT`] bytes and twice [`MAX_DELAY`] at most); a graceful stop writes
//! them all.

use std::cell::Cell;
use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Gathered bytes written at once whatever else happens.
pub const LIMIT: usize = 32 * 1024;

/// The longest a gathered line waits while its worker stays busy.
pub const MAX_DELAY: Duration = Duration::from_millis(20);

thread_local! {
    /// Whether this thread is a runtime worker that has waited for work at least once: one
    /// whose gathered lines the next wait is sure to write.
    static GATHERS: Cell<bool> = const { Cell::new(false) };
}

/// Lines not yet written, and where they go.
pub struct Batch<W> {
    inner: Mutex<Inner<W>>,
}

/// What became of a line.
#[derive(Debug, PartialEq, Eq)]
pub enum Taken {
    /// Gathered, the first of a new batch.
    Started,
    /// Gathered with others.
    Added,
    /// Written, with everything gathered before it.
    Written,
}

struct Inner<W> {
    pending: Vec<u8>,
    /// When the oldest pending line came.
    since: Option<Instant>,
    sink: W,
}

impl<W: Write> Batch<W> {
    /// An empty batch writing to `sink`.
    pub fn new(sink: W) -> Self {
        Self {
            inner: Mutex::new(Inner {
                pending: Vec::with_capacity(LIMIT),
                since: None,
                sink,
            }),
        }
    }

    /// Takes one formatted line: gathered if `gather` and under [`LIMIT`], else written at
    /// once with everything gathered before it. Says whether it started a batch; `now` is
    /// asked only then (the age of a batch is its first line's, and [`Batch::flush_aged`]
    /// judges it).
    pub fn line(
        &self,
        line: &[u8],
        gather: bool,
        now: impl FnOnce() -> Instant,
    ) -> io::Result<Taken> {
        let mut inner = self.lock();
        let first = inner.since.is_none();
        if first {
            inner.since = Some(now());
        }
        inner.pending.extend_from_slice(line);
        if gather && inner.pending.len() < LIMIT {
            return Ok(if first { Taken::Started } else { Taken::Added });
        }
        inner.write_pending().map(|()| Taken::Written)
    }

    /// Whether any line is gathered.
    pub fn is_pending(&self) -> bool {
        self.lock().since.is_some()
    }

    /// Writes everything gathered.
    pub fn flush(&self) -> io::Result<()> {
        self.lock().write_pending()
    }

    /// Writes everything gathered if its oldest line is [`MAX_DELAY`] old by `now`.
    pub fn flush_aged(&self, now: Instant) -> io::Result<()> {
        let mut inner = self.lock();
        match inner.since {
            Some(since) if now.duration_since(since) >= MAX_DELAY => inner.write_pending(),
            _ => Ok(()),
        }
    }

    /// Writes everything gathered unless another thread holds the lines right now (a panic
    /// hook must not wait, nor lock twice).
    pub fn try_flush(&self) -> io::Result<()> {
        match self.inner.try_lock() {
            Ok(mut inner) => inner.write_pending(),
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner().write_pending(),
            Err(std::sync::TryLockError::WouldBlock) => Ok(()),
        }
    }

    /// The lock, also after a thread panicked holding it: the bytes are still lines.
    fn lock(&self) -> MutexGuard<'_, Inner<W>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<W: Write> Inner<W> {
    fn write_pending(&mut self) -> io::Result<()> {
        self.since = None;
        if self.pending.is_empty() {
            return Ok(());
        }
        let written = self.sink.write_all(&self.pending);
        // A line that could not be written is dropped rather than retried forever; the
        // buffer keeps its capacity.
        self.pending.clear();
        written
    }
}

/// Marks the calling thread as a runtime worker about to wait for work: from now on its lines
/// are gathered.
pub fn worker_waits() {
    GATHERS.with(|g| g.set(true));
}

/// Whether the calling thread's lines are gathered.
pub fn gathers() -> bool {
    GATHERS.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Sink(std::sync::Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn writes(&self) -> Vec<String> {
            let writes = self.0.lock().unwrap();
            writes
                .iter()
                .map(|w| String::from_utf8(w.clone()).unwrap())
                .collect()
        }
    }

    #[test]
    fn gathered_lines_are_written_together_at_the_flush() {
        let sink = Sink::default();
        let batch = Batch::new(sink.clone());
        let t0 = Instant::now();
        assert_eq!(batch.line(b"a\n", true, || t0).unwrap(), Taken::Started);
        assert!(batch.is_pending());
        assert_eq!(batch.line(b"b\n", true, || t0).unwrap(), Taken::Added);
        assert!(sink.writes().is_empty());
        batch.flush().unwrap();
        assert!(!batch.is_pending());
        assert_eq!(sink.writes(), ["a\nb\n"]);
        batch.flush().unwrap();
        assert_eq!(sink.writes().len(), 1, "an empty flush writes nothing");
    }

    #[test]
    fn a_line_not_gathered_writes_the_gathered_ones_first() {
        let sink = Sink::default();
        let batch = Batch::new(sink.clone());
        let t0 = Instant::now();
        batch.line(b"worker\n", true, || t0).unwrap();
        assert_eq!(batch.line(b"main\n", false, || t0).unwrap(), Taken::Written);
        assert_eq!(sink.writes(), ["worker\nmain\n"]);
        assert_eq!(batch.line(b"next\n", true, || t0).unwrap(), Taken::Started);
    }

    #[test]
    fn a_busy_worker_writes_at_the_size_limit() {
        let sink = Sink::default();
        let batch = Batch::new(sink.clone());
        let t0 = Instant::now();
        let line = vec![b'x'; 1023];
        let mut line = line;
        line.push(b'\n');
        for _ in 0..LIMIT / 1024 - 1 {
            batch.line(&line, true, || t0).unwrap();
        }
        assert!(sink.writes().is_empty());
        batch.line(&line, true, || t0).unwrap();
        assert_eq!(sink.writes().len(), 1);
        assert_eq!(sink.writes()[0].len(), LIMIT);
    }

    #[test]
    fn a_batch_is_as_old_as_its_first_line_however_many_follow() {
        let sink = Sink::default();
        let batch = Batch::new(sink.clone());
        let t0 = Instant::now();
        batch.line(b"a\n", true, || t0).unwrap();
        // Later lines do not read the clock: the batch keeps its first line's age.
        batch
            .line(b"b\n", true, || {
                unreachable!("the clock is read once a batch")
            })
            .unwrap();
        batch.flush_aged(t0 + MAX_DELAY).unwrap();
        assert_eq!(sink.writes(), ["a\nb\n"]);
    }

    #[test]
    fn the_age_check_writes_only_a_batch_whose_oldest_line_is_max_delay_old() {
        let sink = Sink::default();
        let batch = Batch::new(sink.clone());
        let t0 = Instant::now();
        batch.line(b"a\n", true, || t0).unwrap();
        batch
            .flush_aged(t0 + MAX_DELAY - Duration::from_millis(1))
            .unwrap();
        assert!(sink.writes().is_empty());
        batch.flush_aged(t0 + MAX_DELAY).unwrap();
        assert_eq!(sink.writes(), ["a\n"]);
        batch.flush_aged(t0 + MAX_DELAY * 5).unwrap();
        assert_eq!(sink.writes().len(), 1, "nothing gathered, nothing written");
        batch.line(b"b\n", true, || t0).unwrap();
        batch.try_flush().unwrap();
        assert_eq!(sink.writes(), ["a\n", "b\n"]);
    }

    #[test]
    fn threads_gather_only_after_their_first_wait() {
        std::thread::spawn(|| {
            assert!(!gathers());
            worker_waits();
            assert!(gathers());
        })
        .join()
        .unwrap();
        assert!(!gathers(), "the flag is the thread's own");
    }
}
