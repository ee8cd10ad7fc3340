//! Issue 18, outcome-safe generation (acceptance 1, 2, 3 and 6): the real gateway binary in
//! front of the real simulator, whose faults lose a generate's reply. Every caller gets its
//! document, and the simulator holds each document once.

mod common;

use common::*;
use reqwest::Method;
use serde_json::{json, Value};

const INVOICE_PATH: &str = "/eicore/v1.03/Invoice";

/// The paths (with query) of the simulator's e-invoice calls, oldest first.
async fn einvoice_calls(sim: &Sim) -> Vec<String> {
    sim.requests(200)
        .await
        .iter()
        .filter(|r| {
            r["path"]
                .as_str()
                .is_some_and(|p| p.starts_with("/eicore/"))
        })
        .map(|r| {
            let path = r["path"].as_str().unwrap_or_default();
            match r["query"].as_str() {
                Some(q) => format!("{} {path}?{q}", r["method"].as_str().unwrap_or("")),
                None => format!("{} {path}", r["method"].as_str().unwrap_or("")),
            }
        })
        .collect()
}

/// How many generate-IRN calls reached the simulator.
async fn generates(sim: &Sim) -> usize {
    einvoice_calls(sim)
        .await
        .iter()
        .filter(|c| *c == &format!("POST {INVOICE_PATH}"))
        .count()
}

/// The IRN the simulator holds for document `doc_no`, read through the gateway.
async fn irn_held(gw: &Gateway, doc_no: &str) -> Option<String> {
    let query = format!(
        "doctype=INV&docnum={}&docdate=20%2F11%2F2026",
        doc_no.replace('/', "%2F")
    );
    let res = gw
        .request(
            Method::GET,
            &format!("{INVOICE_PATH}/irnbydocdetails?{query}"),
        )
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    body["Data"]["Irn"].as_str().map(str::to_owned)
}

/// The outcome counter of the e-invoice upstream.
async fn outcomes(gw: &Gateway, outcome: &str) -> f64 {
    gw.metric(&format!(
        "gstgate_generate_outcomes_total{{upstream=\"einvoice\",outcome=\"{outcome}\"}}"
    ))
    .await
}

/// A success that carries a signed IRN, and the IRN.
async fn signed_irn(res: reqwest::Response) -> (Option<String>, String) {
    let outcome = res
        .headers()
        .get("gstgate-outcome")
        .map(|v| v.to_str().unwrap().to_owned());
    let status = res.status();
    let body: Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["Status"], 1, "{body}");
    assert!(body["Data"]["SignedInvoice"].is_string(), "{body}");
    assert!(body["Data"]["SignedQRCode"].is_string(), "{body}");
    (outcome, body["Data"]["Irn"].as_str().unwrap().to_owned())
}

/// Acceptance 2, and the other ways a reply is lost before the upstream acted: a hang until
/// gstgate's timeout, a reset connection, a 5xx page, garbage. Each is looked up (not there)
/// and sent once more; the caller gets its IRN and the simulator made one.
#[tokio::test]
async fn a_generate_lost_before_the_upstream_acted_is_looked_up_then_sent_once_more() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            timeout: "1s",
            ..GwOpts::default()
        },
    )
    .await;
    for (i, mode) in ["hang", "reset", "status_500", "garbage"]
        .into_iter()
        .enumerate()
    {
        sim.control(
            "/_sim/faults",
            json!({"mode": mode, "count": 1, "path_prefix": INVOICE_PATH}),
        )
        .await;
        let doc = format!("LOST/{i}");
        let before = generates(&sim).await;
        let (outcome, irn) = signed_irn(gw.generate(GSTIN, &doc).await).await;
        assert_eq!(outcome.as_deref(), Some("recovered"), "{mode}");
        assert_eq!(generates(&sim).await - before, 2, "{mode}: one retry");
        let calls = einvoice_calls(&sim).await;
        let n = calls.len();
        assert_eq!(
            &calls[n - 3..],
            [
                format!("POST {INVOICE_PATH}"),
                format!(
                    "GET {INVOICE_PATH}/irnbydocdetails?doctype=INV&docnum=LOST%2F{i}&docdate=20%2F11%2F2026"
                ),
                format!("POST {INVOICE_PATH}"),
            ],
            "{mode}: generate, lookup, generate"
        );
        assert_eq!(irn_held(&gw, &doc).await.as_deref(), Some(irn.as_str()));
        assert_eq!(outcomes(&gw, "recovered").await, (i + 1) as f64);
    }
    assert_eq!(outcomes(&gw, "unknown").await, 0.0);
    let held = sim.documents().await;
    assert_eq!(held["irn_count"], 4, "{held}");
    for doc in held["irns"].as_array().unwrap() {
        assert_eq!(
            doc["generate_calls"], 1,
            "one IRN, made by the retry: {doc}"
        );
    }
}

