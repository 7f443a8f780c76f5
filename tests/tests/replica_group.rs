//! The replica group as real processes on loopback: formation through the CLI, growth
//! and shrinkage under load, leader and whole-group kills, snapshot catch-up, and the
//! refusal of peers without a federation certificate.

use std::time::Duration;

use federator_proto::admin as pb;
use federator_tests::{Federation, eventually, load_commits, write_load};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const PREFIX: &str = "load";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_form_a_group_from_nothing_through_the_cli() -> anyhow::Result<()> {
    let mut fed = Federation::new(3)?;
    for id in 1..=3 {
        fed.start(id, false)?;
    }
    // Before the group exists no replica knows a leader: none reports SERVING.
    fed.wait_for_api(1).await?;
    assert_eq!(health(&fed, 1).await?, ServingStatus::NotServing);
    fed.form_group(&[1, 2, 3]).await?;
    for id in 1..=3 {
        eventually(&format!("replica {id} to report SERVING"), Duration::from_secs(10), || async {
            (health(&fed, id).await.ok()? == ServingStatus::Serving).then_some(())
        })
        .await?;
    }

    let status: serde_json::Value =
        serde_json::from_str(&fed.cli_ok(&[], &["status", "-o", "json"])?)?;
    assert_eq!(status["voters"], 3, "{status:#}");
    assert_eq!(status["voters_up"], 3, "{status:#}");
    assert_eq!(status["quorum"], true);
    let replicas = status["replicas"].as_array().expect("replicas");
    assert_eq!(replicas.iter().filter(|r| r["role"] == "leader").count(), 1, "{status:#}");
    assert!(replicas.iter().all(|r| r["pid"].as_u64().is_some()), "{status:#}");

    // A write through a follower is forwarded; a linearizable read on another sees it.
    let leader = fed.wait_for_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).expect("a follower");
    let other = [1, 2, 3].into_iter().find(|id| *id != leader && *id != follower).expect("another");
    fed.cli_ok(&[follower], &["probe", "put", "greeting", "hello"])?;
    assert_eq!(fed.cli_ok(&[other], &["probe", "get", "greeting"])?.trim(), "hello");

    let table = fed.cli_ok(&[], &["raft", "status"])?;
    assert!(table.contains("leader") && table.contains("follower"), "{table}");
    let yaml = fed.cli_ok(&[], &["raft", "status", "-o", "yaml"])?;
    assert!(yaml.contains("quorum: true"), "{yaml}");
    let wide = fed.cli_ok(&[], &["status", "-o", "wide"])?;
    assert!(wide.contains("DIGEST@INDEX"), "-o wide adds the raft columns: {wide}");
    assert!(!fed.cli_ok(&[], &["status"])?.contains("DIGEST@INDEX"));

    let metrics = fed.metrics(leader).await?;
    for name in [
        "federator_build_info{",
        "federator_raft_term 1",
        "federator_raft_is_leader 1",
        "federator_raft_leader_changes_total",
        "federator_raft_commit_index",
        "federator_raft_applied_index",
        "federator_raft_append_duration_seconds_bucket",
        "federator_raft_apply_duration_seconds_bucket",
        "federator_raft_applies_inline_total",
        "federator_raft_log_redo_file 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }
    Ok(())
}

