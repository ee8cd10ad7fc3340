//! Prometheus metrics: names and labels are a contract with dashboards and alerts, fixed across releases.
//!
//! Counters and histograms are updated on the request path; the two session gauges are
//! computed when scraped, from the session manager's own state, so they can never drift from
//! it. No metric carries a GSTIN or username label (cardinality and privacy).
//!
//! Besides the contract: `gstgate_build_info{version}` and the standard `process_*` metrics
//! ([`process`]), so that dashboards can tell versions apart during a rollout and see memory
//! and file descriptors; with `serve --heap-metric`, `gstgate_heap_allocated_bytes`.

pub mod process;

use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Latency buckets in seconds: a proxy hop is sub-millisecond, NIC answers in 0.1–3 s, and
/// timeouts sit at 30–60 s.
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// A label value shared cheaply between label sets (an upstream name).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct Name(pub Arc<str>);

impl From<Arc<str>> for Name {
    fn from(s: Arc<str>) -> Self {
        Self(s)
    }
}

impl prometheus_client::encoding::EncodeLabelValue for Name {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        std::fmt::Write::write_str(encoder, &self.0)
    }
}

/// `upstream` + `status` class + `client` + problem `code`.
///
/// `client` and `code` were added to the contract's `gstgate_requests_total{upstream,status}`
/// (a sum over them gives the old series): both are bounded, `client` by the configured
/// clients (`none` before a caller is identified) and `code` by gstgate's problem codes
/// (`none` for an answer that is not a gateway problem, such as a relayed upstream reply).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// Upstream name (`none` when no route matched).
    pub upstream: Name,
    /// `2xx`, `4xx`…
    pub status: &'static str,
    /// The caller's client name, `none` when none was identified.
    pub client: Name,
    /// The problem code of the answer, `none` when it is not a gateway problem.
    pub code: &'static str,
}

/// `upstream` + `class` + upstream error `code` of a reply that was not a success.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamErrorLabels {
    /// Upstream name.
    pub upstream: Name,
    /// What gstgate made of the reply (`token_rejected`, `business`, …).
    pub class: &'static str,
    /// The upstream's code when its profile classifies it, else `other`: the set of codes an
    /// upstream can send is open, and a label must not be.
    pub code: Name,
}

/// `upstream` only.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabel {
    /// Upstream name.
    pub upstream: Name,
}

/// `upstream` + `result`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    /// Upstream name.
    pub upstream: Name,
    /// Outcome.
    pub result: &'static str,
}

/// `upstream` + `outcome`: how a generate was answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// Upstream name.
    pub upstream: Name,
    /// `direct`, `recovered`, `existing`, `replayed` or `unknown`.
    pub outcome: &'static str,
}

/// `upstream` + `trigger`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    /// Upstream name.
    pub upstream: Name,
    /// Why the token was (re)fetched.
    pub trigger: &'static str,
}

/// `upstream` + `target` (an IRP's `irp` name, or `default`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TargetLabels {
    /// Upstream name.
    pub upstream: Name,
    /// The target's `irp` name, `default` for an upstream's only `base_url`.
    pub target: Name,
}

/// `kind` + `result` of an operator alert (not a contract metric: see `alerts`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AlertLabels {
    /// `credentials_rejected`, `refresh_failing`, `otp_needed_soon`, `otp_required`.
    pub kind: &'static str,
    /// `sent`, `failed` (given up after retries) or `dropped` (queue full).
    pub result: &'static str,
}

/// Labels of the drop-in sessions gauge.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropinLabels {
    /// The upstream.
    pub upstream: Name,
    /// The client's name.
    pub client: Name,
}

/// `op` + `result` of a session store operation.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    /// `load` (records read at start-up or after Redis came back), `write`, `delete`, and for
    /// the shared store `get` (one record read afresh), `lease` and `publish`.
    pub op: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Every metric gstgate exports.
