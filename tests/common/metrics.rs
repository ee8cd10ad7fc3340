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

/// One series' value from Prometheus text, summed over the labels the series does not name
/// (`gstgate_requests_total{upstream="einvoice",status="2xx"}` counts every client and code):
/// 0 when no series matches yet, but a panic when no metric family of that name exists at
/// all, so a misspelt name cannot pass as a zero.
pub fn metric_value(text: &str, series: &str) -> f64 {
    let (name, wanted) = parse_series(series);
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
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, labels) = parse_series(series);
            (n == name && wanted.iter().all(|w| labels.contains(w)))
                .then(|| value.parse::<f64>().unwrap())
        })
        // An empty sum is -0.0; a missing series reads as 0.
        .sum::<f64>()
        + 0.0
}

/// A series' name and its `label="value"` pairs.
fn parse_series(series: &str) -> (&str, Vec<(String, String)>) {
    let Some((name, rest)) = series.split_once('{') else {
        return (series, Vec::new());
    };
    let body = rest.strip_suffix('}').unwrap_or(rest);
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(
            chars.next(),
            Some('"'),
            "a label value is quoted in {series}"
        );
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.extend(chars.next()),
                '"' => break,
                c => value.push(c),
            }
        }
        if chars.peek() == Some(&',') {
            chars.next();
        }
        labels.push((key.trim().to_owned(), value));
    }
    (name, labels)
}
