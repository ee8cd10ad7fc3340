//! Test harness: the real `gstgate` binary as simulator and as gateway, on loopback ports.
//!
//! Each helper starts a process, waits for its ready line on stdout (the signal that it
//! listens), and kills it when dropped. The simulator's RSA key is generated once per target
//! directory so that tests don't pay for RSA key generation each time.

#![allow(dead_code)]

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_gstgate");
/// The caller API key used by the default client.
pub const API_KEY: &str = "test-key-0123456789";
/// The admin token of test gateways.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
/// The upstream client id and secret the simulator accepts.
pub const CLIENT_ID: &str = "test-client-id";
/// …
pub const CLIENT_SECRET: &str = "test-client-secret-Zx81";
/// The default taxpayer.
pub const GSTIN: &str = "27AAPFU0939F1ZV";
/// The default API user and password.
pub const USER: &str = "api_user";
/// …
pub const PASSWORD: &str = "s3cret-Passw0rd!";

/// The mod-36 check character of a GSTIN's first 14 characters (PROTOCOL.md §5).
pub fn gstin_check_char(first14: &str) -> char {
    const A: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let sum: usize = first14
        .bytes()
        .enumerate()
        .map(|(i, c)| {
            let v = A.iter().position(|a| *a == c).unwrap() * if i % 2 == 0 { 1 } else { 2 };
            v / 36 + v % 36
        })
        .sum();
    A[(36 - sum % 36) % 36] as char
}

/// The n-th of a family of valid GSTINs (state 27, distinct PANs).
pub fn gstin_n(n: usize) -> String {
    let first = format!("27AAPFU{:04}F1Z", n % 10000);
    format!("{first}{}", gstin_check_char(&first))
}

fn tmp_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// A private key shared by every simulator in this target directory, made once.
pub fn sim_key_file() -> PathBuf {
    static KEY: OnceLock<PathBuf> = OnceLock::new();
    KEY.get_or_init(|| {
        let path = tmp_dir().join("sim-test-key.pem");
        if !path.exists() {
            let pair = gstgate::crypto::KeyPair::generate().unwrap();
            let pem = pair.to_pkcs8_pem().unwrap();
            // Write then rename: test binaries may race to create it.
            let tmp = tmp_dir().join(format!("sim-test-key.{}.tmp", std::process::id()));
            std::fs::write(&tmp, pem.as_bytes()).unwrap();
            std::fs::rename(&tmp, &path).unwrap();
        }
        path
    })
    .clone()
}

/// Collected output of a child stream, for log assertions.
#[derive(Clone, Default)]
pub struct Captured(Arc<CapturedInner>);

#[derive(Default)]
struct CapturedInner {
    text: Mutex<String>,
    grew: tokio::sync::Notify,
}

impl Captured {
    /// Everything captured so far.
    pub fn text(&self) -> String {
        self.0.text.lock().unwrap().clone()
    }

    fn push_line(&self, line: &str) {
        {
            let mut text = self.0.text.lock().unwrap();
            text.push_str(line);
            text.push('\n');
        }
        self.0.grew.notify_waiters();
    }

    /// Waits (up to 30 s) until the captured output contains `marker`.
    pub async fn wait_for(&self, marker: &str) {
        let found = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                // Registered before the check, so a line pushed in between still wakes us.
                let grew = self.0.grew.notified();
                if self.text().contains(marker) {
                    return;
                }
                grew.await;
            }
        })
        .await;
        assert!(
            found.is_ok(),
            "no `{marker}` within 30 s; output:\n{}",
            self.text()
        );
    }
}

/// Reads `stream` line by line until `marker` is seen; returns that line, and keeps
/// capturing the rest in the background. `stderr` is quoted if the process exits first.
async fn wait_for_line<R>(stream: R, marker: &str, capture: Captured, stderr: &Captured) -> String
where
    R: AsyncRead + Unpin + Send + 'static,
{
    let mut lines = BufReader::new(stream).lines();
    let found = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            capture.push_line(&line);
            if line.contains(marker) {
                return line;
            }
        }
        panic!(
            "process exited before printing `{marker}`; output:\n{}\nstderr:\n{}",
            capture.text(),
            stderr.text()
        );
    })
    .await
    .unwrap_or_else(|_| panic!("no `{marker}` within 60 s"));
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            capture.push_line(&line);
        }
    });
    found
}

