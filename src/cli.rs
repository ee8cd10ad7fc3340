//! Command line: `serve`, `sim`, `check-config`, `hash-key`, `keygen`.
//!
//! This is the binary's edge: errors become `anyhow` reports printed once, and every
//! subcommand returns an exit code instead of panicking.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};

use crate::config::{Config, ConfigError};
use crate::telemetry::LogFormat;

/// gstgate — an HTTP gateway for India's GST APIs.
#[derive(Parser, Debug)]
#[command(name = "gstgate", version, about, long_about = None)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short, env = "GSTGATE_CONFIG")]
        config: PathBuf,
        /// Log line format.
        #[arg(long, value_enum, default_value = "pretty", env = "GSTGATE_LOG_FORMAT")]
        log_format: LogFormat,
        /// Add `gstgate_heap_allocated_bytes` to /metrics: the heap in use, to investigate
        /// memory. Off by default: each scrape walks the allocator's free lists under its
        /// locks, which holds up allocations meanwhile.
        #[arg(long, env = "GSTGATE_HEAP_METRIC", value_parser = clap::builder::BoolishValueParser::new())]
        heap_metric: bool,
    },
    /// Validate a configuration file without starting (exit status 1 and the reason if invalid).
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long, short, env = "GSTGATE_CONFIG")]
        config: PathBuf,
        /// Look up absolute file names (keys, certificates) under this directory, as if it
        /// were `/`: to check a configuration meant for another machine against a copy of
        /// its files.
        #[arg(long, value_name = "DIR")]
        root: Option<PathBuf>,
    },
    /// Run the built-in GSP simulator (NIC e-invoice, NIC e-way bill, GSTN returns) as a local
    /// sandbox.
    // Boxed: the simulator's many options would make every `Command` as large as they are.
    Sim(Box<crate::sim::SimArgs>),
    /// Print the SHA-256 digest of a caller API key, for `[[client]] api_key_sha256`.
    HashKey {
        /// The key; read from standard input when omitted (keeps it out of shell history).
        key: Option<String>,
    },
    /// Generate the RSA-2048 key pair of drop-in mode: the private key to a new file, the
    /// public key to standard output.
    Keygen {
        /// Where to write the private key (PKCS#8 PEM, mode 0600); refused if it exists.
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Also write the public key (SPKI PEM, mode 0644) to this file.
        #[arg(long, value_name = "PATH")]
        public_out: Option<PathBuf>,
        /// Replace existing files (atomically: a new file renamed over the old one).
        #[arg(long)]
        force: bool,
    },
}

/// Parses the command line, runs the subcommand and maps its outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = run(cli);
    // Lines a worker gathered and had no wait to write since, before anything else.
    crate::telemetry::flush();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gstgate: error: {}", report(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: most of our errors already quote
