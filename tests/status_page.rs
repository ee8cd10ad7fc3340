//! `GET /status` in a real headless browser: the page Chromium renders has one row per session
//! with the right state, no secret from the simulator's live sessions, and a screenshot is
//! saved as `target/status-page.png` for people to look at. The summary counts are links and
//! the filter is a plain GET form: following one in the browser shows only those rows.
//!
//! Chromium is required, not optional: `scripts/test.sh` installs Debian's `chromium` when it
//! is missing, and this test fails (rather than skips) without it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use common::*;

const CHROMIUM: &str = "/usr/bin/chromium";
/// Cold start of Chromium on a small, busy CI machine takes seconds; a hang is much longer.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);
const WRONG_PASSWORD: &str = "Wr0ng-Passw0rd!";

/// Runs headless Chromium with a fresh profile; kills its whole process group if it outlives
/// [`BROWSER_TIMEOUT`].
async fn chromium(args: &[String]) -> Output {
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install it with `apt-get install -y --no-install-recommends \
         chromium` (scripts/test.sh does this)"
    );
    let profile = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(CHROMIUM);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.path().display()))
    .args(args)
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true)
    // Its own process group, so that a timeout can end its helper processes too.
    .process_group(0);
    let child = cmd.spawn().expect("spawn chromium");
    let pid = child.id().expect("chromium pid");
    match tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output()).await {
        Ok(out) => out.expect("wait for chromium"),
        Err(_) => {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .status();
            panic!("chromium did not finish within {BROWSER_TIMEOUT:?}");
        }
    }
}

/// The `data-*` attributes of every session row in a DOM dump: (state, upstream, gstin).
fn rows(dom: &str) -> Vec<(String, String, String)> {
    let attr = |tag: &str, name: &str| -> String {
        let key = format!("{name}=\"");
        let start = tag.find(&key).map(|i| i + key.len()).unwrap_or(tag.len());
        let end = tag[start..].find('"').map(|i| start + i).unwrap_or(start);
        tag[start..end].to_string()
    };
    dom.match_indices("<tr ")
        .map(|(i, _)| {
            let end = dom[i..].find('>').map(|e| i + e).unwrap_or(dom.len());
            &dom[i..end]
        })
        .filter(|tag| tag.contains("data-state="))
        .map(|tag| {
            (
                attr(tag, "data-state"),
                attr(tag, "data-upstream"),
                attr(tag, "data-gstin"),
            )
        })
        .collect()
}

fn target_dir() -> PathBuf {
    // CARGO_TARGET_TMPDIR is `<target>/tmp`.
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .to_path_buf()
}

