//! The `[server]` rules: listener addresses, limits, timeouts and the bearer tokens.

use std::time::Duration;

use secrecy::ExposeSecret;

use super::validate::check_duration;
use super::{Config, MAX_TIMEOUT};

impl Config {
    /// The `[server]` rules.
    pub(super) fn validate_server(&self) -> Result<(), (String, String)> {
        self.validate_listeners()?;
        let server = &self.server;
        if server.max_body_bytes == 0 {
            return Err(("server.max_body_bytes".into(), "must be above 0".into()));
        }
        for (field, value, max) in [
            ("request_timeout", server.request_timeout, MAX_TIMEOUT),
            (
                "header_read_timeout",
                server.header_read_timeout,
                MAX_TIMEOUT,
            ),
            ("shutdown_grace", server.shutdown_grace, MAX_TIMEOUT),
        ] {
            check_duration(value, Duration::from_millis(1), max)
                .map_err(|m| (format!("server.{field}"), m))?;
        }
        for (key, token, guards) in [
            ("server.admin_token", &server.admin_token, "the admin API"),
            (
                "server.monitoring_token",
                &server.monitoring_token,
                "/metrics and /status",
            ),
        ] {
            if token.as_ref().is_some_and(|t| t.expose_secret().len() < 16) {
                return Err((
                    key.into(),
                    format!("must be at least 16 characters (it guards {guards})"),
                ));
            }
        }
        Ok(())
    }

    /// The `[server]` rules that involve more than one address.
    fn validate_listeners(&self) -> Result<(), (String, String)> {
        let server = &self.server;
        match (&server.tls_cert, &server.tls_key) {
            (Some(_), None) => {
                return Err((
                    "server.tls_key".into(),
                    "is needed with server.tls_cert".into(),
                ))
            }
            (None, Some(_)) => {
                return Err((
                    "server.tls_cert".into(),
                    "is needed with server.tls_key".into(),
                ))
            }
            _ => {}
        }
        if server.tls_client_ca.is_some() && server.tls_cert.is_none() {
            return Err((
                "server.tls_client_ca".into(),
                "needs server.tls_cert and server.tls_key: client certificates are asked for in the TLS handshake".into(),
            ));
        }
        // Port 0 asks the OS for a free port: two of those never clash.
        let clash = |a: std::net::SocketAddr, b: std::net::SocketAddr| a == b && a.port() != 0;
        if clash(server.listen, server.admin_listen) {
            return Err((
                "server.admin_listen".into(),
                format!(
                    "is {}, the same address as server.listen: the admin API needs an address of its own",
                    server.admin_listen
                ),
            ));
        }
        if let Some(sim) = &self.simulator {
            for (key, addr) in [
                ("server.listen", server.listen),
                ("server.admin_listen", server.admin_listen),
            ] {
                if clash(sim.listen, addr) {
                    return Err((
                        "simulator.listen".into(),
                        format!("is {addr}, the same address as {key}"),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::validate::tests::ONE_UPSTREAM;

    #[test]
    fn short_tokens_are_refused_by_setting_without_quoting_them() {
        let upstream = ONE_UPSTREAM;
        for key in ["admin_token", "monitoring_token"] {
            let text = format!("[server]\n{key} = \"short-tok3n\"\n{upstream}");
            let err = Config::parse(&text, Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(&format!("server.{key}")) && err.contains("16 characters"),
                "{err}"
            );
            assert!(!err.contains("short-tok3n"), "{err}");
            let text = format!("[server]\n{key} = \"long-enough-tok3n-0123\"\n{upstream}");
            assert!(Config::parse(&text, Path::new("c.toml")).is_ok());
        }
    }
}
