//! A circuit breaker for one upstream target (one IRP's base URL): it stops sending requests
//! to a target that keeps failing, and lets one probe through after a cool-down to learn
//! when it is back.
//!
//! Closed: every request goes; `failures` consecutive failures (a connect failure, a
//! timeout, a 5xx) open it. Open: no request goes until `cool_down` has passed. Then
//! half-open: exactly one request, the probe, goes; its success closes the circuit, its
//! failure opens it for another cool-down. A probe whose caller went away before it was
//! judged frees the half-open slot for the next request.
//!
//! The breaker only answers "may a request go to this target now?". Which target a request
//! goes to is the upstream's routing (`upstream::targets`): the first one, in configured
//! order, whose breaker lets it through.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::time::Instant;

/// The state of a circuit, as reported in `/status` and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests go.
    Closed,
    /// Requests do not go until the cool-down ends.
    Open,
    /// The cool-down ended: one probe goes (or is under way).
    HalfOpen,
}

impl State {
    /// The name shown in `/status` and the admin JSON.
    pub fn label(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug)]
enum Inner {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen { probing: bool },
}

/// One target's circuit.
#[derive(Debug)]
pub struct Breaker {
    /// Consecutive failures that open the circuit.
    failures: u32,
    /// How long it stays open before a probe.
    cool_down: Duration,
    /// The state; never held across an `.await`.
    inner: Mutex<Inner>,
}

/// Leave to send one request to the target; say how it went with [`Permit::success`] or
/// [`Permit::failure`]. Dropped without either (the caller went away, or the outcome says
/// nothing about the target's health), it changes nothing, except that a probe's half-open
/// slot is freed.
#[derive(Debug)]
pub struct Permit {
    /// The circuit it was taken from.
    breaker: Arc<Breaker>,
    /// Whether this request is the half-open probe.
    probe: bool,
    /// Whether a verdict was given (the drop then has nothing to undo).
    judged: bool,
}

impl Breaker {
    /// A closed circuit that opens after `failures` consecutive failures (at least 1) for
    /// `cool_down`.
    pub fn new(failures: u32, cool_down: Duration) -> Arc<Self> {
        Arc::new(Self {
            failures: failures.max(1),
            cool_down,
            inner: Mutex::new(Inner::Closed { failures: 0 }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The circuit's state now (an open circuit whose cool-down is over reads half-open).
    pub fn state(&self) -> State {
        match *self.lock() {
            Inner::Closed { .. } => State::Closed,
            Inner::Open { until } if Instant::now() < until => State::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => State::HalfOpen,
        }
    }

    /// Leave to send a request now, or `None` while the circuit is open or its probe is
    /// under way.
    pub fn admit(self: &Arc<Self>) -> Option<Permit> {
        let mut inner = self.lock();
        let probe = match *inner {
            Inner::Closed { .. } => false,
            Inner::Open { until } if Instant::now() < until => return None,
            Inner::HalfOpen { probing: true } => return None,
            Inner::Open { .. } | Inner::HalfOpen { probing: false } => {
                *inner = Inner::HalfOpen { probing: true };
                true
            }
        };
        Some(Permit {
            breaker: self.clone(),
            probe,
            judged: false,
        })
    }

    /// Leave to send a request whatever the state, for when no target's circuit admits one:
    /// its verdict counts like any other, but it never takes the probe's slot.
    pub fn force(self: &Arc<Self>) -> Permit {
        Permit {
            breaker: self.clone(),
            probe: false,
            judged: false,
        }
    }

    fn succeeded(&self, probe: bool) {
        let mut inner = self.lock();
        // A request let through while closed that ends after the circuit opened says
        // nothing newer than the failures that opened it; only the probe closes it.
        if probe || matches!(*inner, Inner::Closed { .. }) {
            *inner = Inner::Closed { failures: 0 };
        }
    }

    fn failed(&self, probe: bool) {
        let mut inner = self.lock();
        let open = Inner::Open {
            until: Instant::now() + self.cool_down,
        };
        match *inner {
            Inner::Closed { failures } if failures + 1 >= self.failures => *inner = open,
            Inner::Closed { failures } => {
                *inner = Inner::Closed {
                    failures: failures + 1,
                }
            }
            Inner::HalfOpen { .. } if probe => *inner = open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => {}
        }
    }

    fn abandoned(&self) {
        let mut inner = self.lock();
        if let Inner::HalfOpen { probing: true } = *inner {
            *inner = Inner::HalfOpen { probing: false };
        }
    }
}

impl Permit {
    /// The target answered: a closed circuit's failure count starts again, a probe closes it.
    pub fn success(mut self) {
        self.judged = true;
        self.breaker.succeeded(self.probe);
    }

    /// The target failed (connect failure, timeout, 5xx): one more consecutive failure, or
    /// a failed probe that opens the circuit again.
    pub fn failure(mut self) {
        self.judged = true;
        self.breaker.failed(self.probe);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.judged {
            self.breaker.abandoned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COOL: Duration = Duration::from_secs(30);

    fn fail(b: &Arc<Breaker>, times: u32) {
        for _ in 0..times {
            b.admit().expect("admitted").failure();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_configured_consecutive_failures_and_not_before() {
        let b = Breaker::new(3, COOL);
        fail(&b, 2);
        assert_eq!(b.state(), State::Closed);
        fail(&b, 1);
        assert_eq!(b.state(), State::Open);
        assert!(b.admit().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_starts_the_failure_count_again() {
        let b = Breaker::new(3, COOL);
        fail(&b, 2);
        b.admit().expect("admitted").success();
        fail(&b, 2);
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn after_the_cool_down_exactly_one_probe_goes() {
        let b = Breaker::new(1, COOL);
        fail(&b, 1);
        tokio::time::advance(COOL - Duration::from_millis(1)).await;
        assert!(b.admit().is_none(), "still cooling down");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(b.state(), State::HalfOpen);
        let probe = b.admit().expect("the probe goes");
        assert!(b.admit().is_none(), "a second request waits for the probe");
        probe.success();
        assert_eq!(b.state(), State::Closed);
        assert!(b.admit().is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_the_circuit_for_another_cool_down() {
        let b = Breaker::new(2, COOL);
        fail(&b, 2);
        tokio::time::advance(COOL).await;
        b.admit().expect("the probe goes").failure();
        assert_eq!(b.state(), State::Open);
        tokio::time::advance(COOL - Duration::from_millis(1)).await;
        assert!(b.admit().is_none());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.admit().is_some(), "the next probe");
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_dropped_unjudged_lets_the_next_request_probe() {
        let b = Breaker::new(1, COOL);
        fail(&b, 1);
        tokio::time::advance(COOL).await;
        drop(b.admit().expect("the probe goes"));
        assert_eq!(b.state(), State::HalfOpen);
        b.admit().expect("another probe").success();
        assert_eq!(b.state(), State::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_success_of_a_request_sent_while_closed_does_not_close_an_open_circuit() {
        let b = Breaker::new(1, COOL);
        let early = b.admit().expect("admitted");
        fail(&b, 1);
        early.success();
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_forced_request_counts_but_never_takes_the_probe_slot() {
        let b = Breaker::new(1, COOL);
        fail(&b, 1);
        b.force().failure();
        tokio::time::advance(COOL).await;
        b.force().success();
        assert_eq!(b.state(), State::HalfOpen, "only a probe closes it");
        b.admit().expect("the probe").success();
        assert_eq!(b.state(), State::Closed);
    }
}
