//! The module graph: no import cycle between top-level modules of `src/` (a cycle means a
//! responsibility sits in the wrong place), and configuration stays a leaf that the modules
//! consuming it depend on, never the other way round. Also what the code may not do anywhere:
//! spawn a task that shutdown does not know of, or use `unsafe` outside its one allowed call.
//!
//! A module depends on another when its code (test modules, comments and literals aside) names
//! `crate::<other>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The code of a file without its `#[cfg(test)]` module (always the last item here), its
/// comments, or the contents of its string and character literals.
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]") {
        Some(i) => &text[..i],
        None => &text[..],
    };
    strip_comments_and_literals(text)
}

/// `text` with comments blanked out and string and character literals emptied (newlines
/// kept), so that a check sees only what the compiler sees as code.
fn strip_comments_and_literals(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let at = |i: usize| b.get(i).copied();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        if c == '/' && at(i + 1) == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && at(i + 1) == Some('*') {
            let mut depth = 0;
            loop {
                match (at(i), at(i + 1)) {
                    (Some('/'), Some('*')) => (depth, i) = (depth + 1, i + 2),
                    (Some('*'), Some('/')) => (depth, i) = (depth - 1, i + 2),
                    (Some(ch), _) => {
                        if ch == '\n' {
                            out.push('\n');
                        }
                        i += 1;
                    }
                    (None, _) => break,
                }
                if depth == 0 {
                    break;
                }
            }
            out.push(' ');
            continue;
        }
        let after_ident = out
            .chars()
            .next_back()
            .is_some_and(|p| p.is_alphanumeric() || p == '_');
        if c == 'r' && !after_ident && matches!(at(i + 1), Some('"' | '#')) {
            let mut j = i + 1;
            let mut hashes = 0;
            while at(j) == Some('#') {
                (hashes, j) = (hashes + 1, j + 1);
            }
            if at(j) == Some('"') {
                j += 1;
                while j < b.len() && !(b[j] == '"' && (1..=hashes).all(|k| at(j + k) == Some('#')))
                {
                    if b[j] == '\n' {
                        out.push('\n');
                    }
                    j += 1;
                }
                out.push_str("\"\"");
                i = j + 1 + hashes;
                continue;
            }
        }
        if c == '"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != '"' {
                if b[j] == '\n' {
                    out.push('\n');
                }
                j += if b[j] == '\\' { 2 } else { 1 };
            }
            out.push_str("\"\"");
            i = j + 1;
            continue;
        }
        // A character literal (a lifetime has no closing quote after one character).
        if c == '\'' && at(i + 1) == Some('\\') {
            let mut j = i + 2;
            while j < b.len() && b[j] != '\'' {
                j += 1;
            }
            out.push_str("' '");
            i = j + 1;
            continue;
        }
        if c == '\'' && at(i + 2) == Some('\'') {
            out.push_str("' '");
            i += 3;
            continue;
        }
        out.push(c);
        i += 1;
    }
    out
}

/// `src/`, and each of its `.rs` files with its path relative to the crate root
/// (`src/store/mod.rs`).
fn source_files() -> Vec<(String, PathBuf)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<(String, PathBuf)> = rust_files(&root.join("src"))
        .into_iter()
        .map(|f| {
            let rel = f
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/");
            (rel, f)
        })
        .collect();
    files.sort();
    files
}

/// Top-level module → the top-level modules it names.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in rust_files(&src) {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if module == "main" || module == "lib" {
            continue;
        }
        let deps = graph.entry(module.clone()).or_default();
        let text = code(&file);
        for (i, _) in text.match_indices("crate::") {
            let name: String = text[i + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if !name.is_empty() && name != module {
                deps.insert(name);
            }
        }
    }
    let modules: BTreeSet<String> = graph.keys().cloned().collect();
    for deps in graph.values_mut() {
        deps.retain(|d| modules.contains(d));
    }
    graph
}

/// A path from `from` back to itself through `graph`, if there is one.
fn cycle_through(graph: &BTreeMap<String, BTreeSet<String>>, from: &str) -> Option<Vec<String>> {
    let mut stack = vec![(from.to_owned(), vec![from.to_owned()])];
    let mut seen = BTreeSet::new();
    while let Some((node, path)) = stack.pop() {
        for next in &graph[&node] {
            if next == from {
                let mut cycle = path.clone();
                cycle.push(from.to_owned());
                return Some(cycle);
            }
            if seen.insert(next.clone()) {
                let mut longer = path.clone();
                longer.push(next.clone());
                stack.push((next.clone(), longer));
            }
        }
    }
    None
}

