//! The filtering and paging behind `GET /admin/sessions` and `GET /status`, built for a GSP's
//! 100,000 sessions: a page, a summary over every session, and query parameters read as
//! hostile input.
//!
//! The API pages by a cursor over (upstream, GSTIN, user): a row's key does not change with
//! its state, so following `next` visits every row once even while logins change states, and
//! a cursor stays meaningful across a reload (rows added before it are skipped, none
//! repeated). The status page is for people: problems first and numbered pages, where a row
//! may move between pages as states change, which a page reloading every 15 s makes moot.
//!
//! [`Sessions::select`] shows every slot as a borrowed row; only the page's rows become
//! [`SessionInfo`]s, and only what the page needs is sorted.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::problem::GatewayError;
use crate::session::{SessionInfo, Sessions, State};

/// Rows on one `/admin/sessions` page when `limit` is not given.
pub const DEFAULT_LIMIT: usize = 100;
/// The largest `limit`: a page stays a few hundred KiB of JSON.
pub const MAX_LIMIT: usize = 1000;
/// Rows on one `/status` page: a few screens for a person, and about 70 KiB of HTML.
pub const STATUS_PAGE_ROWS: usize = 200;
/// The largest `page` accepted: 200 rows a page covers 200 million sessions.
pub const MAX_PAGE: usize = 1_000_000;
/// The longest `upstream` or `cursor` value read; anything longer is not one we made.
const MAX_PARAM: usize = 1024;

/// Which rows a listing keeps; `None` keeps every row.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filter {
    /// Only this state.
    pub state: Option<State>,
    /// Only this upstream (its exact name).
    pub upstream: Option<String>,
    /// Only GSTINs that start with this (upper case): a whole GSTIN, a state code, a PAN…
    pub gstin: Option<String>,
}

/// The (upstream, GSTIN, user) of a row: the API's order and cursor.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RowKey {
    /// Upstream name.
    pub upstream: String,
    /// GSTIN.
    pub gstin: String,
    /// API user.
    pub username: String,
}

/// The order of a listing and where its page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// By (upstream, GSTIN, user), after this key (from the start when `None`).
    After(Option<RowKey>),
    /// Problems first, then by (upstream, GSTIN, user), skipping this many rows.
    ProblemsFirst(usize),
}

/// Counts over every session, whatever the filter: the summary at the top.
#[derive(Debug, Default, Clone, Serialize, PartialEq, Eq)]
pub struct Summary {
    /// Every session.
    pub total: usize,
    /// Sessions per state; every state is present, zeros too.
    pub by_state: BTreeMap<&'static str, usize>,
    /// Sessions per upstream.
    pub by_upstream: BTreeMap<String, usize>,
}

impl Summary {
    fn new() -> Self {
        Summary {
            by_state: State::ALL.iter().map(|s| (s.as_str(), 0)).collect(),
            ..Summary::default()
        }
    }

    /// The summary of (upstream, state) rows.
    pub fn of<'a>(rows: impl IntoIterator<Item = (&'a str, State)>) -> Self {
        let mut summary = Summary::new();
        for (upstream, state) in rows {
            summary.count(upstream, state);
        }
        summary
    }

    fn count(&mut self, upstream: &str, state: State) {
        self.total += 1;
        *self.by_state.entry(state.as_str()).or_default() += 1;
        // Most rows hit an existing upstream: look up by `&str` before allocating a key.
        match self.by_upstream.get_mut(upstream) {
            Some(n) => *n += 1,
            None => {
                self.by_upstream.insert(upstream.to_owned(), 1);
            }
        }
    }

    /// Sessions in a state that needs an operator: rejected credentials, an OTP, a failed login.
    pub fn attention(&self) -> usize {
        State::ALL
            .iter()
            .filter(|s| needs_attention(**s))
            .map(|s| self.by_state.get(s.as_str()).copied().unwrap_or(0))
            .sum()
    }
}

