//! Drop-in mode with NIC e-invoice: the spec client (written from NIC's published API, not
//! from gstgate's code: `tests/common/spec_client/`), unchanged but for its base URL, public
//! key, client id and secret, works through gstgate in front of the real simulator process.

mod common;

use common::{
    dropin_client_config, invoice, with_dropin, EinvoiceClient, Gateway, GwOpts, Sim, SimOpts,
    CLIENT_ID, DROPIN_CLIENT, DROPIN_CLIENT_ID, GSTIN, PASSWORD, USER,
};
use serde_json::{json, Value};

/// A second taxpayer with a credential, which the drop-in client may not act for.
const OTHER_GSTIN: &str = "27AAACR5055K1Z7";

async fn rig(max_logins: u32) -> (Sim, Gateway) {
    let sim = Sim::start(SimOpts {
        users: vec![
            (GSTIN.into(), USER.into(), PASSWORD.into()),
            (OTHER_GSTIN.into(), USER.into(), PASSWORD.into()),
        ],
        ..SimOpts::default()
    })
    .await;
    let opts = GwOpts {
        credentials: vec![
            (GSTIN.into(), USER.into(), PASSWORD.into()),
            (OTHER_GSTIN.into(), USER.into(), PASSWORD.into()),
        ],
        max_logins,
        ..GwOpts::default()
    };
    let gw = Gateway::start(&sim, with_dropin(opts, &[GSTIN])).await;
    (sim, gw)
}

