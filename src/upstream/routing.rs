//! Routing a request among an upstream's targets (IRPs): the first target whose circuit
//! admits it, the next at once when a connection cannot be made, the holder of a document
//! for reads about it, and each reply's verdict for its target's circuit, given when the
//! request path reads the reply. The HTTP exchange with one target is `Upstream::attempt`'s.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};

use super::targets::{Health, Order, Target, Turn};
#[cfg(test)]
use super::Profile;
use super::{Class, Upstream, Verdict};
use crate::path::CallerPath;
use crate::problem::GatewayError;

/// What [`Upstream::dispatch`] came to: the reply or the failure, and the target that had
/// the request last.
pub struct Routed<'a> {
    /// The label of the target that had the request (`NIC1`, `default`); `None` only if
    /// none was tried.
    pub target: Option<Arc<str>>,
    /// Its reply (status, headers, body) or why there is none.
    pub result: Result<(StatusCode, HeaderMap, Bytes), GatewayError>,
    /// The target's verdict on a reply, left to whoever reads the reply anyway, so that no
    /// reply is parsed twice on the request path.
    pub pending: Pending<'a>,
}

/// A reply's effect on its target's circuit, until the reply is read ([`Pending::judge`]).
/// Dropped unjudged, it leaves the circuit as it was (a probe's slot is freed).
#[derive(Default)]
pub struct Pending<'a>(Option<Turn<'a>>);

impl Pending<'_> {
    /// Records the reply's verdict in its target's circuit and gauge.
    pub fn judge(self, status: StatusCode, verdict: &Verdict) {
        if let Some(turn) = self.0 {
            turn.judge(reply_health(status, verdict));
        }
    }
}

/// A routed result's health, judged as the request path judges it: an error at once, a reply
/// once read ([`reply_health`]).
#[cfg(test)]
fn health(
    profile: &dyn Profile,
    result: &Result<(StatusCode, HeaderMap, Bytes), GatewayError>,
) -> Health {
    match result {
        Ok((status, _, body)) => reply_health(*status, &profile.read_reply(*status, body).verdict),
        Err(err) => error_health(err),
    }
}

/// What an attempt's result says of its target's health: a reply is a failure when it says
/// the upstream is in trouble, whatever its HTTP status: a transient API error (NIC's 5001 and
/// 5002 "application error", a GSP's `GSPGSTDOWN`: an IRP that is down answers so, often with
/// a 200), or a 5xx without an API error code (an error page, a JSON body from a proxy). A
/// 5xx that carries one of the API's own answers (a GSP that sends NIC's business errors with
/// a 5xx status) is an answer.
fn reply_health(status: StatusCode, verdict: &Verdict) -> Health {
    let troubled =
        verdict.class == Class::Transient || (status.is_server_error() && verdict.code.is_none());
    if troubled {
        Health::Failed
    } else {
        Health::Answered
    }
}

/// What a failed attempt says of its target: unreached (nothing sent), failed (sent, no
/// answer), or nothing (gstgate's own failure).
fn error_health(err: &GatewayError) -> Health {
    match err {
        GatewayError::UpstreamUnreachable(_) => Health::Unreached,
        GatewayError::UpstreamTimeout(_) | GatewayError::UpstreamConnectionFailed(_) => {
            Health::Failed
        }
        _ => Health::Unknown,
    }
}

impl Upstream {
    /// Sends one request and reads the whole reply, within the timeout and size cap, to
    /// the target routing picks (see [`Upstream::dispatch`]).
    pub async fn send(
        &self,
        method: Method,
        path: &CallerPath,
        headers: HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), GatewayError> {
        let routed = self.dispatch(method, path, headers, body).await;
        if let Ok((status, _, body)) = &routed.result {
            let verdict = self.profile.read_reply(*status, body).verdict;
            routed.pending.judge(*status, &verdict);
        }
        routed.result
    }

    /// Names, in the API's portal header, the portal that generated the document a call is
    /// about (the profile reads which from the path or the caller's plain `body`), when
    /// gstgate remembers it and the caller named no portal itself.
    pub fn name_holder(
        &self,
        headers: &mut HeaderMap,
        method: &Method,
        path: &CallerPath,
        body: &[u8],
    ) {
        if !self.targets.has_portals() || self.targets.carries_portal(headers) {
            return;
        }
        let document = self.profile.document_named(method, path, body);
        if let Some((name, value)) = self.targets.portal_for(document.as_deref()) {
            headers.insert(name, value);
        }
    }

