//! Secret settings given as files (`password_file`, `client_secret_file`, …): how Docker and
//! Kubernetes mount secrets, and the only way a secret can change under a running process,
//! whose environment never does. Every secret setting goes through [`resolve`], which the
//! configuration calls on each load and so on each reload: a rotated file is read again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use super::read::{read_limited, MAX_SECRET_FILE_BYTES};
use super::{credential_entry, upstream_entry, Config};

/// A setting error: the key it is about, and what is wrong (never the secret's value).
type Problem = (String, String);

/// The value of the secret setting `key`, from its inline value or its `_file` twin, of
/// which at most one may be set; `None` when neither is.
pub(super) fn resolve(
    key: &str,
    inline: Option<SecretString>,
    file: Option<&Path>,
) -> Result<Option<SecretString>, Problem> {
    match (inline, file) {
        (Some(_), Some(_)) => Err((
            key.to_owned(),
            format!("is set both inline and as {key}_file: set one of the two"),
        )),
        (None, Some(path)) => read_secret_file(path)
            .map(Some)
            .map_err(|m| (format!("{key}_file"), m)),
        (inline, None) => Ok(inline),
    }
}

/// Reads a secret file: within [`MAX_SECRET_FILE_BYTES`], refused when others can read it,
/// with its trailing line break removed (`echo secret > file` writes one). Messages name
/// the path, never the contents.
pub fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    {
        use std::os::unix::fs::MetadataExt as _;
        check_mode(meta.mode(), meta.uid()).map_err(|m| format!("{shown} {m}"))?;
    }
    let mut text = read_limited(path, MAX_SECRET_FILE_BYTES)
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    // Truncating in place: the secret is not copied to a buffer that is freed unzeroed.
    let len = text.trim_end_matches(['\n', '\r']).len();
    text.truncate(len);
    let secret = SecretString::from(text);
    if secret.expose_secret().is_empty() {
        return Err(format!("{shown} is empty"));
    }
    Ok(secret)
}

/// Refuses a secret file that anyone but its owner can read or write. One exception, as
/// PostgreSQL makes for its key file: a root-owned file may be group-readable, because that is
/// what a Kubernetes secret volume with `fsGroup` gives a non-root process (mode `0440`,
/// owner root, group the pod's `fsGroup`).
fn check_mode(mode: u32, owner: u32) -> Result<(), String> {
    let mode = mode & 0o777;
    let allowed = if owner == 0 { 0o740 } else { 0o700 };
    if mode & !allowed == 0 {
        return Ok(());
    }
    Err(format!(
        "has mode {mode:04o}: a secret file must be readable by its owner only (`chmod 600`; \
         in Kubernetes, `defaultMode: 0400`, or `0440` with `fsGroup`)"
    ))
}

/// Every secret setting and its `_file` twin, resolved in one place.
impl Config {
    /// Replaces every `_file` setting by the file's contents, read now; called on every load.
    pub(super) fn resolve_secrets(&mut self, root: Option<&Path>) -> Result<(), Problem> {
        let under = |file: &Option<PathBuf>| -> Option<PathBuf> {
            file.as_deref().map(|file| rooted(root, file))
        };
        let server = &mut self.server;
        server.admin_token = resolve(
            "server.admin_token",
            server.admin_token.take(),
            under(&server.admin_token_file).as_deref(),
        )?;
        server.monitoring_token = resolve(
            "server.monitoring_token",
            server.monitoring_token.take(),
            under(&server.monitoring_token_file).as_deref(),
        )?;
        let store = &mut self.store;
        store.redis_url = resolve(
            "store.redis_url",
            store.redis_url.take(),
            under(&store.redis_url_file).as_deref(),
        )?;
        store.encryption_key = resolve(
            "store.encryption_key",
            store.encryption_key.take(),
            under(&store.encryption_key_file).as_deref(),
        )?;
        store.previous_encryption_key = resolve(
            "store.previous_encryption_key",
            store.previous_encryption_key.take(),
            under(&store.previous_encryption_key_file).as_deref(),
        )?;
        for (i, u) in self.upstreams.iter_mut().enumerate() {
            let entry = upstream_entry(i, &u.name);
            for (field, value, file) in [
                ("client_id", &mut u.client_id, &u.client_id_file),
                ("client_secret", &mut u.client_secret, &u.client_secret_file),
            ] {
                let key = format!("{entry}.{field}");
                *value = resolve(&key, set(value), under(file).as_deref())?
                    .ok_or_else(|| (key, format!("is required (or {field}_file)")))?;
            }
            let files = u
                .headers_files
                .iter()
                .map(|(name, file)| (name.clone(), rooted(root, file)))
                .collect();
            resolve_headers(&entry, &mut u.headers, &files)?;
        }
        for (i, c) in self.credentials.iter_mut().enumerate() {
            let key = format!("{}.password", credential_entry(i, &c.gstin, &c.username));
            let password = resolve(&key, set(&c.password), under(&c.password_file).as_deref())?;
            c.password = password.unwrap_or_else(|| SecretString::from(String::new()));
        }
        Ok(())
    }
}

