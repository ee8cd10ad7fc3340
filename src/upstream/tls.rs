//! TLS to the upstream: the public web's roots (Mozilla's, which GSP endpoints chain to), plus
//! an operator's CA file for an upstream whose certificate chains to a private CA (a GSP's
//! sandbox, a TLS-inspecting egress proxy).

use std::error::Error;
use std::path::Path;
use std::sync::Arc;

use rustls::{ClientConfig, RootCertStore};

use crate::problem::Cause;

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
        for cert in crate::tls::pem_certificates(path).map_err(fail)? {
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

/// Names a failed connection a TLS handshake failure when rustls refused it (a certificate
/// that neither the public roots nor the `ca_file` vouch for, no common protocol version), so
/// that a wrong `ca_file` is not logged as a plain "cannot connect".
pub fn connect_cause(err: super::client::BoxError) -> Cause {
    if refused_by_rustls(&*err) {
        Cause::new(HandshakeFailed(err))
    } else {
        Cause::from(err)
    }
}

/// A connection that failed in the TLS handshake; its cause carries rustls's reason.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with the upstream failed")]
struct HandshakeFailed(#[source] super::client::BoxError);

/// Whether a rustls error is among `err`'s causes. tokio-rustls reports it inside an
/// `std::io::Error`, which hyper-rustls wraps in another; an `io::Error`'s `source()` skips
/// the error it wraps, so the walk steps into that error instead.
fn refused_by_rustls(err: &(dyn Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.is::<rustls::Error>() {
            return true;
        }
        next = match e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(wrapped) => Some(wrapped as &(dyn Error + 'static)),
            None => e.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rustls_refusal_is_found_inside_the_io_errors_that_carry_it() {
        let refusal = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        // As hyper-rustls hands it on: tokio-rustls's io::Error, wrapped in another.
        let io = std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            refusal,
        ));
        assert!(refused_by_rustls(&io));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(!refused_by_rustls(&reset));
    }
}