/// One page of a listing.
#[derive(Debug)]
pub struct Listing {
    /// The page's rows, in the listing's order.
    pub sessions: Vec<SessionInfo>,
    /// Counts over every session.
    pub summary: Summary,
    /// Rows that pass the filter, over all pages.
    pub matched: usize,
    /// Where the next page starts (key order), when more rows follow.
    pub next: Option<RowKey>,
    /// Whether more rows follow this page.
    pub more: bool,
}

/// How urgent a state is: problems first on the status page.
pub fn urgency(state: State) -> u8 {
    match state {
        State::CredentialsRejected => 0,
        State::NeedsOtp => 1,
        State::Failed => 2,
        State::Refreshing => 3,
        State::Cold => 4,
        State::Valid => 5,
    }
}

/// Whether a state needs an operator (the status page's title counts these).
pub fn needs_attention(state: State) -> bool {
    urgency(state) <= urgency(State::Failed)
}

/// A row as the filter and the order see it, with its position in the table.
#[derive(Debug, Clone, Copy)]
struct Row<'a> {
    index: usize,
    upstream: &'a str,
    gstin: &'a str,
    username: &'a str,
    state: State,
}

impl Row<'_> {
    fn key(&self) -> (&str, &str, &str) {
        (self.upstream, self.gstin, self.username)
    }
}

impl Filter {
    fn keeps(&self, row: &Row<'_>) -> bool {
        self.state.is_none_or(|s| s == row.state)
            && self.upstream.as_deref().is_none_or(|u| u == row.upstream)
            && self
                .gstin
                .as_deref()
                .is_none_or(|g| row.gstin.starts_with(g))
    }
}

fn by_key(a: &Row<'_>, b: &Row<'_>) -> Ordering {
    a.key().cmp(&b.key())
}

fn problems_first(a: &Row<'_>, b: &Row<'_>) -> Ordering {
    (urgency(a.state), a.key()).cmp(&(urgency(b.state), b.key()))
}

/// The page of `rows` (already filtered) at `position`, at most `limit` rows, and whether more
/// follow. Selects the rows up to the page's end before sorting them, so that page 1 of
/// 100,000 rows is a linear pass, not a full sort.
fn page<'a>(mut rows: Vec<Row<'a>>, position: &Position, limit: usize) -> (Vec<Row<'a>>, bool) {
    let (skip, order): (usize, fn(&Row<'_>, &Row<'_>) -> Ordering) = match position {
        Position::After(after) => {
            if let Some(k) = after {
                let k = (k.upstream.as_str(), k.gstin.as_str(), k.username.as_str());
                rows.retain(|r| r.key() > k);
            }
            (0, by_key)
        }
        Position::ProblemsFirst(skip) => (*skip, problems_first),
    };
    if skip >= rows.len() {
        // A page past the end (a hostile or stale `page`) costs no sort.
        return (Vec::new(), false);
    }
    let end = skip.saturating_add(limit);
    let more = rows.len() > end;
    if more {
        rows.select_nth_unstable_by(end, order);
        rows.truncate(end);
    }
    rows.sort_unstable_by(order);
    (rows.into_iter().skip(skip).collect(), more)
}

/// One page of the sessions that pass `filter`, at `position`, at most `limit` rows, with the
/// summary over every session.
pub fn list(sessions: &Sessions, filter: &Filter, position: &Position, limit: usize) -> Listing {
    let (infos, (summary, matched, next, more)) = sessions.select(|all| {
        let mut summary = Summary::new();
        let mut rows = Vec::new();
        for (index, (upstream, gstin, username, state)) in all.into_iter().enumerate() {
            summary.count(upstream, state);
            let row = Row {
                index,
                upstream,
                gstin,
                username,
                state,
            };
            if filter.keeps(&row) {
                rows.push(row);
            }
        }
        let matched = rows.len();
        let (rows, more) = page(rows, position, limit);
        let next = match (position, more, rows.last()) {
            (Position::After(_), true, Some(last)) => Some(RowKey {
                upstream: last.upstream.to_owned(),
                gstin: last.gstin.to_owned(),
                username: last.username.to_owned(),
            }),
            _ => None,
        };
        let chosen = rows.iter().map(|r| r.index).collect();
        (chosen, (summary, matched, next, more))
    });
    Listing {
        sessions: infos,
        summary,
        matched,
        next,
        more,
    }
}

