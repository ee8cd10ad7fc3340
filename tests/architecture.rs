//! The module graph: no import cycle between the modules of `src/`, top-level ones or any
//! file below them (a cycle means a responsibility sits in the wrong place); configuration stays
//! a leaf that the modules consuming it depend on, never the other way round; and the store's
//! Redis backend is named by the store alone. Also what the code may not do anywhere: spawn a
//! task that shutdown does not know of, or use `unsafe` outside its one allowed call.
//!
//! Every file is a module (`src/sim/state.rs` is `sim::state`). A module depends on another
//! when its code (test modules, comments and literals aside) names a path into it: a
//! `crate::` path, or a `super::`/`self::` path resolved from where it is written, in `use`
//! trees (`use super::{a, b}` names both) as anywhere else.

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
        // `r` starts a raw string unless it ends an identifier; a `b` before it is the byte
        // string prefix, not an identifier.
        let before: Vec<char> = out.chars().rev().take(2).collect();
        let after_ident = match before.as_slice() {
            ['b', p] => ident_char(*p),
            ['b'] | [] => false,
            [p, ..] => ident_char(*p),
        };
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

/// The module a source file is, by its path: `src/sim/state.rs` is `sim::state`,
/// `src/sim/mod.rs` is `sim`; `None` for the crate roots (`src/lib.rs`, `src/main.rs`).
fn module_of(rel: &str) -> Option<String> {
    let path = rel.strip_prefix("src/")?.strip_suffix(".rs")?;
    let path = path.strip_suffix("/mod").unwrap_or(path);
    (path != "lib" && path != "main").then(|| path.replace('/', "::"))
}

/// Whether `c` can be part of an identifier.
fn ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// The positions where `word` starts as a whole word in `text`.
fn word_starts<'a>(text: &'a str, word: &'a str) -> impl Iterator<Item = usize> + 'a {
    text.match_indices(word).map(|(i, _)| i).filter(move |&i| {
        !text[..i].chars().next_back().is_some_and(ident_char)
            && !text[i + word.len()..]
                .chars()
                .next()
                .is_some_and(ident_char)
    })
}

/// The paths a `use` tree names, each as its segments: `super::{a, b::{c, self}}` names
/// `super::a`, `super::b::c` and `super::b::self`. `tree` has no whitespace.
fn use_paths(tree: &str, prefix: &[String], out: &mut Vec<Vec<String>>) {
    if let Some(inner) = tree.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
        let mut depth = 0;
        let mut start = 0;
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    use_paths(&inner[start..i], prefix, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        use_paths(&inner[start..], prefix, out);
        return;
    }
    if tree.is_empty() {
        return;
    }
    let mut path = prefix.to_vec();
    match tree.split_once("::") {
        Some((head, rest)) => {
            path.push(head.to_owned());
            use_paths(rest, &path, out);
        }
        None => {
            // `name as alias` arrives as `name@alias`: the name is what is imported.
            path.push(tree.split('@').next().unwrap_or(tree).to_owned());
            out.push(path);
        }
    }
}

/// Every module path `text` names that starts with `crate`, `super` or `self`, as segments:
/// the paths of its `use` trees (expanded) and the paths written in its code.
fn named_paths(text: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for i in word_starts(text, "use") {
        let rest = &text[i + "use".len()..];
        let tree = &rest[..rest.find(';').unwrap_or(rest.len())];
        let tree: String = tree
            .replace(" as ", "@")
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        use_paths(&tree, &[], &mut out);
    }
    for root in ["crate", "super", "self"] {
        for i in word_starts(text, root) {
            let mut path = vec![root.to_owned()];
            let mut rest = &text[i + root.len()..];
            while let Some(after) = rest.trim_start().strip_prefix("::") {
                let after = after.trim_start();
                let len = after.find(|c: char| !ident_char(c)).unwrap_or(after.len());
                if len == 0 {
                    break;
                }
                path.push(after[..len].to_owned());
                rest = &after[len..];
            }
            if path.len() > 1 {
                out.push(path);
            }
        }
    }
    out.retain(|p| matches!(p[0].as_str(), "crate" | "super" | "self"));
    out
}

