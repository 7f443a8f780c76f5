//! The Federator side of `bench snapshot`: a group loaded through the admin `Put`,
//! `federator snapshot save`, a follower added behind a purged log, and
//! `federator snapshot restore` into new groups.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use federator_proto::admin as pb;
use federator_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use super::{
    CATCH_UP_TIMEOUT, CLI_TIMEOUT, CONNECTIONS_PER_MEMBER, Install, InstallTrial, SnapshotConfig,
    SystemSnapshot, key, load, poll, value,
};
use crate::bench::progress::Progress;
use crate::bench::{GROUP_SIZE, HEALTHY_TIMEOUT};
use crate::cluster::Federation;

/// Entries the replicas keep behind a snapshot, so that a purge leaves a new follower
/// nothing to replicate from but the snapshot.
pub const KEEP_ENTRIES: u64 = 10;

/// Loads a group, then saves, installs on new followers and restores, `trials` times each.
///
/// # Errors
/// A group did not form, the load failed, or a save or restore failed.
pub async fn measure(
    config: &SnapshotConfig,
    progress: &Progress,
) -> anyhow::Result<SystemSnapshot> {
    let step = progress.step(format!("starting {GROUP_SIZE} Federator replicas"));
    // Certificates for the group and for one new follower per install trial.
    let mut fed = Federation::new(GROUP_SIZE + config.trials as u64)?;
    fed.show_logs_on_drop = false;
    fed.extra_config = format!("keep_entries_after_snapshot = {KEEP_ENTRIES}");
    let ids: Vec<u64> = (1..=GROUP_SIZE).collect();
    for id in &ids {
        fed.start(*id, false)?;
    }
    fed.form_group(&ids).await?;
    step.finish_and_clear();

    let mut conns = Vec::new();
    for id in ids.iter().cycle().take(ids.len() * CONNECTIONS_PER_MEMBER) {
        conns.push(fed.admin(*id).await.with_context(|| format!("connecting to replica {id}"))?);
    }
    let put = |mut conn: AdminClient<Channel>, key: String, value: Vec<u8>| async move {
        conn.put(pb::PutRequest { key, value })
            .await
            .map(|_| ())
            .map_err(|status| anyhow::anyhow!("{:?}: {}", status.code(), status.message()))
    };
    let load_time = load("Federator", conns, config, progress, put).await?;
    fed.wait_for_convergence(&ids, HEALTHY_TIMEOUT).await?;

    // Save.
    let leader = fed.wait_for_leader(&ids, HEALTHY_TIMEOUT).await?;
    let file = fed.dir().join("bench.snap");
    let file_arg = file.to_str().context("a UTF-8 temporary path")?.to_string();
    let mut save = Vec::new();
    let step = progress.step(format!("Federator: {} × snapshot save", config.trials));
    for _ in 0..config.trials {
        let _ = std::fs::remove_file(&file);
        let started = Instant::now();
        fed.cli_ok_within(&[leader], &["snapshot", "save", &file_arg], CLI_TIMEOUT).await?;
        save.push(started.elapsed());
    }
    step.finish_and_clear();
    let file_size = std::fs::metadata(&file)?.len();

    // Follower install.
    let step = progress.step(format!("Federator: {} × follower install", config.trials));
    let mut trials = Vec::new();
    let mut install = None;
    for trial in 0..config.trials {
        match install_trial(&mut fed, GROUP_SIZE + 1 + trial as u64).await {
            Ok(t) => trials.push(t),
            Err(error) => {
                install = Some(Install::NotMeasured(format!("trial {}: {error:#}", trial + 1)));
                break;
            }
        }
    }
    step.finish_and_clear();
    let install = install.unwrap_or(Install::Measured(trials));

    // Restore, with the loaded group gone (its directory, holding the file, stays).
    fed.kill_all();
    let step = progress.step(format!("Federator: {} × snapshot restore", config.trials));
    let mut restore = Vec::new();
    for _ in 0..config.trials {
        restore.push(restore_trial(&file, config).await?);
    }
    step.finish_and_clear();
    drop(fed);
    Ok(SystemSnapshot { system: "Federator", load: load_time, save, file_size, restore, install })
}

