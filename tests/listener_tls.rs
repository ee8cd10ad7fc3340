//! HTTPS on both listeners, with certificates from a private CA: the proxy listener requires
//! a client certificate when `tls_client_ca` is set, the admin listener does not, a
//! certificate file replaced on disk is served to new connections without a restart, plain
//! HTTP sent to either gets 400 `https_required`, and SIGTERM still stops the process (after
//! flushing the store) while the files are watched.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};

/// The DER certificate a TLS server at `addr` presents, trusting `ca_pem`.
async fn served_certificate(addr: std::net::SocketAddr, ca_pem: &str) -> Vec<u8> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        let cert: CertificateDer = cert.unwrap();
        roots.add(cert).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test]
async fn both_listeners_serve_https_and_a_replaced_certificate_is_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    let servers = Pki::new("gstgate test server CA");
    let callers = Pki::new("gstgate test client CA");
    let first = servers.issue(&["127.0.0.1"]);
    std::fs::write(path("cert.pem"), &first.cert_pem).unwrap();
    std::fs::write(path("key.pem"), &first.key_pem).unwrap();
    std::fs::write(path("clients.pem"), callers.ca_pem()).unwrap();
    let client = callers.issue(&["billing-app"]);

    let sim = Sim::start(SimOpts::default()).await;
    let opts = GwOpts::default();
    let text = gateway_config(&sim.public_key, &sim.url(), &opts).replacen(
        "[server]\n",
        &format!(
            "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\ntls_client_ca = \"{}\"\n",
            path("cert.pem").display(),
            path("key.pem").display(),
            path("clients.pem").display()
        ),
        1,
    );
    let gw = Gateway::start_with_config(&text, &opts).await;
    assert!(
        gw.stdout.text().contains("proxy https://"),
        "{}",
        gw.stdout.text()
    );

    let ca = reqwest::Certificate::from_pem(servers.ca_pem().as_bytes()).unwrap();
    let with_identity = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca.clone())
        .identity(
            reqwest::Identity::from_pem(
                format!("{}{}", client.cert_pem, client.key_pem).as_bytes(),
            )
            .unwrap(),
        )
        .build()
        .unwrap();
    let without_identity = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(ca)
        .build()
        .unwrap();

    // The proxy, with a client certificate the configured CA signed: served.
    let res = with_identity
        .post(format!("https://{}/eicore/v1.03/Invoice", gw.proxy))
        .header("x-api-key", API_KEY)
        .header("gstin", GSTIN)
        .json(&invoice(GSTIN, "TLS/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    // Without one, the handshake is refused: no request reaches the gateway.
    let refused = without_identity
        .post(format!("https://{}/eicore/v1.03/Invoice", gw.proxy))
        .header("x-api-key", API_KEY)
        .header("gstin", GSTIN)
        .json(&invoice(GSTIN, "TLS/2"))
        .send()
        .await;
    assert!(refused.is_err(), "{refused:?}");
    // Plain HTTP to either TLS listener gets a 400 that says to use https://, not TLS bytes.
    for addr in [gw.admin, gw.proxy] {
        let answer = raw_exchange(
            addr,
            "GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n",
            b"",
            Duration::from_secs(5),
        )
        .await;
        let (status, head, body) = parse_raw(&answer);
        assert_eq!(status, 400, "{answer}");
        assert!(head.contains("application/problem+json"), "{answer}");
        assert!(head.contains("connection: close"), "{answer}");
        assert_eq!(body["code"], "https_required", "{answer}");
        assert!(
            body["remedy"].as_str().unwrap().contains("https://"),
            "{answer}"
        );
    }
    // As an ordinary client sees it; the HTTPS calls after this show TLS is not mistaken for it.
    let res = reqwest::get(format!("http://{}/healthz", gw.admin))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    // The admin listener asks for no client certificate.
    let res = without_identity
        .get(format!("https://{}/healthz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    // A renewed certificate, written over the files: new connections get it.
    assert_eq!(
        served_certificate(gw.admin, &servers.ca_pem()).await,
        first.cert_der
    );
    let second = servers.issue(&["127.0.0.1", "localhost"]);
    let second_der = second.cert_der.clone();
    std::fs::write(path("key.pem"), &second.key_pem).unwrap();
    std::fs::write(path("cert.pem"), &second.cert_pem).unwrap();
    gw.logs.wait_for("TLS certificate reloaded").await;
    assert_eq!(
        served_certificate(gw.admin, &servers.ca_pem()).await,
        second_der
    );
    let res = with_identity
        .post(format!("https://{}/eicore/v1.03/Invoice", gw.proxy))
        .header("x-api-key", API_KEY)
        .header("gstin", GSTIN)
        .json(&invoice(GSTIN, "TLS/3"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());

    // A broken replacement is reported and the running certificate stays.
    std::fs::write(path("cert.pem"), "not a certificate").unwrap();
    gw.logs
        .wait_for("does not load; still serving the previous one")
        .await;
    assert_eq!(
        served_certificate(gw.admin, &servers.ca_pem()).await,
        second_der
    );
}

/// SIGTERM with HTTPS on both listeners and the embedded store: the certificate watcher is
/// stopped, the store is flushed and the process exits 0, well within a supervisor's stop
/// timeout. The watcher's endless loop used to hold shutdown up until SIGKILL.
#[tokio::test]
async fn sigterm_with_https_listeners_flushes_the_store_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    let servers = Pki::new("gstgate test server CA");
    let issued = servers.issue(&["127.0.0.1"]);
    std::fs::write(path("cert.pem"), &issued.cert_pem).unwrap();
    std::fs::write(path("key.pem"), &issued.key_pem).unwrap();

    let sim = Sim::start(SimOpts::default()).await;
    let opts = GwOpts {
        store: format!("path = \"{}\"", path("sessions.redb").display()),
        ..GwOpts::default()
    };
    let text = gateway_config(&sim.public_key, &sim.url(), &opts).replacen(
        "[server]\n",
        &format!(
            "[server]\ntls_cert = \"{}\"\ntls_key = \"{}\"\n",
            path("cert.pem").display(),
            path("key.pem").display()
        ),
        1,
    );
    let mut gw = Gateway::start_with_config(&text, &opts).await;
    let https = reqwest::Client::builder()
        .use_rustls_tls()
        .add_root_certificate(reqwest::Certificate::from_pem(servers.ca_pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    // A session now exists, and the store has something to keep.
    let res = https
        .post(format!("https://{}/eicore/v1.03/Invoice", gw.proxy))
        .header("x-api-key", API_KEY)
        .header("gstin", GSTIN)
        .json(&invoice(GSTIN, "TLS/STOP/1"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let res = https
        .get(format!("https://{}/healthz", gw.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);

    let status = std::process::Command::new("kill")
        .args(["-TERM", &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exited = gw.wait_within(Duration::from_secs(10)).await;
    assert!(
        exited.is_some_and(|s| s.success()),
        "no clean exit within 10 s of SIGTERM ({exited:?}); logs:\n{}",
        gw.logs.text()
    );
    // The process has exited, but its last lines may still be on their way through the pipe.
    gw.logs.wait_for("session store flushed").await;
    gw.logs.wait_for("\"stopped\"").await;
}
