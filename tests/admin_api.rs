//! The admin listener's failures over real HTTP: every one is a problem+json document with a
//! stable code and the request id, the bearer check comes before anything else is read, the
//! body is small and bounded in time, and a GSTIN with several users needs `?user=`.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::{Method, Response};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Asserts an admin problem (status, code, content type, remedy) whose `request_id` is the
/// `x-request-id` header; returns the body and the `Allow` header.
async fn admin_problem(res: Response, status: u16, code: &str) -> (Value, Option<String>) {
    let header_id = res
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let allow = res
        .headers()
        .get("allow")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = expect_problem(res, status, code).await;
    assert!(header_id.is_some(), "x-request-id header");
    assert_eq!(
        body["request_id"].as_str(),
        header_id.as_deref(),
        "request_id in {body}"
    );
    (body, allow)
}

impl Gateway {
    /// A request to the admin listener with the admin token.
    fn admin(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.admin_anonymous(method, path).bearer_auth(ADMIN_TOKEN)
    }

    /// A request to the admin listener without a token.
    fn admin_anonymous(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("http://{}{path}", self.admin))
    }
}

#[tokio::test]
async fn admin_failures_are_problems_with_codes_and_request_ids() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let refresh = format!("/admin/sessions/einvoice/{GSTIN}/refresh");
    let otp = format!("/admin/sessions/einvoice/{GSTIN}/otp");

    // 405 on authenticated, open and parameterised routes, with `Allow` kept.
    let res = gw
        .admin(Method::DELETE, "/admin/sessions")
        .send()
        .await
        .unwrap();
    let (_, allow) = admin_problem(res, 405, "method_not_allowed").await;
    assert!(allow.is_some_and(|a| a.contains("GET")));
    let res = gw.admin(Method::GET, &refresh).send().await.unwrap();
    let (body, allow) = admin_problem(res, 405, "method_not_allowed").await;
    assert_eq!(allow.as_deref(), Some("POST"));
    assert!(
        body["detail"].as_str().unwrap().contains(&refresh),
        "{body}"
    );
    let res = gw
        .admin_anonymous(Method::DELETE, "/healthz")
        .send()
        .await
        .unwrap();
    let (_, allow) = admin_problem(res, 405, "method_not_allowed").await;
    assert!(allow.is_some_and(|a| a.contains("GET")));

    // 404 names the path and lists the admin endpoints, not the GST API.
    let res = gw
        .admin(Method::GET, "/admin/sesions")
        .send()
        .await
        .unwrap();
    let (body, _) = admin_problem(res, 404, "route_not_found").await;
    assert!(
        body["detail"].as_str().unwrap().contains("/admin/sesions"),
        "{body}"
    );
    let remedy = body["remedy"].as_str().unwrap();
    assert!(
        remedy.contains("/admin/sessions") && remedy.contains("/healthz"),
        "{body}"
    );
    assert!(!remedy.contains("/eicore/"), "{body}");
    let res = gw
        .admin_anonymous(Method::GET, "/nowhere")
        .send()
        .await
        .unwrap();
    admin_problem(res, 404, "route_not_found").await;

    // A mistyped upstream: 404 naming the configured ones, not "add a [[credential]]".
    let res = gw
        .admin(
            Method::POST,
            &format!("/admin/sessions/einvoce/{GSTIN}/refresh"),
        )
        .send()
        .await
        .unwrap();
    let (body, _) = admin_problem(res, 404, "upstream_not_found").await;
    assert!(
        body["detail"].as_str().unwrap().contains("`einvoce`"),
        "{body}"
    );
    let remedy = body["remedy"].as_str().unwrap();
    assert!(
        remedy.contains("einvoice") && !remedy.contains("[[credential]]"),
        "{body}"
    );

    // Extractor rejections: a repeated query parameter, a path that is not UTF-8.
    let res = gw
        .admin(Method::POST, &format!("{refresh}?user=a&user=b"))
        .send()
        .await
        .unwrap();
    admin_problem(res, 400, "request_invalid").await;
    let res = gw
        .admin(Method::POST, "/admin/sessions/%FF/x/refresh")
        .send()
        .await
        .unwrap();
    admin_problem(res, 400, "request_invalid").await;
    // A malformed GSTIN now carries the request id too.
    let res = gw
        .admin(
            Method::POST,
            "/admin/sessions/einvoice/27AAPFU0939F1Z/refresh",
        )
        .send()
        .await
        .unwrap();
    admin_problem(res, 400, "gstin_invalid").await;

    // Bodies: over the admin limit (declared, and streamed without a length) is 413; one
    // that is not `{"otp": …}` is `body_invalid`, whose remedy shows the expected body.
    let res = gw
        .admin(Method::POST, &otp)
        .body(vec![b'x'; 8 * 1024])
        .send()
        .await
        .unwrap();
    let (body, _) = admin_problem(res, 413, "body_too_large").await;
    assert!(
        !body["remedy"].as_str().unwrap().contains("max_body_bytes"),
        "{body}"
    );
    // Streamed without a length, over a raw connection: the client never ends the body, so
    // it never writes after the server has answered (reqwest could hit a broken pipe then).
    let head = format!(
        "POST {otp} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ntransfer-encoding: chunked\r\nx-request-id: stream-1\r\n\r\n"
    );
    let chunk = [
        format!("{:x}\r\n", 5000).into_bytes(),
        vec![b' '; 5000],
        b"\r\n".to_vec(),
    ]
    .concat();
    let text = raw_exchange_first_response(gw.admin, &head, &chunk, Duration::from_secs(10)).await;
    let (status, _, body) = parse_raw(&text);
    assert_eq!(
        (status, &body["code"]),
        (413, &json!("body_too_large")),
        "{text}"
    );
    assert_eq!(body["request_id"], "stream-1");
    let res = gw
        .admin(Method::POST, &otp)
        .body("otp=123456")
        .send()
        .await
        .unwrap();
    let (body, _) = admin_problem(res, 400, "body_invalid").await;
    assert!(
        body["remedy"]
            .as_str()
            .unwrap()
            .contains(r#"{"otp": "123456"}"#),
        "{body}"
    );

    // The caller's own request id is the one in the body.
    let res = gw
        .admin(Method::DELETE, "/admin/sessions")
        .header("x-request-id", "ops-ticket-42")
        .send()
        .await
        .unwrap();
    let (body, _) = admin_problem(res, 405, "method_not_allowed").await;
    assert_eq!(body["request_id"], "ops-ticket-42");
}

