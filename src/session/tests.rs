//! The session rules, each proven on Tokio's paused clock against a scripted upstream behind
//! the login seam (`fake`), with the real embedded store where a restart is part of the
//! rule. Token lives are the real six hours and the windows the real ones (NIC's 10-minute
//! force window, 4 logins per 15 minutes): the paused clock makes them cost nothing, so
//! nothing is scaled.
//!
//! Each test names the rule it proves; the comment above it says what breaking the rule does
//! to it.

mod fake;
mod group;
mod lockout;
mod storm;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep, sleep_until, Instant};

use secrecy::SecretString;

use super::{Invalidation, Session, State, Trigger, DEFAULT_SESSION_LIFETIME};
use crate::config::CredentialConfig;
use crate::problem::GatewayError;
use crate::upstream::Class;
use fake::{Api, Call, Fake, Logs, Rig, Scripted};

const HOUR: Duration = Duration::from_secs(3600);
const MINUTE: Duration = Duration::from_secs(60);
/// The default `refresh_before`, and NIC's force window.
const TEN_MINUTES: Duration = Duration::from_secs(600);
/// The default `login_window`.
const LOGIN_WINDOW: Duration = Duration::from_secs(900);
/// The lease the group tests' replicas take for a login.
const LEASE: Duration = Duration::from_secs(30);
/// A token's stated expiry is this much earlier than the moment the fake stops honouring
/// it, like NIC's whole-second `TokenExpiry`.
const GRACE: Duration = Duration::from_millis(900);

/// The slot's usable session, logging in if it must.
async fn session(rig: &Rig) -> Result<Arc<Session>, GatewayError> {
    rig.sessions.session(&rig.slot, Trigger::Cold).await
}

/// When `session` stops being usable by Tokio's clock.
fn deadline(session: &Session) -> Instant {
    Instant::from_std(session.deadline)
}

fn state(rig: &Rig) -> State {
    rig.sessions.snapshot()[0].state
}

/// The states of the rows the alert watcher is given (a 48-hour OTP warning).
fn attention(rig: &Rig) -> Vec<State> {
    let rows = rig.sessions.needing_attention(48 * HOUR);
    rows.iter().map(|r| r.state).collect()
}

/// Force window: the proactive refresh comes `refresh_before` (plus at most 30 s of jitter)
/// ahead of expiry and forces a new token; the session moves to the new generation. Broken
/// by: `ForceWindow::step` never forcing (the fake hands the old token back and the
/// generation stays 1), or the refresh scheduled at expiry.
#[tokio::test(start_paused = true)]
async fn the_proactive_refresh_forces_a_new_token_inside_the_force_window() {
    let fake = Fake::new(Api::Einvoice, GRACE);
    let rig = Rig::new(Api::Einvoice, &fake, "");
    let first = session(&rig).await.unwrap();
    assert_eq!(fake.kinds(), [Call::Password { force: false }]);
    sleep_until(deadline(&first) - MINUTE).await;
    let calls = fake.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[1].1, Call::Password { force: true });
    let at = Instant::from_std(calls[1].0);
    assert!(
        at >= deadline(&first) - TEN_MINUTES
            && at <= deadline(&first) - TEN_MINUTES + Duration::from_secs(30),
        "refreshed {:?} before expiry",
        deadline(&first) - at
    );
    let second = rig.slot.current().unwrap();
    assert_eq!(second.generation, first.generation + 1);
    assert!(second.deadline > first.deadline + 5 * HOUR);
}

