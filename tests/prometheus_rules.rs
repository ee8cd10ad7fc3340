//! The Prometheus rules in deploy/prometheus/: promtool accepts them and their unit tests pass,
//! and a healthy gateway, scraped for real after its first start and after a restart, raises
//! none of their alerts.
//!
//! The scrape is held constant over the evaluated window, so it tests the gauge rules (session
//! states, time to expiry, store health) and the target-down rule against real values; the
//! counter rules cannot fire on flat counters, and their firing cases are in
//! `alerts_test.yml`. What the scrape does check for every rule is that each metric it names
//! is one gstgate exports.
//!
//! Needs `promtool`: on the PATH, or where `PROMTOOL` says (scripts/test.sh takes it out of
//! Debian's `prometheus` package into target/tools/ and sets `PROMTOOL`).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

/// The promtool to run.
fn promtool_command() -> Command {
    Command::new(std::env::var_os("PROMTOOL").unwrap_or_else(|| "promtool".into()))
}

/// Runs `promtool` with `args` and panics with its whole output unless it succeeds.
fn promtool(args: &[&str]) -> String {
    let out = promtool_command()
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}): put it on the PATH or name it in PROMTOOL, as scripts/test.sh does")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {} failed ({}):\n{text}",
        args.join(" "),
        out.status
    );
    text
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests_pass() {
    let check = promtool(&["check", "rules", "deploy/prometheus/alerts.yml"]);
    assert!(check.contains("SUCCESS"), "{check}");
    let test = promtool(&["test", "rules", "deploy/prometheus/alerts_test.yml"]);
    assert!(test.contains("SUCCESS"), "{test}");
}

/// One alerting rule of alerts.yml: its name and PromQL expression.
#[derive(Debug)]
struct Rule {
    alert: String,
    expr: String,
}

/// The alerting rules of a rules file. Not a YAML parser: it reads the `- alert:` lines and the
/// `expr:` after each, inline or as a block scalar (`|`, `>-`…) of the lines indented deeper.
fn alert_rules(yaml: &str) -> Vec<Rule> {
    let mut rules: Vec<Rule> = Vec::new();
    let mut lines = yaml.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if let Some(name) = trimmed.strip_prefix("- alert:") {
            rules.push(Rule {
                alert: unquote(name.trim()).to_owned(),
                expr: String::new(),
            });
        } else if let Some(value) = trimmed.strip_prefix("expr:") {
            let rule = rules
                .last_mut()
                .unwrap_or_else(|| panic!("`expr:` before any `- alert:`: {line}"));
            assert!(rule.expr.is_empty(), "two exprs for {}", rule.alert);
            let value = value.trim();
            if value.starts_with('|') || value.starts_with('>') {
                let indent = line.len() - trimmed.len();
                let mut block = Vec::new();
                while let Some(next) = lines.peek() {
                    let deeper = next.len() - next.trim_start().len() > indent;
                    if !next.trim().is_empty() && !deeper {
                        break;
                    }
                    block.push(next.trim());
                    lines.next();
                }
                rule.expr = block.join("\n").trim().to_owned();
            } else {
                rule.expr = unquote(value).to_owned();
            }
        }
    }
    for rule in &rules {
        assert!(!rule.expr.is_empty(), "no expr found for {}", rule.alert);
    }
    rules
}

fn unquote(s: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|s| s.strip_suffix(q)) {
            return inner;
        }
    }
    s
}

/// The metric names a PromQL expression selects: identifiers outside strings, label matchers,
/// range brackets and grouping label lists that are neither functions, aggregations nor
/// keywords.
fn metric_names(expr: &str) -> BTreeSet<String> {
    const WORDS: &[&str] = &[
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "inf",
        "nan",
    ];
    const GROUPING: &[&str] = &[
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    // Blank out strings, `{…}` and `[…]`.
    let mut plain = String::new();
    let mut chars = expr.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' | '\'' | '`' => {
                while let Some(d) = chars.next() {
                    if d == '\\' && c != '`' {
                        chars.next();
                    } else if d == c {
                        break;
                    }
                }
                plain.push(' ');
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                for d in chars.by_ref() {
                    if d == close {
                        break;
                    }
                }
                plain.push(' ');
            }
            c => plain.push(c),
        }
    }
    let mut names = BTreeSet::new();
    let bytes = plain.as_bytes();
    let is_start = |b: u8| b.is_ascii_alphabetic() || b == b'_' || b == b':';
    let is_part = |b: u8| is_start(b) || b.is_ascii_digit();
    let mut i = 0;
    while i < bytes.len() {
        if !is_start(bytes[i]) || (i > 0 && (is_part(bytes[i - 1]) || bytes[i - 1] == b'.')) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && is_part(bytes[i]) {
            i += 1;
        }
        let word = &plain[start..i];
        let rest = plain[i..].trim_start();
        if GROUPING.contains(&word) && rest.starts_with('(') {
            // Skip the label list.
            i = plain.len() - rest.len() + rest.find(')').expect("closing parenthesis") + 1;
            continue;
        }
        if WORDS.contains(&word.to_ascii_lowercase().as_str()) || rest.starts_with('(') {
            continue;
        }
        names.insert(word.to_owned());
    }
    names
}