/// The query of `GET /admin/sessions`, as sent.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsQuery {
    /// A state name.
    pub state: Option<String>,
    /// An upstream name.
    pub upstream: Option<String>,
    /// A GSTIN or its first characters.
    pub gstin: Option<String>,
    /// Rows per page.
    pub limit: Option<String>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// The query of `GET /status`, as sent (the page's own form and links send these).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusQuery {
    /// A state name.
    pub state: Option<String>,
    /// An upstream name.
    pub upstream: Option<String>,
    /// A GSTIN or its first characters.
    pub gstin: Option<String>,
    /// The page number, from 1.
    pub page: Option<String>,
}

fn invalid(detail: String) -> GatewayError {
    GatewayError::AdminRequestInvalid(detail)
}

/// A value as it may be quoted back: short, and without control characters.
fn quoted(value: &str) -> String {
    let mut out: String = value.chars().filter(|c| !c.is_control()).take(64).collect();
    if value.chars().count() > 64 {
        out.push('…');
    }
    out
}

/// An empty parameter is an absent one: the status page's form sends every field.
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().filter(|v| !v.is_empty())
}

/// Reads `state`, `upstream` and `gstin`.
pub fn parse_filter(
    state: &Option<String>,
    upstream: &Option<String>,
    gstin: &Option<String>,
) -> Result<Filter, GatewayError> {
    let state = match given(state) {
        None => None,
        Some(name) => Some(
            State::ALL
                .into_iter()
                .find(|s| s.as_str() == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = State::ALL.iter().map(|s| s.as_str()).collect();
                    invalid(format!(
                        "unknown state `{}`: one of {}",
                        quoted(name),
                        names.join(", ")
                    ))
                })?,
        ),
    };
    let upstream = match given(upstream) {
        None => None,
        Some(u) if u.len() > MAX_PARAM || u.chars().any(char::is_control) => {
            return Err(invalid(format!("`upstream` `{}` is not a name", quoted(u))))
        }
        Some(u) => Some(u.to_owned()),
    };
    let gstin = match given(gstin) {
        None => None,
        Some(g) if g.len() <= 15 && g.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Some(g.to_ascii_uppercase())
        }
        Some(g) => {
            return Err(invalid(format!(
                "`gstin` `{}` is not a GSTIN or its beginning (up to 15 letters and digits)",
                quoted(g)
            )))
        }
    };
    Ok(Filter {
        state,
        upstream,
        gstin,
    })
}

fn parse_number(name: &str, value: &str, max: usize) -> Result<usize, GatewayError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=max).contains(n))
        .ok_or_else(|| {
            invalid(format!(
                "`{name}` `{}` is not a whole number from 1 to {max}",
                quoted(value)
            ))
        })
}

impl SessionsQuery {
    /// The filter, position and page size it asks for.
    pub fn parse(&self) -> Result<(Filter, Position, usize), GatewayError> {
        let filter = parse_filter(&self.state, &self.upstream, &self.gstin)?;
        let limit = match given(&self.limit) {
            None => DEFAULT_LIMIT,
            Some(l) => parse_number("limit", l, MAX_LIMIT)?,
        };
        let after = given(&self.cursor).map(decode_cursor).transpose()?;
        Ok((filter, Position::After(after), limit))
    }
}

impl StatusQuery {
    /// The filter and the page number (from 1) it asks for.
    pub fn parse(&self) -> Result<(Filter, usize), GatewayError> {
        let filter = parse_filter(&self.state, &self.upstream, &self.gstin)?;
        let page = match given(&self.page) {
            None => 1,
            Some(p) => parse_number("page", p, MAX_PAGE)?,
        };
        Ok((filter, page))
    }
}

/// A cursor: the row key's parts, NUL-separated, in lower-case hex. Opaque to callers and
/// safe in a URL as it is; the user name is last, so a NUL in it still decodes.
pub fn encode_cursor(key: &RowKey) -> String {
    let mut out = String::new();
    let parts = [&key.upstream, &key.gstin, &key.username];
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push_str("00");
        }
        for b in part.bytes() {
            let _ = write!(out, "{b:02x}");
        }
    }
    out
}

