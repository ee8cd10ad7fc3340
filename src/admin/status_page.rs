//! `GET /status` on the admin listener: one HTML page an operator reads at a glance — every
//! session with its state, time to expiry, time to the end of the GSTN portal session, last
//! refresh and last error.
//!
//! The page is self-contained (inline CSS, no scripts, no external assets) so that it works
//! on an air-gapped admin network and under a `default-src 'none'` content security policy.
//! It refreshes itself every 15 s with a `<meta>` tag. It is built from the same listing as
//! `/admin/sessions` ([`listing`](super::listing)), which holds no token, SEK or password;
//! every dynamic string is still HTML-escaped, because a last error may quote an upstream's
//! message.
//!
//! With a GSP's 100,000 sessions the page shows a summary over all of them (counts by state
//! and by upstream, each a link to those rows), problems first, 200 rows a page with numbered
//! page links, and a plain GET form to filter by state, upstream and GSTIN: links and a form
//! work without scripts, and the page stays under 100 KiB or so whatever the number of sessions.
//!
//! Like `/metrics` it needs no token: a browser cannot send a bearer token, the page holds no
//! secrets, and the admin listener is private (see `docs/operations.md`).

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{Query, State as AxumState};
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::listing::{self, Filter, Listing, Position, StatusQuery, Summary, STATUS_PAGE_ROWS};
use super::{Admin, Checked};
use crate::breaker;
use crate::problem::GatewayError;
use crate::session::{SessionInfo, State};
use crate::timestamp::rfc3339;
use crate::upstream::Upstream;

/// Seconds between the page's own reloads.
const REFRESH_SECS: u32 = 15;

/// The `/status` handler: one page of sessions, as the query's filter and page number ask.
pub(super) async fn handler(
    AxumState(admin): AxumState<Arc<Admin>>,
    Checked(Query(q)): Checked<Query<StatusQuery>>,
) -> Result<Response, GatewayError> {
    let (filter, page) = q.parse()?;
    let html = super::off_the_runtime(move || {
        let skip = (page - 1).saturating_mul(STATUS_PAGE_ROWS);
        let listing = listing::list(
            &admin.sessions,
            &filter,
            &Position::ProblemsFirst(skip),
            STATUS_PAGE_ROWS,
        );
        let targets = target_rows(&admin.upstreams);
        render(
            &View {
                listing: &listing,
                filter: &filter,
                page,
                targets: &targets,
            },
            &admin.dropin.counts(),
            SystemTime::now(),
            env!("CARGO_PKG_VERSION"),
        )
    })
    .await?;
    Ok((
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            // No scripts, frames or remote loads: only the inline stylesheet; the filter form
            // submits to this page only.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        html,
    )
        .into_response())
}

/// What one status page shows: a page of the listing, its filter and its number (from 1).
pub struct View<'a> {
    /// The page's rows and the summary.
    pub listing: &'a Listing,
    /// The filter the rows passed.
    pub filter: &'a Filter,
    /// The page number, from 1.
    pub page: usize,
    /// Each upstream target's circuit: (upstream, target, state).
    pub targets: &'a [TargetRow],
}

/// One upstream target's circuit as the page shows it: upstream, target, state.
pub type TargetRow = (Arc<str>, Arc<str>, breaker::State);

