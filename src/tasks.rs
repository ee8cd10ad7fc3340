//! The gateway's tasks: everything it spawns goes on one [`Tasks`], which the server owns, so
//! that shutdown can stop them in order instead of waiting on a loop that never ends or
//! leaving work to be cut off wherever the runtime happens to drop it.
//!
//! Two kinds of task go on it:
//!
//! * **Background loops** (a file watcher, the store's writer, a health check) run until
//!   shutdown: [`Tasks::spawn_until_shutdown`] drops them at their next `.await` once it
//!   begins, and a loop that must finish a step first waits on [`Tasks::stopped`] between
//!   steps instead.
//! * **Work that must finish** (a login an admin call started, an alert episode written to the
//!   store) runs to its end with [`Tasks::spawn`]; shutdown waits for it, up to a bound.
//!
//! [`Tasks::shutdown`] does both: it stops the loops, then waits for everything on the tracker.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The tracker of the gateway's tasks and the signal that stops its loops; clones share both.
#[derive(Clone, Debug, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// Spawns `work` to run to its end; shutdown waits for it (up to its bound).
    pub fn spawn<F>(&self, work: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(work)
    }

    /// Spawns a loop that shutdown stops: `work` is dropped at its next `.await` once
    /// shutdown begins, so it must hold nothing that has to be finished.
    pub fn spawn_until_shutdown<F>(&self, work: F) -> JoinHandle<()>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                () = work => {}
            }
        })
    }

    /// Resolves once shutdown has begun: for a loop that stops only between two steps.
    pub async fn stopped(&self) {
        self.stop.cancelled().await;
    }

    /// Stops the loops, then waits up to `within` for every task to end. Returns how many were
    /// still running then; they are abandoned (the runtime drops them when the process exits).
    pub async fn shutdown(&self, within: Duration) -> usize {
        self.stop.cancel();
        self.tracker.close();
        match tokio::time::timeout(within, self.tracker.wait()).await {
            Ok(()) => 0,
            Err(_) => self.tracker.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_stops_the_loops_and_waits_for_the_work() {
        let tasks = Tasks::default();
        let looping = tasks.spawn_until_shutdown(std::future::pending());
        let (tx, rx) = tokio::sync::oneshot::channel();
        let work = tasks.spawn(async move {
            let _ = rx.await;
            7
        });
        let stopping = tokio::spawn({
            let tasks = tasks.clone();
            async move { tasks.shutdown(Duration::from_secs(30)).await }
        });
        // The loop ends at once; the work holds shutdown up until it is done.
        looping.await.unwrap();
        assert!(!stopping.is_finished());
        tx.send(()).unwrap();
        assert_eq!(work.await.unwrap(), 7);
        assert_eq!(stopping.await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_outlasts_the_bound_is_counted_and_abandoned() {
        let tasks = Tasks::default();
        tasks.spawn(std::future::pending::<()>());
        assert_eq!(tasks.shutdown(Duration::from_secs(5)).await, 1);
    }

    #[tokio::test]
    async fn a_loop_that_waits_between_steps_sees_the_stop() {
        let tasks = Tasks::default();
        let waiting = tasks.spawn({
            let tasks = tasks.clone();
            async move { tasks.stopped().await }
        });
        assert_eq!(tasks.shutdown(Duration::from_secs(30)).await, 0);
        assert!(waiting.is_finished());
    }
}
