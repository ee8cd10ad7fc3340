//! The idle connections of one upstream, kept per origin (scheme and authority) and handed out
//! most recently used first, so the busiest connections stay warm and the rest age out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Wake, Waker};
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
    /// Whether the sweeper task runs.
    sweeping: AtomicBool,
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

    /// Keeps `conn` for the next request to `origin`.
    pub(super) fn put(self: &Arc<Self>, origin: &Origin, conn: Conn) {
        let extra = {
            let mut origins = self.lock();
            let idle = match origins.iter().position(|(o, _)| o == origin) {
                Some(i) => &mut origins[i].1,
                None => {
                    origins.push((origin.clone(), Vec::new()));
                    let last = origins.len() - 1;
                    &mut origins[last].1
                }
            };
            if idle.len() >= MAX_IDLE {
                Some(conn)
            } else {
                idle.push(Idle {
                    conn,
                    since: Instant::now(),
                });
                None
            }
        };
        drop(extra);
        self.start_sweeping();
    }

    /// Starts, once, the task that closes connections idle too long or closed by the
    /// upstream, so a quiet upstream does not hold a pool's worth of dead sockets.
    fn start_sweeping(self: &Arc<Self>) {
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(sweep(Arc::downgrade(self)));
            }
            Err(_) => self.sweeping.store(false, Ordering::Relaxed),
        }
    }

    /// Closes what is too old or already closed by its peer.
    fn sweep_once(&self) {
        let now = Instant::now();
        let mut gone = Vec::new();
        {
            let mut origins = self.lock();
            let waker = Waker::from(Arc::new(Unwoken));
            let mut cx = Context::from_waker(&waker);
            for (_, idle) in origins.iter_mut() {
                let mut kept = Vec::with_capacity(idle.len());
                for mut entry in idle.drain(..) {
                    if now.duration_since(entry.since) < IDLE_FOR && entry.conn.reusable(&mut cx) {
                        kept.push(entry);
                    } else {
                        gone.push(entry);
                    }
                }
                *idle = kept;
            }
        }
        drop(gone);
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

/// The waker a sweep polls idle connections with: nothing waits on them, the next request to
/// take one polls it again with its own.
struct Unwoken;

impl Wake for Unwoken {
    fn wake(self: Arc<Self>) {}
}

/// Sweeps `pool` every half idle period until the upstream holding it is gone.
async fn sweep(pool: Weak<Pool>) {
    let mut every = tokio::time::interval(IDLE_FOR / 2);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    every.tick().await;
    loop {
        every.tick().await;
        match pool.upgrade() {
            Some(pool) => pool.sweep_once(),
            None => return,
        }
    }
}
