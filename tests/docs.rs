//! The documentation stands alone: every relative link in the project's Markdown points at a
//! file (and, where it names one, a heading) that exists in the repository.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every Markdown file of the project, build output aside.
fn markdown(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if path.is_dir() {
            if !name.starts_with('.') && name != "target" {
                out.extend(markdown(&path));
            }
        } else if name.ends_with(".md") {
            out.push(path);
        }
    }
    out
}

/// The targets of the inline links `[text](target)` in `text`, outside code blocks and spans.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Code spans may show link-like text; drop them first.
        let mut plain = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                plain.push_str(part);
            }
        }
        let mut rest = plain.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let end = after.find(')').unwrap_or(after.len());
            out.push(after[..end].trim().to_owned());
            rest = &after[end..];
        }
    }
    out
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of a Markdown file's headings.
fn anchors(path: &Path) -> BTreeSet<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn every_relative_link_in_the_docs_points_at_something_that_exists() {
    let files = markdown(Path::new(ROOT));
    assert!(files.len() >= 8, "{files:?}");
    let mut broken = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") || target.is_empty() {
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().unwrap().join(path)
            };
            let name = file.strip_prefix(ROOT).unwrap().display().to_string();
            if !resolved.exists() {
                broken.push(format!("{name}: {target} (no such file)"));
                continue;
            }
            let is_markdown = resolved.extension().is_some_and(|e| e == "md");
            if let (Some(fragment), true) = (fragment, is_markdown) {
                if !anchors(&resolved).contains(fragment) {
                    broken.push(format!("{name}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

/// Nothing in the project points readers at design notes that are not part of it.
#[test]
fn the_docs_cite_nothing_outside_the_repository() {
    for file in markdown(Path::new(ROOT)) {
        let text = std::fs::read_to_string(&file).unwrap();
        for outside in ["DESIGN.md", "PROTOCOL.md", "STYLE.md", "../shared"] {
            assert!(
                !text.contains(outside),
                "{} mentions {outside}",
                file.display()
            );
        }
    }
}

#[test]
fn link_and_anchor_parsing() {
    assert_eq!(
        links("see [a](docs/a.md#x-y) and `[no](code.md)` and [b](https://e.com)"),
        ["docs/a.md#x-y", "https://e.com"]
    );
    assert_eq!(
        anchor(" Several replicas (Redis)"),
        "several-replicas-redis"
    );
    assert_eq!(
        anchor(" `POST /admin/sessions/{upstream}/{gstin}/refresh`"),
        "post-adminsessionsupstreamgstinrefresh"
    );
}

/// The backticked words of a Markdown table cell.
fn codes_in(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .filter(|c| c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'))
        .map(str::to_owned)
        .collect()
}

/// The rows of the admin listener's error table in docs/operations.md: the statuses of a row
/// (`429, 502, 503` names several) and its codes.
fn admin_error_table() -> Vec<(Vec<u16>, Vec<String>)> {
    let text = std::fs::read_to_string(format!("{ROOT}/docs/operations.md")).unwrap();
    let start = text
        .find("**Errors.** Every failure on the admin listener")
        .expect("the admin error table");
    let mut rows = Vec::new();
    for line in text[start..].lines().skip_while(|l| !l.starts_with('|')) {
        if !line.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let statuses: Vec<u16> = cells[1]
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        if !statuses.is_empty() {
            rows.push((statuses, codes_in(cells[2])));
        }
    }
    rows
}

/// Every admin problem code is documented three times over: in the admin error table of
/// docs/operations.md with its status, in the catalogue of docs/errors.md, and in
/// docs/admin-openapi.json under a response of that status. The codes the admin API tests
/// observe (`admin_problem(res, 404, "upstream_not_found")` in tests/admin_api.rs) must all be
/// in the table, so a new admin code cannot go undocumented.
#[test]
fn every_admin_problem_code_is_documented() {
    let table = admin_error_table();
    assert!(table.len() >= 10, "{table:?}");
    let tests = std::fs::read_to_string(format!("{ROOT}/tests/admin_api.rs")).unwrap();
    let mut observed = BTreeSet::new();
    for call in tests.split("admin_problem(").skip(1) {
        // `res, 404, "upstream_not_found")`: the status and the code.
        let args: Vec<&str> = call.splitn(4, ',').collect();
        let (Some(status), Some(code)) = (
            args.get(1).and_then(|s| s.trim().parse::<u16>().ok()),
            args.get(2).and_then(|c| c.split('"').nth(1)),
        ) else {
            continue;
        };
        observed.insert((status, code.to_owned()));
    }
    assert!(
        observed.contains(&(404, "upstream_not_found".to_owned())),
        "{observed:?}"
    );
    for (status, code) in &observed {
        assert!(
            table
                .iter()
                .any(|(s, c)| s.contains(status) && c.contains(code)),
            "docs/operations.md's admin error table lacks {status} `{code}`"
        );
    }

    let catalogue = std::fs::read_to_string(format!("{ROOT}/docs/errors.md")).unwrap();
    let doc: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{ROOT}/docs/admin-openapi.json")).unwrap(),
    )
    .unwrap();
    // Every response description of every operation, by status, references resolved.
    let mut described: Vec<(u16, String)> = Vec::new();
    for item in doc["paths"].as_object().unwrap().values() {
        for op in item.as_object().unwrap().values() {
            let Some(responses) = op["responses"].as_object() else {
                continue;
            };
            for (status, response) in responses {
                let response = match response["$ref"].as_str() {
                    Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap(),
                    None => response,
                };
                let text = response["description"].as_str().unwrap_or_default();
                described.push((status.parse().unwrap(), text.to_owned()));
            }
        }
    }
    for (statuses, codes) in &table {
        for code in codes {
            assert!(
                catalogue.contains(&format!("| `{code}` |"))
                    || catalogue.contains(&format!("| `{code}` (admin) |")),
                "docs/errors.md has no row for `{code}`"
            );
            // These two answer paths and methods that are not operations of the document.
            if ["route_not_found", "method_not_allowed"].contains(&code.as_str()) {
                continue;
            }
            assert!(
                described
                    .iter()
                    .any(|(s, text)| statuses.contains(s) && text.contains(&format!("`{code}`"))),
                "docs/admin-openapi.json describes `{code}` under no {statuses:?} response"
            );
        }
    }
}