fn capture_stream<R>(stream: R, capture: Captured)
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            capture.push_line(&line);
        }
    });
}

fn addr_after(line: &str, prefix: &str) -> SocketAddr {
    let start = line
        .find(prefix)
        .unwrap_or_else(|| panic!("`{prefix}` not in `{line}`"))
        + prefix.len();
    let rest = &line[start..];
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|e| panic!("bad address in `{line}`: {e}"))
}

/// Options of a simulator process.
#[derive(Clone)]
pub struct SimOpts {
    /// (GSTIN, user, password) triples.
    pub users: Vec<(String, String, String)>,
    /// Token lifetime.
    pub token_ttl: &'static str,
    /// Force-refresh window.
    pub force_window: &'static str,
    /// Enriched-GSP mode (plain JSON bodies).
    pub plain: bool,
    /// Extra arguments.
    pub extra: Vec<String>,
}

impl Default for SimOpts {
    fn default() -> Self {
        Self {
            users: vec![(GSTIN.into(), USER.into(), PASSWORD.into())],
            token_ttl: "6h",
            force_window: "10m",
            plain: false,
            extra: vec![],
        }
    }
}

/// A running simulator process.
pub struct Sim {
    /// Its address.
    pub addr: SocketAddr,
    /// Its public key file.
    pub public_key: PathBuf,
    child: Child,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

impl Sim {
    /// Starts a simulator and waits until it listens.
    pub async fn start(opts: SimOpts) -> Sim {
        let dir = tempfile::tempdir().unwrap();
        let public_key = dir.path().join("sim-public.pem");
        let mut cmd = Command::new(BIN);
        cmd.arg("sim")
            .args(["--listen", "127.0.0.1:0"])
            .arg("--key-file")
            .arg(sim_key_file())
            .arg("--public-key-out")
            .arg(&public_key)
            .args([
                "--token-ttl",
                opts.token_ttl,
                "--force-window",
                opts.force_window,
            ])
            .args(["--client", &format!("{CLIENT_ID}:{CLIENT_SECRET}")]);
        for (g, u, p) in &opts.users {
            cmd.args(["--user", &format!("{g}:{u}:{p}")]);
        }
        if opts.plain {
            cmd.arg("--plain");
        }
        cmd.args(&opts.extra);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn gstgate sim");
        let stderr = Captured::default();
        capture_stream(child.stderr.take().unwrap(), stderr.clone());
        let line = wait_for_line(
            child.stdout.take().unwrap(),
            "listening on",
            Captured::default(),
            &stderr,
        )
        .await;
        let addr = addr_after(&line, "http://");
        Sim {
            addr,
            public_key,
            child,
            _dir: dir,
            http: reqwest::Client::new(),
        }
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `GET /_sim/counters`.
    pub async fn counters(&self) -> Value {
        self.get_json("/_sim/counters").await
    }

    /// A per-GSTIN counter: 0 when the GSTIN was never seen, a panic when the simulator has
    /// no counter of that name (a misspelt name must not pass as a zero).
    pub async fn count(&self, gstin: &str, name: &str) -> u64 {
        let counters = self.counters().await;
        assert!(
            counters[name].is_u64(),
            "the simulator has no counter `{name}`: {counters}"
        );
        counters["per_gstin"][gstin][name].as_u64().unwrap_or(0)
    }

    /// GET a control endpoint as JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        self.http
            .get(format!("{}{path}", self.url()))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// POST JSON to a control endpoint.
    pub async fn control(&self, path: &str, body: Value) {
        let res = self
            .http
            .post(format!("{}{path}", self.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
    }

    /// Clears injected faults.
    pub async fn clear_faults(&self) {
        self.http
            .delete(format!("{}/_sim/faults", self.url()))
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap();
    }

    /// The `limit` most recent requests the simulator received, oldest first.
    pub async fn requests(&self, limit: usize) -> Vec<Value> {
        let v = self
            .get_json(&format!("/_sim/requests?limit={limit}"))
            .await;
        match v {
            Value::Array(a) => a,
            other => panic!("/_sim/requests is not a list: {other}"),
        }
    }

    /// Stops the simulator process.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Options of a gateway process.
#[derive(Clone)]
pub struct GwOpts {
    /// `gateway` or `passthrough`.
    pub encryption: &'static str,
    /// Upstream base URL; defaults to the simulator's.
    pub base_url: Option<String>,
    /// Credentials: (GSTIN, user, password).
    pub credentials: Vec<(String, String, String)>,
    /// Clients: (name, key, gstins).
    pub clients: Vec<(String, String, Vec<String>)>,
    /// `refresh_before`.
    pub refresh_before: &'static str,
    /// Upstream `timeout`.
    pub timeout: &'static str,
    /// Upstream `connect_timeout`.
    pub connect_timeout: &'static str,
    /// `max_logins`.
    pub max_logins: u32,
    /// `max_body_bytes`.
    pub max_body_bytes: usize,
    /// `shutdown_grace`.
    pub shutdown_grace: &'static str,
    /// `RUST_LOG`.
    pub rust_log: &'static str,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Extra TOML lines at the end of the `[[upstream]]` table (may open `[upstream.headers]`).
    pub upstream_extra: String,
    /// `gstin_checksum`.
    pub gstin_checksum: &'static str,
    /// The upstreams, by API kind; each is named after its kind and every credential logs
    /// in to all of them.
    pub apis: Vec<&'static str>,
    /// Extra TOML lines in each `[[credential]]` table.
    pub credential_extra: String,
    /// Extra TOML at the end of the file (e.g. an `[alerts]` table).
    pub extra_toml: String,
}

impl Default for GwOpts {
    fn default() -> Self {
        Self {
            encryption: "gateway",
            base_url: None,
            credentials: vec![(GSTIN.into(), USER.into(), PASSWORD.into())],
            clients: vec![("billing".into(), API_KEY.into(), vec!["*".into()])],
            refresh_before: "10m",
            timeout: "5s",
            connect_timeout: "2s",
            max_logins: gstgate::config::DEFAULT_MAX_LOGINS,
            max_body_bytes: 65536,
            shutdown_grace: "30s",
            rust_log: "info",
            env: vec![],
            upstream_extra: String::new(),
            gstin_checksum: "enforce",
            apis: vec!["einvoice"],
            credential_extra: String::new(),
            extra_toml: String::new(),
        }
    }
}

/// The path prefixes and auth path the simulator serves for an API kind.
pub fn api_paths(api: &str) -> (&'static str, &'static str) {
    match api {
        "einvoice" => (
            r#"["/eivital/", "/eicore/", "/eiewb/"]"#,
            "/eivital/v1.04/auth",
        ),
        "ewaybill" => (r#"["/ewaybillapi/"]"#, "/ewaybillapi/v1.03/auth"),
        "gstn" => (r#"["/taxpayerapi/"]"#, "/taxpayerapi/v1.0/authenticate"),
        other => panic!("unknown api {other}"),
    }
}

/// Renders a gateway config for a simulator.
pub fn gateway_config(public_key: &Path, base_url: &str, o: &GwOpts) -> String {
    let mut s = format!(
        r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
admin_token = "{ADMIN_TOKEN}"
max_body_bytes = {max_body}
request_timeout = "60s"
shutdown_grace = "{grace}"

[store]
backend = "memory"

"#,
        max_body = o.max_body_bytes,
        grace = o.shutdown_grace,
    );
    for api in &o.apis {
        let (routes, auth_path) = api_paths(api);
        s.push_str(&format!(
            r#"
[[upstream]]
name = "{api}"
api = "{api}"
base_url = "{base_url}"
routes = {routes}
auth_path = "{auth_path}"
public_key = "{key}"
encryption = "{enc}"
client_id = "{CLIENT_ID}"
client_secret = "${{TEST_CLIENT_SECRET}}"
refresh_before = "{refresh}"
gstin_checksum = "{checksum}"
timeout = "{timeout}"
connect_timeout = "{connect}"
max_logins = {max_logins}
{extra}
"#,
            key = public_key.display(),
            enc = o.encryption,
            refresh = o.refresh_before,
            timeout = o.timeout,
            connect = o.connect_timeout,
            max_logins = o.max_logins,
            checksum = o.gstin_checksum,
            extra = o.upstream_extra,
        ));
    }
    let upstreams: Vec<String> = o.apis.iter().map(|a| format!("\"{a}\"")).collect();
    for (g, u, p) in &o.credentials {
        s.push_str(&format!(
            "\n[[credential]]\ngstin = \"{g}\"\nusername = \"{u}\"\npassword = \"{p}\"\nupstreams = [{}]\n{}\n",
            upstreams.join(", "),
            o.credential_extra
        ));
    }
    for (name, key, gstins) in &o.clients {
        let list: Vec<String> = gstins.iter().map(|g| format!("\"{g}\"")).collect();
        s.push_str(&format!(
            "\n[[client]]\nname = \"{name}\"\napi_key_sha256 = \"{}\"\ngstins = [{}]\n",
            gstgate::cli::hex_sha256(key.as_bytes()),
            list.join(", ")
        ));
    }
    s.push_str(&o.extra_toml);
    s
}

/// A running gateway process.
pub struct Gateway {
    /// Proxy address.
    pub proxy: SocketAddr,
    /// Admin address.
    pub admin: SocketAddr,
    /// Everything the process wrote to stderr (its logs).
    pub logs: Captured,
    /// Everything it wrote to stdout.
    pub stdout: Captured,
    child: Child,
    _dir: tempfile::TempDir,
    /// An HTTP client.
    pub http: reqwest::Client,
}

impl Gateway {
    /// Starts a gateway in front of `sim`.
    pub async fn start(sim: &Sim, opts: GwOpts) -> Gateway {
        let base = opts.base_url.clone().unwrap_or_else(|| sim.url());
        Self::start_with_config(&gateway_config(&sim.public_key, &base, &opts), &opts).await
    }

    /// Starts a gateway with the given config text.
    pub async fn start_with_config(config: &str, opts: &GwOpts) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gstgate.toml");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(config.as_bytes())
            .unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("serve")
            .arg("--config")
            .arg(&path)
            .args(["--log-format", "json"])
            .env("RUST_LOG", opts.rust_log)
            .env("TEST_CLIENT_SECRET", CLIENT_SECRET)
            .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn gstgate serve");
        let logs = Captured::default();
        capture_stream(child.stderr.take().unwrap(), logs.clone());
        let stdout = Captured::default();
        let line = wait_for_line(
            child.stdout.take().unwrap(),
            "gstgate ready",
            stdout.clone(),
            &logs,
        )
        .await;
        let proxy = addr_after(&line, "proxy http://");
        let admin = addr_after(&line, "admin http://");
        Gateway {
            proxy,
            admin,
            logs,
            stdout,
            child,
            _dir: dir,
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(512)
                .build()
                .unwrap(),
        }
    }

    /// A request to the proxy with the default API key and GSTIN headers.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.request_for(method, path, GSTIN)
    }

    /// A request to the proxy with the default API key, as `gstin`.
    pub fn request_for(
        &self,
        method: reqwest::Method,
        path: &str,
        gstin: &str,
    ) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("http://{}{path}", self.proxy))
            .header("x-api-key", API_KEY)
            .header("gstin", gstin)
    }

    /// POSTs a generate-IRN for document `doc_no` as `gstin`.
    pub async fn generate(&self, gstin: &str, doc_no: &str) -> reqwest::Response {
        self.request_for(reqwest::Method::POST, "/eicore/v1.03/Invoice", gstin)
            .json(&invoice(gstin, doc_no))
            .send()
            .await
            .unwrap()
    }

    /// `POST /admin/sessions/einvoice/{gstin}/refresh` with the admin token.
    pub async fn admin_refresh(&self, gstin: &str) -> reqwest::Response {
        self.admin_post(&format!("/admin/sessions/einvoice/{gstin}/refresh"), None)
            .await
    }

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

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Waits for the process to exit and returns its status.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("gateway did not exit")
            .unwrap()
    }
}

/// One series' value from Prometheus text: 0 when the series has not been created yet, but a
/// panic when no metric family of that name exists at all, so a misspelt name cannot pass as
/// a zero.
pub fn metric_value(text: &str, series: &str) -> f64 {
    let name = series.split('{').next().unwrap_or(series);
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
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.strip_prefix(' '))
        })
        .map(|v| v.split_whitespace().next().unwrap().parse().unwrap())
        .unwrap_or(0.0)
}

