//! `check-config --root`: a configuration's absolute file names moved under another
//! directory, to check a configuration written for another machine against a copy of its
//! files.

use std::path::{Path, PathBuf};

use super::Config;

impl Config {
    /// Moves every absolute file name in the configuration under `root`, as if `root` were
    /// `/`: `check-config --root` checks a configuration written for another machine (a
    /// container image, a server) against a copy of that machine's files.
    pub fn rebase_files(&mut self, root: &Path) {
        let under = |p: &mut PathBuf| {
            if let Ok(rest) = p.strip_prefix("/") {
                *p = root.join(rest);
            }
        };
        let server = &mut self.server;
        for p in [
            &mut server.tls_cert,
            &mut server.tls_key,
            &mut server.tls_client_ca,
            &mut self.store.path,
            &mut self.store.redis_ca_file,
        ]
        .into_iter()
        .flatten()
        {
            under(p);
        }
        for u in &mut self.upstreams {
            under(&mut u.public_key);
            for p in [&mut u.ca_file, &mut u.dropin_private_key]
                .into_iter()
                .flatten()
            {
                under(p);
            }
        }
        if let Some(sim) = &mut self.simulator {
            under(&mut sim.key_file);
            under(&mut sim.public_key_out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rebase_files_moves_every_absolute_file_name_and_no_relative_one() {
        let text = r#"
[server]
tls_cert = "/etc/gstgate/tls/cert.pem"
tls_key = "/etc/gstgate/tls/key.pem"
tls_client_ca = "/etc/gstgate/tls/clients.pem"
[store]
path = "/var/lib/gstgate/sessions.redb"
[simulator]
listen = "127.0.0.1:8081"
key_file = "/var/lib/gstgate/sim.pem"
public_key_out = "keys/sim-public.pem"
[[upstream]]
name = "einvoice"
api = "einvoice"
base_url = "http://127.0.0.1:8081"
routes = ["/eicore/"]
auth_path = "/eivital/v1.04/auth"
public_key = "/etc/gstgate/keys/einvoice.pem"
ca_file = "/etc/gstgate/gsp-ca.pem"
client_id = "a"
client_secret = "b"
"#;
        let mut config = Config::parse(text, Path::new("c.toml")).unwrap();
        // Set here, not in the text: the embedded store refuses a Redis CA.
        config.store.redis_ca_file = Some(PathBuf::from("/etc/gstgate/redis-ca.pem"));
        config.rebase_files(Path::new("/stage"));
        let server = &config.server;
        let sim = config.simulator.as_ref().unwrap();
        let upstream = &config.upstreams[0];
        for moved in [
            server.tls_cert.as_deref().unwrap(),
            server.tls_key.as_deref().unwrap(),
            server.tls_client_ca.as_deref().unwrap(),
            config.store.path.as_deref().unwrap(),
            config.store.redis_ca_file.as_deref().unwrap(),
            sim.key_file.as_path(),
            upstream.public_key.as_path(),
            upstream.ca_file.as_deref().unwrap(),
        ] {
            assert!(
                moved.starts_with("/stage/etc") || moved.starts_with("/stage/var"),
                "{moved:?}"
            );
        }
        assert_eq!(sim.public_key_out, Path::new("keys/sim-public.pem"));
    }
}
