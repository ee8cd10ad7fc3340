//! Reading the configuration file, and the secret files it leads to, within a size limit: a
//! path that turns out to name a device (`/dev/zero`), a pipe that never ends or a runaway
//! file must get a clear refusal, not a process that reads until the memory is gone.

use std::io::Read as _;
use std::path::Path;

/// The largest configuration file gstgate reads. 100 000 credentials take about 11 MiB
/// (BENCHMARKS.md), so this leaves room for five times as many, comments included.
pub const MAX_CONFIG_BYTES: u64 = 64 * 1024 * 1024;

/// The largest secret file gstgate reads (a store key file holds 44 bytes of base64).
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Reads `path` whole, as text, refusing more than `limit` bytes with an `InvalidData`
/// error that says so.
pub fn read_limited(path: &Path, limit: u64) -> std::io::Result<String> {
    let file = std::fs::File::open(path)?;
    // A regular file says its length: a long one is refused before any of it is read.
    if file
        .metadata()
        .is_ok_and(|meta| meta.is_file() && meta.len() > limit)
    {
        return Err(too_large(limit));
    }
    let mut bytes = Vec::new();
    file.take(limit.saturating_add(1)).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(too_large(limit));
    }
    String::from_utf8(bytes).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "the file is not UTF-8 text",
        )
    })
}

/// A configured file name as messages show it: a relative one says what it is relative to
/// (the working directory, not the configuration file's directory) and where that led.
pub fn shown_path(path: &Path) -> String {
    if path.is_absolute() {
        return path.display().to_string();
    }
    match std::env::current_dir() {
        Ok(dir) => format!(
            "{} (relative to the working directory: {})",
            path.display(),
            dir.join(path).display()
        ),
        Err(_) => format!("{} (relative to the working directory)", path.display()),
    }
}

fn too_large(limit: u64) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!(
            "the file is larger than the limit of {limit} bytes (is the path a device or a pipe?)"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_path_is_shown_with_what_it_is_relative_to() {
        assert_eq!(shown_path(Path::new("/etc/k.pem")), "/etc/k.pem");
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(
            shown_path(Path::new("keys/k.pem")),
            format!(
                "keys/k.pem (relative to the working directory: {})",
                cwd.join("keys/k.pem").display()
            )
        );
    }

    #[test]
    fn a_file_over_the_limit_is_refused_and_one_within_it_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "x".repeat(10)).unwrap();
        assert_eq!(read_limited(&path, 10).unwrap().len(), 10);
        let err = read_limited(&path, 9).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("larger than the limit of 9 bytes"),
            "{err}"
        );
        // A device says no length: the limit is what ends the read.
        let err = read_limited(Path::new("/dev/zero"), 1024).unwrap_err();
        assert!(err.to_string().contains("larger than the limit"), "{err}");
    }
}
