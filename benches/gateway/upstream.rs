//! A lean e-invoice upstream for the benchmark: the part of the NIC protocol that a
//! generate-IRN load touches, written to cost as little CPU per request as a correct server can.
//!
//! Why it exists: the issue asks for "an upstream fast enough not to be the bottleneck". The
//! built-in simulator (`gstgate sim`) is a test instrument: it logs every request with its
//! headers and body for assertions, keeps counters per GSTIN and parses bodies into
//! `serde_json::Value` trees, which costs about three times what a proxy in front of it costs
//! (measured: see BENCHMARKS.md). Behind it every proxy looks alike. This server does the same
//! protocol work on the hot path — checks the client id and secret, resolves the AuthToken to
//! its (GSTIN, user) session and checks both headers against it, decrypts `Data` with the SEK
//! when it is a string, validates the JSON and the document fields, derives the IRN exactly
//! as the simulator does (SHA-256 of seller GSTIN, document type, number and financial year),
//! and answers like NIC (a `SignedInvoice` JWT carrying the invoice, encrypted under the SEK
//! when the request was) — and nothing else.
//!
//! Login is the real one: RSA-PKCS#1 v1.5 with its own key pair, AppKey-wrapped SEK, IST
//! `TokenExpiry`, the same token and SEK for a repeat login within validity.
//!
//! Run by the orchestrator as `<bench binary> --serve-upstream CONFIG.json`; prints
//! `bench-upstream listening on http://ADDR` once ready. `GET /_sim/counters` answers
//! `{"requests", "auth_calls", "errors"}` (named like the simulator's so the orchestrator reads
//! both the same way).

use std::borrow::Cow;
use std::collections::HashMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use anyhow::{Context as _, Result};
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use base64::Engine as _;
use bytes::Bytes;
use gstgate::crypto::{b64_decode, AesKey, KeyPair};
use http::{HeaderMap, Method, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest as _, Sha256};

/// Largest request body read.
const MAX_BODY: usize = 2 * 1024 * 1024;
/// NIC production token lifetime.
const TOKEN_TTL_MINUTES: i64 = 360;

/// What the orchestrator starts the upstream with.
#[derive(Serialize, Deserialize)]
pub struct UpstreamConfig {
    pub listen: SocketAddr,
    pub public_key_out: PathBuf,
    /// (GSTIN, username, password)
    pub users: Vec<(String, String, String)>,
    /// (client id, client secret)
    pub clients: Vec<(String, String)>,
    /// Sessions issued before this process started: (GSTIN, username, token, SEK in base64).
    /// The scale scenario seeds a Redis store with 100 000 sessions instead of making 100 000
    /// logins; their tokens must be valid here as if this upstream had issued them.
    #[serde(default)]
    pub sessions: Vec<(String, String, String, String)>,
}

/// A live session: what an AuthToken stands for.
struct Session {
    gstin: String,
    user: String,
    token: String,
    sek: AesKey,
    expiry_ist: String,
}

struct State {
    keypair: KeyPair,
    cfg: UpstreamConfig,
    /// (upper-case GSTIN, user) → password: the scale scenario has 100 000 users.
    passwords: HashMap<(String, String), String>,
    /// (GSTIN, user) → session, and token → session. Written only by logins (a handful per
    /// run), read by every data call: an `RwLock` keeps the readers from contending.
    by_user: RwLock<HashMap<(String, String), Arc<Session>>>,
    by_token: RwLock<HashMap<String, Arc<Session>>>,
    /// IRN → the document's `Data` JSON. A repeat generate of the same document answers the
    /// stored document (as the simulator does with `--allow-duplicate-irn`), so a constant
    /// request body costs a lookup here, not a new signed invoice every time.
    documents: RwLock<HashMap<String, Arc<str>>>,
    ack_no: AtomicU64,
    requests: AtomicU64,
    auth_calls: AtomicU64,
    errors: AtomicU64,
}

/// Runs the upstream until the process is killed.
pub fn main(config: &Path) -> Result<()> {
    let cfg: UpstreamConfig = serde_json::from_slice(
        &std::fs::read(config).with_context(|| format!("reading {}", config.display()))?,
    )?;
    let keypair = KeyPair::generate()?;
    std::fs::write(&cfg.public_key_out, keypair.public_key().to_pem()?)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.listen).await?;
        let addr = listener.local_addr()?;
        let passwords = cfg
            .users
            .iter()
            .map(|(g, u, p)| ((g.to_ascii_uppercase(), u.clone()), p.clone()))
            .collect();
        let (by_user, by_token) = issued(&cfg.sessions)?;
        let state = Arc::new(State {
            keypair,
            cfg,
            passwords,
            by_user: RwLock::new(by_user),
            by_token: RwLock::new(by_token),
            documents: RwLock::default(),
            ack_no: AtomicU64::new(112_010_000_000_000),
            requests: AtomicU64::new(0),
            auth_calls: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        });
        println!("bench-upstream listening on http://{addr}");
        std::io::stdout().flush()?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            let state = state.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| handle(state.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .keep_alive(true)
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    })
}

