//! What an alert says: its kind (with severity and remedy), whom it is about and what
//! happened.

use std::sync::Arc;
use std::time::SystemTime;

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// The upstream rejected the credentials; logins are stopped until an operator acts.
    CredentialsRejected,
    /// Logins for a session keep failing (upstream down, throttled, misconfigured).
    RefreshFailing,
    /// A GSTN session will need a new OTP within `otp_warning`.
    OtpNeededSoon,
    /// A GSTN session needs a new OTP now; its calls fail until one is given.
    OtpRequired,
}

impl AlertKind {
    /// Every kind.
    pub const ALL: [AlertKind; 4] = [
        AlertKind::CredentialsRejected,
        AlertKind::RefreshFailing,
        AlertKind::OtpNeededSoon,
        AlertKind::OtpRequired,
    ];

    /// The `alert` field and the `kind` metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::CredentialsRejected => "credentials_rejected",
            AlertKind::RefreshFailing => "refresh_failing",
            AlertKind::OtpNeededSoon => "otp_needed_soon",
            AlertKind::OtpRequired => "otp_required",
        }
    }

    /// `critical` when callers are (or will be at the next login) failing and only a person
    /// can fix it; `warning` when there is still time or gstgate is still retrying.
    pub fn severity(self) -> &'static str {
        match self {
            AlertKind::CredentialsRejected | AlertKind::OtpRequired => "critical",
            AlertKind::RefreshFailing | AlertKind::OtpNeededSoon => "warning",
        }
    }

    /// What the operator does, in one sentence, with the admin calls for `subject` written
    /// out so they can be pasted.
    pub fn remedy(self, subject: &Subject) -> String {
        let Subject {
            upstream,
            gstin,
            username,
        } = subject;
        let session = format!("/admin/sessions/{upstream}/{gstin}");
        let user = format!("?user={username}");
        match self {
            AlertKind::CredentialsRejected => format!(
                "Correct this user's API password in the gstgate configuration (or have the \
                 taxpayer re-create the API user on the portal) and reload it (SIGHUP or POST \
                 /admin/reload), then POST {session}/refresh{user} to confirm the login works."
            ),
            AlertKind::RefreshFailing => format!(
                "Check gstgate's logs and the GSP's status page for the login error; gstgate \
                 keeps retrying with backoff, and POST {session}/refresh{user} retries at once."
            ),
            AlertKind::OtpNeededSoon => format!(
                "Ask the taxpayer for an OTP before the deadline and submit it through POST \
                 {session}/otp-request{user} and POST {session}/otp{user}, so that calls do not \
                 stop in the middle of a filing."
            ),
            AlertKind::OtpRequired => format!(
                "Request an OTP with POST {session}/otp-request{user} and submit the \
                 taxpayer's OTP with POST {session}/otp{user}; this taxpayer's GSTN calls fail \
                 until then."
            ),
        }
    }
}

/// Whom an alert is about: one session slot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    /// Upstream name.
    pub upstream: Arc<str>,
    /// The taxpayer's GSTIN.
    pub gstin: String,
    /// The API user.
    pub username: Arc<str>,
}

/// What happened, in words an operator can act on.
#[derive(Debug, Clone, Default)]
pub struct Detail {
    /// One line: the error as `/admin/sessions` shows it, or a description.
    pub message: String,
    /// The upstream's error code, when it gave one.
    pub upstream_code: Option<String>,
    /// When it starts to hurt: the token's expiry, when a new OTP will be needed…
    pub deadline: Option<SystemTime>,
}
