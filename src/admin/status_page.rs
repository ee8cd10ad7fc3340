//! `GET /status` on the admin listener: one HTML page an operator reads at a glance — every
//! session with its state, time to expiry, time to the end of the GSTN portal session, last
//! refresh and last error.
//!
//! The page is self-contained (inline CSS, no scripts, no external assets) so that it works
//! on an air-gapped admin network and under a `default-src 'none'` content security policy.
//! It refreshes itself every 15 s with a `<meta>` tag. It is built from
//! [`Sessions::snapshot`](crate::session::Sessions::snapshot), the same data as
//! `/admin/sessions`, which holds no token, SEK or password; every dynamic string is still
//! HTML-escaped, because a last error may quote an upstream's message.
//!
//! Like `/metrics` it needs no token: a browser cannot send a bearer token, the page holds no
//! secrets, and the admin listener is private (see `docs/operations.md`).

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State as AxumState;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::Admin;
use crate::session::{SessionInfo, State};
use crate::timestamp::rfc3339;

/// Seconds between the page's own reloads.
const REFRESH_SECS: u32 = 15;

/// The `/status` handler.
pub async fn handler(AxumState(admin): AxumState<Arc<Admin>>) -> Response {
    let html = render(
        &admin.sessions.snapshot(),
        &admin.dropin.counts(),
        SystemTime::now(),
        env!("CARGO_PKG_VERSION"),
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // No scripts, frames or remote loads: only the inline stylesheet.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
        .into_response()
}

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A duration as people read it: the two largest units, `"3d 4h"`, `"5h 12m"`, `"42s"`.
pub fn human_duration(secs: u64) -> String {
    const UNITS: [(u64, &str); 4] = [(86_400, "d"), (3_600, "h"), (60, "m"), (1, "s")];
    let mut parts = Vec::new();
    let mut rest = secs;
    for (size, unit) in UNITS {
        if rest >= size || (parts.is_empty() && size == 1) {
            parts.push(format!("{}{unit}", rest / size));
            rest %= size;
        } else if !parts.is_empty() {
            // Keep the two units adjacent ("1d 0h", not "1d 5m").
            parts.push(format!("0{unit}"));
        }
        if parts.len() == 2 {
            break;
        }
    }
    // "1d 0h" reads worse than "1d".
    if parts.len() == 2 && parts[1].starts_with('0') {
        parts.pop();
    }
    parts.join(" ")
}

/// Problems first, so they are at the top of the page; config order within a state.
fn urgency(state: State) -> u8 {
    match state {
        State::CredentialsRejected => 0,
        State::NeedsOtp => 1,
        State::Failed => 2,
        State::Refreshing => 3,
        State::Cold => 4,
        State::Valid => 5,
    }
}

/// What an operator should make of a state, shown as the badge's tooltip.
fn meaning(state: State) -> &'static str {
    match state {
        State::Cold => "no session yet: gstgate logs in on the first request",
        State::Valid => "a usable token",
        State::Refreshing => "a login is under way",
        State::Failed => "the last login failed; gstgate retries with backoff",
        State::NeedsOtp => "the GSTN session needs a new OTP from the taxpayer",
        State::CredentialsRejected => {
            "the upstream rejected the password; logins stopped until an operator acts"
        }
    }
}

