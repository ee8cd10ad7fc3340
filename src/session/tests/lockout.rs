//! Lockouts, login limits and OTP rooms: rejected credentials, backoff, the login allowance
//! and what an OTP request may spend. The rules on the paused clock against the scripted
//! upstream, with the rest of the session rules in `super`.

use super::*;

/// Lockout: rejected credentials stop every login until an operator's refresh, which clears
/// the lockout and logs in. Broken by: retrying a rejected password.
#[tokio::test(start_paused = true)]
async fn rejected_credentials_stop_logins_until_an_operator_refresh() {
    let fake = Fake::new(Api::Einvoice, GRACE);
    fake.script([Scripted::Refuse(Class::CredentialsRejected, "1008")]);
    let rig = Rig::new(Api::Einvoice, &fake, "");
    assert!(matches!(
        session(&rig).await,
        Err(GatewayError::CredentialsRejected { .. })
    ));
    sleep(HOUR).await;
    for _ in 0..3 {
        assert!(matches!(
            session(&rig).await,
            Err(GatewayError::CredentialsRejected { .. })
        ));
    }
    assert_eq!(fake.calls().len(), 1);
    assert_eq!(state(&rig), State::CredentialsRejected);
    assert_eq!(attention(&rig), [State::CredentialsRejected]);
    rig.sessions.refresh_now(&rig.slot).await.unwrap();
    assert_eq!(fake.calls().len(), 2);
    assert_eq!(state(&rig), State::Valid);
    assert_eq!(
        attention(&rig),
        [],
        "a healthy slot is not handed to the alert rules"
    );
}

/// Backoff and the login limit: after a transient failure the next login waits out a
/// backoff (callers meanwhile get `login_backoff`, with no call); however callers insist, at
/// most `max_logins` logins go out per `login_window`. Broken by: no backoff, or no limit.
#[tokio::test(start_paused = true)]
async fn failed_logins_back_off_and_stay_within_the_login_limit() {
    let fake = Fake::new(Api::Einvoice, GRACE);
    fake.script(std::iter::repeat_n(Scripted::Unavailable, 20));
    let rig = Rig::new(Api::Einvoice, &fake, "");
    assert!(matches!(
        session(&rig).await,
        Err(GatewayError::UpstreamUnavailable(_))
    ));
    assert!(matches!(
        session(&rig).await,
        Err(GatewayError::LoginBackoff { .. })
    ));
    assert_eq!(fake.calls().len(), 1, "no call during the backoff");
    assert_eq!(
        attention(&rig).len(),
        1,
        "a failed login is handed to the alert rules"
    );
    let start = Instant::now();
    while Instant::now() < start + LOGIN_WINDOW - MINUTE {
        let _ = session(&rig).await;
        sleep(Duration::from_secs(5)).await;
    }
    let calls = fake.calls();
    assert!(calls.len() <= 4, "{} logins in a window", calls.len());
    assert!(calls.len() >= 3, "backoffs still let logins through");
    assert!(matches!(
        session(&rig).await,
        Err(GatewayError::LoginThrottled { .. } | GatewayError::LoginBackoff { .. })
    ));
}

/// A login that never reached the upstream (no connection) is given back to the login
/// allowance: only the backoff paces the next one, so an upstream that was unreachable for a
/// while does not leave the credential throttled once it is back. Broken by: counting such
/// logins (the fifth attempt in the window is throttled).
#[tokio::test(start_paused = true)]
async fn a_login_that_never_reached_the_upstream_is_given_back() {
    let fake = Fake::new(Api::Einvoice, GRACE);
    fake.script(std::iter::repeat_n(Scripted::Unreachable, 5));
    let rig = Rig::new(Api::Einvoice, &fake, "");
    for _ in 0..5 {
        assert!(matches!(
            session(&rig).await,
            Err(GatewayError::UpstreamUnreachable(_))
        ));
        sleep(2 * MINUTE).await;
    }
    session(&rig)
        .await
        .expect("the sixth login in the window goes out");
    assert_eq!(fake.calls().len(), 6);
}