/// A login outside the force window (an operator's early refresh) gets the live token back:
/// the session keeps its generation and its expiry, the clock is never restarted on an old
/// token, and no login follows until the normal proactive refresh. Broken by: treating the
/// handed-back token as new (generation 2, a later deadline), or rescheduling a refresh
/// sooner (a cycle of same-token logins).
#[tokio::test(start_paused = true)]
async fn a_login_outside_the_force_window_keeps_the_token_and_its_expiry() {
    let fake = Fake::new(Api::Einvoice, GRACE);
    let rig = Rig::new(Api::Einvoice, &fake, "");
    let first = session(&rig).await.unwrap();
    sleep(HOUR).await;
    let again = rig.sessions.refresh_now(&rig.slot).await.unwrap();
    assert_eq!(
        fake.kinds(),
        [
            Call::Password { force: false },
            Call::Password { force: false }
        ]
    );
    assert_eq!(again.generation, first.generation);
    assert_eq!(again.deadline, first.deadline);
    sleep_until(deadline(&first) - TEN_MINUTES - Duration::from_secs(1)).await;
    assert_eq!(
        fake.calls().len(),
        2,
        "no login before the proactive refresh"
    );
    sleep_until(deadline(&first) - MINUTE).await;
    assert_eq!(fake.kinds()[2..], [Call::Password { force: true }]);
}

/// At-expiry hold (e-way bill, no force flag): a caller whose token is in its last second is
/// held until the token has expired by the upstream's clock too (1 s past gstgate's
/// deadline), then gets a new token from one login. Broken by: logging in at once (the fake
/// hands back the dying token, which is then asked for three times).
#[tokio::test(start_paused = true)]
async fn callers_at_an_e_way_bill_expiry_are_held_until_a_new_token_is_issued() {
    let fake = Fake::new(Api::Ewaybill, Duration::from_millis(500));
    let rig = Rig::new(Api::Ewaybill, &fake, "");
    let first = session(&rig).await.unwrap();
    // Inside the last second, the token is no longer handed to callers.
    sleep_until(deadline(&first) - Duration::from_millis(500)).await;
    let next = session(&rig).await.unwrap();
    assert_eq!(next.generation, first.generation + 1);
    let calls = fake.calls();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(Instant::from_std(calls[1].0) >= deadline(&first) + Duration::from_secs(1));
}

/// Reissue at expiry (e-way bill): a login that still gets the old token back is asked
/// again 1 s later, up to three logins in all; an upstream that keeps vouching for the token
/// has it taken as newly issued rather than failing callers. Broken by: no second ask (the
/// dying token is restored), or unlimited asks.
#[tokio::test(start_paused = true)]
async fn an_e_way_bill_login_that_gets_the_old_token_back_asks_again_then_accepts_it() {
    // The upstream honours tokens 1.5 s past gstgate's reckoning: the second ask succeeds.
    let fake = Fake::new(Api::Ewaybill, Duration::from_millis(1500));
    let rig = Rig::new(Api::Ewaybill, &fake, "");
    let first = session(&rig).await.unwrap();
    sleep_until(deadline(&first)).await;
    let next = session(&rig).await.unwrap();
    assert_eq!(fake.calls().len(), 3);
    assert_ne!(next.token, first.token);

    // One that honours them 10 s longer: three asks, then the token is accepted, and the
    // log says why that is odd.
    let (logs, _capture) = Logs::capture();
    let fake = Fake::new(Api::Ewaybill, Duration::from_secs(10));
    let rig = Rig::new(Api::Ewaybill, &fake, "");
    let first = session(&rig).await.unwrap();
    sleep_until(deadline(&first)).await;
    let next = session(&rig).await.unwrap();
    assert_eq!(fake.calls().len(), 4, "one login and three asks at expiry");
    assert_eq!(next.token, first.token);
    assert!(next.usable(crate::clock::now()), "accepted as newly issued");
    assert!(
        logs.text()
            .contains("token_lifetime set shorter than the real one"),
        "{}",
        logs.text()
    );
    // Once the upstream's token has really expired, the next renewal gets a new one: never
    // more than the four logins.
    sleep_until(deadline(&next) + Duration::from_secs(2)).await;
    let renewed = session(&rig).await.unwrap();
    assert_ne!(renewed.token, first.token);
    assert_eq!(fake.calls().len(), 5);
}

