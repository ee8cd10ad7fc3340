//! Child processes of the harness: their output captured line by line for log assertions,
//! and the wait for the ready line that says a process listens, with the address it names.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_gstgate");

/// Collected output of a child stream, for log assertions.
#[derive(Clone, Default)]
pub struct Captured(Arc<CapturedInner>);

#[derive(Default)]
struct CapturedInner {
    text: Mutex<String>,
    grew: tokio::sync::Notify,
    /// The stream ended: everything the process wrote is in `text`.
    ended: std::sync::atomic::AtomicBool,
}

impl Captured {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        self.0.text.lock().unwrap().clone()
    }

    fn push_line(&self, line: &str) {
        {
            let mut text = self.0.text.lock().unwrap();
            text.push_str(line);
            text.push('\n');
        }
        self.0.grew.notify_waiters();
    }

    /// Waits (up to 30 s) for the stream's end (the process exited and closed it): then
    /// `text()` holds everything it wrote.
    pub async fn wait_closed(&self) {
        let ended = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let grew = self.0.grew.notified();
                if self.0.ended.load(std::sync::atomic::Ordering::SeqCst) {
                    return;
                }
                grew.await;
            }
        })
        .await;
        assert!(ended.is_ok(), "the stream did not end within 30 s");
    }

    fn end(&self) {
        self.0
            .ended
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.0.grew.notify_waiters();
    }

    /// Waits (up to 30 s) until the captured output contains `marker`.
    pub async fn wait_for(&self, marker: &str) {
        self.wait_for_count(marker, 1).await;
    }

    /// Waits (up to 30 s) for a line holding every one of `parts`; returns the first such line.
    /// A log line is written when the worker that logged it next waits for work, just after
    /// the response went out: read it with this, not with `text()` right after a response.
    pub async fn line_with(&self, parts: &[&str]) -> String {
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let grew = self.0.grew.notified();
                if let Some(line) = self
                    .text()
                    .lines()
                    .find(|l| parts.iter().all(|p| l.contains(p)))
                {
                    return line.to_owned();
                }
                grew.await;
            }
        })
        .await;
        found.unwrap_or_else(|_| {
            panic!(
                "no line with {parts:?} within 30 s; output:\n{}",
                self.text()
            )
        })
    }

    /// Waits (up to 30 s) until `marker` occurs `n` times in the captured output.
    pub async fn wait_for_count(&self, marker: &str, n: usize) {
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                // Registered before the check, so a line pushed in between still wakes us.
                let grew = self.0.grew.notified();
                if self.text().matches(marker).count() >= n {
                    return;
                }
                grew.await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "`{marker}` not seen {n} time(s) within 30 s; output:\n{}",
            self.text()
        );
    }
}

/// Reads `stream` line by line until `marker` is seen; returns that line, and keeps
/// capturing the rest in the background. `stderr` is quoted if the process exits first.
pub(super) async fn wait_for_line<R>(
    stream: R,
    marker: &str,
    capture: Captured,
    stderr: &Captured,
) -> String
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let mut lines = BufReader::new(stream).lines();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            capture.push_line(&line);
            if line.contains(marker) {
                return line;
            }
        }
        panic!(
            "process exited before printing `{marker}`; output:\n{}\nstderr:\n{}",
            capture.text(),
            stderr.text()
        );
    })
    .await
    .unwrap_or_else(|_| panic!("no `{marker}` within 60 s"));
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            capture.push_line(&line);
        }
        capture.end();
    });
    found
}

/// Captures `stream` line by line in the background.
pub(super) fn capture_stream<R>(stream: R, capture: Captured)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            capture.push_line(&line);
        }
        capture.end();
    });
}

/// The socket address that follows `prefix` in `line`, up to the next whitespace.
pub(super) fn addr_after(line: &str, prefix: &str) -> SocketAddr {
    let start = line
        .find(prefix)
        .unwrap_or_else(|| panic!("`{prefix}` not in `{line}`"))
        + prefix.len();
    let rest = &line[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("bad address in `{line}`: {e}"))
}