/// A lookup that cannot answer either: `outcome_unknown` with a remedy, and never a second
/// generate.
#[tokio::test]
async fn when_the_lookup_cannot_tell_the_caller_gets_outcome_unknown_and_no_second_generate() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    assert_eq!(gw.generate(GSTIN, "WARM/1").await.status(), 200);
    sim.control(
        "/_sim/faults",
        // The generate, then each of gstgate's five lookups.
        json!({"mode": "status_500", "count": 6, "path_prefix": INVOICE_PATH}),
    )
    .await;
    let before = generates(&sim).await;
    let problem = expect_problem(gw.generate(GSTIN, "DARK/1").await, 502, "outcome_unknown").await;
    assert!(
        problem["remedy"]
            .as_str()
            .is_some_and(|r| r.contains("irnbydocdetails")),
        "{problem}"
    );
    assert_eq!(generates(&sim).await - before, 1, "no second generate");
    assert_eq!(outcomes(&gw, "unknown").await, 1.0);
    assert_eq!(irn_held(&gw, "DARK/1").await, None);
}

/// Acceptance 3: `return_existing` answers a duplicate with the existing IRN, its signed
/// invoice and QR code; `pass` relays NIC's 2150 untouched.
#[tokio::test]
async fn a_duplicate_is_answered_with_the_existing_irn_only_with_return_existing() {
    let sim = Sim::start(SimOpts::default()).await;
    let existing = Gateway::start(
        &sim,
        GwOpts {
            upstream_extra: "duplicate = \"return_existing\"".into(),
            ..GwOpts::default()
        },
    )
    .await;
    let (outcome, first) = signed_irn(existing.generate(GSTIN, "DUP/1").await).await;
    assert_eq!(
        outcome, None,
        "an ordinary answer carries no outcome header"
    );
    let (outcome, again) = signed_irn(existing.generate(GSTIN, "DUP/1").await).await;
    assert_eq!(outcome.as_deref(), Some("existing"));
    assert_eq!(again, first);
    assert_eq!(outcomes(&existing, "existing").await, 1.0);
    assert_eq!(outcomes(&existing, "direct").await, 1.0);
    assert_eq!(
        generates(&sim).await,
        2,
        "the duplicate was the upstream's answer"
    );

    let pass = Gateway::start(&sim, GwOpts::default()).await;
    let res = pass.generate(GSTIN, "DUP/1").await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("gstgate-outcome").is_none());
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["Status"], 0);
    assert_eq!(body["ErrorDetails"][0]["ErrorCode"], "2150");
    assert_eq!(body["InfoDtls"][0]["Desc"]["Irn"], first.as_str());
    assert_eq!(outcomes(&pass, "direct").await, 1.0);
}

/// A read is never looked up or retried: only generates are.
#[tokio::test]
async fn a_read_whose_reply_is_lost_is_not_retried() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    let (_, irn) = signed_irn(gw.generate(GSTIN, "READ/1").await).await;
    sim.control(
        "/_sim/faults",
        json!({"mode": "reset", "count": 1, "path_prefix": "/eicore/"}),
    )
    .await;
    let before = einvoice_calls(&sim).await.len();
    let res = gw
        .request(Method::GET, &format!("{INVOICE_PATH}/irn/{irn}"))
        .send()
        .await
        .unwrap();
    expect_problem(res, 502, "upstream_unavailable").await;
    assert_eq!(einvoice_calls(&sim).await.len() - before, 1);
    assert_eq!(outcomes(&gw, "recovered").await, 0.0);
}

