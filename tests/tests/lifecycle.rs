//! Day-two operations of a member's agent (issue 25), end to end.
//!
//! - The lease comes first: the etcd its sink writes to is SIGSTOPped for 1.5 lease TTLs
//!   while the federation changes what that sink must write. The lease stays live (same
//!   id, on the agent and on the leader; no expiry in the metrics nor the audit trail),
//!   the etcd sink reports unhealthy meanwhile, and it catches up (and the change is
//!   acknowledged) once etcd continues.
//! - Remove and rejoin: a removed cluster's agent says so at ERROR; given a new token (in
//!   its token file, no restart, nothing wiped) it joins again, republishes its exports and
//!   acknowledges the other member's bundle again, and its status is all √ — also after a
//!   restart (its bundle from a PEM file, numbered anew, is no false ×).
//! - Agent status compares with what the federation holds: the federation restored from a
//!   backup taken before the cluster's rotation holds the old authorities while the
//!   agent's record says it published the new ones. The agent sees it in the watch,
//!   publishes again, and the federation holds the rotated bundle again; `agent status`
//!   shows what the federation holds.

use std::process::Command;
use std::time::{Duration, Instant};

use federator_chaos::agent::{AgentOptions, AgentProcess};
use federator_chaos::cluster::{Federation, eventually};
use federator_chaos::etcd::EtcdCluster;
use federator_chaos::member::MemberCluster;

/// Bound of every wait on propagation.
const WAIT: Duration = Duration::from_secs(30);
/// Lease TTL of the agents: short, so that a stop of 1.5 TTLs is quick.
const TTL_SECS: u32 = 4;

