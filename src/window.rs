//! Sliding windows of event times (logins, a client's failed guesses, OTPs sent): which
//! still count, and how long until there is room for more. The session guard and the
//! drop-in limits both count this way.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Drops the times (oldest first) that are `window` or more before `now`.
pub fn prune(times: &mut VecDeque<Instant>, window: Duration, now: Instant) {
    while times
        .front()
        .is_some_and(|t| now.duration_since(*t) >= window)
    {
        times.pop_front();
    }
}

/// How long until `room` more events fit under `max` in the window, given the `times`
/// (oldest first, all inside the window); `None` when they fit now. Room for more than `max`
/// never comes: it is asked for as `max`.
pub fn wait_for_room(
    times: &VecDeque<Instant>,
    room: usize,
    max: usize,
    window: Duration,
    now: Instant,
) -> Option<Duration> {
    let room = room.min(max).max(1);
    let over = (times.len() + room).checked_sub(max).filter(|n| *n > 0)?;
    let frees = times.get(over - 1).copied().unwrap_or(now);
    Some((frees + window).saturating_duration_since(now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn room_comes_when_enough_of_the_oldest_leave_the_window() {
        let t0 = Instant::now();
        let window = Duration::from_secs(900);
        let mut times: VecDeque<Instant> = (0..4).map(|i| t0 + Duration::from_secs(i)).collect();
        let now = t0 + Duration::from_secs(10);
        assert_eq!(wait_for_room(&times, 1, 5, window, now), None);
        assert_eq!(
            wait_for_room(&times, 2, 5, window, now),
            Some(Duration::from_secs(890))
        );
        assert_eq!(
            wait_for_room(&times, 1, 4, window, now),
            Some(Duration::from_secs(890))
        );
        prune(&mut times, window, t0 + Duration::from_secs(901));
        assert_eq!(times.len(), 2);
    }
}
