//! Issue 18, IRP failover: an e-invoice upstream with two IRPs as `[[upstream.targets]]`,
//! the real gateway binary in front of real simulator processes.

mod common;

use common::*;
use reqwest::Method;
use serde_json::Value;

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
async fn an_irp_refusing_connections_costs_no_caller_an_error_and_reads_carry_the_holding_irp() {
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

    let mut irns = Vec::new();
    for i in 0..10 {
        let res = gw.generate(GSTIN, &format!("FO/{i}")).await;
        assert_eq!(res.status(), 200, "generate {i}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["Status"], 1, "generate {i}: {body}");
        irns.push(body["Data"]["Irn"].as_str().unwrap().to_owned());
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
    assert!(
        status.contains("<td>NIC1</td><td class=\"c-open\">open</td>")
            && status.contains("<td>NIC2</td><td class=\"c-closed\">closed</td>"),
        "{status}"
    );

    let res = gw
        .request(
            Method::GET,
            &format!("/eicore/v1.03/Invoice/irn/{}", irns[0]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let requests = sim.requests(5).await;
    let read = requests
        .iter()
        .rev()
        .find(|r| r["path"].as_str().is_some_and(|p| p.contains("/irn/")))
        .expect("the simulator saw the read");
    assert_eq!(header(read, "irp"), Some("NIC2"), "{read}");
    // The access log names the target that served each call.
    gw.logs.wait_for("\"target\":\"NIC2\"").await;
}
