//! The session gauges, `gstgate_sessions{upstream,state}`,
//! `gstgate_session_min_ttl_seconds{upstream}` and `gstgate_gstn_otp_due_seconds{upstream}`,
//! read from the session manager at scrape time.
//!
//! The OTP gauge is the shortest time to a portal session's end over an upstream's sessions,
//! not one series per GSTIN and user: no metric carries a GSTIN or username (cardinality and
//! privacy), and one alert on the minimum fires as soon as any session is due. Which taxpayer
//! is due is on `/status`, in `GET /admin/sessions` and in the `otp_needed_soon` webhook.

use std::sync::{Arc, Weak};

use prometheus_client::encoding::EncodeLabelSet;

use super::{Sessions, State};
use crate::metrics::{Name, UpstreamLabel};

/// `upstream` + `state`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    upstream: Name,
    state: &'static str,
}

/// Scrape-time collector of `gstgate_sessions` and `gstgate_session_min_ttl_seconds`: computed
/// from the slot table when Prometheus scrapes, so nothing is updated per request.
///
/// It holds the session manager weakly: the registry lives in the admin listener, and a
/// scrape after the manager is gone reports nothing rather than keeping it alive.
#[derive(Debug, Clone)]
pub struct SessionGauges {
    sessions: Weak<Sessions>,
}

impl SessionGauges {
    /// A collector for `sessions`, to register in the metrics registry.
    pub fn new(sessions: &Arc<Sessions>) -> Self {
        Self {
            sessions: Arc::downgrade(sessions),
        }
    }
}

impl prometheus_client::collector::Collector for SessionGauges {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::gauge::ConstGauge;
        use prometheus_client::metrics::MetricType;

        let Some(sessions) = self.sessions.upgrade() else {
            return Ok(());
        };
        let gauges = sessions.gauges();
        {
            let mut family = encoder.encode_descriptor(
                "gstgate_sessions",
                "Configured sessions by upstream and state",
                None,
                MetricType::Gauge,
            )?;
            for (upstream, counts, _) in &gauges {
                for (state, count) in State::ALL.iter().zip(counts) {
                    let labels = StateLabels {
                        upstream: upstream.clone().into(),
                        state: state.as_str(),
                    };
                    ConstGauge::new(*count as i64).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "gstgate_session_min_ttl_seconds",
            "Shortest time to expiry of any valid session (0 when none is valid)",
            None,
            MetricType::Gauge,
        )?;
        for (upstream, _, min_ttl) in &gauges {
            let labels = UpstreamLabel {
                upstream: upstream.clone().into(),
            };
            ConstGauge::new(min_ttl.unwrap_or(0.0)).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "gstgate_gstn_otp_due_seconds",
            "Shortest time until an open GSTN portal session ends and its taxpayer must give a new OTP (no series while none is open)",
            None,
            MetricType::Gauge,
        )?;
        for (upstream, due) in sessions.otp_due() {
            let labels = UpstreamLabel {
                upstream: upstream.into(),
            };
            ConstGauge::new(due).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl Sessions {
    /// Per upstream with an open portal session: the seconds until the first of them ends.
    pub fn otp_due(&self) -> Vec<(Arc<str>, f64)> {
        let wall = crate::clock::wall();
        let mut out: Vec<(Arc<str>, f64)> = Vec::new();
        for slot in &self.table().slots {
            let Some(ends) = slot.view().portal_ends_at() else {
                continue;
            };
            let due = ends.duration_since(wall).unwrap_or_default().as_secs_f64();
            match out.iter_mut().find(|(n, _)| *n == slot.upstream.name) {
                Some(entry) => entry.1 = entry.1.min(due),
                None => out.push((slot.upstream.name.clone(), due)),
            }
        }
        out
    }

    /// Per upstream: how many slots are in each state, and the shortest time to expiry of a
    /// valid session.
    pub fn gauges(&self) -> Vec<(Arc<str>, [u64; 6], Option<f64>)> {
        let now = crate::clock::now();
        let mut out: Vec<(Arc<str>, [u64; 6], Option<f64>)> = self
            .upstreams
            .iter()
            .map(|u| (u.name.clone(), [0; 6], None))
            .collect();
        for slot in &self.table().slots {
            let st = slot.view();
            let state = st.state(now, slot.otp_sessions());
            let Some(entry) = out.iter_mut().find(|(n, _, _)| *n == slot.upstream.name) else {
                continue;
            };
            if let Some(i) = State::ALL.iter().position(|s| *s == state) {
                entry.1[i] += 1;
            }
            if let Some(s) = st.session().filter(|s| s.usable(now)) {
                let ttl = s.deadline.saturating_duration_since(now).as_secs_f64();
                entry.2 = Some(entry.2.map_or(ttl, |m: f64| m.min(ttl)));
            }
        }
        out
    }
}