/// Same-token rejection mark: a re-login after a rejection that gets the rejected token back
/// keeps the session, and for `login_window` a rejection of it costs no login; after that
/// one re-login is tried again. Broken by: no mark (every rejection logs in).
#[tokio::test(start_paused = true)]
async fn a_token_handed_back_after_its_rejection_is_not_logged_in_for_again_for_a_while() {
    let fake = Fake::new(Api::Einvoice, GRACE);
    let rig = Rig::new(Api::Einvoice, &fake, "");
    let first = session(&rig).await.unwrap();
    let sessions = &rig.sessions;
    assert_eq!(
        sessions.invalidate(&rig.slot, &first),
        Invalidation::Invalidated
    );
    let again = sessions
        .session(&rig.slot, Trigger::Rejected)
        .await
        .unwrap();
    assert_eq!(again.generation, first.generation, "the token came back");
    for _ in 0..5 {
        assert_eq!(
            sessions.invalidate(&rig.slot, &again),
            Invalidation::KnownRejected
        );
    }
    assert_eq!(fake.calls().len(), 2);
    assert!(rig.slot.current().is_some(), "the session is kept");
    sleep(LOGIN_WINDOW).await;
    assert_eq!(
        sessions.invalidate(&rig.slot, &again),
        Invalidation::Invalidated
    );
}

/// A GSTN rejection spell costs at most one renewal per rejected generation: when the
/// renewed token is rejected too, later rejections fail at once with no login, the session
/// stays, and once the upstream accepts tokens again every tenant of the GSTIN is served
/// with no 429 and no cold slot. Broken by: `renewal_rejected` not marking the generation
/// (every request's rejection spends a refresh, and the allowance is gone).
#[tokio::test(start_paused = true)]
async fn a_gstn_rejection_spell_costs_one_renewal_and_locks_no_tenant_out() {
    let fake = Fake::new(Api::Gstn, GRACE);
    let rig = Rig::new(Api::Gstn, &fake, "");
    let sessions = &rig.sessions;
    sessions.request_otp(&rig.slot).await.unwrap();
    let first = sessions
        .submit_otp(&rig.slot, "575757".to_owned().into())
        .await
        .unwrap();
    // The spell: a request is rejected, renewed once, replayed and rejected again...
    assert_eq!(
        sessions.invalidate(&rig.slot, &first),
        Invalidation::Invalidated
    );
    let renewed = sessions
        .session(&rig.slot, Trigger::Rejected)
        .await
        .unwrap();
    sessions.renewal_rejected(&rig.slot, &renewed);
    // ... and the requests after it, from any tenant, fail at once without a login.
    for _ in 0..20 {
        assert_eq!(
            sessions.invalidate(&rig.slot, &renewed),
            Invalidation::KnownRejected
        );
    }
    assert_eq!(
        fake.kinds(),
        [Call::OtpRequest, Call::Otp, Call::Refresh],
        "one renewal for the spell"
    );
    // The upstream accepts tokens again: the renewed session serves everyone.
    sleep(MINUTE).await;
    let now = session(&rig).await.unwrap();
    assert_eq!(now.generation, renewed.generation);
    assert_eq!(state(&rig), State::Valid);
}

