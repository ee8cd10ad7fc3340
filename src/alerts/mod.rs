//! Operator alerts (`[alerts]`): a JSON webhook when a credential is rejected, when refreshing
//! a session keeps failing, and when a GSTN session needs (or will soon need) a new OTP — so
//! that an ASP can ask the taxpayer for an OTP at a convenient time instead of in the middle
//! of a filing.
//!
//! * **Episodes.** An alert is about a (kind, upstream, GSTIN, user). [`Alerts::raise`] sends
//!   only when it opens an episode; [`Alerts::resolve`] closes it, so the next `raise` sends
//!   again. Whoever raises can do so on every observation without flooding the receiver.
//!   With a store, open episodes are kept there ([`Alerts::attach_store`]): a restart does
//!   not send an open episode's alert again, and replicas sharing a Redis store send one
//!   alert per episode for the whole group (the replica that opens it in Redis sends it).
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
//! Where alerts come from is [`watcher`]: it reads the sessions that need attention. What an
//! alert says is in `model`, how it reaches the webhook in `webhook`; this file keeps the
//! episodes.

pub mod watcher;

mod model;
mod webhook;

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use crate::config::{check_otp_warning, AlertsConfig};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tasks::Tasks;

pub use model::{AlertKind, Detail, Subject};

/// An episode's name in the store. Upstream names and GSTINs hold no `:`, so it parses back
/// whatever the user name holds.
fn episode_key(kind: AlertKind, s: &Subject) -> String {
    format!(
        "{}:{}:{}:{}",
        kind.as_str(),
        s.upstream,
        s.gstin,
        s.username
    )
}

fn parse_episode(key: &str) -> Option<(AlertKind, Subject)> {
    let mut parts = key.splitn(4, ':');
    let kind = parts.next()?;
    let kind = AlertKind::ALL.into_iter().find(|k| k.as_str() == kind)?;
    let (upstream, gstin, username) = (parts.next()?, parts.next()?, parts.next()?);
    Some((
        kind,
        Subject {
            upstream: upstream.into(),
            gstin: gstin.to_owned(),
            username: username.into(),
        },
    ))
}
pub use webhook::{DeliveryPolicy, SHUTDOWN_FLUSH};

use webhook::{body_json, Sender};

/// Warn this long before a GSTN session needs a new OTP unless configured: two days leave the
/// ASP a working day to reach the taxpayer.
pub const DEFAULT_OTP_WARNING: Duration = Duration::from_secs(48 * 60 * 60);

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

/// The alerts handle: episode tracking plus, when a webhook is configured, the sender task.
pub struct Alerts {
    otp_warning: Duration,
    check_interval: Duration,
    metrics: Arc<Metrics>,
    /// Open episodes. A std mutex: held for one set operation, never across an `.await`.
    open: Mutex<HashSet<(AlertKind, Subject)>>,
    /// `None` when no webhook is configured: alerts are then only logged.
    sender: Option<Sender>,
    /// Where episodes are kept beyond this process, once attached, and the tasks that write
    /// them run on.
    store: OnceLock<(Arc<Store>, Tasks)>,
    /// This handle, for the tasks that record an episode before sending it.
    me: Weak<Alerts>,
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
            Some(text) => Some(Sender::start(text, policy, metrics.clone())?),
        };
        Ok(Arc::new_cyclic(|me| Self {
            otp_warning,
            check_interval: cfg.check_interval.unwrap_or(watcher::POLL_INTERVAL),
            metrics,
            open: Mutex::new(HashSet::new()),
            sender,
            store: OnceLock::new(),
            me: me.clone(),
        }))
    }

    /// Keeps episodes in `store` from now on, taking up the ones open there (after a restart,
    /// or opened by another replica) so that their alerts are not sent again. The writes run
    /// on `tasks`, so shutdown waits for them before the store's last flush.
    pub async fn attach_store(&self, store: Arc<Store>, tasks: Tasks) {
        let open: Vec<(AlertKind, Subject)> = store
            .episodes()
            .await
            .iter()
            .filter_map(|key| parse_episode(key))
            .collect();
        let n = open.len();
        self.open().extend(open);
        let _ = self.store.set((store, tasks));
        if n > 0 {
            tracing::info!(open = n, "alert episodes taken up from the store");
        }
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
        match (self.store.get(), self.me.upgrade()) {
            (Some((store, tasks)), Some(me)) => {
                let store = store.clone();
                tasks.spawn(async move {
                    let (kind, subject) = &key;
                    if store.set_episode(&episode_key(*kind, subject), true).await {
                        tracing::info!(alert = kind.as_str(), upstream = %subject.upstream,
                            gstin = %subject.gstin, user = %subject.username,
                            "alert episode opened in the store; sending it");
                        me.deliver(&key, &detail);
                    } else {
                        tracing::info!(alert = kind.as_str(), upstream = %subject.upstream,
                            gstin = %subject.gstin, user = %subject.username,
                            "alert episode already open in the store (sent before a restart, or by another replica)");
                    }
                });
            }
            _ => self.deliver(&key, &detail),
        }
    }

    /// Sends the alert of a newly opened episode.
    fn deliver(&self, key: &(AlertKind, Subject), detail: &Detail) {
        let (kind, subject) = (key.0, &key.1);
        let Some(sender) = &self.sender else {
            return;
        };
        let body = match body_json(kind, subject, detail, SystemTime::now()) {
            Ok(body) => body,
            Err(e) => {
                // Unreachable with this body type (no maps, no non-string keys); count it
                // rather than panic.
                tracing::error!(alert = kind.as_str(), error = %e, "alert body not encodable");
                self.count(kind, "failed");
                return;
            }
        };
        if let Err(why) = sender.try_queue(kind, body) {
            self.open().remove(key);
            self.close_stored(kind, subject);
            self.count(kind, "dropped");
            tracing::warn!(alert = kind.as_str(), upstream = %subject.upstream,
                gstin = %subject.gstin, "alert dropped: {why}");
        }
    }

    /// Closes the episode of (kind, subject), if open, so that the next `raise` sends again.
    pub fn resolve(&self, kind: AlertKind, subject: &Subject) {
        if self.open().remove(&(kind, subject.clone())) {
            tracing::info!(alert = kind.as_str(), upstream = %subject.upstream,
                gstin = %subject.gstin, user = %subject.username, "alert resolved");
            self.close_stored(kind, subject);
        }
    }

    /// Closes the episode in the store, if one is attached, without waiting for it.
    fn close_stored(&self, kind: AlertKind, subject: &Subject) {
        if let Some((store, tasks)) = self.store.get() {
            let (store, episode) = (store.clone(), episode_key(kind, subject));
            tasks.spawn(async move { store.set_episode(&episode, false).await });
        }
    }

    /// Closes every open episode whose subject is not in `present`: its credential was
    /// removed from the configuration, so nobody will resolve it otherwise.
    pub fn resolve_absent(&self, present: &HashSet<Subject>) {
        let gone: Vec<(AlertKind, Subject)> = self
            .open()
            .iter()
            .filter(|(_, s)| !present.contains(s))
            .cloned()
            .collect();
        for (kind, subject) in gone {
            self.resolve(kind, &subject);
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
        if let Some(sender) = &self.sender {
            sender.shutdown().await;
        }
    }

    fn count(&self, kind: AlertKind, result: &'static str) {
        webhook::count(&self.metrics, kind, result);
    }
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
}
