//! Command line: `serve`, `sim`, `check-config`, `hash-key`.
//!
//! This is the binary's edge: errors become `anyhow` reports printed once, and every
//! subcommand returns an exit code instead of panicking.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};

use crate::config::Config;
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
}

/// Parses the command line, runs the subcommand and maps its outcome to an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
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
        } => {
            crate::telemetry::init(log_format);
            let config = Config::load(&path)?;
            crate::upstream::check_profiles(&config, &path)?;
            let rt = runtime()?;
            rt.block_on(crate::server::run(config, path))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { config: path, root } => {
            let mut config = Config::load(&path)?;
            if let Some(root) = &root {
                config.rebase_files(root);
            }
            crate::upstream::check_profiles(&config, &path)?;
            crate::upstream::check_files(&config, &path)?;
            crate::tls::check_files(&config, &path)?;
            let mut out = std::io::stdout().lock();
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
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