/// The module `path`, named in `module`, refers to (or to an item of): its longest prefix
/// that is a module; `None` for the crate root.
fn resolve(module: &str, path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    let mut abs: Vec<&str> = module.split("::").collect();
    let mut segments = path.iter().map(String::as_str).peekable();
    if segments.peek() == Some(&"crate") {
        abs.clear();
        segments.next();
    }
    while let Some(&s) = segments.peek() {
        match s {
            "super" => {
                abs.pop();
            }
            "self" => {}
            _ => break,
        }
        segments.next();
    }
    abs.extend(segments);
    (1..=abs.len())
        .rev()
        .map(|n| abs[..n].join("::"))
        .find(|m| modules.contains(m))
}

/// Every module (a file of `src/`) → the modules its code names, through `crate::` paths and
/// `super::`/`self::` paths resolved from where they are written.
fn module_graph() -> BTreeMap<String, BTreeSet<String>> {
    let files: Vec<(String, String)> = source_files()
        .into_iter()
        .filter_map(|(rel, file)| Some((module_of(&rel)?, code(&file))))
        .collect();
    let modules: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut graph = BTreeMap::new();
    for (module, text) in &files {
        let deps: BTreeSet<String> = named_paths(text)
            .iter()
            .filter_map(|path| resolve(module, path, &modules))
            .filter(|target| target != module)
            .collect();
        graph.insert(module.clone(), deps);
    }
    graph
}

/// The top-level module of `module` (`sim` for `sim::state`).
fn top_level(module: &str) -> &str {
    module.split("::").next().unwrap_or(module)
}

/// Top-level module → the top-level modules it names.
fn top_level_graph() -> BTreeMap<String, BTreeSet<String>> {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (module, deps) in module_graph() {
        let top = top_level(&module).to_owned();
        let named: Vec<String> = deps
            .iter()
            .map(|d| top_level(d).to_owned())
            .filter(|d| *d != top)
            .collect();
        graph.entry(top).or_default().extend(named);
    }
    graph
}

/// Whether one of the two modules is inside the other (or they are the same).
fn nested(a: &str, b: &str) -> bool {
    let inside =
        |inner: &str, outer: &str| inner == outer || inner.starts_with(&format!("{outer}::"));
    inside(a, b) || inside(b, a)
}

/// The graph between modules neither of which contains the other. A module and its own
/// submodules are one unit: the parent declares and re-exports them and they use its items,
/// so an edge between them is not a dependency between responsibilities.
fn between_units(graph: &BTreeMap<String, BTreeSet<String>>) -> BTreeMap<String, BTreeSet<String>> {
    graph
        .iter()
        .map(|(m, deps)| {
            let deps = deps.iter().filter(|d| !nested(m, d)).cloned().collect();
            (m.clone(), deps)
        })
        .collect()
}

