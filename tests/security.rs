//! Security regression tests (SECURITY.md): every probe of the attack that found `..` walking
//! out of the routes, sent over real HTTP to the real binary, with the simulator as the
//! upstream and witness. A caller here holds a valid API key but is not trusted with other
//! tenants, with the upstream's other paths or with gstgate's own credentials.
//!
//! Paths are sent over raw TCP: HTTP client libraries resolve dot segments before sending,
//! which is exactly what an attacker's client does not do.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};

/// The second tenant's key: its client may act only for [`OTHER`].
const OTHER_KEY: &str = "other-tenant-key-5678";

/// The GSTIN the second tenant may use.
fn other() -> String {
    gstin_n(1)
}

/// Both tenants' credentials on all three APIs, the way the attack found them.
fn two_tenants() -> (SimOpts, GwOpts) {
    let users = vec![
        (GSTIN.into(), USER.into(), PASSWORD.into()),
        (other(), USER.into(), PASSWORD.into()),
    ];
    let sim = SimOpts {
        users: users.clone(),
        extra: vec!["--fixed-otp".into(), "575757".into()],
        ..SimOpts::default()
    };
    let gw = GwOpts {
        apis: vec!["einvoice", "ewaybill", "gstn"],
        credentials: users,
        clients: vec![
            ("billing".into(), API_KEY.into(), vec![GSTIN.into()]),
            ("other".into(), OTHER_KEY.into(), vec![other()]),
        ],
        // The production default (e-way bill allows at most 5).
        max_logins: 4,
        ..GwOpts::default()
    };
    (sim, gw)
}

/// A raw HTTP/1.1 request head with the given target and no body, closing the connection
/// after the answer.
fn head(method: &str, target: &str, key: &str, gstin: &str, extra: &str) -> String {
    head_for_body(method, target, key, gstin, extra, 0)
}

/// Like [`head`], for a body of `len` bytes; `extra` is whole header lines.
fn head_for_body(
    method: &str,
    target: &str,
    key: &str,
    gstin: &str,
    extra: &str,
    len: usize,
) -> String {
    format!(
        "{method} {target} HTTP/1.1\r\nhost: gstgate\r\nx-api-key: {key}\r\ngstin: {gstin}\r\n{extra}content-length: {len}\r\nconnection: close\r\n\r\n"
    )
}

/// The simulator's request log, as (method, path, headers) for the assertions below.
async fn upstream_log(sim: &Sim) -> Vec<Value> {
    sim.requests(200).await
}