type Reply = Response<Full<Bytes>>;

/// The sessions of `UpstreamConfig::sessions`, by (GSTIN, user) and by token.
#[allow(clippy::type_complexity)]
fn issued(
    sessions: &[(String, String, String, String)],
) -> Result<(
    HashMap<(String, String), Arc<Session>>,
    HashMap<String, Arc<Session>>,
)> {
    let expiry = chrono::Utc::now() + chrono::Duration::minutes(TOKEN_TTL_MINUTES + 330);
    let expiry_ist = expiry.format("%Y-%m-%d %H:%M:%S").to_string();
    let (mut by_user, mut by_token) = (HashMap::new(), HashMap::new());
    for (gstin, user, token, sek) in sessions {
        let s = Arc::new(Session {
            gstin: gstin.to_ascii_uppercase(),
            user: user.clone(),
            token: token.clone(),
            sek: AesKey::from_slice(&b64_decode(sek)?)?,
            expiry_ist: expiry_ist.clone(),
        });
        by_user.insert((s.gstin.clone(), s.user.clone()), s.clone());
        by_token.insert(s.token.clone(), s);
    }
    Ok((by_user, by_token))
}

async fn handle(st: Arc<State>, req: http::Request<Incoming>) -> Result<Reply, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(plain_status(StatusCode::PAYLOAD_TOO_LARGE)),
    };
    let reply = match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/eicore/v1.03/Invoice") => {
            st.requests.fetch_add(1, Ordering::Relaxed);
            st.generate(&parts.headers, &body)
        }
        (&Method::POST, "/eivital/v1.04/auth") => {
            st.auth_calls.fetch_add(1, Ordering::Relaxed);
            st.login(&parts.headers, &body)
        }
        (&Method::GET, "/_sim/counters") => {
            let v = serde_json::json!({
                "requests": st.requests.load(Ordering::Relaxed),
                "auth_calls": st.auth_calls.load(Ordering::Relaxed),
                "errors": st.errors.load(Ordering::Relaxed),
            });
            Ok(v.to_string().into_bytes())
        }
        _ => return Ok(plain_status(StatusCode::NOT_FOUND)),
    };
    let json = reply.unwrap_or_else(|(code, msg)| {
        st.errors.fetch_add(1, Ordering::Relaxed);
        serde_json::json!({
            "Status": 0,
            "ErrorDetails": [{"ErrorCode": code, "ErrorMessage": msg}],
            "Data": null,
            "InfoDtls": null,
        })
        .to_string()
        .into_bytes()
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json)))
        .expect("static response parts"))
}

fn plain_status(s: StatusCode) -> Reply {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = s;
    r
}

/// A NIC error: (code, message).
type NicResult<T> = Result<T, (&'static str, String)>;

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// `{"Data": …}` with `Data` left unparsed.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "Data", borrow)]
    data: &'a RawValue,
}

/// The login payload inside the RSA block.
#[derive(Deserialize)]
struct LoginPayload {
    #[serde(rename = "UserName")]
    user: String,
    #[serde(rename = "Password")]
    password: String,
    #[serde(rename = "AppKey")]
    app_key: String,
}

/// The fields of an invoice that generate-IRN needs; the rest is validated as JSON and skipped.
#[derive(Deserialize)]
struct Invoice<'a> {
    #[serde(rename = "DocDtls", borrow)]
    doc: Doc<'a>,
    #[serde(rename = "SellerDtls", borrow)]
    seller: Party<'a>,
}

#[derive(Deserialize)]
struct Doc<'a> {
    #[serde(rename = "Typ", borrow)]
    typ: Cow<'a, str>,
    #[serde(rename = "No", borrow)]
    no: Cow<'a, str>,
    #[serde(rename = "Dt", borrow)]
    dt: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Party<'a> {
    #[serde(rename = "Gstin", borrow)]
    gstin: Cow<'a, str>,
}

impl State {
    fn check_client(&self, h: &HeaderMap) -> NicResult<()> {
        let id = header(h, "client_id").ok_or(("1011", "client_id is required".into()))?;
        let secret =
            header(h, "client_secret").ok_or(("1012", "client_secret is required".into()))?;
        if self.cfg.clients.iter().any(|(i, s)| i == id && s == secret) {
            Ok(())
        } else {
            Err(("1010", "Invalid Client-ID/Client-Secret".into()))
        }
    }

