//! Live configuration reload, on `SIGHUP` or `POST /admin/reload`.
//!
//! The file is read and checked exactly as at start-up (`check-config`'s checks). If it
//! passes, its `[[client]]` and `[[credential]]` entries take effect at once: the sessions of
//! credentials that did not change are not touched, a changed password or session lifetime
//! keeps the session but clears that credential's lockout, removed credentials are dropped
//! and added ones start cold. If it does not pass, it is refused with the reason and the
//! running configuration stays. Everything else is read at start-up only; a change to the
//! listener addresses or to the set of upstreams is reported as needing a restart.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::clients::Clients;
use crate::config::{Config, ConfigError};
use crate::proxy::Proxy;
use crate::session::{Changes, Sessions, SessionsError};

/// Why a reload was refused; the running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file does not load or fails a check.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A client entry cannot be used.
    #[error("{0}")]
    Clients(String),
    /// A credential names an upstream this process does not run.
    #[error("credential {gstin}/{username} names upstream `{upstream}`, which is not running: adding an upstream needs a restart")]
    NewUpstream {
        /// The credential's GSTIN.
        gstin: String,
        /// The credential's user.
        username: String,
        /// The upstream it names.
        upstream: String,
    },
    /// The slot table could not be built.
    #[error(transparent)]
    Sessions(#[from] SessionsError),
}

/// What a reload changed.
#[derive(Debug, Serialize)]
pub struct Report {
    /// Credential slots added.
    pub added: usize,
    /// Credential slots removed.
    pub removed: usize,
    /// Credential slots whose password or session lifetime changed.
    pub changed: usize,
    /// Credential slots left exactly as they were.
    pub unchanged: usize,
    /// Clients now configured.
    pub clients: usize,
    /// Changed settings that take effect only after a restart.
    pub restart_needed: Vec<String>,
}

/// Reloads the configuration of a running gateway.
pub struct Reloader {
    path: PathBuf,
    sessions: Arc<Sessions>,
    proxy: Arc<Proxy>,
    listen: SocketAddr,
    admin_listen: SocketAddr,
    upstreams: Vec<String>,
    /// One reload at a time: two at once could apply an older file last.
    one_at_a_time: Mutex<()>,
}

impl Reloader {
    /// A reloader for the gateway started from `config`, read from `path`.
    pub fn new(path: PathBuf, config: &Config, sessions: Arc<Sessions>, proxy: Arc<Proxy>) -> Self {
        Self {
            path,
            sessions,
            proxy,
            listen: config.server.listen,
            admin_listen: config.server.admin_listen,
            upstreams: config.upstreams.iter().map(|u| u.name.clone()).collect(),
            one_at_a_time: Mutex::new(()),
        }
    }

    /// Reads the file again and applies its clients and credentials, or refuses it whole.
    pub fn reload(&self) -> Result<Report, ReloadError> {
        let _one = self.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner());
        let config = Config::load(&self.path)?;
        crate::upstream::check_profiles(&config, &self.path)?;
        crate::upstream::check_files(&config, &self.path)?;
        let clients = Clients::from_config(&config.clients).map_err(ReloadError::Clients)?;
        for c in &config.credentials {
            if let Some(upstream) = c.upstreams.iter().find(|u| !self.upstreams.contains(u)) {
                return Err(ReloadError::NewUpstream {
                    gstin: c.gstin.clone(),
                    username: c.username.clone(),
                    upstream: upstream.clone(),
                });
            }
        }
        let mut restart_needed = Vec::new();
        if config.server.listen != self.listen {
            restart_needed.push(format!(
                "server.listen {} -> {}",
                self.listen, config.server.listen
            ));
        }
        if config.server.admin_listen != self.admin_listen {
            restart_needed.push(format!(
                "server.admin_listen {} -> {}",
                self.admin_listen, config.server.admin_listen
            ));
        }
        let upstreams: Vec<String> = config.upstreams.iter().map(|u| u.name.clone()).collect();
        if upstreams != self.upstreams {
            restart_needed.push(format!(
                "[[upstream]] {:?} -> {:?}",
                self.upstreams, upstreams
            ));
        }
        let Changes {
            added,
            removed,
            changed,
            unchanged,
        } = self.sessions.reload(&config.credentials)?;
        self.proxy.set_clients(clients);
        let report = Report {
            added,
            removed,
            changed,
            unchanged,
            clients: config.clients.len(),
            restart_needed,
        };
        tracing::info!(
            path = %self.path.display(),
            added, removed, changed, unchanged,
            clients = report.clients,
            restart_needed = ?report.restart_needed,
            "configuration reloaded"
        );
        Ok(report)
    }
}
