//! HTTP for set-up and checks (the load itself is wrk's): the login and verification requests,
//! and the upstream's and gstgate's counters read around every run.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde_json::Value;

use crate::targets::ADMIN_TOKEN;

pub(crate) struct Http {
    rt: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Http {
    pub(crate) fn new() -> Result<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()?;
        Ok(Http { rt, client })
    }

    pub(crate) fn post(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<(u16, Vec<u8>)> {
        let mut req = self.client.post(url).body(body);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        self.rt.block_on(async {
            let resp = req.send().await.with_context(|| format!("POST {url}"))?;
            let status = resp.status().as_u16();
            Ok((status, resp.bytes().await?.to_vec()))
        })
    }

    pub(crate) fn get(&self, url: &str) -> Result<(u16, Vec<u8>)> {
        self.rt.block_on(async {
            let resp = self
                .client
                .get(url)
                .bearer_auth(ADMIN_TOKEN)
                .send()
                .await
                .with_context(|| format!("GET {url}"))?;
            let status = resp.status().as_u16();
            Ok((status, resp.bytes().await?.to_vec()))
        })
    }
}

pub(crate) fn fetch_json(http: &Http, url: &str) -> Option<Value> {
    let (status, body) = http.get(url).ok()?;
    (status == 200)
        .then(|| serde_json::from_slice(&body).ok())
        .flatten()
}

/// gstgate's counters (`*_total`, `*_count`) from the Prometheus text at `{admin}/metrics`.
pub(crate) fn fetch_metrics(http: &Http, admin: &str) -> Option<BTreeMap<String, f64>> {
    let (status, body) = http.get(&format!("{admin}/metrics")).ok()?;
    if status != 200 {
        return None;
    }
    let mut out = BTreeMap::new();
    for line in String::from_utf8_lossy(&body).lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let base = name.split('{').next().unwrap_or(name);
        if base.ends_with("_total") || base.ends_with("_count") {
            if let Ok(v) = value.parse::<f64>() {
                out.insert(name.to_string(), v);
            }
        }
    }
    Some(out)
}

/// The sum of `gstgate_store_operations_total` over every op and result, from a
/// `fetch_metrics` reading (0 when no operation was counted yet: the family has no samples).
pub(crate) fn store_operations(metrics: &BTreeMap<String, f64>) -> f64 {
    metrics
        .iter()
        .filter(|(k, _)| k.split('{').next() == Some("gstgate_store_operations_total"))
        .map(|(_, v)| v)
        .sum()
}

/// Numeric leaves of a JSON document, keyed by their path (`a.b.c`).
pub(crate) fn flatten_json(v: &Value) -> BTreeMap<String, f64> {
    fn walk(prefix: &str, v: &Value, out: &mut BTreeMap<String, f64>) {
        match v {
            Value::Number(n) => {
                if let Some(f) = n.as_f64() {
                    out.insert(prefix.to_string(), f);
                }
            }
            Value::Object(m) => {
                for (k, x) in m {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&p, x, out);
                }
            }
            _ => {}
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}

/// Counters that changed between two readings.
pub(crate) fn delta(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    b.iter()
        .filter_map(|(k, v)| {
            let d = v - a.get(k).copied().unwrap_or(0.0);
            (d != 0.0).then(|| (k.clone(), d))
        })
        .collect()
}
