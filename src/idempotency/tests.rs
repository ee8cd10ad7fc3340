//! The key rules on Tokio's paused clock, over a memory store that two "replicas" share:
//! replay, refusal of another request, waiting, the lease's renewal, expiry and takeover,
//! the window and the bound.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};

use super::*;
use crate::metrics::Metrics;
use crate::store::Memory;

const LEASE: Duration = Duration::from_secs(10);
const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Two gateways sharing one memory store, as replicas share Redis.
fn replicas(max_keys: usize) -> (Idempotency, Idempotency) {
    let memory = Memory::default();
    (on(&memory, max_keys), on(&memory, max_keys))
}

/// A gateway on `memory`, with `max_keys` keys in all and per client.
fn on(memory: &Memory, max_keys: usize) -> Idempotency {
    let one = || {
        let (metrics, _) = Metrics::new();
        let tasks = Tasks::default();
        let store = Store::in_memory(memory, true, metrics, tasks.clone());
        let config = IdempotencyConfig {
            window: WINDOW,
            max_keys,
            max_keys_per_client: max_keys,
            max_response_bytes: 1024,
            lease: LEASE,
        };
        Idempotency::new(store, tasks, &config, 1)
    };
    one()
}

fn answer(body: &'static str) -> Answer {
    Answer {
        status: 200,
        content_type: Some("application/json".into()),
        body: Bytes::from_static(body.as_bytes()),
    }
}

fn in_secs(secs: u64) -> Instant {
    crate::clock::now() + Duration::from_secs(secs)
}

