//! Exported services end to end: exports become imports in every other member (KEP-1645
//! semantics: merged endpoints, oldest export wins a port conflict, allowlists), member
//! leases kept alive without log writes and expiring into failover, and watches that
//! resume across the kill of their replica with no gap and no duplicate.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use federator_proto::federation as pb;
use federator_proto::federation::federation_client::FederationClient;
use federator_tests::member::{LeaseKeeper, MemberCluster};
use federator_tests::watcher::WatchView;
use federator_tests::{Federation, eventually};
use tonic::Code;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(20);

/// Joins `names` (cluster `x` gets trust domain `x.example`) through replica 1.
async fn members(fed: &Federation, names: &[&str]) -> anyhow::Result<Vec<MemberCluster>> {
    let mut out = Vec::new();
    for name in names {
        let mut m = MemberCluster::new(name, &format!("{name}.example"))?;
        m.join(fed, 1).await?;
        out.push(m);
    }
    Ok(out)
}

async fn client(
    fed: &Federation,
    m: &MemberCluster,
    via: u64,
) -> anyhow::Result<FederationClient<Channel>> {
    m.client(&fed.replica(via).api_addr, &fed.ca_pem()).await
}

/// Grants a lease and keeps it alive through replica `via`.
async fn live(
    fed: &Federation,
    m: &MemberCluster,
    via: u64,
    ttl_seconds: u32,
) -> anyhow::Result<(u64, LeaseKeeper)> {
    let mut c = client(fed, m, via).await?;
    let lease = c
        .grant_lease(pb::GrantLeaseRequest {
            ttl_seconds,
            region: "region-1".into(),
            zone: "zone-1".into(),
        })
        .await?
        .into_inner();
    Ok((lease.lease_id, LeaseKeeper::start(c, lease.lease_id, Duration::from_millis(300))))
}

async fn watch(
    fed: &Federation,
    m: &MemberCluster,
    via: u64,
    after_revision: u64,
) -> anyhow::Result<tonic::Streaming<pb::WatchEvent>> {
    let mut c = client(fed, m, via).await?;
    Ok(c.watch(pb::WatchRequest { after_revision }).await?.into_inner())
}

async fn export(
    c: &mut FederationClient<Channel>,
    e: pb::ServiceExport,
) -> Result<pb::ExportServiceResponse, tonic::Status> {
    Ok(c.export_service(pb::ExportServiceRequest { export: Some(e) }).await?.into_inner())
}

