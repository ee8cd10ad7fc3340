//! The simulator's shared state: runtime knobs, sessions and tokens, stored documents,
//! counters, the request log and per-GSTIN token rejection — what all three APIs share. The
//! e-way bill and GSTN profiles keep their own protocol state next to this (`ewaybill.rs`,
//! `gstn.rs`), and `SimState` (in `mod.rs`) holds both, with the users, clients and faults, so
//! that nothing here depends on a profile.
//!
//! Locks: every piece is behind its own `std::sync::Mutex`, not a Tokio one. Each critical
//! section is a few map operations with no `.await` inside, so a blocking mutex is cheaper
//! and cannot be held across a suspension point by accident (the same reasoning as
//! mini-redis's `db.rs`). Sessions and tokens share one mutex because they change together
//! (issuing a token updates both); documents, counters and the log are independent so that a
//! load test's data calls do not contend with logins. A poisoned mutex is recovered rather
//! than propagated: the simulator's state stays usable after a panicking handler.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::distributions::{Alphanumeric, Distribution};
use serde::Serialize;

use super::clock::to_ist;
use super::portals::Portal;
use crate::crypto::AesKey;

/// Most documents kept; the oldest are evicted beyond this so a load test cannot exhaust memory.
pub const MAX_DOCUMENTS: usize = 100_000;

/// Requests kept in the `/_sim/requests` ring buffer.
pub const REQUEST_LOG_LEN: usize = 200;

/// Bytes of each logged request body kept in the ring buffer.
pub const LOGGED_BODY_MAX: usize = 64 * 1024;

/// Longest token lifetime honoured (ten years): longer knob values are capped.
const MAX_TOKEN_TTL: Duration = Duration::from_secs(3650 * 24 * 3600);

/// A knob duration as a chrono duration, capped at ten years so that `now + d` cannot overflow
/// whatever a knob was set to.
pub fn capped(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d.min(MAX_TOKEN_TTL)).unwrap_or(chrono::Duration::days(3650))
}

/// Length of an issued AuthToken (NIC's are around 25 alphanumerics).
const TOKEN_LEN: usize = 26;

/// Takes a mutex, recovering the data if a previous holder panicked.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Settings that `/_sim/knobs` may change while the simulator runs.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// Artificial latency added to every data call.
    pub latency: Duration,
    /// Delay between processing a data call (a generate's document committed) and sending
    /// its reply: a client that gives up or dies in it has lost a reply whose document exists.
    pub reply_latency: Duration,
    /// Lifetime of newly issued tokens (existing tokens keep their expiry).
    pub token_ttl: Duration,
    /// How close to expiry `ForceRefreshAccessToken` starts to be honoured.
    pub force_window: Duration,
    /// HTTP status of `Status: 0` replies.
    pub error_http_status: u16,
    /// Whether a force refresh invalidates the previous token at once.
    pub force_refresh_revokes_old: bool,
    /// E-way bill errors as a plain object instead of base64 text.
    pub ewb_plain_errors: bool,
    /// E-way bill login limit: the window in which 5 logins block a user, and the block length.
    pub ewb_login_window: Duration,
    /// Every `rek`/`hmac` reply (e-way bill GET, GSTN data) carries a wrong HMAC.
    pub tamper_hmac: bool,
    /// GSTN: every OTP is this value instead of a random one (GSTN's sandbox uses 575757).
    pub fixed_otp: Option<String>,
    /// GSTN: how long the portal session an OTP login starts lasts.
    pub gstn_session_ttl: Duration,
    /// GSTN: most live portal sessions one user may hold; one more login is AUTH403.
    pub gstn_max_sessions: usize,
    /// e-invoice: `TokenExpiry` states this much earlier than the token really expires, as
    /// NIC's whole seconds (and a clock running ahead of the client's) do.
    pub stated_expiry_early: Duration,
}