/// Whether Prometheus text declares `name`, a metric name as PromQL sees it (`…_total` of a
/// counter, `…_bucket` of a histogram…).
fn exported(text: &str, name: &str) -> bool {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_once(' '))
        .any(|(family, kind)| {
            let suffixes: &[&str] = match kind.trim() {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "summary" => &["", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            suffixes.iter().any(|s| format!("{family}{s}") == name)
        })
}

/// The samples of Prometheus text as (series in PromQL notation, value), with `target` labels
/// added to each, as Prometheus adds its target's labels. Label values are re-escaped for a
/// PromQL string.
fn samples(text: &str, target: &[(&str, &str)]) -> Vec<(String, f64)> {
    let mut out = Vec::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .unwrap_or_else(|| panic!("no value: {line}"));
        let name = &line[..name_end];
        let mut labels: Vec<(String, String)> = Vec::new();
        let mut rest = &line[name_end..];
        if let Some(inner) = rest.strip_prefix('{') {
            let mut chars = inner.char_indices();
            let mut key = String::new();
            loop {
                let (i, c) = chars.next().unwrap_or_else(|| panic!("unclosed: {line}"));
                match c {
                    '}' => {
                        rest = &inner[i + 1..];
                        break;
                    }
                    ',' | ' ' => {}
                    '=' => {
                        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                        let mut value = String::new();
                        loop {
                            match chars.next().unwrap_or_else(|| panic!("unclosed: {line}")) {
                                (_, '"') => break,
                                (_, '\\') => match chars.next().map(|(_, c)| c) {
                                    Some('n') => value.push('\n'),
                                    Some(c) => value.push(c),
                                    None => panic!("dangling escape: {line}"),
                                },
                                (_, c) => value.push(c),
                            }
                        }
                        labels.push((std::mem::take(&mut key), value));
                    }
                    c => key.push(c),
                }
            }
        }
        let value = rest
            .split_whitespace()
            .next()
            .unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|e| panic!("value of {line}: {e}"));
        labels.extend(target.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| {
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                format!("{k}=\"{v}\"")
            })
            .collect();
        out.push((format!("{name}{{{}}}", labels.join(",")), value));
    }
    out
}

/// A YAML string: JSON's double-quoted strings are YAML too.
fn yaml_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

/// The target labels annotation-based discovery gives the pod of
/// deploy/kubernetes/deployment.yaml with the usual relabelling (the pod's labels mapped, its
/// namespace and name copied), for a gateway whose admin listener is `instance`.
fn pod_target(instance: &str) -> Vec<(&'static str, String)> {
    vec![
        ("job", "kubernetes-pods".into()),
        ("instance", instance.into()),
        ("namespace", "gstgate".into()),
        ("pod", "gstgate-5d8f7c9b4-x2x7q".into()),
        ("app_kubernetes_io_name", "gstgate".into()),
    ]
}

