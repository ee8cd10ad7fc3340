//! The simulator: a `gstgate sim` process, started with the shared RSA key, and its control
//! endpoints.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::OnceLock;

use serde_json::Value;
use tokio::process::{Child, Command};

use super::process::{addr_after, capture_stream, wait_for_line, Captured, BIN};
use super::{CLIENT_ID, CLIENT_SECRET, GSTIN, PASSWORD, USER};

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
    /// Everything it wrote to stderr (its logs).
    pub logs: Captured,
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
            logs: stderr,
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

    /// `GET /_sim/documents`: the IRNs and e-way bills the simulator holds, with counts.
    pub async fn documents(&self) -> Value {
        self.get_json("/_sim/documents").await
    }

    /// The base URLs of the e-invoice portals, `NIC1` (this address) first.
    pub async fn irp_urls(&self) -> Vec<String> {
        let irps = self.get_json("/_sim/irps").await;
        irps.as_array()
            .expect("/_sim/irps is a list")
            .iter()
            .map(|p| format!("http://{}", p["addr"].as_str().expect("addr")))
            .collect()
    }

    /// Stops the simulator process.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }
}
