//! The proactive refresh scheduler: a timer queue of (slot, generation, due time).
//!
//! One task owns a `DelayQueue`; sessions are scheduled through a channel. At most one entry
//! per slot is pending — scheduling a slot again replaces its entry — so the cost is
//! proportional to the number of sessions refreshing, never a scan of all of them. What a due
//! entry does is the caller's: the session manager refreshes the slot (`super::refresh`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::time::{delay_queue, DelayQueue};

use crate::tasks::Tasks;

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

/// Starts the scheduler task on `tasks`, until shutdown; `due` is called with (slot,
/// generation) when an entry's time comes, and must not block.
pub fn spawn(tasks: &Tasks, due: impl Fn(usize, u64) + Send + 'static) -> Handle {
    let (tx, rx) = mpsc::unbounded_channel();
    tasks.spawn_until_shutdown(run(due, rx));
    Handle { tx }
}

async fn run(due: impl Fn(usize, u64), mut rx: mpsc::UnboundedReceiver<(usize, u64, Instant)>) {
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
                let at = tokio::time::Instant::from_std(at)
                    .min(tokio::time::Instant::now() + MAX_DELAY);
                let key = queue.insert_at((id, generation), at);
                pending.insert(id, key);
            }
            Some(expired) = std::future::poll_fn(|cx| queue.poll_expired(cx)), if !queue.is_empty() => {
                let (id, generation) = expired.into_inner();
                pending.remove(&id);
                due(id, generation);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant as Clock;

    /// On Tokio's paused clock, so every time is exact: entries fire at their time, in time
    /// order; scheduling a slot again replaces its entry; a time beyond the cap fires at it.
    #[tokio::test(start_paused = true)]
    async fn entries_fire_at_their_time_and_a_slot_has_one_entry() {
        let (tx, mut fired) = mpsc::unbounded_channel();
        let handle = spawn(&Tasks::default(), move |id, generation| {
            let _ = tx.send((id, generation, Clock::now()));
        });
        let start = Clock::now();
        let at = |secs: u64| (start + Duration::from_secs(secs)).into_std();
        handle.schedule(1, 1, at(600));
        handle.schedule(2, 7, at(300));
        handle.schedule(1, 2, at(900));
        let (id, generation, when) = fired.recv().await.unwrap();
        assert_eq!(
            (id, generation, when - start),
            (2, 7, Duration::from_secs(300))
        );
        let (id, generation, when) = fired.recv().await.unwrap();
        assert_eq!(
            (id, generation, when - start),
            (1, 2, Duration::from_secs(900))
        );

        handle.schedule(3, 1, at(900 + 3 * 365 * 24 * 3600));
        let (id, _, when) = fired.recv().await.unwrap();
        assert_eq!(
            (id, when - start),
            (3, Duration::from_secs(900) + MAX_DELAY)
        );
    }
}
