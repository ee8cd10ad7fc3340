//! Fault injection: make the next requests fail the way real GSPs and networks fail, so tests
//! can prove the gateway survives them.
//!
//! One fault rule is active at a time (`POST /_sim/faults` replaces it, `DELETE` clears it). A
//! rule matches non-control requests whose path starts with its prefix (all of them when the
//! prefix is null), login included, and is used up after `count` matches (never, when null).
//! With a `probability` below 1 a matching request is faulted only that often, and only
//! faulted requests use up the count.
//! `slow` and `hop_header` are the odd ones out: the request is answered normally, `slow`
//! only `delay_ms` late, `hop_header` with a header its `Connection` header marks hop-by-hop.
//!
//! Whether the request is processed is the point of some modes: `hang` and `reset` fail it
//! before the simulator looks at it (the network lost it), `commit_drop` processes it — a
//! generate commits its document — and then loses the reply (see `server.rs`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Notify;

use super::clock::ist_now;
use super::Api;

/// A `slow` rule's delay when it names none.
const DEFAULT_SLOW_MS: u64 = 1000;

/// How a faulted request fails.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FaultMode {
    /// HTTP 500 with an HTML error page, as a load balancer in front of a GSP sends.
    #[serde(rename = "status_500", alias = "status500")]
    Status500,
    /// HTTP 503 with an HTML error page.
    #[serde(rename = "status_503", alias = "status503")]
    Status503,
    /// The connection is closed without any response.
    Reset,
    /// The request is processed as without a fault (a generate commits its document), then
    /// the connection is closed without any response: the reply lost after the commit.
    CommitDrop,
    /// HTTP 200 whose body is not JSON.
    Garbage,
    /// HTTP 200 success envelope of the path's API whose encrypted fields (`Data`, `Sek`;
    /// e-way bill `data`/`sek`; GSTN `rek`/`data`/`sek`) are base64 that decrypts under no key.
    Undecryptable,
    /// No answer at all, until the client gives up (or the simulator stops).
    Hang,
    /// The normal answer, `delay_ms` late: a slow GSP, for a login that outlasts its caller.
    Slow,
    /// The normal answer with `Connection: x-leak` and an `x-leak` header: a field meant for
    /// the hop between the GSP and gstgate only, which must not reach the caller.
    HopHeader,
    /// HTTP 200 refusal envelope of the path's API with a configuration error code (its
    /// client id refused: the one class whose message gstgate keeps as the slot's last error)
    /// and a hostile message: CR/LF and a forged log line, ANSI escapes, a bidi override, a
    /// line separator, and 8 MiB of padding.
    HostileError,
}

/// The start of a `hostile_error` message, before its padding.
pub const HOSTILE_MESSAGE: &str =
    "bad\r\nlevel=INFO forged=1\u{1b}[31m red \u{202e}desrever\u{2028}next line ";

/// The header a `hop_header` answer marks hop-by-hop.
pub const HOP_HEADER: &str = "x-leak";

/// The active fault rule.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct FaultRule {
    /// How matching requests fail.
    pub mode: FaultMode,
    /// How many matching requests fail; `None` = until cleared.
    #[serde(default)]
    pub count: Option<u64>,
    /// Only paths starting with this, as the client sends them (`--path-prefix` included);
    /// `None` = every non-control path.
    #[serde(default)]
    pub path_prefix: Option<String>,
    /// `slow`: how late the answer comes (default 1000 ms).
    #[serde(default)]
    pub delay_ms: Option<u64>,
    /// How often a matching request is faulted, 0.0 to 1.0; `None` = always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probability: Option<f64>,
}

impl FaultRule {
    /// Why the rule cannot be installed, if it cannot.
    pub fn invalid(&self) -> Option<String> {
        match self.probability {
            Some(p) if !(0.0..=1.0).contains(&p) => {
                Some(format!("probability {p} is not between 0.0 and 1.0"))
            }
            _ => None,
        }
    }
}

/// The slot holding the active rule.
#[derive(Default)]
pub struct Faults(Option<FaultRule>);

impl Faults {
    /// Installs a rule, replacing any previous one (a zero count installs nothing).
    pub fn set(&mut self, rule: FaultRule) {
        self.0 = (rule.count != Some(0)).then_some(rule);
    }

