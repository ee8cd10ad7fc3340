//! Facts about the machine and the software, for the report.

use std::fs;
use std::path::Path;
use std::process::Command;

/// Facts about the machine and the software, for the report.
pub(crate) struct Machine {
    pub(crate) date: String,
    pub(crate) uname: String,
    pub(crate) nproc: String,
    pub(crate) cpu_model: String,
    pub(crate) mem: String,
    pub(crate) nginx: String,
    pub(crate) wrk: String,
    /// `redis-server --version`, shortened ("Redis server v=7.0.15"); shown when the `redis`
    /// target ran.
    pub(crate) redis: String,
    pub(crate) rustc: String,
    pub(crate) gstgate: String,
    pub(crate) commit: String,
}

impl Machine {
    pub(crate) fn collect(bin: &Path, manifest: &Path) -> Self {
        let run = |prog: &str, args: &[&str]| -> String {
            Command::new(prog)
                .args(args)
                .current_dir(manifest)
                .output()
                .map(|o| {
                    let mut s = String::from_utf8_lossy(&o.stdout).to_string();
                    s.push_str(&String::from_utf8_lossy(&o.stderr));
                    s.trim().to_string()
                })
                .unwrap_or_else(|e| format!("({prog}: {e})"))
        };
        let lscpu = run("lscpu", &[]);
        let cpu_model = lscpu
            .lines()
            .find(|l| l.starts_with("Model name:"))
            .map_or("?".into(), |l| l["Model name:".len()..].trim().to_string());
        let hyper = lscpu
            .lines()
            .find(|l| l.starts_with("Hypervisor vendor:"))
            .map(|l| format!(", virtualised ({})", l["Hypervisor vendor:".len()..].trim()))
            .unwrap_or_default();
        let mem = fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .next()
                    .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
            })
            .and_then(|kb| kb.parse::<u64>().ok())
            .map_or("?".into(), |kb| format!("{:.1} GiB", kb as f64 / 1048576.0));
        let dirty = if run(
            "git",
            &[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "src",
                "Cargo.toml",
                "Cargo.lock",
            ],
        )
        .is_empty()
        {
            ""
        } else {
            " with uncommitted changes in src/ or Cargo.*"
        };
        Machine {
            date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            uname: run("uname", &["-a"]),
            nproc: run("nproc", &[]),
            cpu_model: format!("{cpu_model}{hyper}"),
            mem,
            nginx: run("nginx", &["-v"]),
            wrk: run("wrk", &["-v"])
                .lines()
                .next()
                .unwrap_or("?")
                .trim()
                .to_string(),
            redis: {
                let v = run("redis-server", &["--version"]);
                v.split(" sha=").next().unwrap_or(&v).trim().to_string()
            },
            rustc: run("rustc", &["-V"]),
            gstgate: run(&bin.display().to_string(), &["--version"]),
            commit: format!("{}{dirty}", run("git", &["rev-parse", "--short", "HEAD"])),
        }
    }
}