    fn login(&self, h: &HeaderMap, body: &[u8]) -> NicResult<Vec<u8>> {
        self.check_client(h)?;
        let gstin = header(h, "gstin").ok_or(("1004", "Header GSTIN is required".into()))?;
        let env: Envelope =
            serde_json::from_slice(body).map_err(|_| ("1007", "bad payload".into()))?;
        let data: String = serde_json::from_str(env.data.get())
            .map_err(|_| ("1007", "Data must be a string".into()))?;
        let cipher = b64_decode(&data).map_err(|_| ("1007", "Data is not base64".into()))?;
        let inner = self
            .keypair
            .decrypt(&cipher)
            .map_err(|_| ("1013", "decryption failed".into()))?;
        let json = b64_decode(std::str::from_utf8(&inner).unwrap_or(""))
            .map_err(|_| ("1007", "inner payload is not base64".into()))?;
        let p: LoginPayload = serde_json::from_slice(&json)
            .map_err(|_| ("1007", "inner payload is not JSON".into()))?;
        let app_key =
            AesKey::from_slice(&b64_decode(&p.app_key).map_err(|_| ("1016", "bad AppKey".into()))?)
                .map_err(|_| ("1016", "AppKey must be 32 bytes".into()))?;
        let key = (gstin.to_ascii_uppercase(), p.user.clone());
        let password = self
            .passwords
            .get(&key)
            .ok_or(("1017", "Incorrect user id/User does not exists".into()))?;
        if *password != p.password {
            return Err(("1019", "Incorrect Password".into()));
        }
        let session = {
            let mut by_user = self.by_user.write().unwrap_or_else(|e| e.into_inner());
            by_user
                .entry(key.clone())
                .or_insert_with(|| {
                    let token: String = AesKey::random().as_bytes()[..15]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect();
                    let expiry =
                        chrono::Utc::now() + chrono::Duration::minutes(TOKEN_TTL_MINUTES + 330);
                    let s = Arc::new(Session {
                        gstin: key.0.clone(),
                        user: p.user.clone(),
                        token,
                        sek: AesKey::random(),
                        expiry_ist: expiry.format("%Y-%m-%d %H:%M:%S").to_string(),
                    });
                    self.by_token
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(s.token.clone(), s.clone());
                    s
                })
                .clone()
        };
        let reply = serde_json::json!({
            "Status": 1,
            "Data": {
                "ClientId": header(h, "client_id"),
                "UserName": session.user,
                "AuthToken": session.token,
                "Sek": app_key.encrypt_b64(session.sek.as_bytes()),
                "TokenExpiry": session.expiry_ist,
            },
            "ErrorDetails": null,
            "InfoDtls": null,
        });
        Ok(reply.to_string().into_bytes())
    }