/// Acceptance 1: 200 generates, each reply dropped at random after the simulator committed
/// the IRN. Every caller gets its IRN, and the simulator holds exactly 200, each generated
/// once (no generate was repeated for a document the upstream had).
#[tokio::test]
async fn two_hundred_generates_with_replies_dropped_after_commit_each_get_their_irn_once() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    sim.control(
        "/_sim/faults",
        json!({"mode": "commit_drop", "count": 1000, "probability": 0.3, "method": "POST", "path_prefix": INVOICE_PATH}),
    )
    .await;
    let docs: Vec<String> = (0..200).map(|i| format!("CD/{i}")).collect();
    let mut answers = Vec::new();
    for chunk in docs.chunks(20) {
        let calls = chunk.iter().map(|doc| gw.generate(GSTIN, doc));
        for res in futures_util::future::join_all(calls).await {
            answers.push(signed_irn(res).await);
        }
    }
    sim.clear_faults().await;
    let held = sim.documents().await;
    assert_eq!(held["irn_count"], 200, "{held}");
    let irns = held["irns"].as_array().unwrap();
    for (doc, (_, irn)) in docs.iter().zip(&answers) {
        let entry = irns
            .iter()
            .find(|d| d["doc_no"] == doc.as_str())
            .unwrap_or_else(|| panic!("{doc} missing"));
        assert_eq!(entry["irn"], irn.as_str(), "{doc}: the caller's IRN");
        assert_eq!(entry["generate_calls"], 1, "{doc}: generated once");
    }
    let recovered = answers
        .iter()
        .filter(|(o, _)| o.as_deref() == Some("recovered"))
        .count();
    assert!(recovered > 0, "the fault dropped some replies");
    assert_eq!(outcomes(&gw, "recovered").await, recovered as f64);
    assert_eq!(outcomes(&gw, "unknown").await, 0.0);
}

/// Acceptance 6: e-way bill generates whose replies are dropped after commit: every caller
/// gets its e-way bill number, and the simulator holds each bill once.
#[tokio::test]
async fn ewaybill_generates_with_replies_dropped_after_commit_make_no_duplicate_bill() {
    const EWB_PATH: &str = "/ewaybillapi/v1.03/ewayapi";
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            apis: vec!["ewaybill"],
            max_logins: 5,
            ..GwOpts::default()
        },
    )
    .await;
    let generate = |doc: String| {
        gw.request(Method::POST, EWB_PATH)
            .json(&json!({"action": "GENEWAYBILL", "data": {
                "supplyType": "O", "subSupplyType": "1", "docType": "INV", "docNo": doc,
                "docDate": "25/11/2026", "fromGstin": GSTIN, "toGstin": "05AAACG2115R1ZN",
                "transDistance": "100", "totInvValue": 1180.0, "itemList": []}}))
            .send()
    };
    assert_eq!(generate("W-0".into()).await.unwrap().status(), 200);
    sim.control(
        "/_sim/faults",
        json!({"mode": "commit_drop", "count": 1, "path_prefix": EWB_PATH}),
    )
    .await;
    let res = generate("E-0".into()).await.unwrap();
    assert_eq!(res.headers()["gstgate-outcome"], "recovered");
    let first: Value = res.json().await.unwrap();
    assert!(first["data"]["ewayBillNo"].is_number(), "{first}");
    sim.control(
        "/_sim/faults",
        json!({"mode": "commit_drop", "count": 1000, "probability": 0.3, "method": "POST", "path_prefix": EWB_PATH}),
    )
    .await;
    let mut numbers = vec![first["data"]["ewayBillNo"].clone()];
    for i in 1..50 {
        let res = generate(format!("E-{i}")).await.unwrap();
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["status"], "1", "{body}");
        numbers.push(body["data"]["ewayBillNo"].clone());
    }
    sim.clear_faults().await;
    let held = sim.documents().await;
    assert_eq!(held["ewb_count"], 51, "{held}");
    for (i, number) in numbers.iter().enumerate() {
        let bill = held["ewbs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["doc_no"] == format!("E-{i}"))
            .unwrap_or_else(|| panic!("E-{i} missing: {held}"));
        assert_eq!(&bill["ewb_no"], number, "E-{i}: the caller's bill");
        assert_eq!(bill["generate_calls"], 1, "E-{i}: generated once");
    }
    assert_eq!(
        gw.metric(r#"gstgate_generate_outcomes_total{upstream="ewaybill",outcome="unknown"}"#)
            .await,
        0.0
    );
}

/// Generate e-way bill by IRN, reply dropped after commit: the e-way bill NIC holds for the
/// IRN is the answer; with `return_existing`, a second generate gets it too.
#[tokio::test]
async fn an_ewb_by_irn_whose_reply_is_dropped_is_recovered_and_a_duplicate_returns_it() {
    const EWB_BY_IRN: &str = "/eiewb/v1.03/ewaybill";
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            upstream_extra: "duplicate = \"return_existing\"".into(),
            ..GwOpts::default()
        },
    )
    .await;
    let (_, irn) = signed_irn(gw.generate(GSTIN, "EWBIRN/1").await).await;
    sim.control(
        "/_sim/faults",
        json!({"mode": "commit_drop", "count": 1, "path_prefix": EWB_BY_IRN}),
    )
    .await;
    let generate = || {
        gw.request(Method::POST, EWB_BY_IRN)
            .json(&json!({"Irn": irn, "Distance": 100}))
            .send()
    };
    let res = generate().await.unwrap();
    assert_eq!(res.headers()["gstgate-outcome"], "recovered");
    let recovered: Value = res.json().await.unwrap();
    assert_eq!(recovered["Status"], 1, "{recovered}");
    let number = recovered["Data"]["EwbNo"].clone();
    assert!(number.is_number(), "{recovered}");

    let res = generate().await.unwrap();
    assert_eq!(res.headers()["gstgate-outcome"], "existing");
    let existing: Value = res.json().await.unwrap();
    assert_eq!(existing["Data"]["EwbNo"], number);

    let held = sim.documents().await;
    let entry = &held["irns"][0];
    assert_eq!(entry["ewb_no"], number, "{held}");
    assert_eq!(
        entry["ewb_generate_calls"], 2,
        "the dropped one and the duplicate"
    );
}

