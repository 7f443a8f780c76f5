//! Backup and disaster recovery: `federator snapshot save` from a 3-replica group with
//! members, bundles, services, leases and multi-megabyte probe data; the whole group
//! lost; `federator snapshot restore` into a new group (new CA, new ports) with one
//! replica down, which later catches up from a snapshot of the restored state. The
//! restored federation serves the same members, bundles, services and probes on every
//! replica; its members' agents keep working against it; watch revisions never go back
//! and watchers resynchronise; a second restore needs --force; damaged files are refused
//! before anything is sent, one whose state does not decode is cancelled before its
//! commit, and an upload that stops short has its staged bytes dropped.

use std::time::Duration;

use federator_proto::admin as admin_pb;
use federator_proto::federation as pb;
use federator_tests::member::MemberCluster;
use federator_tests::{Federation, eventually};

const WAIT: Duration = Duration::from_secs(30);
/// Probe values big enough that the snapshot spans several 1 MiB restore entries.
const PROBES: usize = 40;
const PROBE_BYTES: usize = 64 * 1024;

/// What a group serves, read from replica `id` without asking the leader: compared
/// between the saved and the restored federation.
async fn served(fed: &Federation, id: u64) -> anyhow::Result<serde_json::Value> {
    let stale = admin_pb::Consistency::Stale as i32;
    let mut admin = fed.admin(id).await?;
    let clusters = admin
        .list_clusters(admin_pb::ListClustersRequest { consistency: stale })
        .await?
        .into_inner()
        .clusters;
    let mut bundles = Vec::new();
    let mut members = Vec::new();
    for c in &clusters {
        members.push(serde_json::json!([c.name, c.trust_domain]));
        let b = admin
            .get_bundle(admin_pb::GetBundleRequest {
                trust_domain: c.trust_domain.clone(),
                consistency: stale,
                ..Default::default()
            })
            .await?
            .into_inner();
        bundles.push(serde_json::json!([b.trust_domain, b.sequence, b.digest]));
    }
    let services = admin
        .list_services(admin_pb::ListServicesRequest { consistency: stale, ..Default::default() })
        .await?
        .into_inner()
        .services;
    let services: Vec<_> = services
        .iter()
        .map(|s| {
            let exporters: Vec<_> = s.exports.iter().map(|e| e.cluster.clone()).collect();
            serde_json::json!([s.namespace, s.name, exporters])
        })
        .collect();
    let probes = admin
        .list_probes(admin_pb::ListProbesRequest { prefix: "backup/".into(), consistency: stale })
        .await?
        .into_inner()
        .entries;
    let probes: Vec<_> =
        probes.iter().map(|p| serde_json::json!([p.key, p.value.len(), p.value[0]])).collect();
    Ok(serde_json::json!({
        "members": members, "bundles": bundles, "services": services, "probes": probes,
    }))
}

