//! Mixed versions in one replica group. The older build is simulated with
//! `FEDERATOR_CLAIM_COMMAND_KINDS`, which makes a replica refuse every command kind from
//! the given one on and report that many as the command-format version it applies.
//!
//! - A rolling upgrade under a write loop: every replica starts as a build from before
//!   token revocation (the first command kind behind the cluster-version gate) and is
//!   upgraded one at a time with SIGTERM. Revoking a token is refused, naming a replica
//!   behind, until the last voter is upgraded, and works after; no acknowledged write is
//!   lost and the digests agree.
//! - A replica that meets a committed command it does not know — as an older build meets
//!   one a newer build proposed — stops loudly at that entry instead of skipping it
//!   (skipping would leave its state different from the others' at the same index). Once
//!   it runs a build that knows the command it catches up and agrees with the others.

use std::time::Duration;

use federator::state::{CLAIM_COMMAND_KINDS_ENV, COMMAND_KINDS, UNGATED_COMMAND_KINDS};
use federator_proto::admin::PutRequest;
use federator_tests::{Federation, eventually, write_load};

/// Probe keys the write loop writes under.
const PREFIX: &str = "rolling";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_upgrade_keeps_every_write_and_gates_revocation_until_the_last_voter()
-> anyhow::Result<()> {
    let older = UNGATED_COMMAND_KINDS.to_string();
    let mut fed = Federation::new(3)?;
    for id in 1..=3 {
        fed.replica_env.insert(id, vec![(CLAIM_COMMAND_KINDS_ENV.into(), older.clone())]);
        fed.start(id, false)?;
    }
    fed.form_group(&[1, 2, 3]).await?;
    fed.token("cluster-x", "x.test", "1h")?;
    let listed = fed.cli_json(&["token", "list"])?;
    assert_eq!(listed[0]["state"], "outstanding", "{listed}");
    let token_id = listed[0]["id"].as_str().expect("a token id").to_string();
    let status = fed.cli_json(&["status"])?;
    assert_eq!(status["cluster_version"], UNGATED_COMMAND_KINDS, "{status}");

    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(write_load(fed.connection(&[1, 2, 3])?, 2, PREFIX, stop_rx));
    for id in 1..=3u64 {
        // Some voter still runs the older build: the new command is refused before it
        // reaches the log, naming who is behind.
        let refused = fed.cli(&[1, 2, 3], &["token", "revoke", &token_id])?;
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "revoke accepted before replica {id} was upgraded");
        let revoke_version = UNGATED_COMMAND_KINDS + 1;
        assert!(
            stderr.contains(&format!("command-format version {revoke_version}"))
                && stderr.contains(&format!("applies version {UNGATED_COMMAND_KINDS}")),
            "{stderr}"
        );
        // A removal goes the old way meanwhile (no empty bundle served afterwards): it is
        // refused for what it is, not for the version.
        let removal = fed.cli(&[1, 2, 3], &["cluster", "remove", "cluster-none"])?;
        let stderr = String::from_utf8_lossy(&removal.stderr);
        assert!(
            !removal.status.success() && stderr.contains("cluster cluster-none not found"),
            "{stderr}"
        );
        // Upgrade replica `id`: a graceful stop, the new build, the same data.
        fed.terminate(id);
        let exited = fed.wait_exit(id, Duration::from_secs(30)).await?;
        assert!(exited.success(), "replica {id} exits 0 on SIGTERM: {exited}");
        fed.replica_env.remove(&id);
        fed.restart(id)?;
        fed.wait_for_api(id).await?;
        // Caught up with what the others had applied (writes go on meanwhile).
        let other = if id == 1 { 2 } else { 1 };
        let target = fed.status(other).await.map_or(0, |s| s.applied_index);
        let upgraded =
            eventually("the upgraded replica to catch up", Duration::from_secs(30), || async {
                fed.status(id).await.filter(|s| s.applied_index >= target)
            })
            .await?;
        assert_eq!(upgraded.command_version, COMMAND_KINDS);
    }
    // The last voter runs the new build: the feature is on.
    let revoked = fed.cli_ok(&[1, 2, 3], &["token", "revoke", &token_id])?;
    assert!(
        revoked.contains(&format!("revoked token {token_id} of cluster cluster-x")),
        "{revoked}"
    );
    let listed = fed.cli_json(&["token", "list"])?;
    assert_eq!(listed.as_array().map(Vec::len), Some(0), "{listed}");
    let status = fed.cli_json(&["status"])?;
    assert_eq!(status["cluster_version"], COMMAND_KINDS, "{status}");

    stop.send(true)?;
    let result = load.await?;
    assert!(!result.acked.is_empty(), "the write loop wrote nothing");
    fed.wait_for_convergence(&[1, 2, 3], Duration::from_secs(30)).await?;
    for id in 1..=3 {
        fed.assert_has_all(id, PREFIX, &result.acked).await?;
    }
    eprintln!(
        "rolling upgrade: {} writes acknowledged, {} indeterminate, none lost",
        result.acked.len(),
        result.indeterminate
    );
    Ok(())
}

/// Kinds a build before `UpdateSettings` (the 21st) knew.
const OLDER_BUILD_KINDS: &str = "20";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_meeting_a_command_it_does_not_know_stops_instead_of_skipping_it()
-> anyhow::Result<()> {
    let mut fed = Federation::new(3)?;
    for id in 1..=3 {
        fed.start(id, false)?;
    }
    // Forming the group commits an UpdateSettings (kind 20).
    fed.form_group(&[1, 2, 3]).await?;
    fed.wait_for_convergence(&[1, 2, 3], Duration::from_secs(30)).await?;

    // Replica 3 rolled back to a build that does not know UpdateSettings: replaying its
    // log it reaches that entry and must stop there.
    fed.kill(3);
    fed.replica_env.insert(3, vec![(CLAIM_COMMAND_KINDS_ENV.into(), OLDER_BUILD_KINDS.into())]);
    fed.restart(3)?;
    let status = fed.wait_exit(3, Duration::from_secs(30)).await?;
    assert!(!status.success(), "it exits non-zero: {status}");
    let log = fed.log_of(3);
    assert!(log.contains("command kind 20 is unknown to this replica"), "{log}");
    assert!(log.contains("upgrade this replica"), "{log}");

    // The others carry on.
    let mut admin = fed.admin(1).await?;
    admin.put(PutRequest { key: "after".into(), value: b"1".to_vec() }).await?;

    // Upgraded again: it applies the entry, catches up and agrees with the others.
    fed.replica_env.remove(&3);
    fed.restart(3)?;
    fed.wait_for_api(3).await?;
    fed.wait_for_convergence(&[1, 2, 3], Duration::from_secs(30)).await?;
    assert_eq!(fed.probes(3, "after").await?.get("after").map(String::as_str), Some("1"));
    Ok(())
}
