//! The sample requests in `examples/` work: every `curl … -d @examples/<file>` line of the
//! README is sent, as written (path, headers, body), through a real gateway in front of the
//! simulator, and succeeds; and every sample file is shown in the README.

mod common;

use common::*;
use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// A README `curl` line that sends a sample: its method, path, headers and sample file.
struct Sample {
    method: reqwest::Method,
    path: String,
    headers: Vec<(String, String)>,
    file: String,
}

fn readme_samples() -> Vec<Sample> {
    let readme = std::fs::read_to_string(format!("{ROOT}/README.md")).unwrap();
    let mut out = Vec::new();
    for line in readme.lines().filter(|l| l.contains("-d @examples/")) {
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .expect("the curl line has a URL");
        let path = url.splitn(4, '/').nth(3).map(|p| format!("/{p}")).unwrap();
        let headers = line
            .split("-H '")
            .skip(1)
            .filter_map(|h| h.split('\'').next()?.split_once(": "))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let file = line
            .split("-d @")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        let method = match line.split_once(" -X ") {
            Some((_, rest)) => rest.split_whitespace().next().unwrap().parse().unwrap(),
            None => reqwest::Method::POST,
        };
        out.push(Sample {
            method,
            path,
            headers,
            file,
        });
    }
    out
}

#[test]
fn every_sample_file_is_shown_in_the_readme() {
    let shown: Vec<String> = readme_samples().into_iter().map(|s| s.file).collect();
    for entry in std::fs::read_dir(format!("{ROOT}/examples")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") {
            assert!(
                shown.contains(&format!("examples/{name}")),
                "examples/{name} is in no README curl line"
            );
        }
    }
    assert!(shown.len() >= 3, "{shown:?}");
}

#[tokio::test]
async fn the_readme_sample_requests_succeed_through_a_gateway() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            apis: vec!["einvoice", "ewaybill", "gstn"],
            ..GwOpts::default()
        },
    )
    .await;
    // The GSTN sample needs a session, which starts with the taxpayer's OTP.
    gw.start_gstn_session(&sim, GSTIN).await;
    let samples = readme_samples();
    assert!(samples.len() >= 3, "one per API at least");
    for sample in samples {
        let body = std::fs::read(format!("{ROOT}/{}", sample.file)).unwrap();
        let mut req = gw
            .http
            .request(
                sample.method.clone(),
                format!("http://{}{}", gw.proxy, sample.path),
            )
            .body(body);
        for (k, v) in &sample.headers {
            // The demo's key is the demo's: this gateway has the test client's.
            let v = if k == "x-api-key" {
                API_KEY
            } else {
                v.as_str()
            };
            req = req.header(k.as_str(), v);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        let reply: Value = res.json().await.unwrap();
        assert_eq!(status, 200, "{}: {reply}", sample.file);
        let ok = reply["Status"] == 1
            || reply["status"] == "1"
            || reply["status"] == 1
            || reply["status_cd"] == "1";
        assert!(ok, "{}: {reply}", sample.file);
    }
}
