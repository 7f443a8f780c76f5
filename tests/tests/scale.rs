//! Scale: 1,000 member clusters × 10 services × 10 endpoints, joined and exported through
//! the federation API of a real 3-replica group, snapshotted with the log purged, and
//! installed on a new replica that then serves every import.

use std::sync::Arc;
use std::time::{Duration, Instant};

use federator_proto::admin as admin_pb;
use federator_proto::federation as pb;
use federator_tests::Federation;
use federator_tests::member::MemberCluster;
use tokio::task::JoinSet;

const MEMBERS: usize = 1_000;
const SERVICES: usize = 10;
const ENDPOINTS: usize = 10;
/// Members joined and exporting at once.
const CONCURRENCY: usize = 16;

/// Endpoint `e` of service `s` of member `m`: a distinct loopback address.
fn address(m: usize, s: usize, e: usize) -> String {
    format!("127.{}.{}.{}", m / 256, m % 256, s * ENDPOINTS + e + 1)
}

/// Joins member `m` with `token` and exports its services; returns the writes made.
async fn member_work(
    api: String,
    ca_pem: Arc<String>,
    m: usize,
    token: String,
) -> anyhow::Result<()> {
    let mut member = MemberCluster::new(&format!("m{m}"), &format!("m{m}.scale.test"))?;
    let bundle = member.next_bundle()?;
    let mut client = member.client(&api, &ca_pem).await?;
    client
        .join(federator_tests::member::join_request(&token, &member.trust_domain, bundle))
        .await?;
    client.grant_lease(pb::GrantLeaseRequest { ttl_seconds: 3_600, ..Default::default() }).await?;
    for s in 0..SERVICES {
        let addresses: Vec<String> = (0..ENDPOINTS).map(|e| address(m, s, e)).collect();
        let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
        let export = member.export("scale", &format!("svc-{s}"), 80, &refs);
        client.export_service(pb::ExportServiceRequest { export: Some(export) }).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_members_with_a_hundred_thousand_endpoints_snapshot_and_install()
-> anyhow::Result<()> {
    let mut fed = Federation::new(4)?;
    fed.extra_config = "keep_entries_after_snapshot = 10".into();
    // The shipped default timing (heartbeat 250 ms): this test is about size, not
    // failover, and with the harness's 25 ms heartbeat a 2-core machine busy with a
    // thousand members' joins misses heartbeats, so leaders step down (check-quorum) and
    // writes fail while none is known.
    fed.timing = Default::default();
    for id in 1..=3 {
        fed.start(id, false)?;
    }
    fed.form_group(&[1, 2, 3]).await?;
    let started = Instant::now();

    // Tokens through the admin API, then joins and exports spread over the replicas.
    let mut admin = fed.admin(1).await?;
    let mut tokens = Vec::with_capacity(MEMBERS);
    for m in 0..MEMBERS {
        let created = admin
            .create_token(admin_pb::CreateTokenRequest {
                cluster: format!("m{m}"),
                trust_domain: format!("m{m}.scale.test"),
                ttl_seconds: 3_600,
                // The region its exports' endpoints claim (`MemberCluster::export`).
                region: "region-1".into(),
                ..Default::default()
            })
            .await?;
        tokens.push(created.into_inner().token);
    }
    let ca_pem = Arc::new(fed.ca_pem());
    let apis: Vec<String> = (1..=3).map(|id| fed.replica(id).api_addr.clone()).collect();
    let mut work = JoinSet::new();
    for (m, token) in tokens.into_iter().enumerate() {
        if work.len() >= CONCURRENCY {
            work.join_next().await.expect("a task")??;
        }
        work.spawn(member_work(apis[m % 3].clone(), Arc::clone(&ca_pem), m, token));
    }
    while let Some(done) = work.join_next().await {
        done??;
    }
    let loaded = started.elapsed();

    // Every replica holds it all; the leader snapshots and purges its log.
    let (index, _) = fed.wait_for_convergence(&[1, 2, 3], Duration::from_secs(60)).await?;
    let leader = fed.wait_for_leader(&[1, 2, 3], Duration::from_secs(10)).await?;
    let snapshot = fed
        .admin(leader)
        .await?
        .trigger_snapshot(admin_pb::TriggerSnapshotRequest { purge: true })
        .await?
        .into_inner();
    assert!(snapshot.snapshot_index >= index);

    // A new replica can only catch up by installing that snapshot.
    fed.start(4, false)?;
    let addr = fed.replica(4).raft_addr.clone();
    fed.cli_ok(&[1, 2, 3], &["raft", "add-member", "4", &addr])?;
    fed.wait_for_convergence(&[1, 2, 3, 4], Duration::from_secs(120)).await?;
    let status = fed.status(4).await.expect("replica 4 answers");
    assert!(status.snapshot_index >= snapshot.snapshot_index, "{status:?}");

    // Replica 4 serves every import from the installed state.
    let mut admin4 = fed.admin(4).await?;
    let imports = admin4
        .list_imports(admin_pb::ListImportsRequest {
            cluster: "m0".into(),
            consistency: admin_pb::Consistency::Stale.into(),
        })
        .await?
        .into_inner()
        .imports;
    assert_eq!(imports.len(), SERVICES);
    let endpoints: usize = imports
        .iter()
        .flat_map(|i| &i.clusters)
        .map(|c| c.endpoints.iter().filter(|e| e.ready).count())
        .sum();
    assert_eq!(endpoints, MEMBERS * SERVICES * ENDPOINTS);
    println!(
        "scale: {MEMBERS} members, {} endpoints loaded in {loaded:?}; snapshot at {} installed on \
         a new replica; {:?} in all",
        MEMBERS * SERVICES * ENDPOINTS,
        snapshot.snapshot_index,
        started.elapsed()
    );
    Ok(())
}
