//! The store's encryption keys: from the configuration, or generated once into a `0600` file
//! beside the store and read from it on later starts.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::seal::{Sealer, KEY_LEN};
use super::StoreError;

/// Where the generated key of the store at `store` lives.
fn key_file(store: &Path) -> PathBuf {
    let mut name = store.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

/// The sealer for the store at `store`: under the configured keys, or else under the key
/// file's, which is generated if it does not exist yet.
pub fn sealer(
    store: &Path,
    current: Option<&SecretString>,
    previous: Option<&SecretString>,
) -> Result<Sealer, StoreError> {
    let previous = previous
        .map(|k| decode(k.expose_secret(), "store.previous_encryption_key"))
        .transpose()?;
    let current = match current {
        Some(k) => decode(k.expose_secret(), "store.encryption_key")?,
        None => from_file(&key_file(store))?,
    };
    Ok(Sealer::new(&current, previous.as_deref()))
}

/// The sealer under configured keys only (a shared store has no file to generate one into).
pub fn configured(
    current: &SecretString,
    previous: Option<&SecretString>,
) -> Result<Sealer, StoreError> {
    let previous = previous
        .map(|k| decode(k.expose_secret(), "store.previous_encryption_key"))
        .transpose()?;
    let current = decode(current.expose_secret(), "store.encryption_key")?;
    Ok(Sealer::new(&current, previous.as_deref()))
}

fn decode(text: &str, origin: &str) -> Result<Zeroizing<[u8; KEY_LEN]>, StoreError> {
    let bytes = Zeroizing::new(B64.decode(text.trim()).map_err(|_| StoreError::Key {
        origin: origin.to_owned(),
    })?);
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    if bytes.len() != KEY_LEN {
        return Err(StoreError::Key {
            origin: origin.to_owned(),
        });
    }
    key.copy_from_slice(&bytes);
    Ok(key)
}

/// Refuses a store file or key file that is a symbolic link: gstgate reads, writes and
/// changes the mode of these files, and a link would make it do so to another file.
pub(super) fn refuse_symlink(path: &Path) -> Result<(), StoreError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => Err(StoreError::Symlink(path.to_owned())),
        _ => Ok(()),
    }
}

fn from_file(path: &Path) -> Result<Zeroizing<[u8; KEY_LEN]>, StoreError> {
    let io = |source| StoreError::KeyFile {
        path: path.to_owned(),
        source,
    };
    refuse_symlink(path)?;
    match crate::config::read_limited(path, crate::config::MAX_SECRET_FILE_BYTES) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            tracing::info!(key_file = %path.display(), "store encryption key read from its key file");
            decode(&text, &path.display().to_string())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = random_key();
            let text = Zeroizing::new(B64.encode(key.as_ref()));
            // Written whole under a temporary name, then renamed: a crash or a full disk
            // midway must not leave a truncated key file that fails every later start.
            let partial = path.with_extension("key.partial");
            let _ = std::fs::remove_file(&partial);
            let written = create_private(&partial).and_then(|mut file| {
                file.write_all(text.as_bytes())?;
                file.sync_all()
            });
            if let Err(e) = written.and_then(|()| std::fs::rename(&partial, path)) {
                let _ = std::fs::remove_file(&partial);
                return Err(io(e));
            }
            tracing::warn!(key_file = %path.display(),
                "no store.encryption_key configured: generated one into this file (mode 0600); back it up with the store, or set store.encryption_key");
            Ok(key)
        }
        Err(e) => Err(io(e)),
    }
}

/// A new random key.
pub(super) fn random_key() -> Zeroizing<[u8; KEY_LEN]> {
    use rand::RngCore as _;
    let mut key = Zeroizing::new([0u8; KEY_LEN]);
    rand::rngs::OsRng.fill_bytes(key.as_mut());
    key
}

/// Creates `path` readable and writable by the owner only; fails if it exists.
#[cfg(unix)]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// Creates `path`; fails if it exists.
#[cfg(not(unix))]
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_over_the_limit_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let store = dir.path().join("s.redb");
        let key = key_file(&store);
        let big = crate::config::MAX_SECRET_FILE_BYTES as usize + 1;
        std::fs::write(&key, "A".repeat(big)).unwrap();
        let err = sealer(&store, None, None).err().unwrap().to_string();
        assert!(err.contains("larger than the limit"), "{err}");
    }
}
