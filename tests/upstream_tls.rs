//! TLS to the upstream, as every real GSP is reached: the certificate is verified (an
//! unknown CA is refused), and an operator's `ca_file` makes a private CA trusted.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use common::*;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};

/// A private CA and a server certificate for 127.0.0.1 signed by it.
struct ServerPki {
    ca_pem: String,
    cert: CertificateDer<'static>,
    key: Vec<u8>,
}

fn pki() -> ServerPki {
    let ca = Pki::new("gstgate test upstream CA");
    let issued = ca.issue(&["127.0.0.1"]);
    ServerPki {
        ca_pem: ca.ca_pem(),
        cert: CertificateDer::from(issued.cert_der),
        key: issued.key_der,
    }
}

/// Terminates TLS in front of the (plain HTTP) simulator; counts completed handshakes.
async fn tls_front(pki: &ServerPki, backend: String) -> (String, Arc<AtomicUsize>) {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![pki.cert.clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pki.key.clone())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let handshakes = Arc::new(AtomicUsize::new(0));
    let count = handshakes.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (acceptor, backend, count) = (acceptor.clone(), backend.clone(), count.clone());
            tokio::spawn(async move {
                // A refused handshake (the client distrusts the certificate) ends here.
                let Ok(mut tls) = acceptor.accept(stream).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                let mut plain = TcpStream::connect(&backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (format!("https://127.0.0.1:{}", addr.port()), handshakes)
}

#[tokio::test]
async fn upstream_tls_is_verified_and_a_private_ca_can_be_trusted() {
    let sim = Sim::start(SimOpts::default()).await;
    let pki = pki();
    let backend = sim.url().trim_start_matches("http://").to_owned();
    let (https_url, handshakes) = tls_front(&pki, backend).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("gsp-ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).unwrap();

    // Trusted through ca_file: the whole e-invoice exchange runs over TLS.
    let trusted = Gateway::start(
        &sim,
        GwOpts {
            base_url: Some(https_url.clone()),
            upstream_extra: format!("ca_file = \"{}\"\n", ca_file.display()),
            ..GwOpts::default()
        },
    )
    .await;
    let res = trusted.generate(GSTIN, "TLS/1").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["Status"], 1, "{body}");
    assert!(body["Data"]["Irn"].is_string(), "{body}");
    assert!(handshakes.load(Ordering::SeqCst) >= 1);
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1);

    // The same upstream without the CA file: the certificate is refused, nothing is sent.
    let untrusted = Gateway::start(
        &sim,
        GwOpts {
            base_url: Some(https_url),
            ..GwOpts::default()
        },
    )
    .await;
    let before = handshakes.load(Ordering::SeqCst);
    expect_problem(
        untrusted.generate(GSTIN, "TLS/2").await,
        502,
        "upstream_unavailable",
    )
    .await;
    assert_eq!(handshakes.load(Ordering::SeqCst), before);
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 1);
}

/// `connect_timeout` bounds the whole connection set-up, TLS included: an upstream that takes
/// the TCP connection and never answers the handshake is unreachable (502, and the login is
/// not counted), not a request that timed out at the upstream (504).
#[tokio::test]
async fn a_stalled_tls_handshake_is_a_connect_failure() {
    let sim = Sim::start(SimOpts::default()).await;
    // Accepts (the kernel does, into the backlog) and never speaks TLS.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let gw = Gateway::start(
        &sim,
        GwOpts {
            base_url: Some(format!("https://{}", silent.local_addr().unwrap())),
            connect_timeout: "1s",
            timeout: "20s",
            ..GwOpts::default()
        },
    )
    .await;
    let started = std::time::Instant::now();
    expect_problem(
        gw.generate(GSTIN, "TLS/3").await,
        502,
        "upstream_unavailable",
    )
    .await;
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    drop(silent);
}

/// A `ca_file` that does not vouch for the upstream's certificate: the caller gets the same
/// 502 `upstream_unavailable` as for any connection failure, with nothing of the TLS failure
/// (or the upstream's address) in the body, while the gateway's log names the TLS handshake
/// and rustls's reason, not just "cannot connect".
#[tokio::test]
async fn an_untrusted_certificate_is_logged_as_a_tls_failure_and_kept_out_of_the_body() {
    let sim = Sim::start(SimOpts::default()).await;
    let served = pki();
    let backend = sim.url().trim_start_matches("http://").to_owned();
    let (https_url, handshakes) = tls_front(&served, backend).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("another-ca.pem");
    std::fs::write(&ca_file, pki().ca_pem).unwrap();
    let gw = Gateway::start(
        &sim,
        GwOpts {
            base_url: Some(https_url),
            upstream_extra: format!("ca_file = \"{}\"\n", ca_file.display()),
            ..GwOpts::default()
        },
    )
    .await;

    let body = expect_problem(
        gw.generate(GSTIN, "TLS/4").await,
        502,
        "upstream_unavailable",
    )
    .await;
    assert_eq!(
        body["detail"], "upstream unavailable: cannot connect to the upstream",
        "{body}"
    );
    let text = body.to_string();
    for leak in ["certificate", "handshake", "127.0.0.1"] {
        assert!(!text.contains(leak), "`{leak}` in the problem body {text}");
    }
    assert_eq!(handshakes.load(Ordering::SeqCst), 0);
    assert_eq!(sim.count(GSTIN, "auth_calls").await, 0);

    gw.logs.wait_for("login failed").await;
    let logs = gw.logs.text();
    let failed: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["message"] == "login failed")
        .collect();
    assert!(!failed.is_empty(), "no `login failed` line in\n{logs}");
    for line in failed {
        let error = line["error"].as_str().unwrap_or_default();
        assert!(
            error.contains("TLS handshake with the upstream failed")
                && error.contains("invalid peer certificate"),
            "the log does not give the TLS cause: {line}"
        );
        assert_eq!(line["code"], "upstream_unavailable", "{line}");
    }
    // The request's own access log line names the cause too.
    gw.logs.wait_for("\"message\":\"request\"").await;
    let logs = gw.logs.text();
    let access = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["message"] == "request" && l["status"] == 502)
        .unwrap_or_else(|| panic!("no access log line for the 502 in\n{logs}"));
    let cause = access["cause"].as_str().unwrap_or_default();
    assert!(
        cause.contains("TLS handshake with the upstream failed"),
        "the access log does not give the cause: {access}"
    );
}