#[tokio::test]
async fn every_traversal_spelling_is_refused_before_the_upstream_sees_it() {
    let (sim_opts, gw_opts) = two_tenants();
    let sim = Sim::start(sim_opts).await;
    let gw = Gateway::start(&sim, gw_opts).await;
    // One legitimate call first, so the log has an entry the `DELETE` probe would erase.
    let res = gw
        .request_for(
            reqwest::Method::GET,
            "/eivital/v1.04/Master/gstin/27AAACR5055K1Z7",
            GSTIN,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let before = upstream_log(&sim).await;
    let before_counters = sim.counters().await;

    let probes = [
        ("GET", "/eicore/../_sim/sessions"),
        ("GET", "/eicore/%2e%2e/_sim/sessions"),
        ("GET", "/eicore/%2E%2E/_sim/sessions"),
        ("GET", "/eicore/%2E%2e/_sim/sessions"),
        ("GET", "/eicore/.%2e/_sim/sessions"),
        ("GET", "/eicore/%2e./_sim/sessions"),
        ("GET", "/eicore/..\\_sim/sessions"),
        ("GET", "/eicore/..%5c_sim/sessions"),
        ("GET", "/eicore/..%5C_sim/sessions"),
        ("GET", "/eicore/%2e%2e%2f_sim/sessions"),
        ("GET", "/eicore/..;/_sim/sessions"),
        ("GET", "/eicore//../_sim/sessions"),
        ("GET", "/eicore/v1.03/./Invoice"),
        ("GET", "/eicore/v1.03/Invoice/..."),
        ("GET", "/eicore/%252e%252e/_sim/sessions"),
        ("POST", "/ewaybillapi/../_sim/reject-tokens"),
        ("DELETE", "/eicore/../_sim/requests"),
        ("POST", "/taxpayerapi/v1.0/./authenticate"),
        ("POST", "/taxpayerapi/v1.0/.%2E/v1.0/authenticate"),
        // Nothing to decode: these are judged by the one-pass check alone.
        ("POST", "/eicore/v1.03/Invoice."),
        ("POST", "/eicore./v1.03/Invoice"),
        ("POST", "/eicore//v1.03/Invoice"),
        ("POST", "/eicore/v1.03/Invoice//"),
        ("GET", "/eicore/v1.03/~Invoice"),
        ("GET", "/eivital/v1.04/Master/gstin/27AAACR5055K1Z7:80"),
    ];
    for (key, gstin) in [(OTHER_KEY, other()), (API_KEY, GSTIN.to_owned())] {
        for (method, target) in probes {
            let text = raw_exchange(
                gw.proxy,
                &head(method, target, key, &gstin, ""),
                b"",
                Duration::from_secs(10),
            )
            .await;
            let (status, head, body) = parse_raw(&text);
            assert_eq!(status, 400, "{method} {target}: {text}");
            assert_eq!(body["code"], "path_invalid", "{method} {target}: {body}");
            assert!(head.contains("content-type: application/problem+json"));
            assert!(head.contains("x-request-id: "), "{head}");
            assert!(body["request_id"].is_string());
        }
    }
    // Nothing reached the upstream, nothing there changed.
    assert_eq!(upstream_log(&sim).await, before);
    assert_eq!(sim.counters().await, before_counters);
    assert_eq!(
        gw.metric(r#"gstgate_requests_total{upstream="none",status="4xx"}"#)
            .await,
        2.0 * probes.len() as f64
    );
}

#[tokio::test]
async fn methods_no_gst_api_uses_are_refused_before_the_upstream() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    // TRACE is the dangerous one: an upstream that honours it echoes the request, gstgate's
    // client secret and the taxpayer's token included, back to the caller.
    for method in ["TRACE", "OPTIONS", "PATCH", "PROPFIND", "HEAD"] {
        let text = raw_exchange(
            gw.proxy,
            &head(method, "/eicore/v1.03/Invoice", API_KEY, GSTIN, ""),
            b"",
            Duration::from_secs(10),
        )
        .await;
        let status_line = text.lines().next().unwrap_or_default();
        assert!(status_line.contains(" 405 "), "{method}: {text}");
        assert!(
            text.to_ascii_lowercase()
                .contains("allow: get, post, put, delete"),
            "{method}: {text}"
        );
        if method != "HEAD" {
            let (_, _, body) = parse_raw(&text);
            assert_eq!(body["code"], "method_not_allowed", "{method}");
        }
    }
    assert!(upstream_log(&sim).await.is_empty());
    let counters = sim.counters().await;
    assert_eq!(counters["auth_calls"], 0, "{counters}");
    assert_eq!(counters["requests"], 0, "{counters}");
}

/// A compressed body would reach the upstream as bytes labelled JSON (its `Content-Encoding`
/// does not travel upstream), in either encryption mode: refused, with nothing sent.
#[tokio::test]
async fn a_compressed_body_is_refused_before_the_upstream() {
    let sim = Sim::start(SimOpts::default()).await;
    for encryption in ["gateway", "passthrough"] {
        let gw = Gateway::start(
            &sim,
            GwOpts {
                encryption,
                ..GwOpts::default()
            },
        )
        .await;
        for coding in ["gzip", "identity, br", "x-custom"] {
            let res = gw
                .request(reqwest::Method::POST, "/eicore/v1.03/Invoice")
                .header("content-encoding", coding)
                .body(vec![0x1f, 0x8b, 0x08, 0x00])
                .send()
                .await
                .unwrap();
            let body = expect_problem(res, 400, "body_invalid").await;
            assert!(
                body["detail"]
                    .as_str()
                    .unwrap()
                    .contains("Content-Encoding"),
                "{encryption} {coding}: {body}"
            );
        }
        // `identity` is no coding at all.
        let res = gw
            .request(reqwest::Method::POST, "/eicore/v1.03/Invoice")
            .header("content-encoding", "identity")
            .json(&invoice(GSTIN, &format!("ID/{encryption}")))
            .send()
            .await
            .unwrap();
        assert_ne!(res.status(), 400, "{encryption}: identity is accepted");
    }
    // Only the two `identity` requests reached the upstream.
    let calls = upstream_log(&sim).await;
    let invoices = calls
        .iter()
        .filter(|c| c["path"] == "/eicore/v1.03/Invoice")
        .count();
    assert_eq!(invoices, 2, "{calls:?}");
}

/// The other tenant's GSTN return summary call with `query`, over raw HTTP: status and body.
async fn other_tenant_returns(gw: &Gateway, query: &str) -> (u16, Value) {
    let target = format!("/taxpayerapi/v1.0/returns/gstr1?{query}");
    let extra = "ret_period: 102026\r\n";
    let text = raw_exchange(
        gw.proxy,
        &head("GET", &target, OTHER_KEY, &other(), extra),
        b"",
        Duration::from_secs(10),
    )
    .await;
    let (status, _, body) = parse_raw(&text);
    (status, body)
}

#[tokio::test]
async fn a_gstn_query_naming_another_taxpayer_is_refused() {
    let (sim_opts, gw_opts) = two_tenants();
    let sim = Sim::start(sim_opts).await;
    let gw = Gateway::start(&sim, gw_opts).await;
    gw.start_gstn_session(&sim, &other()).await;
    let before = upstream_log(&sim).await.len();
    // The other tenant, with its own GSTIN in the header, names the first tenant's in the
    // query, plainly, with an encoded value, in another case, or as a second parameter (an
    // encoded name is refused before this check: see the next test).
    let victim = GSTIN;
    let encoded: String = victim.bytes().map(|b| format!("%{b:02X}")).collect();
    for query in [
        format!("action=RETSUM&gstin={victim}&ret_period=102026"),
        format!("action=RETSUM&GSTIN={victim}&ret_period=102026"),
        format!("action=RETSUM&gstin={encoded}&ret_period=102026"),
        format!(
            "action=RETSUM&gstin={}&gstin={victim}&ret_period=102026",
            other()
        ),
    ] {
        let (status, body) = other_tenant_returns(&gw, &query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["code"], "gstin_mismatch", "{query}: {body}");
    }
    assert_eq!(
        upstream_log(&sim).await.len(),
        before,
        "a call reached the upstream"
    );
    // Its own GSTIN in the query is served.
    let query = format!("action=RETSUM&gstin={}&ret_period=102026", other());
    let (status, body) = other_tenant_returns(&gw, &query).await;
    assert_eq!(status, 200, "{body}");
}

/// Parameter names some server-side parsers read as `gstin` (PHP's `gstin[]`, a `+` or `.`
/// turned into nothing, a NUL that ends a C string, `;` as a separator, a percent-encoded
/// name): the check above compares plain `gstin` parameters only, so every such name is
/// refused, and nothing reaches the upstream.
#[tokio::test]
async fn gstn_query_names_a_parser_could_read_as_gstin_are_refused() {
    let (sim_opts, gw_opts) = two_tenants();
    let sim = Sim::start(sim_opts).await;
    let gw = Gateway::start(&sim, gw_opts).await;
    gw.start_gstn_session(&sim, &other()).await;
    let before = upstream_log(&sim).await.len();
    let calls = sim.count(&other(), "requests").await;
    let victim = GSTIN;
    for name in [
        "gstin[]", "+gstin", "gstin+", "gstin%00", ";gstin", "gstin.", "%67stin",
    ] {
        let query = format!("action=RETSUM&{name}={victim}&ret_period=102026");
        let (status, body) = other_tenant_returns(&gw, &query).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert_eq!(body["code"], "path_invalid", "{query}: {body}");
    }
    // A `;` in a value is a separator to those parsers too.
    let query = format!("action=RETSUM;gstin={victim}&ret_period=102026");
    let (status, body) = other_tenant_returns(&gw, &query).await;
    assert_eq!(status, 400, "{query}: {body}");
    assert_eq!(body["code"], "path_invalid", "{query}: {body}");
    assert_eq!(
        upstream_log(&sim).await.len(),
        before,
        "a call reached the upstream"
    );
    assert_eq!(sim.count(&other(), "requests").await, calls);
    // The query the API documents is served.
    let query = format!("action=RETSUM&gstin={}&ret_period=102026", other());
    let (status, body) = other_tenant_returns(&gw, &query).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(sim.count(&other(), "requests").await, calls + 1);
}

#[tokio::test]
async fn no_spelling_of_an_auth_path_reaches_the_upstream() {
    let (sim_opts, gw_opts) = two_tenants();
    let sim = Sim::start(sim_opts).await;
    let gw = Gateway::start(&sim, gw_opts).await;

    // GSTN: a caller-built OTPREQUEST in any spelling the portal would accept is answered by
    // gstgate, which never starts a GSTN session for a caller.
    let otp_request = json!({"action": "OTPREQUEST", "username": USER, "app_key": "AAAA"});
    for target in [
        "/taxpayerapi/v1.0/authenticate",
        "/taxpayerapi/v1.0/authenticate/",
        "/taxpayerapi/V1.0/AUTHENTICATE",
        "/taxpayerapi/v0.2/authenticate",
        "/taxpayerapi/v2.0/Authenticate",
        "/taxpayerapi/v1.0/%61uthenticate",
        "/taxpayerapi/v1.0/authenticat%65",
    ] {
        let res = gw
            .http
            .post(format!("http://{}{target}", gw.proxy))
            .header("x-api-key", API_KEY)
            .header("gstin", GSTIN)
            .json(&otp_request)
            .send()
            .await
            .unwrap();
        expect_problem(res, 503, "otp_required").await;
    }
    // E-invoice: the versions and cases of the auth path get gstgate's own answer, without
    // the token or SEK; only gstgate's single login reached the upstream, on its configured
    // path.
    for target in [
        "/eivital/v1.04/auth",
        "/eivital/v1.03/auth",
        "/EIVITAL/V1.04/AUTH",
        "/eivital/v1.04/Auth/",
    ] {
        let text = raw_exchange(
            gw.proxy,
            &head("POST", target, API_KEY, GSTIN, ""),
            b"",
            Duration::from_secs(10),
        )
        .await;
        let (status, _, body) = parse_raw(&text);
        // Routes are case-sensitive: the upper-case spelling is no route at all.
        if target.starts_with("/EIVITAL") {
            assert_eq!(status, 404, "{target}: {body}");
            continue;
        }
        assert_eq!(status, 200, "{target}: {body}");
        assert_eq!(body["Data"]["AuthToken"], "managed-by-gstgate", "{target}");
    }
    let log = upstream_log(&sim).await;
    let paths: Vec<&str> = log.iter().filter_map(|r| r["path"].as_str()).collect();
    assert_eq!(paths, ["/eivital/v1.04/auth"], "upstream log: {log:?}");
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1);
}

