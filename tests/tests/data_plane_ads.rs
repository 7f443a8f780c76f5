//! The data plane out of the box: a real Envoy whose bootstrap is only what
//! `federator agent envoy-bootstrap` prints (ADS, nothing hand-written), reaching
//! `echo.shop.svc.clusterset.local` through the agent's egress listener.
//!
//! Three member clusters on 127.0.0.1, each with its own CA, trust domain and agent,
//! joined to a 3-replica federation. B (A's region, another zone: priority 1 for A) and C
//! (another region: priority 2) serve the echo behind mTLS Envoys and export it. A's
//! Envoy gets from agent A, over one ADS stream: the cluster (a transport socket per
//! exporter, outlier detection), its endpoints, the trust bundles, the egress listener
//! and its routes (retries to other hosts and priorities).
//!
//! In order, under a request loop:
//! 1. A's calls reach B (its nearest exporter); B sees A's SPIFFE ID.
//! 2. B's endpoint answers with C's certificate (B exports a relay to C's Envoy): A's
//!    Envoy refuses the handshake (C's certificate is not B's identity), and the retry
//!    serves the call from C: 0 failed.
//! 3. B dies (agent, Envoy, echo): **0 failed requests** — retries go to C at once,
//!    outlier detection ejects B, then B's lease expires and EDS marks it unhealthy.
//! 4. B comes back: the traffic returns to B with 0 failed.
//! 5. A rotates its CA (old+new, a new client SVID, old retired): 0 failed.
//! 6. A's Envoy restarted with incremental xDS (`--delta`): calls reach B again.
//!
//! Envoy is required: when it is not installed the test fails and says how to install it.

use std::time::{Duration, Instant};

use federator_chaos::agent::{AgentOptions, AgentProcess};
use federator_chaos::cluster::{Federation, eventually, federator_bin, free_port};
use federator_chaos::envoy::{AdsSidecar, EnvoyProcess, Sidecar, certificate_hash, envoy_version};
use federator_chaos::member::MemberCluster;
use federator_chaos::mesh::{
    HOSTNAME, NS, Sample, ServerCluster, Traffic, WAIT, WithLogs as _, call_host, exports,
    failures, retire_old_cas, wait_accepted,
};
use federator_chaos::proxy::Proxy;

/// Lease TTL of the agents.
const LEASE_TTL: u32 = 3;
/// The Envoy cluster of the import (its stats prefix: `cluster.<name>.`).
const CLUSTER: &str = HOSTNAME;

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

/// Handshakes A's Envoy refused on the import's cluster (wrong CA or wrong SPIFFE ID).
async fn refused_upstream(envoy: &EnvoyProcess) -> anyhow::Result<u64> {
    let stats = envoy.stats().await?;
    Ok(["ssl.fail_verify_error", "ssl.fail_verify_san"]
        .iter()
        .map(|s| stats.get(&format!("cluster.{CLUSTER}.{s}")).copied().unwrap_or(0))
        .sum())
}

/// Fails with the failed samples of `phase` when there are any.
fn assert_none_failed(phase: &str, samples: &[Sample]) {
    let (failed, reasons) = failures(samples);
    assert_eq!(failed, 0, "{phase}: {failed} of {} requests failed: {reasons:?}", samples.len());
}

