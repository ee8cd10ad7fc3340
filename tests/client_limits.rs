//! Issue 19, acceptance 4, per-client limits: a client over its `rate` gets 429
//! `client_rate_limited` with `Retry-After` before any routing, session or upstream work,
//! while another client on the same GSTIN is served; `/metrics` counts requests by client and
//! by problem code.
//!
//! "No added latency" for the other client is shown by structure, not timed: the refusal is
//! decided from the limited client's own bucket right after its key is checked (a request to a
//! path that routes nowhere is refused for the rate, not for the route, and the upstream sees
//! nothing), so there is nothing shared for the other client to wait on.

mod common;

use common::{
    dropin_client_config, expect_problem, invoice, metric_value, with_dropin, EinvoiceClient,
    Gateway, GwOpts, Sim, SimOpts, API_KEY, DROPIN_CLIENT, GSTIN,
};
use reqwest::Method;

/// The limited client's key.
const BATCH_KEY: &str = "batch-key-0123456789";

/// A gateway with the default client `billing` (no limit) and `batch`, allowed the same
/// GSTINs, limited to 2 requests at once and 1 an hour after that: no refill happens within
/// a test, so every count below is exact without any timing.
async fn rig() -> (Sim, Gateway) {
    let sim = Sim::start(SimOpts::default()).await;
    let opts = GwOpts {
        extra_toml: format!(
            "\n[[client]]\nname = \"batch\"\napi_key_sha256 = \"{}\"\ngstins = [\"*\"]\nrate = \"1/h\"\nburst = 2\n",
            gstgate::cli::hex_sha256(BATCH_KEY.as_bytes())
        ),
        ..GwOpts::default()
    };
    let gw = Gateway::start(&sim, opts).await;
    (sim, gw)
}

/// A generate-IRN for `doc_no` with `key`.
async fn generate_as(gw: &Gateway, key: &str, doc_no: &str) -> reqwest::Response {
    gw.http
        .post(format!("http://{}/eicore/v1.03/Invoice", gw.proxy))
        .header("x-api-key", key)
        .header("gstin", GSTIN)
        .json(&invoice(GSTIN, doc_no))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_client_over_its_rate_gets_429_and_another_on_the_same_gstin_is_served() {
    let (sim, gw) = rig().await;
    // The burst: two calls go through.
    for doc in ["B/1", "B/2"] {
        assert_eq!(generate_as(&gw, BATCH_KEY, doc).await.status(), 200);
    }
    let upstream_before = sim.counters().await;

    // The third is over the rate.
    let res = generate_as(&gw, BATCH_KEY, "B/3").await;
    let retry_after: u64 = res
        .headers()
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // One request an hour: the next is due in at most an hour.
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    let body = expect_problem(res, 429, "client_rate_limited").await;
    assert!(body["detail"].as_str().unwrap().contains("batch"), "{body}");

    // Refused before routing: a path no upstream serves is refused for the rate too.
    let res = gw
        .http
        .get(format!("http://{}/no/such/api", gw.proxy))
        .header("x-api-key", BATCH_KEY)
        .header("gstin", GSTIN)
        .send()
        .await
        .unwrap();
    expect_problem(res, 429, "client_rate_limited").await;
    // And nothing reached the upstream.
    assert_eq!(sim.counters().await, upstream_before);

    // A reload builds the clients, and their limits, afresh: the limit keeps holding, from a
    // full burst.
    let res = gw.admin_post("/admin/reload", None).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    for doc in ["B/4", "B/5"] {
        assert_eq!(generate_as(&gw, BATCH_KEY, doc).await.status(), 200);
    }
    let res = generate_as(&gw, BATCH_KEY, "B/6").await;
    assert!(res.headers().contains_key("retry-after"));
    expect_problem(res, 429, "client_rate_limited").await;

    // The other client, same GSTIN and upstream session, is served at once and every time.
    for doc in ["A/1", "A/2", "A/3"] {
        assert_eq!(generate_as(&gw, API_KEY, doc).await.status(), 200);
    }

    // An unknown key: no client.
    let res = generate_as(&gw, "not-a-key", "X/1").await;
    expect_problem(res, 401, "unauthenticated").await;

    let text = gw.metrics().await;
    let value = |series: &str| metric_value(&text, series);
    assert_eq!(
        value(r#"gstgate_requests_total{client="batch",code="client_rate_limited",status="4xx"}"#),
        3.0
    );
    assert_eq!(
        value(r#"gstgate_requests_total{upstream="einvoice",client="batch",code="none"}"#),
        4.0
    );
    assert_eq!(
        value(r#"gstgate_requests_total{upstream="einvoice",client="billing",code="none"}"#),
        3.0
    );
    assert_eq!(
        value(r#"gstgate_requests_total{upstream="none",client="none",code="unauthenticated"}"#),
        1.0
    );
    assert_eq!(
        value(r#"gstgate_requests_total{client="billing",code="client_rate_limited"}"#),
        0.0
    );
}

/// The limit holds for a drop-in caller, identified by its client id and secret: its login
/// and its data calls count, and the one over the rate is refused without an upstream call.
#[tokio::test]
async fn a_drop_in_client_over_its_rate_is_refused_too() {
    let sim = Sim::start(SimOpts::default()).await;
    let mut opts = with_dropin(GwOpts::default(), &[GSTIN]);
    // `with_dropin` ends with the drop-in client's table: this limits it.
    opts.extra_toml.push_str("rate = \"1/h\"\nburst = 2\n");
    let gw = Gateway::start(&sim, opts).await;

    let mut client = EinvoiceClient::new(dropin_client_config(&gw)).unwrap();
    // The login and one data call make the burst.
    client.generate_irn(&invoice(GSTIN, "D/1")).await.unwrap();
    let upstream_before = sim.counters().await;
    let err = client.gstin_details(GSTIN).await.unwrap_err();
    assert!(format!("{err:?}").contains("429"), "{err:?}");
    assert_eq!(sim.counters().await, upstream_before);

    // The gateway caller on the same GSTIN is not limited.
    let res = gw
        .request(Method::POST, "/eicore/v1.03/Invoice")
        .json(&invoice(GSTIN, "G/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    assert_eq!(
        gw.metric(&format!(
            r#"gstgate_requests_total{{client="{DROPIN_CLIENT}",code="client_rate_limited"}}"#
        ))
        .await,
        1.0
    );
}