pub struct Metrics {
    /// `gstgate_requests_total`.
    pub requests: Family<RequestLabels, Counter>,
    /// `gstgate_request_duration_seconds`.
    pub request_duration: Family<UpstreamLabel, Histogram>,
    /// `gstgate_upstream_request_duration_seconds`.
    pub upstream_duration: Family<UpstreamLabel, Histogram>,
    /// `gstgate_auth_requests_total`.
    pub auth_requests: Family<ResultLabels, Counter>,
    /// `gstgate_token_refreshes_total`.
    pub token_refreshes: Family<TriggerLabels, Counter>,
    /// `gstgate_token_rejected_retries_total`.
    pub rejected_retries: Family<ResultLabels, Counter>,
    /// `gstgate_upstream_errors_total`.
    pub upstream_errors: Family<UpstreamErrorLabels, Counter>,
    /// `gstgate_inflight_requests`.
    pub inflight: Gauge<i64, AtomicI64>,
    /// `gstgate_alerts_total` (not part of the fixed metric contract).
    pub alerts: Family<AlertLabels, Counter>,
    /// `gstgate_store_operations_total`.
    pub store_operations: Family<StoreLabels, Counter>,
    /// `gstgate_store_pending_writes`.
    pub store_pending: Gauge<i64, AtomicI64>,
    /// `gstgate_store_up`.
    pub store_up: Gauge<i64, AtomicI64>,
    /// Live drop-in sessions, by upstream and client.
    pub dropin_sessions: Family<DropinLabels, Gauge<i64, AtomicI64>>,
    /// Drop-in logins answered, by upstream and result.
    pub dropin_logins: Family<ResultLabels, Counter>,
    /// `gstgate_logins_waiting`: logins waiting for the upstream's pacer.
    pub logins_waiting: Family<UpstreamLabel, Gauge<i64, AtomicI64>>,
    /// `gstgate_late_refreshes_total`: proactive refreshes that started after expiry.
    pub late_refreshes: Family<UpstreamLabel, Counter>,
    /// `gstgate_generate_outcomes_total`: how generates were answered, by upstream.
    pub generate_outcomes: Family<OutcomeLabels, Counter>,
    /// `gstgate_upstream_up`: 1 while a target's circuit is closed.
    pub upstream_up: Family<TargetLabels, Gauge<i64, AtomicI64>>,
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

impl Metrics {
    /// Creates the metrics and registers them in a new registry. The session gauges are
    /// registered by whoever builds the session manager (`session::gauges`), which needs these
    /// metrics first.
    pub fn new() -> (Arc<Self>, Registry) {
        let m = Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            upstream_duration: Family::new_with_constructor(latency_histogram),
            auth_requests: Family::default(),
            token_refreshes: Family::default(),
            rejected_retries: Family::default(),
            upstream_errors: Family::default(),
            inflight: Gauge::default(),
            alerts: Family::default(),
            store_operations: Family::default(),
            store_pending: Gauge::default(),
            store_up: Gauge::default(),
            dropin_sessions: Family::default(),
            dropin_logins: Family::default(),
            logins_waiting: Family::default(),
            late_refreshes: Family::default(),
            generate_outcomes: Family::default(),
            upstream_up: Family::default(),
        };
        let mut r = Registry::default();
        r.register(
            "gstgate_requests",
            "Caller requests answered, by upstream, HTTP status class, client and problem code",
            m.requests.clone(),
        );
        r.register(
            "gstgate_request_duration_seconds",
            "Time from receiving a caller request to answering it",
            m.request_duration.clone(),
        );
        r.register(
            "gstgate_upstream_request_duration_seconds",
            "Time of each call to the upstream, logins included",
            m.upstream_duration.clone(),
        );
        r.register(
            "gstgate_auth_requests",
            "Login calls to the upstream, by result",
            m.auth_requests.clone(),
        );
        r.register(
            "gstgate_token_refreshes",
            "Sessions (re)established, by trigger",
            m.token_refreshes.clone(),
        );
        r.register(
            "gstgate_token_rejected_retries",
            "Requests replayed after the upstream rejected the token, by outcome",
            m.rejected_retries.clone(),
        );
        r.register(
            "gstgate_upstream_errors",
            "Upstream replies that were not a success, by class and upstream error code (`other` for codes the profile does not classify)",
            m.upstream_errors.clone(),
        );
        r.register(
            "gstgate_inflight_requests",
            "Caller requests being processed",
            m.inflight.clone(),
        );
        r.register(
            "gstgate_alerts",
            "Operator alerts by kind and delivery result",
            m.alerts.clone(),
        );
        r.register(
            "gstgate_store_operations",
            "Session store record loads, writes and deletes, by result",
            m.store_operations.clone(),
        );
        r.register(
            "gstgate_store_pending_writes",
            "Slot changes queued for the session store and not yet committed",
            m.store_pending.clone(),
        );
        r.register(
            "gstgate_store_up",
            "1 while the session store answers (always for the embedded and memory stores), 0 while the shared store is unreachable",
            m.store_up.clone(),
        );
        r.register(
            "gstgate_dropin_sessions",
            "Live drop-in sessions gstgate issued to unmodified NIC/GSTN clients, by upstream and client",
            m.dropin_sessions.clone(),
        );
        r.register(
            "gstgate_dropin_logins",
            "Drop-in logins to gstgate's auth path, by upstream and result",
            m.dropin_logins.clone(),
        );
        r.register(
            "gstgate_logins_waiting",
            "Logins waiting for the upstream's max_concurrent_logins or logins_per_second, by upstream",
            m.logins_waiting.clone(),
        );
        r.register(
            "gstgate_late_refreshes",
            "Proactive refreshes that started after their session expired because logins were paced, by upstream",
            m.late_refreshes.clone(),
        );
        r.register(
            "gstgate_generate_outcomes",
            "Generate requests answered, by upstream and outcome (direct, recovered, existing, replayed, unknown)",
            m.generate_outcomes.clone(),
        );
        r.register(
            "gstgate_upstream_up",
            "1 while the target's circuit breaker is closed (requests go to it), 0 while it is open or probing, by upstream and target",
            m.upstream_up.clone(),
        );
        r.register(
            "gstgate_build",
            "The running gstgate's version",
            prometheus_client::metrics::info::Info::new(vec![(
                "version",
                env!("CARGO_PKG_VERSION"),
            )]),
        );
        r.register_collector(Box::new(process::ProcessMetrics));
        (Arc::new(m), r)
    }
}

/// The status class label of an HTTP status.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// How a generate's caller got its answer: the `outcome` label of
/// `gstgate_generate_outcomes_total`, the whole set in one place.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum GenerateOutcome {
    /// The generate's own reply, or an error that says what became of it.
    Direct,
    /// The document the generate created, found after its outcome was unknown.
    Recovered,
    /// The document that existed before, fetched for a duplicate (`return_existing`).
    Existing,
    /// A stored answer to an earlier request with the same `Idempotency-Key`.
    Replayed,
    /// gstgate could not tell whether the document was created (`outcome_unknown`).
    Unknown,
}

impl GenerateOutcome {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Recovered => "recovered",
            Self::Existing => "existing",
            Self::Replayed => "replayed",
            Self::Unknown => "unknown",
        }
    }
}

impl Metrics {
    /// Counts a generate's outcome.
    pub fn count_generate(&self, upstream: &Arc<str>, outcome: GenerateOutcome) {
        self.generate_outcomes
            .get_or_create(&OutcomeLabels {
                upstream: upstream.clone().into(),
                outcome: outcome.label(),
            })
            .inc();
    }
}

/// Renders a registry as Prometheus text.
pub fn render(registry: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry)?;
    Ok(out)
}
