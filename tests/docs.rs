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
