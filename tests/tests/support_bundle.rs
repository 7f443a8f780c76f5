//! `federator support-bundle` against a real federation and agent: it gathers the
//! group's status, every check and the agent's status into a new directory with no key,
//! certificate or join token in it; with every replica down it still writes what it
//! can and names what it could not gather; it never writes into an existing directory.

use std::time::Duration;

use federator_chaos::agent::{AgentOptions, AgentProcess};
use federator_chaos::member::MemberCluster;
use federator_tests::Federation;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_support_bundle_holds_status_checks_and_agents_but_no_secret() -> anyhow::Result<()> {
    let mut fed = Federation::formed(3, "").await?;
    let mut agent = AgentProcess::new(
        &fed,
        MemberCluster::new("cluster-a", "a.example")?,
        &AgentOptions::default(),
    )?;
    agent.start()?;
    agent.wait_status("the agent joined", WAIT, |s| s.lease.is_some()).await?;
    let out_dir = tempfile::tempdir()?;
    let state = agent.state_dir().display().to_string();

    let bundle = out_dir.path().join("support");
    let bundle_arg = bundle.display().to_string();
    let out = fed.cli(&[], &["support-bundle", &bundle_arg, "--agent-state-dir", &state])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for file in
        ["README.txt", "version.txt", "status.txt", "status.json", "check.txt", "check.json"]
    {
        assert!(bundle.join(file).is_file(), "{file} missing");
    }
    assert!(!bundle.join("errors.txt").exists(), "everything was gathered");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&bundle)?.permissions());
    assert_eq!(mode & 0o777, 0o700, "the bundle is its owner's alone");
    let status: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(bundle.join("status.json"))?)?;
    assert!(status.to_string().contains("leader"), "{status}");
    let check = std::fs::read_to_string(bundle.join("check.txt"))?;
    assert!(check.contains("agent of cluster-a"), "the agent is checked:\n{check}");
    let agent_status = std::fs::read_to_string(bundle.join("agents/1/status.txt"))?;
    assert!(agent_status.contains("lease"), "{agent_status}");
    let token = std::fs::read_to_string(agent.dir().join("join-token")).unwrap_or_default();
    for entry in walk(&bundle)? {
        let text = std::fs::read_to_string(&entry)?;
        for secret in ["PRIVATE KEY", "BEGIN CERTIFICATE", "fedjoin"] {
            assert!(!text.contains(secret), "{} holds {secret}", entry.display());
        }
        if !token.trim().is_empty() {
            assert!(!text.contains(token.trim()), "{} holds the join token", entry.display());
        }
    }

    // Never over an existing directory.
    let again = fed.cli(&[], &["support-bundle", &bundle_arg])?;
    assert!(!again.status.success(), "an existing directory is refused");

    // Every replica down: what can be gathered is, the rest is named.
    fed.kill_all();
    let down = out_dir.path().join("down");
    let out = fed
        .cli(&[], &["support-bundle", &down.display().to_string(), "--agent-state-dir", &state])?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let errors = std::fs::read_to_string(down.join("errors.txt"))?;
    assert!(errors.starts_with("status:"), "{errors}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("see errors.txt"));
    let check = std::fs::read_to_string(down.join("check.txt"))?;
    assert!(check.contains('×'), "the checks say what is down:\n{check}");
    assert!(down.join("agents/1/status.json").is_file(), "the agent's status is still gathered");
    agent.kill();
    Ok(())
}

fn walk(dir: &std::path::Path) -> std::io::Result<Vec<std::path::PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(walk(&path)?);
        } else {
            files.push(path);
        }
    }
    Ok(files)
}