/// A minimal but complete NIC e-invoice (schema 1.1) for a seller.
pub fn invoice(seller: &str, doc_no: &str) -> Value {
    json!({
        "Version": "1.1",
        "TranDtls": {"TaxSch": "GST", "SupTyp": "B2B", "RegRev": "N", "IgstOnIntra": "N"},
        "DocDtls": {"Typ": "INV", "No": doc_no, "Dt": "20/11/2026"},
        "SellerDtls": {"Gstin": seller, "LglNm": "Seller Pvt Ltd", "Addr1": "1 MG Road", "Loc": "Mumbai", "Pin": 400001, "Stcd": "27"},
        "BuyerDtls": {"Gstin": "27AAACR5055K1Z7", "LglNm": "Buyer Ltd", "Pos": "27", "Addr1": "2 FC Road", "Loc": "Pune", "Pin": 411001, "Stcd": "27"},
        "ItemList": [{"SlNo": "1", "IsServc": "N", "HsnCd": "1001", "Qty": 10, "Unit": "NOS", "UnitPrice": 100.0, "TotAmt": 1000.0, "AssAmt": 1000.0, "GstRt": 18.0, "CgstAmt": 90.0, "SgstAmt": 90.0, "TotItemVal": 1180.0}],
        "ValDtls": {"AssVal": 1000.0, "CgstVal": 90.0, "SgstVal": 90.0, "TotInvVal": 1180.0}
    })
}