/// The federation's watch revision.
async fn revision(fed: &Federation, id: u64) -> anyhow::Result<u64> {
    let mut admin = fed.admin(id).await?;
    let list = admin.list_services(admin_pb::ListServicesRequest::default()).await?;
    Ok(list.into_inner().revision)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saved_federation_is_restored_into_a_new_group() -> anyhow::Result<()> {
    // The original federation: two members with bundles, exports and live leases.
    let old = Federation::formed(3, "").await?;
    let mut a = MemberCluster::new("a", "a.example")?;
    let mut b = MemberCluster::new("b", "b.example")?;
    a.join(&old, 1).await?;
    b.join(&old, 2).await?;
    for (m, address) in [(&a, "127.0.0.11"), (&b, "127.0.0.12")] {
        let mut c = m.client(&old.replica(1).api_addr, &old.ca_pem()).await?;
        c.grant_lease(pb::GrantLeaseRequest { ttl_seconds: 3600, ..Default::default() }).await?;
        let export = m.export("shop", "cart", 8080, &[address]);
        c.export_service(pb::ExportServiceRequest { export: Some(export) }).await?;
    }
    // A newer bundle of a: its sequence must survive the restore.
    let mut ca = a.client(&old.replica(1).api_addr, &old.ca_pem()).await?;
    let bundle = a.next_bundle()?;
    ca.publish_bundle(federator_tests::member::publish_request(&a.trust_domain, bundle, false))
        .await?;
    let mut admin = old.admin(1).await?;
    for i in 0..PROBES {
        admin
            .put(admin_pb::PutRequest {
                key: format!("backup/{i:02}"),
                value: vec![u8::try_from(i).unwrap_or(0); PROBE_BYTES],
            })
            .await?;
    }
    let old_revision = revision(&old, 1).await?;
    old.wait_for_convergence(&[1, 2, 3], WAIT).await?;
    let saved_view = served(&old, 1).await?;

    // Save; `status` checks the file without any replica.
    let file = old.dir().join("federation.snap");
    let file_arg = file.to_str().expect("utf-8 path");
    let saved = old.cli_json(&["snapshot", "save", file_arg])?;
    assert_eq!(saved["members"], 2, "{saved}");
    assert_eq!(saved["services"], 1, "{saved}");
    assert!(saved["size"].as_u64().unwrap_or(0) > (PROBES * PROBE_BYTES) as u64, "{saved}");
    let checked = old.cli_json(&["snapshot", "status", file_arg])?;
    assert_eq!(checked["sha256"], saved["sha256"]);

    // A damaged copy is refused by `status` and by `restore`, naming the problem.
    let mut bytes = std::fs::read(&file)?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    let damaged = old.dir().join("damaged.snap");
    std::fs::write(&damaged, &bytes)?;
    let damaged_arg = damaged.to_str().expect("utf-8 path");
    let out = old.cli(&[], &["snapshot", "status", damaged_arg])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("checksum mismatch"), "{stderr}");
    // Intact bytes (size and checksum agree with the header) that are no state: the
    // restore streams them while it decodes them, and cancels before the commit.
    let undecodable = old.dir().join("undecodable.snap");
    {
        use sha2::Digest as _;
        let mut reader = std::io::BufReader::new(std::fs::File::open(&file)?);
        let mut header = federator::snapshot_file::read_header(&mut reader)?;
        let mut data = vec![3u8]; // the state format, then bytes that are no state
        data.extend((0..3 * PROBE_BYTES * 16).map(|i| (i % 251) as u8 | 0x80));
        header.size = data.len() as u64;
        header.sha256 = hex::encode(sha2::Sha256::digest(&data));
        let mut out = Vec::new();
        federator::snapshot_file::write_header(&mut out, &header)?;
        out.extend_from_slice(&data);
        std::fs::write(&undecodable, out)?;
    }
    let undecodable_arg = undecodable.to_str().expect("utf-8 path");

    // Disaster: the whole group is lost.
    let restored_into = {
        let mut old = old;
        old.kill_all();
        // A new group, new CA and ports, replica 3 down while the restore runs.
        let mut new = Federation::new(3)?;
        for id in 1..=3 {
            new.start(id, false)?;
        }
        new.form_group(&[1, 2, 3]).await?;
        let out = new.cli(&[1, 2], &["snapshot", "restore", damaged_arg])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("checksum mismatch"), "{stderr}");
        let out = new.cli(&[1, 2], &["snapshot", "restore", undecodable_arg])?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains("does not decode"), "{stderr}");
        // An upload that ends short of its announced size: the leader refuses it and
        // drops what it staged, which the audit trail shows.
        let leader = new.wait_for_leader(&[1, 2, 3], WAIT).await?;
        let short = admin_pb::RestoreSnapshotRequest {
            size: 3 << 20,
            sha256: "0".repeat(64),
            force: false,
            data: vec![7; 1 << 20],
        };
        let refused = new
            .admin(leader)
            .await?
            .restore_snapshot(tokio_stream::iter(vec![short]))
            .await
            .expect_err("a short upload is refused");
        assert!(refused.message().contains("ended after 1048576 of 3145728"), "{refused:?}");
        let audit = new.audit()?;
        assert!(
            audit.iter().any(|e| e.to_string().contains("cancelled before its commit")),
            "the short upload's staged bytes were dropped: {audit:?}"
        );

        new.kill(3);
        new.wait_for_leader(&[1, 2], WAIT).await?;
        let restored = new.cli_ok(&[1, 2], &["snapshot", "restore", file_arg, "-o", "json"])?;
        let restored: serde_json::Value = serde_json::from_str(&restored)?;
        assert_eq!(restored["members"], 2, "{restored}");
        assert_eq!(restored["services"], 1, "{restored}");
        assert!(restored["revision"].as_u64().unwrap_or(0) > old_revision, "{restored}");
        (new, old, restored)
    };
    let (mut new, old, restored) = restored_into;

    // Both live replicas serve what was saved.
    for id in [1, 2] {
        let view = eventually("the restored state on a replica", WAIT, || async {
            served(&new, id).await.ok().filter(|v| *v == saved_view)
        })
        .await;
        assert!(view.is_ok(), "replica {id} does not serve the saved state");
    }

    // The leader compacts its log; replica 3 can only catch up by installing a snapshot
    // of the restored state.
    let leader = new.wait_for_leader(&[1, 2], WAIT).await?;
    new.admin(leader)
        .await?
        .trigger_snapshot(admin_pb::TriggerSnapshotRequest { purge: true })
        .await?;
    new.restart(3)?;
    new.wait_for_convergence(&[1, 2, 3], Duration::from_secs(60)).await?;
    assert_eq!(served(&new, 3).await?, saved_view);

    // Members' agents work against the restored federation: a's identity is checked
    // against its restored bundle, its lease and exports go on, and a watch from the
    // revision it had before is told to resynchronise (revisions never go back).
    let mut ca = a.client(&new.replica(2).api_addr, &new.ca_pem()).await?;
    let bundle = a.next_bundle()?;
    let published = ca
        .publish_bundle(federator_tests::member::publish_request(&a.trust_domain, bundle, false))
        .await?
        .into_inner();
    assert_eq!(published.sequence, 3);
    let mut watch = ca.watch(pb::WatchRequest { after_revision: old_revision }).await?.into_inner();
    let first = tokio::time::timeout(WAIT, watch.message()).await??.expect("an event");
    assert!(
        matches!(first.event, Some(pb::watch_event::Event::Resync(true))),
        "a watcher from before the restore resyncs: {first:?}"
    );
    assert!(first.revision > old_revision);

    // A second restore would overwrite members: refused without --force.
    let out = new.cli(&[1, 2, 3], &["snapshot", "restore", file_arg])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("--force"), "{stderr}");
    let forced =
        new.cli_ok(&[1, 2, 3], &["snapshot", "restore", file_arg, "--force", "-o", "json"])?;
    let forced: serde_json::Value = serde_json::from_str(&forced)?;
    assert_eq!(forced["replaced_members"], 2, "{forced}");
    assert!(forced["revision"].as_u64() > restored["revision"].as_u64(), "{forced}");
    new.wait_for_convergence(&[1, 2, 3], WAIT).await?;
    // The bundle a published after the first restore is gone again: the file's state.
    assert_eq!(served(&new, 3).await?, saved_view);
    let audit = new.audit()?;
    let restores = audit.iter().filter(|e| e["action"] == "restore").count();
    assert!(restores >= 3, "accepted, refused and forced restores are audited: {audit:?}");
    // The undecodable file's restore was cancelled before its commit: no replica applied
    // (and refused) it.
    assert!(
        !audit.iter().any(|e| e.to_string().contains("does not decode")),
        "a cancelled restore reaches no replica's state: {audit:?}"
    );
    drop(old);
    new.kill_all();
    Ok(())
}
