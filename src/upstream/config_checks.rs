//! What `check-config` and `serve` check of a loaded configuration beyond what the
//! configuration can check alone: the rules of each upstream's API, which its profile knows,
//! and the key and certificate files it names.

use std::path::Path;

use secrecy::ExposeSecret;

use super::{profile, tls, Portals};
use crate::config::{
    credential_entry, upstream_entry, Config, ConfigError, CredentialConfig, UpstreamConfig,
};

/// Checks the rules each upstream's API sets for its settings and for the credentials that
/// log in to it, which the configuration, knowing no API, leaves to the profiles. `serve` and
/// `check-config` run it right after loading the file, and report a broken rule as loading
/// would.
pub fn check_profiles(config: &Config, path: &Path) -> Result<(), ConfigError> {
    let invalid = |key: String, message: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        message,
    };
    for (i, u) in config.upstreams.iter().enumerate() {
        let profile = profile(u.api);
        check_targets(profile.portals(), u)
            .and_then(|()| profile.check_upstream(u))
            .map_err(|(field, m)| invalid(format!("{}.{field}", upstream_entry(i, &u.name)), m))?;
    }
    for (i, c) in config.credentials.iter().enumerate() {
        // Loading refused a credential naming an unknown upstream: every name is found.
        for u in c
            .upstreams
            .iter()
            .filter_map(|name| config.upstreams.iter().find(|u| u.name == *name))
        {
            profile(u.api)
                .check_credential(u, c)
                .map_err(|(field, m)| {
                    let entry = credential_entry(i, &c.gstin, &c.username);
                    invalid(format!("{entry}.{field}"), m)
                })?;
        }
    }
    Ok(())
}

/// `[[upstream.targets]]` only for an API served by several portals, each `irp` one of its
/// portal names.
fn check_targets(
    portals: Option<&'static Portals>,
    upstream: &UpstreamConfig,
) -> Result<(), (&'static str, String)> {
    if upstream.targets.is_empty() {
        return Ok(());
    }
    let Some(portals) = portals else {
        return Err((
            "targets",
            format!(
                "api `{}` is served at one base URL: use base_url",
                upstream.api
            ),
        ));
    };
    for irp in upstream.targets.iter().filter_map(|t| t.irp.as_deref()) {
        if !portals.names.contains(&irp) {
            return Err((
                "targets.irp",
                format!("`{irp}` is not one of {}", portals.names.join(", ")),
            ));
        }
    }
    Ok(())
}

/// Settings that are valid but likely a mistake: the configuration's own, then each upstream
/// profile's. Logged at start-up, printed by `check-config`.
pub fn config_warnings(config: &Config) -> Vec<String> {
    let mut warnings = config.warnings();
    let dropin_upstreams = config
        .upstreams
        .iter()
        .filter(|u| u.dropin_private_key.is_some())
        .count();
    let dropin_clients = config.clients.iter().filter(|c| c.client_id.is_some());
    if dropin_upstreams == 0 {
        for c in dropin_clients {
            warnings.push(format!(
                "client `{}` has a client_id, but no upstream has dropin_private_key: its drop-in logins are refused",
                c.name
            ));
        }
    } else if dropin_clients.count() == 0 {
        warnings.push(
            "an upstream has dropin_private_key, but no client has a client_id and client_secret_sha256: no drop-in client can log in"
                .into(),
        );
    }
    for u in &config.upstreams {
        let profile = profile(u.api);
        warnings.extend(profile.config_warnings(u));
        if profile.renewal().otp_sessions() && config.server.admin_token.is_none() {
            warnings.push(format!(
                "upstream `{}`: its sessions start with the taxpayer's OTP, which only the admin API can submit, and server.admin_token is not set: no session can start",
                u.name
            ));
        }
    }
    warnings
}

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
            key: format!("{}.public_key", upstream_entry(i, &u.name)),
            message,
        };
        let shown = crate::config::shown_path(&u.public_key);
        let bytes = std::fs::read(&u.public_key)
            .map_err(|e| invalid(format!("cannot read {shown}: {e}")))?;
        crate::crypto::PublicKey::from_pem_or_cert(&bytes)
            .map_err(|e| invalid(format!("{shown}: {e}")))?;
    }
    for (i, u) in config.upstreams.iter().enumerate() {
        if let Some(key) = &u.dropin_private_key {
            super::read_dropin_key(&u.name, key).map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                key: format!("{}.dropin_private_key", upstream_entry(i, &u.name)),
                message: e.to_string(),
            })?;
        }
        if let Some(ca) = &u.ca_file {
            tls::client_config(Some(ca)).map_err(|e| ConfigError::Invalid {
                path: path.to_path_buf(),
                key: format!("{}.ca_file", upstream_entry(i, &u.name)),
                message: e.to_string(),
            })?;
        }
    }
    Ok(())
}