/// The replica's overall gRPC health (service "").
async fn health(fed: &Federation, id: u64) -> anyhow::Result<ServingStatus> {
    let channel = fed.connection(&[id])?.channel(&fed.replica(id).api_addr).await?;
    let mut client = HealthClient::new(channel);
    let response = client.check(HealthCheckRequest { service: String::new() }).await?;
    Ok(response.into_inner().status())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_replica_group_grows_and_shrinks_under_load() -> anyhow::Result<()> {
    let mut fed = Federation::new(5)?;
    for id in 1..=5 {
        fed.start(id, false)?;
    }
    fed.form_group(&[1, 2, 3]).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(write_load(fed.connection(&[1, 2, 3, 4, 5])?, 4, PREFIX, stop_rx));
    load_commits(&fed, &[1, 2, 3], 10).await?;

    for id in [4u64, 5] {
        let mut addr = fed.replica(id).raft_addr.clone();
        if id == 5 {
            // By name, as the Helm chart's init job adds its pods.
            addr = addr.replace("127.0.0.1", "localhost");
        }
        fed.cli_ok(&[1, 2, 3], &["raft", "add-member", &id.to_string(), &addr])?;
    }
    let status = fed.status(1).await.expect("status");
    assert_eq!(status.voters.len(), 5, "{status:?}");
    // Forming the group again is refused, or nothing with --if-needed; adding a member
    // again changes nothing: a script that runs twice (the chart's init job) needs no
    // `|| true`.
    let again = fed.cli(&[1], &["raft", "init"])?;
    assert!(!again.status.success(), "a second init is refused");
    let told = String::from_utf8_lossy(&again.stderr);
    assert!(told.contains("already belongs to a group"), "{told}");
    fed.cli_ok(&[1], &["raft", "init", "--if-needed"])?;
    let addr = fed.replica(4).raft_addr.clone();
    fed.cli_ok(&[1, 2, 3], &["raft", "add-member", "4", &addr])?;
    assert_eq!(fed.status(1).await.expect("status").voters.len(), 5);

    // Shrink to 3, removing the current leader among others.
    let leader = fed.wait_for_leader(&[1, 2, 3, 4, 5], Duration::from_secs(10)).await?;
    let mut remaining = vec![1u64, 2, 3, 4, 5];
    for id in [leader, if leader == 1 { 2 } else { 1 }] {
        fed.cli_ok(&remaining, &["raft", "remove-member", &id.to_string()])?;
        remaining.retain(|r| *r != id);
        fed.wait_for_leader(&remaining, Duration::from_secs(20)).await?;
    }
    let new_leader = fed.wait_for_leader(&remaining, Duration::from_secs(20)).await?;
    assert!(remaining.contains(&new_leader));
    let status = fed.status(new_leader).await.expect("status");
    assert_eq!(status.voters.len(), 3, "{status:?}");

    // Writes go on in the shrunk group.
    load_commits(&fed, &remaining, 10).await?;
    stop_tx.send(true)?;
    let result = load.await?;
    assert!(result.acked.len() > 20, "too few writes acknowledged: {}", result.acked.len());
    fed.wait_for_convergence(&remaining, Duration::from_secs(30)).await?;
    for id in &remaining {
        fed.assert_has_all(*id, PREFIX, &result.acked).await?;
    }
    eprintln!("acknowledged {} writes, {} indeterminate", result.acked.len(), result.indeterminate);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kill_loses_no_acknowledged_write() -> anyhow::Result<()> {
    let mut fed = Federation::new(3)?;
    for id in 1..=3 {
        fed.start(id, false)?;
    }
    fed.form_group(&[1, 2, 3]).await?;
    let leader = fed.wait_for_leader(&[1, 2, 3], Duration::from_secs(10)).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(write_load(fed.connection(&[1, 2, 3])?, 8, PREFIX, stop_rx));
    load_commits(&fed, &[1, 2, 3], 30).await?;
    fed.kill(leader);
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let new_leader = fed.wait_for_leader(&survivors, Duration::from_secs(20)).await?;
    assert_ne!(new_leader, leader);
    // Writes go on under the new leader.
    load_commits(&fed, &survivors, 10).await?;
    stop_tx.send(true)?;
    let result = load.await?;
    assert!(result.acked.len() > 20, "too few writes acknowledged: {}", result.acked.len());

    for id in &survivors {
        fed.assert_has_all(*id, PREFIX, &result.acked).await?;
    }
    fed.restart(leader)?;
    fed.wait_for_api(leader).await?;
    fed.wait_for_convergence(&[1, 2, 3], Duration::from_secs(30)).await?;
    for id in [1, 2, 3] {
        fed.assert_has_all(id, PREFIX, &result.acked).await?;
    }
    eprintln!("acknowledged {} writes, {} indeterminate", result.acked.len(), result.indeterminate);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_replicas_killed_at_once_lose_nothing_acknowledged() -> anyhow::Result<()> {
    let mut fed = Federation::new(3)?;
    for id in 1..=3 {
        fed.start(id, false)?;
    }
    fed.form_group(&[1, 2, 3]).await?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(write_load(fed.connection(&[1, 2, 3])?, 8, PREFIX, stop_rx));
    load_commits(&fed, &[1, 2, 3], 40).await?;
    fed.kill_all();
    stop_tx.send(true)?;
    let result = load.await?;
    assert!(result.acked.len() > 20, "too few writes acknowledged: {}", result.acked.len());

    for id in 1..=3 {
        fed.restart(id)?;
    }
    fed.wait_for_leader(&[1, 2, 3], Duration::from_secs(30)).await?;
    fed.wait_for_convergence(&[1, 2, 3], Duration::from_secs(30)).await?;
    for id in 1..=3 {
        fed.assert_has_all(id, PREFIX, &result.acked).await?;
    }
    eprintln!(
        "acknowledged {} writes before the kill, {} indeterminate",
        result.acked.len(),
        result.indeterminate
    );
    Ok(())
}

/// The first linearizable read after the whole group restarts sees the last write
/// acknowledged before it went down. openraft 0.9 restores the leader of before the crash
/// as leader of its old term at once, knowing only the commit index it had saved (one
/// transaction behind): a read it confirmed then used to answer from before the last
/// writes (found by the `kill-all` chaos scenario).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_read_after_a_whole_group_restart_sees_the_last_acknowledged_write()
-> anyhow::Result<()> {
    let mut fed = Federation::formed(3, "").await?;
    let mut value = 0u64;
    for round in 0..10 {
        let leader = fed.wait_for_leader(&[1, 2, 3], Duration::from_secs(30)).await?;
        let mut admin = fed.admin(leader).await?;
        for _ in 0..10 {
            value += 1;
            let put = pb::PutRequest { key: "restart/k".into(), value: value.to_string().into() };
            admin.put(put).await?;
        }
        // Down at once, right after the last acknowledgement. The old leader comes back
        // first (leading again at once, its replication to the others failing and
        // backing off) and is asked to read until it answers; the others follow.
        fed.kill_all();
        fed.restart(leader)?;
        let connection = fed.connection(&[leader])?;
        let addr = fed.replica(leader).api_addr.clone();
        let first_read = tokio::spawn(async move {
            eventually("a linearizable read", Duration::from_secs(30), || async {
                let mut admin = connection.admin(&addr).await.ok()?;
                let get = pb::GetRequest {
                    key: "restart/k".into(),
                    consistency: pb::Consistency::Linearizable.into(),
                };
                admin.get(get).await.ok().map(tonic::Response::into_inner)
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        for id in [1, 2, 3].into_iter().filter(|id| *id != leader) {
            fed.restart(id)?;
        }
        let read = first_read.await??;
        assert_eq!(
            String::from_utf8_lossy(&read.value),
            value.to_string(),
            "round {round}: the first read of replica {leader}, the leader before the restart"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_kept_down_during_compaction_catches_up_by_snapshot() -> anyhow::Result<()> {
    let mut fed = Federation::new(3)?;
    // Keep few entries behind a snapshot so that the purge really cuts the log.
    fed.extra_config = "keep_entries_after_snapshot = 10".into();
    for id in 1..=3 {
        fed.start(id, false)?;
    }
    fed.form_group(&[1, 2, 3]).await?;
    let leader = fed.wait_for_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
    let down = [1, 2, 3].into_iter().find(|id| *id != leader).expect("a follower");
    fed.kill(down);

    let up: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != down).collect();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(write_load(fed.connection(&up)?, 4, PREFIX, stop_rx));
    load_commits(&fed, &up, 40).await?;
    stop_tx.send(true)?;
    let result = load.await?;
    for id in &up {
        fed.cli_ok(&[*id], &["raft", "compact"])?;
    }
    // The leader postpones a purge while a replication request covering the purged range
    // is in flight to the down follower; it happens between retries.
    let leader_status =
        eventually("the leader to purge its log", Duration::from_secs(30), || async {
            fed.status(leader).await.filter(|s| s.purged_index > 0)
        })
        .await?;

    fed.restart(down)?;
    fed.wait_for_api(down).await?;
    fed.wait_for_convergence(&[1, 2, 3], Duration::from_secs(30)).await?;
    fed.assert_has_all(down, PREFIX, &result.acked).await?;
    // The state converged; openraft's metrics (what status reports) follow the installed
    // snapshot one core-loop turn later.
    let status =
        eventually("the follower to report the snapshot", Duration::from_secs(10), || {
            let fed = &fed;
            async move {
                fed.status(down).await.filter(|s| s.snapshot_index >= leader_status.purged_index)
            }
        })
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "follower should hold the leader's snapshot: {e:#}; {:?}",
                leader_status
            )
        })?;
    assert!(status.applied_index >= leader_status.purged_index, "{status:?}");
    let metrics = fed.metrics(down).await?;
    let nonzero = |name: &str| {
        metrics.lines().any(|l| l.starts_with(&format!("{name} ")) && !l.ends_with(" 0"))
    };
    assert!(
        nonzero("federator_raft_snapshots_installed_total"),
        "no snapshot install counted:\n{metrics}"
    );
    assert!(
        nonzero("federator_raft_snapshot_install_duration_seconds_count"),
        "no snapshot install timed:\n{metrics}"
    );
    // The snapshot was written as it streamed in and taken as the follower's file: one
    // `.snap`, no `.recv` left behind.
    let snapshots = fed.dir().join(format!("replica-{down}")).join("snapshots");
    let names: Vec<String> = std::fs::read_dir(&snapshots)?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .collect();
    assert_eq!(names.iter().filter(|n| n.ends_with(".snap")).count(), 1, "{names:?}");
    assert!(!names.iter().any(|n| n.ends_with(".recv") || n.ends_with(".tmp")), "{names:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_without_a_federation_certificate_can_neither_join_nor_send_raft_rpcs()
-> anyhow::Result<()> {
    let mut fed = Federation::new(3)?;
    for id in 1..=2 {
        fed.start(id, false)?;
    }
    fed.form_group(&[1, 2]).await?;

    // Replica 4 holds a certificate of another CA (a replica SPIFFE ID, wrong issuer).
    let rogue_certs = fed.dir().join("rogue-certs");
    let out = std::process::Command::new(federator_tests::federator_bin())
        .args(["certs", "init"])
        .arg(&rogue_certs)
        .args(["--trust-domain", &fed.trust_domain, "--replicas", "4"])
        .output()?;
    assert!(out.status.success());
    fed.start_with_certs(4, false, &rogue_certs, "replica-4")?;
    let addr = fed.replica(4).raft_addr.clone();
    let out = fed.cli(&[1, 2], &["raft", "add-member", "4", &addr])?;
    assert!(!out.status.success(), "adding a rogue replica must fail");
    // The rogue replica never received the log: a write committed after the attempt,
    // and applied by both members, shows the group went on past it.
    let leader = fed.wait_for_leader(&[1, 2], Duration::from_secs(10)).await?;
    let put = pb::PutRequest { key: "after-rogue".into(), value: b"1".to_vec() };
    fed.admin(leader).await?.put(put).await?;
    fed.wait_for_convergence(&[1, 2], Duration::from_secs(10)).await?;
    let rogue_status = fed.status(4).await;
    assert!(rogue_status.as_ref().is_none_or(|s| s.last_log_index == 0), "{rogue_status:?}");
    let log = fed.log_of(4);
    assert!(!log.contains("API address registered"), "{log}");

    // A raw raft client without a certificate, with another CA's certificate, or with
    // the federation's admin certificate (not a replica identity) is refused.
    let target = fed.replica(1).raft_addr.clone();
    let refused = federator_tests::raw_raft_vote(&target, &fed.certs, None).await;
    assert!(refused.is_err(), "no certificate must be refused");
    let refused =
        federator_tests::raw_raft_vote(&target, &fed.certs, Some((&rogue_certs, "replica-4")))
            .await;
    assert!(refused.is_err(), "another CA's certificate must be refused");
    let refused =
        federator_tests::raw_raft_vote(&target, &fed.certs, Some((&fed.certs, "admin"))).await;
    let status = refused.expect_err("the admin identity may not send raft RPCs").to_string();
    assert!(status.contains("PermissionDenied") || status.contains("permission"), "{status}");
    let accepted =
        federator_tests::raw_raft_vote(&target, &fed.certs, Some((&fed.certs, "replica-3"))).await;
    assert!(accepted.is_ok(), "a federation replica certificate is accepted: {accepted:?}");

    // The group is unaffected.
    let leader = fed.wait_for_leader(&[1, 2], Duration::from_secs(10)).await?;
    let mut client = fed.admin(leader).await?;
    client.put(pb::PutRequest { key: "still".into(), value: b"fine".to_vec() }).await?;
    Ok(())
}
