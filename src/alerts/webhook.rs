//! The webhook sender: the JSON body an alert becomes, a bounded queue, and one background
//! task that POSTs each alert, retrying with backoff.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::{AlertKind, AlertsError, Detail, Subject};
use crate::config::check_webhook_url;
use crate::metrics::{AlertLabels, Metrics};
use crate::timestamp::rfc3339;

/// How long shutdown waits for queued alerts before abandoning them: long enough for a healthy
/// webhook to take a few alerts, short enough that a stuck one cannot hold up a restart.
pub const SHUTDOWN_FLUSH: Duration = Duration::from_secs(2);

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
    remedy: String,
    at: String,
    gstgate: &'static str,
}

/// The webhook body of an alert raised `at`.
pub(super) fn body_json(
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
        remedy: kind.remedy(subject),
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

/// The sender task's handle; dropping it stops the task.
pub(super) struct Sender {
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

impl Sender {
    /// Checks the webhook URL, builds its client and spawns the task that delivers to it
    /// (which needs a Tokio runtime).
    pub(super) fn start(
        text: &str,
        policy: DeliveryPolicy,
        metrics: Arc<Metrics>,
    ) -> Result<Sender, AlertsError> {
        let url = check_webhook_url(text).map_err(AlertsError::WebhookUrl)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| AlertsError::NoRuntime)?;
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
            metrics,
        };
        let task = runtime.spawn(delivery.run(rx, stop_rx));
        Ok(Sender {
            queue,
            stop,
            task: Mutex::new(Some(task)),
        })
    }

    /// Queues an alert without waiting; the error says why it was dropped instead.
    pub(super) fn try_queue(&self, kind: AlertKind, body: String) -> Result<(), &'static str> {
        self.queue
            .try_send(Queued { kind, body })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => "the alert queue is full",
                mpsc::error::TrySendError::Closed(_) => "the alert sender has stopped",
            })
    }

    /// Stops taking alerts, waits up to [`SHUTDOWN_FLUSH`] for the queued ones, then stops the
    /// task.
    pub(super) async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
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
}

/// Counts one alert's outcome (`sent`, `failed` or `dropped`) in `gstgate_alerts_total`.
pub(super) fn count(metrics: &Metrics, kind: AlertKind, result: &'static str) {
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
