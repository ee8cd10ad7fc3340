//! The book's rules on Tokio's paused clock (the wall clock follows it in unit tests): one
//! session per owner, a repeat login gets it again, a forced one replaces it, the per-client
//! bound, and expiry.

use std::sync::Arc;
use std::time::Duration;

use super::{Book, Owner};
use crate::gstin::Gstin;
use crate::metrics::{DropinLabels, Metrics};
use crate::problem::GatewayError;
use crate::store::{Memory, Store};
use crate::tasks::Tasks;

const LIFE: Duration = Duration::from_secs(6 * 3600);

fn owner(client: &str, gstin: &str) -> Owner {
    Owner {
        client: client.into(),
        upstream: "einvoice".into(),
        gstin: Gstin::parse(gstin).unwrap(),
        username: "api_user".into(),
    }
}

fn book() -> (Book, Arc<Metrics>) {
    let (metrics, _) = Metrics::new();
    (Book::new(metrics.clone()), metrics)
}

fn live(metrics: &Metrics, client: &str) -> i64 {
    metrics
        .dropin_sessions
        .get_or_create(&DropinLabels {
            upstream: Arc::<str>::from("einvoice").into(),
            client: Arc::<str>::from(client).into(),
        })
        .get()
}

#[tokio::test(start_paused = true)]
async fn a_repeat_login_gets_the_live_session_and_a_forced_one_replaces_it() {
    let (book, metrics) = book();
    let first = book
        .grant(owner("erp", "27AAPFU0939F1ZV"), LIFE, false, 10)
        .unwrap();
    let again = book
        .grant(owner("erp", "27AAPFU0939F1ZV"), LIFE, false, 10)
        .unwrap();
    assert_eq!(first.token(), again.token());
    assert_eq!(first.sek.as_bytes(), again.sek.as_bytes());
    let forced = book
        .grant(owner("erp", "27AAPFU0939F1ZV"), LIFE, true, 10)
        .unwrap();
    assert_ne!(forced.token(), first.token());
    assert_ne!(forced.sek.as_bytes(), first.sek.as_bytes());
    assert!(
        book.find(first.token()).await.is_none(),
        "the old token is dead"
    );
    assert!(book.find(forced.token()).await.is_some());
    assert_eq!(live(&metrics, "erp"), 1);
    assert_eq!(book.counts(), vec![("einvoice".into(), "erp".into(), 1)]);
}

#[tokio::test(start_paused = true)]
async fn near_its_expiry_a_repeat_login_gets_a_new_token() {
    let (book, _) = book();
    let first = book
        .grant(owner("erp", "27AAPFU0939F1ZV"), LIFE, false, 10)
        .unwrap();
    tokio::time::advance(LIFE - Duration::from_secs(60)).await;
    assert!(book.find(first.token()).await.is_some(), "still live");
    let next = book
        .grant(owner("erp", "27AAPFU0939F1ZV"), LIFE, false, 10)
        .unwrap();
    assert_ne!(next.token(), first.token(), "not one about to lapse");
}

#[tokio::test(start_paused = true)]
async fn a_client_holds_at_most_its_bound_and_a_replacement_does_not_count() {
    let (book, metrics) = book();
    book.grant(owner("erp", "27AAPFU0939F1ZV"), LIFE, false, 2)
        .unwrap();
    book.grant(owner("erp", "27AAACR5055K1Z7"), LIFE, false, 2)
        .unwrap();
    let third = book.grant(owner("erp", "05AAACG2115R1ZN"), LIFE, false, 2);
    assert!(matches!(
        third,
        Err(GatewayError::DropinSessionsExhausted { max: 2, .. })
    ));
    // Re-issuing one it holds is not a new one; other clients have their own bound.
    book.grant(owner("erp", "27AAPFU0939F1ZV"), LIFE, true, 2)
        .unwrap();
    book.grant(owner("other", "05AAACG2115R1ZN"), LIFE, false, 2)
        .unwrap();
    assert_eq!(live(&metrics, "erp"), 2);
    assert_eq!(live(&metrics, "other"), 1);
}