/// The current token of one (GSTIN, username).
#[derive(Clone, Debug)]
pub struct UserToken {
    /// The AuthToken.
    pub token: String,
    /// The session encryption key.
    pub sek: AesKey,
    /// When the token stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// What a token grants: kept per token because after a force refresh the previous token stays
/// valid (with its own SEK) until its own expiry.
#[derive(Clone, Debug)]
pub struct TokenGrant {
    /// GSTIN the token was issued for (upper case).
    pub gstin: String,
    /// Username the token was issued for.
    pub username: String,
    /// The SEK that goes with this token.
    pub sek: AesKey,
    /// When the token stops being accepted.
    pub expires_at: DateTime<Utc>,
}

/// How a login was answered, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Issue {
    /// The still-valid current token was returned.
    Reused,
    /// A new token was issued (first login, expiry or revocation).
    New,
    /// A new token was issued because of `ForceRefreshAccessToken` inside the window.
    Forced,
}

/// Every user's current token, by (GSTIN, username), and every live token.
#[derive(Default)]
pub struct TokenBook {
    current: HashMap<(String, String), UserToken>,
    tokens: HashMap<String, TokenGrant>,
    /// How long expired tokens are remembered, so that an API which tells "expired" from
    /// "unknown" (e-way bill: 106 vs 238) can still tell; zero for e-invoice, which does not.
    expired_memory: chrono::Duration,
    /// Makes a token; `None` = [`new_token`] (NIC e-invoice's alphanumeric shape).
    make_token: Option<fn() -> String>,
}

impl TokenBook {
    /// Answers a successful login: the current token if still valid, else a new one. `force`
    /// is honoured only when the current token is within `knobs.force_window` of expiry.
    pub fn login(
        &mut self,
        gstin: &str,
        username: &str,
        force: bool,
        knobs: &Knobs,
        now: DateTime<Utc>,
    ) -> (UserToken, Issue) {
        let key = (gstin.to_string(), username.to_string());
        let window =
            chrono::Duration::from_std(knobs.force_window).unwrap_or(chrono::Duration::MAX);
        let mut issue = Issue::New;
        if let Some(cur) = self.current.get(&key) {
            let valid = cur.expires_at > now && self.tokens.contains_key(&cur.token);
            if valid {
                if !(force && cur.expires_at - now <= window) {
                    return (cur.clone(), Issue::Reused);
                }
                issue = Issue::Forced;
                if knobs.force_refresh_revokes_old {
                    self.tokens.remove(&cur.token);
                }
            }
        }
        // Drop expired tokens whenever a token is issued: the live set is bounded by the number
        // of configured users times the tokens one user can hold within a TTL (plus the memory).
        let memory = self.expired_memory;
        self.tokens.retain(|_, g| {
            g.expires_at
                .checked_add_signed(memory)
                .unwrap_or(g.expires_at)
                > now
        });
        let ttl = capped(knobs.token_ttl);
        let session = UserToken {
            token: self.make_token.unwrap_or(new_token)(),
            sek: AesKey::random(),
            expires_at: now + ttl,
        };
        self.tokens.insert(
            session.token.clone(),
            TokenGrant {
                gstin: gstin.to_string(),
                username: username.to_string(),
                sek: session.sek.clone(),
                expires_at: session.expires_at,
            },
        );
        self.current.insert(key, session.clone());
        (session, issue)
    }

    /// A book that remembers expired tokens for `memory` after their expiry and make their
    /// tokens with `make_token`.
    pub fn with(memory: Duration, make_token: fn() -> String) -> Self {
        Self {
            expired_memory: capped(memory),
            make_token: Some(make_token),
            ..Self::default()
        }
    }

    /// The grant of a known token, expired or not (expired ones only within the memory).
    pub fn lookup(&self, token: &str) -> Option<&TokenGrant> {
        self.tokens.get(token)
    }

    /// The grant of a token that is known and unexpired.
    pub fn grant(&self, token: &str, now: DateTime<Utc>) -> Option<TokenGrant> {
        self.tokens
            .get(token)
            .filter(|g| g.expires_at > now)
            .cloned()
    }

