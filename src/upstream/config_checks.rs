//! What `check-config` checks of a loaded configuration beyond what the configuration can
//! check alone: the key and certificate files it names.

use std::path::Path;

use super::tls;
use crate::config::{Config, ConfigError};

/// Checks what `check-config` must check beyond the file's syntax: that every upstream's
/// public key and CA file parse (except the keys the in-process simulator writes at start-up,
/// which need not exist yet). `serve` does the same when it builds the upstreams.
pub fn check_files(config: &Config, path: &Path) -> Result<(), ConfigError> {
    let from_sim = config
        .simulator
        .as_ref()
        .map(|s| s.public_key_out.as_path());
    for (i, u) in config.upstreams.iter().enumerate() {
        if Some(u.public_key.as_path()) == from_sim {
            continue;
        }
        let invalid = |message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key: format!("upstream[{i}].public_key"),
            message,
        };
        let bytes = std::fs::read(&u.public_key)
            .map_err(|e| invalid(format!("cannot read {}: {e}", u.public_key.display())))?;
        crate::crypto::PublicKey::from_pem_or_cert(&bytes)
            .map_err(|e| invalid(format!("{}: {e}", u.public_key.display())))?;
    }
    for (i, u) in config.upstreams.iter().enumerate() {
        if let Some(ca) = &u.ca_file {
            tls::client_config(Some(ca)).map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                key: format!("upstream[{i}].ca_file"),
                message: e.to_string(),
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("k.pem");
        let rsa = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
        let pem = rsa::pkcs8::EncodePublicKey::to_public_key_pem(
            &rsa::RsaPublicKey::from(&rsa),
            rsa::pkcs8::LineEnding::LF,
        )
        .unwrap();
        std::fs::write(&key, pem).unwrap();
        let not_a_cert = dir.path().join("ca.pem");
        std::fs::write(&not_a_cert, "not a certificate\n").unwrap();
        let text = format!(
            r#"
[server]
[[upstream]]
name = "einvoice"
api = "einvoice"
base_url = "https://gsp.example.com"
routes = ["/eicore/"]
auth_path = "/eivital/v1.04/auth"
public_key = "{}"
ca_file = "{}"
client_id = "a"
client_secret = "b"
"#,
            key.display(),
            not_a_cert.display()
        );
        let path = Path::new("c.toml");
        let config = Config::parse(&text, path).unwrap();
        let err = check_files(&config, path).unwrap_err().to_string();
        assert!(err.contains("upstream[0].ca_file"), "{err}");
        assert!(err.contains("no PEM certificate"), "{err}");
    }
}
