//! The store file: a redb database with one table of sealed records, opened (and, when it is
//! unreadable, moved aside and started afresh), read whole at start-up, written in batches.
//!
//! redb rather than SQLite: it is pure Rust (no C toolchain, no `unsafe` FFI in the build),
//! its commits are ACID and survive `kill -9` and power loss (copy-on-write B-trees with a
//! checksummed commit slot), it is a single file, and a key-value table is all gstgate needs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use redb::{
    Database, DatabaseError, ReadableTable as _, ReadableTableMetadata as _, TableDefinition,
};

use super::backend::{BackendError, KeySwap, Pending, Records, Rows, Swapped};
use super::memory::millis;
use super::StoreError;

/// Record name → sealed record.
const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions_v1");
/// Open alert episodes: `kind:upstream:gstin:user` → nothing.
const EPISODES: TableDefinition<&str, ()> = TableDefinition::new("alert_episodes_v1");
/// Idempotency record name → (expiry in Unix milliseconds, sealed record).
const KEYS: TableDefinition<&str, (u64, &[u8])> = TableDefinition::new("idempotency_v1");
/// The idempotency records by expiry, so that expired ones are dropped without a scan.
const KEY_EXPIRIES: TableDefinition<(u64, &str), ()> =
    TableDefinition::new("idempotency_expiries_v1");

/// Creates the directory of the store at `path` when it is missing (with any missing
/// parents), owner-only (`0700`): the store file and its key file go there. An existing
/// directory is left as it is.
pub fn create_dir(path: &Path) -> Result<(), StoreError> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(|source| StoreError::Io {
        path: dir.to_owned(),
        source,
    })
}

/// Whether [`create_dir`] and [`open`] could make the store at `path`, creating nothing:
/// `check-config` must refuse a place `serve` would fail on, and must not leave directories
/// behind. The nearest existing ancestor of the store's directory must be a directory this
/// process may write in (or, if the directory exists, the file must be writable).
pub fn check_place(path: &Path) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut existing = dir;
    // Up to the nearest ancestor that exists: "not found" and "a parent is not a directory"
    // alike, as creating the directory would meet them.
    let meta = loop {
        if let Ok(meta) = std::fs::metadata(existing) {
            break meta;
        }
        match existing.parent() {
            Some(up) if !up.as_os_str().is_empty() => existing = up,
            _ => return Ok(()),
        }
    };
    if !meta.is_dir() {
        return Err(format!(
            "cannot create {}: {} is not a directory",
            dir.display(),
            existing.display()
        ));
    }
    let target = if existing == dir && path.exists() {
        path
    } else {
        existing
    };
    writable(target).map_err(|e| {
        if target == path {
            format!("cannot write {}: {e}", path.display())
        } else {
            format!(
                "cannot create {} in {}: {e}",
                path.display(),
                existing.display()
            )
        }
    })
}