#[tokio::test]
async fn unauthenticated_admin_calls_get_401_before_method_path_query_or_body_is_read() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let otp = format!("/admin/sessions/einvoice/{GSTIN}/otp");
    let cases = [
        (Method::DELETE, "/admin/sessions".to_owned()),
        (
            Method::GET,
            format!("/admin/sessions/einvoice/{GSTIN}/refresh"),
        ),
        (
            Method::POST,
            format!("/admin/sessions/einvoice/{GSTIN}/refresh?user=a&user=b"),
        ),
        (Method::POST, "/admin/sessions/%FF/x/refresh".to_owned()),
        (Method::GET, "/admin/sesions".to_owned()),
    ];
    for (method, path) in cases {
        let res = gw
            .admin_anonymous(method.clone(), &path)
            .send()
            .await
            .unwrap();
        let (body, _) = admin_problem(res, 401, "unauthenticated").await;
        // The admin token, not a caller's API key, is what this listener wants.
        let remedy = body["remedy"].as_str().unwrap();
        assert!(
            remedy.contains("admin_token") && !remedy.contains("x-api-key"),
            "{remedy}"
        );
        let res = gw
            .admin_anonymous(method, &path)
            .bearer_auth("not-the-token")
            .send()
            .await
            .unwrap();
        admin_problem(res, 401, "unauthenticated").await;
    }
    let res = gw
        .admin_anonymous(Method::POST, &otp)
        .body(vec![b'x'; 8 * 1024])
        .send()
        .await
        .unwrap();
    admin_problem(res, 401, "unauthenticated").await;

    // A body that is announced but never sent: the answer comes at once, so the body was
    // never waited for (the request timeout is 60 s; the bound here is 10 s).
    let head = format!(
        "POST {otp} HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\ncontent-length: 100\r\nx-request-id: anon-1\r\n\r\n"
    );
    let text = raw_exchange_first_response(gw.admin, &head, b"", Duration::from_secs(10)).await;
    let (status, _, body) = parse_raw(&text);
    assert_eq!(status, 401, "{text}");
    assert_eq!(body["code"], "unauthenticated");
    assert_eq!(body["request_id"], "anon-1");
}

