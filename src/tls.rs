//! HTTPS on the listeners: both serve the certificate and key of `server.tls_cert` and
//! `server.tls_key`; the proxy listener also asks callers for a client certificate signed by
//! `server.tls_client_ca` when one is set. The files are watched: a renewed certificate (a
//! cert-manager secret, a certbot renewal) is served to new connections without a restart,
//! and a replacement that does not load is reported and the running one kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use crate::config::ConfigError;
use crate::tasks::Tasks;

/// How often the files are checked for a change.
const WATCH_EVERY: Duration = Duration::from_secs(5);

/// Why the listeners' TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ServerTlsError {
    /// A file is missing, unreadable, or holds no usable PEM item.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the certificate and key (a key that does not match, say).
    #[error("TLS set-up: {0}")]
    Setup(#[from] rustls::Error),
}

/// Which listener a connection came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// The proxy port, where client certificates may be required.
    Proxy,
    /// The admin port.
    Admin,
}

/// The files, as configured.
#[derive(Debug, Clone)]
pub struct Files {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// PEM CA certificates for client certificates on the proxy listener.
    pub client_ca: Option<PathBuf>,
}

impl Files {
    /// The files `[server]` names, when it turns HTTPS on.
    pub fn of(server: &crate::config::ServerConfig) -> Option<Self> {
        match (&server.tls_cert, &server.tls_key) {
            (Some(cert), Some(key)) => Some(Self {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: server.tls_client_ca.clone(),
            }),
            _ => None,
        }
    }
}

/// Loads every TLS file of `[server]` and `[store]` as `serve` will, for `check-config`: the
/// listeners' certificate, key and client CA, and the Redis server's CA. An error names the
/// setting.
pub fn check_files(config: &crate::config::Config, path: &Path) -> Result<(), ConfigError> {
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key: key.to_owned(),
        message,
    };
    if let Some(files) = Files::of(&config.server) {
        // Each file on its own first, so that the error names its setting even when two
        // settings name one file (a PEM holding both the certificate and the key).
        read_certs(&files.cert).map_err(|e| invalid("server.tls_cert", e.to_string()))?;
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| {
            invalid(
                "server.tls_key",
                format!("{}: no usable PEM private key: {e}", files.key.display()),
            )
        })?;
        if let Some(ca) = &files.client_ca {
            read_certs(ca).map_err(|e| invalid("server.tls_client_ca", e.to_string()))?;
        }
        load(&files).map_err(|e| match e {
            ServerTlsError::File { ref path, .. } if Some(path) == files.client_ca.as_ref() => {
                invalid("server.tls_client_ca", e.to_string())
            }
            // rustls refusing the pair: most often a key that is not the certificate's.
            e => invalid("server.tls_key", format!("with server.tls_cert: {e}")),
        })?;
    }
    if let Some(ca) = &config.store.redis_ca_file {
        pem_certificates(ca)
            .map_err(|m| invalid("store.redis_ca_file", format!("{}: {m}", ca.display())))?;
    }
    Ok(())
}

/// The listeners' TLS, reloadable.
pub struct ServerTls {
    files: Files,
    current: RwLock<Configs>,
}

#[derive(Clone)]
struct Configs {
    proxy: Arc<ServerConfig>,
    admin: Arc<ServerConfig>,
    /// The files' modification times these were loaded from.
    stamp: Vec<Option<SystemTime>>,
}

impl ServerTls {
    /// Loads the files; an error names the file and what is wrong with it.
    pub fn open(files: Files) -> Result<Arc<Self>, ServerTlsError> {
        let current = load(&files)?;
        Ok(Arc::new(Self {
            files,
            current: RwLock::new(current),
        }))
    }

    /// The acceptor for a new connection to `listener`, with the certificate loaded last.
    pub fn acceptor(&self, listener: Listener) -> TlsAcceptor {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(match listener {
            Listener::Proxy => current.proxy.clone(),
            Listener::Admin => current.admin.clone(),
        })
    }

    /// Starts the task that reloads the files when they change, on `tasks` until shutdown.
    pub fn spawn_watcher(self: &Arc<Self>, tasks: &Tasks) {
        let tls = self.clone();
        tasks.spawn_until_shutdown(async move {
            loop {
                tokio::time::sleep(WATCH_EVERY).await;
                tls.reload_if_changed();
            }
        });
    }

    /// Loads the files again if any changed since the last load.
    fn reload_if_changed(&self) {
        let stamp = stamps(&self.files);
        let seen = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .stamp
            .clone();
        if stamp == seen {
            return;
        }
        match load(&self.files) {
            Ok(configs) => {
                *self.current.write().unwrap_or_else(|p| p.into_inner()) = configs;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                // Remember the failed files' times: the error is logged once per change,
                // and the next change (the fix) is tried.
                self.current
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .stamp = stamp;
                tracing::error!(error = %e,
                    "the changed TLS certificate or key does not load; still serving the previous one");
            }
        }
    }
}

fn stamps(files: &Files) -> Vec<Option<SystemTime>> {
    [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
    .collect()
}

fn load(files: &Files) -> Result<Configs, ServerTlsError> {
    // Taken before reading, so that a change while reading is seen at the next check.
    let stamp = stamps(files);
    let certs = read_certs(&files.cert)?;
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| ServerTlsError::File {
        path: files.key.clone(),
        message: format!("no usable PEM private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = || {
        ServerConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()
    };
    let mut admin = builder()?
        .with_no_client_auth()
        .with_single_cert(certs.clone(), key.clone_key())?;
    let proxy = builder()?;
    let mut proxy = match &files.client_ca {
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots.add(cert).map_err(|e| ServerTlsError::File {
                    path: ca.clone(),
                    message: format!("unusable CA certificate: {e}"),
                })?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| ServerTlsError::File {
                        path: ca.clone(),
                        message: e.to_string(),
                    })?;
            proxy.with_client_cert_verifier(verifier)
        }
        None => proxy.with_no_client_auth(),
    }
    .with_single_cert(certs, key)?;
    // Both listeners speak HTTP/1.1 only.
    for config in [&mut proxy, &mut admin] {
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
    }
    Ok(Configs {
        proxy: Arc::new(proxy),
        admin: Arc::new(admin),
        stamp,
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ServerTlsError> {
    pem_certificates(path).map_err(|message| ServerTlsError::File {
        path: path.to_owned(),
        message,
    })
}

/// The certificates of a PEM file, at least one, or what is wrong with the file (for the
/// caller to name it).
pub fn pem_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| e.to_string())?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no PEM certificate in it".into());
    }
    Ok(certs)
}