#[tokio::test]
async fn status_page_lists_every_session_in_a_real_browser() {
    let cold = gstin_n(1);
    let rejected = gstin_n(2);
    let users = [GSTIN.to_string(), cold.clone(), rejected.clone()]
        .iter()
        .map(|g| (g.clone(), USER.to_string(), PASSWORD.to_string()))
        .collect();
    let sim = Sim::start(SimOpts {
        users,
        ..SimOpts::default()
    })
    .await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            credentials: vec![
                (GSTIN.into(), USER.into(), PASSWORD.into()),
                (cold.clone(), USER.into(), PASSWORD.into()),
                (rejected.clone(), USER.into(), WRONG_PASSWORD.into()),
            ],
            apis: vec!["einvoice", "gstn"],
            ..GwOpts::default()
        },
    )
    .await;
    // GSTN: one session started with an OTP; the others wait for one.
    let otp = gw.start_gstn_session(&sim, GSTIN).await;
    assert_eq!(gw.generate(GSTIN, "STATUS/1").await.status(), 200);
    expect_problem(
        gw.generate(&rejected, "STATUS/2").await,
        502,
        "credentials_rejected",
    )
    .await;

    let url = format!("http://{}/status", gw.admin);
    // Plain HTTP first: the headers a browser gets.
    let res = gw.http.get(&url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/html; charset=utf-8");
    assert_eq!(res.headers()["cache-control"], "no-store");

    let out = chromium(&["--dump-dom".into(), url.clone()]).await;
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && dom.contains("</html>"),
        "chromium --dump-dom failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let mut got = rows(&dom);
    got.sort();
    let mut want = vec![
        (
            "valid".to_string(),
            "einvoice".to_string(),
            GSTIN.to_string(),
        ),
        ("cold".into(), "einvoice".into(), cold.clone()),
        (
            "credentials_rejected".into(),
            "einvoice".into(),
            rejected.clone(),
        ),
        ("valid".into(), "gstn".into(), GSTIN.to_string()),
        ("needs_otp".into(), "gstn".into(), cold.clone()),
        ("needs_otp".into(), "gstn".into(), rejected.clone()),
    ];
    want.sort();
    assert_eq!(got, want, "rows in:\n{dom}");
    // The state is written out, not only coloured, and the rejection's reason is shown.
    assert!(dom.contains(">credentials_rejected</span>"), "{dom}");
    assert!(dom.contains("rejected the credentials"), "{dom}");
    assert!(
        dom.contains("in 5h") || dom.contains("in 6h"),
        "token expiry: {dom}"
    );
    assert!(
        dom.contains("in 29d") || dom.contains("in 30d"),
        "GSTN session end: {dom}"
    );
    assert!(dom.contains(">needs_otp</span>"), "{dom}");
    // The summary over every session, as links, and the filter form: no script needed.
    assert!(dom.contains(">needs_otp: 2</a>"), "{dom}");
    assert!(
        dom.contains(">gstn: 3</a>") && dom.contains(">einvoice: 3</a>"),
        "{dom}"
    );
    assert!(
        dom.contains("<form class=\"filter\" method=\"get\""),
        "{dom}"
    );
    assert!(!dom.contains("<script"), "{dom}");

    // The link the summary gives for needs_otp, followed by the browser: only those rows.
    let link = "?state=needs_otp&amp;upstream=gstn";
    let href = &dom[dom.find(">needs_otp: 2</a>").unwrap().saturating_sub(200)..];
    assert!(href.contains("href=\"?state=needs_otp\""), "{href}");
    let out = chromium(&[
        "--dump-dom".into(),
        format!("{url}{}", link.replace("&amp;", "&")),
    ])
    .await;
    let filtered = String::from_utf8_lossy(&out.stdout);
    let mut got = rows(&filtered);
    got.sort();
    assert_eq!(
        got,
        vec![
            ("needs_otp".to_string(), "gstn".to_string(), cold.clone()),
            ("needs_otp".into(), "gstn".into(), rejected.clone()),
        ],
        "{filtered}"
    );
    assert!(filtered.contains("matching the filter"), "{filtered}");
    assert!(
        filtered.contains("<option value=\"needs_otp\" selected=\"\">"),
        "{filtered}"
    );

    // No secret the simulator knows, nor any of the gateway's own.
    let live = sim.get_json("/_sim/sessions").await;
    let sessions = live["sessions"].as_array().unwrap();
    assert!(!sessions.is_empty(), "the simulator holds a live session");
    let mut secrets: Vec<String> = vec![
        PASSWORD.into(),
        WRONG_PASSWORD.into(),
        CLIENT_SECRET.into(),
        ADMIN_TOKEN.into(),
        API_KEY.into(),
        format!(">{otp}<"),
    ];
    for s in sessions {
        for field in ["token", "sek", "previous_token"] {
            if let Some(v) = s[field].as_str() {
                secrets.push(v.to_string());
            }
        }
    }
    for secret in &secrets {
        assert!(
            !dom.contains(secret.as_str()),
            "a secret is on the page:\n{dom}"
        );
    }

    let shot = target_dir().join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1400,900".into(),
        url,
    ])
    .await;
    assert!(
        out.status.success(),
        "chromium --screenshot failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap_or_else(|e| panic!("{}: {e}", shot.display()));
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(
        png.len() > 8 * 1024,
        "screenshot is only {} bytes",
        png.len()
    );
    println!("status page screenshot: {}", shot.display());
}
