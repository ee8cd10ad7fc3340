//! Replicas sharing a store: one login for the group, a dead lease holder, the store out of
//! reach, and sessions made offline offered back. The group rules on the paused clock
//! against the scripted upstream, with the rest of the session rules in `super`.

use super::*;

/// Two e-invoice replicas of one credential sharing a memory store, both joined, and the
/// upstream behind them.
async fn two_replicas() -> (Arc<Fake>, crate::store::Memory, Rig, Rig) {
    let fake = Fake::new(Api::Einvoice, GRACE);
    let memory = crate::store::Memory::default();
    let (a, b) = (
        Rig::new(Api::Einvoice, &fake, ""),
        Rig::new(Api::Einvoice, &fake, ""),
    );
    a.join(&memory, LEASE).await;
    b.join(&memory, LEASE).await;
    (fake, memory, a, b)
}

/// Two replicas sharing a store, both cold, asked for a session at once: one login for the
/// group, and both use its token. Broken by: logging in without the group's lease (two
/// logins, and NIC's second token can invalidate the first).
#[tokio::test(start_paused = true)]
async fn replicas_sharing_a_store_log_in_once_for_the_group() {
    let (fake, _memory, a, b) = two_replicas().await;
    let (from_a, from_b) = tokio::join!(session(&a), session(&b));
    let (from_a, from_b) = (from_a.unwrap(), from_b.unwrap());
    assert_eq!(fake.calls().len(), 1, "one login for the group");
    assert_eq!(from_a.token, from_b.token);
}

/// A replica killed while holding the group's lease holds the others up only until the
/// lease expires: then one of them logs in. Broken by: waiting for the holder's
/// announcement alone (the wait never ends, and callers get 502 after twice the lease).
#[tokio::test(start_paused = true)]
async fn a_replica_dead_with_the_lease_delays_the_group_by_at_most_the_lease() {
    let fake = Fake::new(Api::Einvoice, GRACE);
    let memory = crate::store::Memory::default();
    let b = Rig::new(Api::Einvoice, &fake, "");
    b.join(&memory, LEASE).await;
    // The dead replica's lease: taken, never extended or released.
    let dead = crate::store::Coordination::lease(&memory, &b.slot.record_name(), LEASE)
        .await
        .unwrap();
    assert!(dead.is_some());
    let start = Instant::now();
    tokio::time::timeout(3 * LEASE, session(&b))
        .await
        .expect("the wait for a dead holder's lease ends")
        .expect("a login once the dead lease expired");
    let waited = start.elapsed();
    assert!(
        waited >= LEASE && waited < LEASE + Duration::from_secs(1),
        "waited {waited:?}"
    );
    assert_eq!(fake.calls().len(), 1);
}

/// With the shared store unreachable, each replica logs in on its own, within its share of
/// the login allowance (`max_logins / replicas`, here 4 / 2). Broken by: no share (the third
/// offline login goes out).
#[tokio::test(start_paused = true)]
async fn with_the_store_unreachable_a_replica_logs_in_within_its_share() {
    let fake = Fake::new(Api::Einvoice, GRACE);
    let memory = crate::store::Memory::default();
    let a = Rig::new(Api::Einvoice, &fake, "");
    a.join(&memory, LEASE).await;
    memory.set_down(true);
    let mut logged_in = 0;
    let refused = loop {
        match a.sessions.session(&a.slot, Trigger::Rejected).await {
            Ok(s) => {
                logged_in += 1;
                assert_eq!(
                    a.sessions.invalidate(&a.slot, &s),
                    Invalidation::Invalidated
                );
                // The upstream lost it too: the next login gets a new token.
                fake.hold("lost", crate::clock::wall());
            }
            Err(e) => break e,
        }
        assert!(logged_in <= 4, "no share");
    };
    assert!(
        matches!(refused, GatewayError::LoginThrottled { .. }),
        "{refused:?}"
    );
    assert_eq!(logged_in, 2);
    assert_eq!(fake.calls().len(), 2);
}

/// A session a replica made while the shared store was unreachable is offered to the group
/// when the store answers again, and the other replica takes it up instead of logging in.
/// Broken by: no rejoin (the other replica logs in too).
#[tokio::test(start_paused = true)]
async fn a_session_made_offline_is_offered_to_the_group_when_the_store_is_back() {
    let (fake, memory, a, b) = two_replicas().await;
    memory.set_down(true);
    let offline = session(&a).await.unwrap();
    memory.set_down(false);
    // The replicas hear that the store is back, and A offers its session.
    sleep(Duration::from_secs(1)).await;
    let on_b = session(&b).await.unwrap();
    assert_eq!(
        on_b.token, offline.token,
        "B uses the session A made offline"
    );
    assert_eq!(fake.calls().len(), 1, "B made no login");
}

/// Both replicas made a session offline for each of many slots (more than a rejoin offers
/// at once), each with a token of its own; when the store is back both offer theirs at the
/// same time. For every slot the group settles on one session: both replicas use it, the
/// group's record holds it, and nothing logs in again. Broken by: an offer written without
/// the slot's lease, or without taking up the record first (the later write wins in the
/// store while the earlier replica keeps its own token: two owners), or a batch of offers
/// that writes over another replica's.
#[tokio::test(start_paused = true)]
async fn offline_sessions_offered_at_once_for_many_slots_settle_on_one_owner_each() {
    const SLOTS: usize = 100;
    let fake = Fake::new(Api::Einvoice, GRACE);
    let memory = crate::store::Memory::default();
    let a = Rig::many(Api::Einvoice, &fake, "", SLOTS);
    let b = Rig::many(Api::Einvoice, &fake, "", SLOTS);
    a.join(&memory, LEASE).await;
    b.join(&memory, LEASE).await;
    let (slots_a, slots_b) = (
        a.sessions.table().slots.clone(),
        b.sessions.table().slots.clone(),
    );
    memory.set_down(true);
    for slot in &slots_a {
        a.sessions.session(slot, Trigger::Cold).await.unwrap();
    }
    // B's logins get tokens of their own, not A's handed back.
    fake.forget_all();
    for slot in &slots_b {
        b.sessions.session(slot, Trigger::Cold).await.unwrap();
    }
    let logins = fake.calls().len();
    assert_eq!(logins, 2 * SLOTS, "each replica logged in for each slot");
    for (sa, sb) in slots_a.iter().zip(&slots_b) {
        assert_ne!(sa.current().unwrap().token, sb.current().unwrap().token);
    }

    memory.set_down(false);
    sleep(Duration::from_secs(5)).await;
    let (metrics, _) = crate::metrics::Metrics::new();
    let group = crate::store::Store::in_memory(&memory, true, metrics, Default::default());
    for (sa, sb) in slots_a.iter().zip(&slots_b) {
        let (on_a, on_b) = (sa.current().unwrap(), sb.current().unwrap());
        assert_eq!(
            on_a.token, on_b.token,
            "{}: the replicas use different tokens",
            sa.credential.gstin
        );
        let record = group
            .fetch(&sa.record_name())
            .await
            .unwrap()
            .expect("the group's record")
            .record;
        assert_eq!(
            record.session.map(|s| s.token),
            Some(on_a.token.clone()),
            "{}: the record holds another session",
            sa.credential.gstin
        );
    }
    for slot in &slots_b {
        b.sessions.session(slot, Trigger::Cold).await.unwrap();
    }
    assert_eq!(fake.calls().len(), logins, "no login after the rejoin");
}