/// Runs promtool on the rules with `text`, one scrape of a gateway whose admin listener is
/// `instance`, as 30 minutes of unchanged samples (with `up` 1): no alert may fire. Then, as a
/// control that the rules see this target at all, the same samples for 10 minutes followed by
/// an unreachable target (`up` 0, the series gone stale): the target-down alert fires.
fn assert_no_alert(rules_file: &Path, names: &BTreeSet<&str>, text: &str, instance: &str) {
    let target = pod_target(instance);
    let target: Vec<(&str, &str)> = target.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let scraped = samples(text, &target);
    assert!(scraped.len() > 20, "samples parsed from:\n{text}");
    let up_labels: Vec<String> = target.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let up = format!("up{{{}}}", up_labels.join(","));
    let series = |lines: &mut String, up_values: &str, values: &dyn Fn(f64) -> String| {
        for (series, value) in &scraped {
            lines.push_str(&format!(
                "      - series: {}\n        values: '{}'\n",
                yaml_str(series),
                values(*value)
            ));
        }
        lines.push_str(&format!(
            "      - series: {}\n        values: '{up_values}'\n",
            yaml_str(&up)
        ));
    };

    let mut test = format!(
        "rule_files:\n  - {}\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n    input_series:\n",
        yaml_str(rules_file.to_str().unwrap())
    );
    series(&mut test, "1+0x30", &|v| format!("{v}+0x30"));
    test.push_str("    alert_rule_test:\n");
    for name in names {
        test.push_str(&format!(
            "      - eval_time: 30m\n        alertname: {name}\n        exp_alerts: []\n"
        ));
    }
    test.push_str("  - interval: 1m\n    input_series:\n");
    series(&mut test, "1+0x10 0+0x20", &|v| format!("{v}+0x10 stale"));
    test.push_str(&format!(
        "    promql_expr_test:\n      - expr: 'count(ALERTS{{alertname=\"GstgateDown\",alertstate=\"firing\",instance=\"{instance}\"}})'\n        eval_time: 30m\n        exp_samples:\n          - labels: '{{}}'\n            value: 1\n"
    ));

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("scraped_gateway_test.yml");
    std::fs::write(&path, &test).unwrap();
    let out = promtool_command()
        .args(["test", "rules"])
        .arg(&path)
        .output()
        .expect("run promtool (Debian's `prometheus` package)");
    assert!(
        out.status.success(),
        "promtool test rules on the scraped metrics failed:\n{}{}\n--- test file:\n{test}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Sends `sig` to the gateway and waits for it to exit.
async fn signal(gw: &mut Gateway, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &gw.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    gw.wait().await;
}

#[tokio::test]
async fn a_healthy_gateway_raises_no_alert_after_its_first_start_or_a_restart() {
    let rules_file = rules_dir().join("alerts.yml");
    let rules = alert_rules(&std::fs::read_to_string(&rules_file).unwrap());
    let names: BTreeSet<&str> = rules.iter().map(|r| r.alert.as_str()).collect();
    assert_eq!(
        names.len(),
        rules.len(),
        "alert names are unique: {rules:?}"
    );
    assert!(names.contains("GstgateDown"), "{names:?}");

    // As deployed: the three APIs, and the embedded store on a volume that outlives the
    // process, so that the second start below resumes the sessions of the first.
    let sim = Sim::start(SimOpts::default()).await;
    let volume = tempfile::tempdir().unwrap();
    let opts = GwOpts {
        apis: vec!["einvoice", "ewaybill", "gstn"],
        store: format!(
            "path = \"{}\"",
            volume.path().join("sessions.redb").display()
        ),
        ..GwOpts::default()
    };

    // First start: the operator runs the GSTN OTP flow, and one e-invoice request logs in and
    // reaches the upstream, so that the login counter and the upstream histogram have series.
    let mut gw = Gateway::start(&sim, opts.clone()).await;
    gw.start_gstn_session(&sim, GSTIN).await;
    assert_eq!(gw.generate(GSTIN, "PROM/1").await.status(), 200);
    let first = gw.metrics().await;

    for rule in &rules {
        let used = metric_names(&rule.expr);
        assert!(!used.is_empty(), "no metric found in {}", rule.alert);
        for name in used {
            // Prometheus adds `up` itself.
            if name != "up" {
                assert!(
                    exported(&first, &name),
                    "{} uses `{name}`, which /metrics does not export:\n{first}",
                    rule.alert
                );
            }
        }
    }
    assert_no_alert(&rules_file, &names, &first, &gw.admin.to_string());

    // The Grafana dashboard queries only metrics a gateway exports, as the rules do.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(rules_dir().join("../grafana/gstgate.json")).unwrap(),
    )
    .unwrap();
    let exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    assert!(exprs.len() > 15, "{exprs:?}");
    for expr in &exprs {
        let used = metric_names(expr);
        assert!(!used.is_empty(), "no metric found in {expr}");
        for name in used {
            assert!(
                exported(&first, &name),
                "the dashboard's `{expr}` uses `{name}`, which /metrics does not export:\n{first}"
            );
        }
    }

    // A restart (SIGTERM flushes the store): the new process resumes every session.
    let logins = sim.count(GSTIN, "auth_calls").await;
    signal(&mut gw, "-TERM").await;
    let gw = Gateway::start(&sim, opts).await;
    assert_eq!(gw.generate(GSTIN, "PROM/2").await.status(), 200);
    let second = gw.metrics().await;
    assert_eq!(
        sim.count(GSTIN, "auth_calls").await,
        logins,
        "the restarted gateway resumed its sessions"
    );
    assert_no_alert(&rules_file, &names, &second, &gw.admin.to_string());
}

#[test]
fn the_rules_parser_reads_inline_and_block_expressions() {
    let rules = alert_rules(
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 1m\n      - alert: \"B\"\n        expr: |\n          sum by (le, upstream) (rate(x_bucket{a=\"b\"}[5m]))\n            / on (job) y > 0.5\n        labels:\n          severity: warning\n",
    );
    assert_eq!(rules.len(), 2);
    assert_eq!(rules[0].alert, "A");
    assert_eq!(rules[0].expr, "up == 0");
    assert_eq!(rules[1].alert, "B");
    assert_eq!(
        metric_names(&rules[1].expr),
        BTreeSet::from(["x_bucket".to_owned(), "y".to_owned()])
    );
    assert_eq!(
        metric_names("histogram_quantile(0.99, sum by (le) (rate(a_b:c[5m]))) > 1e3"),
        BTreeSet::from(["a_b:c".to_owned()])
    );
}
