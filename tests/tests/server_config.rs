//! `federator server` refuses to start on a wrong or missing setting, and says which.

use std::process::Command;

use federator_tests::federator_bin;

fn start_with(config: &str, extra: &[&str]) -> (bool, String) {
    let dir = tempfile_dir();
    let path = dir.join("server.toml");
    std::fs::write(&path, config).expect("write config");
    let out = Command::new(federator_bin())
        .args(["server", "--config"])
        .arg(&path)
        .args(extra)
        .env_remove("FEDERATOR_ID")
        .output()
        .expect("run federator");
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "federator-config-{}-{}",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

const BASE: &str = r#"
id = 1
data_dir = "data"
[listen]
raft = "127.0.0.1:1"
api = "127.0.0.1:2"
[tls]
ca = "missing/ca.pem"
cert = "missing/replica-1.pem"
key = "missing/replica-1.key"
"#;

#[test]
fn missing_id_is_named_with_its_env_and_flag() {
    let (ok, err) = start_with(&BASE.replace("id = 1", ""), &[]);
    assert!(!ok);
    assert!(err.contains("`id`") && err.contains("FEDERATOR_ID") && err.contains("--id"), "{err}");
}

#[test]
fn unknown_setting_is_named() {
    let (ok, err) = start_with(&format!("{BASE}\n[raft]\nheartbeat = 5\n"), &[]);
    assert!(!ok);
    assert!(err.contains("heartbeat"), "{err}");
}

#[test]
fn bad_address_is_named() {
    let (ok, err) = start_with(BASE, &["--listen-api", "localhost:7101"]);
    assert!(!ok);
    assert!(err.contains("listen.api") && err.contains("localhost:7101"), "{err}");
}

#[test]
fn missing_certificate_file_is_named() {
    let (ok, err) = start_with(BASE, &[]);
    assert!(!ok);
    assert!(err.contains("ca") && err.contains("missing/ca.pem"), "{err}");
}