/// A drop-in client (an unmodified NIC client) whose generate's reply is dropped after commit
/// gets the IRN sealed under its own SEK, as a normal reply: it never learns of the loss.
#[tokio::test]
async fn a_dropin_clients_lost_generate_is_recovered_and_sealed_for_it() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, with_dropin(GwOpts::default(), &[GSTIN])).await;
    let mut client = EinvoiceClient::new(dropin_client_config(&gw)).unwrap();
    client.login(false).await.unwrap();
    sim.control(
        "/_sim/faults",
        json!({"mode": "commit_drop", "count": 1, "path_prefix": INVOICE_PATH}),
    )
    .await;
    let generated = client
        .generate_irn(&invoice(GSTIN, "DROPIN/LOST"))
        .await
        .unwrap();
    assert!(generated["SignedQRCode"].is_string(), "{generated}");
    let held = sim.documents().await;
    assert_eq!(held["irn_count"], 1, "{held}");
    assert_eq!(held["irns"][0]["irn"], generated["Irn"]);
    assert_eq!(held["irns"][0]["generate_calls"], 1);
    assert_eq!(outcomes(&gw, "recovered").await, 1.0);
}

/// A generate that never left (nothing listens at the upstream's address) is not an unknown
/// outcome: the caller gets `upstream_unavailable` at once, and gstgate looks nothing up.
#[tokio::test]
async fn a_generate_that_could_not_connect_is_answered_unavailable_without_a_lookup() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    assert_eq!(gw.generate(GSTIN, "UP/1").await.status(), 200);
    let addr = sim.addr;
    sim.kill().await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the simulator still listens"
        );
        tokio::task::yield_now().await;
    }
    expect_problem(
        gw.generate(GSTIN, "DOWN/1").await,
        502,
        "upstream_unavailable",
    )
    .await;
    assert_eq!(outcomes(&gw, "direct").await, 2.0);
    assert_eq!(outcomes(&gw, "unknown").await, 0.0);
    assert_eq!(outcomes(&gw, "recovered").await, 0.0);
}