/// Every import cycle of `graph`: one per group of modules that all reach each other, as one
/// path round it (`a -> b -> a`) and the whole group.
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::from([from.to_owned()]);
        let mut todo = vec![from.to_owned()];
        while let Some(m) = todo.pop() {
            for d in graph.get(&m).into_iter().flatten() {
                if seen.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> =
        graph.keys().map(|m| (m, reach(m))).collect();
    let mut grouped = BTreeSet::new();
    let mut out = Vec::new();
    for m in graph.keys() {
        if grouped.contains(m) {
            continue;
        }
        let group: BTreeSet<String> = reached[m]
            .iter()
            .filter(|o| reached.get(o).is_some_and(|r| r.contains(m)))
            .cloned()
            .collect();
        grouped.extend(group.iter().cloned());
        if let Some(cycle) = cycle_through(graph, m) {
            let members: Vec<&str> = group.iter().map(String::as_str).collect();
            out.push(format!(
                "{} (modules that all reach each other: {})",
                cycle.join(" -> "),
                members.join(", ")
            ));
        }
    }
    out
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
    let graph = top_level_graph();
    assert!(graph.contains_key("proxy") && graph["proxy"].contains("session"));
    let cycles = cycles(&graph);
    assert!(cycles.is_empty(), "import cycles: {cycles:#?}");
}

/// Below the top level too: no module (`sim::state`, `session::login`) is in an import cycle
/// with modules outside itself. A module and its own submodules are one unit and may name
/// each other; see [`between_units`].
#[test]
fn no_module_is_in_an_import_cycle() {
    let graph = module_graph();
    // The paths are resolved through `super::` and `use` trees, or this would pass vacuously.
    assert!(graph["sim::gstn"].contains("sim::state"), "{graph:#?}");
    assert!(
        graph["session::otp"].contains("session::login"),
        "{graph:#?}"
    );
    let cycles = cycles(&between_units(&graph));
    assert!(
        cycles.is_empty(),
        "import cycles between modules: {cycles:#?}"
    );
}

#[test]
fn config_depends_only_on_leaf_types() {
    let graph = top_level_graph();
    let allowed: BTreeSet<&str> = ["gstin", "path"].into();
    let extra: Vec<&String> = graph["config"]
        .iter()
        .filter(|d| !allowed.contains(d.as_str()))
        .collect();
    assert!(extra.is_empty(), "config imports {extra:?}");
}

/// Which backend holds the sessions is the store's business: everyone else goes through
/// `store::Store`, so no module outside `src/store/` names `store::redis`.
#[test]
fn only_the_store_names_its_redis_backend() {
    let mut naming: Vec<String> = module_graph()
        .into_iter()
        .filter(|(m, deps)| top_level(m) != "store" && deps.contains("store::redis"))
        .map(|(m, _)| m)
        .collect();
    for (rel, file) in source_files() {
        if !rel.starts_with("src/store/") && code(&file).contains("store::redis") {
            naming.push(rel);
        }
    }
    assert!(
        naming.is_empty(),
        "store::redis named outside src/store/: {naming:?}"
    );
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

/// Every task outside the simulator (which stops its own) is on the gateway's tracker or owned
/// by a `JoinSet`, so that shutdown can stop it in order: a bare `tokio::spawn` is a task that
/// shutdown can neither stop nor wait for.
#[test]
fn every_task_the_gateway_spawns_is_tracked() {
    let mut bare = Vec::new();
    for (rel, file) in source_files() {
        if rel.starts_with("src/sim/") {
            continue;
        }
        let text = code(&file);
        if ["tokio::spawn", "tokio::task::spawn("]
            .iter()
            .any(|s| text.contains(s))
        {
            bare.push(rel);
        }
    }
    assert!(
        bare.is_empty(),
        "bare tokio::spawn (use gstgate::tasks::Tasks, or a JoinSet the spawner owns): {bare:?}"
    );
}

/// The one file with `unsafe` code: glibc's `malloc_trim` and `mallinfo2`, which have no safe
/// binding.
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
/// glibc's allocator calls need one), the binary forbids it, and the exceptions are the two
/// pointer-free allocator calls in `src/heap.rs` (`malloc_trim`, `mallinfo2`), each allowed
/// right there: any other `unsafe`, or `allow(unsafe_code)` anywhere else, fails.
#[test]
fn unsafe_code_is_the_two_allocator_calls() {
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
    let expected = BTreeMap::from([(UNSAFE_ALLOWED.to_owned(), (2, 2))]);
    assert_eq!(
        found, expected,
        "(unsafe keywords, allow(unsafe_code)) per file"
    );
}

/// The checks above read code only: what comments and literals say does not count.
#[test]
fn the_checks_see_code_not_comments_or_literals() {
    let text = "let a = \"tokio::spawn(\"; // unsafe\n\
                let b = br#\"unsafe \"quoted\" crate::x\"#; /* crate::y /* nested */ */\n\
                let c = '\"'; let d: &'static str = r\"unsafe\"; unsafe { f() }";
    let code = strip_comments_and_literals(text);
    assert_eq!(word_count(&code, "unsafe"), 1, "{code}");
    for gone in ["tokio::spawn", "crate::x", "crate::y", "quoted"] {
        assert!(!code.contains(gone), "{gone} in {code}");
    }
    assert!(code.contains("&'static str"), "{code}");
}
