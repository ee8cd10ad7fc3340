//! Pacing the logins toward one upstream: at most `max_concurrent_logins` in flight and
//! starts at least 1/`logins_per_second` apart, so that a morning rush or a restart with
//! every session due at once never looks like an attack to NIC's throttle.
//!
//! Waiters are admitted in priority order, not arrival order: first every login someone is
//! waiting for (a caller's cold or rejected login, an operator's, an OTP), in arrival order,
//! then proactive refreshes by their session's deadline, earliest first. A caller therefore
//! never queues behind a backlog of refreshes that have minutes of slack, and the refresh
//! closest to expiry goes next.
//!
//! Time is Tokio's (as everywhere in the session rules, see [`crate::clock`]), so the pacing
//! is proven on a paused clock; `governor`'s default clock is the system's and would not be.
//! Only the head of the queue is ever woken, so 10,000 waiters cost O(log n) per admission.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicI64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::Notify;
use tokio::time::Instant;

/// How urgent a login is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Priority {
    /// Someone is waiting for it (a caller, an operator).
    Waited,
    /// A proactive refresh of a session usable until this deadline (monotonic).
    Refresh(std::time::Instant),
}

/// The order waiters are admitted in: class (waited first), then deadline, then arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Key {
    class: u8,
    deadline: Instant,
    seq: u64,
}

/// One upstream's login pacer.
pub(crate) struct Pacer {
    /// The configured limits, for the whole group of replicas.
    max_concurrent: u32,
    per_second: u32,
    state: Mutex<State>,
    /// `gstgate_logins_waiting{upstream}`.
    waiting: Gauge<i64, AtomicI64>,
}

struct State {
    in_flight: usize,
    /// This replica's share of `max_concurrent`.
    max_in_flight: usize,
    /// The least time between two login starts on this replica.
    interval: Duration,
    /// The earliest the next login may start.
    next_start: Instant,
    queue: BTreeMap<Key, Arc<Notify>>,
    seq: u64,
}

impl State {
    /// Wakes the waiter at the head of the queue, the only one that may be admitted next.
    fn wake_head(&self) {
        if let Some((_, notify)) = self.queue.first_key_value() {
            notify.notify_one();
        }
    }
}

/// A login's permission to be in flight; dropping it frees its place.
pub(crate) struct Permit<'a> {
    pacer: &'a Pacer,
    /// Whether a call went out with it; one that did not gives its start slot back.
    used: bool,
    /// `next_start` before this permit's admission, and what the admission set it to.
    before: Instant,
    set: Instant,
}

impl Permit<'_> {
    /// Records that a call to the auth endpoint goes out with this permit.
    pub(crate) fn used(&mut self) {
        self.used = true;
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        let mut st = self.pacer.state();
        st.in_flight -= 1;
        // No call went out (the group's session was adopted instead): the start slot was
        // not spent, unless another admission has already been spaced after it.
        if !self.used && st.next_start == self.set {
            st.next_start = self.before;
        }
        st.wake_head();
    }
}

/// A waiter's place in the queue; dropping it (the caller's request timed out) gives it up.
struct Place<'a> {
    pacer: &'a Pacer,
    key: Key,
    admitted: bool,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.pacer.waiting.dec();
        if self.admitted {
            return;
        }
        let mut st = self.pacer.state();
        let was_head = st.queue.first_key_value().map(|(k, _)| *k) == Some(self.key);
        st.queue.remove(&self.key);
        if was_head {
            st.wake_head();
        }
    }
}

impl Pacer {
    /// A pacer allowing `max_concurrent` logins in flight, `per_second` starts a second,
    /// counting its waiters in `waiting`.
    pub(crate) fn new(
        max_concurrent: u32,
        per_second: u32,
        waiting: Gauge<i64, AtomicI64>,
    ) -> Self {
        Self {
            max_concurrent,
            per_second,
            state: Mutex::new(State {
                in_flight: 0,
                max_in_flight: concurrency(max_concurrent, 1),
                interval: interval(per_second, 1),
                next_start: Instant::now(),
                queue: BTreeMap::new(),
                seq: 0,
            }),
            waiting,
        }
    }

