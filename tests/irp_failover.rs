//! Issue 18, IRP failover (acceptance 5): an e-invoice upstream with two IRPs as
//! `[[upstream.targets]]`, the real gateway binary in front of the real simulator, whose two
//! portals (`--irp-listen`) share one token store and answer 3098 for a bad `irp` header.

mod common;

use std::time::{Duration, Instant};

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

/// A loopback address nothing listens on: connections to it are refused.
fn refused_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}")
}

fn up(target: &str) -> String {
    format!("gstgate_upstream_up{{upstream=\"einvoice\",target=\"{target}\"}}")
}

/// The value of header `name` in one of the simulator's logged requests.
fn header<'a>(request: &'a Value, name: &str) -> Option<&'a str> {
    request["headers"]
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .and_then(|(_, v)| v.as_str())
}

#[tokio::test]
async fn an_irp_refusing_connections_costs_no_caller_an_error_and_metrics_status_and_admin_show_it_open(
) {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            targets: vec![(refused_url(), "NIC1"), (sim.url(), "NIC2")],
            upstream_extra: "breaker_failures = 3\nbreaker_cool_down = \"10m\"".into(),
            ..GwOpts::default()
        },
    )
    .await;
    assert_eq!(gw.metric(&up("NIC1")).await, 1.0, "closed before any call");

    for i in 0..10 {
        generate_ok(&gw, &format!("FO/{i}")).await;
    }
    // The login and the first generates each failed over at once; three refusals opened
    // NIC1's circuit, after which nothing more was tried there.
    assert_eq!(gw.metric(&up("NIC1")).await, 0.0);
    assert_eq!(gw.metric(&up("NIC2")).await, 1.0);
    assert_eq!(
        sim.count(GSTIN, "requests").await,
        10,
        "one upstream call each"
    );
    let status = gw
        .http
        .get(format!("http://{}/status", gw.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let targets: Value = gw
        .http
        .get(format!("http://{}/admin/upstreams", gw.admin))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        targets,
        json!({"targets": [
            {"upstream": "einvoice", "target": "NIC1", "state": "open"},
            {"upstream": "einvoice", "target": "NIC2", "state": "closed"},
        ]})
    );
    assert!(
        status.contains("<td>NIC1</td><td class=\"c-open\">open</td>")
            && status.contains("<td>NIC2</td><td class=\"c-closed\">closed</td>"),
        "{status}"
    );

    // The access log names the target that served each call.
    gw.logs.wait_for("\"target\":\"NIC2\"").await;
}

/// A simulator with two e-invoice portals, and a client that speaks to its control API
/// through a portal that is up.
struct Portals {
    sim: Sim,
    urls: Vec<String>,
    http: reqwest::Client,
}

impl Portals {
    async fn start() -> Self {
        let sim = Sim::start(SimOpts {
            extra: vec!["--irp-listen".into(), "127.0.0.1:0".into()],
            ..SimOpts::default()
        })
        .await;
        let urls = sim.irp_urls().await;
        assert_eq!(urls.len(), 2, "{urls:?}");
        Self {
            sim,
            urls,
            http: reqwest::Client::new(),
        }
    }

    fn targets(&self) -> Vec<(String, &'static str)> {
        vec![
            (self.urls[0].clone(), "NIC1"),
            (self.urls[1].clone(), "NIC2"),
        ]
    }

    /// A call to the control API through the first portal that is up, portal 2 first.
    async fn send(&self, req: impl Fn(&str) -> reqwest::RequestBuilder) -> reqwest::Response {
        for url in self.urls.iter().rev() {
            if let Ok(res) = req(url).send().await {
                return res;
            }
        }
        panic!("no portal is up")
    }

    /// A control call through portal `via` (1 or 2): a portal cannot be taken down through
    /// itself.
    async fn control(&self, via: usize, path: &str, body: Value) {
        let res = self
            .http
            .post(format!("{}{path}", self.urls[via - 1]))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
    }

    async fn get(&self, path: &str) -> Value {
        self.send(|url| self.http.get(format!("{url}{path}")))
            .await
            .json()
            .await
            .unwrap()
    }

    /// Generate calls each portal received: (NIC1, NIC2).
    async fn generates(&self) -> (u64, u64) {
        let c = self.get("/_sim/counters").await;
        let of = |irp: &str| c["per_irp"][irp]["generates"].as_u64().unwrap_or(0);
        (of("NIC1"), of("NIC2"))
    }

    /// Data calls portal `irp` received.
    async fn requests_on(&self, irp: &str) -> u64 {
        let c = self.get("/_sim/counters").await;
        c["per_irp"][irp]["requests"].as_u64().unwrap_or(0)
    }