/// Headers a caller sends that no GST API call needs from it: identity and credential
/// spellings, hop-by-hop headers, and an unlisted one. (Every raw request also sends
/// `host: gstgate`, which must not reach the upstream either.)
const FORGED: &[(&str, &str)] = &[
    ("username", "attacker"),
    ("UserName", "attacker"),
    ("user-name", "attacker"),
    ("user_name", USER),
    ("password", "attacker-password"),
    ("auth_token", "attacker-token"),
    ("authtoken", "attacker-token"),
    ("auth-token", "attacker-token"),
    ("sek", "attacker-sek"),
    ("appkey", "attacker-appkey"),
    ("state-cd", "99"),
    ("ip-usr", "10.6.6.6"),
    ("txn", "attacker-txn"),
    ("client_id", "attacker-client"),
    ("client-id", "attacker-client"),
    ("clientid", "attacker-client"),
    ("client_secret", "attacker-secret"),
    ("client-secret", "attacker-secret"),
    ("http2-settings", "AAMAAABkAAQCAAAAAAIAAAAA"),
    ("x-unlisted", "1"),
    ("x-hop", "hop-by-hop"),
    ("keep-alive", "timeout=5"),
];

/// The logged upstream request whose `x-request-id` is `id`.
async fn logged_request(sim: &Sim, id: &str) -> Value {
    let log = upstream_log(sim).await;
    log.iter()
        .rev()
        .find(|r| r["headers"]["x-request-id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("no upstream request with id {id}: {log:?}"))
}

/// The headers of the logged upstream request whose `x-request-id` is `id`.
async fn logged(sim: &Sim, id: &str) -> BTreeMap<String, String> {
    serde_json::from_value(logged_request(sim, id).await["headers"].clone()).unwrap()
}

#[tokio::test]
async fn only_the_headers_an_api_needs_reach_the_upstream_with_gstgates_values() {
    let (sim_opts, mut gw_opts) = two_tenants();
    // A GSP that needs one header of its own from the caller; the caller names it, and one
    // more, hop-by-hop in `Connection`.
    gw_opts.upstream_extra = r#"forward_headers = ["X-GSP-Branch", "x-hop"]"#.into();
    let sim = Sim::start(sim_opts).await;
    let gw = Gateway::start(&sim, gw_opts).await;
    gw.start_gstn_session(&sim, GSTIN).await;

    let calls = [
        (
            "einvoice",
            "POST",
            "/eicore/v1.03/Invoice".to_owned(),
            invoice(GSTIN, "SEC-1").to_string(),
        ),
        (
            "ewaybill",
            "GET",
            "/ewaybillapi/v1.03/ewayapi/GetEwayBill?ewbNo=999999999999".to_owned(),
            String::new(),
        ),
        (
            "gstn",
            "GET",
            format!(
                "/taxpayerapi/v1.0/returns/gstr1?action=RETSUM&gstin={GSTIN}&ret_period=102026"
            ),
            String::new(),
        ),
    ];
    for (api, method, path, body) in calls {
        let id = format!("sec-headers-{api}");
        // Raw, so that every header goes out exactly as written (client libraries drop or
        // rewrite some hop-by-hop ones); the gateway's `connection: close` is sent too.
        let mut extra = format!(
            "x-request-id: {id}\r\nx-gsp-branch: mumbai-2\r\nret_period: 102026\r\nconnection: x-hop\r\ncontent-type: application/json\r\n"
        );
        for (name, value) in FORGED {
            extra.push_str(&format!("{name}: {value}\r\n"));
        }
        let text = raw_exchange(
            gw.proxy,
            &head_for_body(method, &path, API_KEY, GSTIN, &extra, body.len()),
            body.as_bytes(),
            Duration::from_secs(10),
        )
        .await;
        let (status, head, reply) = parse_raw(&text);
        assert!(
            head.contains(&format!("x-request-id: {id}\r\n"))
                || head.ends_with(&format!("x-request-id: {id}")),
            "{api}: the caller's valid id comes back: {head}"
        );
        assert_eq!(status, 200, "{api}: {reply}");
        let seen = logged(&sim, &id).await;
        // The caller's `Host: gstgate` is gstgate's own; the upstream gets its own authority.
        assert_eq!(
            seen.get("host"),
            Some(&sim.addr.to_string()),
            "{api}: the upstream's Host: {seen:?}"
        );

        for (name, _) in FORGED {
            let name = name.to_ascii_lowercase();
            if let Some(value) = seen.get(&name) {
                assert!(
                    !value.contains("attacker") && value != "99" && value != "10.6.6.6",
                    "{api}: the caller's `{name}` reached the upstream: {seen:?}"
                );
            }
        }
        for name in [
            "x-unlisted",
            "x-hop",
            "http2-settings",
            "keep-alive",
            "password",
            "sek",
            "appkey",
            "x-api-key",
        ] {
            assert!(
                !seen.contains_key(name),
                "{api}: `{name}` reached the upstream: {seen:?}"
            );
        }
        assert_eq!(
            seen.get("x-gsp-branch").map(String::as_str),
            Some("mumbai-2"),
            "{api}: forward_headers"
        );
        assert_eq!(seen.get("x-request-id"), Some(&id));
        // The GST headers each API needs are there, with gstgate's values.
        let expect: &[(&str, &str)] = match api {
            "einvoice" => &[
                ("client_id", CLIENT_ID),
                ("client_secret", CLIENT_SECRET),
                ("gstin", GSTIN),
                ("user_name", USER),
            ],
            "ewaybill" => &[
                ("client-id", CLIENT_ID),
                ("client-secret", CLIENT_SECRET),
                ("gstin", GSTIN),
            ],
            _ => &[
                ("clientid", CLIENT_ID),
                ("client-secret", CLIENT_SECRET),
                ("gstin", GSTIN),
                ("username", USER),
                ("state-cd", "27"),
                ("ip-usr", "127.0.0.1"),
                ("ret_period", "102026"),
            ],
        };
        for (name, value) in expect {
            assert_eq!(
                seen.get(*name).map(String::as_str),
                Some(*value),
                "{api}: `{name}` in {seen:?}"
            );
        }
        let token_header = match api {
            "einvoice" => "authtoken",
            "ewaybill" => "authtoken",
            _ => "auth-token",
        };
        let token = seen
            .get(token_header)
            .unwrap_or_else(|| panic!("{api}: no token header in {seen:?}"));
        assert!(!token.contains("attacker"));
        if api == "gstn" {
            let txn = &seen["txn"];
            assert!(
                txn.len() == 32 && txn.bytes().all(|b| b.is_ascii_hexdigit()),
                "{txn}"
            );
        } else {
            assert!(!seen.contains_key("txn"), "{api}: {seen:?}");
        }
    }
}

/// The reply side of the rule above: a header the upstream's own `Connection` header names
/// is for the hop between the GSP and gstgate, and never reaches the caller.
#[tokio::test]
async fn headers_the_upstreams_connection_header_names_do_not_reach_the_caller() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    // Logged in first, so that the fault's one use is the data call's reply.
    assert_eq!(gw.generate(GSTIN, "HOP/1").await.status(), 200);
    sim.control(
        "/_sim/faults",
        json!({"mode": "hop_header", "count": 1, "path_prefix": "/eicore/"}),
    )
    .await;
    let res = gw.generate(GSTIN, "HOP/2").await;
    assert!(
        sim.get_json("/_sim/faults").await["active"].is_null(),
        "the simulator answered with its hop-by-hop header"
    );
    let headers = format!("{:?}", res.headers()).to_ascii_lowercase();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert!(!headers.contains("x-leak"), "{headers}");
}

/// The `gstin` header in every spelling a caller could try: another case or surrounding space
/// reaches the caller's own credential, and the upstream gets gstgate's canonical value; another
/// tenant's GSTIN is refused whatever its case; bytes outside ASCII that still count 15 (where
/// the GSTIN is copied into its fixed 15-byte form) are refused without a panic.
#[tokio::test]
async fn a_gstin_header_reaches_only_the_callers_own_taxpayer_in_any_spelling() {
    let (sim_opts, gw_opts) = two_tenants();
    let sim = Sim::start(sim_opts).await;
    let gw = Gateway::start(&sim, gw_opts).await;
    let path = "/eivital/v1.04/Master/gstin/27AAACR5055K1Z7";
    let send = |gstin: String, id: &'static str| {
        let extra = format!("x-request-id: {id}\r\n");
        let head = head("GET", path, API_KEY, &gstin, &extra);
        async move { parse_raw(&raw_exchange(gw.proxy, &head, b"", Duration::from_secs(10)).await) }
    };

    let (status, _, body) = send(format!(" {} ", GSTIN.to_ascii_lowercase()), "gstin-lower").await;
    assert_eq!(status, 200, "{body}");
    let seen = logged(&sim, "gstin-lower").await;
    assert_eq!(
        seen.get("gstin").map(String::as_str),
        Some(GSTIN),
        "{seen:?}"
    );

    let before = upstream_log(&sim).await.len();
    let other_lower = other().to_ascii_lowercase();
    for (gstin, code) in [
        (other_lower, "gstin_not_allowed"),
        (other(), "gstin_not_allowed"),
        // 13 ASCII characters and a two-byte one: 15 bytes, 14 characters.
        (format!("{}\u{e9}", &GSTIN[..13]), "gstin_invalid"),
        (format!("{}\u{e9}", &GSTIN[..14]), "gstin_invalid"),
        (GSTIN.replace('Z', "\u{17f}"), "gstin_invalid"),
    ] {
        let (status, _, body) = send(gstin.clone(), "gstin-refused").await;
        assert!(status == 400 || status == 403, "{gstin:?}: {status} {body}");
        assert_eq!(body["code"], code, "{gstin:?}: {body}");
    }
    assert_eq!(
        upstream_log(&sim).await.len(),
        before,
        "a refused GSTIN reached the upstream"
    );
    let (status, _, _) = send(GSTIN.into(), "gstin-after").await;
    assert_eq!(status, 200, "the gateway still serves");
}