/// The circuits of every upstream's targets, in configured order.
pub fn target_rows(upstreams: &[Arc<Upstream>]) -> Vec<TargetRow> {
    upstreams
        .iter()
        .flat_map(|u| {
            u.targets
                .iter()
                .map(|t| (u.name.clone(), t.label.clone(), t.state()))
        })
        .collect()
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
.counts a{color:inherit;text-decoration:none}
.counts a:hover{text-decoration:underline}
.counts li.up{background:#f6f8fa;color:#1f2328;font-weight:400}
form.filter{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin:0 0 12px}
form.filter input,form.filter select,form.filter button{font:inherit;padding:2px 6px}
.pages{margin:8px 0;color:#59636e}
.pages a,.pages span{margin-right:10px}
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

/// Renders one status page (and the drop-in sessions `dropin`) as of `now`. Every dynamic
/// string is escaped.
pub fn render(view: &View<'_>, dropin: &DropinCounts, now: SystemTime, version: &str) -> String {
    let mut out = String::with_capacity(8192 + view.listing.sessions.len() * 700);
    // Writing to a String cannot fail; the Result only comes from the `fmt::Write` signature.
    let _ = write_page(&mut out, view, dropin, now, version);
    out
}

/// A link to this page with `filter` and page `page` (1 is left out).
fn href(filter: &Filter, page: usize) -> String {
    let extra = if page > 1 {
        vec![("page", page.to_string())]
    } else {
        vec![]
    };
    let query = listing::query_string(filter, &extra);
    escape(&format!("?{query}"))
}

fn write_page(
    out: &mut String,
    view: &View<'_>,
    dropin: &DropinCounts,
    now: SystemTime,
    version: &str,
) -> fmt::Result {
    let summary = &view.listing.summary;
    let attention = summary.attention();
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
        summary.total,
        escape(version),
        g = escape(&generated),
    )?;
    write_summary(out, summary, view.filter)?;
    write_form(out, summary, view.filter)?;
    write_pages(out, view)?;

    out.push_str(
        "<table id=\"sessions\"><thead><tr><th>Upstream</th><th>GSTIN</th><th>User</th><th>State</th>\
         <th>Token expires</th><th>GSTN session ends</th><th>Last refresh</th>\
         <th>Last error</th></tr></thead>\n<tbody>\n",
    );
    if summary.total == 0 {
        out.push_str("<tr><td colspan=\"8\">No credentials are configured.</td></tr>\n");
    } else if view.listing.sessions.is_empty() {
        out.push_str("<tr><td colspan=\"8\">No session on this page matches.</td></tr>\n");
    }
    for s in &view.listing.sessions {
        write_row(out, s, now)?;
    }
    out.push_str("</tbody></table>\n");
    write_pages(out, view)?;
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
    write_targets(out, view.targets)?;
    out.push_str("</body></html>\n");
    Ok(())
}

/// The upstream targets' circuits, when there is something to see: an upstream with several
/// targets (IRPs), or a circuit that is not closed.
fn write_targets(out: &mut String, targets: &[TargetRow]) -> fmt::Result {
    let several = targets
        .iter()
        .any(|(u, t, _)| targets.iter().any(|(u2, t2, _)| u2 == u && t2 != t));
    if !several && targets.iter().all(|(.., s)| *s == breaker::State::Closed) {
        return Ok(());
    }
    out.push_str(
        "<h2>Upstream targets</h2>\n<table id=\"targets\"><thead><tr><th>Upstream</th>\
         <th>Target</th><th>Circuit</th></tr></thead>\n<tbody>\n",
    );
    for (upstream, target, state) in targets {
        writeln!(
            out,
            "<tr data-target=\"{t}\"><td>{}</td><td>{t}</td><td class=\"c-{s}\">{s}</td></tr>",
            escape(upstream),
            t = escape(target),
            s = state.label(),
        )?;
    }
    out.push_str("</tbody></table>\n");
    Ok(())
}

/// Counts by state and by upstream over every session, each a link to those rows (keeping
/// the rest of the filter).
fn write_summary(out: &mut String, summary: &Summary, filter: &Filter) -> fmt::Result {
    out.push_str("<ul class=\"counts\" id=\"by-state\">");
    for state in State::ALL {
        let count = summary.by_state.get(state.as_str()).copied().unwrap_or(0);
        let zero = if count == 0 { " zero" } else { "" };
        let to = Filter {
            state: Some(state),
            ..filter.clone()
        };
        write!(
            out,
            "<li class=\"s-{s}{zero}\" data-count-state=\"{s}\" title=\"{why}\">\
             <a href=\"{h}\">{s}: {count}</a></li>",
            s = state.as_str(),
            why = escape(meaning(state)),
            h = href(&to, 1),
        )?;
    }
    out.push_str("</ul>\n<ul class=\"counts\" id=\"by-upstream\">");
    for (upstream, count) in &summary.by_upstream {
        let to = Filter {
            upstream: Some(upstream.clone()),
            ..filter.clone()
        };
        write!(
            out,
            "<li class=\"up\" data-count-upstream=\"{u}\"><a href=\"{h}\">{u}: {count}</a></li>",
            u = escape(upstream),
            h = href(&to, 1),
        )?;
    }
    out.push_str("</ul>\n");
    Ok(())
}

/// A GET form for the filter: no script needed, and it lands on page 1.
fn write_form(out: &mut String, summary: &Summary, filter: &Filter) -> fmt::Result {
    out.push_str(
        "<form class=\"filter\" method=\"get\" action=\"\">\
         <label>State <select name=\"state\"><option value=\"\">any</option>",
    );
    for state in State::ALL {
        let selected = if filter.state == Some(state) {
            " selected"
        } else {
            ""
        };
        write!(
            out,
            "<option value=\"{s}\"{selected}>{s}</option>",
            s = state.as_str()
        )?;
    }
    out.push_str(
        "</select></label> <label>Upstream <select name=\"upstream\"><option value=\"\">any</option>",
    );
    let mut upstreams: Vec<&str> = summary.by_upstream.keys().map(String::as_str).collect();
    // A filter on an upstream with no sessions stays selectable, so the form shows it.
    if let Some(u) = filter.upstream.as_deref() {
        if !summary.by_upstream.contains_key(u) {
            upstreams.push(u);
        }
    }
    for u in upstreams {
        let selected = if filter.upstream.as_deref() == Some(u) {
            " selected"
        } else {
            ""
        };
        write!(
            out,
            "<option value=\"{u}\"{selected}>{u}</option>",
            u = escape(u)
        )?;
    }
    writeln!(
        out,
        "</select></label> <label>GSTIN <input name=\"gstin\" value=\"{}\" size=\"16\" \
         maxlength=\"15\" placeholder=\"GSTIN or its start\"></label> \
         <button type=\"submit\">Filter</button> <a href=\"?\">clear</a></form>",
        escape(filter.gstin.as_deref().unwrap_or(""))
    )
}

/// Which rows this page shows of how many, and links to the first, previous, next and last
/// pages.
fn write_pages(out: &mut String, view: &View<'_>) -> fmt::Result {
    let matched = view.listing.matched;
    let last = matched.div_ceil(STATUS_PAGE_ROWS).max(1);
    let first_row = (view.page - 1) * STATUS_PAGE_ROWS + 1;
    let shown = view.listing.sessions.len();
    out.push_str("<p class=\"pages\">");
    if shown == 0 {
        write!(out, "<span>No rows on page {} of {last}", view.page)?;
    } else {
        write!(
            out,
            "<span>Rows {first_row}\u{2013}{} of {matched}",
            first_row + shown - 1
        )?;
    }
    let filter = view.filter;
    if filter.state.is_some() || filter.upstream.is_some() || filter.gstin.is_some() {
        write!(
            out,
            " matching the filter (<a href=\"?\">all {}</a>)",
            view.listing.summary.total
        )?;
    }
    write!(out, " &middot; page {} of {last}</span>", view.page)?;
    let link = |out: &mut String, rel: &str, label: &str, page: usize| {
        write!(
            out,
            "<a rel=\"{rel}\" href=\"{}\">{label}</a>",
            href(filter, page)
        )
    };
    if view.page > 1 {
        link(out, "first", "\u{ab} first", 1)?;
        link(out, "prev", "\u{2039} previous", (view.page - 1).min(last))?;
    }
    if view.listing.more {
        link(out, "next", "next \u{203a}", view.page + 1)?;
    }
    if view.page < last {
        link(out, "last", "last \u{bb}", last)?;
    }
    out.push_str("</p>\n");
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

    /// Renders page 1 of `sessions` (all of them, in the order given) with no filter.
    fn page_of(
        sessions: Vec<SessionInfo>,
        dropin: &DropinCounts,
        now: SystemTime,
        v: &str,
    ) -> String {
        let summary = Summary::of(sessions.iter().map(|s| (s.upstream.as_str(), s.state)));
        let listing = Listing {
            matched: sessions.len(),
            sessions,
            summary,
            next: None,
            more: false,
        };
        let view = View {
            listing: &listing,
            filter: &Filter::default(),
            page: 1,
            targets: &[],
        };
        render(&view, dropin, now, v)
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_targets_table_shows_each_irp_circuit_only_where_there_is_a_choice_or_a_fault() {
        let listing = Listing {
            matched: 0,
            sessions: vec![],
            summary: Summary::of([]),
            next: None,
            more: false,
        };
        let page = |targets: &[TargetRow]| {
            let view = View {
                listing: &listing,
                filter: &Filter::default(),
                page: 1,
                targets,
            };
            render(&view, &[], at(0), "1")
        };
        let row = |u: &str, t: &str, s| -> TargetRow { (u.into(), t.into(), s) };
        let single = [row("ewaybill", "default", breaker::State::Closed)];
        assert!(!page(&single).contains("id=\"targets\""));
        let html = page(&[
            row("einvoice", "NIC1", breaker::State::Open),
            row("einvoice", "NIC2", breaker::State::Closed),
        ]);
        assert!(
            html.contains("<tr data-target=\"NIC1\"><td>einvoice</td><td>NIC1</td><td class=\"c-open\">open</td></tr>"),
            "{html}"
        );
        let broken = [row("ewaybill", "default", breaker::State::HalfOpen)];
        assert!(page(&broken).contains("half_open"));
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
        // The listing orders the rows; the page keeps its order.
        let html = page_of(vec![rejected, valid, gstn], &[], at(12 * 60), "9.9.9");
        assert_eq!(html.matches("<tr data-state=").count(), 3);
        let first = html
            .find("<tr data-state=\"credentials_rejected\"")
            .unwrap();
        assert!(first < html.find("<tr data-state=\"valid\"").unwrap());
        assert!(html.contains(
            "<tr data-state=\"valid\" data-upstream=\"einvoice\" data-gstin=\"27AAPFU0939F1ZV\">"
        ));
        assert!(html.contains("in 5h 12m"), "{html}");
        assert!(html.contains("in 3d 4h"), "{html}");
        assert!(html.contains("12m ago"), "{html}");
        assert!(
            html.contains("<a href=\"?state=valid\">valid: 2</a>"),
            "{html}"
        );
        assert!(
            html.contains("<a href=\"?upstream=gstn\">gstn: 1</a>"),
            "{html}"
        );
        assert!(html.contains("Rows 1\u{2013}3 of 3"), "{html}");
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
        let html = page_of(vec![s], &[("<u>".into(), "<c>".into(), 3)], at(0), "<v>");
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<b>u</b>"));
        assert!(!html.contains("<img"));
        assert!(!html.contains("<v>"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quoted&quot;"));
        assert!(html.contains("data-upstream=\"e&quot;&gt;&lt;img src=x&gt;\""));
        // In the summary's link and the form too: percent-encoded, then escaped.
        assert!(
            html.contains("href=\"?upstream=e%22%3E%3Cimg%20src%3Dx%3E\""),
            "{html}"
        );
        assert!(
            html.contains("<option value=\"e&quot;&gt;&lt;img src=x&gt;\">"),
            "{html}"
        );
        assert!(!html.contains("<u>") && !html.contains("<c>"));
        assert!(html.contains("<tr><td>&lt;u&gt;</td><td>&lt;c&gt;</td><td>3</td></tr>"));
    }

    #[test]
    fn a_filtered_middle_page_links_to_its_neighbours_and_keeps_the_filter() {
        let sessions: Vec<SessionInfo> = (0..STATUS_PAGE_ROWS)
            .map(|_| info("27AAPFU0939F1ZV", State::Failed))
            .collect();
        let mut summary = Summary::of(sessions.iter().map(|s| (s.upstream.as_str(), s.state)));
        summary.total = 100_000;
        let listing = Listing {
            sessions,
            summary,
            matched: 1000,
            next: None,
            more: true,
        };
        let filter = Filter {
            state: Some(State::Failed),
            upstream: Some("einvoice".into()),
            gstin: Some("27\"<".into()),
        };
        let html = render(
            &View {
                listing: &listing,
                filter: &filter,
                page: 2,
                targets: &[],
            },
            &[],
            at(0),
            "1",
        );
        let q = "state=failed&amp;upstream=einvoice&amp;gstin=27%22%3C";
        assert!(
            html.contains(&format!("rel=\"prev\" href=\"?{q}\"")),
            "{html}"
        );
        assert!(
            html.contains(&format!("rel=\"next\" href=\"?{q}&amp;page=3\"")),
            "{html}"
        );
        assert!(
            html.contains(&format!("rel=\"last\" href=\"?{q}&amp;page=5\"")),
            "{html}"
        );
        assert!(
            html.contains("Rows 201\u{2013}400 of 1000 matching the filter"),
            "{html}"
        );
        assert!(html.contains("page 2 of 5"), "{html}");
        assert!(
            html.contains("<option value=\"failed\" selected>"),
            "{html}"
        );
        assert!(
            html.contains("name=\"gstin\" value=\"27&quot;&lt;\""),
            "{html}"
        );
        assert!(html.contains("100000 session(s)"), "{html}");
        assert!(!html.contains("<script") && !html.contains("27\"<"));
    }

    #[test]
    fn an_empty_table_says_so() {
        let html = page_of(vec![], &[], at(0), "1");
        assert!(html.contains("No credentials are configured."));
        assert_eq!(html.matches("<tr data-state=").count(), 0);
    }
}