    /// Paces this replica at its share of both limits when `replicas` share the upstream (a
    /// Redis group): the configured limits are the group's, as the login allowance is.
    pub(crate) fn share(&self, replicas: u32) {
        let mut st = self.state();
        st.interval = interval(self.per_second, replicas);
        st.max_in_flight = concurrency(self.max_concurrent, replicas);
        // Woken, the head re-checks its place against the new share.
        st.wake_head();
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for this login's turn: a place in flight and its start slot by the rate.
    /// Cancel-safe: dropping the future gives the place up.
    pub(crate) async fn acquire(&self, priority: Priority) -> Permit<'_> {
        let notify = Arc::new(Notify::new());
        let key = {
            let mut st = self.state();
            st.seq += 1;
            let key = match priority {
                Priority::Waited => Key {
                    class: 0,
                    deadline: Instant::now(),
                    seq: st.seq,
                },
                Priority::Refresh(deadline) => Key {
                    class: 1,
                    deadline: Instant::from_std(deadline),
                    seq: st.seq,
                },
            };
            st.queue.insert(key, notify.clone());
            key
        };
        self.waiting.inc();
        let mut place = Place {
            pacer: self,
            key,
            admitted: false,
        };
        loop {
            let notified = notify.notified();
            let start_at = {
                let mut st = self.state();
                let head = st.queue.first_key_value().map(|(k, _)| *k) == Some(key);
                if head && st.in_flight < st.max_in_flight {
                    let now = Instant::now();
                    if now >= st.next_start {
                        st.queue.remove(&key);
                        st.in_flight += 1;
                        let before = st.next_start;
                        st.next_start = now + st.interval;
                        place.admitted = true;
                        // The next head waits for its own start slot.
                        st.wake_head();
                        return Permit {
                            pacer: self,
                            used: false,
                            before,
                            set: st.next_start,
                        };
                    }
                    Some(st.next_start)
                } else {
                    None
                }
            };
            match start_at {
                Some(at) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = notified => {}
                    }
                }
                None => notified.await,
            }
        }
    }
}

/// A replica's share of `max_concurrent` logins in flight: at least one, or it could never
/// log in (the configuration warns when `store.replicas` exceeds it).
fn concurrency(max_concurrent: u32, replicas: u32) -> usize {
    (max_concurrent / replicas.max(1)).max(1) as usize
}

/// The least time between login starts at `per_second` shared by `replicas`.
fn interval(per_second: u32, replicas: u32) -> Duration {
    Duration::from_secs(1) * replicas.max(1) / per_second.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pacer(max: u32, rate: u32) -> Arc<Pacer> {
        Arc::new(Pacer::new(max, rate, Gauge::default()))
    }

    /// Starts are spaced by the rate, and a waited-for login overtakes queued refreshes.
    #[tokio::test(start_paused = true)]
    async fn starts_are_spaced_and_callers_go_before_refreshes() {
        let p = pacer(100, 10);
        let t0 = Instant::now();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let far = (t0 + Duration::from_secs(600)).into_std();
        for i in 0..5 {
            let (p, tx) = (p.clone(), tx.clone());
            tokio::spawn(async move {
                let mut permit = p.acquire(Priority::Refresh(far)).await;
                permit.used();
                tx.send((i, Instant::now() - t0)).unwrap();
            });
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        let (p2, tx2) = (p.clone(), tx.clone());
        tokio::spawn(async move {
            let mut permit = p2.acquire(Priority::Waited).await;
            permit.used();
            tx2.send((99, Instant::now() - t0)).unwrap();
        });
        drop(tx);
        let mut got = Vec::new();
        while let Some(x) = rx.recv().await {
            got.push(x);
        }
        let ms = |m| Duration::from_millis(m);
        assert_eq!(
            got,
            [
                (0, ms(0)),
                (1, ms(100)),
                (99, ms(200)),
                (2, ms(300)),
                (3, ms(400)),
                (4, ms(500))
            ]
        );
    }

    /// No more than `max_concurrent` in flight; a cancelled waiter frees its place in line.
    #[tokio::test(start_paused = true)]
    async fn at_most_max_concurrent_in_flight_and_cancelling_gives_the_place_up() {
        let p = pacer(2, 1000);
        let mut a = p.acquire(Priority::Waited).await;
        a.used();
        let _b = p.acquire(Priority::Waited).await;
        let waiting = tokio::time::timeout(Duration::from_secs(1), p.acquire(Priority::Waited));
        assert!(waiting.await.is_err(), "a third login got in");
        assert_eq!(
            p.state().queue.len(),
            0,
            "the cancelled waiter left the queue"
        );
        drop(a);
        let c = tokio::time::timeout(Duration::from_secs(1), p.acquire(Priority::Waited)).await;
        assert!(c.is_ok());
    }

    /// A permit no call went out with gives its start slot back; a replica's share of a
    /// group's rate spaces its starts `replicas` times further apart.
    #[tokio::test(start_paused = true)]
    async fn an_unused_permit_gives_its_start_back_and_a_share_slows_the_pace() {
        let p = pacer(8, 10);
        let t0 = Instant::now();
        drop(p.acquire(Priority::Waited).await);
        p.acquire(Priority::Waited).await.used();
        assert_eq!(
            Instant::now() - t0,
            Duration::ZERO,
            "the unused start was given back"
        );
        p.acquire(Priority::Waited).await.used();
        assert_eq!(Instant::now() - t0, Duration::from_millis(100));
        p.share(2);
        assert_eq!(p.state().max_in_flight, 4, "half of 8 in flight");
        p.acquire(Priority::Waited).await.used();
        p.acquire(Priority::Waited).await.used();
        assert_eq!(Instant::now() - t0, Duration::from_millis(100 + 100 + 200));
    }
}
