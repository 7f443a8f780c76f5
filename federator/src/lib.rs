//! Federator: a Raft-replicated service that federates SPIFFE trust bundles and
//! service endpoints between the clusters of a multi-cluster service mesh.
//!
//! The domain is the crate below this one, `federator-core`, which knows nothing of the
//! replica, the agent or the command line; its modules are re-exported here under their
//! own names (`federator::state` is `federator_core::state`).
//!
//! | module | job |
//! |---|---|
//! | [`agent`] | the cluster agent: sources, sinks, static stability |
//! | [`server`] | one replica: consensus, API servers, health, metrics |
//! | [`cli`] | the `federator` command line |
//! | [`metrics_http`] | the plain-HTTP `/metrics`, `/healthz`, `/readyz` of replicas and agents |
//! | [`net`] | free loopback ports for local servers (`dev`, tests) |
//!
//! Re-exported from `federator-core`:
//!
//! | module | job |
//! |---|---|
//! | [`state`] | the replicated federation state and its commands |
//! | [`service`] | exported services and the imports built from them (KEP-1645) |
//! | [`bundle`] | SPIFFE trust bundles: strict parsing, validation, canonical form |
//! | [`identity`] | the federation's CA, certificates, SPIFFE IDs and rustls configs |
//! | [`token`] | join tokens: the single-use secret and how to reach the federation |
//! | [`clock`] | wall-clock time: unix seconds and milliseconds, RFC 3339 text |
//! | [`settings`] | what replica and agent settings share: the error naming the setting |
//! | [`snapshot_file`] | the backup file `federator snapshot save` writes |

pub mod agent;
pub mod cli;
pub mod metrics_http;
pub mod net;
pub mod server;

pub use federator_core::{bundle, clock, identity, service, settings, snapshot_file, state, token};

/// The crate's layers, checked on its source: the shared helpers below the replica, the
/// agent and the command line; the replica and the agent beside each other; the command
/// line above all. (The domain, `federator-core`, is below all of them; the compiler
/// enforces that.)
#[cfg(test)]
mod layering {
    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    /// The helpers the replica and the agent share: they may not import `server`, `agent`
    /// or `cli`.
    const SHARED: &[&str] = &["metrics_http", "net"];

    fn sources(module: &str) -> Vec<PathBuf> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        let file = root.join(format!("{module}.rs"));
        if file.is_file() {
            files.push(file);
        }
        let mut dirs = vec![root.join(module)];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries {
                let path = entry.expect("a directory entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        files
    }

    /// The top-level modules a line of code names through `crate::` (`crate::a::b`,
    /// `crate::{a, b::c}`); comments are skipped.
    fn crate_modules(line: &str) -> BTreeSet<String> {
        let mut found = BTreeSet::new();
        let code = line.trim_start();
        if code.starts_with("//") {
            return found;
        }
        let ident = |s: &str| {
            s.trim_start().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
        };
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut segment_start = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => segment_start = true,
                        c if segment_start && !c.is_whitespace() => {
                            found.insert(ident(&group[i..]));
                            segment_start = false;
                        }
                        _ => {}
                    }
                }
            } else {
                found.insert(ident(rest));
            }
        }
        found.retain(|m: &String| !m.is_empty());
        found
    }

    fn violations(modules: &[&str], forbidden: &[&str]) -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut found = Vec::new();
        for module in modules {
            for file in sources(module) {
                let relative = file.strip_prefix(&root).expect("under src").to_string_lossy();
                let text = std::fs::read_to_string(&file).expect("a source file");
                for (n, line) in text.lines().enumerate() {
                    for named in crate_modules(line) {
                        if forbidden.contains(&named.as_str()) {
                            found.push(format!("{relative}:{}: {}", n + 1, line.trim()));
                        }
                    }
                }
            }
        }
        found
    }

    #[test]
    fn paths_are_read_with_their_groups() {
        let names = |line: &str| crate_modules(line).into_iter().collect::<Vec<_>>();
        assert_eq!(names("use crate::server::config::X;"), ["server"]);
        assert_eq!(
            names("use crate::{agent::x, bundle::{a, b}, cli};"),
            ["agent", "bundle", "cli"]
        );
        assert_eq!(names("let n = crate::clock::unix_now();"), ["clock"]);
        assert!(names("//! see [`crate::server`]").is_empty());
    }

    #[test]
    fn the_shared_helpers_import_nothing_above_them() {
        let found = violations(SHARED, &["server", "agent", "cli"]);
        assert!(found.is_empty(), "imports upward:\n{}", found.join("\n"));
    }

    #[test]
    fn the_replica_and_the_agent_import_neither_each_other_nor_the_command_line() {
        let found = [
            violations(&["server"], &["agent", "cli"]),
            violations(&["agent"], &["server", "cli"]),
        ]
        .concat();
        assert!(found.is_empty(), "imports across or upward:\n{}", found.join("\n"));
    }

    #[test]
    fn every_module_has_a_layer() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let lib = std::fs::read_to_string(root.join("lib.rs")).expect("lib.rs");
        for module in lib.lines().filter_map(|l| l.strip_prefix("pub mod ")) {
            let module = module.trim_end_matches([';', ' ', '{']);
            assert!(
                SHARED.contains(&module) || ["server", "agent", "cli"].contains(&module),
                "module {module} has no layer: add it to SHARED or to the checks above"
            );
        }
    }
}
