//! The processes the benchmark starts: output to a log file, pinned with `taskset`, waited for
//! until they say they are ready, stopped when dropped.

use std::fs::{self, File};
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};

/// A child process whose stdout and stderr go to a log file; stopped (SIGTERM, then SIGKILL)
/// when dropped.
pub(crate) struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub(crate) fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Result<Self> {
        let log = dir.join(format!("{name}.log"));
        let out = File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// Like `spawn`, but reads the child's stdout through a pipe (copying it to the log) and
    /// returns once a line containing `needle` arrives: no polling. Fails if the child closes
    /// its stdout (exits) first, or after `timeout`; the child is stopped then.
    pub(crate) fn spawn_until(
        name: &str,
        mut cmd: Command,
        dir: &Path,
        needle: &str,
        timeout: Duration,
    ) -> Result<(Self, String)> {
        let log = dir.join(format!("{name}.log"));
        let mut out = File::create(&log)?;
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(out.try_clone()?);
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {name}: {cmd:?}"))?;
        let mut p = Proc {
            name: name.to_string(),
            child,
            log,
        };
        let stdout = p
            .child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("{name}: no stdout pipe"))?;
        let (tx, rx) = mpsc::channel::<String>();
        let wanted = needle.to_string();
        // Drains the pipe for the child's whole life, so that it never blocks on a full pipe.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let _ = out.write_all(&buf);
                let line = String::from_utf8_lossy(&buf);
                if line.contains(&wanted) {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line.trim().to_string());
                    }
                }
            }
        });
        match rx.recv_timeout(timeout) {
            Ok(line) => Ok((p, line)),
            Err(RecvTimeoutError::Disconnected) => {
                p.check_alive()?;
                bail!(
                    "{name} closed its output without printing \"{needle}\": {}",
                    p.log_tail()
                )
            }
            Err(RecvTimeoutError::Timeout) => bail!(
                "{name} printed no \"{needle}\" within {timeout:?}: {}",
                p.log_tail()
            ),
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    pub(crate) fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}): {}", self.name, self.log_tail());
        }
        Ok(())
    }

    pub(crate) fn log_tail(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(2000);
        let start = (start..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(text.len());
        text[start..].to_string()
    }

    /// The first line of the log containing `needle`, if there is one yet.
    pub(crate) fn find_line(&self, needle: &str) -> Result<Option<String>> {
        let text = fs::read_to_string(&self.log)?;
        Ok(text
            .lines()
            .find(|l| l.contains(needle))
            .map(|l| l.trim().to_string()))
    }

    /// Polls the log for a line containing `needle` and returns it.
    pub(crate) fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut text = String::new();
            File::open(&self.log)?.read_to_string(&mut text)?;
            if let Some(l) = text.lines().find(|l| l.contains(needle)) {
                return Ok(l.trim().to_string());
            }
            self.check_alive()?;
            ensure!(
                Instant::now() < deadline,
                "{} printed no \"{needle}\" within {timeout:?}: {}",
                self.name,
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.pid().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `program`, under `taskset -c CPUS` when pinned.
pub(crate) fn pinned(cpus: Option<&str>, program: &Path) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

pub(crate) fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

pub(crate) fn after<'a>(line: &'a str, marker: &str) -> Result<&'a str> {
    let i = line
        .find(marker)
        .ok_or_else(|| anyhow!("no \"{marker}\" in \"{line}\""))?;
    let rest = &line[i + marker.len()..];
    Ok(rest
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_end_matches('/'))
}