    /// Invalidates every token of (GSTIN, username) at once, the current one and any older
    /// one still valid after a force refresh; returns how many were live.
    pub fn revoke(&mut self, gstin: &str, username: &str) -> usize {
        self.current
            .remove(&(gstin.to_string(), username.to_string()));
        let before = self.tokens.len();
        self.tokens
            .retain(|_, g| !(g.gstin == gstin && g.username == username));
        before - self.tokens.len()
    }
}

/// One session as `/_sim/sessions` shows it. This exposes live tokens and SEKs on purpose:
/// tests use them to prove that nothing else (logs, problem bodies) ever does.
#[derive(Clone, Debug, Serialize)]
pub struct SessionView {
    /// Which API the token is for: `einvoice`, `ewaybill` or `gstn`.
    pub api: &'static str,
    /// GSTIN.
    pub gstin: String,
    /// Username.
    pub username: String,
    /// The current AuthToken.
    pub token: String,
    /// The current SEK, base64.
    pub sek: String,
    /// Expiry of the current token, IST `yyyy-MM-dd HH:mm:ss`.
    pub token_expiry: String,
    /// The newest other token of this user that is still valid (after a force refresh).
    pub previous_token: Option<String>,
    /// GSTN only: when the portal session ends (IST); a new OTP is needed after it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_end: Option<String>,
}

impl TokenBook {
    /// Every session with a live current token, ordered by GSTIN and username.
    pub fn views(&self, api: &'static str, now: DateTime<Utc>) -> Vec<SessionView> {
        let mut out: Vec<SessionView> = self
            .current
            .iter()
            .filter(|(_, s)| s.expires_at > now && self.tokens.contains_key(&s.token))
            .map(|((gstin, username), s)| SessionView {
                api,
                gstin: gstin.clone(),
                username: username.clone(),
                token: s.token.clone(),
                sek: crate::crypto::b64_encode(s.sek.as_bytes()),
                token_expiry: to_ist(s.expires_at),
                previous_token: self
                    .tokens
                    .iter()
                    .filter(|(t, g)| {
                        **t != s.token
                            && g.expires_at > now
                            && &g.gstin == gstin
                            && &g.username == username
                    })
                    .max_by_key(|(_, g)| g.expires_at)
                    .map(|(t, _)| t.clone()),
                session_end: None,
            })
            .collect();
        out.sort_by(|a, b| (&a.gstin, &a.username).cmp(&(&b.gstin, &b.username)));
        out
    }
}

/// A random, unguessable AuthToken.
pub fn new_token() -> String {
    let mut rng = rand::rngs::OsRng;
    (0..TOKEN_LEN)
        .map(|_| char::from(Alphanumeric.sample(&mut rng)))
        .collect()
}

/// Whether a stored document is active or cancelled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DocStatus {
    /// Generated and not cancelled.
    Active,
    /// Cancelled, with the IST cancellation time.
    Cancelled(String),
}

/// A generated e-invoice, reduced to what later calls need (kept small: up to
/// [`MAX_DOCUMENTS`] of them live in memory).
#[derive(Clone, Debug)]
pub struct Document {
    /// The IRN (64 hex characters).
    pub irn: String,
    /// Acknowledgement number.
    pub ack_no: u64,
    /// Acknowledgement time, IST `yyyy-MM-dd HH:mm:ss`.
    pub ack_dt: String,
    /// Seller GSTIN (upper case).
    pub seller_gstin: String,
    /// Buyer GSTIN, when the invoice had one.
    pub buyer_gstin: Option<String>,
    /// Document type (`INV`, `CRN`, `DBN`).
    pub doc_type: String,
    /// Document number as sent.
    pub doc_no: String,
    /// Document date as sent (`dd/mm/yyyy`).
    pub doc_date: String,
    /// Total invoice value, when the invoice had one.
    pub total_value: Option<f64>,
    /// Active or cancelled.
    pub status: DocStatus,
    /// The portal that generated it: reads elsewhere need the `irp` header.
    pub irp: Portal,
    /// Generate calls processed for this document: the one that committed it and each
    /// repeat (2150, or the existing IRN under `allow_duplicate_irn`).
    pub generate_calls: u64,
    /// The e-way bill generated for it by IRN, if any.
    pub ewb: Option<IrnEwayBill>,
    /// Generate-EWB-by-IRN calls processed for it (4002 repeats included).
    pub ewb_generate_calls: u64,
}