#[tokio::test(start_paused = true)]
async fn an_expired_session_is_refused_and_swept() {
    let (book, metrics) = book();
    let s = book
        .grant(owner("erp", "27AAPFU0939F1ZV"), LIFE, false, 10)
        .unwrap();
    let t = book
        .grant(owner("erp", "27AAACR5055K1Z7"), LIFE, false, 10)
        .unwrap();
    tokio::time::advance(LIFE).await;
    assert!(book.find(s.token()).await.is_none());
    assert_eq!(live(&metrics, "erp"), 1, "the one looked up is gone");
    book.sweep();
    assert_eq!(live(&metrics, "erp"), 0);
    assert!(book.find(t.token()).await.is_none());
    assert!(book.counts().is_empty());
    // The owner may log in again, as a new session.
    let again = book
        .grant(owner("erp", "27AAPFU0939F1ZV"), LIFE, false, 10)
        .unwrap();
    assert_ne!(again.token(), s.token());
}

/// A book on a store that `memory` shares with other replicas; no writer runs, so what
/// reaches the store is what `settle` committed.
fn replica(memory: &Memory) -> Book {
    let (metrics, _) = Metrics::new();
    let book = Book::new(metrics.clone());
    book.attach(Store::in_memory(memory, true, metrics, Tasks::default()));
    book
}

#[tokio::test]
async fn a_granted_session_is_in_the_shared_store_once_settled() {
    let memory = Memory::default();
    let (issuer, other) = (replica(&memory), replica(&memory));
    let granted = issuer
        .grant(owner("erp", "27AAPFU0939F1ZV"), LIFE, false, 4)
        .unwrap();
    assert!(
        other.find(granted.token()).await.is_none(),
        "only queued before `settle`"
    );
    issuer.settle().await;
    let found = other
        .find(granted.token())
        .await
        .expect("the other replica finds the settled session");
    assert_eq!(found.sek.as_bytes(), granted.sek.as_bytes());
    assert_eq!(found.owner, granted.owner);
    assert!(!Arc::ptr_eq(&found, &granted));
}

/// A replica forgets a session another replica ended, and reads it from the store again when
/// its token comes (it is gone there too, so the token is refused).
#[tokio::test]
async fn a_forgotten_session_is_refused_once_the_store_no_longer_has_it() {
    let memory = Memory::default();
    let (issuer, other) = (replica(&memory), replica(&memory));
    let first = issuer
        .grant(owner("erp", "27AAPFU0939F1ZV"), LIFE, false, 4)
        .unwrap();
    issuer.settle().await;
    assert!(
        other.find(first.token()).await.is_some(),
        "cached by the other"
    );
    let second = issuer
        .grant(owner("erp", "27AAPFU0939F1ZV"), LIFE, true, 4)
        .unwrap();
    issuer.settle().await;
    assert!(
        other.find(first.token()).await.is_some(),
        "served from memory until told"
    );
    other.forget(&first.name);
    assert!(other.find(first.token()).await.is_none());
    assert!(other.find(second.token()).await.is_some());
    other.forget_all();
    assert!(other.counts().is_empty());
    assert!(other.find(second.token()).await.is_some(), "read again");
}

/// A record reads back whatever its names hold: JSON escapes a `"` or `\` in a user name,
/// which a borrowed string could not take.
#[test]
fn a_record_with_escaped_names_reads_back() {
    let (metrics, _) = Metrics::new();
    let book = Book::new(metrics);
    let mut odd = owner("erp \"quoted\" \\", "27AAPFU0939F1ZV");
    odd.username = "user\"name\\".into();
    let granted = book.grant(odd.clone(), LIFE, false, 4).unwrap();
    let back = super::decode(&super::encode(&granted)).expect("the record reads back");
    assert_eq!(back.owner, odd);
    assert_eq!(back.token(), granted.token());
    assert_eq!(back.sek.as_bytes(), granted.sek.as_bytes());
}
