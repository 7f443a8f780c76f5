//! Faults an operator meets in ordinary operation, against real replica processes on
//! loopback:
//!
//! - SIGTERM of the leader while members hold watch streams on it: the streams end at once
//!   with UNAVAILABLE (their agents reconnect elsewhere), the leader steps down, the others
//!   elect a successor, and the process exits cleanly well within a supervisor's 30 s.
//! - A full disk under one replica (a small tmpfs of its own): its raft core fail-stops,
//!   the process exits non-zero (a supervisor restarts it) while the others carry on, and
//!   once space is freed a restart recovers it with nothing acknowledged lost.
//! - A write forwarded to a leader that hangs (SIGSTOP) is re-routed to the new leader as
//!   soon as one is known, not after the transport's timeout.

use std::time::{Duration, Instant};

use federator_chaos::disk::SmallDisk;
use federator_proto::federation as pb;
use federator_tests::member::MemberCluster;
use federator_tests::{Federation, eventually, write_load};
use tonic::Code;

const PREFIX: &str = "faults";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigtermed_leader_ends_its_watches_steps_down_and_exits_promptly() -> anyhow::Result<()> {
    let mut fed = Federation::new(3)?;
    for id in 1..=3 {
        fed.start(id, false)?;
    }
    fed.form_group(&[1, 2, 3]).await?;
    let leader = fed.wait_for_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
    let ca = fed.ca_pem();

    // Members attached to the leader: each holds a watch stream that would otherwise keep
    // the process serving forever.
    let mut streams = Vec::new();
    for name in ["a", "b", "c"] {
        let mut member =
            MemberCluster::new(&format!("cluster-{name}"), &format!("{name}.example"))?;
        member.join(&fed, leader).await?;
        let mut client = member.client(&fed.replica(leader).api_addr, &ca).await?;
        let mut stream = client.watch(pb::WatchRequest { after_revision: 0 }).await?.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(10), stream.message()).await??;
        assert!(first.is_some(), "the watch starts with the current state");
        streams.push(stream);
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(write_load(fed.connection(&[1, 2, 3])?, 4, PREFIX, stop_rx));
    tokio::time::sleep(Duration::from_millis(500)).await;

    let signalled = Instant::now();
    fed.terminate(leader);
    for stream in &mut streams {
        // Drain whatever was in flight; the stream must then end with UNAVAILABLE.
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match stream.message().await {
                    Ok(Some(_)) => {}
                    Ok(None) => return Err(anyhow::anyhow!("the stream ended without a status")),
                    Err(status) => return Ok(status),
                }
            }
        })
        .await??;
        assert_eq!(ended.code(), Code::Unavailable, "{ended}");
        assert!(ended.message().contains("stopping"), "{ended}");
    }
    let status = fed.wait_exit(leader, Duration::from_secs(20)).await?;
    let exited_after = signalled.elapsed();
    assert!(status.success(), "a SIGTERMed replica exits cleanly: {status}");
    let survivors: Vec<u64> = [1, 2, 3].into_iter().filter(|id| *id != leader).collect();
    let successor = fed.wait_for_leader(&survivors, Duration::from_secs(10)).await?;
    assert_ne!(successor, leader);
    let log = fed.log_of(leader);
    assert!(log.contains("raft core stopped; draining connections"), "{log}");

    // Writes go on through the others.
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop_tx.send(true)?;
    let result = load.await?;
    assert!(result.acked.len() > 20, "too few writes acknowledged: {}", result.acked.len());
    fed.restart(leader)?;
    fed.wait_for_api(leader).await?;
    fed.wait_for_convergence(&[1, 2, 3], Duration::from_secs(30)).await?;
    for id in [1, 2, 3] {
        fed.assert_has_all(id, PREFIX, &result.acked).await?;
    }
    eprintln!(
        "leader {leader} exited {exited_after:?} after SIGTERM; successor {successor}; {} writes \
         acknowledged, {} indeterminate",
        result.acked.len(),
        result.indeterminate
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_disk_fills_exits_and_recovers_once_space_is_freed() -> anyhow::Result<()> {
    let mut fed = Federation::new(3)?;
    // Replica 3's data directory is a 32 MiB filesystem of its own.
    let disk = SmallDisk::mount(&fed.dir().join("replica-3"), 32)?;
    for id in 1..=3 {
        fed.start(id, false)?;
    }
    fed.form_group(&[1, 2, 3]).await?;
    fed.wait_for_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
    fed.wait_for_api(3).await?;

    disk.fill()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(write_load(fed.connection(&[1, 2])?, 4, PREFIX, stop_rx));
    // The next appends fail on replica 3: it must leave, not linger.
    let status = fed.wait_exit(3, Duration::from_secs(60)).await?;
    assert!(!status.success(), "a replica stopped by a storage error exits non-zero: {status}");
    let log = fed.log_of(3);
    assert!(log.contains("the raft core stopped"), "{log}");
    // The others carry on.
    let leader = fed.wait_for_leader(&[1, 2], Duration::from_secs(10)).await?;
    assert!(leader == 1 || leader == 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true)?;
    let result = load.await?;
    assert!(!result.acked.is_empty(), "writes went on without replica 3");

    // Space freed: a restart (what a supervisor does) recovers it from its log.
    disk.free()?;
    fed.restart(3)?;
    fed.wait_for_api(3).await?;
    fed.wait_for_convergence(&[1, 2, 3], Duration::from_secs(60)).await?;
    fed.assert_has_all(3, PREFIX, &result.acked).await?;
    eprintln!(
        "replica 3 exited with {status}; {} writes acknowledged meanwhile, all on it after restart",
        result.acked.len()
    );
    drop(fed);
    drop(disk);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_forwarded_to_a_hung_leader_ends_when_a_new_leader_is_known() -> anyhow::Result<()>
{
    use federator_proto::admin::PutRequest;
    let fed = Federation::formed(3, "").await?;
    let leader = fed.wait_for_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
    let follower = [1, 2, 3].into_iter().find(|id| *id != leader).unwrap_or(1);
    let mut admin = fed.admin(follower).await?;
    admin.put(PutRequest { key: "k".into(), value: b"before".to_vec() }).await?;

    fed.pause(leader);
    // Forwarded to the hung leader at once. The follower learns of the successor within
    // an election and ends the wait then, not after the 2 s transport timeout; the hung
    // leader may still commit it, so it is not proposed again behind the caller's back:
    // the caller learns the outcome is unknown and retries.
    let first = admin.put(PutRequest { key: "k".into(), value: b"after".to_vec() }).await;
    let retried = match first {
        Ok(_) => false,
        Err(status) => {
            assert_eq!(status.code(), Code::Unavailable, "{status}");
            assert!(status.message().contains("outcome is unknown"), "{status}");
            admin.put(PutRequest { key: "k".into(), value: b"after".to_vec() }).await?;
            true
        }
    };
    fed.resume(leader);
    let metrics = eventually("the re-route counted", Duration::from_secs(10), || async {
        let text = fed.metrics(follower).await.ok()?;
        let line =
            text.lines().find(|l| l.starts_with("federator_raft_forwards_rerouted_total"))?;
        (line.split_whitespace().last()? != "0").then(|| line.to_string())
    })
    .await?;
    let probes = fed.probes(follower, "k").await?;
    assert_eq!(probes.get("k").map(String::as_str), Some("after"), "{probes:?}");
    eprintln!("{metrics}; the caller retried: {retried}");
    Ok(())
}
