//! The proactive refresh scheduler: a timer queue of (slot, generation, due time).
//!
//! One task owns a `DelayQueue`; sessions are scheduled through a channel. At most one entry
//! per slot is pending — scheduling a slot again replaces its entry — so the cost is
//! proportional to the number of sessions refreshing, never a scan of all of them.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::time::{delay_queue, DelayQueue};

use super::Sessions;

/// The furthest ahead a refresh is scheduled; a later one fires then, early rather than never.
/// Token lives are capped at a day, so this only guards the timer.
const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Schedules refreshes; dropping it (with the session manager) stops the task.
pub struct Handle {
    tx: mpsc::UnboundedSender<(usize, u64, Instant)>,
}

impl Handle {
    /// Refresh slot `id` at `at` if its session is still `generation` then.
    pub fn schedule(&self, id: usize, generation: u64, at: Instant) {
        // The receiver only goes away at shutdown, when refreshes no longer matter.
        let _ = self.tx.send((id, generation, at));
    }
}

/// Starts the scheduler task on the current Tokio runtime.
pub fn spawn(sessions: Weak<Sessions>) -> Handle {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run(sessions, rx));
    Handle { tx }
}

async fn run(sessions: Weak<Sessions>, mut rx: mpsc::UnboundedReceiver<(usize, u64, Instant)>) {
    let mut queue: DelayQueue<(usize, u64)> = DelayQueue::new();
    let mut pending: HashMap<usize, delay_queue::Key> = HashMap::new();
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some((id, generation, at)) = msg else { break };
                if let Some(old) = pending.remove(&id) {
                    queue.try_remove(&old);
                }
                // Bounded: `DelayQueue` panics on deadlines about two years out, and a panic
                // here would end every proactive refresh.
                let at = at.min(Instant::now() + MAX_DELAY);
                let key = queue.insert_at((id, generation), at.into());
                pending.insert(id, key);
            }
            Some(expired) = std::future::poll_fn(|cx| queue.poll_expired(cx)), if !queue.is_empty() => {
                let (id, generation) = expired.into_inner();
                pending.remove(&id);
                let Some(sessions) = sessions.upgrade() else { break };
                tokio::spawn(async move { sessions.refresh_due(id, generation).await });
            }
        }
    }
}
