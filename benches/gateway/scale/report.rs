//! The scale scenario's report: one Markdown table per question, one row per size.

use std::fmt::Write as _;

use super::{mib, ms, Size, PROBE_ROUNDS};

/// The tables for `results`, bursts of up to `cold` GSTINs over `concurrency` connections.
pub(super) fn report(results: &[Size], cold: usize, concurrency: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Embedded store, passthrough, lean upstream on the same machine; bursts of up to {cold} \
         distinct GSTINs over {concurrency} connections.\n"
    );
    let _ = writeln!(
        out,
        "| credentials | config | check-config | start to ready | RSS at ready (peak before) | heap at ready (per credential) |"
    );
    let _ = writeln!(out, "|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let heap = r.heap_start.map_or_else(
            || "–".to_string(),
            |h| {
                format!(
                    "{} MiB ({:.0} B)",
                    mib(h as u64),
                    h / r.credentials.max(1) as f64
                )
            },
        );
        let _ = writeln!(
            out,
            "| {} | {} MiB | {} ms | {} ms | {} MiB ({} MiB) | {heap} |",
            r.credentials,
            mib(r.config_bytes),
            ms(r.check_config),
            ms(r.start),
            mib(r.rss_start),
            mib(r.peak_start)
        );
    }
    let _ = writeln!(
        out,
        "\n| credentials | burst | requests | wall | req/s | p50 ms | p99 ms | max ms | errors | logins | RSS after | RSS per session | heap per session at rest (peak in the burst) |"
    );
    let _ = writeln!(
        out,
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in results {
        // Memory per session from the cold burst only: after a restart the sessions are in
        // memory before the first request.
        let per_session =
            r.rss_cold.saturating_sub(r.rss_start) as f64 / r.cold.requests.max(1) as f64 / 1024.0;
        let heap_per_session = match (r.heap_start, r.heap_cold) {
            (Some(start), Some(cold)) => {
                let sessions = r.cold.requests.max(1) as f64;
                let peak = r.heap_peak.map_or_else(String::new, |peak| {
                    format!(" ({:.0} B)", (peak - start) / sessions)
                });
                format!("{:.0} B{peak}", (cold - start) / sessions)
            }
            _ => "–".to_string(),
        };
        for (label, b, rss, per, heap) in [
            (
                "cold",
                &r.cold,
                r.rss_cold,
                format!("{per_session:.1} KiB"),
                heap_per_session,
            ),
            ("after restart", &r.warm, r.rss_warm, "–".into(), "–".into()),
            (
                &format!("after restart, {} admin pages served meanwhile", r.scrapes),
                &r.scraped,
                r.rss_warm,
                "–".into(),
                "–".into(),
            ),
            (
                &format!("after restart, {} reloads meanwhile", r.reloads),
                &r.reloaded,
                r.rss_warm,
                "–".into(),
                "–".into(),
            ),
        ] {
            let _ = writeln!(
                out,
                "| {} | {label} | {} | {} MiB | {per} | {heap} |",
                r.credentials,
                b.cells(),
                mib(rss),
            );
        }
    }
    let _ = writeln!(
        out,
        "\n| credentials | admin request ({PROBE_ROUNDS} in a row) | median ms | max ms | body |"
    );
    let _ = writeln!(out, "|---:|---|---:|---:|---:|");
    for r in results {
        for p in &r.admin {
            let _ = writeln!(
                out,
                "| {} | `GET {}` | {:.1} | {:.1} | {:.1} KiB |",
                r.credentials,
                p.what,
                p.median.as_secs_f64() * 1000.0,
                p.max.as_secs_f64() * 1000.0,
                p.bytes as f64 / 1024.0
            );
        }
    }
    let _ = writeln!(
        out,
        "\n| credentials | idle CPU per second (an alert check each second), after the cold burst |"
    );
    let _ = writeln!(out, "|---:|---:|");
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {:.1} ms |",
            r.credentials,
            r.idle_cpu.as_secs_f64() * 1000.0
        );
    }
    let _ = writeln!(
        out,
        "\n| credentials | restart to ready (sessions in store) | RSS at ready after restart |"
    );
    let _ = writeln!(out, "|---:|---:|---:|");
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} ms ({} sessions) | {} MiB |",
            r.credentials,
            ms(r.restart),
            r.cold.requests - r.cold.errors,
            mib(r.rss_restart)
        );
    }
    out
}
