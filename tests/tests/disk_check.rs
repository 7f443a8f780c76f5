//! `federator check --disk DIR` times durable log appends in DIR without any replica
//! running, and fails naming a directory it cannot write to.

use std::process::{Command, Output};

use federator_tests::federator_bin;

/// `federator check` with `args`, and no federation configured in the environment.
fn check(args: &[&str]) -> Output {
    Command::new(federator_bin())
        .arg("check")
        .args(args)
        .env_remove("FEDERATOR_ENDPOINTS")
        .env_remove("FEDERATOR_CA")
        .env_remove("FEDERATOR_CERT")
        .env_remove("FEDERATOR_KEY")
        .output()
        .expect("run federator check")
}

fn json_report(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|error| {
        panic!(
            "`federator check -o json` printed no JSON ({error}):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn disk_check_alone_times_appends_and_passes_on_a_writable_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().display().to_string();
    let out = check(&["--disk", &path, "-o", "json"]);
    let report = json_report(&out);
    // Only the disk group runs: no endpoint, so the federation is not looked for.
    let checks = report["checks"].as_array().expect("checks");
    assert_eq!(checks.len(), 1, "{report:#}");
    let line = &checks[0];
    assert_eq!(line["group"], "disk", "{report:#}");
    // A loaded machine may push the p99 past the 10 ms warning, or (rarely, with the
    // rest of the suite flushing beside it) past the 100 ms failure: the outcome is the
    // disk's, and the exit status must follow it.
    let outcome = line["outcome"].as_str().unwrap_or_default();
    assert!(["pass", "warn", "fail"].contains(&outcome), "{report:#}");
    assert_eq!(out.status.success(), outcome != "fail", "{report:#}");
    assert_eq!(report["ok"], outcome != "fail", "{report:#}");
    let detail = line["detail"].as_str().unwrap_or_default();
    assert!(
        detail.starts_with(&format!("disk {path}: durable log append p50 "))
            && detail.contains(" ms, p99 ")
            && detail.ends_with("(200 appends, 1 writer)"),
        "{detail}"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).expect("read dir").collect();
    assert!(left.is_empty(), "the probe left files behind: {left:?}");
}

#[test]
fn disk_check_of_a_missing_directory_fails_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("not-created").display().to_string();
    let out = check(&["--disk", &missing]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{text}");
    let line = text.lines().find(|l| l.trim_start().starts_with("× disk")).unwrap_or_default();
    assert!(line.contains(&missing), "no `×` line names {missing}:\n{text}");
    assert!(text.contains("UNHEALTHY: 0 passed, 0 warnings, 1 failed"), "{text}");
}
