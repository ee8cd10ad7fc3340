//! The login pace under a storm: many sessions due at once after a restart, on one replica
//! and in a group, and a storm too large for the window. The pacer's rules on the paused
//! clock against the scripted upstream, with the rest of the session rules in `super`.

use super::*;

/// Installs a session for `slot` that expires at `deadline`, issued a six-hour life before
/// it, and schedules its refresh as a restart taking it up from the store does.
fn install_due(rig: &Rig, slot: &Arc<crate::session::Slot>, deadline: Instant) {
    let now = Instant::now();
    let left = deadline - now;
    let wall = crate::clock::wall();
    let mut token = http::HeaderValue::from_static("restored-token");
    token.set_sensitive(true);
    let session = slot.change().install(crate::session::slot::Issued {
        token,
        sek: crate::crypto::AesKey::random(),
        expires_at: wall + left,
        deadline: deadline.into_std(),
        issued_at: wall - (6 * HOUR - left),
    });
    rig.sessions.schedule_taken_up(slot, &session);
}

/// Restart storm: 10,000 sessions that all expire in ten minutes (NIC's force window, the
/// default `refresh_before`) are taken up at once, so every proactive refresh is due in the
/// same 30 seconds of jitter. The upstream never sees more than `max_concurrent_logins`
/// logins at once nor more than `logins_per_second` starts in any second, every session is
/// renewed before it expires (the pacer admits refreshes by deadline, and 10,000 at 25 a
/// second fit in the window), none counts as late, and a caller's cold login in the middle
/// of the storm goes ahead of the thousands of queued refreshes. Broken by: no pacer (the
/// fake sees thousands at once), a pacer without the rate (starts bunch up), or one in
/// arrival order (the cold caller waits minutes behind the backlog).
#[tokio::test(start_paused = true)]
async fn a_restart_storm_stays_within_the_login_pace_expires_none_and_starves_no_caller() {
    const DUE: usize = 10_000;
    const MAX_CONCURRENT: usize = 8;
    const RATE: usize = 25;
    let fake = Fake::new(Api::Einvoice, GRACE);
    fake.set_latency(Duration::from_millis(250));
    let extra = format!("max_concurrent_logins = {MAX_CONCURRENT}\nlogins_per_second = {RATE}");
    let rig = Rig::many(Api::Einvoice, &fake, &extra, DUE + 1);
    let slots = rig.sessions.table().slots.clone();
    let expiry = Instant::now() + TEN_MINUTES;
    // The first slot stays without a session: its caller arrives during the storm.
    for slot in &slots[1..] {
        install_due(&rig, slot, expiry);
    }

    sleep(2 * MINUTE).await;
    let label = crate::metrics::UpstreamLabel {
        upstream: rig.slot.upstream.name.clone().into(),
    };
    let metrics = rig.sessions.metrics();
    let waiting = || metrics.logins_waiting.get_or_create(&label).get();
    assert!(
        waiting() > 5_000,
        "the backlog shows: {} waiting",
        waiting()
    );
    let asked = Instant::now();
    let cold = session(&rig).await.unwrap();
    let waited = Instant::now() - asked;
    assert!(
        waited <= Duration::from_secs(1),
        "the cold caller waited {waited:?} behind the refreshes"
    );
    assert!(cold.deadline > expiry.into_std() + HOUR);

    sleep_until(expiry + MINUTE).await;
    let calls = fake.calls();
    assert_eq!(calls.len(), DUE + 1, "one login per slot");
    assert!(
        fake.max_in_flight() <= MAX_CONCURRENT,
        "{} logins in flight at once",
        fake.max_in_flight()
    );
    let mut starts: Vec<Instant> = calls.iter().map(|(at, _)| Instant::from_std(*at)).collect();
    starts.sort();
    for window in starts.windows(RATE + 1) {
        assert!(
            window[RATE] - window[0] >= Duration::from_secs(1),
            "{} logins started within {:?}",
            RATE + 1,
            window[RATE] - window[0]
        );
    }
    let last = *starts.last().unwrap();
    assert!(
        last < expiry,
        "the last refresh started {:?} after expiry",
        last - expiry
    );
    for slot in &slots[1..] {
        let now = slot
            .current()
            .expect("every session was renewed before it expired");
        assert_ne!(now.token, "restored-token");
    }
    assert_eq!(metrics.late_refreshes.get_or_create(&label).get(), 0);
    assert_eq!(waiting(), 0);
}

