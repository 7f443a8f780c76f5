//! Puts the git commit the binary is built from into `federator --version`
//! (`FEDERATOR_COMMIT`): the short hash of HEAD, or `unknown commit` outside a git
//! checkout (a source archive). Uncommitted changes are not marked: the script runs again
//! only when HEAD moves, so such a mark would go stale.

use std::path::Path;
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}

fn main() {
    let commit = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(hash) => format!("commit {hash}"),
        None => "unknown commit".to_string(),
    };
    println!("cargo:rustc-env=FEDERATOR_COMMIT={commit}");
    // Built again when HEAD moves (a commit, a checkout) — only files that exist, or
    // cargo would run this on every build.
    if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]) {
        let dir = Path::new(&dir);
        let mut watched = vec![dir.join("HEAD"), dir.join("packed-refs")];
        if let Some(reference) = git(&["symbolic-ref", "-q", "HEAD"]) {
            watched.push(dir.join(reference));
        }
        for path in watched.iter().filter(|p| p.exists()) {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
}
