//! The simulator's e-invoice features for outcome-safe generation and IRP failover, driven
//! over loopback against the real `gstgate sim` process with two portals (`--irp-listen`):
//! one token on both portals, the `irp` header and 3098, a portal refusing, hanging and coming
//! back, the `commit_drop` fault against `hang`, fault probability, e-way bills by IRN, and
//! `/_sim/documents` as the count of what was committed.

mod common;

use std::time::Duration;

use common::{Sim, SimOpts, CLIENT_ID, CLIENT_SECRET, GSTIN, PASSWORD, USER};
use gstgate::crypto::{b64_encode, AesKey, PublicKey};
use reqwest::Method;
use serde_json::{json, Value};

const INVOICE: &str = "/eicore/v1.03/Invoice";
const EWB_BY_IRN: &str = "/eiewb/v1.03/ewaybill";

/// A simulator with two e-invoice portals and an ASP session, logged in on portal 1.
struct Irps {
    sim: Sim,
    urls: Vec<String>,
    http: reqwest::Client,
    token: String,
    sek: AesKey,
}

/// An e-invoice reply: the envelope and its decrypted `Data` (Null unless `Status` is 1).
struct Reply {
    json: Value,
    data: Value,
}

impl Reply {
    #[track_caller]
    fn assert_ok(&self) -> &Value {
        assert_eq!(self.json["Status"], 1, "expected success: {}", self.json);
        &self.data
    }

    #[track_caller]
    fn assert_error(&self, code: &str) {
        assert_eq!(self.json["Status"], 0, "expected Status 0: {}", self.json);
        assert_eq!(
            self.json["ErrorDetails"][0]["ErrorCode"], code,
            "{}",
            self.json
        );
    }
}

impl Irps {
    async fn start() -> Self {
        let sim = Sim::start(SimOpts {
            extra: vec!["--irp-listen".into(), "127.0.0.1:0".into()],
            ..SimOpts::default()
        })
        .await;
        let urls = sim.irp_urls().await;
        assert_eq!(urls.len(), 2, "{urls:?}");
        assert_eq!(urls[0], sim.url());
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap();
        let public = PublicKey::from_pem_or_cert(&std::fs::read(&sim.public_key).unwrap()).unwrap();
        let app_key = AesKey::random();
        let inner =
            json!({"UserName": USER, "Password": PASSWORD, "AppKey": app_key.to_base64().as_str()});
        let b64 = b64_encode(inner.to_string().as_bytes());
        let body = json!({"Data": b64_encode(&public.encrypt(b64.as_bytes()).unwrap())});
        let login: Value = http
            .post(format!("{}/eivital/v1.04/auth", urls[0]))
            .header("client_id", CLIENT_ID)
            .header("client_secret", CLIENT_SECRET)
            .header("Gstin", GSTIN)
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(login["Status"], 1, "{login}");
        let token = login["Data"]["AuthToken"].as_str().unwrap().to_string();
        let sek = app_key
            .unwrap_key(login["Data"]["Sek"].as_str().unwrap())
            .unwrap();
        Self {
            sim,
            urls,
            http,
            token,
            sek,
        }
    }