const STYLE: &str = "\
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:24px;color:#1f2328;background:#fff}
h1{font-size:20px;margin:0 0 4px}
.meta{color:#59636e;margin:0 0 16px}
.counts{display:flex;flex-wrap:wrap;gap:8px;margin:0 0 16px;padding:0;list-style:none}
.counts li{padding:4px 10px;border-radius:12px;font-weight:600}
.counts li.zero{opacity:.45}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #d1d9e0;vertical-align:top}
th{background:#f6f8fa;font-weight:600}
tr>td:first-child,tr>th:first-child{border-left:6px solid transparent}
td.mono{font-family:ui-monospace,SFMono-Regular,Menlo,monospace}
td.err{max-width:38em;word-break:break-word;color:#59636e}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600;white-space:nowrap}
.sub{color:#59636e;font-size:12px;white-space:nowrap}
.s-valid{background:#dafbe1;color:#116329}
.s-refreshing{background:#ddf4ff;color:#0550ae}
.s-cold{background:#eaeef2;color:#424a53}
.s-failed{background:#fff8c5;color:#7d4e00}
.s-needs_otp{background:#fff1e5;color:#953800}
.s-credentials_rejected{background:#ffebe9;color:#a40e26}
tr[data-state=valid]>td:first-child{border-left-color:#1a7f37}
tr[data-state=refreshing]>td:first-child{border-left-color:#0969da}
tr[data-state=cold]>td:first-child{border-left-color:#8c959f}
tr[data-state=failed]>td:first-child{border-left-color:#d4a72c}
tr[data-state=needs_otp]>td:first-child{border-left-color:#fb8f44}
tr[data-state=credentials_rejected]>td:first-child{border-left-color:#cf222e}
";

/// Live drop-in sessions per (upstream, client).
pub type DropinCounts = [(Arc<str>, Arc<str>, usize)];

/// Renders the status page for `sessions` (and the drop-in sessions `dropin`) as of `now`.
/// Every dynamic string is escaped.
pub fn render(
    sessions: &[SessionInfo],
    dropin: &DropinCounts,
    now: SystemTime,
    version: &str,
) -> String {
    let mut out = String::with_capacity(4096 + sessions.len() * 600);
    // Writing to a String cannot fail; the Result only comes from the `fmt::Write` signature.
    let _ = write_page(&mut out, sessions, dropin, now, version);
    out
}

fn write_page(
    out: &mut String,
    sessions: &[SessionInfo],
    dropin: &DropinCounts,
    now: SystemTime,
    version: &str,
) -> fmt::Result {
    let mut counts = [0usize; State::ALL.len()];
    for s in sessions {
        if let Some(i) = State::ALL.iter().position(|x| *x == s.state) {
            counts[i] += 1;
        }
    }
    let attention = sessions
        .iter()
        .filter(|s| urgency(s.state) <= urgency(State::Failed))
        .count();
    let title = if attention == 0 {
        "gstgate status".to_string()
    } else {
        format!("gstgate status \u{2014} {attention} need attention")
    };
    let generated = rfc3339(now);

    write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECS}\">\
         <title>{}</title><style>{STYLE}</style></head><body>\n",
        escape(&title)
    )?;
    writeln!(out, "<h1>{}</h1>", escape(&title))?;
    writeln!(
        out,
        "<p class=\"meta\">{} session(s) &middot; generated <time datetime=\"{g}\">{g}</time> \
         &middot; gstgate {} &middot; reloads every {REFRESH_SECS}s</p>",
        sessions.len(),
        escape(version),
        g = escape(&generated),
    )?;
    out.push_str("<ul class=\"counts\">");
    for (state, count) in State::ALL.iter().zip(counts) {
        let zero = if count == 0 { " zero" } else { "" };
        write!(
            out,
            "<li class=\"s-{s}{zero}\" data-count-state=\"{s}\">{s}: {count}</li>",
            s = state.as_str()
        )?;
    }
    out.push_str("</ul>\n");

    out.push_str(
        "<table><thead><tr><th>Upstream</th><th>GSTIN</th><th>User</th><th>State</th>\
         <th>Token expires</th><th>GSTN session ends</th><th>Last refresh</th>\
         <th>Last error</th></tr></thead>\n<tbody>\n",
    );
    if sessions.is_empty() {
        out.push_str("<tr><td colspan=\"8\">No credentials are configured.</td></tr>\n");
    }
    let mut rows: Vec<&SessionInfo> = sessions.iter().collect();
    rows.sort_by_key(|s| urgency(s.state));
    for s in rows {
        write_row(out, s, now)?;
    }
    out.push_str("</tbody></table>\n");
    if !dropin.is_empty() {
        out.push_str(
            "<h2>Drop-in sessions</h2>\n<table id=\"dropin\"><thead><tr><th>Upstream</th>\
             <th>Client</th><th>Live sessions</th></tr></thead>\n<tbody>\n",
        );
        for (upstream, client, live) in dropin {
            writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{live}</td></tr>",
                escape(upstream),
                escape(client)
            )?;
        }
        out.push_str("</tbody></table>\n");
    }
    out.push_str("</body></html>\n");
    Ok(())
}

fn write_row(out: &mut String, s: &SessionInfo, now: SystemTime) -> fmt::Result {
    let state = s.state.as_str();
    write!(
        out,
        "<tr data-state=\"{state}\" data-upstream=\"{u}\" data-gstin=\"{g}\">\
         <td>{u}</td><td class=\"mono\">{g}</td><td>{user}</td>\
         <td><span class=\"badge s-{state}\" title=\"{why}\">{state}</span></td>",
        u = escape(&s.upstream),
        g = escape(&s.gstin),
        user = escape(&s.username),
        why = escape(meaning(s.state)),
    )?;
    write_until(out, s.expires_in_secs, s.expires_at.as_deref())?;
    write_until(out, s.session_ends_in_secs, s.session_ends_at.as_deref())?;
    match s.last_refresh.as_deref() {
        None => out.push_str("<td>\u{2014}</td>"),
        Some(at) => {
            let ago = parse_time(at)
                .and_then(|t| now.duration_since(t).ok())
                .map(|d| format!("{} ago", human_duration(d.as_secs())))
                .unwrap_or_else(|| "at".into());
            write!(
                out,
                "<td>{}<div class=\"sub\">{}</div></td>",
                escape(&ago),
                escape(at)
            )?;
        }
    }
    match s.last_error.as_deref() {
        None => out.push_str("<td class=\"err\">\u{2014}</td>"),
        Some(e) => write!(out, "<td class=\"err\">{}</td>", escape(e))?,
    }
    out.push_str("</tr>\n");
    Ok(())
}

/// A "time until" cell: `in 5h 12m` over the absolute time, or a dash.
fn write_until(out: &mut String, secs: Option<u64>, at: Option<&str>) -> fmt::Result {
    match (secs, at) {
        (Some(secs), at) => write!(
            out,
            "<td>in {}<div class=\"sub\">{}</div></td>",
            escape(&human_duration(secs)),
            escape(at.unwrap_or(""))
        ),
        (None, _) => {
            out.push_str("<td>\u{2014}</td>");
            Ok(())
        }
    }
}

fn parse_time(text: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .map(SystemTime::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn info(gstin: &str, state: State) -> SessionInfo {
        SessionInfo {
            upstream: "einvoice".into(),
            gstin: gstin.into(),
            username: "api_user".into(),
            state,
            expires_at: None,
            expires_in_secs: None,
            last_refresh: None,
            last_error: None,
            last_upstream_code: None,
            generation: None,
            session_ends_at: None,
            session_ends_in_secs: None,
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn escape_covers_every_html_special_character() {
        assert_eq!(
            escape(r#"<script>alert('x') & "y"</script>"#),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
        assert_eq!(escape("27AAPFU0939F1ZV"), "27AAPFU0939F1ZV");
    }

    #[test]
    fn durations_read_as_the_two_largest_units() {
        assert_eq!(human_duration(0), "0s");
        assert_eq!(human_duration(42), "42s");
        assert_eq!(human_duration(125), "2m 5s");
        assert_eq!(human_duration(5 * 3600 + 12 * 60 + 9), "5h 12m");
        assert_eq!(human_duration(3 * 86_400 + 4 * 3600 + 59), "3d 4h");
        assert_eq!(human_duration(86_400 + 5 * 60), "1d");
        assert_eq!(human_duration(3600), "1h");
    }

    #[test]
    fn one_row_per_session_with_its_state_problems_first() {
        let mut valid = info("27AAPFU0939F1ZV", State::Valid);
        valid.expires_at = Some("1970-01-01T06:00:00Z".into());
        valid.expires_in_secs = Some(5 * 3600 + 12 * 60);
        valid.last_refresh = Some("1970-01-01T00:00:00Z".into());
        let mut gstn = info("29AAACR5055K1Z5", State::Valid);
        gstn.upstream = "gstn".into();
        gstn.session_ends_at = Some("1970-01-04T04:00:00Z".into());
        gstn.session_ends_in_secs = Some(3 * 86_400 + 4 * 3600);
        let rejected = info("27AAPFU0001F1Z5", State::CredentialsRejected);
        let html = render(&[valid, gstn, rejected], &[], at(12 * 60), "9.9.9");
        assert_eq!(html.matches("<tr data-state=").count(), 3);
        let first = html.find("data-state=\"credentials_rejected\"").unwrap();
        assert!(first < html.find("data-state=\"valid\"").unwrap());
        assert!(html.contains(
            "<tr data-state=\"valid\" data-upstream=\"einvoice\" data-gstin=\"27AAPFU0939F1ZV\">"
        ));
        assert!(html.contains("in 5h 12m"), "{html}");
        assert!(html.contains("in 3d 4h"), "{html}");
        assert!(html.contains("12m ago"), "{html}");
        assert!(html.contains("data-count-state=\"valid\">valid: 2<"));
        assert!(html.contains("1 need attention"));
        assert!(html.contains("gstgate 9.9.9"));
        assert!(!html.contains("<script"));
    }

    #[test]
    fn every_dynamic_string_is_escaped() {
        let mut s = info("27AAPFU0939F1ZV", State::Failed);
        s.last_error = Some("<script>alert(1)</script> & \"quoted\"".into());
        s.username = "<b>u</b>".into();
        s.upstream = "e\"><img src=x>".into();
        let html = render(&[s], &[("<u>".into(), "<c>".into(), 3)], at(0), "<v>");
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<b>u</b>"));
        assert!(!html.contains("<img"));
        assert!(!html.contains("<v>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quoted&quot;"));
        assert!(html.contains("data-upstream=\"e&quot;&gt;&lt;img src=x&gt;\""));
        assert!(!html.contains("<u>") && !html.contains("<c>"));
        assert!(html.contains("<tr><td>&lt;u&gt;</td><td>&lt;c&gt;</td><td>3</td></tr>"));
    }

    #[test]
    fn an_empty_table_says_so() {
        let html = render(&[], &[], at(0), "1");
        assert!(html.contains("No credentials are configured."));
        assert_eq!(html.matches("<tr data-state=").count(), 0);
    }
}