/// Like [`raw_exchange`], but returns as soon as one complete response (head and
/// `content-length` bytes of body) has arrived: the server may keep the connection open.
async fn raw_exchange_first_response(
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
    within: Duration,
) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let read = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .expect("content-length");
                if body.len() >= length {
                    return text;
                }
            }
            assert!(n > 0, "connection closed mid-response: {text}");
        }
    };
    tokio::time::timeout(within, read)
        .await
        .unwrap_or_else(|_| panic!("no response within {within:?}"))
}

/// Sends `head` on a new connection, then one byte of the announced body every 200 ms, and
/// returns the first complete response (or all that came before the server closed) and how
/// long after the head it came. Fails if none came within 20 s.
async fn trickled_answer(addr: std::net::SocketAddr, head: &str) -> (String, Duration) {
    let (mut reader, mut writer) = TcpStream::connect(addr).await.unwrap().into_split();
    writer.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tick.tick().await;
            if writer.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let read = async {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = reader.read(&mut buf).await.unwrap_or(0);
            out.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&out).into_owned();
            let complete = text.split_once("\r\n\r\n").is_some_and(|(head, body)| {
                head.lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .is_some_and(|length| body.len() >= length)
            });
            if n == 0 || complete {
                return text;
            }
        }
    };
    let text = tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap_or_else(|_| panic!("no answer within 20 s to {head:?}"));
    trickle.abort();
    (text, started.elapsed())
}

