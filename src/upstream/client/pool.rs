//! The idle connections of one upstream, kept per origin (scheme and authority) and handed out
//! most recently used first, so the busiest connections stay warm and the rest age out.
//!
//! No task sweeps the pool: a connection is checked when it is taken (too old, or closed by
//! the upstream: closed, and the next one tried), and the ones past the idle period are
//! closed whenever a connection is returned. Connections to an upstream that gets no more
//! requests at all therefore stay open, at most [`MAX_IDLE`] per origin, until its next
//! request.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use http::uri::Authority;
use tokio::time::Instant;

use super::Conn;

/// How long an idle connection is kept.
const IDLE_FOR: Duration = Duration::from_secs(60);
/// Idle connections kept per origin; a burst beyond it closes its extra connections.
const MAX_IDLE: usize = 256;

/// Where a connection goes: connections are shared only between requests to the same one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Origin {
    /// Whether it is reached over TLS.
    pub(super) https: bool,
    /// Host and port, as the URL spells them.
    pub(super) authority: Authority,
}

/// One idle connection and since when it has been idle.
struct Idle {
    conn: Conn,
    since: Instant,
}

/// Idle connections by origin. An upstream has one origin per target, so a short list.
#[derive(Default)]
pub(super) struct Pool {
    origins: Mutex<Vec<(Origin, Vec<Idle>)>>,
}

impl Pool {
    /// The most recently returned idle connection to `origin` that is still open; the ones
    /// found closed or too old on the way are closed.
    pub(super) fn take(&self, origin: &Origin) -> Option<Conn> {
        let mut stale = Vec::new();
        let found = {
            let mut origins = self.lock();
            let idle = origins.iter_mut().find(|(o, _)| o == origin)?;
            let now = Instant::now();
            let mut found = None;
            while let Some(entry) = idle.1.pop() {
                if now.duration_since(entry.since) < IDLE_FOR {
                    found = Some(entry.conn);
                    break;
                }
                stale.push(entry);
            }
            found
        };
        // Closing a socket is a system call: never under the lock.
        drop(stale);
        found
    }

    /// Keeps `conn` for the next request to `origin`, and closes that origin's connections
    /// idle past the idle period.
    pub(super) fn put(&self, origin: &Origin, conn: Conn) {
        let now = Instant::now();
        let (extra, stale) = {
            let mut origins = self.lock();
            let idle = match origins.iter().position(|(o, _)| o == origin) {
                Some(i) => &mut origins[i].1,
                None => {
                    origins.push((origin.clone(), Vec::new()));
                    let last = origins.len() - 1;
                    &mut origins[last].1
                }
            };
            // Oldest first: the stale ones are a prefix.
            let old = idle
                .iter()
                .take_while(|entry| now.duration_since(entry.since) >= IDLE_FOR)
                .count();
            let stale: Vec<Idle> = idle.drain(..old).collect();
            if idle.len() >= MAX_IDLE {
                (Some(conn), stale)
            } else {
                idle.push(Idle { conn, since: now });
                (None, stale)
            }
        };
        // Closing sockets is a system call each: never under the lock.
        drop((extra, stale));
    }

    fn lock(&self) -> MutexGuard<'_, Vec<(Origin, Vec<Idle>)>> {
        // Every critical section leaves the lists whole, so a panic elsewhere cannot have
        // left them half-changed.
        self.origins
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Idle connections held, over all origins.
    #[cfg(test)]
    pub(super) fn idle(&self) -> usize {
        self.lock().iter().map(|(_, idle)| idle.len()).sum()
    }
}
