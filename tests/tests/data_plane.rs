//! The data plane through real Envoy proxies: three member clusters, each with its own
//! CA and trust domain and a real `federator agent`, joined to a real 3-replica
//! federation, all on 127.0.0.1.
//!
//! - B and C each run an echo service behind a server Envoy that requires mTLS and
//!   validates clients through SDS (`ALL`) from the cluster's agent; both export it as
//!   `shop/echo` (B in A's zone, C in another region).
//! - A runs a client Envoy with a workload SVID of `a.example` that routes to the import
//!   `echo.shop.svc.clusterset.local` through EDS from agent A, verifying the server's
//!   SPIFFE ID with agent A's `ALL`. Every request is a new upstream connection, so every
//!   request is an mTLS handshake against the certificates in force at that moment.
//!
//! In order:
//! 1. Before A joins, B's Envoy refuses A's certificate in the TLS handshake.
//! 2. Once A has joined, A's calls reach B (its nearest exporter) and B sees A's SPIFFE ID.
//! 3. A rotates its CA while a request loop runs (old and new CA together, a new client
//!    SVID from the new CA, then only the new CA): no request fails.
//! 4. B is killed (agent, Envoy, echo): the traffic fails over to C once B's lease
//!    expires; the gap is measured. B restarted, the traffic comes back to B.
//! 5. A is removed from the federation: B refuses A's calls.
//!
//! Envoy is required: when it is not installed the test fails and says how to install it
//! (`bash deploy/local/setup.sh`).

use std::time::{Duration, Instant};

use federator_chaos::agent::{AgentOptions, AgentProcess};
use federator_chaos::cluster::{Federation, eventually, federator_bin, free_port};
use federator_chaos::envoy::{
    CLIENT_CLUSTER, ClientSidecar, EnvoyProcess, Sidecar, certificate_hash, envoy_version,
};
use federator_chaos::member::MemberCluster;
use federator_chaos::mesh::{
    HOSTNAME, NS, SERVICE, Sample, ServerCluster, Traffic, WAIT, WithLogs as _, call, failures,
    retire_old_cas, wait_accepted,
};

/// Lease TTL of the agents: B's endpoints turn not ready this long after B dies.
const LEASE_TTL: u32 = 3;