/// Sends `signal` (`-STOP`, `-CONT`) to process `pid`.
fn signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = Command::new("kill").args([signal, &pid.to_string()]).status()?;
    anyhow::ensure!(status.success(), "kill {signal} {pid}: {status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_etcd_sink_neither_delays_keep_alives_nor_costs_the_lease() -> anyhow::Result<()>
{
    let began = Instant::now();
    let fed = Federation::formed(3, "").await?;
    let mut etcd = EtcdCluster::start(1)?;
    etcd.wait_healthy(WAIT).await?;
    let etcd_id = etcd.ids()[0];
    let etcd_pid = etcd.member(etcd_id)?.pid().ok_or_else(|| anyhow::anyhow!("etcd pid"))?;
    let options = |etcd_endpoints| AgentOptions {
        etcd_endpoints,
        lease_ttl_seconds: Some(TTL_SECS),
        metrics: true,
        ..AgentOptions::default()
    };
    let mut a = AgentProcess::new(
        &fed,
        MemberCluster::new("cluster-a", "a.example")?,
        &options(etcd.client_urls()),
    )?;
    let mut b =
        AgentProcess::new(&fed, MemberCluster::new("cluster-b", "b.example")?, &options(vec![]))?;
    a.start()?;
    b.start()?;
    let status = a
        .wait_status("A holds a lease, B's bundle, in a healthy etcd sink", WAIT, |s| {
            s.lease.as_ref().is_some_and(|l| l.last_keepalive_ms.is_some())
                && s.bundles.contains_key("b.example")
                && s.sinks.get("etcd").is_some_and(|e| e.healthy && e.applied_revision > 0)
        })
        .await?;
    let lease_id = status.lease.as_ref().map(|l| l.id).expect("a lease");
    let first = status.bundles["b.example"];
    eventually("A acknowledges B's first bundle", WAIT, || async {
        fed.applied_sequence("b.example", "cluster-a").ok().flatten().filter(|s| *s == first)
    })
    .await?;
    let mut client = etcd.client(&[]).await?;
    let key = "/federator/bundles/b.example";
    let before = tokio::time::timeout(WAIT, client.get(key, None)).await??;
    let before = before.kvs().first().map(|kv| kv.value().to_vec()).expect("B's bundle key");

    // == A's etcd stops for 1.5 TTL while B rotates: A's etcd sink has work to do. ==
    let ttl = Duration::from_secs(u64::from(TTL_SECS));
    let pause = ttl * 3 / 2;
    signal(etcd_pid, "-STOP")?;
    let stopped_at = Instant::now();
    b.member.add_ca()?;
    b.write_bundle()?;
    let leader = fed.wait_for_leader(&fed.ids(), WAIT).await?;
    let mut saw_unhealthy = None;
    let mut polls = 0;
    let mut failure = None;
    while stopped_at.elapsed() < pause && polls < 100 {
        polls += 1;
        if let Some(s) = a.status() {
            let held = s.lease.as_ref().map(|l| l.id);
            if held != Some(lease_id) {
                failure = Some(format!("A's lease changed to {held:?} while etcd was stopped"));
                break;
            }
            if saw_unhealthy.is_none() && s.sinks.get("etcd").is_some_and(|e| !e.healthy) {
                saw_unhealthy = Some((stopped_at.elapsed(), s.sinks["etcd"].error.clone()));
            }
        }
        if let Ok(seen) = fed.leases_seen_by(leader).await {
            let (state, id, _) = seen.get("cluster-a").cloned().unwrap_or_default();
            if state != "live" || id != lease_id {
                failure = Some(format!(
                    "the leader has A's lease {id} {state:?} {:?} into the stop",
                    stopped_at.elapsed()
                ));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // With etcd stopped: `agent status` prints × for the sink, and so fails.
    let (ok_while_stopped, text_while_stopped) = a.status_text()?;
    signal(etcd_pid, "-CONT")?;
    let stopped_for = stopped_at.elapsed();
    if let Some(failure) = failure {
        anyhow::bail!("{failure}\n--- agent A log ---\n{}", a.log());
    }
    anyhow::ensure!(polls >= 10, "too few polls ({polls}) to show anything");
    let (unhealthy_after, error) = saw_unhealthy.ok_or_else(|| {
        anyhow::anyhow!("A's etcd sink never reported unhealthy while etcd was stopped")
    })?;
    println!(
        "etcd stopped for {stopped_for:?} (lease TTL {ttl:?}); the etcd sink reported unhealthy \
         {unhealthy_after:?} in: {error:?}"
    );
    assert!(!ok_while_stopped, "agent status exits 0 with a stalled sink:\n{text_while_stopped}");
    assert!(text_while_stopped.contains("× sink etcd"), "{text_while_stopped}");

    // == etcd continues: the sink catches up, the rotation is acknowledged. ==
    let status = a
        .wait_status("A's etcd sink catches up with B's rotated bundle", WAIT, |s| {
            s.bundles.get("b.example").is_some_and(|seq| *seq > first)
                && s.sinks.get("etcd").is_some_and(|e| e.healthy)
                && s.sinks["etcd"].applied_revision == s.applied_revision
        })
        .await?;
    let rotated = status.bundles["b.example"];
    let after = tokio::time::timeout(WAIT, client.get(key, None)).await??;
    let after = after.kvs().first().map(|kv| kv.value().to_vec()).expect("B's bundle key");
    assert_ne!(before, after, "A's etcd holds B's rotated bundle");
    eventually("A acknowledges B's rotated bundle", WAIT, || async {
        fed.applied_sequence("b.example", "cluster-a").ok().flatten().filter(|s| *s == rotated)
    })
    .await?;
    assert_eq!(status.lease.as_ref().map(|l| l.id), Some(lease_id), "the lease was never lost");
    eventually("agent status is all √ and exits 0", WAIT, || async {
        a.status_text().ok().filter(|(ok, _)| *ok)
    })
    .await?;

    // The federation agrees: nothing expired, on any replica, nor in the audit trail.
    fed.assert_no_lease_expired().await?;
    a.kill();
    b.kill();
    println!("took {:?}", began.elapsed());
    Ok(())
}

/// Whether `agent`'s status is all √ (`federator agent status` exits 0).
async fn status_green(agent: &AgentProcess) -> anyhow::Result<String> {
    eventually(&format!("{} status all √", agent.member.name), WAIT, || async {
        agent.status_text().ok().filter(|(ok, _)| *ok).map(|(_, text)| text)
    })
    .await
    .map_err(|e| {
        let text = agent.status_text().map(|(_, t)| t).unwrap_or_default();
        e.context(format!("last status:\n{text}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_cluster_rejoins_with_a_new_token_and_republishes_everything()
-> anyhow::Result<()> {
    let began = Instant::now();
    let fed = Federation::formed(3, "").await?;
    let options = AgentOptions { lease_ttl_seconds: Some(TTL_SECS), ..AgentOptions::default() };
    // The region its exports claim is bound by the operator, with the token.
    let a_options =
        AgentOptions { locality: Some(("r1".into(), "r1-a".into())), ..options.clone() };
    let mut a = AgentProcess::new(&fed, MemberCluster::new("cluster-a", "a.example")?, &a_options)?;
    a.use_exports_file(&serde_json::json!({ "exports": [{
        "namespace": "shop",
        "name": "cart",
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }],
        "endpoints": [{ "address": "127.0.0.1", "region": "r1", "zone": "r1-a" }],
        "identities": ["spiffe://a.example/ns/shop/sa/cart"],
    }]}))?;
    let mut b = AgentProcess::new(&fed, MemberCluster::new("cluster-b", "b.example")?, &options)?;
    a.start()?;
    b.start()?;
    let status = a
        .wait_status("A joined, exports, holds B's bundle", WAIT, |s| {
            s.lease.is_some() && s.exports.published == 1 && s.bundles.contains_key("b.example")
        })
        .await?;
    let b_sequence = status.bundles["b.example"];
    b.wait_status("B imports A's service", WAIT, |s| s.imports == 1).await?;
    eventually("A acknowledges B's bundle", WAIT, || async {
        fed.applied_sequence("b.example", "cluster-a").ok().flatten().filter(|s| *s == b_sequence)
    })
    .await?;
    status_green(&a).await?;

    // == Removed: A's agent says so at ERROR, with what to do; its status fails. ==
    fed.cli_ok(&[], &["cluster", "remove", "cluster-a"])?;
    b.wait_status("B's import of A's service is gone", WAIT, |s| s.imports == 0).await?;
    eventually("A's agent logs the refusal at ERROR", WAIT, || async {
        let log = a.log();
        log.lines()
            .any(|l| {
                l.contains("ERROR")
                    && l.contains("the federation refuses this agent")
                    && l.contains("federator token create")
            })
            .then_some(())
    })
    .await?;
    let (ok, text) = a.status_text()?;
    assert!(!ok, "agent status exits 0 for a removed cluster:\n{text}");

    // == A new token in its token file: it joins again, no restart, nothing wiped. ==
    let pid_before = a.status().map(|s| s.pid);
    let token = fed.token_with("cluster-a", "a.example", "1h", &["--region", "r1"])?;
    let token_file = a.dir().join("join-token");
    let tmp = token_file.with_extension("tmp");
    std::fs::write(&tmp, token)?;
    std::fs::rename(&tmp, &token_file)?;
    a.wait_status("A joined again and republished its export", WAIT, |s| {
        s.connected_replica.is_some() && s.lease.is_some() && s.exports.published == 1
    })
    .await?;
    b.wait_status("B imports A's service again", WAIT, |s| s.imports == 1).await?;
    eventually("A acknowledges B's bundle again", WAIT, || async {
        fed.applied_sequence("b.example", "cluster-a").ok().flatten().filter(|s| *s == b_sequence)
    })
    .await?;
    let a_sequence = fed.cli_json(&["bundle", "status", "a.example"])?;
    println!("after the rejoin, a.example: {a_sequence}");
    status_green(&a).await?;
    assert_eq!(a.status().map(|s| s.pid), pid_before, "no restart");
    assert!(a.log().contains("a new join token: joining the federation again"), "{}", a.log());

    // == A restart (the PEM bundle numbered anew) shows no false ×. ==
    a.kill();
    a.start()?;
    let text = status_green(&a).await?;
    assert!(text.contains("√ own bundle"), "{text}");
    a.kill();
    b.kill();
    println!("took {:?}", began.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_publishes_again_what_a_restored_federation_no_longer_holds() -> anyhow::Result<()>
{
    let fed = Federation::formed(3, "").await?;
    let options = AgentOptions { lease_ttl_seconds: Some(TTL_SECS), ..AgentOptions::default() };
    let mut a = AgentProcess::new(&fed, MemberCluster::new("cluster-a", "a.example")?, &options)?;
    a.start()?;
    a.wait_status("A's bundle is what the federation holds", WAIT, |s| {
        s.bundle.federation_current == Some(true)
    })
    .await?;
    let backup = fed.dir().join("before-rotation.snapshot");
    let backup_arg = backup.to_str().expect("utf-8 path");
    fed.cli_ok(&[], &["snapshot", "save", backup_arg])?;
    let authorities = |fed: &Federation| -> Option<u64> {
        let listed = fed.cli_json(&["cluster", "show", "cluster-a"]).ok()?;
        listed.get(0).unwrap_or(&listed)["x509_authorities"].as_u64()
    };
    assert_eq!(authorities(&fed), Some(1));

    // A rotates: old and new CA together; the federation holds both.
    a.member.add_ca()?;
    a.write_bundle()?;
    eventually("the federation holds A's rotated bundle", WAIT, || async {
        (authorities(&fed) == Some(2)).then_some(())
    })
    .await?;
    a.wait_status("A's status shows the rotated bundle held", WAIT, |s| {
        s.bundle.federation_current == Some(true)
    })
    .await?;

    // The federation is restored from the backup taken before the rotation: it holds one
    // CA again, though A's record says it published two. A publishes again.
    fed.cli_ok(&[], &["snapshot", "restore", backup_arg, "--force"])?;
    eventually("the federation holds A's rotated bundle again", WAIT, || async {
        (authorities(&fed) == Some(2)).then_some(())
    })
    .await
    .map_err(|e| e.context(format!("agent log:\n{}", a.log())))?;
    assert!(a.log().contains("publishing it again"), "{}", a.log());
    let text = status_green(&a).await?;
    assert!(text.contains("the federation holds"), "{text}");
    a.kill();
    Ok(())
}