/// Reads a cursor that [`encode_cursor`] made; anything else is a 400.
pub fn decode_cursor(text: &str) -> Result<RowKey, GatewayError> {
    let bad = || {
        invalid(format!(
            "`cursor` `{}` is not one this gateway made: pass the `next_cursor` of the previous page",
            quoted(text)
        ))
    };
    if text.len() > 3 * MAX_PARAM || text.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = text.splitn(3, '\0');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(upstream), Some(gstin), Some(username)) => Ok(RowKey {
            upstream: upstream.to_owned(),
            gstin: gstin.to_owned(),
            username: username.to_owned(),
        }),
        _ => Err(bad()),
    }
}

/// Percent-encodes a query value: everything but unreserved characters.
pub fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The query string (without `?`) of `filter` followed by `extra` pairs: for `next` links
/// and the status page's links.
pub fn query_string(filter: &Filter, extra: &[(&str, String)]) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    if let Some(s) = filter.state {
        pairs.push(("state", s.as_str().to_owned()));
    }
    if let Some(u) = &filter.upstream {
        pairs.push(("upstream", u.clone()));
    }
    if let Some(g) = &filter.gstin {
        pairs.push(("gstin", g.clone()));
    }
    pairs.extend(extra.iter().cloned());
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", query_value(v)))
        .collect::<Vec<_>>()
        .join("&")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        index: usize,
        upstream: &'static str,
        gstin: &'static str,
        state: State,
    ) -> Row<'static> {
        Row {
            index,
            upstream,
            gstin,
            username: "u",
            state,
        }
    }

    fn rows(n: usize) -> Vec<Row<'static>> {
        // Leaked: the rows borrow their strings, as they borrow the table's in the gateway.
        (0..n)
            .map(|i| {
                let gstin: &'static str = Box::leak(format!("27AAAAA{i:05}Z").into_boxed_str());
                let upstream = if i % 3 == 0 { "gstn" } else { "einvoice" };
                let state = State::ALL[i % State::ALL.len()];
                row(i, upstream, gstin, state)
            })
            .collect()
    }

    fn keys(rows: &[Row<'_>]) -> Vec<(String, String)> {
        rows.iter()
            .map(|r| (r.upstream.to_owned(), r.gstin.to_owned()))
            .collect()
    }

    #[test]
    fn following_the_cursor_visits_every_row_once_in_key_order() {
        let all = rows(1003);
        let mut seen = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let (got, more) = page(all.clone(), &Position::After(after.clone()), 100);
            pages += 1;
            seen.extend(keys(&got));
            if !more {
                break;
            }
            let last = got.last().unwrap();
            after = Some(RowKey {
                upstream: last.upstream.into(),
                gstin: last.gstin.into(),
                username: last.username.into(),
            });
        }
        assert_eq!(pages, 11);
        let mut want = keys(&all);
        want.sort();
        assert_eq!(seen, want);
    }

    #[test]
    fn an_exact_last_page_says_no_more() {
        let (got, more) = page(rows(200), &Position::After(None), 200);
        assert_eq!((got.len(), more), (200, false));
        let (got, more) = page(rows(201), &Position::After(None), 200);
        assert_eq!((got.len(), more), (200, true));
        let (got, more) = page(vec![], &Position::After(None), 1);
        assert!(got.is_empty() && !more);
    }

    #[test]
    fn problems_come_first_and_pages_do_not_overlap() {
        let all = rows(120);
        let (first, more) = page(all.clone(), &Position::ProblemsFirst(0), 50);
        assert!(more);
        assert!(first[..20]
            .iter()
            .all(|r| r.state == State::CredentialsRejected));
        assert_eq!(first[20].state, State::NeedsOtp);
        let (second, _) = page(all.clone(), &Position::ProblemsFirst(50), 50);
        let (third, more) = page(all.clone(), &Position::ProblemsFirst(100), 50);
        assert!(!more && third.len() == 20);
        let mut seen: Vec<usize> = [first, second, third]
            .iter()
            .flatten()
            .map(|r| r.index)
            .collect();
        seen.sort();
        assert_eq!(seen, (0..120).collect::<Vec<_>>());
        let (beyond, more) = page(all, &Position::ProblemsFirst(500), 50);
        assert!(beyond.is_empty() && !more);
    }

    #[test]
    fn the_filter_matches_state_upstream_and_gstin_prefix() {
        let all = rows(60);
        let f = Filter {
            state: Some(State::Valid),
            upstream: Some("einvoice".into()),
            gstin: Some("27AAAAA0001".into()),
        };
        let kept: Vec<usize> = all.iter().filter(|r| f.keeps(r)).map(|r| r.index).collect();
        // 10..=19 start with the prefix; Valid is i % 6 == 1; gstn is i % 3 == 0.
        assert_eq!(kept, vec![13, 19]);
        assert_eq!(
            all.iter().filter(|r| Filter::default().keeps(r)).count(),
            60
        );
    }

    #[test]
    fn the_summary_counts_every_state_and_upstream() {
        let mut s = Summary::new();
        s.count("einvoice", State::Valid);
        s.count("einvoice", State::Failed);
        s.count("gstn", State::NeedsOtp);
        assert_eq!(s.total, 3);
        assert_eq!(s.by_state.len(), State::ALL.len());
        assert_eq!(s.by_state["cold"], 0);
        assert_eq!(s.by_upstream["einvoice"], 2);
        assert_eq!(s.attention(), 2);
    }

    #[test]
    fn cursors_round_trip_and_forgeries_are_refused() {
        let key = RowKey {
            upstream: "einvoice".into(),
            gstin: "27AAPFU0939F1ZV".into(),
            username: "us\0er é&=".into(),
        };
        let c = encode_cursor(&key);
        assert!(c.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(decode_cursor(&c).unwrap(), key);
        for bad in [
            "zz",
            "abc",
            "61",
            "6100",
            "ff00ff00ff",
            "%00",
            "é",
            &"00".repeat(5000),
        ] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn hostile_queries_are_refused_and_empty_ones_are_absent() {
        let q = |state: &str, limit: &str, cursor: &str| SessionsQuery {
            state: Some(state.into()),
            limit: Some(limit.into()),
            cursor: Some(cursor.into()),
            ..SessionsQuery::default()
        };
        let (f, p, l) = q("", "", "").parse().unwrap();
        assert_eq!(
            (f, p, l),
            (Filter::default(), Position::After(None), DEFAULT_LIMIT)
        );
        assert_eq!(q("valid", "1000", "").parse().unwrap().2, 1000);
        for (state, limit) in [
            ("VALID", "1"),
            ("nope", "1"),
            ("valid", "0"),
            ("valid", "1001"),
            ("valid", "-1"),
            ("valid", "1e3"),
            ("valid", "99999999999999999999999"),
        ] {
            let err = q(state, limit, "").parse().unwrap_err();
            assert!(matches!(err, GatewayError::AdminRequestInvalid(_)), "{err}");
        }
        let err = q("<script>", "1", "").parse().unwrap_err().to_string();
        assert!(err.contains("one of cold, valid"), "{err}");
        let gstin = |g: &str| parse_filter(&None, &None, &Some(g.into()));
        assert_eq!(gstin("27aapfu").unwrap().gstin.as_deref(), Some("27AAPFU"));
        assert!(gstin("27AAPFU0939F1ZV1").is_err());
        assert!(gstin("27 AA").is_err());
        assert!(parse_filter(&None, &Some("a\nb".into()), &None).is_err());
        let page = |p: &str| StatusQuery {
            page: Some(p.into()),
            ..StatusQuery::default()
        };
        assert_eq!(page("3").parse().unwrap().1, 3);
        assert!(page("0").parse().is_err() && page("1000001").parse().is_err());
    }

    #[test]
    fn query_strings_are_percent_encoded() {
        let f = Filter {
            state: Some(State::NeedsOtp),
            upstream: Some("a&b=c d".into()),
            gstin: None,
        };
        assert_eq!(
            query_string(&f, &[("page", "2".into())]),
            "state=needs_otp&upstream=a%26b%3Dc%20d&page=2"
        );
    }
}