    /// Sends one request to the first target whose circuit lets it through (the portal the
    /// request's portal header names first), and says which target had it. A target that
    /// could not be reached (nothing was sent) hands the request to the next one at once; a
    /// timeout or 5xx after sending is never sent again here, it only counts against the
    /// target's circuit.
    pub async fn dispatch(
        &self,
        method: Method,
        path: &CallerPath,
        headers: HeaderMap,
        body: Bytes,
    ) -> Routed<'_> {
        let order = self
            .targets
            .named_in(&headers)
            .map_or(Order::Configured, Order::First);
        self.route(order, method, path, headers, body).await
    }

    /// Sends a read about a document that the target labelled `portal` may hold, with the
    /// portal header naming it; to the targets other than `failed` first (the one that had a
    /// generate whose outcome is unknown, and may be failing), `failed` last.
    pub async fn dispatch_elsewhere(
        &self,
        portal: &str,
        failed: Option<&str>,
        method: Method,
        path: &CallerPath,
        mut headers: HeaderMap,
        body: Bytes,
    ) -> Routed<'_> {
        if let Some((name, value)) = self.targets.portal_of(portal) {
            headers.insert(name, value);
        }
        let order = failed
            .and_then(|failed| self.targets.position(failed))
            .map_or(Order::Configured, Order::Last);
        self.route(order, method, path, headers, body).await
    }

    /// The labels of the targets that have a portal name (NIC's IRPs), in configured order
    /// with `first` moved first: the portals a lookup asks about in turn. Empty for an
    /// upstream with one unnamed target.
    pub fn portals(&self, first: Option<&str>) -> Vec<Arc<str>> {
        self.targets.portals(first)
    }

    /// Sends a generate again after its first attempt failed on the target `failed` and a
    /// lookup said no IRP has the document: the other targets first, so that a hanging IRP
    /// whose circuit is not open yet does not fail the retry too.
    pub async fn dispatch_avoiding(
        &self,
        failed: &str,
        method: Method,
        path: &CallerPath,
        headers: HeaderMap,
        body: Bytes,
    ) -> Routed<'_> {
        let order = self
            .targets
            .position(failed)
            .map_or(Order::Configured, Order::Last);
        self.route(order, method, path, headers, body).await
    }

    /// Tries the targets in `order` until one was reached: first those whose circuit admits
    /// the call, then, if none of them could be reached, the others anyway (a connect
    /// failure costs nothing, and an open circuit may hide a target that is back).
    async fn route(
        &self,
        order: Order,
        method: Method,
        path: &CallerPath,
        headers: HeaderMap,
        body: Bytes,
    ) -> Routed<'_> {
        let mut ordered: Vec<(&Target, bool)> = Vec::with_capacity(self.targets.iter().count());
        ordered.extend(self.targets.ordered(order).map(|t| (t, false)));
        let mut untried = ordered.len();
        // The last target that may be tried takes the headers themselves: with one target
        // (the usual upstream) no request copies its header map.
        let mut headers = Some(headers);
        let mut last = None;
        for forced in [false, true] {
            for (target, tried) in &mut ordered {
                let turn = match (*tried, forced) {
                    (true, _) => continue,
                    (false, false) => match target.admit() {
                        Some(turn) => turn,
                        None => continue,
                    },
                    (false, true) => target.force(),
                };
                *tried = true;
                untried -= 1;
                let sent_headers = if untried == 0 {
                    headers.take().unwrap_or_default()
                } else {
                    headers.clone().unwrap_or_default()
                };
                let result = self
                    .attempt(
                        &target.base,
                        method.clone(),
                        path,
                        sent_headers,
                        body.clone(),
                    )
                    .await;
                let target_label = Some(target.label.clone());
                let Err(err) = &result else {
                    return Routed {
                        target: target_label,
                        result,
                        pending: Pending(Some(turn)),
                    };
                };
                let health = error_health(err);
                let unreached = matches!(health, Health::Unreached);
                turn.judge(health);
                let routed = Routed {
                    target: target_label,
                    result,
                    pending: Pending::default(),
                };
                if !unreached {
                    return routed;
                }
                last = Some(routed);
            }
        }
        last.unwrap_or_else(|| Routed {
            target: None,
            result: Err(GatewayError::Internal("no upstream target".into())),
            pending: Pending::default(),
        })
    }

    /// Remembers which target generated the document a successful reply's plain body
    /// reports (the profile reads it), so that reads of it go there.
    pub fn note_generated(&self, method: &Method, path: &CallerPath, plain: &[u8], target: &str) {
        // Without IRPs to choose between there is no holder to remember, and reading the
        // reply's IRN would cost every generate a JSON pass.
        if !self.targets.has_portals() {
            return;
        }
        if let Some(document) = self.profile.generated_document(method, path, plain) {
            self.targets.remember(&document, target);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyPair;
    use crate::metrics::Metrics;
    use crate::upstream::einvoice;
    use http::HeaderValue;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::sync::mpsc;

    /// A loopback HTTP server that answers every request `200 {}` and sends each request's
    /// head (lower-cased) down the channel.
    async fn recorder() -> (String, mpsc::UnboundedReceiver<String>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n")
                        && conn.read(&mut byte).await.unwrap_or(0) == 1
                    {
                        head.push(byte[0]);
                    }
                    let _ = tx.send(String::from_utf8_lossy(&head).to_ascii_lowercase());
                    let _ = conn
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
                        )
                        .await;
                });
            }
        });
        (url, rx)
    }

    /// An e-invoice upstream whose targets are `NIC1` at `irp1` and `NIC2` at `irp2`.
    fn two_irps(irp1: &str, irp2: &str) -> (Upstream, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("upstream.pem");
        let pem = KeyPair::generate().unwrap().public_key().to_pem().unwrap();
        std::fs::write(&key, pem).unwrap();
        let text = format!(
            r#"
[server]
[[upstream]]
name = "einvoice"
api = "einvoice"
routes = ["/eicore/"]
auth_path = "/eivital/v1.04/auth"
public_key = "{}"
client_id = "a"
client_secret = "b"
[[upstream.targets]]
base_url = "{irp1}"
irp = "NIC1"
[[upstream.targets]]
base_url = "{irp2}"
irp = "NIC2"
"#,
            key.display()
        );
        let config = crate::config::Config::parse(&text, std::path::Path::new("c.toml")).unwrap();
        let (metrics, _) = Metrics::new();
        (
            Upstream::from_config(&config.upstreams[0], metrics).unwrap(),
            dir,
        )
    }

    fn lookup() -> CallerPath {
        CallerPath::parse(
            "/eicore/v1.03/Invoice/irnbydocdetails",
            Some("doctype=INV&docnum=1&docdate=01/04/2026"),
        )
        .unwrap()
    }

    #[test]
    fn a_5xx_without_an_api_code_a_transient_code_or_a_timeout_fails_a_target_a_business_answer_does_not(
    ) {
        let reply = |status: u16, body: &'static str| {
            Ok((
                StatusCode::from_u16(status).unwrap(),
                HeaderMap::new(),
                Bytes::from_static(body.as_bytes()),
            ))
        };
        let of = |result| health(&einvoice::Einvoice, &result);
        assert!(matches!(
            of(reply(502, "<html>Bad gateway</html>")),
            Health::Failed
        ));
        let down = r#"{"Status":0,"ErrorDetails":[{"ErrorCode":"5002","ErrorMessage":"application error"}]}"#;
        assert!(matches!(of(reply(500, down)), Health::Failed));
        let duplicate =
            r#"{"Status":0,"ErrorDetails":[{"ErrorCode":"2150","ErrorMessage":"Duplicate IRN"}]}"#;
        assert!(matches!(of(reply(500, duplicate)), Health::Answered));
        // An IRP that is down answers 5002 "application error" or GSPGSTDOWN with a 200.
        assert!(matches!(of(reply(200, down)), Health::Failed));
        let gsp_down = r#"{"Status":0,"ErrorDetails":[{"ErrorCode":"GSPGSTDOWN","ErrorMessage":"GST system is down"}]}"#;
        assert!(matches!(of(reply(200, gsp_down)), Health::Failed));
        // A 5xx with a JSON body but no API error code (a proxy's) is the upstream's trouble.
        assert!(matches!(
            of(reply(502, r#"{"message":"bad gateway"}"#)),
            Health::Failed
        ));
        assert!(matches!(of(reply(503, r#"{"Status":0}"#)), Health::Failed));
        let business =
            r#"{"Status":0,"ErrorDetails":[{"ErrorCode":"2148","ErrorMessage":"not found"}]}"#;
        assert!(matches!(of(reply(200, business)), Health::Answered));
        assert!(matches!(
            of(reply(200, r#"{"Status":1}"#)),
            Health::Answered
        ));
        assert!(matches!(
            of(Err(GatewayError::UpstreamTimeout(1000))),
            Health::Failed
        ));
        assert!(matches!(
            of(Err(GatewayError::Internal("x".into()))),
            Health::Unknown
        ));
    }

    #[tokio::test]
    async fn the_holder_of_a_generated_irn_is_named_unless_the_caller_named_a_portal() {
        let (upstream, _dir) = two_irps("http://127.0.0.1:1", "http://127.0.0.1:2");
        let irn = "b".repeat(64);
        let generate = CallerPath::parse("/eicore/v1.03/Invoice", None).unwrap();
        let reply = format!(r#"{{"Status":1,"Data":{{"Irn":"{irn}"}}}}"#);
        upstream.note_generated(&Method::POST, &generate, reply.as_bytes(), "NIC2");
        let read = format!("/eicore/v1.03/Invoice/irn/{}", irn.to_ascii_uppercase());
        let read = CallerPath::parse(&read, None).unwrap();
        let mut headers = HeaderMap::new();
        upstream.name_holder(&mut headers, &Method::GET, &read, b"");
        assert_eq!(
            headers.get("irp").map(HeaderValue::as_bytes),
            Some(&b"NIC2"[..])
        );
        let mut headers = HeaderMap::new();
        headers.insert("irp", HeaderValue::from_static("NIC9"));
        upstream.name_holder(&mut headers, &Method::GET, &read, b"");
        assert_eq!(
            headers.get("irp").map(HeaderValue::as_bytes),
            Some(&b"NIC9"[..])
        );
    }

    #[tokio::test]
    async fn a_target_refusing_connections_hands_the_request_to_the_next_at_once() {
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let (irp2, mut seen) = recorder().await;
        let (upstream, _dir) = two_irps(&refused, &irp2);
        let routed = upstream
            .dispatch(Method::GET, &lookup(), HeaderMap::new(), Bytes::new())
            .await;
        assert_eq!(routed.target.as_deref(), Some("NIC2"));
        assert_eq!(routed.result.map(|r| r.0).ok(), Some(StatusCode::OK));
        assert!(!seen.recv().await.unwrap().contains("\r\nirp:"));
    }

    #[tokio::test]
    async fn an_open_target_is_still_tried_when_no_target_its_circuit_admits_could_be_reached() {
        let refused = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", l.local_addr().unwrap())
        };
        let (irp1, mut seen) = recorder().await;
        let (upstream, _dir) = two_irps(&irp1, &refused);
        let nic1 = upstream
            .targets
            .ordered(Order::Configured)
            .collect::<Vec<_>>()[0];
        while nic1.state() == crate::breaker::State::Closed {
            nic1.admit().expect("closed").judge(Health::Failed);
        }
        let routed = upstream
            .dispatch(Method::GET, &lookup(), HeaderMap::new(), Bytes::new())
            .await;
        assert_eq!(routed.target.as_deref(), Some("NIC1"));
        assert_eq!(routed.result.map(|r| r.0).ok(), Some(StatusCode::OK));
        assert!(seen.recv().await.is_some());
    }

    #[tokio::test]
    async fn a_lookup_after_a_failure_on_one_irp_goes_to_the_other_naming_the_first() {
        let (irp1, mut seen1) = recorder().await;
        let (irp2, mut seen2) = recorder().await;
        let (upstream, _dir) = two_irps(&irp1, &irp2);
        let routed = upstream
            .dispatch_elsewhere(
                "NIC1",
                Some("NIC1"),
                Method::GET,
                &lookup(),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        assert_eq!(routed.target.as_deref(), Some("NIC2"));
        assert!(seen2.recv().await.unwrap().contains("\r\nirp: nic1\r\n"));
        assert!(seen1.try_recv().is_err(), "NIC1 was not asked");
        // Any other call goes to the primary, without an `irp` header.
        let routed = upstream
            .dispatch(Method::GET, &lookup(), HeaderMap::new(), Bytes::new())
            .await;
        assert_eq!(routed.target.as_deref(), Some("NIC1"));
        assert!(!seen1.recv().await.unwrap().contains("\r\nirp:"));
        // A lookup asking about NIC2 while NIC1 is the one that failed: NIC2, naming NIC2.
        let routed = upstream
            .dispatch_elsewhere(
                "NIC2",
                Some("NIC1"),
                Method::GET,
                &lookup(),
                HeaderMap::new(),
                Bytes::new(),
            )
            .await;
        assert_eq!(routed.target.as_deref(), Some("NIC2"));
        assert!(seen2.recv().await.unwrap().contains("\r\nirp: nic2\r\n"));
        assert!(seen1.try_recv().is_err(), "NIC1 was not asked");
        assert_eq!(
            upstream.portals(Some("NIC2")),
            [Arc::from("NIC2"), "NIC1".into()]
        );
        assert_eq!(upstream.portals(None), [Arc::from("NIC1"), "NIC2".into()]);
    }
}
