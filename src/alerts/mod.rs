//! Operator alerts (`[alerts]`, DESIGN.md §4): a JSON webhook when a credential is rejected,
//! when refreshing a session keeps failing, and when a GSTN session needs (or will soon need)
//! a new OTP — so that an ASP can ask the taxpayer for an OTP at a convenient time instead of
//! in the middle of a filing.
//!
//! * **Episodes.** An alert is about a (kind, upstream, GSTIN, user). [`Alerts::raise`] sends
//!   only when it opens an episode; [`Alerts::resolve`] closes it, so the next `raise` sends
//!   again. Whoever raises can do so on every observation without flooding the receiver.
//! * **Delivery never blocks the caller.** `raise` puts the alert on a bounded queue (dropping
//!   and counting it when the queue is full) and one background task POSTs it, retrying on a
//!   transport error or a non-2xx answer with exponential backoff and full jitter. Redirects
//!   are not followed: a webhook that moved is a configuration error, and following a redirect
//!   would send the alert somewhere nobody configured.
//! * **No secrets.** The body is built from [`Subject`] and [`Detail`] only, and neither has a
//!   field that could hold a token, SEK, password, client secret or API key. The webhook URL
//!   itself may carry a secret (Slack-style tokens in the path, `?token=` in the query,
//!   `user:password@`), so logs name only its scheme, host and port, and reqwest errors are
//!   stripped of the URL before they are logged.
//! * **Shutdown.** [`Alerts::shutdown`] gives queued alerts [`SHUTDOWN_FLUSH`] to go out, then
//!   abandons them; dropping the last handle stops the task at once.
//!
//! Where alerts come from is [`watcher`]: it reads the session manager's snapshot.

pub mod watcher;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::{check_otp_warning, check_webhook_url, AlertsConfig};
use crate::metrics::{AlertLabels, Metrics};

/// Warn this long before a GSTN session needs a new OTP unless configured: two days leave the
/// ASP a working day to reach the taxpayer.
pub const DEFAULT_OTP_WARNING: Duration = Duration::from_secs(48 * 60 * 60);
/// How long shutdown waits for queued alerts before abandoning them: long enough for a healthy
/// webhook to take a few alerts, short enough that a stuck one cannot hold up a restart.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

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

    /// What the operator does, in one sentence.
    pub fn remedy(self) -> &'static str {
        match self {
            AlertKind::CredentialsRejected => {
                "Correct this user's API password in the gstgate configuration (or have the \
                 taxpayer re-create the API user on the portal), restart gstgate, then POST \
                 /admin/sessions/{upstream}/{gstin}/refresh to confirm the login works."
            }
            AlertKind::RefreshFailing => {
                "Check gstgate's logs and the GSP's status page for the login error; gstgate \
                 keeps retrying with backoff, and POST /admin/sessions/{upstream}/{gstin}/refresh \
                 retries at once."
            }
            AlertKind::OtpNeededSoon => {
                "Ask the taxpayer for an OTP before the deadline and submit it through POST \
                 /admin/sessions/{upstream}/{gstin}/otp-request and /otp, so that calls do not \
                 stop in the middle of a filing."
            }
            AlertKind::OtpRequired => {
                "Request an OTP with POST /admin/sessions/{upstream}/{gstin}/otp-request and \
                 submit the taxpayer's OTP to /otp; this taxpayer's GSTN calls fail until then."
            }
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

/// How alerts are delivered. [`DeliveryPolicy::default`] is what `serve` uses; tests shorten
/// the backoff.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// Attempts per alert, the first included.
    pub attempts: u32,
    /// The backoff before the second attempt is up to this; it doubles per attempt.
    pub backoff_base: Duration,
    /// The backoff never exceeds this.
    pub backoff_cap: Duration,
    /// Time for one POST, connection included.
    pub timeout: Duration,
    /// Time to connect.
    pub connect_timeout: Duration,
    /// Alerts waiting to be sent; more are dropped and counted.
    pub queue: usize,
}

impl Default for DeliveryPolicy {
    /// Five attempts with backoff caps of 2, 4, 8 and 16 s: at most 30 s of waiting, enough
    /// to ride out a webhook receiver's restart.
    fn default() -> Self {
        Self {
            attempts: 5,
            backoff_base: Duration::from_secs(2),
            backoff_cap: Duration::from_secs(16),
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            queue: 256,
        }
    }
}

/// Why alerts could not be set up. Messages never contain the webhook URL.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    /// `webhook_url` is not an http(s) URL with a host.
    #[error("alerts.webhook_url: {0}")]
    WebhookUrl(String),
    /// `otp_warning` is too short.
    #[error("alerts.otp_warning: {0}")]
    OtpWarning(String),
    /// The HTTP client could not be built (TLS roots and the like).
    #[error("alerts: cannot build the webhook client: {0}")]
    Client(String),
    /// A webhook is configured but there is no Tokio runtime to run its sender on.
    #[error("alerts: the webhook sender needs a Tokio runtime")]
    NoRuntime,
}

