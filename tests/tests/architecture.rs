//! The workspace's module structure, read from its source (issue 30): no source file
//! longer than [`MAX_LINES`] lines before its unit tests, and inside each crate no module
//! that imports a sibling that imports it back, directly or around a circle. The
//! crates themselves form a line (proto ← raft ← core ← federator ← chaos ← tests), which
//! cargo enforces; a circle of modules inside one crate only a reading like this finds.
//!
//! A reference is any `crate::a::b` or `super::a` path in code outside test modules
//! (comments skipped); it is an edge between the two children of the modules' deepest
//! common ancestor (`server::admin::x` naming `crate::server::federation::y` is an edge
//! admin → federation under `server`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The library sources of every crate (binaries are crates of their own).
const CRATES: &[&str] =
    &["proto/src", "raft/src", "core/src", "federator/src", "chaos/src", "tests/support"];

/// Lines of a source file before its unit tests, at most: a file longer than that does
/// more than one job (split it where its parts meet).
const MAX_LINES: usize = 800;

type ModPath = Vec<String>;

/// One sibling edge: under `parent`, child `from` names child `to`, first at `at`.
#[derive(Debug)]
struct Edge {
    parent: ModPath,
    from: String,
    to: String,
    at: String,
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace root").to_path_buf()
}

/// The Rust files under `dir` but unit-test files; with `binaries`, also those of `bin/`
/// (crates of their own, so out of the import graph, but sources all the same).
fn rust_files(dir: &Path, binaries: bool) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries {
            let path = entry.expect("a directory entry").path();
            let name =
                path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if path.is_dir() {
                if (binaries || name != "bin") && name != "tests" {
                    dirs.push(path);
                }
            } else if name.ends_with(".rs") && name != "tests.rs" && !name.starts_with("test_") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// `src/server/admin.rs` → `["server", "admin"]`; `lib.rs`, `main.rs`, `mod.rs` name
/// their directory.
fn module_of(root: &Path, file: &Path) -> ModPath {
    let relative = file.strip_prefix(root).expect("under the crate root").with_extension("");
    let mut parts: ModPath =
        relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    if matches!(parts.last().map(String::as_str), Some("lib" | "main" | "mod")) {
        parts.pop();
    }
    parts
}

/// The code of a file: comment lines dropped, and everything from its unit-test module
/// on (`#[cfg(test)]` followed by `mod`).
fn code_of(text: &str) -> String {
    let mut code = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("#[cfg(test)]")
            && lines.peek().is_some_and(|next| next.trim_start().starts_with("mod "))
        {
            break;
        }
        if !trimmed.starts_with("//") {
            code.push_str(line);
            code.push('\n');
        }
    }
    code
}