    fn generate(&self, h: &HeaderMap, body: &[u8]) -> NicResult<Vec<u8>> {
        // Authorise: client, then the token's (GSTIN, user) against the headers.
        self.check_client(h)?;
        let gstin = header(h, "gstin").ok_or(("1004", "Header GSTIN is required".into()))?;
        let token = header(h, "authtoken").ok_or(("1005", "Invalid Token".into()))?;
        let session = self
            .by_token
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(token)
            .cloned()
            .ok_or(("1005", "Invalid Token".into()))?;
        if !session.gstin.eq_ignore_ascii_case(gstin) {
            return Err(("1015", "Invalid GSTIN for this user".into()));
        }
        if header(h, "user_name") != Some(session.user.as_str()) {
            return Err(("1005", "Invalid Token".into()));
        }

        // Decode: `Data` is the invoice itself (enriched-GSP form) or base64(AES(SEK, JSON)).
        let env: Envelope = serde_json::from_slice(body)
            .map_err(|_| ("2140", "body is not {\"Data\": ...}".into()))?;
        let raw = env.data.get();
        let encrypted = raw.starts_with('"');
        let decrypted;
        let invoice_bytes: &[u8] = if encrypted {
            let text: Cow<str> =
                serde_json::from_str(raw).map_err(|_| ("2140", "bad Data string".into()))?;
            // The scalar engine, on purpose: the upstream is the yardstick, and gstgate's own
            // base64 (vector code) must not make it cheaper.
            let cipher = B64
                .decode(text.trim())
                .map_err(|_| ("2140", "Data is not base64".into()))?;
            decrypted = session
                .sek
                .decrypt(&cipher)
                .map_err(|_| ("2140", "Data could not be decrypted with the SEK".into()))?;
            &decrypted
        } else {
            raw.as_bytes()
        };
        let inv: Invoice = serde_json::from_slice(invoice_bytes)
            .map_err(|e| ("2140", format!("invalid invoice JSON: {e}")))?;

        // Validate and derive the IRN as the simulator does.
        if !inv.seller.gstin.eq_ignore_ascii_case(&session.gstin) {
            return Err((
                "2143",
                "Seller GSTIN does not belong to the user GSTIN".into(),
            ));
        }
        let typ = inv.doc.typ.trim().to_ascii_uppercase();
        if !matches!(typ.as_str(), "INV" | "CRN" | "DBN") {
            return Err(("2140", "DocDtls.Typ must be INV, CRN or DBN".into()));
        }
        let no = inv.doc.no.trim().to_ascii_uppercase();
        let no_ok = (1..=16).contains(&no.len())
            && no
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'/' || c == b'-')
            && no
                .bytes()
                .next()
                .is_some_and(|c| c.is_ascii_alphanumeric() && c != b'0');
        if !no_ok {
            return Err(("2140", "DocDtls.No is invalid".into()));
        }
        let date = chrono::NaiveDate::parse_from_str(inv.doc.dt.trim(), "%d/%m/%Y")
            .map_err(|_| ("2140", "DocDtls.Dt must be dd/mm/yyyy".into()))?;
        let fy_start = if chrono::Datelike::month(&date) >= 4 {
            chrono::Datelike::year(&date)
        } else {
            chrono::Datelike::year(&date) - 1
        };
        let fy = format!("{fy_start}-{:02}", (fy_start + 1) % 100);
        let digest = Sha256::digest(format!("{}{typ}{no}{fy}", session.gstin).as_bytes());
        let irn: String = digest.iter().map(|b| format!("{b:02x}")).collect();

        let existing = self
            .documents
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&irn)
            .cloned();
        let data = match existing {
            Some(d) => d,
            None => {
                let d =
                    self.new_document(&session, &irn, &typ, &no, inv.doc.dt.trim(), invoice_bytes);
                self.documents
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(irn)
                    .or_insert(d)
                    .clone()
            }
        };
        // The envelope around `Data`, written by hand: `data` is JSON already.
        let mut out = Vec::with_capacity(data.len() * 2 + 64);
        out.extend_from_slice(br#"{"Status":1,"Data":"#);
        if encrypted {
            out.push(b'"');
            let sealed = session.sek.encrypt(data.as_bytes());
            out.extend_from_slice(B64.encode(sealed).as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(data.as_bytes());
        }
        out.extend_from_slice(br#","ErrorDetails":null,"InfoDtls":null}"#);
        Ok(out)
    }

    /// A new document's `Data`, like NIC's: the signed invoice carries the invoice itself.
    fn new_document(
        &self,
        session: &Session,
        irn: &str,
        typ: &str,
        no: &str,
        dt: &str,
        invoice: &[u8],
    ) -> Arc<str> {
        let ack_no = self.ack_no.fetch_add(1, Ordering::Relaxed);
        let ack_dt = (chrono::Utc::now() + chrono::Duration::minutes(330))
            .format("%Y-%m-%d %H:%M:%S")
            .to_string();
        let qr = format!(
            r#"{{"SellerGstin":"{}","DocNo":"{no}","DocTyp":"{typ}","DocDt":"{dt}","Irn":"{irn}","IrnDt":"{ack_dt}"}}"#,
            session.gstin
        );
        let data = serde_json::json!({
            "AckNo": ack_no,
            "AckDt": ack_dt,
            "Irn": irn,
            "SignedInvoice": pseudo_jwt(std::str::from_utf8(invoice).unwrap_or("{}")),
            "SignedQRCode": pseudo_jwt(&qr),
            "Status": "ACT",
            "EwbNo": null,
            "EwbDt": null,
            "EwbValidTill": null,
            "Remarks": null,
        });
        Arc::from(data.to_string())
    }
}

/// A JWT-shaped string like NIC's signed content (`{"data": "<json>", "iss": "NIC"}`); the
/// third part is a SHA-256 digest standing in for the RS256 signature.
fn pseudo_jwt(data: &str) -> String {
    const HEADER: &str = r#"{"alg":"RS256","kid":"BENCH","typ":"JWT"}"#;
    let payload = serde_json::json!({"data": data, "iss": "NIC"}).to_string();
    let head = B64URL.encode(HEADER);
    let body = B64URL.encode(payload);
    let digest = Sha256::digest(format!("{head}.{body}").as_bytes());
    format!("{head}.{body}.{}", B64URL.encode(digest))
}