fn conflict_clusters(i: &pb::ServiceImport) -> Vec<String> {
    i.conditions
        .iter()
        .filter(|c| c.r#type == "Conflict")
        .flat_map(|c| c.clusters.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_merge_into_imports_with_scopes_and_conflicts() -> anyhow::Result<()> {
    let fed = Federation::formed(3, "").await?;
    let ms = members(&fed, &["a", "b", "c"]).await?;
    let (a, b, c) = (&ms[0], &ms[1], &ms[2]);
    let _leases = [live(&fed, a, 2, 30).await?, live(&fed, c, 2, 30).await?];
    let mut ca = client(&fed, a, 2).await?;
    let mut cc = client(&fed, c, 3).await?;

    // B watches from replica 3; C from replica 1.
    let mut stream_b = watch(&fed, b, 3, 0).await?;
    let mut view_b = WatchView::default();
    view_b.read_until(&mut stream_b, WAIT, |v| v.checkpoint > 0).await?;
    assert!(view_b.imports.is_empty());
    let mut stream_c = watch(&fed, c, 1, 0).await?;
    let mut view_c = WatchView::default();

    // Export, then update: B's import follows, with A's identity and trust domain.
    let first = export(&mut ca, a.export("shop", "cart", 80, &["127.0.1.1", "127.0.1.2"])).await?;
    assert_eq!(first.generation, 1);
    view_b.read_until(&mut stream_b, WAIT, |v| v.endpoints("shop/cart") == (2, 2)).await?;
    let import = view_b.import("shop/cart").expect("imported").clone();
    assert_eq!(import.hostname, "cart.shop.svc.clusterset.local");
    assert_eq!(import.identities, vec![a.workload_id("shop", "cart")]);
    assert_eq!(import.clusters[0].trust_domain, "a.example");
    let updated =
        export(&mut ca, a.export("shop", "cart", 80, &["127.0.1.1", "127.0.1.2", "127.0.1.3"]))
            .await?;
    assert_eq!(updated.generation, 2);
    assert!(updated.revision > first.revision);
    view_b.read_until(&mut stream_b, WAIT, |v| v.endpoints("shop/cart") == (3, 3)).await?;

    // C exports the same service with another port: the oldest (A's) wins, and the
    // Conflict is visible to both exporters and to consumers.
    let conflicting = export(&mut cc, c.export("shop", "cart", 8080, &["127.0.3.1"])).await?;
    assert_eq!(conflicting.conditions.len(), 1, "{conflicting:?}");
    assert_eq!(conflicting.conditions[0].clusters, vec!["c".to_string()]);
    view_b.read_until(&mut stream_b, WAIT, |v| v.endpoints("shop/cart") == (4, 4)).await?;
    let merged = view_b.import("shop/cart").expect("import");
    assert_eq!(merged.ports.len(), 1);
    assert_eq!(merged.ports[0].port, 80, "the oldest export's port wins");
    assert_eq!(conflict_clusters(merged), vec!["c".to_string()]);
    view_c
        .read_until(&mut stream_c, WAIT, |v| {
            v.import("shop/cart").is_some_and(|i| conflict_clusters(i) == ["c"])
        })
        .await?;
    let shown = fed.cli_json(&["service", "show", "shop/cart"])?;
    let text = shown.to_string();
    assert!(text.contains("Conflict") && text.contains("8080"), "{text}");

    // An allowlist: B imports shop/secret, C never does.
    let mut secret = a.export("shop", "secret", 443, &["127.0.1.9"]);
    secret.scope_clusters = vec!["b".into()];
    let scoped = export(&mut ca, secret).await?;
    view_b.read_until(&mut stream_b, WAIT, |v| v.import("shop/secret").is_some()).await?;
    view_c.read_until(&mut stream_c, WAIT, |v| v.checkpoint >= scoped.revision).await?;
    assert!(view_c.import("shop/secret").is_none(), "outside the allowlist");
    let c_imports = fed.cli_json(&["import", "list", "--cluster", "c"])?.to_string();
    assert!(!c_imports.contains("secret"), "{c_imports}");

    // Refused: identities of another trust domain (PermissionDenied, audited), a bad
    // field (named), and nothing of either is committed.
    let before = view_b.checkpoint;
    let mut forged = a.export("shop", "cart", 80, &["127.0.1.1"]);
    forged.identities.push(b.workload_id("shop", "cart"));
    let err = export(&mut ca, forged).await.expect_err("foreign identity");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let mut bad = a.export("shop", "cart", 80, &["127.0.1.1"]);
    bad.ports[0].port = 70_000;
    let err = export(&mut ca, bad).await.expect_err("bad port");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("export.ports[0].port"), "{}", err.message());
    let mut bad = a.export("shop", "cart", 80, &["not-an-ip"]);
    bad.endpoints[0].zone = String::new();
    let err = export(&mut ca, bad).await.expect_err("bad address");
    assert!(err.message().contains("endpoints[0].address"), "{}", err.message());
    // Refused before the log: reported to the audit trail within a second or so.
    eventually("the refused exports in the audit trail", Duration::from_secs(15), || async {
        let audit = fed.audit().ok()?;
        audit
            .iter()
            .any(|e| e["action"] == "export_service" && e["accepted"] == false)
            .then_some(())
    })
    .await?;
    assert_eq!(view_b.endpoints("shop/cart"), (4, 4));

    // Unexport: A's endpoints leave B's import; when C leaves too, the import goes.
    ca.unexport_service(pb::UnexportServiceRequest {
        namespace: "shop".into(),
        name: "cart".into(),
    })
    .await?;
    view_b.read_until(&mut stream_b, WAIT, |v| v.endpoints("shop/cart") == (1, 1)).await?;
    assert!(view_b.checkpoint > before);
    let after_a = view_b.import("shop/cart").expect("C's export remains");
    assert_eq!(after_a.ports[0].port, 8080, "C's definition is now the oldest");
    assert!(after_a.conditions.is_empty());
    cc.unexport_service(pb::UnexportServiceRequest {
        namespace: "shop".into(),
        name: "cart".into(),
    })
    .await?;
    view_b.read_until(&mut stream_b, WAIT, |v| v.import("shop/cart").is_none()).await?;

    assert!(view_b.violations.is_empty(), "{:?}", view_b.violations);
    assert!(view_c.violations.is_empty(), "{:?}", view_c.violations);

    // Operators see it in the metrics: B's stream on replica 3, the exports held.
    let metrics = fed.metrics(3).await?;
    let value = |name: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse::<f64>().ok()))
    };
    assert_eq!(value("federator_watch_streams "), Some(1.0), "{metrics}");
    assert!(value("federator_watch_events_total ").is_some_and(|v| v > 0.0), "{metrics}");
    eventually("the state gauges to refresh", WAIT, || async {
        let m = fed.metrics(3).await.ok()?;
        m.lines().any(|l| l == "federator_exports 1").then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_fails_traffic_over_and_a_new_one_brings_it_back() -> anyhow::Result<()> {
    let mut fed = Federation::formed(3, "").await?;
    let ms = members(&fed, &["a", "b"]).await?;
    let (a, b) = (&ms[0], &ms[1]);
    let leader = fed.wait_for_leader(&[1, 2, 3], WAIT).await?;
    let follower = |not: &[u64]| (1..=3).find(|id| !not.contains(id)).expect("a replica");
    let via = follower(&[leader]);
    let ttl = 2;
    let (lease_id, keeper) = live(&fed, a, via, ttl).await?;
    let mut ca = client(&fed, a, via).await?;
    export(&mut ca, a.export("shop", "cart", 80, &["127.0.1.1", "127.0.1.2"])).await?;
    let watch_via = follower(&[leader, via]);
    let mut stream = watch(&fed, b, watch_via, 0).await?;
    let mut view = WatchView::default();
    view.read_until(&mut stream, WAIT, |v| v.endpoints("shop/cart") == (2, 2)).await?;

    // Keep-alives do not write to the log: ten more answered leave the commit index as
    // it was.
    let answered = || keeper.counts.lock().expect("counts").0;
    let commit = fed.status(leader).await.expect("leader status").commit_index;
    let before = answered();
    eventually("ten more keep-alives answered", WAIT, || async move {
        (answered() >= before + 10).then_some(())
    })
    .await?;
    let commit_after = fed.status(leader).await.expect("leader status").commit_index;
    assert_eq!(commit, commit_after, "{} keep-alives wrote to the log", answered() - before);

    // A new leader extends every lease: killing the leader expires nobody.
    fed.kill(leader);
    let new_leader = fed.wait_for_leader(&[via, watch_via], WAIT).await?;
    // A TTL and more passes under the new leader, keep-alives answered all along...
    let led = Instant::now();
    let at_election = answered();
    eventually("a TTL under the new leader, with keep-alives answered", WAIT, || async move {
        let past_ttl = led.elapsed() > Duration::from_secs(u64::from(ttl) + 1);
        (past_ttl && answered() >= at_election + 3).then_some(())
    })
    .await?;
    // ... and a marker exported afterwards reaches the watch, so every event before it
    // (an import gone not ready, had there been one) was read.
    export_retrying(&mut ca, a.export("shop", "marker", 80, &["127.0.1.9"])).await?;
    view.read_until(&mut stream, WAIT, |v| v.endpoints("shop/marker") == (1, 1)).await?;
    let imports = fed.cli_json(&["import", "list", "--cluster", "b"])?.to_string();
    assert!(!imports.contains("\"ready\":false"), "a leader change expired a live lease");
    let flapped = view.events.iter().any(|e| {
        matches!(&e.event, Some(pb::watch_event::Event::ImportPut(i))
            if i.clusters.iter().any(|c| !c.live))
    });
    assert!(!flapped, "the import went not-ready during a leader change");
    println!("leader {leader} killed, {new_leader} leads; lease {lease_id} stayed live");

    // A stops keeping its lease alive: B's import marks its endpoints not ready within
    // the TTL plus one expiry check.
    keeper.stop();
    let stopped = Instant::now();
    view.read_until(&mut stream, WAIT, |v| v.endpoints("shop/cart") == (0, 2)).await?;
    let gap = stopped.elapsed();
    println!("lease expiry seen by the consumer after {gap:?} (ttl {ttl}s)");
    assert!(gap < Duration::from_secs(u64::from(ttl)) + Duration::from_secs(3), "{gap:?}");
    let clusters = fed.cli_json(&["cluster", "list"])?.to_string();
    assert!(clusters.contains("expired"), "{clusters}");

    // The expired lease cannot be revived; a new one brings the endpoints back.
    let err = ca.keep_alive(pb::KeepAliveRequest { lease_id }).await.expect_err("expired");
    assert_eq!(err.code(), Code::NotFound, "{err}");
    let (_, _keeper) = live(&fed, a, via, ttl).await?;
    view.read_until(&mut stream, WAIT, |v| v.endpoints("shop/cart") == (2, 2)).await?;
    assert!(view.violations.is_empty(), "{:?}", view.violations);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_across_a_replica_kill_and_compaction_forces_a_resync() -> anyhow::Result<()>
{
    let mut fed = Federation::formed(3, "").await?;
    let ms = members(&fed, &["a", "b"]).await?;
    let (a, b) = (&ms[0], &ms[1]);
    let leader = fed.wait_for_leader(&[1, 2, 3], WAIT).await?;
    let served_by = (1..=3).find(|id| *id != leader).expect("a follower");
    let writer_via = (1..=3).find(|id| *id != leader && *id != served_by).expect("another");
    let _lease = live(&fed, a, writer_via, 60).await?;
    let mut stream = watch(&fed, b, served_by, 0).await?;
    let mut view = WatchView::default();
    view.read_until(&mut stream, WAIT, |v| v.checkpoint > 0).await?;

    // A writes while B watches; the replica serving B is killed in the middle.
    let writer = {
        let mut ca = client(&fed, a, writer_via).await?;
        let exports: Vec<pb::ServiceExport> = (0..60)
            .map(|i| {
                let host = format!("127.0.2.{}", i + 1);
                a.export("shop", &format!("svc-{}", i % 5), 80, &[host.as_str()])
            })
            .collect();
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for e in exports {
                let key = format!("{}/{}", e.namespace, e.name);
                let response = export(&mut ca, e).await?;
                acked.push((key, response.revision));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(acked)
        })
    };
    view.read_until(&mut stream, WAIT, |v| v.imports.len() >= 3).await?;
    fed.kill(served_by);
    // Drain what the dead replica had sent; the stream then fails.
    while let Ok(Some(event)) = stream.message().await {
        view.apply(event);
    }
    let resume_from = view.checkpoint;
    let mut stream = watch(&fed, b, leader, resume_from).await?;
    let acked = writer.await??;
    let last = acked.iter().map(|(_, r)| *r).max().expect("acked");
    view.read_until(&mut stream, WAIT, |v| v.checkpoint >= last).await?;
    assert!(view.violations.is_empty(), "{:?}", view.violations);
    assert_eq!(view.resyncs, 0, "a resume inside the window needs no resync");
    // No gap: the newest acknowledged revision of every service is what B holds.
    let mut newest: BTreeMap<&str, u64> = BTreeMap::new();
    for (key, revision) in &acked {
        newest.insert(key, *revision);
    }
    for (key, revision) in newest {
        let held = view.imports.get(key).map(|(r, _)| *r);
        assert_eq!(held, Some(revision), "{key}: B holds {held:?}, the last ack was {revision}");
    }
    println!(
        "resumed from revision {resume_from} on replica {leader} after killing {served_by}; \
         {} events, {} acked writes",
        view.events.len(),
        acked.len()
    );

    // B goes away; more changes than the window holds are made; B's resume from its old
    // checkpoint gets an explicit resync and then the whole state.
    drop(stream);
    let checkpoint = view.checkpoint;
    let window = federator::state::EVENT_WINDOW;
    let writers: Vec<_> = (0..16)
        .map(|w| {
            let fed_addr = fed.replica(leader).api_addr.clone();
            let ca_pem = fed.ca_pem();
            let export = a.export("churn", &format!("w{w}"), 80, &["127.0.3.1"]);
            let member_svid = a.agent_svid().clone();
            tokio::spawn(async move {
                let mut c =
                    federator_tests::member::connect_as(&fed_addr, &ca_pem, Some(&member_svid))
                        .await?;
                for i in 0..window / 16 + 8 {
                    let mut e = export.clone();
                    e.endpoints[0].weight = u32::try_from(i % 100 + 1).unwrap_or(1);
                    export_retrying(&mut c, e).await?;
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for w in writers {
        w.await??;
    }
    let mut stream = watch(&fed, b, leader, checkpoint).await?;
    let mut resumed = WatchView::resuming_at(checkpoint);
    resumed.read_until(&mut stream, WAIT, |v| v.resyncs == 1 && v.checkpoint > checkpoint).await?;
    let first = resumed.events.first().and_then(|e| e.event.clone());
    assert!(matches!(first, Some(pb::watch_event::Event::Resync(true))), "{first:?}");
    assert_eq!(resumed.imports.len(), 5 + 16, "the snapshot after the resync holds everything");
    assert!(resumed.violations.is_empty(), "{:?}", resumed.violations);
    Ok(())
}

/// Exports, retrying while the group is briefly without a leader.
async fn export_retrying(
    c: &mut FederationClient<Channel>,
    e: pb::ServiceExport,
) -> anyhow::Result<pb::ExportServiceResponse> {
    for _ in 0..20 {
        match export(c, e.clone()).await {
            Ok(r) => return Ok(r),
            Err(s) if matches!(s.code(), Code::Unavailable | Code::DeadlineExceeded) => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => return Err(s.into()),
        }
    }
    anyhow::bail!("export not accepted after 20 tries")
}

/// A snapshot bigger than one piece (the replica reads 64 KiB of imports at a time) arrives
/// whole while A keeps changing services, some already sent and some not yet: B ends with
/// every service at its last acknowledged revision, no event repeated or going back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_bigger_than_a_piece_arrives_whole_while_writes_go_on() -> anyhow::Result<()> {
    const SERVICES: usize = 30;
    let fed = Federation::formed(3, "").await?;
    let ms = members(&fed, &["a", "b"]).await?;
    let (a, b) = (&ms[0], &ms[1]);
    let leader = fed.wait_for_leader(&[1, 2, 3], WAIT).await?;
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    let _lease = live(&fed, a, leader, 60).await?;
    let hosts: Vec<String> =
        (0..200).map(|i| format!("127.0.{}.{}", 3 + i / 200, 1 + i % 200)).collect();
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let key = |i: usize| format!("bulk/svc-{i:02}");
    let mut ca = client(&fed, a, leader).await?;
    let mut acked = BTreeMap::new();
    for i in 0..SERVICES {
        let response =
            export(&mut ca, a.export("bulk", &format!("svc-{i:02}"), 80, &hosts)).await?;
        acked.insert(key(i), (response.revision, hosts.len()));
    }
    // The first, a middle and the last service change while B reads its snapshot.
    let changes: Vec<(usize, pb::ServiceExport)> = (0..30)
        .map(|round| {
            let i = [0, SERVICES / 2, SERVICES - 1][round % 3];
            (i, a.export("bulk", &format!("svc-{i:02}"), 80, &hosts[..100 + round]))
        })
        .collect();
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        for (i, e) in changes {
            let endpoints = e.endpoints.len();
            let response = export(&mut ca, e).await?;
            acked.push((i, response.revision, endpoints));
        }
        anyhow::Ok(acked)
    });
    let mut stream = watch(&fed, b, follower, 0).await?;
    let mut view = WatchView::default();
    view.read_until(&mut stream, WAIT, |v| v.checkpoint > 0).await?;
    let snapshot_bytes: usize = view
        .events
        .iter()
        .take_while(|e| !matches!(e.event, Some(pb::watch_event::Event::SnapshotEnd(_))))
        .map(prost::Message::encoded_len)
        .sum();
    assert!(snapshot_bytes > 2 * 64 * 1024, "the snapshot spans pieces: {snapshot_bytes} bytes");
    for (i, revision, endpoints) in writer.await?? {
        acked.insert(key(i), (revision, endpoints));
    }
    let last = acked.values().map(|(r, _)| *r).max().expect("acked");
    view.read_until(&mut stream, WAIT, |v| v.checkpoint >= last).await?;
    assert!(view.violations.is_empty(), "{:?}", view.violations);
    assert_eq!(view.imports.len(), SERVICES, "{:?}", view.imports.keys().collect::<Vec<_>>());
    for (key, (revision, endpoints)) in &acked {
        let held = view.imports.get(key).map(|(r, _)| *r);
        assert_eq!(held, Some(*revision), "{key}: B holds {held:?}, the last ack was {revision}");
        assert_eq!(view.endpoints(key), (*endpoints, *endpoints), "{key}");
    }
    println!(
        "snapshot of {snapshot_bytes} bytes in {} events, then caught up to revision {last}",
        view.events.len()
    );
    Ok(())
}