/// The webhook URL as logs may show it: scheme, host and port only.
fn redacted(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("?");
    match url.port_or_known_default() {
        Some(port) => format!("{}://{host}:{port}", url.scheme()),
        None => format!("{}://{host}", url.scheme()),
    }
}

/// The webhook body (see `docs/operations.md`). Only these fields exist.
#[derive(Serialize)]
struct Body<'a> {
    alert: &'static str,
    severity: &'static str,
    upstream: &'a str,
    gstin: &'a str,
    username: &'a str,
    message: &'a str,
    upstream_code: Option<&'a str>,
    deadline: Option<String>,
    remedy: &'static str,
    at: String,
    gstgate: &'static str,
}

fn rfc3339(at: SystemTime) -> String {
    chrono::DateTime::<chrono::Utc>::from(at).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn body_json(
    kind: AlertKind,
    subject: &Subject,
    detail: &Detail,
    at: SystemTime,
) -> serde_json::Result<String> {
    serde_json::to_string(&Body {
        alert: kind.as_str(),
        severity: kind.severity(),
        upstream: &subject.upstream,
        gstin: &subject.gstin,
        username: &subject.username,
        message: &detail.message,
        upstream_code: detail.upstream_code.as_deref(),
        deadline: detail.deadline.map(rfc3339),
        remedy: kind.remedy(),
        at: rfc3339(at),
        gstgate: env!("CARGO_PKG_VERSION"),
    })
}

/// One alert on its way to the webhook: the body is fixed when raised, so `at` is the time of
/// the event, not of the delivery.
struct Queued {
    kind: AlertKind,
    body: String,
}

/// The alerts handle: episode tracking plus, when a webhook is configured, the sender task.
pub struct Alerts {
    otp_warning: Duration,
    check_interval: Duration,
    metrics: Arc<Metrics>,
    /// Open episodes. A std mutex: held for one set operation, never across an `.await`.
    open: Mutex<HashSet<(AlertKind, Subject)>>,
    /// `None` when no webhook is configured: alerts are then only logged.
    sender: Option<Sender>,
}

/// The sender task's handle; dropping it stops the task.
struct Sender {
    queue: mpsc::Sender<Queued>,
    stop: watch::Sender<bool>,
    /// Taken by `shutdown` (std mutex: taken once, never held across an `.await`).
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Sender {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

impl Alerts {
    /// Validates the configuration and, when a webhook is set, starts the sender task (which
    /// needs a Tokio runtime). Without a webhook the handle still tracks episodes and logs.
    pub fn new(cfg: &AlertsConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, AlertsError> {
        Self::with_policy(cfg, metrics, DeliveryPolicy::default())
    }

    /// [`Alerts::new`] with a chosen delivery policy.
    pub fn with_policy(
        cfg: &AlertsConfig,
        metrics: Arc<Metrics>,
        policy: DeliveryPolicy,
    ) -> Result<Arc<Self>, AlertsError> {
        let otp_warning = cfg.otp_warning.unwrap_or(DEFAULT_OTP_WARNING);
        check_otp_warning(otp_warning).map_err(AlertsError::OtpWarning)?;
        let sender = match &cfg.webhook_url {
            None => None,
            Some(text) => {
                let url = check_webhook_url(text).map_err(AlertsError::WebhookUrl)?;
                let runtime =
                    tokio::runtime::Handle::try_current().map_err(|_| AlertsError::NoRuntime)?;
                let client = reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .timeout(policy.timeout)
                    .connect_timeout(policy.connect_timeout)
                    .user_agent(concat!("gstgate/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| AlertsError::Client(e.without_url().to_string()))?;
                let (queue, rx) = mpsc::channel(policy.queue.max(1));
                let (stop, stop_rx) = watch::channel(false);
                let delivery = Delivery {
                    client,
                    shown: redacted(&url),
                    url,
                    policy,
                    metrics: metrics.clone(),
                };
                let task = runtime.spawn(delivery.run(rx, stop_rx));
                Some(Sender {
                    queue,
                    stop,
                    task: Mutex::new(Some(task)),
                })
            }
        };
        Ok(Arc::new(Self {
            otp_warning,
            check_interval: cfg.check_interval.unwrap_or(watcher::POLL_INTERVAL),
            metrics,
            open: Mutex::new(HashSet::new()),
            sender,
        }))
    }

    fn open(&self) -> MutexGuard<'_, HashSet<(AlertKind, Subject)>> {
        // The set is valid after any panic (one insert or remove): recover the guard.
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Raises an alert: sends it unless an episode of (kind, subject) is already open. Never
    /// blocks: a full queue drops the alert (counted, and the episode left closed so that a
    /// later `raise` tries again).
    pub fn raise(&self, kind: AlertKind, subject: &Subject, detail: Detail) {
        let key = (kind, subject.clone());
        if !self.open().insert(key.clone()) {
            return;
        }
        tracing::warn!(alert = kind.as_str(), upstream = %subject.upstream, gstin = %subject.gstin,
            user = %subject.username, message = %detail.message, "alert raised");
        let Some(sender) = &self.sender else {
            return;
        };
        let body = match body_json(kind, subject, &detail, SystemTime::now()) {
            Ok(body) => body,
            Err(e) => {
                // Unreachable with this body type (no maps, no non-string keys); count it
                // rather than panic.
                tracing::error!(alert = kind.as_str(), error = %e, "alert body not encodable");
                self.count(kind, "failed");
                return;
            }
        };
        if let Err(e) = sender.queue.try_send(Queued { kind, body }) {
            self.open().remove(&key);
            self.count(kind, "dropped");
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "the alert queue is full",
                mpsc::error::TrySendError::Closed(_) => "the alert sender has stopped",
            };
            tracing::warn!(alert = kind.as_str(), upstream = %subject.upstream,
                gstin = %subject.gstin, "alert dropped: {why}");
        }
    }

    /// Closes the episode of (kind, subject), if open, so that the next `raise` sends again.
    pub fn resolve(&self, kind: AlertKind, subject: &Subject) {
        if self.open().remove(&(kind, subject.clone())) {
            tracing::info!(alert = kind.as_str(), upstream = %subject.upstream,
                gstin = %subject.gstin, user = %subject.username, "alert resolved");
        }
    }

    /// Whether an episode of (kind, subject) is open.
    pub fn is_open(&self, kind: AlertKind, subject: &Subject) -> bool {
        self.open().contains(&(kind, subject.clone()))
    }

    /// How long before a GSTN session needs a new OTP to warn (default 48 h).
    pub fn otp_warning(&self) -> Duration {
        self.otp_warning
    }

    /// How often the watcher checks session states (`[alerts] check_interval`, default 15 s).
    pub fn check_interval(&self) -> Duration {
        self.check_interval
    }

    /// Whether alerts go to a webhook (otherwise they are only logged).
    pub fn has_webhook(&self) -> bool {
        self.sender.is_some()
    }

    /// Stops taking alerts, gives the queued ones up to [`SHUTDOWN_FLUSH`] to go out (one
    /// attempt each, no backoff), then stops the sender. Idempotent.
    pub async fn shutdown(&self) {
        let Some(sender) = &self.sender else {
            return;
        };
        let _ = sender.stop.send(true);
        let task = sender.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut task) = task {
            if tokio::time::timeout(SHUTDOWN_FLUSH, &mut task)
                .await
                .is_err()
            {
                task.abort();
                tracing::warn!(
                    "alerts not delivered within the shutdown flush time were abandoned"
                );
            }
        }
    }

    fn count(&self, kind: AlertKind, result: &'static str) {
        count(&self.metrics, kind, result);
    }
}

fn count(metrics: &Metrics, kind: AlertKind, result: &'static str) {
    metrics
        .alerts
        .get_or_create(&AlertLabels {
            kind: kind.as_str(),
            result,
        })
        .inc();
}

/// The full-jitter backoff before attempt `attempt + 1`: uniform in
/// `[0, min(cap, base · 2^(attempt-1))]`, so that many gateways retrying one receiver spread out.
fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let ceiling = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(cap);
    ceiling.mul_f64(rand::random::<f64>())
}

/// The sender task's state.
struct Delivery {
    client: reqwest::Client,
    url: reqwest::Url,
    /// The URL as logs show it.
    shown: String,
    policy: DeliveryPolicy,
    metrics: Arc<Metrics>,
}

impl Delivery {
    /// Sends queued alerts one at a time until stopped; once stopped, drains the queue with
    /// one attempt per alert (shutdown bounds the whole drain).
    async fn run(self, mut queue: mpsc::Receiver<Queued>, mut stop: watch::Receiver<bool>) {
        let mut stopping = false;
        loop {
            let next = if stopping {
                queue.recv().await
            } else {
                tokio::select! {
                    next = queue.recv() => next,
                    _ = stop.changed() => {
                        stopping = true;
                        // Refuses new alerts but keeps the queued ones for the drain.
                        queue.close();
                        continue;
                    }
                }
            };
            let Some(item) = next else {
                break;
            };
            let result = if self.deliver(&item, &mut stop).await {
                "sent"
            } else {
                "failed"
            };
            count(&self.metrics, item.kind, result);
        }
    }

    /// Tries one alert up to `attempts` times; true when the webhook accepted it.
    async fn deliver(&self, item: &Queued, stop: &mut watch::Receiver<bool>) -> bool {
        for attempt in 1..=self.policy.attempts.max(1) {
            let why = match self.attempt(item).await {
                Ok(()) => return true,
                Err(why) => why,
            };
            let last = attempt >= self.policy.attempts || *stop.borrow();
            tracing::warn!(alert = item.kind.as_str(), webhook = %self.shown, attempt,
                error = %why, will_retry = !last, "webhook delivery failed");
            if last {
                return false;
            }
            let delay = backoff(attempt, self.policy.backoff_base, self.policy.backoff_cap);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                // Shutting down: no more backoff, shutdown's drain gets one more attempt.
                _ = stop.changed() => return false,
            }
        }
        false
    }

    async fn attempt(&self, item: &Queued) -> Result<(), String> {
        let res = self
            .client
            .post(self.url.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(item.body.clone())
            .send()
            .await
            .map_err(describe)?;
        let status = res.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("answered HTTP {}", status.as_u16()))
        }
    }
}

/// A transport error as logs may show it: reqwest's message names the URL, which may hold the
/// webhook's secret, so it is removed; the causes (connect refused, timeout…) are kept.
fn describe(e: reqwest::Error) -> String {
    let e = e.without_url();
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else {
        "transport"
    };
    let mut text = format!("{kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subject() -> Subject {
        Subject {
            upstream: "einvoice".into(),
            gstin: "27AAPFU0939F1ZV".into(),
            username: "api_user".into(),
        }
    }

    fn no_webhook() -> Arc<Alerts> {
        let (metrics, _) = Metrics::new();
        Alerts::new(&AlertsConfig::default(), metrics).unwrap()
    }

    #[test]
    fn without_a_webhook_episodes_are_still_tracked() {
        let alerts = no_webhook();
        assert!(!alerts.has_webhook());
        assert_eq!(alerts.otp_warning(), DEFAULT_OTP_WARNING);
        let s = subject();
        alerts.raise(AlertKind::RefreshFailing, &s, Detail::default());
        assert!(alerts.is_open(AlertKind::RefreshFailing, &s));
        assert!(!alerts.is_open(AlertKind::CredentialsRejected, &s));
        alerts.resolve(AlertKind::RefreshFailing, &s);
        assert!(!alerts.is_open(AlertKind::RefreshFailing, &s));
    }

    #[test]
    fn webhook_urls_must_be_http_and_errors_do_not_repeat_them() {
        assert!(check_webhook_url("https://ops.example.com/hook?token=x").is_ok());
        assert!(check_webhook_url("http://127.0.0.1:9/h").is_ok());
        for bad in [
            "ftp://h/x-SECRET",
            "not a url SECRET",
            "http://:SECRET@",
            "file:///SECRET",
            "mailto:SECRET@x.org",
        ] {
            let err = check_webhook_url(bad).unwrap_err();
            assert!(!err.contains("SECRET"), "{bad}: {err}");
        }
    }

    #[test]
    fn otp_warning_below_a_minute_is_refused() {
        assert!(check_otp_warning(Duration::from_secs(59)).is_err());
        assert!(check_otp_warning(crate::config::MIN_OTP_WARNING).is_ok());
        let (metrics, _) = Metrics::new();
        let cfg = AlertsConfig {
            check_interval: None,
            webhook_url: None,
            otp_warning: Some(Duration::from_secs(48)),
        };
        assert!(matches!(
            Alerts::new(&cfg, metrics),
            Err(AlertsError::OtpWarning(_))
        ));
    }

    #[test]
    fn a_webhook_without_a_runtime_is_an_error_not_a_panic() {
        let (metrics, _) = Metrics::new();
        let cfg = AlertsConfig {
            check_interval: None,
            webhook_url: Some("http://127.0.0.1:9/h".into()),
            otp_warning: None,
        };
        assert!(matches!(
            Alerts::new(&cfg, metrics),
            Err(AlertsError::NoRuntime)
        ));
    }

    #[test]
    fn logs_show_the_webhook_without_credentials_path_or_query() {
        let url =
            reqwest::Url::parse("https://u:PASS@hooks.example.com/services/SECRET?t=Q").unwrap();
        assert_eq!(redacted(&url), "https://hooks.example.com:443");
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_cap() {
        let base = Duration::from_secs(2);
        let cap = Duration::from_secs(16);
        for attempt in 1..=6 {
            let ceiling = (base * 2u32.pow(attempt - 1)).min(cap);
            for _ in 0..50 {
                assert!(backoff(attempt, base, cap) <= ceiling);
            }
        }
    }
}