async fn claimed(idem: &Idempotency, name: &str, fp: Fingerprint) -> Claim {
    match idem.begin("c", name, fp, in_secs(30)).await {
        Ok(Begin::Claimed(claim)) => claim,
        Ok(Begin::Replay(a)) => panic!("a replay of {a:?} where a claim was expected"),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(start_paused = true)]
async fn an_answered_key_replays_its_answer_on_another_replica() {
    let (a, b) = replicas(10);
    let claim = claimed(&a, "idem:k", [1; 32]).await;
    assert!(!claim.earlier_attempt_unknown());
    claim.answered(answer("{\"Irn\":\"1\"}"), 1024).await;
    match b.begin("c", "idem:k", [1; 32], in_secs(30)).await {
        Ok(Begin::Replay(got)) => assert_eq!(got, answer("{\"Irn\":\"1\"}")),
        _ => panic!("no replay"),
    }
}

#[tokio::test(start_paused = true)]
async fn the_same_key_with_another_request_is_refused_in_flight_and_answered() {
    let (a, b) = replicas(10);
    let claim = claimed(&a, "idem:k", [1; 32]).await;
    assert!(matches!(
        b.begin("c", "idem:k", [2; 32], in_secs(30)).await,
        Err(GatewayError::IdempotencyKeyReused)
    ));
    claim.answered(answer("{}"), 1024).await;
    assert!(matches!(
        b.begin("c", "idem:k", [2; 32], in_secs(30)).await,
        Err(GatewayError::IdempotencyKeyReused)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gets_the_answer_once_the_first_request_settles() {
    let (a, b) = replicas(10);
    let claim = claimed(&a, "idem:k", [1; 32]).await;
    let started = crate::clock::now();
    let mut waiter = tokio::task::JoinSet::new();
    waiter.spawn(async move { b.begin("c", "idem:k", [1; 32], in_secs(30)).await });
    tokio::time::sleep(Duration::from_secs(3)).await;
    claim.answered(answer("{\"n\":1}"), 1024).await;
    match waiter.join_next().await.unwrap().unwrap() {
        Ok(Begin::Replay(got)) => assert_eq!(got.body, "{\"n\":1}"),
        _ => panic!("the waiter got no replay"),
    }
    // Its polls are at most MAX_PAUSE apart.
    assert!(crate::clock::now() - started <= Duration::from_secs(3) + MAX_PAUSE);
}

#[tokio::test(start_paused = true)]
async fn a_renewed_claim_outlives_its_lease_and_a_waiter_gets_409_at_its_deadline() {
    let (a, b) = replicas(10);
    let _claim = claimed(&a, "idem:k", [1; 32]).await;
    tokio::time::sleep(LEASE * 5).await;
    let deadline = in_secs(2);
    assert!(matches!(
        b.begin("c", "idem:k", [1; 32], deadline).await,
        Err(GatewayError::IdempotencyKeyInFlight)
    ));
    assert!(crate::clock::now() >= deadline);
}

#[tokio::test(start_paused = true)]
async fn an_abandoned_claim_is_taken_over_after_its_lease_and_the_taker_is_told() {
    let (a, b) = replicas(10);
    let started = crate::clock::now();
    claimed(&a, "idem:k", [1; 32]).await.abandon();
    let claim = claimed(&b, "idem:k", [1; 32]).await;
    assert!(claim.earlier_attempt_unknown());
    let waited = crate::clock::now() - started;
    assert!(waited >= LEASE && waited <= LEASE + MAX_PAUSE, "{waited:?}");
}

#[tokio::test(start_paused = true)]
async fn a_key_freed_after_a_failure_is_a_first_attempt_again() {
    let (a, b) = replicas(10);
    claimed(&a, "idem:k", [1; 32])
        .await
        .release(Release::Free)
        .await;
    assert!(!claimed(&b, "idem:k", [1; 32])
        .await
        .earlier_attempt_unknown());
}

#[tokio::test(start_paused = true)]
async fn after_an_unknown_outcome_or_a_cancelled_request_the_next_attempt_is_told() {
    let (a, b) = replicas(10);
    claimed(&a, "idem:k", [1; 32])
        .await
        .release(Release::Unknown)
        .await;
    let next = claimed(&b, "idem:k", [1; 32]).await;
    assert!(next.earlier_attempt_unknown());
    drop(next);
    let started = crate::clock::now();
    let again = claimed(&a, "idem:k", [1; 32]).await;
    assert!(again.earlier_attempt_unknown());
    assert!(
        crate::clock::now() - started < LEASE,
        "waited for the lease"
    );
}

#[tokio::test(start_paused = true)]
async fn an_answer_is_replayed_within_the_window_and_forgotten_after_it() {
    let (a, b) = replicas(10);
    claimed(&a, "idem:k", [1; 32])
        .await
        .answered(answer("{}"), 1024)
        .await;
    tokio::time::sleep(WINDOW - Duration::from_secs(1)).await;
    assert!(matches!(
        b.begin("c", "idem:k", [1; 32], in_secs(1)).await,
        Ok(Begin::Replay(_))
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!claimed(&b, "idem:k", [2; 32])
        .await
        .earlier_attempt_unknown());
}

#[tokio::test(start_paused = true)]
async fn an_answer_over_the_byte_bound_is_not_kept() {
    let (a, b) = replicas(10);
    claimed(&a, "idem:k", [1; 32])
        .await
        .answered(answer("0123456789"), 4)
        .await;
    assert!(claimed(&b, "idem:k", [1; 32])
        .await
        .earlier_attempt_unknown());
}

#[tokio::test(start_paused = true)]
async fn a_new_key_beyond_max_keys_is_refused_until_one_expires() {
    let (a, b) = replicas(1);
    claimed(&a, "idem:one", [1; 32])
        .await
        .answered(answer("{}"), 1024)
        .await;
    assert!(matches!(
        b.begin("c", "idem:two", [1; 32], in_secs(1)).await,
        Err(GatewayError::IdempotencyUnavailable(_))
    ));
    tokio::time::sleep(WINDOW).await;
    claimed(&b, "idem:two", [1; 32]).await;
}

/// Finding 6: one client's fresh keys fill its own quota, not the store: another client
/// still gets keys, and the client gets one again once its keys expire.
#[tokio::test(start_paused = true)]
async fn one_client_fills_its_own_quota_not_the_store() {
    let memory = Memory::default();
    let (metrics, _) = Metrics::new();
    let tasks = Tasks::default();
    let store = Store::in_memory(&memory, true, metrics, tasks.clone());
    let config = IdempotencyConfig {
        window: WINDOW,
        max_keys: 100,
        max_keys_per_client: 4,
        max_response_bytes: 1024,
        lease: LEASE,
    };
    // Two replicas: each creates half a client's quota.
    let idem = Idempotency::new(store, tasks, &config, 2);
    for i in 0..2 {
        let name = format!("idem:g{i}");
        let Ok(Begin::Claimed(claim)) = idem.begin("greedy", &name, [1; 32], in_secs(1)).await
        else {
            panic!("key {i} refused");
        };
        claim.release(Release::Free).await;
    }
    assert!(matches!(
        idem.begin("greedy", "idem:g9", [1; 32], in_secs(1)).await,
        Err(GatewayError::IdempotencyUnavailable(_))
    ));
    assert!(matches!(
        idem.begin("other", "idem:o1", [1; 32], in_secs(1)).await,
        Ok(Begin::Claimed(_))
    ));
    tokio::time::sleep(WINDOW).await;
    assert!(matches!(
        idem.begin("greedy", "idem:g9", [1; 32], in_secs(1)).await,
        Ok(Begin::Claimed(_))
    ));
}

/// Finding 7: a record another gateway sealed under a key this one lacks (a key rotation)
/// is neither replayed nor taken over: 503, and the other gateway's claim stands.
#[tokio::test(start_paused = true)]
async fn a_record_this_gateway_cannot_open_is_never_taken_over() {
    let memory = Memory::default();
    let (a, rotated) = (on(&memory, 10), on(&memory.with_another_key(), 10));
    let claim = claimed(&a, "idem:k", [1; 32]).await;
    for fp in [[1; 32], [2; 32]] {
        assert!(matches!(
            rotated.begin("c", "idem:k", fp, in_secs(1)).await,
            Err(GatewayError::IdempotencyUnavailable(_))
        ));
    }
    assert!(claim.still_held());
    claim.answered(answer("{\"Irn\":\"1\"}"), 1024).await;
    assert!(matches!(
        rotated.begin("c", "idem:k", [1; 32], in_secs(1)).await,
        Err(GatewayError::IdempotencyUnavailable(_))
    ));
    assert!(matches!(
        a.begin("c", "idem:k", [1; 32], in_secs(1)).await,
        Ok(Begin::Replay(_))
    ));
}

/// Finding 3: a renewal applied by the store although its answer was lost leaves the
/// record sealed afresh; the next renewal finds it still this claim's (by its owner, not
/// its bytes) and goes on renewing, so no waiter takes the key over.
#[tokio::test(start_paused = true)]
async fn a_renewal_whose_answer_was_lost_is_recognised_as_the_claims_own() {
    let (a, b) = replicas(10);
    let claim = claimed(&a, "idem:k", [1; 32]).await;
    // The claim's record rewritten as is: the same state, other sealed bytes, as a write
    // the store applied after the client gave up on it.
    let found = a.store.key_record("idem:k").await.unwrap().unwrap();
    let plain = found.plain.as_deref().unwrap().to_vec();
    assert!(matches!(
        a.store
            .swap_key("idem:k", Some(&found.sealed), Some(&plain), WINDOW, 10)
            .await,
        Ok(KeyWritten::Done(_))
    ));
    let waited = crate::clock::now();
    assert!(matches!(
        b.begin("c", "idem:k", [1; 32], in_secs(3 * LEASE.as_secs()))
            .await,
        Err(GatewayError::IdempotencyKeyInFlight)
    ));
    assert!(crate::clock::now() - waited >= 3 * LEASE - Duration::from_secs(1));
    assert!(claim.still_held(), "the claim kept its key");
    claim.answered(answer("{}"), 1024).await;
    assert!(matches!(
        b.begin("c", "idem:k", [1; 32], in_secs(1)).await,
        Ok(Begin::Replay(_))
    ));
}

/// Finding 3: a claim taken over, or whose renewals failed for half its lease (a store
/// outage), is no longer held: its request sends nothing more.
#[tokio::test(start_paused = true)]
async fn a_claim_not_surely_held_for_half_its_lease_is_not_held() {
    let memory = Memory::default();
    let a = on(&memory, 10);
    let claim = claimed(&a, "idem:k", [1; 32]).await;
    assert!(claim.still_held());
    memory.set_down(true);
    tokio::time::sleep(LEASE / 3 + Duration::from_millis(10)).await;
    assert!(
        claim.still_held(),
        "one renewal failed: still a lease ahead"
    );
    tokio::time::sleep(LEASE / 6).await;
    assert!(
        !claim.still_held(),
        "less than half the lease is surely its own"
    );
    memory.set_down(false);
    tokio::time::sleep(LEASE / 3).await;
    assert!(claim.still_held(), "renewed again once the store was back");

    // Taken over: another owner's claim in the record.
    let found = a.store.key_record("idem:k").await.unwrap().unwrap();
    let other = State::Claimed {
        fingerprint: [1; 32],
        owner: [9; 16],
        lease_until: wall_ms() + 60_000,
    }
    .encode();
    assert!(matches!(
        a.store
            .swap_key("idem:k", Some(&found.sealed), Some(&other), WINDOW, 10)
            .await,
        Ok(KeyWritten::Done(_))
    ));
    tokio::time::sleep(LEASE / 3 + Duration::from_millis(10)).await;
    assert!(!claim.still_held(), "taken over");
}

fn headers(values: &[&[u8]]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(HEADER, HeaderValue::from_bytes(v).unwrap());
    }
    h
}

#[test]
fn a_key_is_visible_ascii_bare_or_quoted_and_only_on_a_post() {
    let post = Method::POST;
    let uuid = b"8e03978e-40d5-43e8-bc93-6894a57f9324";
    assert_eq!(
        key(&post, &headers(&[uuid])).unwrap().as_deref(),
        Some("8e03978e-40d5-43e8-bc93-6894a57f9324")
    );
    assert_eq!(
        key(&post, &headers(&[b"\"abc\""])).unwrap().as_deref(),
        Some("abc")
    );
    assert_eq!(key(&post, &HeaderMap::new()).unwrap(), None);
    assert_eq!(key(&Method::GET, &headers(&[b"\xff"])).unwrap(), None);
    let long = vec![b'a'; MAX_KEY_LEN + 1];
    for bad in [
        &b""[..],
        b"\"\"",
        b"a b",
        b"caf\xc3\xa9",
        b"a\\b",
        long.as_slice(),
    ] {
        assert!(
            matches!(
                key(&post, &headers(&[bad])),
                Err(GatewayError::IdempotencyKeyInvalid(_))
            ),
            "{bad:?}"
        );
    }
    assert!(key(&post, &headers(&[b"a", b"b"])).is_err());
}

#[test]
fn keys_are_scoped_by_client_upstream_gstin_and_user() {
    let base = record_name("asp1", "einvoice", "29AAGCB7383J1Z4", "u1", "k");
    assert!(base.starts_with(IDEMPOTENCY_PREFIX));
    for other in [
        record_name("asp2", "einvoice", "29AAGCB7383J1Z4", "u1", "k"),
        record_name("asp1", "ewaybill", "29AAGCB7383J1Z4", "u1", "k"),
        record_name("asp1", "einvoice", "27AAPFU0939F1ZV", "u1", "k"),
        // Two credentials (`user_name`) of one client and GSTIN never share a key.
        record_name("asp1", "einvoice", "29AAGCB7383J1Z4", "u2", "k"),
    ] {
        assert_ne!(base, other);
    }
    assert_ne!(
        record_name("ab", "c", "g", "u", "k"),
        record_name("a", "bc", "g", "u", "k")
    );
    assert_ne!(
        record_name("a", "b", "g", "uk", ""),
        record_name("a", "b", "g", "u", "k")
    );
}

#[test]
fn a_failure_frees_the_key_only_when_nothing_can_have_reached_the_upstream() {
    assert_eq!(
        after_failure(&GatewayError::UpstreamTimeout(1)),
        Release::Unknown
    );
    assert_eq!(
        after_failure(&GatewayError::UpstreamUnavailable("5002".into())),
        Release::Unknown
    );
    assert_eq!(
        after_failure(&GatewayError::UpstreamThrottled {
            upstream_code: None
        }),
        Release::Free
    );
    assert_eq!(
        after_failure(&GatewayError::LoginBackoff {
            retry_after_secs: 1,
            reason: String::new()
        }),
        Release::Free
    );
}
