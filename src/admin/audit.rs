//! The audit trail: one `admin action` line (target `gstgate::audit`) per admin action and
//! per refused token, with who asked, what and the outcome; a `SIGHUP` reload writes the same
//! line as `POST /admin/reload`, so the trail shows every configuration change.

use axum::extract::Request;
use axum::http::{Method, StatusCode};
use axum::response::Response;

use super::auth::{is_monitoring, needs_token};
use crate::problem::ErrorCode;
use crate::request::loggable_path;

/// What the audit trail records of an admin request: every action (a `POST`), and every
/// request to `/admin/*`, `/metrics` or `/status` that was refused for its token.
pub(super) struct Audit {
    method: Method,
    path: String,
    peer: Option<std::net::SocketAddr>,
}

impl Audit {
    /// The record to keep of `req`, if it is one the trail keeps.
    pub(super) fn of(req: &Request) -> Option<Self> {
        let path = req.uri().path();
        // Monitoring paths too: they take the admin token, so a guess there is one on it.
        (needs_token(path) || is_monitoring(path) || req.method() == Method::POST).then(|| Self {
            method: req.method().clone(),
            path: loggable_path(path).into_owned(),
            peer: req.extensions().get::<crate::request::Peer>().map(|p| p.0),
        })
    }

    /// One line per request, under the `gstgate::audit` target so it can be routed apart:
    /// who (address), what (method and path, escaped as the access log escapes it: the
    /// upstream and GSTIN acted on; an OTP is in the body and never logged), and the outcome.
    pub(super) fn log(self, request_id: &str, res: &Response) {
        let status = res.status();
        let code = res.extensions().get::<ErrorCode>().map(|c| c.0);
        let refused = status == StatusCode::UNAUTHORIZED;
        if !refused && self.method != Method::POST {
            return;
        }
        let outcome = if status.is_success() {
            "done"
        } else if refused {
            "refused"
        } else {
            "failed"
        };
        tracing::info!(target: "gstgate::audit", request_id, peer = self.peer.map(tracing::field::display),
            method = %self.method, path = %self.path, status = status.as_u16(), code, outcome,
            "admin action");
    }
}

/// The audit line of a reload asked for by `SIGHUP`: the line `POST /admin/reload` writes,
/// with `method = "SIGHUP"` and `peer = "signal"` (whoever could signal the process), so one
/// filter finds every reload however it was asked for.
pub fn log_signal_reload(refused: bool) {
    let (status, code, outcome) = if refused {
        (422u16, Some("config_invalid"), "failed")
    } else {
        (200, None, "done")
    };
    tracing::info!(target: "gstgate::audit", request_id = "-", peer = "signal",
        method = "SIGHUP", path = "/admin/reload", status, code, outcome, "admin action");
}