/// their source (`cannot read x: No such file…`), and anyhow's chain would repeat it.
fn report(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve {
            config: path,
            log_format,
            heap_metric,
        } => {
            crate::telemetry::init(log_format);
            let config = Config::load(&path)?;
            crate::upstream::check_profiles(&config, &path)?;
            let rt = runtime()?;
            let options = crate::server::Options { heap_metric };
            rt.block_on(crate::server::run(config, path, options))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config: path, root } => {
            let mut config = Config::load_under(&path, root.as_deref())?;
            if let Some(root) = &root {
                config.rebase_files(root);
            }
            crate::upstream::check_profiles(&config, &path)?;
            crate::upstream::check_files(&config, &path)?;
            crate::tls::check_files(&config, &path)?;
            if let Some(store) = &config.store.path {
                crate::store::check_place(store).map_err(|message| ConfigError::Invalid {
                    path: path.clone(),
                    key: "store.path".into(),
                    message,
                })?;
            }
            let mut out = std::io::stdout().lock();
            for (key, file) in config.secret_files() {
                writeln!(out, "secret {key}: read from {}", file.display())?;
            }
            for warning in crate::upstream::config_warnings(&config) {
                writeln!(out, "warning: {warning}")?;
            }
            writeln!(
                out,
                "{}: ok ({} upstream(s), {} credential(s), {} client(s))",
                path.display(),
                config.upstreams.len(),
                config.credentials.len(),
                config.clients.len()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Sim(args) => {
            let rt = runtime()?;
            rt.block_on(crate::sim::run(*args))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::HashKey { key } => {
            let key = match key {
                Some(k) => k,
                None => {
                    let mut line = String::new();
                    std::io::stdin().read_line(&mut line)?;
                    line
                }
            };
            let key = key.trim();
            anyhow::ensure!(!key.is_empty(), "the API key is empty");
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", hex_sha256(key.as_bytes()))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Keygen {
            out,
            public_out,
            force,
        } => {
            keygen(&out, public_out.as_deref(), force)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn keygen(out: &Path, public_out: Option<&Path>, force: bool) -> anyhow::Result<()> {
    if public_out == Some(out) {
        anyhow::bail!("--out and --public-out name the same file");
    }
    // Checked before generating, which takes a while: the answer is the same, only sooner.
    // The writes check again, as the files may appear in between.
    check_target(out, force)?;
    if let Some(public_out) = public_out {
        check_target(public_out, force)?;
    }
    let pair = crate::crypto::KeyPair::generate().context("cannot generate the key pair")?;
    let private_pem = pair
        .to_pkcs8_pem()
        .context("cannot encode the private key")?;
    let public_pem = pair
        .public_key()
        .to_pem()
        .context("cannot encode the public key")?;

    // Both files are written before either is committed, and an uncommitted one is removed:
    // a failure leaves no half-made pair behind.
    let private = Staged::write(out, private_pem.as_bytes(), 0o600, force)?;
    let public = match public_out {
        Some(path) => Some(Staged::write(path, public_pem.as_bytes(), 0o644, force)?),
        None => None,
    };
    private.commit()?;
    if let Some(public) = public {
        public.commit()?;
    }

    let mut stdout = std::io::stdout().lock();
    stdout.write_all(public_pem.as_bytes())?;
    // Flushed here so that a closed pipe is reported, not lost at exit.
    stdout.flush()?;
    eprintln!(
        "gstgate: private key written to {} (mode 0600): set it as the upstream's \
         `dropin_private_key`, and give the public key (on standard output{}) to the ASP in \
         place of NIC's or GSTN's public key",
        out.display(),
        match public_out {
            Some(path) => format!(", and in {}", path.display()),
            None => String::new(),
        }
    );
    Ok(())
}

/// Refuses a target that would not be written, with what to do about it.
fn check_target(path: &Path, force: bool) -> anyhow::Result<()> {
    if path.file_name().is_none() {
        anyhow::bail!("{} does not name a file", path.display());
    }
    let dir = parent_dir(path);
    if !dir.is_dir() {
        anyhow::bail!(
            "cannot create {}: directory {} does not exist",
            path.display(),
            dir.display()
        );
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.is_dir() => anyhow::bail!("{} is a directory", path.display()),
        Ok(_) if !force => anyhow::bail!(
            "{} already exists; use --force to replace it",
            path.display()
        ),
        _ => Ok(()),
    }
}

/// The directory a file is created in; `.` for a bare file name.
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// A file written in full but not yet in place. Removed when dropped uncommitted, so that a
/// failed `keygen` leaves nothing behind.
struct Staged {
    /// Where the bytes are: the target itself, or a temporary file beside it.
    written: PathBuf,
    /// Where they belong, when that is not where they are.
    rename_to: Option<PathBuf>,
    committed: bool,
}

impl Staged {
    /// Without `force`, creates `target` itself, failing if it exists. With `force`, creates
    /// a temporary file in the same directory, so that the rename over `target` is atomic.
    /// Either way the file has `mode` from its creation: a private key is never readable by
    /// others, not even between a write and a chmod.
    fn write(target: &Path, bytes: &[u8], mode: u32, force: bool) -> anyhow::Result<Self> {
        let (written, rename_to) = if force {
            let name = target.file_name().unwrap_or_default().to_string_lossy();
            let temp =
                parent_dir(target).join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
            (temp, Some(target.to_path_buf()))
        } else {
            (target.to_path_buf(), None)
        };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&written)
            .map_err(|e| match e.kind() {
                ErrorKind::AlreadyExists if !force => anyhow::anyhow!(
                    "{} already exists; use --force to replace it",
                    target.display()
                ),
                ErrorKind::NotFound if !parent_dir(target).is_dir() => anyhow::anyhow!(
                    "cannot create {}: directory {} does not exist",
                    target.display(),
                    parent_dir(target).display()
                ),
                _ if force => anyhow::Error::new(e).context(format!(
                    "cannot create a new file beside {} to replace it",
                    target.display()
                )),
                _ => anyhow::Error::new(e).context(format!("cannot create {}", target.display())),
            })?;
        let staged = Self {
            written,
            rename_to,
            committed: false,
        };
        // Synced before the rename: a crash must not replace a good key with an empty file.
        file.write_all(bytes)
            .and_then(|()| file.sync_all())
            .map_err(|e| {
                anyhow::Error::new(e).context(format!("cannot write {}", staged.written.display()))
            })?;
        Ok(staged)
    }

    /// Puts the file in place.
    fn commit(mut self) -> anyhow::Result<()> {
        if let Some(target) = &self.rename_to {
            std::fs::rename(&self.written, target).map_err(|e| {
                anyhow::Error::new(e).context(format!("cannot replace {}", target.display()))
            })?;
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: the error being reported matters more than this one.
            let _ = std::fs::remove_file(&self.written);
        }
    }
}

/// Lower-case hex SHA-256, the form `api_key_sha256` takes.
pub fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    // Tokio panics on a value it cannot use; a clear error instead.
    if let Some(value) = std::env::var_os("TOKIO_WORKER_THREADS") {
        let usable = value.to_str().and_then(|v| v.parse::<usize>().ok());
        if usable.is_none_or(|n| n == 0) {
            anyhow::bail!("TOKIO_WORKER_THREADS must be a positive whole number, not {value:?}");
        }
    }
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(crate::telemetry::worker_waits)
        .on_thread_stop(crate::telemetry::flush)
        .build()?)
}