    /// A data call to `portal` (1 or 2) with an optional `irp` header, given up after
    /// `timeout`.
    async fn try_call(
        &self,
        portal: usize,
        method: Method,
        path: &str,
        body: Option<&Value>,
        irp: Option<&str>,
        timeout: Duration,
    ) -> Result<Reply, reqwest::Error> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.urls[portal - 1]))
            .timeout(timeout)
            .header("client_id", CLIENT_ID)
            .header("client_secret", CLIENT_SECRET)
            .header("Gstin", GSTIN)
            .header("user_name", USER)
            .header("AuthToken", &self.token);
        if let Some(irp) = irp {
            req = req.header("irp", irp);
        }
        if let Some(b) = body {
            req = req.json(&json!({"Data": self.sek.encrypt_b64(b.to_string().as_bytes())}));
        }
        let json: Value = req.send().await?.json().await?;
        let data = match (&json["Status"], &json["Data"]) {
            (Value::Number(n), Value::String(d)) if n.as_i64() == Some(1) => {
                serde_json::from_slice(&self.sek.decrypt_b64(d).expect("Data decrypts")).unwrap()
            }
            _ => Value::Null,
        };
        Ok(Reply { json, data })
    }

    async fn call(
        &self,
        portal: usize,
        method: Method,
        path: &str,
        body: Option<&Value>,
        irp: Option<&str>,
    ) -> Reply {
        self.try_call(portal, method, path, body, irp, Duration::from_secs(5))
            .await
            .unwrap()
    }

    async fn generate(&self, portal: usize, no: &str) -> Reply {
        self.call(portal, Method::POST, INVOICE, Some(&invoice(no)), None)
            .await
    }

    async fn get_irn(&self, portal: usize, irn: &str, irp: Option<&str>) -> Reply {
        let path = format!("{INVOICE}/irn/{irn}");
        self.call(portal, Method::GET, &path, None, irp).await
    }

    /// A control call through `portal`: the HTTP status and the JSON answer.
    async fn control(&self, portal: usize, path: &str, body: Value) -> (u16, Value) {
        let res = self
            .http
            .post(format!("{}{path}", self.urls[portal - 1]))
            .json(&body)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    async fn irn_count(&self) -> u64 {
        self.sim.documents().await["irn_count"].as_u64().unwrap()
    }
}

fn invoice(no: &str) -> Value {
    json!({
        "Version": "1.1",
        "TranDtls": {"TaxSch": "GST", "SupTyp": "B2B"},
        "DocDtls": {"Typ": "INV", "No": no, "Dt": "05/06/2024"},
        "SellerDtls": {"Gstin": GSTIN, "LglNm": "Seller", "Addr1": "x", "Loc": "Mumbai", "Pin": 400001, "Stcd": "27"},
        "BuyerDtls": {"Gstin": "27AAACR5055K1Z7", "LglNm": "Buyer", "Pos": "27", "Addr1": "y", "Loc": "Pune", "Pin": 411001, "Stcd": "27"},
        "ItemList": [],
        "ValDtls": {"AssVal": 100.0, "TotInvVal": 118.0},
    })
}

#[tokio::test]
async fn one_token_serves_both_portals_and_reads_find_a_document_on_the_portal_the_irp_header_names(
) {
    let irps = Irps::start().await;
    // A token issued by portal 1 generates on portal 2.
    let generated = irps.generate(2, "P2-1").await;
    let doc = generated.assert_ok().clone();
    let irn = doc["Irn"].as_str().unwrap();

    // Portal 1 holds no such document unless told to look on NIC2.
    irps.get_irn(1, irn, None).await.assert_error("2148");
    let via_header = irps.get_irn(1, irn, Some("NIC2")).await;
    assert_eq!(
        via_header.assert_ok(),
        &doc,
        "the document as generate answered it"
    );
    let log = irps.sim.requests(3).await;
    assert_eq!(
        (&log[0]["irp"], &log[1]["irp"], &log[2]["irp"]),
        (&json!("NIC2"), &json!("NIC1"), &json!("NIC1")),
        "the portal that received each request"
    );
    assert_eq!(log[2]["headers"]["irp"], "NIC2");
    assert_eq!(irps.get_irn(2, irn, None).await.assert_ok(), &doc);
    irps.get_irn(2, irn, Some("nic1"))
        .await
        .assert_error("2148");
    let by_doc = irps
        .call(
            1,
            Method::GET,
            &format!("{INVOICE}/irnbydocdetails?doctype=INV&docnum=P2-1&docdate=05/06/2024"),
            None,
            Some("NIC2"),
        )
        .await;
    assert_eq!(
        by_doc.assert_ok(),
        &doc,
        "irnbydocdetails answers what generate did"
    );

    // An irp header naming no portal is 3098, on reads and generates alike.
    irps.get_irn(1, irn, Some("NIC3"))
        .await
        .assert_error("3098");
    let bad = irps
        .call(
            1,
            Method::POST,
            INVOICE,
            Some(&invoice("P1-9")),
            Some("IRP1"),
        )
        .await;
    bad.assert_error("3098");

    // Duplicate detection spans the portals.
    let dup = irps.generate(1, "P2-1").await;
    dup.assert_error("2150");
    assert_eq!(dup.json["InfoDtls"][0]["Desc"]["Irn"], irn);

    let docs = irps.sim.documents().await;
    assert_eq!(docs["irn_count"], 1, "{docs}");
    assert_eq!(docs["irns"][0]["irn"], irn);
    assert_eq!(docs["irns"][0]["irp"], "NIC2");
    assert_eq!(docs["irns"][0]["generate_calls"], 2, "{docs}");
    let counters = irps.sim.counters().await;
    assert_eq!(counters["generates"], 2, "{counters}");
    assert_eq!(counters["per_irp"]["NIC1"]["generates"], 1, "{counters}");
    assert_eq!(counters["per_irp"]["NIC2"]["generates"], 1, "{counters}");
}

