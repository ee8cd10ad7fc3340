//! A gateway's Prometheus metrics, scraped from its admin listener.

use super::Gateway;

impl Gateway {
    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        self.http
            .get(format!("http://{}/metrics", self.admin))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The value of one metric series (0 when absent), e.g.
    /// `gstgate_auth_requests_total{upstream="einvoice",result="success"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_value(&self.metrics().await, series)
    }
}

/// One series' value from Prometheus text: 0 when the series has not been created yet, but a
/// panic when no metric family of that name exists at all, so a misspelt name cannot pass as
/// a zero.
pub fn metric_value(text: &str, series: &str) -> f64 {
    let name = series.split('{').next().unwrap_or(series);
    let family = ["_total", "_bucket", "_sum", "_count", "_created"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    assert!(
        text.lines().any(|l| {
            l.strip_prefix("# TYPE ")
                .and_then(|rest| rest.split_whitespace().next())
                .is_some_and(|n| n == family || n == name)
        }),
        "no metric family `{family}` is exported: is `{series}` misspelt?"
    );
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.split_whitespace().next().unwrap().parse().unwrap())
        .unwrap_or(0.0)
}