    /// Removes the rule.
    pub fn clear(&mut self) {
        self.0 = None;
    }

    /// The active rule, if any.
    pub fn active(&self) -> Option<&FaultRule> {
        self.0.as_ref()
    }

    /// If the rule matches `path` and the draw (uniform in 0..1) falls under its
    /// probability, uses up one count and returns its mode (and a `slow` rule's delay).
    pub fn take(&mut self, path: &str, draw: f64) -> Option<(FaultMode, Duration)> {
        let rule = self.0.as_mut()?;
        if let Some(prefix) = &rule.path_prefix {
            if !path.starts_with(prefix.as_str()) {
                return None;
            }
        }
        if draw >= rule.probability.unwrap_or(1.0) {
            return None;
        }
        let mode = rule.mode;
        let delay = Duration::from_millis(rule.delay_ms.unwrap_or(DEFAULT_SLOW_MS));
        if let Some(n) = rule.count.as_mut() {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.0 = None;
            }
        }
        Some((mode, delay))
    }
}

/// Lets a handler close its own connection: the connection task drops the connection when
/// notified (see `server.rs`). Inserted into every request's extensions.
#[derive(Clone)]
pub struct ConnKill(pub Arc<Notify>);

/// Produces the faulty reply. `Reset` and `Hang` never return: the first has the connection
/// dropped under it, the second waits until the connection goes away. `CommitDrop` is
/// answered by the intercept layer, after processing, with [`drop_connection`].
pub async fn respond(mode: FaultMode, api: Api, is_auth: bool, kill: Option<ConnKill>) -> Response {
    match mode {
        FaultMode::Status500 => html_error(StatusCode::INTERNAL_SERVER_ERROR),
        FaultMode::Status503 => html_error(StatusCode::SERVICE_UNAVAILABLE),
        FaultMode::Garbage => (
            StatusCode::OK,
            // A lying content type is the realistic case: a proxy's error page served as JSON.
            [(header::CONTENT_TYPE, "application/json")],
            Body::from(&b"\x1f\x8b<<sim garbage>> {\"Status\":1, not json"[..]),
        )
            .into_response(),
        FaultMode::Undecryptable => undecryptable(api, is_auth),
        FaultMode::Reset => drop_connection(kill).await,
        FaultMode::Hang => std::future::pending().await,
        FaultMode::HostileError => hostile_error(api),
        // The caller answers these itself: late, with the hop-by-hop header added, or
        // processed and then dropped.
        FaultMode::Slow | FaultMode::HopHeader | FaultMode::CommitDrop => {
            html_error(StatusCode::INTERNAL_SERVER_ERROR)
        }
    }
}

/// Closes the request's connection without a reply; never returns.
pub async fn drop_connection(kill: Option<ConnKill>) -> Response {
    if let Some(k) = kill {
        k.0.notify_one();
    }
    std::future::pending().await
}

/// Adds the `hop_header` fault's fields to a normal answer.
pub fn add_hop_header(res: &mut Response) {
    let headers = res.headers_mut();
    headers.insert(
        header::CONNECTION,
        header::HeaderValue::from_static(HOP_HEADER),
    );
    headers.insert(
        HOP_HEADER,
        header::HeaderValue::from_static("for-this-hop-only"),
    );
}

/// A refusal envelope of `api` with a configuration code and [`HOSTILE_MESSAGE`] padded to
/// 8 MiB.
fn hostile_error(api: Api) -> Response {
    let message = format!("{HOSTILE_MESSAGE}{}", "x".repeat(8 << 20));
    let body = match api {
        Api::EInvoice => json!({
            "Status": 0,
            "ErrorDetails": [{"ErrorCode": "1010", "ErrorMessage": message}],
            "Data": null,
            "InfoDtls": null,
        }),
        Api::EwayBill => json!({"status": "0", "error": {"errorCodes": "103"}, "message": message}),
        Api::Gstn => {
            json!({"status_cd": "0", "error": {"error_cd": "TEC4002", "message": message}})
        }
    };
    axum::Json(body).into_response()
}