#[tokio::test]
async fn a_portal_taken_down_refuses_then_hangs_unprocessed_and_comes_back_on_its_port() {
    let irps = Irps::start().await;
    irps.generate(2, "UP-1").await.assert_ok();

    // A portal cannot be taken down through itself; an unknown one is 400.
    let (status, _) = irps
        .control(2, "/_sim/irps/2/down", json!({"mode": "refuse"}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = irps
        .control(1, "/_sim/irps/3/down", json!({"mode": "refuse"}))
        .await;
    assert_eq!(status, 400);

    let (status, answer) = irps
        .control(1, "/_sim/irps/2/down", json!({"mode": "refuse"}))
        .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["irps"][1]["state"], "refuse", "{answer}");
    let refused = irps
        .try_call(
            2,
            Method::POST,
            INVOICE,
            Some(&invoice("DOWN-1")),
            None,
            Duration::from_secs(2),
        )
        .await
        .err()
        .expect("a refusing portal does not answer");
    assert!(refused.is_connect(), "connection refused: {refused:?}");
    // Portal 1 serves meanwhile, with the same state.
    irps.generate(1, "DOWN-1").await.assert_ok();

    // From refusing straight to hanging, as an IRP that half comes back: connections are
    // accepted again, requests neither answered nor processed.
    let (status, answer) = irps
        .control(1, "/_sim/irps/2/down", json!({"mode": "hang"}))
        .await;
    assert_eq!((status, &answer["irps"][1]["state"]), (200, &json!("hang")));
    let before = (
        irps.irn_count().await,
        irps.sim.counters().await["requests"].clone(),
    );
    let hung = irps
        .try_call(
            2,
            Method::POST,
            INVOICE,
            Some(&invoice("HANG-1")),
            None,
            Duration::from_millis(500),
        )
        .await
        .err()
        .expect("a hanging portal does not answer");
    assert!(hung.is_timeout(), "{hung:?}");
    let after = (
        irps.irn_count().await,
        irps.sim.counters().await["requests"].clone(),
    );
    assert_eq!(before, after, "a hanging portal neither commits nor counts");

    irps.control(1, "/_sim/irps/2/up", json!({})).await;
    irps.generate(2, "HANG-1").await.assert_ok();

    // Refused again, then up: the port is bound again.
    irps.control(1, "/_sim/irps/2/down", json!({"mode": "refuse"}))
        .await;
    irps.control(1, "/_sim/irps/2/up", json!({})).await;
    irps.generate(2, "BACK-1").await.assert_ok();
    let irps_state = irps.sim.get_json("/_sim/irps").await;
    assert_eq!(irps_state[1]["state"], "up", "{irps_state}");
    assert_eq!(irps_state[1]["irp"], "NIC2");
    assert_eq!(irps.irn_count().await, 4);

    // Portal 1, the main listener, is controlled through portal 2 the same way.
    irps.sim
        .control_at(
            &irps.urls[1],
            "/_sim/irps/1/down",
            json!({"mode": "refuse"}),
        )
        .await;
    let refused = irps
        .try_call(
            1,
            Method::GET,
            "/eivital/v1.04/Master/gstin/27AAPFU0939F1ZV",
            None,
            None,
            Duration::from_secs(2),
        )
        .await
        .err()
        .expect("portal 1 refuses");
    assert!(refused.is_connect(), "{refused:?}");
    irps.sim
        .control_at(&irps.urls[1], "/_sim/irps/1/up", json!({}))
        .await;
    irps.generate(1, "NIC1-BACK").await.assert_ok();
}

#[tokio::test]
async fn commit_drop_commits_the_document_and_closes_the_connection_without_a_reply() {
    let irps = Irps::start().await;
    irps.sim
        .control(
            "/_sim/faults",
            json!({"mode": "commit_drop", "count": 1, "path_prefix": INVOICE}),
        )
        .await;
    let dropped = irps
        .try_call(
            1,
            Method::POST,
            INVOICE,
            Some(&invoice("CD-1")),
            None,
            Duration::from_secs(5),
        )
        .await
        .err()
        .expect("the reply is dropped");
    assert!(
        !dropped.is_timeout(),
        "closed at once, not hung: {dropped:?}"
    );

    let docs = irps.sim.documents().await;
    assert_eq!(docs["irn_count"], 1, "the document was committed: {docs}");
    let irn = docs["irns"][0]["irn"].as_str().unwrap().to_string();
    let found = irps
        .call(
            1,
            Method::GET,
            &format!("{INVOICE}/irnbydocdetails?doctype=INV&docnum=CD-1&docdate=05/06/2024"),
            None,
            None,
        )
        .await;
    assert_eq!(found.assert_ok()["Irn"], irn.as_str());
    irps.generate(1, "CD-1").await.assert_error("2150");
    let counters = irps.sim.counters().await;
    assert_eq!(counters["generates"], 2, "{counters}");
}

/// `reply_latency_ms` holds the reply after the document is committed: a client that gives
/// up meanwhile has lost the reply of an IRN that exists (what a replica killed mid-request
/// leaves behind).
#[tokio::test]
async fn reply_latency_holds_the_reply_of_a_committed_document() {
    let irps = Irps::start().await;
    irps.sim
        .control("/_sim/knobs", json!({"reply_latency_ms": 5000}))
        .await;
    let gave_up = irps
        .try_call(
            1,
            Method::POST,
            INVOICE,
            Some(&invoice("RL-1")),
            None,
            Duration::from_millis(400),
        )
        .await
        .err()
        .expect("no reply within the client's patience");
    assert!(gave_up.is_timeout(), "{gave_up:?}");
    let docs = irps.sim.documents().await;
    assert_eq!(docs["irn_count"], 1, "the document was committed: {docs}");
    let knobs = irps.sim.get_json("/_sim/knobs").await;
    assert_eq!(knobs["reply_latency_ms"], 5000, "{knobs}");
}

#[tokio::test]
async fn a_hang_fault_holds_the_request_before_the_simulator_processes_it() {
    let irps = Irps::start().await;
    irps.sim
        .control(
            "/_sim/faults",
            json!({"mode": "hang", "count": 1, "path_prefix": INVOICE}),
        )
        .await;
    let hung = irps
        .try_call(
            1,
            Method::POST,
            INVOICE,
            Some(&invoice("H-1")),
            None,
            Duration::from_millis(400),
        )
        .await
        .err()
        .expect("no reply");
    assert!(hung.is_timeout(), "{hung:?}");
    assert_eq!(irps.irn_count().await, 0, "nothing committed");
    assert_eq!(irps.sim.counters().await["generates"], 0);
    // The retry is the first generate the simulator sees.
    irps.generate(1, "H-1").await.assert_ok();
    let docs = irps.sim.documents().await;
    assert_eq!(
        (
            docs["irn_count"].clone(),
            docs["irns"][0]["generate_calls"].clone()
        ),
        (json!(1), json!(1))
    );
}

#[tokio::test]
async fn a_fault_probability_faults_a_share_and_every_dropped_generate_is_still_committed() {
    let irps = Irps::start().await;
    let (status, _) = irps
        .control(
            1,
            "/_sim/faults",
            json!({"mode": "commit_drop", "probability": 1.5}),
        )
        .await;
    assert_eq!(status, 400, "a probability above 1 is refused");
    irps.sim
        .control(
            "/_sim/faults",
            json!({"mode": "commit_drop", "path_prefix": INVOICE, "method": "POST", "probability": 0.5}),
        )
        .await;
    let mut dropped = 0;
    for n in 0..40 {
        let r = irps
            .try_call(
                1,
                Method::POST,
                INVOICE,
                Some(&invoice(&format!("PR-{n}"))),
                None,
                Duration::from_secs(5),
            )
            .await;
        match r {
            Ok(reply) => {
                reply.assert_ok();
            }
            Err(_) => dropped += 1,
        }
    }
    // Binomial(40, 0.5) falls outside 5..=35 about once in a million runs.
    assert!((5..=35).contains(&dropped), "{dropped} of 40 dropped");
    // The rule is for POSTs: the lookups under the same path are never dropped.
    for n in 0..10 {
        let path =
            format!("{INVOICE}/irnbydocdetails?doctype=INV&docnum=PR-{n}&docdate=05/06/2024");
        irps.call(1, Method::GET, &path, None, None)
            .await
            .assert_ok();
    }
    let docs = irps.sim.documents().await;
    assert_eq!(
        docs["irn_count"], 40,
        "dropped or not, every generate committed"
    );
    assert!(docs["irns"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d["generate_calls"] == 1));
    let cleared = irps
        .http
        .delete(format!("{}/_sim/documents", irps.sim.url()))
        .send()
        .await
        .unwrap();
    assert!(cleared.status().is_success());
    assert_eq!(irps.irn_count().await, 0, "DELETE forgets every document");
}

#[tokio::test]
async fn an_in_process_simulator_serves_its_extra_portals_from_the_config() {
    let sim = gstgate::sim::start(gstgate::sim::SimConfig {
        irp_listen: vec!["127.0.0.1:0".parse().unwrap()],
        ..gstgate::sim::SimConfig::default()
    })
    .await
    .unwrap();
    let nic2 = sim.irp_base_url(2).expect("a second portal");
    assert_eq!(sim.irp_base_url(1), Some(sim.base_url()));
    assert_eq!(sim.irp_base_url(3), None);
    let irps: Value = reqwest::get(format!("{nic2}/_sim/irps"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(irps[1]["irp"], "NIC2");
    assert_eq!(
        format!("http://{}", irps[1]["addr"].as_str().unwrap()),
        nic2
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn an_eway_bill_by_irn_is_generated_once_and_read_back_with_its_document() {
    let irps = Irps::start().await;
    let doc = irps.generate(1, "EW-1").await.assert_ok().clone();
    let irn = doc["Irn"].as_str().unwrap();
    let ewb_path = format!("{EWB_BY_IRN}/irn/{irn}");
    irps.call(1, Method::GET, &ewb_path, None, None)
        .await
        .assert_error("4005");

    let request = json!({"Irn": irn, "Distance": 250, "TransMode": "1", "VehNo": "MH12AB1234", "VehType": "R"});
    let made = irps
        .call(1, Method::POST, EWB_BY_IRN, Some(&request), None)
        .await;
    let ewb = made.assert_ok().clone();
    let ewb_no = ewb["EwbNo"].as_u64().expect("EwbNo is a number");
    assert_eq!(ewb_no.to_string().len(), 12, "{ewb}");
    let valid_till = ewb["EwbValidTill"].as_str().unwrap();
    assert!(valid_till.ends_with(" 23:59:00"), "{ewb}");

    irps.call(1, Method::POST, EWB_BY_IRN, Some(&request), None)
        .await
        .assert_error("4002");
    let read = irps.call(1, Method::GET, &ewb_path, None, None).await;
    let read = read.assert_ok();
    assert_eq!(
        (
            &read["EwbNo"],
            &read["EwbDt"],
            &read["EwbValidTill"],
            &read["Status"],
            &read["GenGstin"]
        ),
        (
            &ewb["EwbNo"],
            &ewb["EwbDt"],
            &ewb["EwbValidTill"],
            &json!("ACT"),
            &json!(GSTIN)
        )
    );
    let with_doc = irps.get_irn(1, irn, None).await;
    assert_eq!(with_doc.assert_ok()["EwbNo"], ewb_no);

    // The e-way bill lives with its document, on its portal.
    irps.call(2, Method::GET, &ewb_path, None, None)
        .await
        .assert_error("2148");
    irps.call(2, Method::GET, &ewb_path, None, Some("NIC1"))
        .await
        .assert_ok();
    let unknown = format!("{EWB_BY_IRN}/irn/{}", "0".repeat(64));
    irps.call(1, Method::GET, &unknown, None, None)
        .await
        .assert_error("2148");

    let docs = irps.sim.documents().await;
    assert_eq!(docs["irns"][0]["ewb_no"], ewb_no);
    assert_eq!(docs["irns"][0]["ewb_generate_calls"], 2, "{docs}");
}