/// The credential check of an API whose login sends the password.
pub(super) fn require_password(
    upstream: &UpstreamConfig,
    credential: &CredentialConfig,
) -> Result<(), (&'static str, String)> {
    if credential.password.expose_secret().is_empty() {
        return Err((
            "password",
            format!(
                "upstream `{}` logs in with a password: set one",
                upstream.name
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A valid config with one upstream named `up` speaking `api`, and one credential logging
    /// in to it; the extra lines go at the end of their tables.
    pub(in crate::upstream) fn one_upstream(
        api: &str,
        upstream_extra: &str,
        credential_extra: &str,
    ) -> Config {
        let text = format!(
            r#"
[server]
[[upstream]]
name = "up"
api = "{api}"
base_url = "http://127.0.0.1:1"
routes = ["/r/"]
auth_path = "/auth"
public_key = "k.pem"
client_id = "a"
client_secret = "b"
{upstream_extra}
[[credential]]
gstin = "27AAPFU0939F1ZV"
username = "u"
upstreams = ["up"]
{credential_extra}
"#
        );
        Config::parse(&text, Path::new("c.toml")).unwrap()
    }

    #[test]
    fn api_rules_are_reported_as_loading_reports_a_broken_rule() {
        let check = |c: &Config| check_profiles(c, Path::new("c.toml"));
        let ewaybill = |extra_upstream: &str, extra_credential: &str| {
            one_upstream("ewaybill", extra_upstream, extra_credential)
        };
        assert!(check(&ewaybill("max_logins = 5", "password = \"p\"")).is_ok());
        assert_eq!(
            check(&ewaybill("max_logins = 6", "password = \"p\""))
                .unwrap_err()
                .to_string(),
            "c.toml: upstream \"up\".max_logins: e-way bill blocks a user for 15 minutes after 5 logins in 15 minutes; use at most 5"
        );
        // A password is needed where logins use one, and nowhere else.
        assert_eq!(
            check(&ewaybill("", "")).unwrap_err().to_string(),
            "c.toml: credential 27AAPFU0939F1ZV/u.password: upstream `up` logs in with a password: set one"
        );
        assert!(check(&one_upstream("gstn", "", "")).is_ok());
        // A window shorter than NIC's 15 minutes is allowed (sandboxes scale it) but warned of,
        // after the warnings of the configuration itself.
        let windows = |c: &Config| {
            config_warnings(c)
                .iter()
                .filter(|w| w.contains("login_window"))
                .count()
        };
        assert_eq!(
            windows(&ewaybill("login_window = \"30s\"", "password = \"p\"")),
            1
        );
        assert_eq!(windows(&ewaybill("", "password = \"p\"")), 0);
    }

    #[test]
    fn targets_are_for_apis_with_portals_named_as_the_api_names_them_and_replace_base_url() {
        let config = |api: &str, base_url: &str, irps: [&str; 2]| {
            let text = format!(
                r#"
[server]
[[upstream]]
name = "up"
api = "{api}"
{base_url}
routes = ["/r/"]
auth_path = "/auth"
public_key = "k.pem"
client_id = "a"
client_secret = "b"
[[upstream.targets]]
base_url = "http://127.0.0.1:1"
irp = "{}"
[[upstream.targets]]
base_url = "http://127.0.0.1:2"
irp = "{}"
[[credential]]
gstin = "27AAPFU0939F1ZV"
username = "u"
password = "p"
upstreams = ["up"]
"#,
                irps[0], irps[1]
            );
            Config::parse(&text, Path::new("c.toml"))
                .and_then(|c| check_profiles(&c, Path::new("c.toml")).map(|()| c))
                .map(|c| c.upstreams[0].endpoints().len())
                .map_err(|e| e.to_string())
        };
        assert_eq!(config("einvoice", "", ["NIC1", "NIC2"]), Ok(2));
        assert_eq!(
            config("einvoice", "", ["NIC1", "NIC3"]),
            Err("c.toml: upstream \"up\".targets.irp: `NIC3` is not one of NIC1, NIC2".into())
        );
        assert_eq!(
            config("einvoice", "", ["NIC1", "NIC1"]),
            Err("c.toml: upstream \"up\".targets.irp: `NIC1` names two targets".into())
        );
        assert_eq!(
            config("einvoice", "base_url = \"http://127.0.0.1:3\"", ["NIC1", "NIC2"]),
            Err("c.toml: upstream \"up\".targets: give either base_url or [[upstream.targets]], not both".into())
        );
        assert_eq!(
            config("ewaybill", "", ["NIC1", "NIC2"]),
            Err("c.toml: upstream \"up\".targets: api `ewaybill` is served at one base URL: use base_url".into())
        );
    }

    /// Relative to what is the question an operator asks of `k.pem`: the message answers it.
    #[test]
    fn a_missing_relative_public_key_says_what_it_is_relative_to() {
        let config = one_upstream("einvoice", "", "password = \"p\"");
        let err = check_files(&config, Path::new("/etc/gw/c.toml"))
            .unwrap_err()
            .to_string();
        let cwd = std::env::current_dir().unwrap();
        assert!(
            err.contains(&format!(
                "cannot read k.pem (relative to the working directory: {})",
                cwd.join("k.pem").display()
            )),
            "{err}"
        );
    }

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
        assert!(err.contains(".ca_file"), "{err}");
        assert!(err.contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn a_dropin_key_must_parse_and_be_private_and_clients_must_match_it() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let rsa = rsa::RsaPrivateKey::new(&mut rand::thread_rng(), 1024).unwrap();
        let public = dir.path().join("k.pem");
        std::fs::write(
            &public,
            rsa::pkcs8::EncodePublicKey::to_public_key_pem(
                &rsa::RsaPublicKey::from(&rsa),
                rsa::pkcs8::LineEnding::LF,
            )
            .unwrap(),
        )
        .unwrap();
        let private = dir.path().join("dropin.pem");
        std::fs::write(
            &private,
            rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(&rsa, rsa::pkcs8::LineEnding::LF)
                .unwrap()
                .as_bytes(),
        )
        .unwrap();
        let config = |client: &str| {
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
dropin_private_key = "{}"
client_id = "a"
client_secret = "b"
[[client]]
name = "erp"
gstins = ["*"]
{client}
"#,
                public.display(),
                private.display()
            );
            Config::parse(&text, Path::new("c.toml")).unwrap()
        };
        let path = Path::new("c.toml");
        let dropin_client = "client_id = \"asp\"\nclient_secret_sha256 = \"00000000000000000000000000000000000000000000000000000000000000aa\"";
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = check_files(&config(dropin_client), path)
            .unwrap_err()
            .to_string();
        assert!(err.contains(".dropin_private_key"), "{err}");
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
        check_files(&config(dropin_client), path).unwrap();
        assert!(config_warnings(&config(dropin_client)).is_empty());
        let no_dropin_client =
            "api_key_sha256 = \"00000000000000000000000000000000000000000000000000000000000000bb\"";
        let warnings = config_warnings(&config(no_dropin_client));
        assert!(
            warnings.iter().any(|w| w.contains("no drop-in client")),
            "{warnings:?}"
        );
        std::fs::write(&private, "not a key\n").unwrap();
        let err = check_files(&config(dropin_client), path)
            .unwrap_err()
            .to_string();
        assert!(err.contains(".dropin_private_key"), "{err}");
    }
}