/// Acceptance 1 and 2: generate an IRN, read GSTIN details and the IRN by number; the
/// simulator only ever sees gstgate's client id and gstgate's own session; the upstream token
/// is revoked mid-run and the client neither sees an error nor logs in again.
#[tokio::test]
async fn an_unmodified_einvoice_client_works_through_gstgate() {
    let (sim, gw) = rig(4).await;
    let mut client = EinvoiceClient::new(dropin_client_config(&gw)).unwrap();

    let generated = client
        .generate_irn(&invoice(GSTIN, "DROPIN/1"))
        .await
        .unwrap();
    let irn = generated["Irn"].as_str().unwrap().to_owned();
    assert_eq!(irn.len(), 64, "{generated}");
    assert!(generated["SignedInvoice"].is_string(), "{generated}");
    let details = client.gstin_details(GSTIN).await.unwrap();
    assert_eq!(details["Gstin"], GSTIN, "{details}");
    let by_number = client.get_irn(&irn).await.unwrap();
    assert_eq!(by_number["Irn"], irn.as_str());
    assert_eq!(client.logins, 1);
    let drop_in_token = client.token().unwrap().to_owned();

    // The upstream's token dies; gstgate logs in again behind the client's back.
    sim.control("/_sim/revoke", json!({"gstin": GSTIN, "username": USER}))
        .await;
    let again = client
        .generate_irn(&invoice(GSTIN, "DROPIN/2"))
        .await
        .unwrap();
    assert!(again["Irn"].is_string());
    assert_eq!(client.logins, 1, "the client never logged in again");
    assert_eq!(client.token(), Some(drop_in_token.as_str()));
    assert_eq!(sim.count(GSTIN, "new_tokens").await, 2);
    assert_eq!(sim.count(GSTIN, "token_rejections").await, 1);

    // The simulator saw gstgate's client id and session only.
    let seen = sim.requests(200).await;
    assert!(!seen.is_empty());
    let upstream_tokens: Vec<String> = sim.get_json("/_sim/sessions").await["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["token"].as_str().map(str::to_owned))
        .collect();
    for r in &seen {
        let text = r.to_string();
        assert!(!text.contains(DROPIN_CLIENT_ID), "{text}");
        assert!(!text.contains(&drop_in_token), "{text}");
        assert_eq!(r["headers"]["client_id"], CLIENT_ID, "{text}");
        if let Some(token) = r["headers"]["authtoken"].as_str() {
            assert_ne!(token, drop_in_token);
        }
    }
    assert!(!upstream_tokens.contains(&drop_in_token));

    // Operators see it: the sessions API, the status page and the metrics.
    let listed: Value = gw
        .http
        .get(format!("http://{}/admin/sessions", gw.admin))
        .bearer_auth(common::ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        listed["dropin_sessions"],
        json!([{"upstream": "einvoice", "client": DROPIN_CLIENT, "live": 1}]),
        "{listed}"
    );
    let page = gw
        .http
        .get(format!("http://{}/status", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!(
            "<tr><td>einvoice</td><td>{DROPIN_CLIENT}</td><td>1</td></tr>"
        )),
        "{page}"
    );
    let metrics = gw.metrics().await;
    assert!(
        metrics.contains(&format!(
            "gstgate_dropin_sessions{{upstream=\"einvoice\",client=\"{DROPIN_CLIENT}\"}} 1"
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("gstgate_dropin_logins_total{upstream=\"einvoice\",result=\"success\"} 1"),
        "{metrics}"
    );
}

/// A repeat login within the token's life gets the same token (as NIC does); one that asks
/// `ForceRefreshAccessToken` gets a new one, the old one is refused with NIC's 1005, and no
/// upstream login is forced for it.
#[tokio::test]
async fn a_forced_refresh_reissues_the_drop_in_token_only() {
    let (sim, gw) = rig(4).await;
    let mut client = EinvoiceClient::new(dropin_client_config(&gw)).unwrap();
    let expiry = client.login(false).await.unwrap();
    let first = client.token().unwrap().to_owned();
    let expires = client.token_expiry().unwrap();
    let ahead = expires - chrono::Utc::now();
    assert!(
        (ahead.num_minutes() - 360).abs() <= 1,
        "TokenExpiry {expiry} is six hours ahead, in IST"
    );
    client.login(false).await.unwrap();
    assert_eq!(
        client.token(),
        Some(first.as_str()),
        "same token within validity"
    );

    client.login(true).await.unwrap();
    let second = client.token().unwrap().to_owned();
    assert_ne!(second, first);
    assert_eq!(sim.count(GSTIN, "force_refreshes").await, 0);
    assert_eq!(sim.count(GSTIN, "new_tokens").await, 1);

    // The old token, sent as a client holding it would: NIC's invalid-token code.
    let res = gw
        .http
        .get(format!(
            "http://{}/eivital/v1.04/Master/gstin/{GSTIN}",
            gw.proxy
        ))
        .header("client_id", DROPIN_CLIENT_ID)
        .header("client_secret", common::DROPIN_CLIENT_SECRET)
        .header("Gstin", GSTIN)
        .header("user_name", USER)
        .header("AuthToken", &first)
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["Status"], 0, "{body}");
    assert_eq!(body["ErrorDetails"][0]["ErrorCode"], "1005", "{body}");
    // The client's own re-login logic then runs and the call goes through.
    client.clear_session();
    assert!(client.gstin_details(GSTIN).await.is_ok());
}

/// Acceptance 3: each refusal carries NIC's own code, nothing reaches the simulator, and no
/// login allowance is spent: with `max_logins = 1`, the one real login still goes through
/// after all of them.
#[tokio::test]
async fn refused_logins_get_nics_codes_and_cost_the_upstream_nothing() {
    let (sim, gw) = rig(1).await;
    let base = dropin_client_config(&gw);
    let sim_key = std::fs::read_to_string(&sim.public_key).unwrap();
    let cases: Vec<(&str, common::SpecConfig, &str)> = vec![
        (
            "wrong password",
            common::SpecConfig {
                password: "not-the-password".into(),
                ..base.clone()
            },
            "1019",
        ),
        (
            "unknown client id",
            common::SpecConfig {
                client_id: "someone-else".into(),
                ..base.clone()
            },
            "1010",
        ),
        (
            "wrong client secret",
            common::SpecConfig {
                client_secret: "guess".into(),
                ..base.clone()
            },
            "1010",
        ),
        (
            "a GSTIN the client may not use",
            common::SpecConfig {
                gstin: OTHER_GSTIN.into(),
                ..base.clone()
            },
            "1015",
        ),
        (
            "an unknown user",
            common::SpecConfig {
                username: "nobody".into(),
                ..base.clone()
            },
            "1017",
        ),
        (
            "a payload encrypted with NIC's key instead of gstgate's",
            common::SpecConfig {
                public_key_pem: sim_key,
                ..base.clone()
            },
            "1013",
        ),
    ];
    for (what, config, code) in cases {
        let mut client = EinvoiceClient::new(config).unwrap();
        let err = client.login(false).await.expect_err(what);
        assert!(err.has_code(code), "{what}: expected {code}, got {err}");
    }
    assert!(
        sim.requests(200).await.is_empty(),
        "nothing reached the simulator"
    );
    assert_eq!(sim.counters().await["auth_calls"], 0);
    let metrics = gw.metrics().await;
    assert!(
        !metrics.contains("gstgate_auth_requests_total{"),
        "no upstream login: {metrics}"
    );
    for (result, n) in [
        ("credentials_rejected", 2),
        ("client_rejected", 2),
        ("gstin_not_allowed", 1),
        ("bad_payload", 1),
    ] {
        let series =
            format!("gstgate_dropin_logins_total{{upstream=\"einvoice\",result=\"{result}\"}} {n}");
        assert!(metrics.contains(&series), "{series}: {metrics}");
    }
    let mut client = EinvoiceClient::new(base).unwrap();
    client.login(false).await.unwrap();
    assert_eq!(sim.counters().await["auth_calls"], 1);
}

/// Sends a drop-in data call with explicit headers, as a client holding `token` would.
async fn details_with(gw: &Gateway, client: (&str, &str), gstin: &str, token: &str) -> Value {
    gw.http
        .get(format!(
            "http://{}/eivital/v1.04/Master/gstin/{gstin}",
            gw.proxy
        ))
        .header("client_id", client.0)
        .header("client_secret", client.1)
        .header("Gstin", gstin)
        .header("user_name", USER)
        .header("AuthToken", token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// A drop-in token works only for the client, upstream and GSTIN it was issued to: another
/// client holding it, or the same client naming another GSTIN, is refused as NIC refuses a
/// token that is not theirs, and nothing reaches the simulator.
#[tokio::test]
async fn a_drop_in_token_is_bound_to_its_client_and_gstin() {
    let sim = Sim::start(SimOpts {
        users: vec![
            (GSTIN.into(), USER.into(), PASSWORD.into()),
            (OTHER_GSTIN.into(), USER.into(), PASSWORD.into()),
        ],
        ..SimOpts::default()
    })
    .await;
    let mut opts = with_dropin(
        GwOpts {
            credentials: vec![
                (GSTIN.into(), USER.into(), PASSWORD.into()),
                (OTHER_GSTIN.into(), USER.into(), PASSWORD.into()),
            ],
            ..GwOpts::default()
        },
        &[GSTIN, OTHER_GSTIN],
    );
    opts.extra_toml.push_str(&format!(
        "\n[[client]]\nname = \"other-asp\"\nclient_id = \"asp-other\"\nclient_secret_sha256 = \"{}\"\ngstins = [\"*\"]\n",
        gstgate::cli::hex_sha256(b"other-secret")
    ));
    let gw = Gateway::start(&sim, opts).await;
    let mut client = EinvoiceClient::new(dropin_client_config(&gw)).unwrap();
    client.login(false).await.unwrap();
    let token = client.token().unwrap().to_owned();
    let ours = (DROPIN_CLIENT_ID, common::DROPIN_CLIENT_SECRET);
    assert_eq!(details_with(&gw, ours, GSTIN, &token).await["Status"], 1);
    let before = sim.requests(200).await.len();

    let stolen = details_with(&gw, ("asp-other", "other-secret"), GSTIN, &token).await;
    assert_eq!(stolen["ErrorDetails"][0]["ErrorCode"], "1005", "{stolen}");
    let other_gstin = details_with(&gw, ours, OTHER_GSTIN, &token).await;
    assert_eq!(
        other_gstin["ErrorDetails"][0]["ErrorCode"], "1015",
        "{other_gstin}"
    );
    let forged = details_with(&gw, ours, GSTIN, &"0".repeat(32)).await;
    assert_eq!(forged["ErrorDetails"][0]["ErrorCode"], "1005", "{forged}");
    assert_eq!(
        sim.requests(200).await.len(),
        before,
        "no refused call reached the simulator"
    );
}

/// gstgate's base64 decoder is vector code now; an `AppKey` spelled in base64 that is not
/// canonical (trailing bits set) is still refused as no AppKey, while the canonical spelling
/// of the same 32 bytes logs in.
#[tokio::test]
async fn a_non_canonical_base64_app_key_is_refused() {
    use common::spec_client::crypto::public_key_from_pem;
    let (_sim, gw) = rig(4).await;
    let config = dropin_client_config(&gw);
    let client = EinvoiceClient::new(dropin_client_config(&gw)).unwrap();
    let ours = public_key_from_pem(&common::dropin_public_pem()).unwrap();
    let payload = |app_key: String| {
        json!({
            "UserName": config.username,
            "Password": config.password,
            "AppKey": app_key,
            "ForceRefreshAccessToken": false,
        })
    };
    let canonical = client
        .login_raw(&payload(format!("{}=", "A".repeat(43))), &ours)
        .await;
    assert!(canonical.is_ok(), "{canonical:?}");
    let loose = client
        .login_raw(&payload(format!("{}B=", "A".repeat(42))), &ours)
        .await
        .unwrap_err();
    assert_eq!(loose.codes(), ["1016"], "{loose:?}");
}

/// The login answer never tells whether gstgate's RSA padding held (no padding oracle): a
/// payload under another key and a payload under gstgate's key that decrypts to garbage get
/// the same code.
#[tokio::test]
async fn garbage_under_gstgates_key_and_another_key_are_the_same_refusal() {
    use common::spec_client::crypto::{b64, public_key_from_pem};
    use rsa::Pkcs1v15Encrypt;
    let (sim, gw) = rig(4).await;
    let ours = public_key_from_pem(&common::dropin_public_pem()).unwrap();
    let theirs = public_key_from_pem(&std::fs::read_to_string(&sim.public_key).unwrap()).unwrap();
    let mut codes = Vec::new();
    for (key, plain) in [
        (&ours, &b"not base64 at all {"[..]),
        (&ours, b"bm90IEpTT04="),
        (&theirs, b"eyJVc2VyTmFtZSI6ImEifQ=="),
    ] {
        let sealed = key
            .encrypt(&mut rand::rngs::OsRng, Pkcs1v15Encrypt, plain)
            .unwrap();
        let reply: Value = gw
            .http
            .post(format!("http://{}/eivital/v1.04/auth", gw.proxy))
            .header("client_id", DROPIN_CLIENT_ID)
            .header("client_secret", common::DROPIN_CLIENT_SECRET)
            .header("Gstin", GSTIN)
            .json(&json!({ "Data": b64(&sealed) }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        codes.push(reply["ErrorDetails"][0]["ErrorCode"].clone());
    }
    assert_eq!(codes, vec![json!("1013"); 3]);
    assert_eq!(sim.counters().await["auth_calls"], 0);
}

/// A client cannot turn its client secret into a password oracle: after five logins failed
/// on its own guesses within NIC's 15-minute window, its next login (even a right one) gets
/// 429 with `Retry-After` before gstgate decrypts anything; another client is unaffected.
#[tokio::test]
async fn a_client_guessing_passwords_is_stopped() {
    let sim = Sim::start(SimOpts::default()).await;
    let mut opts = with_dropin(GwOpts::default(), &[GSTIN]);
    opts.extra_toml.push_str(&format!(
        "\n[[client]]\nname = \"other-asp\"\nclient_id = \"asp-other\"\nclient_secret_sha256 = \"{}\"\ngstins = [\"*\"]\n",
        gstgate::cli::hex_sha256(b"other-secret")
    ));
    let gw = Gateway::start(&sim, opts).await;
    for guess in 0..5 {
        let mut client = EinvoiceClient::new(common::SpecConfig {
            password: format!("guess-{guess}"),
            ..dropin_client_config(&gw)
        })
        .unwrap();
        let err = client.login(false).await.expect_err("a wrong password");
        assert!(err.has_code("1019"), "{err}");
    }
    let res = gw
        .http
        .post(format!("http://{}/eivital/v1.04/auth", gw.proxy))
        .header("client_id", DROPIN_CLIENT_ID)
        .header("client_secret", common::DROPIN_CLIENT_SECRET)
        .header("Gstin", GSTIN)
        .json(&json!({"Data": "AAAA"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 429);
    let wait: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=900).contains(&wait), "{wait}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "login_rate_limited", "{body}");
    let mut right = EinvoiceClient::new(dropin_client_config(&gw)).unwrap();
    assert!(right.login(false).await.is_err(), "stopped for the window");
    let mut other = EinvoiceClient::new(common::SpecConfig {
        client_id: "asp-other".into(),
        client_secret: "other-secret".into(),
        ..dropin_client_config(&gw)
    })
    .unwrap();
    other.login(false).await.unwrap();
    assert!(gw
        .metrics()
        .await
        .contains("gstgate_dropin_logins_total{upstream=\"einvoice\",result=\"limited\"} 2"));
}

/// A caller without a known client id and secret makes gstgate read no body: its refusal
/// comes from its headers alone, even with a body over the size limit.
#[tokio::test]
async fn an_unknown_client_is_refused_before_its_body_is_read() {
    let (sim, gw) = rig(4).await;
    let huge = "x".repeat(100_000);
    for path in ["/eivital/v1.04/auth", "/eicore/v1.03/Invoice"] {
        // A connection of its own: one whose body was never read is not reused.
        let res = reqwest::Client::new()
            .post(format!("http://{}{path}", gw.proxy))
            .header("client_id", "who-knows")
            .header("client_secret", "guess")
            .header("Gstin", GSTIN)
            .body(huge.clone())
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body["ErrorDetails"][0]["ErrorCode"], "1010",
            "{path}: {body}"
        );
    }
    assert!(sim.requests(200).await.is_empty());
}

/// A drop-in caller's path is normalised and checked before anything else, as any caller's:
/// encoded dot segments and slashes are refused with 400 `path_invalid`, whatever its client
/// headers say, and nothing reaches the simulator.
#[tokio::test]
async fn a_drop_in_caller_cannot_walk_out_of_the_routes() {
    let (sim, gw) = rig(4).await;
    for target in [
        "/eicore/v1.03/%2e%2e/%2e%2e/_sim/counters",
        "/eivital/v1.04/%2E%2E/auth",
        "/eicore/v1.03/Invoice%2f..%2f..%2f_sim",
        "/eicore/v1.03/./Invoice",
    ] {
        let head = format!(
            "GET {target} HTTP/1.1\r\nhost: gw\r\nclient_id: {DROPIN_CLIENT_ID}\r\nclient_secret: {}\r\nGstin: {GSTIN}\r\nconnection: close\r\n\r\n",
            common::DROPIN_CLIENT_SECRET
        );
        let text =
            common::raw_exchange(gw.proxy, &head, b"", std::time::Duration::from_secs(5)).await;
        let (status, _, body) = common::parse_raw(&text);
        assert_eq!(status, 400, "{target}: {text}");
        assert_eq!(body["code"], "path_invalid", "{target}: {body}");
    }
    assert!(sim.requests(200).await.is_empty());
}