#[tokio::test]
async fn the_upstream_and_the_caller_see_the_same_valid_request_id() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let path = "/eivital/v1.04/Master/gstin/27AAACR5055K1Z7";
    let long = "x".repeat(200);
    for (sent, kept) in [
        ("caller-id-42", true),
        ("has space", false),
        ("tab\there", false),
        (long.as_str(), false),
        ("", false),
    ] {
        let extra = format!("x-request-id: {sent}\r\n");
        let text = raw_exchange(
            gw.proxy,
            &head("GET", path, API_KEY, GSTIN, &extra),
            b"",
            Duration::from_secs(10),
        )
        .await;
        let (status, head, _) = parse_raw(&text);
        assert_eq!(status, 200, "{text}");
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .expect("a request id")
            .to_owned();
        if kept {
            assert_eq!(id, sent);
        } else {
            assert!(
                id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit()),
                "{id:?}"
            );
        }
        let log = upstream_log(&sim).await;
        let last = log.last().expect("the call reached the upstream");
        assert_eq!(
            last["headers"]["x-request-id"],
            id.as_str(),
            "upstream got {last}"
        );
    }
}

#[tokio::test]
async fn otp_bodies_other_than_six_ascii_digits_are_refused_without_an_upstream_call() {
    let (sim_opts, gw_opts) = two_tenants();
    let sim = Sim::start(sim_opts).await;
    let gw = Gateway::start(&sim, gw_opts).await;
    let res = gw
        .admin_post(&format!("/admin/sessions/gstn/{GSTIN}/otp-request"), None)
        .await;
    assert_eq!(res.status(), 202);
    let auth_calls = sim.count(GSTIN, "auth_calls").await;
    let logins = gw
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("gstgate_auth_requests_total{upstream=\"gstn\""))
        .map(str::to_owned)
        .collect::<Vec<_>>();

    let path = format!("/admin/sessions/gstn/{GSTIN}/otp");
    for body in [
        r#"{"otp": " 575757"}"#,
        "{\"otp\": \"575757\\n\"}",
        r#"{"otp": "575757 "}"#,
        r#"["575757"]"#,
        r#"{"otp": 575757}"#,
        r#"{"otp": "57575"}"#,
        r#"{"otp": "5757570"}"#,
        r#"{"otp": "57575a"}"#,
        r#"{"otp": "５７５７５７"}"#,
        r#"{"otp": "+57575"}"#,
        r#"{"otp": "575757", "extra": 1}"#,
        r#"{"otp": "575757", "otp": "575757"}"#,
        r#"{"OTP": "575757"}"#,
        r#""575757""#,
        "575757",
        "{}",
        "null",
        "",
    ] {
        let res = gw
            .http
            .post(format!("http://{}{path}", gw.admin))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 400, "{body:?}");
        let problem: Value = res.json().await.unwrap();
        assert!(
            problem["code"] == "body_invalid" || problem["code"] == "otp_invalid",
            "{body:?}: {problem}"
        );
    }
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        auth_calls,
        "an OTP reached the upstream"
    );
    let after: Vec<String> = gw
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("gstgate_auth_requests_total{upstream=\"gstn\""))
        .map(str::to_owned)
        .collect();
    assert_eq!(after, logins, "a login was counted");
    // The right OTP still starts the session: no allowance was spent on the bad ones.
    let res = gw.admin_post(&path, Some(json!({"otp": "575757"}))).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