/// A restart in a token's last second (embedded store): the resumed slot keeps the expired
/// token's record, so the login after the restart forces a new token instead of getting the
/// dying one back with an expiry already past (which answered callers 502). Broken by:
/// `take_up_sessions` dropping the expired latest session of a non-OTP API, or
/// `ForceWindow::reissued` not asking again with the flag.
#[tokio::test(start_paused = true)]
async fn a_restart_in_a_tokens_last_second_forces_a_new_token() {
    let fake = Fake::new(Api::Einvoice, GRACE);
    // `refresh_before` under a second only keeps the proactive refresh from renewing the
    // token before the restart: the kill lands before its refresh fires.
    let rig = Rig::new(Api::Einvoice, &fake, "refresh_before = \"200ms\"");
    let store = rig.open_store();
    let first = session(&rig).await.unwrap();
    sleep_until(deadline(&first) - Duration::from_millis(300)).await;
    let calls_before = fake.calls().len();
    let (rig, _store) = rig.restart(store, &fake).await;
    let next = session(&rig).await.expect("a new token, not a 502");
    assert_ne!(next.token, first.token);
    assert!(next.usable(crate::clock::now()));
    assert_eq!(
        fake.kinds()[calls_before..],
        [Call::Password { force: true }],
        "one forced login"
    );
}

/// A login for a slot with no record of the upstream's live token (another client's login,
/// a lost store) that gets back a token whose stated expiry is already past asks again with
/// the force flag instead of answering 502.
#[tokio::test(start_paused = true)]
async fn a_reissued_token_with_a_past_expiry_is_asked_again_with_the_force_flag() {
    let fake = Fake::new(Api::Einvoice, GRACE);
    fake.hold(
        "held-elsewhere",
        crate::clock::wall() + Duration::from_millis(500),
    );
    let rig = Rig::new(Api::Einvoice, &fake, "");
    let next = session(&rig).await.expect("a new token, not a 502");
    assert_eq!(
        fake.kinds(),
        [
            Call::Password { force: false },
            Call::Password { force: true }
        ]
    );
    assert!(next.usable(crate::clock::now()));
}

/// A refresh still in flight when the token reaches its deadline is not joined by a second
/// login: callers at the deadline wait for it and get its token. Broken by: callers logging
/// in outside the single-flight.
#[tokio::test(start_paused = true)]
async fn a_refresh_in_flight_at_the_deadline_is_not_joined_by_a_second_login() {
    let fake = Fake::new(Api::Einvoice, GRACE);
    let rig = Rig::new(Api::Einvoice, &fake, "");
    let first = session(&rig).await.unwrap();
    // The proactive refresh's reply takes 11 minutes: past the deadline.
    fake.script([Scripted::Slow(11 * MINUTE)]);
    sleep_until(deadline(&first)).await;
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (sessions, slot) = (rig.sessions.clone(), rig.slot.clone());
        callers.spawn(async move { sessions.session(&slot, Trigger::Cold).await });
    }
    while let Some(got) = callers.join_next().await {
        assert_eq!(got.unwrap().unwrap().generation, first.generation + 1);
    }
    assert_eq!(
        fake.kinds(),
        [
            Call::Password { force: false },
            Call::Password { force: true }
        ]
    );
}

/// OTP keep-alive (GSTN): an idle session is refreshed ahead of each expiry without an OTP
/// for as long as the portal session lasts (here the credential's one day), and not after:
/// then the slot needs an OTP and no call is made. Broken by: idle GSTN sessions dropped like
/// others (no refresh), or refreshes past the portal end.
#[tokio::test(start_paused = true)]
async fn an_idle_gstn_session_is_kept_alive_until_the_portal_session_ends() {
    let fake = Fake::new(Api::Gstn, GRACE);
    // Idle for far longer than `session_idle_ttl`: an OTP session is kept all the same.
    let rig = Rig::new(Api::Gstn, &fake, "session_idle_ttl = \"1h\"");
    rig.sessions.request_otp(&rig.slot).await.unwrap();
    rig.sessions
        .submit_otp(&rig.slot, "575757".to_owned().into())
        .await
        .unwrap();
    // A valid session whose portal session ends within the warning is handed over too.
    assert_eq!(attention(&rig), [State::Valid]);
    sleep(30 * HOUR).await;
    let calls = fake.kinds();
    let refreshes = calls.iter().filter(|c| **c == Call::Refresh).count();
    assert_eq!(
        refreshes, 4,
        "every six hours, less ten minutes, within a day: {calls:?}"
    );
    assert_eq!(calls.len(), 6);
    assert_eq!(state(&rig), State::NeedsOtp);
    assert_eq!(attention(&rig), [State::NeedsOtp]);
    assert!(matches!(
        session(&rig).await,
        Err(GatewayError::OtpRequired { .. })
    ));
    assert_eq!(
        fake.calls().len(),
        6,
        "no call once the portal session is over"
    );
}