fn ident(s: &str) -> String {
    s.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// The path that `code` starts with (`a::b::c`), or, when a `{…}` group follows its
/// segments, one path per entry of the group (nested groups too).
fn paths_at(code: &str) -> Vec<Vec<String>> {
    let mut prefix = Vec::new();
    let mut rest = code;
    loop {
        let name = ident(rest);
        if name.is_empty() {
            break;
        }
        rest = &rest[rest.find(&name).expect("just read") + name.len()..];
        prefix.push(name);
        match rest.strip_prefix("::") {
            Some(after) => rest = after,
            None => return vec![prefix],
        }
    }
    let Some(group) = rest.trim_start().strip_prefix('{') else { return vec![prefix] };
    let mut entries = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                entries.push(&group[start..i]);
                break;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                entries.push(&group[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    entries
        .into_iter()
        .flat_map(paths_at)
        .filter(|path| !path.is_empty())
        .map(|path| prefix.iter().cloned().chain(path).collect())
        .collect()
}

/// Every module path a file's code names through `crate::` or `super::`, absolute.
fn references(me: &ModPath, code: &str) -> Vec<ModPath> {
    let mut found = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        found.extend(paths_at(&code[at + "crate::".len()..]));
    }
    for (at, _) in code.match_indices("super::") {
        let before = code[..at].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue; // the second `super::` of `super::super::`, or a longer name
        }
        let mut rest = &code[at..];
        let mut up = 0;
        while let Some(after) = rest.strip_prefix("super::") {
            up += 1;
            rest = after;
        }
        let base = &me[..me.len().saturating_sub(up)];
        for path in paths_at(rest) {
            found.push(base.iter().cloned().chain(path).collect());
        }
    }
    found
}

fn edges(root: &Path) -> Vec<Edge> {
    let mut edges: BTreeMap<(ModPath, String, String), String> = BTreeMap::new();
    for file in rust_files(root, false) {
        let me = module_of(root, &file);
        let text = std::fs::read_to_string(&file).expect("a source file");
        let code = code_of(&text);
        for path in references(&me, &code) {
            let common = me.iter().zip(&path).take_while(|(a, b)| a == b).count();
            let (Some(from), Some(to)) = (me.get(common), path.get(common)) else { continue };
            let relative = file.strip_prefix(workspace()).unwrap_or(&file).display().to_string();
            edges.entry((me[..common].to_vec(), from.clone(), to.clone())).or_insert(relative);
        }
    }
    edges.into_iter().map(|((parent, from, to), at)| Edge { parent, from, to, at }).collect()
}

/// The circles among `edges`: for each, the edges around it.
fn circles(edges: &[Edge]) -> Vec<Vec<&Edge>> {
    let mut by_parent: BTreeMap<&ModPath, Vec<&Edge>> = BTreeMap::new();
    for edge in edges {
        by_parent.entry(&edge.parent).or_default().push(edge);
    }
    let mut found = Vec::new();
    for siblings in by_parent.values() {
        let mut reported: BTreeSet<BTreeSet<&str>> = BTreeSet::new();
        for start in siblings {
            // Breadth-first from `start.to` back to `start.from`: the shortest circle
            // through this edge.
            let mut came_from: BTreeMap<&str, &Edge> = BTreeMap::new();
            let mut queue = std::collections::VecDeque::from([start.to.as_str()]);
            let mut seen = BTreeSet::from([start.to.as_str()]);
            while let Some(node) = queue.pop_front() {
                if node == start.from {
                    break;
                }
                for edge in siblings.iter().filter(|e| e.from == node) {
                    if seen.insert(edge.to.as_str()) {
                        came_from.insert(edge.to.as_str(), edge);
                        queue.push_back(edge.to.as_str());
                    }
                }
            }
            if !seen.contains(start.from.as_str()) {
                continue;
            }
            let mut circle = vec![*start];
            let mut node = start.from.as_str();
            while node != start.to {
                let Some(edge) = came_from.get(node) else { break };
                circle.push(edge);
                node = edge.from.as_str();
            }
            let members: BTreeSet<&str> = circle.iter().map(|e| e.from.as_str()).collect();
            if reported.insert(members) {
                found.push(circle);
            }
        }
    }
    found
}

#[test]
fn no_module_imports_a_sibling_that_imports_it_back() {
    let mut report = Vec::new();
    let mut files = 0;
    for krate in CRATES {
        let root = workspace().join(krate);
        files += rust_files(&root, false).len();
        for circle in circles(&edges(&root)) {
            let parent = circle[0].parent.join("::");
            let steps: Vec<String> =
                circle.iter().map(|e| format!("  {} → {} ({})", e.from, e.to, e.at)).collect();
            report.push(format!(
                "{krate}: in {}:\n{}",
                if parent.is_empty() { "the crate root" } else { &parent },
                steps.join("\n")
            ));
        }
    }
    assert!(files > 200, "read only {files} source files: is the workspace layout as expected?");
    assert!(report.is_empty(), "import circles:\n{}", report.join("\n"));
}

#[test]
fn no_source_file_is_longer_than_its_limit() {
    let mut long = Vec::new();
    for krate in CRATES {
        for path in rust_files(&workspace().join(krate), true) {
            let text = std::fs::read_to_string(&path).expect("a source file");
            let lines = code_lines(&text);
            if lines > MAX_LINES {
                let relative = path.strip_prefix(workspace()).unwrap_or(&path).display();
                long.push(format!("{relative}: {lines} lines before its tests"));
            }
        }
    }
    assert!(long.is_empty(), "longer than {MAX_LINES} lines:\n{}", long.join("\n"));
}

/// Lines before a file's unit-test module (`#[cfg(test)]` followed by `mod`).
fn code_lines(text: &str) -> usize {
    let lines: Vec<&str> = text.lines().collect();
    lines
        .windows(2)
        .position(|w| {
            w[0].trim_start().starts_with("#[cfg(test)]") && w[1].trim_start().starts_with("mod ")
        })
        .unwrap_or(lines.len())
}

#[test]
fn paths_are_read_across_groups_lines_and_supers() {
    let me: ModPath = vec!["server".into(), "admin".into(), "calls".into()];
    let code = "use crate::{\n    agent::x,\n    server::{federation::y, health},\n};\n\
                let n = crate::clock::unix_now();\nuse super::super::leases::Lessor;\n\
                use super::{authorize, backup::restore};\n";
    let found: BTreeSet<String> = references(&me, code).iter().map(|p| p.join("::")).collect();
    let expected = [
        "agent::x",
        "server::federation",
        "server::health",
        "clock::unix_now",
        "server::leases::Lessor",
        "server::admin::authorize",
        "server::admin::backup::restore",
    ];
    for path in expected {
        assert!(found.iter().any(|f| f.starts_with(path)), "{path} not read; read: {found:?}");
    }
    assert!(
        code_of("//! see crate::server\n#[cfg(test)]\nmod tests {\nuse crate::x;\n}").is_empty()
    );
}

#[test]
fn a_circle_is_found_with_its_edges() {
    let edge = |from: &str, to: &str| Edge {
        parent: vec!["bench".into()],
        from: from.into(),
        to: to.into(),
        at: format!("{from}.rs"),
    };
    let edges = [edge("report", "steps"), edge("steps", "text"), edge("load", "steps")];
    assert!(circles(&edges).is_empty());
    let edges = [edge("report", "load"), edge("load", "steps"), edge("steps", "report")];
    let found = circles(&edges);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].len(), 3, "{found:?}");
}