/// Path pieces an attacker combines: dot segments in every encoding, separators, encodings of
/// separators, characters servers treat specially, and plain API segments.
fn piece() -> impl Strategy<Value = &'static str> {
    let plain = prop::sample::select(vec![
        "/",
        "a",
        "v1.03",
        "Invoice",
        "_sim",
        "sessions",
        "auth",
        "authenticate",
        "-",
        "_",
        "%41",
        "%61",
        "x.y",
    ]);
    let hostile = prop::sample::select(vec![
        ".", "..", "...", "%2e", "%2E", "%2e%2e", ".%2e", "%2e.", "//", "\\", "%5c", "%5C", "%2f",
        "%2F", "%25", "%252e", ";", "..;", "%3b", "%00", "%", "%2", "~", ":", "@", "+", "x.",
        "%20", "!", "$", "'", "(", ")", "*", ",", "=", "&", "%c0%ae", "%u002e",
    ]);
    // Mostly plain, so that many generated paths do reach the upstream and are checked there.
    prop_oneof![3 => plain, 1 => hostile]
}

/// The property: for each route, whatever path a caller sends under it, the caller gets 400,
/// gstgate's own answer to a login call, or the upstream receives a path under `base_url`'s
/// path + that route — never anything else.
#[test]
fn generated_paths_stay_under_the_upstream_prefix_or_get_400() {
    const PREFIX: &str = "/gsp/nic";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (sim, gw) = rt.block_on(async {
        let (mut sim_opts, mut gw_opts) = two_tenants();
        sim_opts
            .extra
            .extend(["--path-prefix".into(), PREFIX.into()]);
        let sim = Sim::start(sim_opts).await;
        gw_opts.base_url = Some(format!("{}{PREFIX}", sim.url()));
        let gw = Gateway::start(&sim, gw_opts).await;
        gw.start_gstn_session(&sim, GSTIN).await;
        (sim, gw)
    });
    let routes = [
        "/eivital/",
        "/eicore/",
        "/eiewb/",
        "/ewaybillapi/",
        "/taxpayerapi/",
    ];
    let strategy = (
        prop::sample::select(routes.to_vec()),
        prop::collection::vec(piece(), 1..8),
        // Bodiless methods: a POST without a JSON body stops at the body check.
        prop::sample::select(vec!["GET", "DELETE"]),
    );
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let cases = std::cell::Cell::new(0u32);
    let reached = std::cell::Cell::new(0u32);
    let result = runner.run(&strategy, |(route, pieces, method)| {
        cases.set(cases.get() + 1);
        let target = format!("{route}{}", pieces.concat());
        let id = format!("prop-{}", cases.get());
        let extra = format!("x-request-id: {id}\r\n");
        let text = rt.block_on(raw_exchange(
            gw.proxy,
            &head(method, &target, API_KEY, GSTIN, &extra),
            b"",
            Duration::from_secs(10),
        ));
        let status: u16 = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| TestCaseError::fail(format!("no status for {target}: {text}")))?;
        let log = rt.block_on(sim.requests(200));
        let Some(seen) = log
            .iter()
            .find(|r| r["headers"]["x-request-id"] == id.as_str())
        else {
            if status == 200 && text.contains("managed-by-gstgate") {
                // A spelling of the upstream's login path (`/eivital/v1.03/auth`): gstgate
                // answers it itself and sends nothing upstream.
                return Ok(());
            }
            prop_assert_eq!(
                status,
                400,
                "{} {} neither reached the upstream under its prefix nor got 400: {}",
                method,
                target,
                text
            );
            return Ok(());
        };
        reached.set(reached.get() + 1);
        let path = seen["path"].as_str().unwrap_or_default();
        prop_assert!(
            path.starts_with(&format!("{PREFIX}{route}")),
            "{target} reached {path}"
        );
        prop_assert!(
            !path
                .split('/')
                .any(|s| !s.is_empty() && s.chars().all(|c| c == '.')),
            "{target} reached {path}"
        );
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The property held over traffic that reached the upstream, not only over refusals.
    assert!(
        cases.get() >= 300 && reached.get() >= 30,
        "{} cases, {} reached the upstream",
        cases.get(),
        reached.get()
    );
    drop(gw);
    drop(sim);
}

/// An upstream is untrusted input, its error text included: a login refusal whose message
/// carries CR/LF and a forged log line, ANSI escapes, a bidi override, a line separator and
/// 8 MiB of padding reaches the text log, `/admin/sessions` and `/status` escaped and cut to
/// about 1 KiB. Before, the `%`-formatted `login failed` line wrote it raw (a forged line and
/// terminal escapes in the log), and the slot's last error made an 8 MB status page.
#[tokio::test]
async fn hostile_upstream_error_text_is_escaped_and_capped_everywhere_it_is_shown() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            log_format: "pretty",
            ..GwOpts::default()
        },
    )
    .await;
    sim.control(
        "/_sim/faults",
        json!({"mode": "hostile_error", "count": 1, "path_prefix": "/eivital/"}),
    )
    .await;
    let res = gw.generate(GSTIN, "HOSTILE/1").await;
    assert_eq!(res.status(), 502, "{}", res.text().await.unwrap());
    gw.logs.wait_for("login failed").await;
    // The request's access line too, which quotes the cause.
    gw.logs.wait_for("gstgate::access").await;
    let log = gw.logs.text();
    assert!(!log.contains('\u{1b}'), "a raw escape reached the log");
    assert!(
        !log.contains('\u{202e}') && !log.contains('\u{2028}'),
        "{log}"
    );
    assert!(
        !log.lines().any(|l| l.starts_with("level=INFO forged")),
        "a forged line in the log"
    );
    assert!(log.len() < 64 << 10, "the log grew by {} bytes", log.len());
    let rows = gw.admin_sessions().await;
    let last_error = rows[0]["last_error"].as_str().unwrap().to_owned();
    assert!(last_error.contains("forged=1"), "{last_error}");
    assert!(last_error.len() < 2048, "{} bytes", last_error.len());
    assert!(!last_error.contains('\n') && !last_error.contains('\u{1b}'));
    let status = gw
        .http
        .get(format!("http://{}/status", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(status.len() < 64 << 10, "/status is {} bytes", status.len());
}

/// The length the upstream is told is the length of what it is sent, however the caller
/// framed its body: a passthrough body goes up with the caller's own `Content-Length` only
/// when that is the body's length in plain digits, and a chunked or zero-padded one gets
/// gstgate's. A wrong length would split or merge requests on the pooled upstream connection.
#[tokio::test]
async fn the_upstream_is_told_the_length_of_what_it_is_sent_however_the_caller_framed_it() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            encryption: "passthrough",
            ..GwOpts::default()
        },
    )
    .await;
    let body = r#"{"Irn":"a","CnlRsn":"1","CnlRem":"wrong entry"}"#;
    let (first, rest) = body.split_at(7);
    let cases = [
        (
            "len-plain",
            format!("content-length: {}\r\n", body.len()),
            body.to_owned(),
        ),
        (
            "len-zeros",
            format!("content-length: 000{}\r\n", body.len()),
            body.to_owned(),
        ),
        (
            "len-chunked",
            "transfer-encoding: chunked\r\n".to_owned(),
            format!(
                "{:x}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n",
                first.len(),
                rest.len()
            ),
        ),
    ];
    for (id, framing, wire) in cases {
        let head = format!(
            "POST /eicore/v1.03/Invoice/Cancel HTTP/1.1\r\nhost: gstgate\r\nx-api-key: {API_KEY}\r\ngstin: {GSTIN}\r\nx-request-id: {id}\r\n{framing}connection: close\r\n\r\n"
        );
        let raw = raw_exchange(gw.proxy, &head, wire.as_bytes(), Duration::from_secs(10)).await;
        let (status, _, _) = parse_raw(&raw);
        assert_ne!(status, 0, "{id}: {raw}");
        let seen = logged_request(&sim, id).await;
        let headers = &seen["headers"];
        assert_eq!(
            headers["content-length"],
            body.len().to_string(),
            "{id}: {seen}"
        );
        assert!(headers.get("transfer-encoding").is_none(), "{id}: {seen}");
        assert_eq!(seen["body"], body, "{id}");
    }
}
