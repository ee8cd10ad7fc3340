//! The gateway: a `gstgate serve` process, requests to its proxy and admin listeners, and the
//! shape every error answer must have.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::process::{Child, Command};

use super::process::{addr_after, capture_stream, wait_for_line, Captured, BIN};
use super::{
    gateway_config, invoice, GwOpts, Sim, ADMIN_TOKEN, API_KEY, CLIENT_SECRET, GSTIN, USER,
};

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
    /// The configuration file it was started with (rewrite it to test a reload).
    pub config: std::path::PathBuf,
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
            .args(["--log-format", opts.log_format])
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
        let scheme = if line.contains("proxy https://") {
            "https"
        } else {
            "http"
        };
        let proxy = addr_after(&line, &format!("proxy {scheme}://"));
        let admin = addr_after(&line, &format!("admin {scheme}://"));
        Gateway {
            proxy,
            admin,
            logs,
            stdout,
            config: path,
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

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// The exit status if the process exits within `limit`, else `None` (it is still running).
    pub async fn wait_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(limit, self.child.wait())
            .await
            .ok()
            .map(Result::unwrap)
    }

    /// Waits for the process to exit and returns its status.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(Duration::from_secs(60), self.child.wait())
            .await
            .expect("gateway did not exit")
            .unwrap()
    }
}

/// Runs `gstgate serve` with the given config text, expecting it to refuse to start, and
/// returns what it wrote to stderr. Fails if it is still running after 30 s (it started).
pub async fn serve_refused(config: &str, opts: &GwOpts) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gstgate.toml");
    std::fs::write(&path, config).unwrap();
    let child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .env("RUST_LOG", opts.rust_log)
        .env("TEST_CLIENT_SECRET", CLIENT_SECRET)
        .envs(opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn gstgate serve");
    let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("gstgate serve started instead of refusing to")
        .unwrap();
    assert!(
        !out.status.success(),
        "gstgate serve exited successfully: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
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