#[tokio::test]
async fn an_ads_only_envoy_fails_over_rotates_and_verifies_each_exporter() -> anyhow::Result<()> {
    let version = envoy_version()?;
    let _ = federator_bin();
    let started = Instant::now();
    let fed = Federation::formed(3, "").await?;
    let mut b =
        ServerCluster::start(&fed, "cluster-b", "b.example", ("r1", "z2"), LEASE_TTL).await?;
    let c = ServerCluster::start(&fed, "cluster-c", "c.example", ("r2", "z1"), LEASE_TTL).await?;

    // A: its Envoy presents the client SVID from a file-based SDS document that the
    // harness rewrites on rotation; the agent's clusters name it.
    let member_a = MemberCluster::new("cluster-a", "a.example")?;
    let client_id = member_a.workload_id(NS, "client");
    let old_svid = member_a.issue(&client_id)?;
    let envoy_dir = fed.dir().join("envoy-cluster-a");
    let egress_port = free_port();
    let tables = format!(
        "[sinks.xds.clusters]\ncertificate_secret = \"svid\"\ncertificate_sds_file = \"{}\"\n\
         [sinks.xds.egress]\nlisten = \"127.0.0.1:{egress_port}\"\n",
        envoy_dir.join("svid").join("svid.json").display()
    );
    let mut agent_a = AgentProcess::new(
        &fed,
        member_a,
        &AgentOptions {
            xds: true,
            xds_tables: tables,
            lease_ttl_seconds: Some(LEASE_TTL),
            locality: Some(("r1".into(), "z1".into())),
            ..AgentOptions::default()
        },
    )?;
    agent_a.start()?;
    agent_a
        .wait_status("A joined, holds B's and C's bundles and the import", WAIT, |s| {
            s.lease.is_some()
                && s.bundles.contains_key("b.example")
                && s.bundles.contains_key("c.example")
                && s.imports == 1
        })
        .await?;
    let bootstrap = agent_a.envoy_bootstrap("cluster-a", &[])?;
    assert!(
        bootstrap["static_resources"]["listeners"].is_null()
            && bootstrap["dynamic_resources"]["ads_config"]["api_type"] == "GRPC",
        "the bootstrap holds no listener and names ADS: {bootstrap:#}"
    );
    let sidecar = Sidecar::Ads(AdsSidecar { bootstrap, listen_port: egress_port });
    let mut envoy_a = EnvoyProcess::new(&envoy_dir, "cluster-a", &sidecar, &old_svid)?;
    envoy_a.start()?;
    envoy_a.wait_ready(WAIT).await?;
    let addr = envoy_a.listen_addr.clone();

    // == 1. A's calls reach B, which sees A's SPIFFE ID. ==
    let reply = eventually("A's call reaches B through the ADS-configured Envoy", WAIT, || async {
        call_host(&addr, HOSTNAME).await.ok().filter(|r| r.cluster == "cluster-b")
    })
    .await
    .map_err(|e| e.context(format!("{}\n--- envoy a ---\n{}", b.logs(), envoy_a.log_tail(40))))?;
    assert_eq!(reply.peer_id(), Some(client_id.as_str()), "B sees A's SPIFFE ID: {reply:?}");
    println!("ADS: A's call reaches B, which sees {}", reply.xfcc);
    let traffic = Traffic::start_with_host(addr.clone(), HOSTNAME.into());
    calls_since(&traffic, Instant::now(), 20).await?;

    // == 2. B's endpoint answers with C's certificate: refused per exporter, served by C. ==
    // (A port that forwards to C's Envoy: B claiming C's own address would make both one
    // host in A's Envoy, which keys hosts by address.)
    let relay = Proxy::start(c.envoy.listen_addr.parse()?, 1)?;
    let refused_before = refused_upstream(&envoy_a).await?;
    let claimed = Instant::now();
    b.agent.write_exports(&exports(b.trust_domain(), relay.addr().port(), "r1", "z2", true))?;
    let refused = eventually("A's Envoy refuses C's certificate on B's endpoint", WAIT, || async {
        let now = refused_upstream(&envoy_a).await.ok()?;
        (now > refused_before).then_some(now - refused_before)
    })
    .await
    .map_err(|e| e.context(envoy_a.log_tail(40)))?;
    // Calls go on while B claims C's endpoint.
    calls_since(&traffic, Instant::now(), 20).await?;
    b.agent.write_exports(&b.exports(true))?;
    let restored = Instant::now();
    drop(relay);
    let capture = traffic.between(claimed, restored);
    assert_none_failed("B claiming C's endpoint", &capture);
    eventually("traffic back to B's own endpoint", WAIT, || async {
        traffic.first_after(restored, |s| s.served_by("cluster-b"))
    })
    .await?;
    println!(
        "per exporter: B's endpoint answered with C's certificate was refused {refused} times \
         in {} ms; {} calls meanwhile, 0 failed (served by C)",
        ms(restored - claimed),
        capture.len()
    );

    // == 3. B dies: retries and outlier detection keep every request served. ==
    let killed = Instant::now();
    b.kill();
    let first_c = eventually("traffic served by C", WAIT, || async {
        traffic.first_after(killed, |s| s.served_by("cluster-c"))
    })
    .await?;
    // Past B's lease: its endpoint turns not ready in A's EDS.
    eventually("A's Envoy to hold B's endpoint as unhealthy from EDS", WAIT, || async {
        let clusters = envoy_a.admin_get("/clusters").await.ok()?.body;
        clusters
            .lines()
            .any(|l| l.contains("health_flags::") && l.contains("failed_eds_health"))
            .then_some(())
    })
    .await?;
    let down = traffic.between(killed, Instant::now());
    assert_none_failed("B down", &down);
    let ejections = envoy_a
        .stat(&format!("cluster.{CLUSTER}.outlier_detection.ejections_enforced_total"))
        .await?;
    let retries = envoy_a.stat(&format!("cluster.{CLUSTER}.upstream_rq_retry")).await?;
    println!(
        "failover: B killed, first call served by C after {} ms; {} calls while B was down, 0 \
         failed ({retries} retries, {ejections} outlier ejections so far)",
        ms(first_c.at - killed),
        down.len()
    );

    // == 4. B comes back: the traffic with it, nothing failed. ==
    let back = Instant::now();
    b.restart().await.with_logs(&b)?;
    let first_b = eventually("traffic back to B", WAIT, || async {
        traffic.first_after(back, |s| s.served_by("cluster-b"))
    })
    .await
    .with_logs(&b)?;
    calls_since(&traffic, first_b.at, 20).await?;
    let returning = traffic.between(back, Instant::now());
    assert_none_failed("B returning", &returning);
    println!(
        "failback: first call served by B {} ms after its restart began; {} calls, 0 failed",
        ms(first_b.at - back),
        returning.len()
    );

    // == 5. A rotates its CA under load. ==
    let rotation_start = Instant::now();
    agent_a.member.add_ca()?;
    agent_a.write_bundle()?;
    let new_svid = agent_a.member.issue(&client_id)?;
    wait_accepted(&[&b, &c], &new_svid).await?;
    envoy_a.write_svid(&new_svid)?;
    let new_hash = certificate_hash(&new_svid.cert_pem)?;
    retire_old_cas(&mut agent_a, &[&b, &c], &old_svid).await?;
    calls_since(&traffic, Instant::now(), 20).await?;
    let rotation = traffic.between(rotation_start, Instant::now());
    assert_none_failed("CA rotation", &rotation);
    println!(
        "rotation: {} calls during A's CA rotation, 0 failed ({} ms)",
        rotation.len(),
        ms(rotation_start.elapsed())
    );
    let samples = traffic.stop().await?;

    // == 6. Incremental xDS: the same Envoy with a DELTA_GRPC bootstrap. ==
    envoy_a.kill();
    let delta = agent_a.envoy_bootstrap("cluster-a", &["--delta"])?;
    assert_eq!(delta["dynamic_resources"]["ads_config"]["api_type"], "DELTA_GRPC");
    let mut envoy_delta = EnvoyProcess::new(
        &fed.dir().join("envoy-cluster-a-delta"),
        "cluster-a-delta",
        &Sidecar::Ads(AdsSidecar { bootstrap: delta, listen_port: egress_port }),
        &new_svid,
    )?;
    // The SVID file the agent's clusters name is envoy-cluster-a's: it holds the new SVID.
    envoy_delta.start()?;
    envoy_delta.wait_ready(WAIT).await?;
    let reply = eventually("a call through the delta-xDS Envoy", WAIT, || async {
        call_host(&envoy_delta.listen_addr, HOSTNAME).await.ok()
    })
    .await
    .map_err(|e| e.context(envoy_delta.log_tail(40)))?;
    assert_eq!(
        reply.peer_hash(),
        Some(new_hash.as_str()),
        "a new connection presents the rotated SVID: {reply:?}"
    );
    println!("delta xDS: a call served by {} with the rotated SVID", reply.cluster);

    let total = samples.len();
    println!(
        "data plane via ADS (Envoy {version}): {total} requests, {} failed; B down {} calls, \
         failback {} calls, rotation {} calls, all 0 failed; lease TTL {LEASE_TTL} s; test time \
         {:.1} s",
        failures(&samples).0,
        down.len(),
        returning.len(),
        rotation.len(),
        started.elapsed().as_secs_f64()
    );
    drop(c);
    Ok(())
}