impl Config {
    /// Every secret setting read from a file, by key, with the file's name: what
    /// `check-config` shows of the secrets (never their values).
    pub fn secret_files(&self) -> Vec<(String, &Path)> {
        let (server, store) = (&self.server, &self.store);
        let mut all: Vec<(String, &Option<PathBuf>)> = vec![
            ("server.admin_token".into(), &server.admin_token_file),
            (
                "server.monitoring_token".into(),
                &server.monitoring_token_file,
            ),
            ("store.redis_url".into(), &store.redis_url_file),
            ("store.encryption_key".into(), &store.encryption_key_file),
            (
                "store.previous_encryption_key".into(),
                &store.previous_encryption_key_file,
            ),
        ];
        for (i, u) in self.upstreams.iter().enumerate() {
            let entry = upstream_entry(i, &u.name);
            all.push((format!("{entry}.client_id"), &u.client_id_file));
            all.push((format!("{entry}.client_secret"), &u.client_secret_file));
        }
        for (i, c) in self.credentials.iter().enumerate() {
            let entry = credential_entry(i, &c.gstin, &c.username);
            all.push((format!("{entry}.password"), &c.password_file));
        }
        let mut out: Vec<(String, &Path)> = all
            .into_iter()
            .filter_map(|(key, file)| Some((key, file.as_deref()?)))
            .collect();
        for (i, u) in self.upstreams.iter().enumerate() {
            let entry = upstream_entry(i, &u.name);
            for (name, file) in &u.headers_files {
                out.push((format!("{entry}.headers.{name}"), file.as_path()));
            }
        }
        out
    }

    /// A digest of every secret setting a reload does not apply (all but the passwords), by
    /// key: a reload compares them to say that a rotated `client_secret_file` needs a restart,
    /// which the file's text, naming only the path, cannot show. Digests, not values, so that
    /// the running process keeps no second copy of each secret.
    pub fn fixed_secret_digests(&self) -> Vec<(String, [u8; 32])> {
        use sha2::{Digest as _, Sha256};
        let digest = |s: &SecretString| Sha256::digest(s.expose_secret().as_bytes()).into();
        let mut out = Vec::new();
        for (key, value) in [
            ("server.admin_token", &self.server.admin_token),
            ("server.monitoring_token", &self.server.monitoring_token),
            ("store.redis_url", &self.store.redis_url),
            ("store.encryption_key", &self.store.encryption_key),
            (
                "store.previous_encryption_key",
                &self.store.previous_encryption_key,
            ),
        ] {
            if let Some(value) = value {
                out.push((key.to_owned(), digest(value)));
            }
        }
        for u in &self.upstreams {
            let entry = format!("upstream `{}`", u.name);
            out.push((format!("{entry}.client_id"), digest(&u.client_id)));
            out.push((format!("{entry}.client_secret"), digest(&u.client_secret)));
            for (name, value) in &u.headers {
                out.push((format!("{entry}.headers.{name}"), digest(value)));
            }
        }
        out
    }
}

/// `file` as `check-config --root` looks it up: an absolute name under `root`.
fn rooted(root: Option<&Path>, file: &Path) -> PathBuf {
    match (root, file.strip_prefix("/")) {
        (Some(root), Ok(rest)) => root.join(rest),
        _ => file.to_path_buf(),
    }
}

/// A required secret as parsed: empty means not written (an empty value is refused).
fn set(value: &SecretString) -> Option<SecretString> {
    let text = value.expose_secret();
    (!text.is_empty()).then(|| SecretString::from(text.to_owned()))
}

