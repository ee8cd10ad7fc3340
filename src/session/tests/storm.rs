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

/// The storm's size and the limits it runs under: 10,000 due sessions, 8 logins at once, 25
/// a second, unless `GSTGATE_STORM` says `due,max_concurrent,per_second` (a GSP-sized run:
/// `GSTGATE_STORM=100000,32,200 cargo test --release --lib restart_storm -- --nocapture`;
/// 100,000 refreshes in NIC's ten-minute force window need at least 167 logins a second).
fn storm_size() -> (usize, usize, usize) {
    sized("GSTGATE_STORM").unwrap_or((10_000, 8, 25))
}

/// `due,max_concurrent,per_second` from the variable `name`, if it holds three numbers.
fn sized(name: &str) -> Option<(usize, usize, usize)> {
    let value = std::env::var(name).ok()?;
    let n: Vec<usize> = value
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect();
    (n.len() == 3).then(|| (n[0], n[1], n[2]))
}

/// Restart storm: 10,000 sessions (see [`storm_size`]) that all expire in ten minutes (NIC's
/// force window, the default `refresh_before`) are taken up at once, so every proactive
/// refresh is due in the same 30 seconds of jitter. The upstream never sees more than
/// `max_concurrent_logins` logins at once nor more than `logins_per_second` starts in any
/// second, every session is renewed before it expires (the pacer admits refreshes by
/// deadline, and 10,000 at 25 a second fit in the window), none counts as late, and a
/// caller's cold login in the middle of the storm goes ahead of the thousands of queued
/// refreshes. Broken by: no pacer (the fake sees thousands at once), a pacer without the
/// rate (starts bunch up), or one in arrival order (the cold caller waits minutes behind the
/// backlog).
#[tokio::test(start_paused = true)]
async fn a_restart_storm_stays_within_the_login_pace_expires_none_and_starves_no_caller() {
    let (due, max_concurrent, rate) = storm_size();
    let started = std::time::Instant::now();
    let fake = Fake::new(Api::Einvoice, GRACE);
    fake.set_latency(Duration::from_millis(250));
    let extra = format!("max_concurrent_logins = {max_concurrent}\nlogins_per_second = {rate}");
    let rig = Rig::many(Api::Einvoice, &fake, &extra, due + 1);
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
        waiting() > i64::try_from(due / 2).unwrap(),
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
    assert_eq!(calls.len(), due + 1, "one login per slot");
    assert!(
        fake.max_in_flight() <= max_concurrent,
        "{} logins in flight at once",
        fake.max_in_flight()
    );
    let mut starts: Vec<Instant> = calls.iter().map(|(at, _)| Instant::from_std(*at)).collect();
    starts.sort();
    for window in starts.windows(rate + 1) {
        assert!(
            window[rate] - window[0] >= Duration::from_secs(1),
            "{} logins started within {:?}",
            rate + 1,
            window[rate] - window[0]
        );
    }
    let busiest_second = starts
        .iter()
        .enumerate()
        .map(|(i, at)| starts[i..].partition_point(|t| *t - *at < Duration::from_secs(1)))
        .max()
        .unwrap_or(0);
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
    // The figures BENCHMARKS.md quotes for a GSP-sized storm (`--nocapture` shows them).
    println!(
        "restart storm: {due} due sessions, max_concurrent_logins {max_concurrent}, \
         logins_per_second {rate}: {} logins, at most {} in flight and {busiest_second} \
         started in any one second, the last {:.0} s before expiry, 0 late, 0 expired; \
         cold caller waited {:.2} s; {:.1} s of real time",
        calls.len(),
        fake.max_in_flight(),
        (expiry - last).as_secs_f64(),
        waited.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

/// The restart storm across a group: two replicas sharing a store take up the same 2,000
/// due sessions. Each paces its logins at its share of the group's `logins_per_second`, so
/// the upstream never sees more than the configured rate in any second; each session is
/// renewed once for the group (the other replica adopts it, giving its start back) and
/// before it expires, on both replicas. Broken by: pacing each replica at the full rate
/// (21 starts within 500 ms), or renewing again a session the group made while this
/// replica waited for its permit (3,694 logins for 2,000 slots). `GSTGATE_GROUP_STORM`
/// says `due,max_concurrent,per_second` for a larger run (as [`storm_size`]).
#[tokio::test(start_paused = true)]
async fn a_groups_restart_storm_stays_within_the_groups_login_rate() {
    let (due, max_concurrent, rate) = sized("GSTGATE_GROUP_STORM").unwrap_or((2_000, 8, 20));
    let started = std::time::Instant::now();
    let fake = Fake::new(Api::Einvoice, GRACE);
    fake.set_latency(Duration::from_millis(100));
    let memory = crate::store::Memory::default();
    let extra = format!("max_concurrent_logins = {max_concurrent}\nlogins_per_second = {rate}");
    let (a, b) = (
        Rig::many(Api::Einvoice, &fake, &extra, due),
        Rig::many(Api::Einvoice, &fake, &extra, due),
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
    assert_eq!(starts.len(), due, "one login per slot for the group");
    starts.sort();
    for window in starts.windows(rate + 1) {
        assert!(
            window[rate] - window[0] >= Duration::from_secs(1),
            "{} logins started within {:?}",
            rate + 1,
            window[rate] - window[0]
        );
    }
    let last = *starts.last().unwrap();
    assert!(last < expiry);
    for rig in [&a, &b] {
        for slot in &rig.sessions.table().slots {
            let now = slot.current().expect("renewed before it expired");
            assert_ne!(now.token, "restored-token");
        }
    }
    println!(
        "group restart storm: 2 replicas, {due} due sessions, max_concurrent_logins \
         {max_concurrent}, logins_per_second {rate}: {} logins, the last {:.0} s before \
         expiry, 0 expired; {:.1} s of real time",
        starts.len(),
        (expiry - last).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
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