/// A lookup is a read: when its own reply is lost too, it is made again, and the caller still
/// gets the document the first generate committed.
#[tokio::test]
async fn lookups_whose_replies_are_lost_are_made_again() {
    let sim = Sim::start(SimOpts::default()).await;
    let gw = Gateway::start(&sim, GwOpts::default()).await;
    // The generate, then two lookups: each processed, each reply dropped.
    sim.control(
        "/_sim/faults",
        json!({"mode": "commit_drop", "count": 3, "path_prefix": INVOICE_PATH}),
    )
    .await;
    let (outcome, irn) = signed_irn(gw.generate(GSTIN, "LOOK/1").await).await;
    assert_eq!(outcome.as_deref(), Some("recovered"));
    let calls = einvoice_calls(&sim).await;
    let lookups = calls
        .iter()
        .filter(|c| c.contains("irnbydocdetails"))
        .count();
    assert_eq!(lookups, 3, "{calls:?}");
    assert_eq!(generates(&sim).await, 1);
    let held = sim.documents().await;
    assert_eq!(held["irn_count"], 1, "{held}");
    assert_eq!(held["irns"][0]["irn"], irn.as_str());
}

/// A passthrough generate (its body the caller's, which gstgate cannot read) whose reply was
/// lost after NIC committed leaves its `Idempotency-Key` open; the same request sent again
/// cannot be looked up, so it is answered 502 `outcome_unknown` with nothing sent (review of
/// issue 18: it used to be sent blind, and NIC's 2150 stored as the key's answer). A keyed
/// cancel, which creates no document, is sent again after its own lost reply.
#[tokio::test]
async fn a_passthrough_generate_whose_earlier_attempt_may_have_landed_is_not_sent_again() {
    let sim = Sim::start(SimOpts {
        plain: true,
        ..SimOpts::default()
    })
    .await;
    let gw = Gateway::start(
        &sim,
        GwOpts {
            encryption: "passthrough",
            ..GwOpts::default()
        },
    )
    .await;
    let keyed = |key: &str, path: &str, body: &Value| {
        gw.request(Method::POST, path)
            .header("idempotency-key", key)
            .json(body)
    };
    let generate = json!({ "Data": invoice(GSTIN, "PT-KEY/1") });
    sim.control(
        "/_sim/faults",
        json!({"mode": "commit_drop", "count": 1, "path_prefix": INVOICE_PATH, "method": "POST"}),
    )
    .await;
    let first = keyed("pt-generate", INVOICE_PATH, &generate)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 502, "the reply was lost");
    assert_eq!(generates(&sim).await, 1);

    let again = keyed("pt-generate", INVOICE_PATH, &generate)
        .send()
        .await
        .unwrap();
    let problem = expect_problem(again, 502, "outcome_unknown").await;
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("cannot read this generate")),
        "{problem}"
    );
    assert_eq!(generates(&sim).await, 1, "the generate was sent again");
    let documents = sim.documents().await;
    let held = documents["irns"].as_array().unwrap();
    assert_eq!(held.len(), 1, "{documents}");
    assert_eq!(held[0]["generate_calls"], 1, "{documents}");
    assert_eq!(outcomes(&gw, "unknown").await, 1.0);

    // A cancel creates no document: sent again after its lost reply.
    let irn = held[0]["irn"].as_str().unwrap();
    let cancel = json!({ "Data": {"Irn": irn, "CnlRsn": "2", "CnlRem": "wrong rate"} });
    let cancel_path = format!("{INVOICE_PATH}/Cancel");
    sim.control(
        "/_sim/faults",
        json!({"mode": "commit_drop", "count": 1, "path_prefix": cancel_path}),
    )
    .await;
    let first = keyed("pt-cancel", &cancel_path, &cancel)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 502, "the reply was lost");
    let again = keyed("pt-cancel", &cancel_path, &cancel)
        .send()
        .await
        .unwrap();
    let body: Value = again.json().await.unwrap();
    assert_eq!(body["ErrorDetails"][0]["ErrorCode"], "9999", "{body}");
    let cancels = einvoice_calls(&sim)
        .await
        .iter()
        .filter(|c| c.ends_with("/Cancel"))
        .count();
    assert_eq!(cancels, 2, "the cancel was sent again");
}