/// An OTP is never wasted, and the allowance never overdrawn: with the default 4 logins per
/// window, every sequence of five operator calls (OTP request, OTP submission, a wrong OTP,
/// refresh) at one instant, the worst case for the window, makes at most 4 upstream calls
/// and leaves no OTP request that sent an OTP whose first submission is then refused for the
/// allowance; an OTP request without room for its OTP login is refused up front, with
/// `Retry-After`. (A retry after a wrong OTP is a login like any other: the room was spent.)
/// Broken by: an OTP request admitted with room for itself only (the window is overdrawn),
/// or other logins taking the room an OTP request left (its submission is refused).
#[tokio::test(start_paused = true)]
async fn no_sequence_of_operator_calls_wastes_an_otp() {
    #[derive(Debug, Clone, Copy)]
    enum Op {
        Request,
        Submit,
        WrongOtp,
        Refresh,
    }
    const OPS: [Op; 4] = [Op::Request, Op::Submit, Op::WrongOtp, Op::Refresh];
    let mut refused_up_front = 0;
    for n in 0..OPS.len().pow(5) {
        let sequence: Vec<Op> = (0..5)
            .map(|i| OPS[n / OPS.len().pow(i) % OPS.len()])
            .collect();
        let fake = Fake::new(Api::Gstn, GRACE);
        let rig = Rig::new(Api::Gstn, &fake, "");
        let mut otp_sent = false;
        for op in &sequence {
            match op {
                Op::Request => match rig.sessions.request_otp(&rig.slot).await {
                    Ok(()) => otp_sent = true,
                    Err(GatewayError::LoginThrottled { retry_after_secs }) => {
                        assert!(retry_after_secs > 0, "{sequence:?}");
                        refused_up_front += 1;
                    }
                    Err(e) => panic!("{sequence:?}: {e}"),
                },
                Op::Submit | Op::WrongOtp => {
                    if matches!(op, Op::WrongOtp) {
                        fake.script([Scripted::Refuse(Class::OtpRejected, "AUTH4034")]);
                    }
                    let submitted = rig
                        .sessions
                        .submit_otp(&rig.slot, "575757".to_owned().into())
                        .await;
                    if otp_sent {
                        assert!(
                            !matches!(submitted, Err(GatewayError::LoginThrottled { .. })),
                            "{sequence:?}: an OTP that was sent is refused for the allowance"
                        );
                    }
                    // Right or wrong, the OTP login the request left room for was made.
                    if !matches!(submitted, Err(GatewayError::LoginThrottled { .. })) {
                        otp_sent = false;
                    }
                }
                Op::Refresh => {
                    let _ = rig.sessions.refresh_now(&rig.slot).await;
                }
            }
        }
        assert!(
            fake.calls().len() <= 4,
            "{sequence:?}: {:?} overdraws the allowance",
            fake.kinds()
        );
    }
    assert!(refused_up_front > 0, "some sequences ran out of allowance");
}

/// A drop-in client's OTP request is not an operator's: it never clears a lockout (nor sends
/// an OTP while one is on its way, or while a session lives), where the operator's does.
/// Broken by: a client's OTP flow taking the operator's turn (`reset_guard`).
#[tokio::test(start_paused = true)]
async fn a_client_otp_request_never_clears_a_lockout() {
    use crate::session::Asker;
    let fake = Fake::new(Api::Gstn, GRACE);
    let rig = Rig::new(Api::Gstn, &fake, "");
    let sessions = &rig.sessions;
    assert!(sessions
        .request_otp_as(&rig.slot, Asker::Client)
        .await
        .unwrap());
    assert!(
        !sessions
            .request_otp_as(&rig.slot, Asker::Client)
            .await
            .unwrap(),
        "an OTP is on its way"
    );
    sessions
        .submit_otp_as(&rig.slot, "575757".to_owned().into(), Asker::Client)
        .await
        .unwrap();
    assert!(
        !sessions
            .request_otp_as(&rig.slot, Asker::Client)
            .await
            .unwrap(),
        "a session lives"
    );
    // The portal refuses the refresh: API access is off. The slot is locked out.
    fake.script([Scripted::Refuse(Class::AccessDisabled, "AUTH4037")]);
    assert!(sessions.refresh_now(&rig.slot).await.is_err());
    // The token runs out: no session lives, nothing is on its way, only the lockout stands.
    sleep(7 * HOUR).await;
    assert!(rig.slot.current().is_none());
    let before = fake.kinds().len();
    let refused = sessions.request_otp_as(&rig.slot, Asker::Client).await;
    assert!(
        matches!(refused, Err(GatewayError::ApiAccessDisabled { .. })),
        "{refused:?}"
    );
    let refused = sessions
        .submit_otp_as(&rig.slot, "575757".to_owned().into(), Asker::Client)
        .await;
    assert!(matches!(
        refused,
        Err(GatewayError::ApiAccessDisabled { .. })
    ));
    assert_eq!(fake.kinds().len(), before, "nothing reached the portal");
    sessions.request_otp(&rig.slot).await.unwrap();
    assert_eq!(
        fake.kinds().last(),
        Some(&Call::OtpRequest),
        "the operator's does"
    );
}