/// Asserts a problem+json response and returns its body.
pub async fn expect_problem(res: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(res.status().as_u16(), status, "status");
    let ct = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert!(res.headers().contains_key("x-request-id"));
    let body: Value = res.json().await.unwrap();
    assert_eq!(ct, "application/problem+json", "content type of {body}");
    assert_eq!(body["code"], code, "problem {body}");
    assert_eq!(body["status"], status);
    assert!(body["remedy"].as_str().is_some_and(|r| !r.is_empty()));
    body
}

impl Gateway {
    /// `POST` to the admin listener with the admin token and an optional JSON body.
    pub async fn admin_post(&self, path: &str, body: Option<Value>) -> reqwest::Response {
        let mut req = self
            .http
            .post(format!("http://{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    /// The rows of `GET /admin/sessions`.
    pub async fn admin_sessions(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(format!("http://{}/admin/sessions", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v["sessions"]
            .as_array()
            .cloned()
            .unwrap_or_else(|| panic!("/admin/sessions has no `sessions` list: {v}"))
    }

    /// The state `/admin/sessions` shows for (upstream, GSTIN).
    pub async fn session_state(&self, upstream: &str, gstin: &str) -> String {
        self.admin_sessions()
            .await
            .iter()
            .find(|s| s["upstream"] == upstream && s["gstin"] == gstin)
            .and_then(|s| s["state"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

impl Gateway {
    /// The OTP flow an operator follows for a GSTN session on the `gstn` upstream: ask for an
    /// OTP, read it (from the simulator, standing in for the taxpayer's phone), submit it.
    /// Returns the OTP.
    pub async fn start_gstn_session(&self, sim: &Sim, gstin: &str) -> String {
        let path = format!("/admin/sessions/gstn/{gstin}/otp");
        let res = self.admin_post(&format!("{path}-request"), None).await;
        assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
        let otp = sim
            .get_json(&format!("/_sim/otp?gstin={gstin}&username={USER}"))
            .await["otp"]
            .as_str()
            .expect("the simulator issued an OTP")
            .to_owned();
        let res = self.admin_post(&path, Some(json!({ "otp": otp }))).await;
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        otp
    }
}

/// Sends `head` (and `body`) on a raw connection to `addr` and returns everything the server
/// writes until it closes, failing after `within`.
pub async fn raw_exchange(
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
    within: Duration,
) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut out))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "no complete answer within {within:?}; got {:?}",
                String::from_utf8_lossy(&out)
            )
        })
        .unwrap();
    String::from_utf8(out).unwrap()
}

/// The status, lower-cased head and JSON body of a raw HTTP/1.1 response.
pub fn parse_raw(text: &str) -> (u16, String, Value) {
    let (head, body) = text.split_once("\r\n\r\n").expect("a complete head");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text}"));
    (status, head.to_ascii_lowercase(), body)
}