/// Purges the leader's log behind a snapshot, starts replica `id`, adds it, and times
/// from its process start until it has applied what the leader has; then removes it.
///
/// # Errors
/// A step failed or did not finish in time.
pub async fn install_trial(fed: &mut Federation, id: u64) -> anyhow::Result<InstallTrial> {
    let group: Vec<u64> = (1..=GROUP_SIZE).collect();
    let leader = fed.wait_for_leader(&group, HEALTHY_TIMEOUT).await?;
    fed.admin(leader)
        .await?
        .trigger_snapshot(pb::TriggerSnapshotRequest { purge: true })
        .await
        .context("TriggerSnapshot { purge: true } on the leader")?;

    // The leader's admin connection is made before the clock, the new replica's once it
    // answers; the polls reuse them (the timed part is the install, not TLS handshakes).
    let leader_admin = fed.admin(leader).await?;
    let started = Instant::now();
    fed.start(id, false)?;
    let new_admin = poll(&format!("replica {id} to answer"), HEALTHY_TIMEOUT, || async {
        let mut admin = fed.admin(id).await.ok()?;
        admin.status(pb::StatusRequest {}).await.ok()?;
        Some(admin)
    })
    .await?;
    let addr = fed.replica(id).raft_addr.clone();
    fed.cli_ok_within(&group, &["raft", "add-member", &id.to_string(), &addr], CLI_TIMEOUT).await?;
    let caught_up = poll("the new replica to apply what the leader has", CATCH_UP_TIMEOUT, || {
        let (mut leader_admin, mut new_admin) = (leader_admin.clone(), new_admin.clone());
        async move {
            let leader = leader_admin.status(pb::StatusRequest {}).await.ok()?.into_inner();
            let new = new_admin.status(pb::StatusRequest {}).await.ok()?.into_inner();
            (new.applied_index >= leader.applied_index).then_some(new)
        }
    })
    .await?;
    let time = started.elapsed();

    fed.cli_ok_within(&group, &["raft", "remove-member", &id.to_string()], CLI_TIMEOUT).await?;
    fed.kill(id);
    fed.wait_for_leader(&group, HEALTHY_TIMEOUT).await?;
    Ok(InstallTrial { time, via_snapshot: Some(caught_up.snapshot_index > 0), serving: None })
}

/// Forms a new 3-replica group (not timed), then times `federator snapshot restore FILE`
/// until every replica has applied the restore; then checks (untimed) that they hold the
/// same state digest and the last key.
///
/// # Errors
/// A step failed or did not finish in time, or the last key is missing.
pub async fn restore_trial(file: &Path, config: &SnapshotConfig) -> anyhow::Result<Duration> {
    let mut fed = Federation::new(GROUP_SIZE)?;
    fed.show_logs_on_drop = false;
    let ids: Vec<u64> = (1..=GROUP_SIZE).collect();
    for id in &ids {
        fed.start(*id, false)?;
    }
    fed.form_group(&ids).await?;
    let file_arg = file.to_str().context("a UTF-8 temporary path")?;
    // Connected before the clock starts: the timed part is the restore, not handshakes.
    let mut admins = Vec::new();
    for id in &ids {
        admins.push(fed.admin(*id).await?);
    }

    let started = Instant::now();
    let out = fed
        .cli_ok_within(&ids, &["snapshot", "restore", file_arg, "-o", "json"], CLI_TIMEOUT)
        .await?;
    let out: serde_json::Value = serde_json::from_str(&out)
        .context("`federator snapshot restore -o json` printed no JSON")?;
    let restored_at = out["applied_index"].as_u64().context("no applied_index in the output")?;
    poll("every replica to apply the restore", CATCH_UP_TIMEOUT, || {
        let admins = admins.clone();
        async move {
            for mut admin in admins {
                let status = admin.status(pb::StatusRequest {}).await.ok()?.into_inner();
                if status.applied_index < restored_at {
                    return None;
                }
            }
            Some(())
        }
    })
    .await?;
    let time = started.elapsed();

    // Not timed: every replica holds the same state (encoding it three times is a check,
    // not part of a restore).
    poll("every replica to converge after the restore", CATCH_UP_TIMEOUT, || {
        let fed = &fed;
        let ids = &ids;
        async move {
            let mut seen: Option<(u64, String)> = None;
            for id in ids {
                let mut client = fed.admin(*id).await.ok()?;
                let d = client.digest(pb::DigestRequest {}).await.ok()?.into_inner();
                if d.applied_index < restored_at {
                    return None;
                }
                match &seen {
                    None => seen = Some((d.applied_index, d.digest)),
                    Some((index, digest)) if *index == d.applied_index && *digest == d.digest => {}
                    Some(_) => return None,
                }
            }
            seen
        }
    })
    .await?;

    let last = config.keys.saturating_sub(1);
    for id in &ids {
        let got = fed
            .admin(*id)
            .await?
            .get(pb::GetRequest { key: key(last), consistency: pb::Consistency::Stale.into() })
            .await?
            .into_inner();
        if !got.found || got.value != value(last, config.value_size) {
            bail!("replica {id} lacks {} after the restore", key(last));
        }
    }
    Ok(time)
}