/// Whether this process may write `path` (a file) or create a file in it (a directory),
/// found by trying: ACLs, a read-only file system and root's rights are all answered. The
/// probe file is removed at once; the store file is opened without truncating or changing it.
fn writable(path: &Path) -> std::io::Result<()> {
    if !path.is_dir() {
        return std::fs::OpenOptions::new().write(true).open(path).map(drop);
    }
    let probe = path.join(format!(".gstgate-check-config-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    std::fs::remove_file(&probe)
}

/// Opens the database at `path` (its directory exists: [`create_dir`]), creating it if
/// needed. A file that is not a readable store — damaged, truncated, or not a redb file at
/// all — is moved aside to `<path>.corrupt-<unix time>` and replaced by an empty one, so that
/// a damaged file costs logins, never a crash loop. What moving aside cannot cure is an error
/// that names the problem, with the file left as it is: a symbolic link (never followed),
/// another process holding it (two gateways must not share one store), a file this version's
/// format cannot read, or an I/O error such as a denied permission.
pub fn open(path: &Path) -> Result<Database, StoreError> {
    let file = private_file(path)?;
    // redb 2.4 asserts on some damage (a file cut short) instead of returning an error: a
    // panic here is a damaged file too, not a reason to crash (and crash again at every start).
    let opened = std::panic::catch_unwind(|| {
        Database::builder().create_file(file).map(|db| {
            let readable = readable(&db);
            (db, readable)
        })
    });
    let opened = match opened {
        Ok(opened) => opened,
        Err(_) => Err(DatabaseError::Storage(redb::StorageError::Corrupted(
            "the storage engine failed on the file's contents".into(),
        ))),
    };
    let reason = match opened {
        Ok((db, Ok(()))) => return Ok(db),
        Ok((db, Err(e))) => {
            drop(db);
            e.to_string()
        }
        Err(DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::InUse(path.to_owned())),
        Err(e) if damaged(&e) => e.to_string(),
        Err(e) => {
            return Err(StoreError::Db {
                path: path.to_owned(),
                source: boxed(e),
            })
        }
    };
    let aside = move_aside(path)?;
    tracing::error!(store = %path.display(), reason = %reason, moved_to = %aside.display(),
        "the session store file is unreadable: moved it aside and starting with an empty store (every session needs a login, GSTN ones an OTP)");
    Database::builder()
        .create_file(private_file(path)?)
        .map_err(|e| StoreError::Db {
            path: path.to_owned(),
            source: boxed(e),
        })
}

/// Whether an error opening the file says its contents are damaged (rather than that it
/// cannot be read at all, or needs another version).
fn damaged(e: &DatabaseError) -> bool {
    match e {
        DatabaseError::Storage(redb::StorageError::Corrupted(_)) => true,
        DatabaseError::Storage(redb::StorageError::Io(io)) => matches!(
            io.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
        ),
        _ => false,
    }
}

/// redb's errors are large; boxed, a `Result` carrying one stays small.
pub type DbError = Box<redb::Error>;

fn boxed(e: impl Into<redb::Error>) -> DbError {
    Box::new(e.into())
}

/// The store file, opened read-write for redb (which takes an empty file as a new database):
/// created owner-only when missing, made owner-only when it was readable by others (a copy
/// restored from a backup, say), and never through a symbolic link, which could make
/// gstgate write to, and change the mode of, a file that is not its store. Its values are
/// sealed, but which taxpayers have sessions is nobody else's business either.
fn private_file(path: &Path) -> Result<std::fs::File, StoreError> {
    super::key::refuse_symlink(path)?;
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        // A link put in place after the check above is refused here (ELOOP) rather than
        // followed.
        options.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let file = options.open(path).map_err(io)?;
    tighten(&file, path)?;
    Ok(file)
}

/// Makes the opened store file owner-only, through its handle: what is changed is the file
/// that was opened, not whatever the path names by now.
#[cfg(unix)]
fn tighten(file: &std::fs::File, path: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::PermissionsExt as _;
    let io = |source| StoreError::Io {
        path: path.to_owned(),
        source,
    };
    let mode = file.metadata().map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
        tracing::warn!(store = %path.display(), was = format!("{mode:o}"),
            "the store file was readable by others: made it owner-only (0600)");
    }
    Ok(())
}

#[cfg(not(unix))]
fn tighten(_file: &std::fs::File, _path: &Path) -> Result<(), StoreError> {
    Ok(())
}

/// Whether every record of the table can be read (a damaged page shows up here).
fn readable(db: &Database) -> Result<(), DbError> {
    read_all(db).map(drop)
}

fn move_aside(path: &Path) -> Result<PathBuf, StoreError> {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".corrupt-{secs}"));
    let aside = PathBuf::from(name);
    std::fs::rename(path, &aside).map_err(|source| StoreError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(aside)
}

/// Every (record name, sealed record) in the store.
pub fn read_all(db: &Database) -> Result<Vec<(String, Vec<u8>)>, DbError> {
    let txn = db.begin_read().map_err(boxed)?;
    let table = match txn.open_table(RECORDS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(boxed(e)),
    };
    let mut out = Vec::new();
    for row in table.iter().map_err(boxed)? {
        let (k, v) = row.map_err(boxed)?;
        out.push((k.value().to_owned(), v.value().to_vec()));
    }
    Ok(out)
}