/// An e-way bill generated by IRN (e-invoice API), kept with its document.
#[derive(Clone, Debug)]
pub struct IrnEwayBill {
    /// E-way bill number (12 digits).
    pub no: u64,
    /// Generation time, IST `yyyy-MM-dd HH:mm:ss`.
    pub date: String,
    /// End of validity, IST `yyyy-MM-dd HH:mm:ss`.
    pub valid_till: String,
}

/// One document as `/_sim/documents` lists it.
#[derive(Clone, Debug, Serialize)]
pub struct DocumentView {
    /// The IRN.
    pub irn: String,
    /// The portal that generated it (`NIC1`, …).
    pub irp: String,
    /// Generate calls processed for it.
    pub generate_calls: u64,
    /// `ACT` or `CNL`.
    pub status: &'static str,
    /// Document type.
    pub doc_type: String,
    /// Document number.
    pub doc_no: String,
    /// Document date.
    pub doc_date: String,
    /// Acknowledgement number.
    pub ack_no: u64,
    /// Its e-way bill number, when one was generated by IRN.
    pub ewb_no: Option<u64>,
    /// Generate-EWB-by-IRN calls processed for it.
    pub ewb_generate_calls: u64,
}

impl DocStatus {
    /// NIC's status code: `ACT` or `CNL`.
    pub fn code(&self) -> &'static str {
        match self {
            DocStatus::Active => "ACT",
            DocStatus::Cancelled(_) => "CNL",
        }
    }
}

/// Documents by IRN, bounded: the oldest are evicted first.
pub struct Documents {
    by_irn: HashMap<String, Document>,
    order: VecDeque<String>,
    next_ack_no: u64,
    next_ewb_no: u64,
    cap: usize,
}

impl Default for Documents {
    fn default() -> Self {
        Self::with_capacity(MAX_DOCUMENTS)
    }
}

impl Documents {
    /// An empty store holding at most `cap` documents.
    pub fn with_capacity(cap: usize) -> Self {
        Self {
            by_irn: HashMap::new(),
            order: VecDeque::new(),
            // NIC acknowledgement numbers are 15 digits; start in that range.
            next_ack_no: 112_010_000_000_001,
            // E-way bill numbers are 12 digits; these stay clear of the e-way bill API's.
            next_ewb_no: 151_000_000_001,
            cap: cap.max(1),
        }
    }

    /// The document with this IRN.
    pub fn get(&self, irn: &str) -> Option<&Document> {
        self.by_irn.get(irn)
    }

    /// The document with this IRN, to change.
    pub fn get_mut(&mut self, irn: &str) -> Option<&mut Document> {
        self.by_irn.get_mut(irn)
    }

    /// Allocates the next e-way bill number (generate EWB by IRN).
    pub fn next_ewb_no(&mut self) -> u64 {
        let n = self.next_ewb_no;
        self.next_ewb_no += 1;
        n
    }

    /// Forgets every document (numbering goes on).
    pub fn clear(&mut self) {
        self.by_irn.clear();
        self.order.clear();
    }

    /// Every document, oldest first, as `/_sim/documents` lists them.
    pub fn views(&self) -> Vec<DocumentView> {
        self.order
            .iter()
            .filter_map(|irn| self.by_irn.get(irn))
            .map(|d| DocumentView {
                irn: d.irn.clone(),
                irp: d.irp.name(),
                generate_calls: d.generate_calls,
                status: d.status.code(),
                doc_type: d.doc_type.clone(),
                doc_no: d.doc_no.clone(),
                doc_date: d.doc_date.clone(),
                ack_no: d.ack_no,
                ewb_no: d.ewb.as_ref().map(|e| e.no),
                ewb_generate_calls: d.ewb_generate_calls,
            })
            .collect()
    }