/// An idle session of an API without OTP sessions is dropped at its refresh time instead of
/// being refreshed forever. Broken by: refreshing idle sessions.
#[tokio::test(start_paused = true)]
async fn an_idle_session_is_dropped_instead_of_refreshed() {
    let fake = Fake::new(Api::Einvoice, GRACE);
    let rig = Rig::new(Api::Einvoice, &fake, "session_idle_ttl = \"1h\"");
    session(&rig).await.unwrap();
    sleep(12 * HOUR).await;
    assert_eq!(fake.calls().len(), 1);
    assert_eq!(state(&rig), State::Cold);
}

/// A re-login after a rejection is counted as `trigger="rejected"` even when the caller that
/// leads it came in cold (it found the session already taken away by another request's
/// rejection). Broken by: labelling the login by the leading caller's trigger.
#[tokio::test(start_paused = true)]
async fn a_relogin_after_a_rejection_is_counted_as_rejected_whoever_leads_it() {
    use crate::metrics::TriggerLabels;
    let fake = Fake::new(Api::Einvoice, GRACE);
    let rig = Rig::new(Api::Einvoice, &fake, "");
    let first = session(&rig).await.unwrap();
    // The upstream revoked it (another login): a re-login gets a new token.
    fake.hold("after-revocation", crate::clock::wall() + 6 * HOUR);
    assert_eq!(
        rig.sessions.invalidate(&rig.slot, &first),
        Invalidation::Invalidated
    );
    // A request arriving now finds no session: it comes in cold, and leads the re-login.
    session(&rig).await.unwrap();
    assert_eq!(fake.kinds().len(), 2, "one re-login");
    let count = |trigger: &'static str| {
        rig.sessions
            .metrics()
            .token_refreshes
            .get_or_create(&TriggerLabels {
                upstream: std::sync::Arc::<str>::from("einvoice").into(),
                trigger,
            })
            .get()
    };
    assert_eq!((count("cold"), count("rejected")), (1, 1));
}

/// A reload that fails part-way changes nothing: a changed password listed before a
/// credential the table cannot take (an upstream this process does not run) stays the old
/// one. Broken by: changing a slot's password while the new table is still being built.
#[tokio::test(start_paused = true)]
async fn a_refused_reload_changes_no_password() {
    let fake = Fake::new(Api::Einvoice, GRACE);
    let rig = Rig::new(Api::Einvoice, &fake, "");
    let credential = |gstin: &str, password: &str, upstream: &str| CredentialConfig {
        gstin: gstin.into(),
        username: "u".into(),
        password: password.to_owned().into(),
        password_file: None,
        upstreams: vec![upstream.into()],
        session_lifetime: None,
    };
    let refused = rig.sessions.reload(&[
        credential("27AAPFU0939F1ZV", "changed", "einvoice"),
        credential("29AAPFU0939F1ZR", "secret", "nowhere"),
    ]);
    assert!(refused.is_err());
    let old = SecretString::from("secret".to_owned());
    assert!(rig
        .slot
        .view()
        .same_credential(&old, DEFAULT_SESSION_LIFETIME));
    let applied = rig
        .sessions
        .reload(&[credential("27AAPFU0939F1ZV", "changed", "einvoice")])
        .unwrap();
    assert_eq!(applied.changed, 1);
    assert!(!rig
        .slot
        .view()
        .same_credential(&old, DEFAULT_SESSION_LIFETIME));
}