/// Writes (`Some`) or deletes (`None`) records in one durable transaction.
fn commit(db: &Database, batch: &[(String, Option<Vec<u8>>)]) -> Result<(), DbError> {
    let txn = db.begin_write().map_err(boxed)?;
    {
        let mut table = txn.open_table(RECORDS).map_err(boxed)?;
        for (name, value) in batch {
            match value {
                Some(v) => {
                    table.insert(name.as_str(), v.as_slice()).map_err(boxed)?;
                }
                None => {
                    table.remove(name.as_str()).map_err(boxed)?;
                }
            }
        }
    }
    txn.commit().map_err(boxed)
}

/// The open alert episodes.
fn episodes(db: &Database) -> Result<Vec<String>, DbError> {
    let txn = db.begin_read().map_err(boxed)?;
    let table = match txn.open_table(EPISODES) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(boxed(e)),
    };
    let mut out = Vec::new();
    for row in table.iter().map_err(boxed)? {
        out.push(row.map_err(boxed)?.0.value().to_owned());
    }
    Ok(out)
}

/// Opens (`true`) or closes an alert episode; returns whether that changed anything.
fn set_episode(db: &Database, key: &str, open: bool) -> Result<bool, DbError> {
    let txn = db.begin_write().map_err(boxed)?;
    let changed = {
        let mut table = txn.open_table(EPISODES).map_err(boxed)?;
        if open {
            table.insert(key, ()).map_err(boxed)?.is_none()
        } else {
            table.remove(key).map_err(boxed)?.is_some()
        }
    };
    txn.commit().map_err(boxed)?;
    Ok(changed)
}

/// Idempotency record `name`, unless missing or expired at `now_ms`.
fn get_key(db: &Database, name: &str, now_ms: u64) -> Result<Option<Vec<u8>>, DbError> {
    let txn = db.begin_read().map_err(boxed)?;
    let table = match txn.open_table(KEYS) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
        Err(e) => return Err(boxed(e)),
    };
    let row = table.get(name).map_err(boxed)?;
    Ok(row.and_then(|r| {
        let (until, sealed) = r.value();
        (until > now_ms).then(|| sealed.to_vec())
    }))
}

/// A [`KeySwap`] in one durable transaction: redb's single writer makes it atomic.
fn swap_key(db: &Database, swap: &KeySwap) -> Result<Swapped, DbError> {
    let now = swap.now_ms;
    let txn = db.begin_write().map_err(boxed)?;
    let swapped = {
        let mut keys = txn.open_table(KEYS).map_err(boxed)?;
        let mut expiries = txn.open_table(KEY_EXPIRIES).map_err(boxed)?;
        let current = keys.get(swap.name.as_str()).map_err(boxed)?.map(|r| {
            let (until, sealed) = r.value();
            (until, sealed.to_vec())
        });
        let live = current.as_ref().filter(|(until, _)| *until > now);
        if live.map(|(_, v)| v) != swap.expected.as_ref() {
            return Ok(Swapped::Changed);
        }
        if let Some((until, _)) = &current {
            expiries
                .remove((*until, swap.name.as_str()))
                .map_err(boxed)?;
        }
        match &swap.new {
            None => {
                keys.remove(swap.name.as_str()).map_err(boxed)?;
                Swapped::Done
            }
            Some(new) => {
                if swap.expected.is_none()
                    && !room_for_one(&mut keys, &mut expiries, now, swap.limit)?
                {
                    return Ok(Swapped::Full);
                }
                let until = now.saturating_add(millis(swap.ttl));
                keys.insert(swap.name.as_str(), (until, new.as_slice()))
                    .map_err(boxed)?;
                expiries
                    .insert((until, swap.name.as_str()), ())
                    .map_err(boxed)?;
                Swapped::Done
            }
        }
    };
    txn.commit().map_err(boxed)?;
    Ok(swapped)
}