/// A client that has not authenticated cannot hold an admin connection by trickling a body:
/// `/admin/*` answers 401 on the head alone, and any other path waits for the body no longer
/// than for a head (`header_read_timeout`, 1 s here), not for `request_timeout` (60 s).
#[tokio::test]
async fn an_unauthenticated_trickled_body_is_cut_off_at_the_header_read_timeout() {
    let sim = Sim::start(SimOpts::default()).await;
    let opts = GwOpts {
        server_extra: "header_read_timeout = \"1s\"".into(),
        ..GwOpts::default()
    };
    let config = gateway_config(&sim.public_key, &sim.url(), &opts);
    assert!(
        config.contains(r#"request_timeout = "60s""#),
        "the harness config changed"
    );
    let gw = Gateway::start_with_config(&config, &opts).await;
    let head = |path: &str, auth: &str| {
        format!("POST {path} HTTP/1.1\r\nhost: gw\r\n{auth}content-type: application/json\r\ncontent-length: 100\r\n\r\n")
    };
    for auth in ["", "authorization: Bearer not-the-token\r\n"] {
        let (text, took) = trickled_answer(gw.admin, &head("/admin/reload", auth)).await;
        assert_eq!(parse_raw(&text).0, 401, "{text}");
        assert!(took < Duration::from_secs(1), "401 after {took:?}");
    }
    for path in ["/healthz", "/metrics", "/no-such-endpoint"] {
        let (text, took) = trickled_answer(gw.admin, &head(path, "")).await;
        let (status, head, body) = parse_raw(&text);
        assert_eq!(status, 408, "{path}: {text}");
        assert_eq!(body["code"], "request_timeout", "{path}: {body}");
        assert!(head.contains("connection: close"), "{path}: {text}");
        assert!(
            took < Duration::from_secs(10),
            "{path}: answered after {took:?}"
        );
    }
}

#[tokio::test]
async fn admin_actions_on_a_gstin_with_several_users_need_user() {
    const SECOND: &str = "api_user_2";
    let sim = Sim::start(SimOpts {
        users: vec![
            (GSTIN.into(), USER.into(), PASSWORD.into()),
            (GSTIN.into(), SECOND.into(), PASSWORD.into()),
        ],
        ..SimOpts::default()
    })
    .await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            credentials: vec![
                (GSTIN.into(), USER.into(), PASSWORD.into()),
                (GSTIN.into(), SECOND.into(), PASSWORD.into()),
            ],
            ..GwOpts::default()
        },
    )
    .await;
    let refresh = format!("/admin/sessions/einvoice/{GSTIN}/refresh");
    let logins_before = sim.count(GSTIN, "auth_calls").await;

    // No user, or one not configured: user_required, not the first user silently.
    for path in [refresh.clone(), format!("{refresh}?user=nobody")] {
        let res = gw.admin(Method::POST, &path).send().await.unwrap();
        let (body, _) = admin_problem(res, 400, "user_required").await;
        assert!(
            body["remedy"].as_str().unwrap().contains("?user="),
            "{body}"
        );
    }
    for action in ["otp-request", "otp"] {
        let res = gw
            .admin(
                Method::POST,
                &format!("/admin/sessions/einvoice/{GSTIN}/{action}"),
            )
            .json(&json!({"otp": "123456"}))
            .send()
            .await
            .unwrap();
        admin_problem(res, 400, "user_required").await;
    }
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        logins_before,
        "no login was attempted for an unnamed user"
    );

    // Naming the user picks exactly that one.
    let res = gw
        .admin(Method::POST, &format!("{refresh}?user={SECOND}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["username"], SECOND);
}

#[tokio::test]
async fn both_listeners_bound_each_request_by_request_timeout() {
    let sim = Sim::start(SimOpts::default()).await;
    let opts = GwOpts::default();
    let config = gateway_config(&sim.public_key, &sim.url(), &opts)
        .replace(r#"request_timeout = "60s""#, r#"request_timeout = "1s""#);
    assert!(
        config.contains(r#"request_timeout = "1s""#),
        "the harness config changed"
    );
    let gw = Gateway::start_with_config(&config, &opts).await;
    let otp = format!("/admin/sessions/einvoice/{GSTIN}/otp");

    // A body announced as 100 bytes of which 10 arrive: 408 problem at the bound, and the
    // connection is closed (the rest of the body cannot be taken for a next request).
    let head = format!(
        "POST {otp} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {ADMIN_TOKEN}\r\ncontent-type: application/json\r\ncontent-length: 100\r\nx-request-id: trickle-1\r\n\r\n"
    );
    let started = Instant::now();
    let text = raw_exchange(gw.admin, &head, br#"{"otp": "1"#, Duration::from_secs(10)).await;
    let took = started.elapsed();
    let (status, head, body) = parse_raw(&text);
    assert_eq!(status, 408, "{text}");
    assert!(
        head.contains("content-type: application/problem+json"),
        "{text}"
    );
    assert!(head.contains("connection: close"), "{text}");
    assert!(head.contains("x-request-id: trickle-1"), "{text}");
    assert_eq!(body["code"], "request_timeout");
    assert_eq!(body["request_id"], "trickle-1");
    assert!(
        took >= Duration::from_millis(900),
        "answered before the bound: {took:?}"
    );

    // The proxy too: a caller whose body stops arriving gets its own timeout (408), not the
    // upstream's (504), and nothing is forwarded.
    let head = format!(
        "POST /eicore/v1.03/Invoice HTTP/1.1\r\nhost: gw\r\nx-api-key: {API_KEY}\r\ngstin: {GSTIN}\r\ncontent-type: application/json\r\ncontent-length: 100\r\nx-request-id: trickle-2\r\n\r\n"
    );
    let text = raw_exchange(gw.proxy, &head, br#"{"Version"#, Duration::from_secs(10)).await;
    let (status, head, body) = parse_raw(&text);
    assert_eq!(status, 408, "{text}");
    assert!(head.contains("connection: close"), "{text}");
    assert_eq!(body["code"], "request_timeout");
    assert_eq!(body["request_id"], "trickle-2");
    assert_eq!(sim.counters().await["requests"], 0);

    // The request arrived but the work behind it (a login to a hanging upstream, whose own
    // timeout is 5 s) outlasts the bound: the proxy's answer for the same case.
    sim.control(
        "/_sim/faults",
        json!({"mode": "hang", "count": 1, "path_prefix": "/eivital/"}),
    )
    .await;
    let started = Instant::now();
    let res = gw
        .admin(
            Method::POST,
            &format!("/admin/sessions/einvoice/{GSTIN}/refresh"),
        )
        .send()
        .await
        .unwrap();
    let took = started.elapsed();
    admin_problem(res, 504, "upstream_timeout").await;
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // Only the wait ended: the login runs to its own end (here the upstream's 5 s timeout)
    // and is recorded, instead of being cancelled and leaving the slot `refreshing`.
    gw.logs.wait_for("login failed").await;
    assert_eq!(gw.session_state("einvoice", GSTIN).await, "failed");
}

/// The OTP actions exist for GSTN only: on an e-invoice upstream they are refused as not
/// applicable (not as a malformed body), with a remedy that names the action that does apply,
/// and nothing is sent upstream.
#[tokio::test]
async fn otp_actions_on_an_upstream_without_otp_sessions_are_not_applicable() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let logins_before = sim.count(GSTIN, "auth_calls").await;
    for (action, body) in [
        ("otp-request", None),
        ("otp", Some(json!({"otp": "123456"}))),
    ] {
        let path = format!("/admin/sessions/einvoice/{GSTIN}/{action}");
        let mut req = gw.admin(Method::POST, &path);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let (body, _) = admin_problem(req.send().await.unwrap(), 409, "otp_not_applicable").await;
        let remedy = body["remedy"].as_str().unwrap();
        assert!(!remedy.contains("JSON"), "{body}");
        assert!(
            remedy.contains(&format!("/admin/sessions/einvoice/{GSTIN}/refresh")),
            "{body}"
        );
        assert!(
            body["detail"].as_str().unwrap().contains("einvoice"),
            "{body}"
        );
    }
    assert_eq!(sim.count(GSTIN, "auth_calls").await, logins_before);
}

/// The audit trail: an OTP submission, a refresh and a refused call each leave one
/// `admin action` line with the request id, the caller's address, what it asked and the
/// outcome — never the OTP.
#[tokio::test]
async fn admin_actions_leave_an_audit_line_with_request_id_and_outcome() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            apis: vec!["einvoice", "gstn"],
            ..GwOpts::default()
        },
    )
    .await;
    let logs = &gw.logs;
    let audit_line = |id: String| async move {
        let line = logs.line_with(&["\"admin action\"", &id]).await;
        serde_json::from_str::<Value>(&line).unwrap()
    };
    let id_of = |res: &Response| {
        res.headers()
            .get("x-request-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };

    let res = gw.admin_refresh(GSTIN).await;
    assert_eq!(res.status(), 200);
    let id = id_of(&res);
    // One timestamp format everywhere: the refresh answer's is the listing's.
    let body: Value = res.json().await.unwrap();
    let expires = body["expires_at"].as_str().unwrap();
    let listed = gw
        .admin(Method::GET, "/admin/sessions")
        .send()
        .await
        .unwrap();
    let listed: Value = listed.json().await.unwrap();
    let refreshed = listed["sessions"][0]["last_refresh"].as_str().unwrap();
    for at in [expires, refreshed] {
        assert!(
            at.ends_with('Z') && at.len() == "2026-11-26T00:26:59Z".len(),
            "{at}"
        );
        chrono::DateTime::parse_from_rfc3339(at).unwrap();
    }
    let line = audit_line(id).await;
    assert_eq!(line["outcome"], "done", "{line}");
    assert_eq!(line["method"], "POST");
    assert_eq!(
        line["path"],
        format!("/admin/sessions/einvoice/{GSTIN}/refresh")
    );
    let peer = line["peer"].as_str().unwrap();
    assert!(
        peer.parse::<std::net::SocketAddr>()
            .is_ok_and(|p| p.ip().is_loopback()),
        "the caller's address as host:port: {line}"
    );
    assert_eq!(line["target"], "gstgate::audit");

    let otp = gw.start_gstn_session(&sim, GSTIN).await;
    let otp_line = gw
        .logs
        .line_with(&["\"admin action\"", &format!("{GSTIN}/otp\"")])
        .await;
    let submitted = gw.logs.text();
    let otp_line: Value = serde_json::from_str(&otp_line).unwrap();
    assert_eq!(otp_line["outcome"], "done", "{otp_line}");
    assert!(otp_line["request_id"].is_string());
    assert!(!submitted.contains(&otp), "the OTP is in the log");

    let wrong = gw
        .http
        .post(format!(
            "http://{}/admin/sessions/einvoice/{GSTIN}/refresh",
            gw.admin
        ))
        .bearer_auth("not-the-admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let line = audit_line(id_of(&wrong)).await;
    assert_eq!(line["outcome"], "refused", "{line}");
    assert_eq!(line["code"], "unauthenticated", "{line}");
}

/// A caller's path reaches the audit line, and the proxy's access line, escaped: a bidi
/// override, a line separator or a C1 control character in it cannot reorder, break or fake
/// a log line. Both lines spell it the same way, percent-encoded.
#[tokio::test]
async fn paths_reach_the_audit_and_access_lines_escaped() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let tail = "x\u{202E}exe.pdf\u{2028}forged\u{85}line";
    let escaped = "x%E2%80%AEexe.pdf%E2%80%A8forged%C2%85line";
    for (addr, prefix, id, status) in [
        (gw.admin, "/admin/", "bidi-admin", 401),
        (gw.proxy, "/eicore/", "bidi-proxy", 401),
    ] {
        let head = format!(
            "GET {prefix}{tail} HTTP/1.1\r\nhost: gw\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n"
        );
        let text = raw_exchange(addr, &head, b"", Duration::from_secs(10)).await;
        assert_eq!(parse_raw(&text).0, status, "{text}");
        gw.logs.wait_for(id).await;
    }
    let text = gw.logs.text();
    for raw in ['\u{202E}', '\u{2028}', '\u{85}'] {
        assert!(!text.contains(raw), "{raw:?} is in the log:\n{text}");
    }
    for (id, message, prefix) in [
        ("bidi-admin", "\"admin action\"", "/admin/"),
        ("bidi-proxy", "\"request\"", "/eicore/"),
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(message) && l.contains(id))
            .unwrap_or_else(|| panic!("no {message} line for {id}:\n{text}"));
        let line: Value = serde_json::from_str(line).unwrap();
        assert_eq!(line["path"], format!("{prefix}{escaped}"), "{line}");
    }
}

/// With `monitoring_token` set, `/metrics` and `/status` need it (or the admin token), as a
/// bearer token or as a browser's Basic password; the probes stay open.
#[tokio::test]
async fn a_monitoring_token_closes_metrics_and_status_but_not_the_probes() {
    const MONITORING: &str = "monitoring-token-0123456789";
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            server_extra: format!("monitoring_token = \"{MONITORING}\""),
            ..GwOpts::default()
        },
    )
    .await;
    for path in ["/metrics", "/status"] {
        let res = gw.admin_anonymous(Method::GET, path).send().await.unwrap();
        let challenge = res
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let (body, _) = admin_problem(res, 401, "unauthenticated").await;
        assert!(
            challenge.is_some_and(|c| c.starts_with("Basic ")),
            "a browser is asked for the token: {body}"
        );
        assert!(
            body["remedy"]
                .as_str()
                .unwrap()
                .contains("monitoring_token"),
            "{body}"
        );
        let wrong = gw
            .admin_anonymous(Method::GET, path)
            .bearer_auth("monitoring-token-0123456780")
            .send()
            .await
            .unwrap();
        admin_problem(wrong, 401, "unauthenticated").await;
        let wrong_basic = gw
            .admin_anonymous(Method::GET, path)
            .basic_auth("ops", Some("not-the-token"))
            .send()
            .await
            .unwrap();
        admin_problem(wrong_basic, 401, "unauthenticated").await;

        // HEAD is checked like GET; a path spelled otherwise is no route at all.
        let head = gw.admin_anonymous(Method::HEAD, path).send().await.unwrap();
        assert_eq!(head.status(), 401, "HEAD {path}");
        for other in [format!("{path}/"), format!("/{path}"), path.to_uppercase()] {
            let res = gw
                .admin_anonymous(Method::GET, &other)
                .send()
                .await
                .unwrap();
            admin_problem(res, 404, "route_not_found").await;
        }
        for (how, req) in [
            (
                "bearer",
                gw.admin_anonymous(Method::GET, path)
                    .bearer_auth(MONITORING),
            ),
            (
                "lower-case scheme",
                gw.admin_anonymous(Method::GET, path)
                    .header("authorization", format!("bearer {MONITORING}")),
            ),
            (
                "basic",
                gw.admin_anonymous(Method::GET, path)
                    .basic_auth("anyone", Some(MONITORING)),
            ),
            ("admin token", gw.admin(Method::GET, path)),
        ] {
            let res = req.send().await.unwrap();
            assert_eq!(res.status(), 200, "{path} with the {how}");
        }
    }
    for probe in ["/healthz", "/readyz"] {
        let res = gw.admin_anonymous(Method::GET, probe).send().await.unwrap();
        assert_eq!(res.status(), 200, "{probe}");
    }
    // A wrong token on a monitoring page is a guess at the admin token too: audited.
    gw.logs
        .line_with(&["\"admin action\"", "/metrics", "refused"])
        .await;
    // The monitoring token is not an admin token.
    let res = gw
        .admin_anonymous(Method::GET, "/admin/sessions")
        .bearer_auth(MONITORING)
        .send()
        .await
        .unwrap();
    let challenge = res.headers().get("www-authenticate").cloned();
    admin_problem(res, 401, "unauthenticated").await;
    assert!(challenge.is_some_and(|c| c.to_str().unwrap().starts_with("Bearer ")));
}