/// `headers_files = { "X-Key" = "/run/secrets/x-key" }`: each header from one file, and
/// named in `headers` or in `headers_files`, not both.
fn resolve_headers(
    entry: &str,
    headers: &mut BTreeMap<String, SecretString>,
    files: &BTreeMap<String, PathBuf>,
) -> Result<(), Problem> {
    for (name, path) in files {
        if headers.contains_key(name) {
            return Err((
                format!("{entry}.headers_files"),
                format!("header `{name}` is also in headers: set it in one of the two"),
            ));
        }
        let value = read_secret_file(path).map_err(|m| {
            (
                format!("{entry}.headers_files"),
                format!("header `{name}`: {m}"),
            )
        })?;
        headers.insert(name.clone(), value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::config::Config;

    fn secret_file(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_secret_file_is_read_trimmed_within_its_limit_and_only_when_private() {
        let dir = tempfile::tempdir().unwrap();
        let ok = secret_file(dir.path(), "ok", "s3cret-value\r\n\n", 0o600);
        assert_eq!(
            read_secret_file(&ok).unwrap().expose_secret(),
            "s3cret-value"
        );
        // Only the line break is trimmed: spaces may be part of a secret.
        let spaced = secret_file(dir.path(), "spaced", " a b \n", 0o400);
        assert_eq!(read_secret_file(&spaced).unwrap().expose_secret(), " a b ");

        let open = secret_file(dir.path(), "open", "s3cret-value\n", 0o644);
        let err = read_secret_file(&open).unwrap_err();
        assert!(
            err.contains("open has mode 0644") && err.contains("chmod 600"),
            "{err}"
        );
        assert!(!err.contains("s3cret"), "{err}");
        for mode in [0o604, 0o660, 0o601, 0o700 | 0o002] {
            let path = secret_file(dir.path(), "m", "x", mode);
            assert!(read_secret_file(&path).is_err(), "{mode:o}");
        }
        // Group-readable only as Kubernetes' fsGroup leaves it: owned by root.
        assert!(check_mode(0o640, 1000).is_err());
        assert!(check_mode(0o440, 0).is_ok());
        assert!(check_mode(0o400, 1000).is_ok());

        let big = "x".repeat(MAX_SECRET_FILE_BYTES as usize + 1);
        let big = secret_file(dir.path(), "big", &big, 0o600);
        let err = read_secret_file(&big).unwrap_err();
        assert!(
            err.contains("big") && err.contains("larger than the limit"),
            "{err}"
        );

        let empty = secret_file(dir.path(), "empty", "\n", 0o600);
        assert!(read_secret_file(&empty)
            .unwrap_err()
            .ends_with("empty is empty"));

        let missing = dir.path().join("missing");
        let err = read_secret_file(&missing).unwrap_err();
        assert!(err.contains(&missing.display().to_string()), "{err}");
    }

    #[test]
    fn a_setting_takes_its_value_or_its_file_not_both() {
        let dir = tempfile::tempdir().unwrap();
        let file = secret_file(dir.path(), "f", "from-file\n", 0o600);
        let inline = || Some(SecretString::from("inline".to_string()));
        let value = resolve("k", None, Some(&file)).unwrap().unwrap();
        assert_eq!(value.expose_secret(), "from-file");
        let value = resolve("k", inline(), None).unwrap().unwrap();
        assert_eq!(value.expose_secret(), "inline");
        assert!(resolve("k", None, None).unwrap().is_none());
        let (key, message) = resolve("k", inline(), Some(&file)).unwrap_err();
        assert_eq!(key, "k");
        assert!(message.contains("both"), "{message}");
        let (key, _) = resolve("k", None, Some(&dir.path().join("nope"))).unwrap_err();
        assert_eq!(key, "k_file");
    }

    #[test]
    fn every_secret_setting_has_a_file_twin_resolved_when_the_config_is_parsed() {
        let dir = tempfile::tempdir().unwrap();
        let f = |name: &str, value: &str| {
            secret_file(dir.path(), name, &format!("{value}\n"), 0o600)
                .display()
                .to_string()
        };
        let key = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
        let text = format!(
            r#"
[server]
admin_token_file = "{}"
monitoring_token_file = "{}"
[store]
backend = "redis"
redis_url_file = "{}"
encryption_key_file = "{}"
previous_encryption_key_file = "{}"
[[upstream]]
name = "einvoice"
api = "einvoice"
base_url = "http://127.0.0.1:1"
routes = ["/eicore/"]
auth_path = "/eivital/v1.04/auth"
public_key = "k.pem"
client_id_file = "{}"
client_secret_file = "{}"
headers = {{ "X-Plain" = "p" }}
headers_files = {{ "X-Key" = "{}" }}
[[credential]]
gstin = "27AAPFU0939F1ZV"
username = "u"
password_file = "{}"
upstreams = ["einvoice"]
"#,
            f("admin", "admin-token-0123456789"),
            f("mon", "monitoring-token-0123"),
            f("redis", "redis://h:6379"),
            f("key", key),
            f("prev", key),
            f("id", "the-id"),
            f("secret", "the-secret"),
            f("xkey", "header-value"),
            f("pw", "pass word"),
        );
        let c = Config::parse(&text, Path::new("c.toml")).unwrap();
        let shown = |s: &Option<SecretString>| s.as_ref().map(|s| s.expose_secret().to_owned());
        assert_eq!(
            shown(&c.server.admin_token).unwrap(),
            "admin-token-0123456789"
        );
        assert_eq!(
            shown(&c.server.monitoring_token).unwrap(),
            "monitoring-token-0123"
        );
        assert_eq!(shown(&c.store.redis_url).unwrap(), "redis://h:6379");
        assert_eq!(shown(&c.store.encryption_key).unwrap(), key);
        assert_eq!(shown(&c.store.previous_encryption_key).unwrap(), key);
        let u = &c.upstreams[0];
        assert_eq!(u.client_id.expose_secret(), "the-id");
        assert_eq!(u.client_secret.expose_secret(), "the-secret");
        assert_eq!(u.headers["X-Key"].expose_secret(), "header-value");
        assert_eq!(u.headers["X-Plain"].expose_secret(), "p");
        assert_eq!(c.credentials[0].password.expose_secret(), "pass word");

        // Both forms of one setting, or neither of a required one: refused, by key.
        let err = |text: String| {
            Config::parse(&text, Path::new("c.toml"))
                .unwrap_err()
                .to_string()
        };
        let both = text.replace("password_file", "password = \"inline-pw\"\npassword_file");
        let e = err(both);
        assert!(
            e.contains("credential 27AAPFU0939F1ZV/u.password: is set both"),
            "{e}"
        );
        assert!(!e.contains("inline-pw") && !e.contains("pass word"), "{e}");
        let neither = text.replace("client_secret_file", "client_secret_unused");
        assert!(err(neither).contains("unknown field"));
        let neither = text.replace(
            &format!("client_secret_file = \"{}\"\n", f("secret", "the-secret")),
            "",
        );
        let e = err(neither);
        assert!(
            e.contains("upstream \"einvoice\".client_secret: is required"),
            "{e}"
        );
        let twice = text.replace(
            "headers = { \"X-Plain\"",
            "headers = { \"X-Key\" = \"k\", \"X-Plain\"",
        );
        assert!(err(twice).contains("header `X-Key` is also in headers"));
        let world = dir.path().join("pw");
        std::fs::set_permissions(&world, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = err(text.clone());
        assert!(
            e.contains(".password_file: ") && e.contains("pw has mode 0644"),
            "{e}"
        );
        std::fs::remove_file(&world).unwrap();
        let e = err(text);
        assert!(
            e.contains(&format!("cannot read {}", world.display())),
            "{e}"
        );
    }

    #[test]
    fn an_empty_secret_is_refused_and_an_absent_one_is_not() {
        let upstream = crate::config::validate::tests::ONE_UPSTREAM;
        for line in [
            "[server]\nadmin_token = \"\"",
            "[server]\n[store]\nencryption_key = \"\"",
        ] {
            let e = Config::parse(&format!("{line}\n{upstream}"), Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("is empty: a secret setting needs a value"),
                "{e}"
            );
        }
        let e = Config::parse(
            &format!(
                "[server]\n{}",
                upstream.replace("client_id = \"a\"", "client_id = \"\"")
            ),
            Path::new("c.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("key `client_id`") && e.contains("is empty"),
            "{e}"
        );
        assert!(Config::parse(&format!("[server]\n{upstream}"), Path::new("c.toml")).is_ok());
    }

    #[test]
    fn check_config_root_reads_absolute_secret_files_under_the_root() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("run/secrets")).unwrap();
        secret_file(
            &root.path().join("run/secrets"),
            "token",
            "admin-token-0123456789\n",
            0o600,
        );
        let upstream = crate::config::validate::tests::ONE_UPSTREAM;
        let text = format!("[server]\nadmin_token_file = \"/run/secrets/token\"\n{upstream}");
        let c = Config::parse_under(&text, Path::new("c.toml"), Some(root.path())).unwrap();
        let token = c.server.admin_token.unwrap();
        assert_eq!(token.expose_secret(), "admin-token-0123456789");
        assert!(c
            .server
            .admin_token_file
            .unwrap()
            .starts_with("/run/secrets"));
    }
}
