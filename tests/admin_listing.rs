//! `GET /admin/sessions` and `GET /status` over real HTTP with many sessions: a gateway with
//! 10,000 configured credentials starts and serves (issue 20's regression test, not a
//! benchmark), its sessions API pages over all 10,000 (following `next` visits every row
//! exactly once), the filters and the summary agree with what was done, the status page
//! stays small and paginates, and hostile query parameters are 400 problems.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const CREDENTIALS: usize = 10_000;

async fn admin_get(gw: &Gateway, path: &str) -> reqwest::Response {
    gw.http
        .get(format!("http://{}{path}", gw.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
}

async fn admin_json(gw: &Gateway, path: &str) -> Value {
    let res = admin_get(gw, path).await;
    assert_eq!(res.status(), 200, "{path}");
    res.json().await.unwrap()
}

/// The GSTINs of a page's rows.
fn gstins(page: &Value) -> Vec<String> {
    page["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["gstin"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn ten_thousand_credentials_start_serve_and_page() {
    // Only the taxpayers that send requests log in, so only they need to exist upstream.
    let active = [gstin_n(1), gstin_n(5000), gstin_n(9999)];
    let sim = Sim::start(SimOpts {
        users: active
            .iter()
            .map(|g| (g.clone(), USER.into(), PASSWORD.into()))
            .collect(),
        ..SimOpts::default()
    })
    .await;
    let all: Vec<String> = (0..CREDENTIALS).map(gstin_n).collect();
    let started = Instant::now();
    let gw = Gateway::start(
        &sim,
        GwOpts {
            credentials: all
                .iter()
                .map(|g| (g.clone(), USER.into(), PASSWORD.into()))
                .collect(),
            ..GwOpts::default()
        },
    )
    .await;
    // Not a timing test: a bound far above the debug build's few seconds, against a hang.
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "ready after {:?}",
        started.elapsed()
    );
    for (i, g) in active.iter().enumerate() {
        let res = gw.generate(g, &format!("SCALE/{i}")).await;
        assert_eq!(res.status(), 200, "{g}: {}", res.text().await.unwrap());
    }

    // Every row exactly once, in key order, with the same total on every page.
    let mut seen = Vec::new();
    let mut next = Some("/admin/sessions?limit=1000".to_string());
    let mut pages = 0;
    while let Some(path) = next {
        let page = admin_json(&gw, &path).await;
        pages += 1;
        assert_eq!(page["total"], CREDENTIALS, "{path}");
        assert_eq!(page["summary"]["total"], CREDENTIALS);
        assert_eq!(page["limit"], 1000);
        let rows = gstins(&page);
        assert!(rows.len() <= 1000 && !rows.is_empty(), "{path}");
        seen.extend(rows);
        next = page["next"].as_str().map(str::to_owned);
        assert_eq!(next.is_some(), page["next_cursor"].is_string());
        assert!(pages <= CREDENTIALS / 1000, "more pages than rows allow");
    }
    assert_eq!(pages, CREDENTIALS / 1000);
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "key order (one upstream, one user)");
    let mut want = all.clone();
    want.sort();
    assert_eq!(seen, want, "every configured GSTIN exactly once");

    // The default page, and the summary over every row whatever the page.
    let first = admin_json(&gw, "/admin/sessions").await;
    assert_eq!(gstins(&first).len(), 100);
    let summary = &first["summary"];
    assert_eq!(summary["by_state"]["valid"], 3, "{summary}");
    assert_eq!(summary["by_state"]["cold"], CREDENTIALS - 3, "{summary}");
    assert_eq!(summary["by_state"]["credentials_rejected"], 0, "{summary}");
    assert_eq!(summary["by_upstream"]["einvoice"], CREDENTIALS, "{summary}");
    assert!(first["dropin_sessions"].is_array());

    // Filters: by state, by GSTIN prefix (case-insensitive), combined, and matching nothing.
    let valid = admin_json(&gw, "/admin/sessions?state=valid").await;
    assert_eq!(valid["total"], 3);
    assert!(valid["next"].is_null());
    let mut got = gstins(&valid);
    got.sort();
    let mut active_sorted = active.to_vec();
    active_sorted.sort();
    assert_eq!(got, active_sorted);
    assert_eq!(
        valid["summary"]["total"], CREDENTIALS,
        "summary ignores the filter"
    );
    let prefix = &gstin_n(5000)[..11].to_ascii_lowercase(); // 27aapfu5000
    let one = admin_json(&gw, &format!("/admin/sessions?gstin={prefix}&state=valid")).await;
    assert_eq!(gstins(&one), vec![gstin_n(5000)]);
    let by_prefix = admin_json(&gw, "/admin/sessions?gstin=27AAPFU12&limit=50").await;
    assert_eq!(by_prefix["total"], 100, "27AAPFU1200…27AAPFU1299");
    assert!(gstins(&by_prefix)
        .iter()
        .all(|g| g.starts_with("27AAPFU12")));
    let next = by_prefix["next"].as_str().unwrap();
    assert!(
        next.contains("gstin=27AAPFU12") && next.contains("limit=50"),
        "{next}"
    );
    let rest = admin_json(&gw, next).await;
    assert_eq!(gstins(&rest).len(), 50);
    assert!(rest["next"].is_null());
    let none = admin_json(&gw, "/admin/sessions?upstream=gstn&state=").await;
    assert_eq!(none["total"], 0);
    assert!(none["sessions"].as_array().unwrap().is_empty() && none["next"].is_null());

    // The status page: the summary over all 10,000, problems first, 200 rows a page.
    let status = |q: &str| {
        let url = format!("http://{}/status{q}", gw.admin);
        let http = gw.http.clone();
        async move {
            let res = http.get(url).send().await.unwrap();
            assert_eq!(res.status(), 200);
            res.text().await.unwrap()
        }
    };
    let page1 = status("").await;
    assert_eq!(page1.matches("<tr data-state=").count(), 200);
    assert!(page1.len() < 256 * 1024, "{} bytes", page1.len());
    assert!(page1.contains("10000 session(s)"));
    assert!(
        page1.contains(">cold: 9997</a>"),
        "state counts link to their rows"
    );
    assert!(page1.contains(">einvoice: 10000</a>"));
    assert!(page1.contains("Rows 1\u{2013}200 of 10000"));
    assert!(page1.contains("rel=\"next\" href=\"?page=2\""));
    assert!(page1.contains("rel=\"last\" href=\"?page=50\""));
    let last = status("?page=50").await;
    assert_eq!(last.matches("<tr data-state=").count(), 200);
    assert!(!last.contains("rel=\"next\""));
    let beyond = status("?page=51").await;
    assert_eq!(beyond.matches("<tr data-state=").count(), 0);
    assert!(beyond.contains("No session on this page matches."));
    let filtered = status("?state=valid&upstream=&gstin=").await;
    assert_eq!(filtered.matches("<tr data-state=\"valid\"").count(), 3);
    assert_eq!(filtered.matches("<tr data-state=").count(), 3);
    assert!(filtered.contains("Rows 1\u{2013}3 of 3 matching the filter"));

    // A flood of the largest pages (rendered a few at a time, off the runtime's workers) is
    // served in full, and the proxy answers meanwhile.
    let gw = &gw;
    let flood = futures_util::future::join_all((0..24).map(|i| {
        let path = ["/status?page=50", "/metrics", "/admin/sessions?limit=1000"][i % 3];
        async move { (path, admin_get(gw, path).await.status().as_u16()) }
    }));
    let (pages, proxied) = tokio::join!(flood, gw.generate(&active[0], "FLOOD/1"));
    assert!(pages.iter().all(|(_, status)| *status == 200), "{pages:?}");
    assert_eq!(proxied.status(), 200);
}

#[tokio::test]
async fn problems_come_first_on_the_status_page_and_hostile_queries_are_refused() {
    let ok = gstin_n(2);
    let sim = Sim::start(SimOpts {
        users: vec![(ok.clone(), USER.into(), PASSWORD.into())],
        ..SimOpts::default()
    })
    .await;
    // 300 taxpayers, one with a wrong password: after its failed login it must be on page 1.
    let rejected = gstin_n(299);
    let gw = Gateway::start(
        &sim,
        GwOpts {
            credentials: (0..300)
                .map(|i| {
                    let pass = if i == 299 {
                        "Wr0ng-Passw0rd!"
                    } else {
                        PASSWORD
                    };
                    (gstin_n(i), USER.into(), pass.into())
                })
                .collect(),
            ..GwOpts::default()
        },
    )
    .await;
    assert_eq!(gw.generate(&ok, "P/1").await.status(), 200);
    expect_problem(
        gw.generate(&rejected, "P/2").await,
        502,
        "credentials_rejected",
    )
    .await;
    let res = gw
        .http
        .get(format!("http://{}/status", gw.admin))
        .send()
        .await
        .unwrap();
    let csp = res.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && !csp.contains("script-src"),
        "{csp}"
    );
    let page = res.text().await.unwrap();
    let first_row = page.find("<tr data-state=").unwrap();
    assert!(
        page[first_row..].starts_with(&format!(
            "<tr data-state=\"credentials_rejected\" data-upstream=\"einvoice\" data-gstin=\"{rejected}\""
        )),
        "{}",
        &page[first_row..first_row + 200]
    );
    assert!(page.contains("1 need attention"));
    assert!(!page.contains("<script"));

    // Hostile or mistaken queries: 400 problems with the admin format, never a panic or 500.
    for path in [
        "/admin/sessions?state=bogus",
        "/admin/sessions?state=VALID",
        "/admin/sessions?limit=0",
        "/admin/sessions?limit=1001",
        "/admin/sessions?limit=-5",
        "/admin/sessions?limit=18446744073709551616",
        "/admin/sessions?cursor=zz",
        "/admin/sessions?cursor=616263",
        "/admin/sessions?cursor=%FF%FE",
        "/admin/sessions?gstin=27AAPFU%3Cscript%3E",
        "/admin/sessions?gstin=27AAPFU0939F1ZVX",
        "/admin/sessions?upstream=a%0Ab",
        "/admin/sessions?page=2",
        "/admin/sessions?state=valid&state=cold",
        "/admin/sessions?sort=gstin",
        "/status?page=0",
        "/status?page=x",
        "/status?limit=5",
        "/status?state=%3Cscript%3E",
    ] {
        let res = if path.starts_with("/status") {
            gw.http
                .get(format!("http://{}{path}", gw.admin))
                .send()
                .await
                .unwrap()
        } else {
            admin_get(&gw, path).await
        };
        let body = expect_problem(res, 400, "request_invalid").await;
        assert!(body["request_id"].is_string(), "{path}: {body}");
    }
    let body = expect_problem(
        admin_get(&gw, "/admin/sessions?state=bogus").await,
        400,
        "request_invalid",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("needs_otp"),
        "names the states: {body}"
    );
    // The bearer check still comes first.
    let res = gw
        .http
        .get(format!("http://{}/admin/sessions?state=bogus", gw.admin))
        .send()
        .await
        .unwrap();
    expect_problem(res, 401, "unauthenticated").await;
}