/// Waits until `traffic` has made `calls` calls since `since`: an interval that holds
/// real calls, whatever the machine's speed (instead of a fixed sleep).
async fn calls_since(traffic: &Traffic, since: Instant, calls: usize) -> anyhow::Result<()> {
    eventually(&format!("{calls} calls through Envoy"), WAIT, || async {
        (traffic.between(since, Instant::now()).len() >= calls).then_some(())
    })
    .await
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test]
async fn mtls_rotation_failover_and_removal_through_envoy() -> anyhow::Result<()> {
    let version = envoy_version()?;
    let _ = federator_bin(); // brought up to date before the clock starts
    let started = Instant::now();
    let fed = Federation::formed(3, "").await?;

    // B (A's zone) and C (another region) serve the echo behind their Envoys and export
    // it; A is not a member yet.
    let mut b =
        ServerCluster::start(&fed, "cluster-b", "b.example", ("r1", "z1"), LEASE_TTL).await?;
    let c = ServerCluster::start(&fed, "cluster-c", "c.example", ("r2", "z1"), LEASE_TTL).await?;
    let member_a = MemberCluster::new("cluster-a", "a.example")?;
    let client_id = member_a.workload_id(NS, "client");
    let old_svid = member_a.issue(&client_id)?;
    let mut agent_a = AgentProcess::new(
        &fed,
        member_a,
        &AgentOptions {
            xds: true,
            lease_ttl_seconds: Some(LEASE_TTL),
            locality: Some(("r1".into(), "z1".into())),
            ..AgentOptions::default()
        },
    )?;

    // == 1. Not federated: B's Envoy refuses A's certificate in the handshake. ==
    let refused_before = b.refused().await?;
    let err = b
        .probe(&old_svid)
        .await
        .expect_err("B's Envoy accepted a client of a trust domain it does not federate with");
    let refused_after = b.refused().await?;
    assert!(
        refused_after > refused_before,
        "B's Envoy counted no refused client certificate ({refused_before} → {refused_after}): \
         {err:#}"
    );
    println!("before federation: B's Envoy refuses A's SVID: {err:#}");

    // == 2. A joins: B and C trust A's CA, A imports their exports. ==
    agent_a.start()?;
    agent_a
        .wait_status("A joined, holds B's and C's bundles and the import", WAIT, |s| {
            s.lease.is_some()
                && s.bundles.contains_key("b.example")
                && s.bundles.contains_key("c.example")
                && s.imports == 1
        })
        .await?;
    for server in [&b, &c] {
        eventually("the server Envoy accepts A's SVID", WAIT, || async {
            server.probe(&old_svid).await.ok()
        })
        .await
        .with_logs(server)?;
    }
    let sidecar = Sidecar::Client(ClientSidecar {
        listen_port: free_port(),
        eds_service: HOSTNAME.into(),
        xds_addr: agent_a.xds_addr.clone().unwrap_or_default(),
        validation_secret: "ALL".into(),
        upstream_ids: [&b, &c]
            .iter()
            .map(|s| format!("spiffe://{}/ns/{NS}/sa/{SERVICE}", s.trust_domain()))
            .collect(),
    });
    let mut envoy_a =
        EnvoyProcess::new(&fed.dir().join("envoy-cluster-a"), "cluster-a", &sidecar, &old_svid)?;
    envoy_a.start()?;
    envoy_a.wait_ready(WAIT).await?;
    let a_addr = envoy_a.listen_addr.clone();
    let reply = eventually("A's call reaches B through both Envoys", WAIT, || async {
        call(&a_addr).await.ok()
    })
    .await
    .map_err(|e| e.context(format!("{}\n--- envoy a ---\n{}", b.logs(), envoy_a.log_tail(30))))?;
    assert_eq!(reply.cluster, "cluster-b", "B is A's nearest exporter: {reply:?}");
    assert_eq!(reply.peer_id(), Some(client_id.as_str()), "B sees A's SPIFFE ID: {reply:?}");
    assert_eq!(reply.peer_hash(), Some(certificate_hash(&old_svid.cert_pem)?.as_str()));
    println!("federated: A's call reaches B, which sees {}", reply.xfcc);

    // == 3. A rotates its CA under load. ==
    let traffic = Traffic::start(a_addr.clone());
    calls_since(&traffic, Instant::now(), 20).await?;
    let handshakes = format!("cluster.{CLIENT_CLUSTER}.ssl.handshake");
    let handshakes_before = envoy_a.stat(&handshakes).await?;
    let rotation_start = Instant::now();
    // Old and new CA together; B's and C's Envoys then accept SVIDs of either.
    agent_a.member.add_ca()?;
    agent_a.write_bundle()?;
    let new_svid = agent_a.member.issue(&client_id)?;
    wait_accepted(&[&b, &c], &new_svid).await?;
    eventually("`bundle status a.example`: every member applied old+new", WAIT, || async {
        fed.cli(&[], &["bundle", "status", "a.example"]).ok().filter(|out| out.status.success())
    })
    .await?;
    let both_at = rotation_start.elapsed();
    // The client workload's new SVID, from the new CA, into A's Envoy.
    envoy_a.write_svid(&new_svid)?;
    let new_hash = certificate_hash(&new_svid.cert_pem)?;
    let swapped = Instant::now();
    eventually("A's Envoy presents the new SVID", WAIT, || async {
        traffic.first_after(swapped, |s| {
            s.outcome.as_ref().is_ok_and(|r| r.peer_hash() == Some(new_hash.as_str()))
        })
    })
    .await?;
    let svid_at = rotation_start.elapsed();
    // Only the new CA: the agent's own SVID first (it must stay certified by the bundle
    // it publishes), then the bundle. B's and C's Envoys then refuse the old SVID.
    retire_old_cas(&mut agent_a, &[&b, &c], &old_svid).await?;
    let retired_at = rotation_start.elapsed();
    // Calls after the retirement, on the new SVID only.
    calls_since(&traffic, Instant::now(), 40).await?;
    let rotation_end = Instant::now();
    let rotation_handshakes = envoy_a.stat(&handshakes).await? - handshakes_before;
    let rotation = traffic.between(rotation_start, rotation_end);
    let (rotation_failed, reasons) = failures(&rotation);
    assert_eq!(rotation_failed, 0, "requests failed during the CA rotation: {reasons:?}");
    let last_hash = rotation.iter().rev().find_map(|s| s.outcome.as_ref().ok()?.peer_hash());
    assert_eq!(last_hash, Some(new_hash.as_str()), "the rotation ends with the new SVID");
    // Every call was its own upstream connection, a handshake against the certificates
    // in force at that moment (give or take the call in flight at either end).
    assert!(
        rotation_handshakes + 2 >= rotation.len() as u64,
        "{rotation_handshakes} upstream handshakes for {} calls",
        rotation.len()
    );
    println!(
        "rotation: {} calls ({rotation_handshakes} upstream mTLS handshakes), 0 failed; B and C \
         trust old+new after {} ms, new SVID in use after {} ms, old CA refused after {} ms",
        rotation.len(),
        ms(both_at),
        ms(svid_at),
        ms(retired_at)
    );

    // == 4. B dies: the traffic fails over to C when B's lease expires. ==
    let killed = Instant::now();
    b.kill();
    let first_c = eventually("traffic served by C", WAIT, || async {
        traffic.first_after(killed, |s| s.served_by("cluster-c"))
    })
    .await?;
    let gap = first_c.at - killed;
    let (failover_failed, failover_reasons) = failures(&traffic.between(killed, first_c.at));
    // Then C serves every call: B's endpoint is not ready in the import, so agent A's EDS
    // marks it unhealthy.
    eventually("A's Envoy to hold B's endpoint as unhealthy from EDS", WAIT, || async {
        let clusters = envoy_a.admin_get("/clusters").await.ok()?.body;
        clusters.lines().any(|l| l.contains("health_flags::/failed_eds_health")).then_some(())
    })
    .await?;
    let settled = Instant::now();
    calls_since(&traffic, settled, 20).await?;
    let on_c = traffic.between(settled, Instant::now());
    let stray = on_c.iter().find(|s| !s.served_by("cluster-c"));
    assert!(!on_c.is_empty() && stray.is_none(), "after the failover, C serves: {stray:?}");
    assert!(
        gap < Duration::from_secs(u64::from(LEASE_TTL) + 3),
        "failover took {gap:?}, lease TTL {LEASE_TTL}s"
    );
    println!(
        "failover: B killed, first call served by C after {} ms, {failover_failed} calls failed \
         meanwhile ({failover_reasons:?}); lease TTL {LEASE_TTL} s",
        ms(gap)
    );

    // B comes back (exported not ready until its Envoy serves); the traffic with it.
    let restarted = Instant::now();
    b.restart().await.with_logs(&b)?;
    let back = Instant::now();
    let first_b = eventually("traffic back to B", WAIT, || async {
        traffic.first_after(back, |s| s.served_by("cluster-b"))
    })
    .await
    .with_logs(&b)?;
    let failback = first_b.at - back;
    calls_since(&traffic, first_b.at, 20).await?;
    let samples = traffic.stop().await?;
    // After the failover no call fails: C serves until B's Envoy is ready and B's agent
    // has re-published its export (not ready) before taking its new lease, so the export
    // the federation held from before the kill never turns ready ahead of B's Envoy.
    let late: Vec<&Sample> =
        samples.iter().filter(|s| s.at > first_c.at && s.outcome.is_err()).collect();
    assert!(
        late.is_empty(),
        "{} calls failed after the failover, at {:?} ms after B's restart began: {:?}",
        late.len(),
        late.iter().map(|s| ms(s.at.saturating_duration_since(restarted))).collect::<Vec<_>>(),
        late.first()
    );
    println!(
        "failback: first call served by B {} ms after its endpoint is ready again; 0 calls failed",
        ms(failback)
    );

    // == 5. A is removed: B refuses the calls of A's Envoy. ==
    let refused_before = b.refused().await?;
    let removing = Instant::now();
    fed.cli_ok(&[], &["cluster", "remove", "cluster-a"])?;
    let refusal = eventually("B's Envoy refuses the calls of A's Envoy", WAIT, || async {
        let failure = call(&a_addr).await.err()?;
        (b.refused().await.ok()? > refused_before).then_some(failure)
    })
    .await
    .with_logs(&b)?;
    let refused_in = removing.elapsed();
    b.agent
        .wait_status("B's agent dropped A's bundle", WAIT, |s| !s.bundles.contains_key("a.example"))
        .await?;
    let direct = b.probe(&new_svid).await.expect_err("B's Envoy accepted a removed member");
    println!(
        "removal: B refuses A {} ms after `cluster remove`: through A's Envoy {refusal:?}; \
         direct: {direct:#}",
        ms(refused_in)
    );

    // The figures.
    let total = samples.len();
    let ok = samples.iter().filter(|s| s.outcome.is_ok()).count();
    let percent = |n: usize, of: usize| if of == 0 { 0.0 } else { 100.0 * n as f64 / of as f64 };
    println!(
        "data plane (Envoy {version}): {total} requests, success rate {:.2} % ({:.2} % outside \
         the failover gap), rotation failures {rotation_failed} of {}, failover gap {} ms \
         ({failover_failed} failed requests), failback {} ms ({} failed), lease TTL {LEASE_TTL} \
         s, test time {:.1} s",
        percent(ok, total),
        percent(ok, total - failover_failed),
        rotation.len(),
        ms(gap),
        ms(failback),
        late.len(),
        started.elapsed().as_secs_f64()
    );
    drop(c);
    Ok(())
}
