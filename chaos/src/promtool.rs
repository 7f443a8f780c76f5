//! Prometheus's `promtool check metrics`, built by `deploy/local/setup-promtool.sh` into
//! `$FEDERATOR_PROMTOOL_DIR/bin` (default `~/.cache/federator/promtool/bin`).

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// The promtool binary.
///
/// # Errors
/// It is not built.
pub fn promtool() -> anyhow::Result<PathBuf> {
    let dir = match std::env::var_os("FEDERATOR_PROMTOOL_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/federator/promtool"),
    };
    let path = dir.join("bin/promtool");
    if !path.is_file() {
        bail!(
            "promtool is not at {}: run `bash deploy/local/setup-promtool.sh` (it builds it \
             with Go), or set FEDERATOR_PROMTOOL_DIR to the directory whose bin/ holds it",
            path.display()
        );
    }
    Ok(path)
}

/// Lints `exposition` (Prometheus text format) with `promtool check metrics`.
///
/// # Errors
/// promtool is missing or found problems (its output in the message).
pub fn check_metrics(exposition: &str) -> anyhow::Result<()> {
    let mut child = Command::new(promtool()?)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting promtool")?;
    child.stdin.take().context("promtool's stdin")?.write_all(exposition.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "promtool check metrics ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}