    /// The IRNs the simulator holds, and how many generate calls created each.
    async fn irns(&self) -> Vec<(String, String, u64)> {
        let docs = self.get("/_sim/documents").await;
        docs["irns"]
            .as_array()
            .expect("irns")
            .iter()
            .map(|d| {
                (
                    d["irn"].as_str().unwrap().to_owned(),
                    d["irp"].as_str().unwrap().to_owned(),
                    d["generate_calls"].as_u64().unwrap(),
                )
            })
            .collect()
    }
}

/// Generates document `no` and returns its IRN; any other answer fails the test.
async fn generate_ok(gw: &Gateway, no: &str) -> String {
    let res = gw.generate(GSTIN, no).await;
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (status.as_u16(), &body["Status"]),
        (200, &json!(1)),
        "{no}: {body}"
    );
    body["Data"]["Irn"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn irp_1_refusing_then_hanging_sends_every_generate_to_irp_2_and_its_return_takes_traffic_back(
) {
    let irps = Portals::start().await;
    let cool_down = Duration::from_secs(6);
    let gw = Gateway::start(
        &irps.sim,
        GwOpts {
            targets: irps.targets(),
            timeout: "2s",
            upstream_extra: format!(
                "breaker_failures = 3\nbreaker_cool_down = \"{}s\"",
                cool_down.as_secs()
            ),
            ..GwOpts::default()
        },
    )
    .await;
    let mut irns = Vec::new();
    for i in 0..3 {
        irns.push(generate_ok(&gw, &format!("UP/{i}")).await);
    }
    assert_eq!(
        irps.generates().await,
        (3, 0),
        "the primary takes every call"
    );

    // Refused: every call that could not connect goes to IRP 2 at once; not one caller error.
    irps.control(2, "/_sim/irps/1/down", json!({"mode": "refuse"}))
        .await;
    let opened = Instant::now();
    for i in 0..10 {
        irns.push(generate_ok(&gw, &format!("REFUSED/{i}")).await);
    }
    assert_eq!(irps.generates().await, (3, 10));
    assert_eq!(
        gw.metric(&up("NIC1")).await,
        0.0,
        "three refusals opened it"
    );
    assert_eq!(gw.metric(&up("NIC2")).await, 1.0);

    // Then hanging: its circuit is open, so nothing is sent there to hang.
    irps.control(2, "/_sim/irps/1/down", json!({"mode": "hang"}))
        .await;
    for i in 0..5 {
        irns.push(generate_ok(&gw, &format!("HANG/{i}")).await);
    }
    assert!(
        opened.elapsed() < cool_down,
        "the hanging phase ended before the cool-down; make it longer on a slow machine"
    );
    assert_eq!(irps.generates().await, (3, 15));

    // Back: after the cool-down one call probes IRP 1, succeeds, and traffic returns.
    irps.control(2, "/_sim/irps/1/up", json!({})).await;
    let deadline = Instant::now() + cool_down + Duration::from_secs(20);
    let mut n = 0;
    while irps.generates().await.0 == 3 {
        assert!(Instant::now() < deadline, "IRP 1 never took traffic back");
        irns.push(generate_ok(&gw, &format!("BACK/{n}")).await);
        n += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(gw.metric(&up("NIC1")).await, 1.0, "the probe closed it");
    let before = irps.generates().await;
    for i in 0..3 {
        irns.push(generate_ok(&gw, &format!("AFTER/{i}")).await);
    }
    let after = irps.generates().await;
    assert_eq!((after.0 - before.0, after.1 - before.1), (3, 0));

    // Each document once, and every caller got its IRN.
    let held = irps.irns().await;
    assert_eq!(held.len(), irns.len(), "{held:?}");
    assert!(held.iter().all(|(_, _, calls)| *calls == 1), "{held:?}");

    // A read of a document IRP 2 generated goes to IRP 2 and names it.
    let (on_irp2, ..) = held
        .iter()
        .find(|(_, irp, _)| irp == "NIC2")
        .expect("IRP 2 generated some");
    let served = irps.requests_on("NIC2").await;
    let res = gw
        .request(Method::GET, &format!("/eicore/v1.03/Invoice/irn/{on_irp2}"))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["Status"], 1, "{body}");
    assert_eq!(body["Data"]["Irn"], on_irp2.as_str());
    assert_eq!(
        irps.requests_on("NIC2").await,
        served + 1,
        "its holder served it"
    );
    let logged = irps.sim.requests(5).await;
    let read = logged
        .iter()
        .rev()
        .find(|r| r["path"].as_str().is_some_and(|p| p.contains("/irn/")))
        .expect("the simulator saw the read");
    assert_eq!(header(read, "irp"), Some("NIC2"), "{read}");

    // With IRP 2 down, a cancel of it (the IRN is in the body) goes to IRP 1 naming IRP 2,
    // which is how IRP 1 finds it (without the header it answers 2148).
    irps.control(1, "/_sim/irps/2/down", json!({"mode": "refuse"}))
        .await;
    let served = irps.requests_on("NIC1").await;
    let res = gw
        .request(Method::POST, "/eicore/v1.03/Invoice/Cancel")
        .json(&json!({"Irn": on_irp2, "CnlRsn": "2", "CnlRem": "wrong rate"}))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["Status"], 1, "{body}");
    assert_eq!(
        irps.requests_on("NIC1").await,
        served + 1,
        "IRP 1 served it"
    );
    let logged = irps.sim.requests(5).await;
    let cancel = logged
        .iter()
        .rev()
        .find(|r| r["path"].as_str().is_some_and(|p| p.ends_with("/Cancel")))
        .expect("the simulator saw the cancel");
    assert_eq!(header(cancel, "irp"), Some("NIC2"), "{cancel}");
}