/// The restart storm across a group: two replicas sharing a store take up the same 2,000
/// due sessions. Each paces its logins at its share of the group's `logins_per_second`, so
/// the upstream never sees more than the configured rate in any second; each session is
/// renewed once for the group (the other replica adopts it, giving its start back) and
/// before it expires, on both replicas. Broken by: pacing each replica at the full rate
/// (21 starts within 500 ms), or renewing again a session the group made while this
/// replica waited for its permit (3,694 logins for 2,000 slots).
#[tokio::test(start_paused = true)]
async fn a_groups_restart_storm_stays_within_the_groups_login_rate() {
    const DUE: usize = 2_000;
    const RATE: usize = 20;
    let fake = Fake::new(Api::Einvoice, GRACE);
    fake.set_latency(Duration::from_millis(100));
    let memory = crate::store::Memory::default();
    let extra = format!("logins_per_second = {RATE}");
    let (a, b) = (
        Rig::many(Api::Einvoice, &fake, &extra, DUE),
        Rig::many(Api::Einvoice, &fake, &extra, DUE),
    );
    a.join(&memory, LEASE).await;
    b.join(&memory, LEASE).await;
    let expiry = Instant::now() + TEN_MINUTES;
    for rig in [&a, &b] {
        for slot in &rig.sessions.table().slots {
            install_due(rig, slot, expiry);
        }
    }

    sleep_until(expiry + MINUTE).await;
    let mut starts: Vec<Instant> = fake
        .calls()
        .iter()
        .map(|(at, _)| Instant::from_std(*at))
        .collect();
    assert_eq!(starts.len(), DUE, "one login per slot for the group");
    starts.sort();
    for window in starts.windows(RATE + 1) {
        assert!(
            window[RATE] - window[0] >= Duration::from_secs(1),
            "{} logins started within {:?}",
            RATE + 1,
            window[RATE] - window[0]
        );
    }
    assert!(*starts.last().unwrap() < expiry);
    for rig in [&a, &b] {
        for slot in &rig.sessions.table().slots {
            let now = slot.current().expect("renewed before it expired");
            assert_ne!(now.token, "restored-token");
        }
    }
}

/// A storm larger than the pacer can renew in `refresh_before` (1,000 sessions at one login
/// a second, in a ten-minute window): nothing is dropped. The refreshes run earliest expiry
/// first until the backlog is gone, those that start after their session expired are
/// counted in `gstgate_late_refreshes_total`, and every session is renewed in the end.
/// Broken by: a refresh given up once its session expired (slots left without a session),
/// or late refreshes not counted.
#[tokio::test(start_paused = true)]
async fn a_storm_too_large_for_the_window_counts_late_refreshes_and_renews_every_session() {
    const DUE: usize = 1_000;
    let fake = Fake::new(Api::Einvoice, GRACE);
    let rig = Rig::many(Api::Einvoice, &fake, "logins_per_second = 1", DUE);
    let slots = rig.sessions.table().slots.clone();
    let expiry = Instant::now() + TEN_MINUTES;
    for slot in &slots {
        install_due(&rig, slot, expiry);
    }
    sleep_until(expiry + 10 * MINUTE).await;
    assert_eq!(fake.calls().len(), DUE);
    let late = rig
        .sessions
        .metrics()
        .late_refreshes
        .get_or_create(&crate::metrics::UpstreamLabel {
            upstream: rig.slot.upstream.name.clone().into(),
        })
        .get();
    // 600 of them start inside the window; the rest, one a second, after it.
    assert!((390..=410).contains(&late), "{late} late refreshes");
    for slot in &slots {
        let now = slot.current().expect("every session renewed in the end");
        assert_ne!(now.token, "restored-token");
    }
}