#[test]
fn top_level_modules_have_no_import_cycle() {
    let graph = module_graph();
    assert!(graph.contains_key("proxy") && graph["proxy"].contains("session"));
    let cycles: Vec<String> = graph
        .keys()
        .filter_map(|m| cycle_through(&graph, m))
        .map(|c| c.join(" -> "))
        .collect();
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

#[test]
fn config_depends_only_on_leaf_types() {
    let graph = module_graph();
    let allowed: BTreeSet<&str> = ["gstin", "path"].into();
    let extra: Vec<&String> = graph["config"]
        .iter()
        .filter(|d| !allowed.contains(d.as_str()))
        .collect();
    assert!(extra.is_empty(), "config imports {extra:?}");
}

/// The module map in `docs/architecture.md` names every source file, and every file it names
/// exists: a new file cannot go undocumented, nor a removed one stay documented.
#[test]
fn the_module_map_names_every_source_file() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let named: BTreeSet<String> = map
        .split('`')
        .filter(|s| s.starts_with("src/") && s.ends_with(".rs"))
        .map(str::to_owned)
        .collect();
    let files: BTreeSet<String> = rust_files(&root.join("src"))
        .iter()
        .map(|f| {
            f.strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .replace('\\', "/")
        })
        .collect();
    let missing: Vec<&String> = files.difference(&named).collect();
    let stale: Vec<&String> = named.difference(&files).collect();
    assert!(
        missing.is_empty(),
        "not in docs/architecture.md: {missing:?}"
    );
    assert!(
        stale.is_empty(),
        "named in docs/architecture.md but absent: {stale:?}"
    );
}

/// Files that still spawn tasks with `tokio::spawn`, which shutdown neither stops nor waits
/// for: the session manager's, until it takes the gateway's `gstgate::tasks::Tasks` too. A
/// file leaves the list when it is converted; a file that no longer spawns must leave it, so
/// the list only shrinks.
const UNTRACKED_SPAWNS_ALLOWED: &[&str] = &[
    "src/session/group.rs",
    "src/session/mod.rs",
    "src/session/scheduler.rs",
    "src/session/single_flight.rs",
];

/// Every task outside the simulator (which stops its own) is on the gateway's tracker or owned
/// by a `JoinSet`, so that shutdown can stop it in order: a bare `tokio::spawn` is a task that
/// shutdown can neither stop nor wait for.
#[test]
fn every_task_the_gateway_spawns_is_tracked() {
    let mut bare = Vec::new();
    let mut converted = Vec::new();
    for (rel, file) in source_files() {
        if rel.starts_with("src/sim/") {
            continue;
        }
        let text = code(&file);
        let spawns = ["tokio::spawn", "tokio::task::spawn("]
            .iter()
            .any(|s| text.contains(s));
        match (spawns, UNTRACKED_SPAWNS_ALLOWED.contains(&rel.as_str())) {
            (true, false) => bare.push(rel),
            (false, true) => converted.push(rel),
            _ => {}
        }
    }
    assert!(
        bare.is_empty(),
        "bare tokio::spawn (use gstgate::tasks::Tasks, or a JoinSet the spawner owns): {bare:?}"
    );
    assert!(
        converted.is_empty(),
        "no bare tokio::spawn left: remove from UNTRACKED_SPAWNS_ALLOWED: {converted:?}"
    );
}

/// The one file with `unsafe` code: glibc's `malloc_trim`, which has no safe binding.
const UNSAFE_ALLOWED: &str = "src/heap.rs";

/// How often `word` occurs in `text` as a whole word (not inside a longer identifier).
fn word_count(text: &str, word: &str) -> usize {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word)
        .filter(|(i, _)| {
            !text[..*i].chars().next_back().is_some_and(ident)
                && !text[i + word.len()..].chars().next().is_some_and(ident)
        })
        .count()
}

/// The library denies unsafe code (it cannot forbid it: `forbid` admits no exception, and
/// `malloc_trim` needs one), the binary forbids it, and the one exception is one `unsafe`
/// block in `src/heap.rs`, allowed right there: any other `unsafe`, or `allow(unsafe_code)`
/// anywhere else, fails.
#[test]
fn unsafe_code_is_the_one_malloc_trim_call() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = code(&root.join("src/lib.rs"));
    let main = code(&root.join("src/main.rs"));
    assert!(lib.contains("#![deny(unsafe_code)]"), "src/lib.rs");
    assert!(main.contains("#![forbid(unsafe_code)]"), "src/main.rs");
    let mut found = BTreeMap::new();
    for (rel, file) in source_files() {
        let text = code(&file);
        let blocks = word_count(&text, "unsafe");
        let allows = text.matches("allow(unsafe_code)").count();
        if blocks + allows > 0 {
            found.insert(rel, (blocks, allows));
        }
    }
    let expected = BTreeMap::from([(UNSAFE_ALLOWED.to_owned(), (1, 1))]);
    assert_eq!(
        found, expected,
        "(unsafe keywords, allow(unsafe_code)) per file"
    );
}
