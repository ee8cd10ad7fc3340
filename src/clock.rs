//! The clocks the session rules run on: Tokio's monotonic clock and a wall clock that moves
//! with it in unit tests.
//!
//! Every timing rule (refresh times, the force window, the hold at expiry, the login window,
//! backoffs, leases) reads time here, never `Instant::now()` or `SystemTime::now()` directly.
//! In production both are the operating system's clocks. In this crate's unit tests Tokio's
//! clock can be paused and advanced, and the wall clock follows it, so a six-hour token life
//! is proven in milliseconds.

use std::time::{Instant, SystemTime};

/// The monotonic clock: Tokio's, so that a paused test clock governs it.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The wall clock (token expiries, portal session ends, stored times).
#[cfg(not(test))]
pub fn wall() -> SystemTime {
    SystemTime::now()
}

/// The wall clock, advanced by as much as Tokio's clock has been since the first reading:
/// on a paused test clock, wall times move exactly with the monotonic ones.
#[cfg(test)]
pub fn wall() -> SystemTime {
    use std::sync::OnceLock;
    static BASE: OnceLock<(SystemTime, Instant)> = OnceLock::new();
    let (wall, mono) = *BASE.get_or_init(|| (SystemTime::now(), Instant::now()));
    let now = now();
    match now.checked_duration_since(mono) {
        Some(ahead) => wall + ahead,
        None => wall - mono.duration_since(now),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    /// On a paused clock, both clocks advance by exactly what the test advances.
    #[tokio::test(start_paused = true)]
    async fn the_wall_clock_follows_a_paused_monotonic_clock() {
        let (mono, wall) = (super::now(), super::wall());
        tokio::time::advance(Duration::from_secs(6 * 3600)).await;
        assert_eq!(super::now() - mono, Duration::from_secs(6 * 3600));
        assert_eq!(
            super::wall().duration_since(wall).unwrap(),
            Duration::from_secs(6 * 3600)
        );
    }
}
