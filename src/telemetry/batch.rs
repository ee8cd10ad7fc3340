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
use std::sync::{Mutex, MutexGuard, TryLockError};
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
///
/// Two locks, so that a worker adding a line never waits for another thread's `write`: the
/// lines' lock is held only to copy a line in or to take the whole batch out; the sink's is
/// held while a batch is written. A writer takes the sink's lock first and the batch under
/// it, so batches reach the sink in the order they were taken. (With one lock held across the
/// `write`, a saturated gateway's two workers met there on one line in three: a futex wait
/// and a context switch each, BENCHMARKS.md.)
pub struct Batch<W> {
    lines: Mutex<Lines>,
    sink: Mutex<W>,
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

struct Lines {
    pending: Vec<u8>,
    /// When the oldest pending line came.
    since: Option<Instant>,
    /// The buffer the last written batch was in, emptied, for the next one (so that taking a
    /// batch out allocates nothing).
    spare: Vec<u8>,
}

impl<W: Write> Batch<W> {
    /// An empty batch writing to `sink`.
    pub fn new(sink: W) -> Self {
        Self {
            lines: Mutex::new(Lines {
                pending: Vec::with_capacity(LIMIT),
                since: None,
                spare: Vec::with_capacity(LIMIT),
            }),
            sink: Mutex::new(sink),
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
        {
            let mut lines = lock(&self.lines);
            let first = lines.since.is_none();
            if first {
                lines.since = Some(now());
            }
            lines.pending.extend_from_slice(line);
            if gather && lines.pending.len() < LIMIT {
                return Ok(if first { Taken::Started } else { Taken::Added });
            }
        }
        // Written by this flush, or by one that took the batch after the line went in.
        self.flush().map(|()| Taken::Written)
    }

    /// Whether any line is gathered.
    pub fn is_pending(&self) -> bool {
        lock(&self.lines).since.is_some()
    }

    /// Writes everything gathered.
    pub fn flush(&self) -> io::Result<()> {
        let mut sink = lock(&self.sink);
        self.write_taken(&mut sink, |_| true)
    }

    /// Writes everything gathered, unless another thread is writing right now.
    pub fn flush_unless_busy(&self) -> io::Result<()> {
        let mut sink = match self.sink.try_lock() {
            Ok(sink) => sink,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(()),
        };
        self.write_taken(&mut sink, |_| true)
    }

    /// Writes everything gathered if its oldest line is [`MAX_DELAY`] old by `now`.
    pub fn flush_aged(&self, now: Instant) -> io::Result<()> {
        let mut sink = lock(&self.sink);
        self.write_taken(&mut sink, |since| now.duration_since(since) >= MAX_DELAY)
    }

    /// Writes everything gathered unless another thread holds the lines or the sink right now
    /// (a panic hook must not wait, nor lock twice).
    pub fn try_flush(&self) -> io::Result<()> {
        let mut sink = match self.sink.try_lock() {
            Ok(sink) => sink,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(()),
        };
        let mut lines = match self.lines.try_lock() {
            Ok(lines) => lines,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Ok(()),
        };
        lines.since = None;
        let written = sink.write_all(&lines.pending);
        lines.pending.clear();
        written
    }

    /// Takes the batch out (if `due` says so of its oldest line's time) and writes it to
    /// `sink`, whose lock the caller holds.
    fn write_taken(&self, sink: &mut W, due: impl FnOnce(Instant) -> bool) -> io::Result<()> {
        let mut batch = {
            let mut lines = lock(&self.lines);
            match lines.since {
                Some(since) if due(since) => {}
                _ => return Ok(()),
            }
            lines.since = None;
            let spare = std::mem::take(&mut lines.spare);
            std::mem::replace(&mut lines.pending, spare)
        };
        let written = sink.write_all(&batch);
        // A line that could not be written is dropped rather than retried forever; the
        // buffer goes back, keeping its capacity unless one huge line had grown it.
        batch.clear();
        batch.shrink_to(LIMIT);
        lock(&self.lines).spare = batch;
        written
    }
}

/// A lock, also after a thread panicked holding it: the bytes are still lines.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
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

    /// A sink whose `write` says it has begun, then waits to be let through.
    struct Gate {
        entered: std::sync::mpsc::Sender<()>,
        release: std::sync::mpsc::Receiver<()>,
        writes: Sink,
    }

    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.entered.send(()).unwrap();
            self.release.recv().unwrap();
            self.writes.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_worker_neither_adds_a_line_nor_waits_for_work_behind_another_threads_write() {
        use std::sync::mpsc::channel;
        use std::sync::Arc;
        let (entered, entered_rx) = channel();
        let (release_tx, release) = channel();
        let writes = Sink::default();
        let batch = Arc::new(Batch::new(Gate {
            entered,
            release,
            writes: writes.clone(),
        }));
        let t0 = Instant::now();
        batch.line(b"a\n", true, || t0).unwrap();
        let writer = {
            let batch = batch.clone();
            std::thread::spawn(move || batch.flush().unwrap())
        };
        entered_rx.recv().unwrap();
        // The writer is inside `write`, holding the sink. Adding a line must not wait for it
        // (it would wait forever here: the write is let through only after).
        let (added_tx, added) = channel();
        let adder = {
            let batch = batch.clone();
            std::thread::spawn(move || added_tx.send(batch.line(b"b\n", true, || t0).unwrap()))
        };
        let taken = added.recv_timeout(Duration::from_secs(30));
        // A worker about to wait does not wait for the write either; its line stays gathered.
        let (skipped_tx, skipped) = channel();
        let parker = {
            let batch = batch.clone();
            std::thread::spawn(move || skipped_tx.send(batch.flush_unless_busy().is_ok()))
        };
        let skipped = skipped.recv_timeout(Duration::from_secs(30));
        release_tx.send(()).unwrap();
        writer.join().unwrap();
        adder.join().unwrap().ok();
        parker.join().unwrap().ok();
        assert_eq!(taken, Ok(Taken::Started), "the line waited for the write");
        assert_eq!(skipped, Ok(true), "the worker's flush waited for the write");
        assert!(batch.is_pending());
        release_tx.send(()).unwrap();
        batch.flush().unwrap();
        assert_eq!(writes.writes(), ["a\n", "b\n"], "batches keep their order");
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