    /// Allocates the next acknowledgement number.
    pub fn next_ack_no(&mut self) -> u64 {
        let n = self.next_ack_no;
        self.next_ack_no += 1;
        n
    }

    /// Stores a document (replacing one with the same IRN), evicting the oldest beyond the cap.
    pub fn insert(&mut self, doc: Document) {
        if self.by_irn.insert(doc.irn.clone(), doc.clone()).is_none() {
            self.order.push_back(doc.irn);
        }
        while self.by_irn.len() > self.cap {
            match self.order.pop_front() {
                Some(old) => {
                    self.by_irn.remove(&old);
                }
                None => break,
            }
        }
    }

    /// Marks a document cancelled.
    pub fn cancel(&mut self, irn: &str, when: String) {
        if let Some(d) = self.by_irn.get_mut(irn) {
            d.status = DocStatus::Cancelled(when);
        }
    }
}

/// One set of counters (global, or for one GSTIN).
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CounterSet {
    /// Auth requests received, failed ones included.
    pub auth_calls: u64,
    /// Logins that issued a new token because of the force flag.
    pub force_refreshes: u64,
    /// Tokens issued (cold, after expiry or revocation, forced).
    pub new_tokens: u64,
    /// Token-class rejections of data calls served: e-invoice 1005, e-way bill 105/106/238,
    /// GSTN AUTH4033/AUTH4038.
    pub token_rejections: u64,
    /// Data calls received.
    pub requests: u64,
    /// GSTN OTPREQUEST calls answered with an OTP.
    pub otp_requests: u64,
    /// GSTN REFRESHTOKEN calls that issued a token (the portal e-mails the taxpayer each time).
    pub refreshes: u64,
    /// e-way bill logins refused with 118 because the user is blocked for logging in too often.
    pub blocked_logins: u64,
    /// Generate calls processed (IRN, EWB by IRN, e-way bill), whatever their answer.
    pub generates: u64,
}

/// What `/_sim/counters` reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Counters {
    /// Totals.
    #[serde(flatten)]
    pub total: CounterSet,
    /// The same per header GSTIN (requests without a `Gstin` header count only in the totals).
    pub per_gstin: BTreeMap<String, CounterSet>,
    /// Per portal that received the request (`NIC1`, …): `auth_calls`, `requests` and
    /// `generates` only.
    pub per_irp: BTreeMap<String, CounterSet>,
}

impl Counters {
    /// Applies `f` to the totals and to the GSTIN's set.
    pub fn bump(&mut self, gstin: Option<&str>, f: impl Fn(&mut CounterSet)) {
        f(&mut self.total);
        if let Some(g) = gstin {
            f(self.per_gstin.entry(g.to_string()).or_default());
        }
    }

    /// Applies `f` to the totals, the GSTIN's set and the set of the portal that received
    /// the request.
    pub fn bump_at(&mut self, portal: Portal, gstin: Option<&str>, f: impl Fn(&mut CounterSet)) {
        self.bump(gstin, &f);
        f(self.per_irp.entry(portal.name()).or_default());
    }
}

/// One received request, as `/_sim/requests` shows it.
#[derive(Clone, Debug, Serialize)]
pub struct LoggedRequest {
    /// When it arrived (UTC, RFC 3339).
    pub at: String,
    /// HTTP method.
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string, if any.
    pub query: Option<String>,
    /// Header name (lower case) → value; repeated headers are joined with ", ".
    pub headers: BTreeMap<String, String>,
    /// The body as text (lossy UTF-8), cut at [`LOGGED_BODY_MAX`] bytes.
    pub body: String,
    /// Whether the body was cut.
    pub body_truncated: bool,
    /// The e-invoice portal (listener) that received it: `NIC1`, `NIC2`, …
    pub irp: String,
}