/// A hanging IRP 1 costs the first `breaker_failures` generates a timeout each, which outcome
/// recovery turns into an answer (looked up on IRP 2 naming IRP 1: not there; sent once more
/// to IRP 2); then its circuit is open and generates go straight to IRP 2. No caller error.
#[tokio::test]
async fn a_hanging_irp_costs_callers_no_error_and_only_the_threshold_in_timeouts() {
    let irps = Portals::start().await;
    let gw = Gateway::start(
        &irps.sim,
        GwOpts {
            targets: irps.targets(),
            timeout: "1s",
            upstream_extra: "breaker_failures = 2\nbreaker_cool_down = \"10m\"".into(),
            ..GwOpts::default()
        },
    )
    .await;
    generate_ok(&gw, "WARM").await;
    irps.control(2, "/_sim/irps/1/down", json!({"mode": "hang"}))
        .await;
    let mut answered = 1;
    let mut recovered = 0;
    for i in 0..8 {
        let res = gw.generate(GSTIN, &format!("HUNG/{i}")).await;
        let marked = res
            .headers()
            .get("gstgate-outcome")
            .map(|v| v.to_str().unwrap().to_owned());
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["Status"], 1, "generate {i}: {body}");
        answered += 1;
        // Before the threshold a generate times out on IRP 1, is looked up (not there) and
        // is sent once more, to IRP 2: the caller waits, but gets its IRN.
        if marked.as_deref() == Some("recovered") {
            assert_eq!(
                recovered, i,
                "a timeout after the circuit opened (generate {i})"
            );
            recovered += 1;
        } else {
            assert_eq!(marked, None, "generate {i}");
        }
    }
    assert_eq!(recovered, 2, "breaker_failures timeouts, then none");
    assert_eq!(gw.metric(&up("NIC1")).await, 0.0);
    // The hung calls were never processed: each answered caller's document, once.
    let held = irps.irns().await;
    assert_eq!(held.len(), answered, "{held:?}");
    assert_eq!(irps.generates().await, (1, answered as u64 - 1));
}

