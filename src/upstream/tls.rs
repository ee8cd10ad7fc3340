//! TLS to the upstream: the public web's roots (Mozilla's, which GSP endpoints chain to), plus
//! an operator's CA file for an upstream whose certificate chains to a private CA (a GSP's
//! sandbox, a TLS-inspecting egress proxy).

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::{ClientConfig, RootCertStore};

/// Why the TLS client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The CA file is missing, unreadable or not PEM.
    #[error("CA file {path}: {message}")]
    CaFile {
        /// The file.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the set-up (a certificate it cannot use, no protocol version).
    #[error("TLS set-up: {0}")]
    Setup(#[from] rustls::Error),
}

/// The client configuration for one upstream; ALPN is left to the connector.
pub fn client_config(ca_file: Option<&Path>) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(path) = ca_file {
        let fail = |message: String| TlsError::CaFile {
            path: path.display().to_string(),
            message,
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| fail(e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| fail(e.to_string()))?;
        if certs.is_empty() {
            return Err(fail("no PEM certificate in it".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| fail(format!("unusable certificate: {e}")))?;
        }
    }
    Ok(
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}
