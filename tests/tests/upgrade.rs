//! Mixed versions in one replica group: a replica that meets a committed command it does
//! not know — as an older build meets one a newer build proposed — stops loudly at that
//! entry instead of skipping it (skipping would leave its state different from the
//! others' at the same index). Once it runs a build that knows the command it catches up
//! and agrees with the others. The older build is simulated with
//! `FEDERATOR_CLAIM_COMMAND_KINDS`, which makes a replica refuse every command kind from
//! the given one on.

use std::time::Duration;

use federator::state::CLAIM_COMMAND_KINDS_ENV;
use federator_proto::admin::PutRequest;
use federator_tests::Federation;

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