/// `gstgate check-config` on the demo configuration with its e-invoice upstream's
/// `base_url` replaced by `[[upstream.targets]]` (or kept beside them): success, or the
/// refusal and the key it names.
fn check_config_with_targets(keep_base_url: bool, irp2: &str) -> (bool, String) {
    let demo =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/demo.toml")).unwrap();
    let mut text = if keep_base_url {
        demo.clone()
    } else {
        demo.replacen("base_url = \"http://127.0.0.1:8081\"\n", "", 1)
    };
    let next = text.find("[[upstream]]\nname = \"ewaybill\"").unwrap();
    text.insert_str(
        next,
        &format!(
            "[[upstream.targets]]\nbase_url = \"http://127.0.0.1:8081\"\nirp = \"NIC1\"\n\
             [[upstream.targets]]\nbase_url = \"http://127.0.0.1:8082\"\nirp = \"{irp2}\"\n\n"
        ),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let mut command = std::process::Command::new(BIN);
    for proxy in gstgate::config::PROXY_VARIABLES {
        command.env_remove(proxy);
    }
    let out = command
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn check_config_takes_irp_targets_and_refuses_them_beside_base_url_or_with_an_unknown_irp() {
    let (ok, out) = check_config_with_targets(false, "NIC2");
    assert!(ok, "{out}");
    let (ok, out) = check_config_with_targets(true, "NIC2");
    assert!(
        !ok && out.contains(
            "upstream \"einvoice\".targets: give either base_url or [[upstream.targets]], not both"
        ),
        "{out}"
    );
    let (ok, out) = check_config_with_targets(false, "NIC3");
    assert!(
        !ok && out.contains("upstream \"einvoice\".targets.irp: `NIC3` is not one of NIC1, NIC2"),
        "{out}"
    );
}

/// A document one IRP holds is found whichever IRP gstgate asks (review of issue 18): a
/// keyed generate commits on IRP 2 (IRP 1 refusing) and every reply from IRP 2 is lost, so it
/// ends `outcome_unknown` and its key stays open. Sent again with IRP 1 back, the request
/// starts with its earlier attempt's outcome unknown, and with no IRP known to hold it
/// (nothing was sent yet in this request): gstgate asks about each IRP in turn, finds the
/// document on IRP 2 (IRP 1 alone says "not there") and answers it, with no second generate.
/// A duplicate of it answered by IRP 1 is, with `return_existing`, found on IRP 2 the same way.
#[tokio::test]
async fn a_document_on_irp_2_is_found_when_no_holder_is_known_and_not_generated_again() {
    let irps = Portals::start().await;
    let gw = Gateway::start(
        &irps.sim,
        GwOpts {
            targets: irps.targets(),
            upstream_extra: "breaker_failures = 100\nduplicate = \"return_existing\"".into(),
            ..GwOpts::default()
        },
    )
    .await;
    generate_ok(&gw, "WARM").await;
    let keyed = || {
        gw.request(Method::POST, "/eicore/v1.03/Invoice")
            .header("idempotency-key", "irp-holder-unknown")
            .json(&invoice(GSTIN, "HOLDER/1"))
    };

    irps.control(2, "/_sim/irps/1/down", json!({"mode": "refuse"}))
        .await;
    irps.control(
        2,
        "/_sim/faults",
        json!({"mode": "commit_drop", "path_prefix": "/eicore/"}),
    )
    .await;
    expect_problem(keyed().send().await.unwrap(), 502, "outcome_unknown").await;
    let held = irps.irns().await;
    assert_eq!(held.len(), 2, "WARM and the keyed one: {held:?}");
    let (irn, _, calls) = held
        .iter()
        .find(|(_, irp, _)| irp == "NIC2")
        .cloned()
        .unwrap_or_else(|| panic!("the keyed document is not on NIC2: {held:?}"));
    assert_eq!(calls, 1);

    irps.http
        .delete(format!("{}/_sim/faults", irps.urls[1]))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    irps.control(2, "/_sim/irps/1/up", json!({})).await;
    let res = keyed().send().await.unwrap();
    let marked = res
        .headers()
        .get("gstgate-outcome")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["Status"], 1, "{body}");
    assert_eq!(marked.as_deref(), Some("recovered"));
    assert_eq!(body["Data"]["Irn"], irn.as_str());
    let held = irps.irns().await;
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(
        held.iter().all(|(_, _, calls)| *calls == 1),
        "a second generate reached the simulator: {held:?}"
    );

    // The caller's own duplicate of it, answered 2150 by IRP 1 (duplicates span the IRPs):
    // with `return_existing`, the existing IRN, found on IRP 2.
    let res = gw.generate(GSTIN, "HOLDER/1").await;
    let marked = res
        .headers()
        .get("gstgate-outcome")
        .map(|v| v.to_str().unwrap().to_owned());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["Status"], 1, "{body}");
    assert_eq!(marked.as_deref(), Some("existing"));
    assert_eq!(body["Data"]["Irn"], irn.as_str());
}

/// Attack: a caller with a valid key forges the `irp` header (a portal that does not exist, a
/// URL). The header cannot move the request off the configured IRPs: the call reaches one of
/// them, which answers NIC's 3098 for the bad value, relayed to the caller as NIC's reply.
#[tokio::test]
async fn a_forged_irp_header_reaches_only_the_configured_irps() {
    let irps = Portals::start().await;
    let gw = Gateway::start(
        &irps.sim,
        GwOpts {
            targets: irps.targets(),
            ..GwOpts::default()
        },
    )
    .await;
    let irn = generate_ok(&gw, "FORGED/1").await;
    for forged in ["NIC9", "http://evil.example/", "NIC1, NIC2"] {
        let before = irps.requests_on("NIC1").await + irps.requests_on("NIC2").await;
        let res = gw
            .request(Method::GET, &format!("/eicore/v1.03/Invoice/irn/{irn}"))
            .header("irp", forged)
            .send()
            .await
            .unwrap();
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["Status"], 0, "{forged}: {body}");
        assert_eq!(
            body["ErrorDetails"][0]["ErrorCode"], "3098",
            "{forged}: {body}"
        );
        let after = irps.requests_on("NIC1").await + irps.requests_on("NIC2").await;
        assert_eq!(after, before + 1, "{forged}: one call, to a configured IRP");
    }
}
