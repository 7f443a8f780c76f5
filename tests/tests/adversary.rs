//! Attacks on a real replica group, as an anonymous network client and as a hostile
//! member would make them: nothing reaches the log before it is authorized and
//! validated, every refusal is audited under what the federation verified (a member's
//! cluster, or `anonymous@ADDRESS`), repeats are coalesced into counts, and the
//! legitimate path keeps working during the attack.
//!
//! The anonymous attacker connects from 127.0.0.2 so that it is a different network
//! client from the legitimate agents on 127.0.0.1.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use anyhow::Context as _;
use federator::identity::FederationCa;
use federator_proto::federation as pb;
use federator_proto::federation::federation_client::FederationClient;
use federator_tests::member::{MemberCluster, channel_from, join_request};
use federator_tests::{Federation, eventually};
use tonic::Code;

const ATTACKER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// The applied index of replica 1.
async fn applied(fed: &Federation) -> anyhow::Result<u64> {
    fed.applied_index(1).await
}

/// Entries a quiet group may add while a test runs: each replica reports its counted
/// refusals in at most one entry a second, and registers its address now and then.
fn quiet_growth(seconds: u64) -> u64 {
    3 * (seconds + 3) + 6
}

fn refusals(audit: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    audit.iter().filter(|e| e["accepted"] == false).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_anonymous_join_flood_writes_nothing_and_is_audited_under_its_address()
-> anyhow::Result<()> {
    let fed = Federation::formed(3, "").await?;
    let ca = fed.ca_pem();
    let before = applied(&fed).await?;
    let started = std::time::Instant::now();

    // The attacker: its own CA and SVID, a bundle of that CA, a well-formed token it made
    // up naming a cluster of its choice.
    let mut attacker = MemberCluster::new("victim-name", "evil.example")?;
    let bundle = attacker.next_bundle()?;
    let forged = federator::token::JoinToken::generate(
        "victim-name",
        "evil.example",
        vec![fed.replica(1).api_addr.clone()],
        ca.clone(),
        i64::MAX / 4,
    )
    .encode();
    let channel =
        channel_from(&fed.replica(1).api_addr, &ca, Some(attacker.agent_svid()), Some(ATTACKER))
            .await?;
    let mut client = FederationClient::new(channel);

    // The legitimate cluster joins while the flood goes on.
    let mut legit = MemberCluster::new("cluster-a", "a.example")?;
    let flood = async {
        let mut codes = Vec::new();
        for _ in 0..300 {
            let request = join_request(&forged, "evil.example", bundle.clone());
            codes.push(client.join(request).await.expect_err("refused").code());
        }
        codes
    };
    let (codes, joined) = tokio::join!(flood, legit.join(&fed, 1));
    joined?;
    assert!(codes.iter().all(|c| matches!(c, Code::PermissionDenied | Code::ResourceExhausted)));
    let limited = codes.iter().filter(|c| **c == Code::ResourceExhausted).count();
    assert!(limited >= 200, "failed attempts beyond the burst are refused at once: {limited}");

    // Nothing was proposed for the flood: only the legitimate token and join, and the
    // refusal reports (one entry a second at most per replica).
    let after = applied(&fed).await?;
    let bound = 2 + quiet_growth(started.elapsed().as_secs());
    assert!(after - before <= bound, "applied index grew by {} (bound {bound})", after - before);

    // The refusals are in the audit trail under the attacker's address, coalesced, never
    // under the cluster name it wrote into its token; the accepted join is there too.
    let audit = eventually("the flood in the audit trail", Duration::from_secs(15), || async {
        let audit = fed.audit().ok()?;
        let counted: u64 = refusals(&audit)
            .iter()
            .filter(|e| e["actor"] == "anonymous@127.0.0.2")
            .map(|e| e["count"].as_u64().unwrap_or(0))
            .sum();
        (counted >= 300).then_some(audit)
    })
    .await?;
    let flood_records =
        refusals(&audit).into_iter().filter(|e| e["actor"] == "anonymous@127.0.0.2").count();
    assert!(flood_records <= 4, "300 refusals coalesced into a few records: {flood_records}");
    assert!(audit.iter().all(|e| e["actor"] != "victim-name"), "never the name it wrote");
    assert!(
        audit
            .iter()
            .any(|e| e["accepted"] == true && e["action"] == "join" && e["actor"] == "cluster-a"),
        "the legitimate join is recorded: {audit:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_member_bloats_nothing_and_its_refusals_are_bounded() -> anyhow::Result<()> {
    let fed = Federation::formed(3, "").await?;
    let ca = fed.ca_pem();
    let mut a = MemberCluster::new("cluster-a", "a.example")?;
    let mut b = MemberCluster::new("cluster-b", "b.example")?;
    a.join(&fed, 1).await?;
    b.join(&fed, 2).await?;
    let mut client = a.client(&fed.replica(1).api_addr, &ca).await?;
    let before = applied(&fed).await?;
    let started = std::time::Instant::now();

    // A 1 MB name and control characters in a namespace: refused in the handler.
    let mut huge = a.export("demo", "echo", 80, &["192.0.2.11"]);
    huge.name = "n".repeat(1 << 20);
    let err = client
        .export_service(pb::ExportServiceRequest { export: Some(huge) })
        .await
        .expect_err("huge name");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    let mut injected = a.export("demo", "echo", 80, &["192.0.2.11"]);
    injected.namespace = "x\n\x1b]0;pwned\x07\x1b[1A".into();
    let err = client
        .export_service(pb::ExportServiceRequest { export: Some(injected) })
        .await
        .expect_err("control characters");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // 300 identical acknowledgements: the first is written, the rest are not.
    for _ in 0..300 {
        client.ack(pb::AckRequest { trust_domain: "b.example".into(), sequence: 1 }).await?;
    }
    // An acknowledgement of a sequence that does not exist: refused before the log.
    let err = client
        .ack(pb::AckRequest { trust_domain: "b.example".into(), sequence: 99 })
        .await
        .expect_err("too new");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // Another member's lease cannot be revoked.
    let err = client
        .revoke_lease(pb::RevokeLeaseRequest { lease_id: 12_345 })
        .await
        .expect_err("not its lease");
    assert_eq!(err.code(), Code::NotFound, "{err}");

    // A watch from a revision the federation never reached fails at once.
    let err = tokio::time::timeout(
        Duration::from_secs(10),
        client.watch(pb::WatchRequest { after_revision: 1 << 40 }),
    )
    .await?
    .expect_err("future revision");
    assert_eq!(err.code(), Code::OutOfRange, "{err}");

    let after = applied(&fed).await?;
    let bound = 1 + quiet_growth(started.elapsed().as_secs());
    assert!(after - before <= bound, "applied index grew by {} (bound {bound})", after - before);

    // Every refusal is audited under the member's cluster, with capped fields.
    let audit = eventually("the refusals in the audit trail", Duration::from_secs(15), || async {
        let audit = fed.audit().ok()?;
        let mine = refusals(&audit).into_iter().filter(|e| e["actor"] == "cluster-a").count();
        (mine >= 4).then_some(audit)
    })
    .await?;
    for event in &audit {
        for field in ["actor", "action", "target", "reason"] {
            let text = event[field].as_str().unwrap_or_default();
            assert!(text.len() <= 256, "{field} of {event} is {} bytes", text.len());
        }
    }
    let actions: Vec<&str> = refusals(&audit)
        .iter()
        .filter(|e| e["actor"] == "cluster-a")
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in ["export_service", "ack", "revoke_lease", "watch"] {
        assert!(actions.contains(&action), "{action} refusal audited: {actions:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_holds_a_bounded_number_of_watch_streams() -> anyhow::Result<()> {
    let fed = Federation::formed(1, "[limits]\nmax_watches_per_member = 3\n").await?;
    let ca = fed.ca_pem();
    let mut a = MemberCluster::new("cluster-a", "a.example")?;
    a.join(&fed, 1).await?;
    let mut client = a.client(&fed.replica(1).api_addr, &ca).await?;
    let mut streams = Vec::new();
    for _ in 0..3 {
        streams.push(client.watch(pb::WatchRequest { after_revision: 0 }).await?.into_inner());
    }
    let err = client.watch(pb::WatchRequest { after_revision: 0 }).await.expect_err("fourth");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("3 watch streams"), "{err}");
    // A closed stream gives its slot back.
    streams.pop();
    eventually("a slot back after a stream closed", Duration::from_secs(10), || async {
        let mut client = a.client(&fed.replica(1).api_addr, &ca).await.ok()?;
        client.watch(pb::WatchRequest { after_revision: 0 }).await.ok().map(|_| ())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_for_unusable_or_taken_trust_domains_are_refused() -> anyhow::Result<()> {
    let fed = Federation::formed(1, "").await?;
    let mut a = MemberCluster::new("cluster-a", "a.example")?;
    a.join(&fed, 1).await?;
    let own = fed.trust_domain.clone();
    for (td, says) in [
        ("..", "empty label"),
        (".", "empty label"),
        ("a..b", "empty label"),
        ("-", "must not start with '-'"),
        (own.as_str(), "the federation's own trust domain"),
        ("a.example", "held by cluster cluster-a"),
    ] {
        let out = fed.cli(
            &[],
            &["token", "create", "--cluster", "intruder", "--trust-domain", td, "--ttl", "1h"],
        )?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{td:?} must be refused");
        assert!(stderr.contains("trust_domain"), "{td:?}: the field is named: {stderr}");
        assert!(stderr.contains(says), "{td:?}: {stderr}");
    }
    // The same cluster may get a token for its own trust domain (to rejoin after removal).
    fed.cli_ok(&[], &["cluster", "remove", "cluster-a"])?;
    fed.token("cluster-a", "a.example", "1h")?;
    // Each admin call ran in its span (method, transport, the verified caller, the cluster
    // and trust domain it is about) and ended with one `admin call` line and its code.
    let log = fed.log_of(1);
    let refused = log
        .lines()
        .find(|l| {
            l.contains("admin call")
                && l.contains("cluster=\"intruder\"")
                && l.contains("code=InvalidArgument")
        })
        .with_context(|| format!("no `admin call` line for the refused token:\n{log}"))?;
    for part in ["rpc{", "/federator.admin.v1.Admin/CreateToken", "transport=", "caller="] {
        assert!(refused.contains(part), "{part} missing from {refused}");
    }
    assert_eq!(refused.matches("caller=").count(), 1, "the caller is recorded once: {refused}");
    let removed = log
        .lines()
        .find(|l| l.contains("admin call") && l.contains("RemoveCluster"))
        .with_context(|| format!("no `admin call` line for the removal:\n{log}"))?;
    assert!(removed.contains("cluster=\"cluster-a\"") && removed.contains("code=Ok"), "{removed}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_refusals_are_audited_before_anything_is_decoded() -> anyhow::Result<()> {
    let fed = Federation::formed(1, "").await?;
    // A certificate from a CA of its own, naming the admin identity.
    let stranger = FederationCa::generate("fed.evil", "stranger", Duration::from_secs(3600))?;
    let admin_id = federator::identity::admin_spiffe_id(&fed.trust_domain);
    let forged = stranger.issue(&admin_id, &[], &[], Duration::from_secs(3600))?;
    let channel =
        channel_from(&fed.replica(1).api_addr, &fed.ca_pem(), Some(&forged), Some(ATTACKER))
            .await?;
    let mut admin = federator_proto::admin::admin_client::AdminClient::new(channel);
    // A large request body: refused before it is decoded.
    let big = federator_proto::admin::PutRequest { key: "k".into(), value: vec![0; 8 << 20] };
    let err = admin.put(big).await.expect_err("not the admin");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    eventually("the admin refusal audited", Duration::from_secs(15), || async {
        let audit = fed.audit().ok()?;
        refusals(&audit)
            .iter()
            .any(|e| e["actor"] == "anonymous@127.0.0.2" && e["action"] == "admin_api")
            .then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_directory_is_private_to_its_owner() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let fed = Federation::formed(1, "").await?;
    let dir = fed.replica(1).data_dir.clone();
    let mode = |p: &std::path::Path| -> anyhow::Result<u32> {
        Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
    };
    assert_eq!(mode(&dir)?, 0o700);
    assert_eq!(mode(&dir.join("raft.redb"))?, 0o600);
    assert_eq!(mode(&dir.join("snapshots"))?, 0o700);
    Ok(())
}

/// An export of `demo/echo` by `cluster` with one endpoint at `address`, claiming
/// `region`/`zone` and a large weight.
fn echo_export(
    cluster: &MemberCluster,
    address: &str,
    region: &str,
    zone: &str,
) -> pb::ServiceExport {
    let mut export = cluster.export("demo", "echo", 8080, &[address]);
    for endpoint in &mut export.endpoints {
        endpoint.region = region.into();
        endpoint.zone = zone.into();
        endpoint.weight = 1_000_000;
    }
    export
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_cannot_capture_another_clusters_service() -> anyhow::Result<()> {
    let fed = Federation::formed(3, "").await?;
    // The secure defaults (the harness loosens them for its other tests).
    fed.cli_ok(
        &[],
        &["settings", "--open-exports", "false", "--allow-loopback-endpoints", "false"],
    )?;
    let ca = fed.ca_pem();
    let mut a = MemberCluster::new("cluster-a", "a.example")?;
    let mut b = MemberCluster::new("cluster-b", "b.example")?;
    let mut c = MemberCluster::new("cluster-c", "c.example")?;
    a.join_with(&fed, 1, &["--namespace", "demo", "--region", "region-1", "--zone", "zone-1"])
        .await?;
    b.join_with(&fed, 2, &["--namespace", "demo", "--region", "region-2"]).await?;
    // The hostile member: an ordinary token, no namespace, bound elsewhere.
    c.join_with(&fed, 3, &["--region", "region-3"]).await?;
    let mut client_a = a.client(&fed.replica(1).api_addr, &ca).await?;
    let mut client_b = b.client(&fed.replica(2).api_addr, &ca).await?;
    let mut client_c = c.client(&fed.replica(3).api_addr, &ca).await?;
    let export = |e| pb::ExportServiceRequest { export: Some(e) };
    client_a.export_service(export(echo_export(&a, "192.0.2.11", "", ""))).await?;
    client_b.export_service(export(echo_export(&b, "198.51.100.21", "region-2", "zone-9"))).await?;

    // Not granted: refused, naming what the operator would do.
    let err = client_c
        .export_service(export(echo_export(&c, "203.0.113.31", "", "")))
        .await
        .expect_err("namespace not granted");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("federator cluster grant cluster-c --namespace demo"), "{err}");

    // Granted, it still cannot claim another locality nor publish metadata or loopback
    // addresses.
    fed.cli_ok(&[], &["cluster", "grant", "cluster-c", "--namespace", "demo"])?;
    for (address, region, zone, says) in [
        ("203.0.113.31", "region-1", "zone-1", "endpoints[0].region"),
        ("169.254.169.254", "", "", "link-local"),
        ("::ffff:169.254.169.254", "", "", "link-local"),
        ("127.0.0.1", "", "", "loopback"),
    ] {
        let err = client_c
            .export_service(export(echo_export(&c, address, region, zone)))
            .await
            .expect_err(address);
        assert!(
            matches!(err.code(), Code::PermissionDenied | Code::InvalidArgument),
            "{address}: {err}"
        );
        assert!(err.message().contains(says), "{address}: {err}");
    }
    client_c.export_service(export(echo_export(&c, "203.0.113.31", "", ""))).await?;

    // Cluster-a (region-1/zone-1) sees its own endpoint first, then b and c — ordered by
    // their bound regions, whatever weight or zone they claim.
    let import = fed.cli_json(&["import", "list", "--cluster", "cluster-a"])?;
    let echo = &import["imports"][0];
    let order: Vec<(&str, u64)> = echo["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["cluster"].as_str().unwrap_or_default(),
                c["endpoints"][0]["priority"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    assert_eq!(order[0], ("cluster-a", 0), "{import}");
    // Each exporter's identities vouch for its own endpoints only.
    for exporter in echo["clusters"].as_array().into_iter().flatten() {
        let td = exporter["trust_domain"].as_str().unwrap_or_default();
        let ids = exporter["identities"].as_array().cloned().unwrap_or_default();
        assert!(!ids.is_empty(), "{exporter}");
        assert!(
            ids.iter()
                .all(|id| id.as_str().is_some_and(|id| id.starts_with(&format!("spiffe://{td}/")))),
            "{exporter}"
        );
    }
    assert!(order.contains(&("cluster-c", 2)), "{import}");
    assert!(order.contains(&("cluster-b", 2)), "{import}");
    let b_endpoint = &echo["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["cluster"] == "cluster-b"))
        .expect("cluster-b")["endpoints"][0];
    assert_eq!(
        (b_endpoint["region"].as_str(), b_endpoint["zone"].as_str()),
        (Some("region-2"), Some("zone-9"))
    );

    // Revoking the namespace withdraws the member's export at once.
    fed.cli_ok(&[], &["cluster", "revoke", "cluster-c", "--namespace", "demo"])?;
    let import = fed.cli_json(&["import", "list", "--cluster", "cluster-a"])?;
    let exporters: Vec<&str> = import["imports"][0]["clusters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["cluster"].as_str())
        .collect();
    assert_eq!(exporters, ["cluster-a", "cluster-b"], "{import}");
    let clusters = fed.cli_json(&["cluster", "show", "cluster-a"])?;
    assert_eq!(clusters["namespaces"], serde_json::json!(["demo"]), "{clusters}");
    assert_eq!(clusters["region"], "region-1", "{clusters}");
    Ok(())
}

/// Holds `per_port` idle TCP connections from `source` to each of `addrs` (never a TLS
/// ClientHello) until `until`, opening again those the server closes; returns how many
/// connections it opened in all.
async fn hold_idle_connections(
    source: IpAddr,
    addrs: Vec<std::net::SocketAddr>,
    per_port: usize,
    until: tokio::time::Instant,
) -> usize {
    use tokio::io::AsyncReadExt as _;
    let mut tasks = tokio::task::JoinSet::new();
    for addr in addrs {
        for _ in 0..per_port {
            tasks.spawn(async move {
                let mut opened = 0usize;
                while tokio::time::Instant::now() < until {
                    let Ok(socket) = tokio::net::TcpSocket::new_v4() else { break };
                    if socket.bind(std::net::SocketAddr::new(source, 0)).is_err() {
                        break;
                    }
                    let Ok(Ok(mut stream)) =
                        tokio::time::timeout_at(until, socket.connect(addr)).await
                    else {
                        continue;
                    };
                    opened += 1;
                    // Idle until the server closes it or the flood ends.
                    let mut byte = [0u8; 1];
                    let _ = tokio::time::timeout_at(until, stream.read(&mut byte)).await;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                opened
            });
        }
    }
    let mut opened = 0;
    while let Some(result) = tasks.join_next().await {
        opened += result.unwrap_or(0);
    }
    opened
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_legitimate_agent_keeps_its_lease_through_a_connection_flood() -> anyhow::Result<()> {
    use federator_chaos::agent::{AgentOptions, AgentProcess};
    const TTL: u32 = 4;
    let fed = Federation::formed(3, "").await?;
    let member = MemberCluster::new("cluster-a", "a.example")?;
    let options = AgentOptions { lease_ttl_seconds: Some(TTL), ..AgentOptions::default() };
    let mut agent = AgentProcess::new(&fed, member, &options)?;
    agent.start()?;
    let lease_id = agent
        .wait_status("the agent's lease", Duration::from_secs(30), |s| s.lease.is_some())
        .await?
        .lease
        .map(|l| l.id);

    // 400 idle connections from 127.0.0.3 to each replica's API port, for 3 TTLs.
    let addrs: Vec<std::net::SocketAddr> =
        (1..=3).map(|id| fed.replica(id).api_addr.parse()).collect::<Result<_, _>>()?;
    let until = tokio::time::Instant::now() + Duration::from_secs(u64::from(TTL) * 3);
    let flood = tokio::spawn(hold_idle_connections(
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3)),
        addrs,
        400,
        until,
    ));
    // Meanwhile the lease stays live and the admin API answers.
    let mut checks = 0;
    while tokio::time::Instant::now() < until {
        let clusters = fed.cli_json(&["cluster", "list"])?;
        let lease = &clusters[0]["lease"];
        assert_eq!(lease["state"], "live", "{clusters}");
        assert_eq!(lease["id"].as_u64(), lease_id, "the same lease, never expired: {clusters}");
        checks += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let opened = flood.await?;
    assert!(opened >= 1_200, "the flood held its connections: {opened}");
    assert!(checks >= 10, "{checks} checks");
    agent.kill();
    Ok(())
}