/// The most recent requests, oldest first.
#[derive(Default)]
pub struct RequestLog(VecDeque<LoggedRequest>);

impl RequestLog {
    /// Appends, dropping the oldest beyond [`REQUEST_LOG_LEN`].
    pub fn push(&mut self, r: LoggedRequest) {
        if self.0.len() >= REQUEST_LOG_LEN {
            self.0.pop_front();
        }
        self.0.push_back(r);
    }

    /// The `limit` most recent, oldest first.
    pub fn recent(&self, limit: usize) -> Vec<LoggedRequest> {
        let skip = self.0.len().saturating_sub(limit);
        self.0.iter().skip(skip).cloned().collect()
    }
}

/// GSTINs whose every data call is answered 1005.
pub type RejectSet = HashSet<String>;

#[cfg(test)]
mod tests {
    use super::*;

    fn knobs(ttl: u64, window: u64) -> Knobs {
        Knobs {
            latency: Duration::ZERO,
            reply_latency: Duration::ZERO,
            token_ttl: Duration::from_secs(ttl),
            force_window: Duration::from_secs(window),
            error_http_status: 200,
            force_refresh_revokes_old: false,
            ewb_plain_errors: false,
            ewb_login_window: Duration::from_secs(900),
            tamper_hmac: false,
            fixed_otp: None,
            gstn_session_ttl: Duration::from_secs(3600),
            gstn_max_sessions: 3,
            stated_expiry_early: Duration::ZERO,
        }
    }

    #[test]
    fn force_is_honoured_only_inside_the_window_and_old_token_survives() {
        let mut s = TokenBook::default();
        let k = knobs(3600, 600);
        let t0 = Utc::now();
        let (a, i) = s.login("G", "u", false, &k, t0);
        assert_eq!(i, Issue::New);
        let (b, i) = s.login("G", "u", true, &k, t0 + chrono::Duration::seconds(60));
        assert_eq!(
            (i, &b.token, b.expires_at),
            (Issue::Reused, &a.token, a.expires_at)
        );
        let late = t0 + chrono::Duration::seconds(3100);
        let (c, i) = s.login("G", "u", true, &k, late);
        assert_eq!(i, Issue::Forced);
        assert_ne!(c.token, a.token);
        assert!(
            s.grant(&a.token, late).is_some(),
            "old token stays valid by default"
        );
        assert!(s
            .grant(&a.token, t0 + chrono::Duration::seconds(3601))
            .is_none());
    }

    #[test]
    fn revoke_invalidates_and_next_login_is_new() {
        let mut s = TokenBook::default();
        let k = knobs(3600, 600);
        let now = Utc::now();
        let (a, _) = s.login("G", "u", false, &k, now);
        assert_eq!(s.revoke("G", "u"), 1);
        assert!(s.grant(&a.token, now).is_none());
        let (b, i) = s.login("G", "u", false, &k, now);
        assert_eq!(i, Issue::New);
        assert_ne!(a.token, b.token);
    }

    #[test]
    fn documents_are_bounded_oldest_first() {
        let mut d = Documents::with_capacity(2);
        for n in 0..3 {
            let ack_no = d.next_ack_no();
            d.insert(Document {
                irn: format!("irn{n}"),
                ack_no,
                ack_dt: String::new(),
                seller_gstin: String::new(),
                buyer_gstin: None,
                doc_type: "INV".into(),
                doc_no: n.to_string(),
                doc_date: String::new(),
                total_value: None,
                status: DocStatus::Active,
                irp: Portal(1),
                generate_calls: 1,
                ewb: None,
                ewb_generate_calls: 0,
            });
        }
        assert!(d.get("irn0").is_none() && d.get("irn1").is_some() && d.get("irn2").is_some());
        assert_eq!(d.order.len(), 2);
    }
}