/// Drops the idempotency records expired at `now`; whether fewer than `limit` remain.
fn room_for_one(
    keys: &mut redb::Table<&str, (u64, &[u8])>,
    expiries: &mut redb::Table<(u64, &str), ()>,
    now: u64,
    limit: usize,
) -> Result<bool, DbError> {
    // (now + 1, "") is the first entry that expires after `now`.
    let expired: Vec<(u64, String)> = expiries
        .range(..(now.saturating_add(1), ""))
        .map_err(boxed)?
        .map(|row| {
            row.map(|(k, _)| {
                let (until, name) = k.value();
                (until, name.to_owned())
            })
        })
        .collect::<Result<_, _>>()
        .map_err(boxed)?;
    for (until, name) in &expired {
        expiries.remove((*until, name.as_str())).map_err(boxed)?;
        keys.remove(name.as_str()).map_err(boxed)?;
    }
    let held = keys.len().map_err(boxed)?;
    Ok(usize::try_from(held).unwrap_or(usize::MAX) < limit)
}

/// The embedded store's records: one redb file, used on the blocking pool.
pub struct File(Arc<Database>);

impl File {
    /// The records of an opened database.
    pub fn new(db: Database) -> Self {
        Self(Arc::new(db))
    }

    /// Runs `work` on the database on the blocking pool: redb blocks on the disk.
    fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, DbError> + Send + 'static,
    ) -> Pending<'_, Result<T, BackendError>> {
        let db = self.0.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || work(&db))
                .await
                .map_err(|e| BackendError::Failed(e.to_string()))?
                .map_err(|e| BackendError::Failed(e.to_string()))
        })
    }
}

impl Records for File {
    fn scan(&self) -> Pending<'_, Result<Rows, BackendError>> {
        self.blocking(read_all)
    }

    fn get_key<'a>(
        &'a self,
        name: &'a str,
        now_ms: u64,
    ) -> Pending<'a, Result<Option<Vec<u8>>, BackendError>> {
        let name = name.to_owned();
        self.blocking(move |db| get_key(db, &name, now_ms))
    }

    fn swap_key(&self, swap: KeySwap) -> Pending<'_, Result<Swapped, BackendError>> {
        self.blocking(move |db| swap_key(db, &swap))
    }

    fn get<'a>(&'a self, name: &'a str) -> Pending<'a, Result<Option<Vec<u8>>, BackendError>> {
        let name = name.to_owned();
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(boxed)?;
            let table = match txn.open_table(RECORDS) {
                Ok(t) => t,
                Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
                Err(e) => return Err(boxed(e)),
            };
            let value = table.get(name.as_str()).map_err(boxed)?;
            Ok(value.map(|v| v.value().to_vec()))
        })
    }

    fn commit(
        &self,
        rows: Vec<(String, Option<Vec<u8>>)>,
    ) -> Pending<'_, Result<(), BackendError>> {
        self.blocking(move |db| commit(db, &rows))
    }

    fn episodes(&self) -> Pending<'_, Result<Vec<String>, BackendError>> {
        self.blocking(episodes)
    }

    fn set_episode<'a>(
        &'a self,
        key: &'a str,
        open: bool,
    ) -> Pending<'a, Result<bool, BackendError>> {
        let key = key.to_owned();
        self.blocking(move |db| set_episode(db, &key, open))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A place `serve` could not create the store in is refused; one it could is not created.
    #[test]
    fn check_place_refuses_an_uncreatable_directory_and_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let err = check_place(&file.join("sub/s.redb")).unwrap_err();
        assert!(err.contains("a-file is not a directory"), "{err}");
        let fresh = dir.path().join("new/deeper/s.redb");
        check_place(&fresh).unwrap();
        assert!(
            !dir.path().join("new").exists(),
            "check-config created a directory"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no probe left"
        );
        std::fs::write(dir.path().join("s.redb"), "").unwrap();
        check_place(&dir.path().join("s.redb")).unwrap();
    }

    /// A store cut short (a disk that filled up while it was copied, say) is moved aside and
    /// replaced; the records it held are not invented back.
    #[test]
    fn a_truncated_store_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let db = open(&path).unwrap();
        commit(&db, &[("a:b:c".into(), Some(vec![1; 4096]))]).unwrap();
        drop(db);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 3]).unwrap();
        let db = open(&path).unwrap();
        assert!(read_all(&db).unwrap().is_empty());
        let aside = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().contains(".corrupt-"))
            .count();
        assert_eq!(aside, 1);
    }
}