/// A success envelope of `api` whose encrypted fields decrypt under no key.
fn undecryptable(api: Api, is_auth: bool) -> Response {
    let bad = undecryptable_b64();
    let body = match (api, is_auth) {
        (Api::EwayBill, true) => json!({
            "status": "1",
            "authtoken": "00000000-0000-0000-0000-000000000000",
            "sek": bad,
        }),
        (Api::EwayBill, false) => json!({"status": "1", "data": bad}),
        // A fault on GSTN's authenticate cannot know the action: the AUTHTOKEN shape it is.
        (Api::Gstn, true) => json!({
            "status_cd": "1",
            "auth_token": "00000000000000000000000000000000",
            "expiry": 360,
            "sek": bad,
        }),
        (Api::Gstn, false) => json!({
            "status_cd": "1",
            "rek": bad,
            "data": undecryptable_b64(),
            "hmac": undecryptable_b64(),
        }),
        (Api::EInvoice, _) => {
            let data = if is_auth {
                json!({
                    "ClientId": "sim",
                    "UserName": "sim",
                    "AuthToken": "SimFaultToken0000000000000",
                    "Sek": bad,
                    "TokenExpiry": ist_now(),
                })
            } else {
                json!(bad)
            };
            json!({"Status": 1, "Data": data, "ErrorDetails": null, "InfoDtls": null})
        }
    };
    axum::Json(body).into_response()
}

/// Base64 of 45 random bytes: not a multiple of the AES block size, so it fails to decrypt
/// under every key (random whole blocks would pass the padding check about 1 time in 256).
fn undecryptable_b64() -> String {
    let mut b = [0u8; 45];
    rand::rngs::OsRng.fill_bytes(&mut b);
    crate::crypto::b64_encode(&b)
}

fn html_error(status: StatusCode) -> Response {
    let reason = status.canonical_reason().unwrap_or("Error");
    let page = format!(
        "<html><head><title>{code} {reason}</title></head><body><center><h1>{code} {reason}</h1></center><hr><center>sim</center></body></html>\n",
        code = status.as_u16()
    );
    (status, [(header::CONTENT_TYPE, "text/html")], page).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counted_rule_is_used_up_and_prefix_filters() {
        let mut f = Faults::default();
        f.set(FaultRule {
            mode: FaultMode::Garbage,
            count: Some(2),
            path_prefix: Some("/eicore/".into()),
            delay_ms: None,
            probability: None,
        });
        let garbage = Some((FaultMode::Garbage, Duration::from_millis(DEFAULT_SLOW_MS)));
        assert_eq!(f.take("/eivital/v1.04/auth", 0.0), None);
        assert_eq!(f.take("/eicore/v1.03/Invoice", 0.0), garbage);
        assert_eq!(f.take("/eicore/v1.03/Invoice", 0.99), garbage);
        assert_eq!(f.take("/eicore/v1.03/Invoice", 0.0), None);
        assert!(f.active().is_none());
    }

    #[test]
    fn only_requests_drawn_under_the_probability_are_faulted_and_counted() {
        let mut f = Faults::default();
        f.set(FaultRule {
            mode: FaultMode::CommitDrop,
            count: Some(1),
            path_prefix: None,
            delay_ms: None,
            probability: Some(0.25),
        });
        assert_eq!(f.take("/eicore/v1.03/Invoice", 0.25), None);
        assert_eq!(f.take("/eicore/v1.03/Invoice", 0.9), None);
        assert!(
            f.active().is_some(),
            "a request not faulted uses up no count"
        );
        let hit = f.take("/eicore/v1.03/Invoice", 0.1);
        assert_eq!(hit.map(|(m, _)| m), Some(FaultMode::CommitDrop));
        assert!(f.active().is_none());
    }

    #[test]
    fn a_probability_outside_zero_to_one_is_refused() {
        let rule = |p| FaultRule {
            mode: FaultMode::Reset,
            count: None,
            path_prefix: None,
            delay_ms: None,
            probability: Some(p),
        };
        assert!(rule(1.5).invalid().is_some());
        assert!(rule(-0.1).invalid().is_some());
        assert!(rule(f64::NAN).invalid().is_some());
        assert!(rule(0.0).invalid().is_none() && rule(1.0).invalid().is_none());
    }

    #[test]
    fn undecryptable_data_never_decrypts() {
        let k = crate::crypto::AesKey::random();
        for _ in 0..50 {
            assert!(k.decrypt_b64(&undecryptable_b64()).is_err());
        }
    }
}
