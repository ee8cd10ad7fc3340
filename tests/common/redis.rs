//! A real `redis-server` on a loopback port of its own, for the shared-store tests. The test
//! script installs Redis when it is missing; `REDIS_SERVER` names another binary.

use std::net::TcpListener;
use std::process::Stdio;

use tokio::process::{Child, Command};

use super::process::{wait_for_line, Captured};

/// A running Redis server, killed when dropped.
pub struct RedisServer {
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Its log.
    pub log: Captured,
    /// TLS only, with this certificate and key (PEM files).
    tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    /// More `redis-server` arguments.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it accepts connections.
    pub async fn start() -> RedisServer {
        Self::start_with(None, &[]).await
    }

    /// Starts a server that speaks only TLS, with the certificate and key in `cert` and
    /// `key`, and `extra` arguments (ACL users, say).
    pub async fn start_tls(
        cert: &std::path::Path,
        key: &std::path::Path,
        extra: &[&str],
    ) -> RedisServer {
        Self::start_with(Some((cert.to_owned(), key.to_owned())), extra).await
    }

    async fn start_with(
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
        extra: &[&str],
    ) -> RedisServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            log: Captured::default(),
            tls,
            extra: extra.iter().map(|a| a.to_string()).collect(),
        };
        server.run().await;
        server
    }

    async fn run(&mut self) {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(&bin);
        cmd.args(["--bind", "127.0.0.1"]);
        match &self.tls {
            None => cmd.args(["--port", &self.port.to_string()]),
            Some((cert, key)) => cmd
                .args(["--port", "0", "--tls-port", &self.port.to_string()])
                .arg("--tls-cert-file")
                .arg(cert)
                .arg("--tls-key-file")
                .arg(key)
                .args(["--tls-auth-clients", "no"]),
        };
        let mut child = cmd
            .args(&self.extra)
            // Persistence on, as in production: what a scan of the data files finds matters.
            .args(["--appendonly", "yes", "--save", ""])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{bin}` ({e}): install Redis, or run `bash scripts/test.sh`")
            });
        wait_for_line(
            child.stdout.take().unwrap(),
            "Ready to accept connections",
            self.log.clone(),
            &Captured::default(),
        )
        .await;
        self.child = Some(child);
    }

    /// The URL gstgate is configured with.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Its data directory (append-only file and dumps).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Kills the server (SIGKILL) and waits for it to be gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts it again on the same port with the same data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.run().await;
    }

    /// A client connection, for the test's own look at the keys.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}
