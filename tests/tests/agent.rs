//! The member-cluster agent end to end: two clusters, each with its own etcd and its own
//! `federator agent` process, joined to a real 3-replica federation, all on loopback.
//!
//! - A's agent reads its SVID and bundle from the SPIFFE Workload API (a real gRPC server
//!   on a Unix socket), B's from files. A rotates its CA through the Workload API: B's
//!   files and etcd keys hold the new bundle and B acknowledges it.
//! - A service written into A's etcd export prefix appears in B's etcd import prefix, in
//!   B's imports file and in B's Envoy EDS; deleting the document removes it everywhere.
//! - A malformed export document is reported (status, metrics) and the others still sync.
//! - Every replica killed: B's sinks keep serving what they held; replicas restarted: B
//!   resumes from its revision (no resync) and catches up with what changed meanwhile.
//! - The replica every agent of three clusters talks to SIGSTOPped for 1.5 × the lease
//!   TTL: the agents leave it for another replica and renew their leases there, and no
//!   lease expires (issue 24).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::core::v3::address::Address as AddressKind;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::endpoint::v3::endpoint_discovery_service_client::EndpointDiscoveryServiceClient;
use federator_chaos::agent::{AgentOptions, AgentProcess};
use federator_chaos::cluster::{Federation, eventually};
use federator_chaos::etcd::EtcdCluster;
use federator_chaos::member::MemberCluster;
use federator_chaos::workload_api::{WorkloadApiServer, x509_svid, x509_svid_response};
use federator_proto::spiffe_workload::X509svidResponse;
use prost::Message as _;
use tokio_stream::wrappers::ReceiverStream;

/// Bound of every wait on propagation (typically well under a second).
const WAIT: Duration = Duration::from_secs(30);
/// Lease TTL of the agents.
const LEASE_TTL: u32 = 5;
const CART_HOST: &str = "cart.shop.svc.clusterset.local";

/// One member cluster: its etcd, its agent and, when the agent reads its SVID and bundle
/// from the SPIFFE Workload API rather than files, the Workload API server (SPIRE's
/// agent socket).
struct Cluster {
    etcd: EtcdCluster,
    agent: AgentProcess,
    workload_api: Option<WorkloadApiServer>,
}

impl Cluster {
    async fn start(
        fed: &Federation,
        name: &str,
        td: &str,
        region: &str,
        with_workload_api: bool,
    ) -> anyhow::Result<Self> {
        let mut etcd = EtcdCluster::start(1)?;
        etcd.wait_healthy(WAIT).await?;
        let member = MemberCluster::new(name, td)?;
        let workload_api = if with_workload_api {
            Some(WorkloadApiServer::start_with(workload_response(&member)?).await?)
        } else {
            None
        };
        let options = AgentOptions {
            etcd_endpoints: etcd.client_urls(),
            xds: true,
            lease_ttl_seconds: Some(LEASE_TTL),
            locality: Some((region.into(), format!("{region}-a"))),
            metrics: true,
            workload_api: workload_api.as_ref().map(WorkloadApiServer::address),
            ..AgentOptions::default()
        };
        let mut agent = AgentProcess::new(fed, member, &options)?;
        agent.start()?;
        Ok(Self { etcd, agent, workload_api })
    }

    /// Gives the agent the member's current CAs as its bundle (and its current SVID):
    /// through the Workload API when it uses one, else its files.
    fn publish_bundle(&self) -> anyhow::Result<()> {
        match &self.workload_api {
            Some(server) => {
                server.push(workload_response(&self.agent.member)?);
                Ok(())
            }
            None => self.agent.write_bundle(),
        }
    }

    async fn put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        let mut client = self.etcd.client(&[]).await?;
        tokio::time::timeout(WAIT, client.put(key, value, None)).await??;
        Ok(())
    }

    async fn delete(&self, key: &str) -> anyhow::Result<()> {
        let mut client = self.etcd.client(&[]).await?;
        tokio::time::timeout(WAIT, client.delete(key, None)).await??;
        Ok(())
    }

    async fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        let mut client = self.etcd.client(&[]).await?;
        let response = tokio::time::timeout(WAIT, client.get(key, None)).await??;
        Ok(response.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// The endpoint addresses B's Envoy would get for `cluster_name` (`None`: no such
    /// resource, the server sends nothing for it).
    async fn eds(&self, cluster_name: &str) -> anyhow::Result<Option<Vec<String>>> {
        let addr = self.agent.xds_addr.clone().ok_or_else(|| anyhow::anyhow!("no xDS"))?;
        let cla = fetch_load_assignment(&addr, cluster_name).await?;
        Ok(cla.map(|cla| endpoint_addresses(&cla)))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Shown only for a failing test (the harness captures the output of passing ones).
        eprintln!(
            "--- agent {} log (last 60 lines) ---\n{}",
            self.agent.member.name,
            federator_chaos::cluster::tail(&self.agent.log(), 60)
        );
    }
}

/// What the Workload API gives `member`'s agent: its SVID and its trust domain's CAs.
fn workload_response(member: &MemberCluster) -> anyhow::Result<X509svidResponse> {
    let svid = member.agent_svid();
    let entry = x509_svid(&member.agent_id(), &svid.cert_pem, &svid.key_pem, &[&member.ca_pem()])?;
    Ok(x509_svid_response(vec![entry]))
}

/// One state-of-the-world EDS request as Envoy makes it; the first response, if any
/// arrives within a second.
async fn fetch_load_assignment(
    addr: &str,
    cluster_name: &str,
) -> anyhow::Result<Option<ClusterLoadAssignment>> {
    let mut client = tokio::time::timeout(
        Duration::from_secs(5),
        EndpointDiscoveryServiceClient::connect(format!("http://{addr}")),
    )
    .await??;
    let request = DiscoveryRequest {
        type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
        resource_names: vec![cluster_name.into()],
        node: Some(Node { id: "sidecar~127.0.0.1~agent-e2e".into(), ..Default::default() }),
        ..Default::default()
    };
    // The request stream stays open while the response is awaited: closing it would end
    // the xDS stream.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(request).await?;
    let mut stream = client.stream_endpoints(ReceiverStream::new(rx)).await?.into_inner();
    let Ok(response) = tokio::time::timeout(Duration::from_secs(1), stream.message()).await else {
        return Ok(None);
    };
    drop(tx);
    let Some(response) = response? else { return Ok(None) };
    response
        .resources
        .iter()
        .map(|any| ClusterLoadAssignment::decode(any.value.as_slice()))
        .find(|cla| cla.as_ref().is_ok_and(|c| c.cluster_name == cluster_name))
        .transpose()
        .map_err(Into::into)
}

fn endpoint_addresses(cla: &ClusterLoadAssignment) -> Vec<String> {
    let mut out = Vec::new();
    for locality in &cla.endpoints {
        for lb in &locality.lb_endpoints {
            let Some(HostIdentifier::Endpoint(endpoint)) = &lb.host_identifier else { continue };
            if let Some(AddressKind::SocketAddress(socket)) =
                endpoint.address.as_ref().and_then(|a| a.address.as_ref())
            {
                out.push(socket.address.clone());
            }
        }
    }
    out.sort();
    out
}

/// An export document of cluster A (trust domain `a.example`) with endpoints at
/// `addresses`.
fn export_doc(addresses: &[&str]) -> String {
    let endpoints: Vec<serde_json::Value> = addresses
        .iter()
        .map(|a| serde_json::json!({"address": a, "zone": "z1", "region": "r1"}))
        .collect();
    serde_json::json!({
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints,
        "identities": ["spiffe://a.example/ns/shop/sa/cart"],
    })
    .to_string()
}

/// The value of an unlabelled sample `name` in a Prometheus exposition.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

#[tokio::test]
async fn two_clusters_exchange_bundles_and_services_through_their_agents() -> anyhow::Result<()> {
    let mut fed = Federation::formed(3, "").await?;
    // A's agent takes its SVID and its bundle from a Workload API server, B's from files.
    let mut a = Cluster::start(&fed, "cluster-a", "a.example", "r1", true).await?;
    let mut b = Cluster::start(&fed, "cluster-b", "b.example", "r2", false).await?;
    for cluster in [&a, &b] {
        cluster
            .agent
            .wait_status("joined and connected", WAIT, |s| {
                !s.cluster.is_empty() && s.connected_replica.is_some() && s.lease.is_some()
            })
            .await?;
    }

    // == Bundles: B holds A's, in files and etcd keys, and acknowledges it. ==
    let first = b
        .agent
        .wait_status("B holds A's bundle", WAIT, |s| s.bundles.contains_key("a.example"))
        .await?
        .bundles["a.example"];
    // The status shows the applied view; the acknowledgement follows once every sink
    // holds it, so the files and keys are read after it.
    eventually("B acknowledges A's first bundle", WAIT, || async {
        fed.applied_sequence("a.example", "cluster-b").ok().flatten().filter(|s| *s == first)
    })
    .await?;
    let a_ca = a.agent.member.ca_pem();
    let pem = std::fs::read_to_string(b.agent.out("bundles/a.example.pem"))?;
    assert_eq!(pem.trim(), a_ca.trim(), "B's PEM file holds A's CA");
    let key = b.get("/federator/bundles/a.example").await?.expect("B's etcd key of A's bundle");
    assert!(key.contains("\"keys\""), "a SPIFFE bundle (JWKS): {key}");

    // A rotates: old and new CA together.
    a.agent.member.add_ca()?;
    a.publish_bundle()?;
    let both = a.agent.member.ca_pem();
    let status = b
        .agent
        .wait_status("B holds A's rotated bundle", WAIT, |s| {
            s.bundles.get("a.example").is_some_and(|seq| *seq > first)
        })
        .await?;
    let rotated = status.bundles["a.example"];
    eventually("B acknowledges A's rotated bundle", WAIT, || async {
        fed.applied_sequence("a.example", "cluster-b").ok().flatten().filter(|s| *s == rotated)
    })
    .await?;
    let pem = std::fs::read_to_string(b.agent.out("bundles/a.example.pem"))?;
    assert_eq!(pem.trim(), both.trim(), "B's PEM file holds both of A's CAs");
    let jwks = b.get("/federator/bundles/a.example").await?.expect("etcd key");
    let set: serde_json::Value = serde_json::from_str(&jwks)?;
    assert_eq!(set["keys"].as_array().map(Vec::len), Some(2), "two CAs in B's etcd key: {set}");
    let bundles_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.agent.out("bundles.json"))?)?;
    assert_eq!(bundles_json["a.example"]["keys"].as_array().map(Vec::len), Some(2));
    // And A, symmetrically, holds B's bundle.
    a.agent
        .wait_status("A holds B's bundle", WAIT, |s| s.bundles.contains_key("b.example"))
        .await?;

    // == Services: A's etcd export prefix → B's imports (etcd, file, EDS). ==
    a.put("/federator/exports/shop/cart", &export_doc(&["127.0.0.11", "127.0.0.12"])).await?;
    a.put("/federator/exports/shop/broken", "{\"ports\": [{\"port\": \"eighty\"}]").await?;
    a.put("/federator/exports/shop/ledger", &export_doc(&["127.0.0.21"])).await?;
    let import = eventually("B's etcd import of shop/cart", WAIT, || async {
        b.get("/federator/imports/shop/cart").await.ok().flatten()
    })
    .await?;
    let import: serde_json::Value = serde_json::from_str(&import)?;
    assert_eq!(import["hostname"], CART_HOST);
    assert_eq!(import["clusters"][0]["cluster"], "cluster-a", "{import}");
    assert_eq!(import["clusters"][0]["trustDomain"], "a.example", "{import}");
    eventually("B's import of shop/ledger (beside the broken document)", WAIT, || async {
        b.get("/federator/imports/shop/ledger").await.ok().flatten()
    })
    .await?;
    let eds = eventually("B's EDS serves cart", WAIT, || async {
        b.eds(CART_HOST).await.ok().flatten().filter(|e| !e.is_empty())
    })
    .await?;
    assert_eq!(eds, ["127.0.0.11", "127.0.0.12"]);
    let imports_file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(b.agent.out("imports.json"))?)?;
    let names: Vec<&str> =
        imports_file.as_array().into_iter().flatten().filter_map(|i| i["name"].as_str()).collect();
    assert_eq!(names, ["cart", "ledger"], "{imports_file}");

    // The broken document is reported by A's agent, and nothing named `broken` is exported.
    let status = a
        .agent
        .wait_status("A reports the broken document", WAIT, |s| {
            s.exports.problems.iter().any(|p| p.location.contains("shop/broken"))
        })
        .await?;
    let problem = status.exports.problems.iter().find(|p| p.location.contains("shop/broken"));
    assert!(problem.is_some_and(|p| p.message.contains("ports")), "{problem:?}");
    assert_eq!(status.exports.exports, 2, "{status:?}");
    assert!(b.get("/federator/imports/shop/broken").await?.is_none());
    let (_, shown) = a.agent.status_text()?;
    assert!(shown.contains("shop/broken"), "`agent status` names the broken document:\n{shown}");

    // `federator check` sees a healthy federation and both agents; the broken document
    // is a warning, not a failure.
    let a_state = a.agent.state_dir();
    let b_state = b.agent.state_dir();
    let check_args = |extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = vec!["check".into()];
        for dir in [&a_state, &b_state] {
            args.push("--agent-state-dir".into());
            args.push(dir.display().to_string());
        }
        args.extend(extra.iter().map(|s| (*s).to_string()));
        args
    };
    let args = check_args(&["--wait", "20s"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = fed.cli_ok(&[], &args)?;
    for line in [
        "√ quorum: 3/3 voters answer",
        "√ cluster-a: lease",
        "√ a.example: sequence",
        "‼ agent of cluster-a: export /federator/exports/shop/broken skipped",
        "healthy:",
    ] {
        assert!(report.contains(line), "`federator check` lacks {line:?}:\n{report}");
    }

    // Deleting the document withdraws the export everywhere in B.
    a.delete("/federator/exports/shop/ledger").await?;
    eventually("B's etcd import of shop/ledger is gone", WAIT, || async {
        b.get("/federator/imports/shop/ledger").await.ok().and_then(|v| v.is_none().then_some(()))
    })
    .await?;
    eventually("B's EDS no longer serves ledger", WAIT, || async {
        b.eds("ledger.shop.svc.clusterset.local").await.ok().and_then(|e| e.is_none().then_some(()))
    })
    .await?;

    // == Static stability: every replica down, B keeps serving what it held. ==
    let before =
        b.agent.wait_status("B applied ledger's removal", WAIT, |s| s.imports == 1).await?;
    fed.kill_all();
    b.agent
        .wait_status("B notices that no replica answers", WAIT, |s| s.connected_replica.is_none())
        .await?;
    // `federator check` fails, naming the lost quorum and B's lost connection.
    let args = check_args(&["-o", "json"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = fed.cli(&[1, 2, 3], &args)?;
    assert!(!out.status.success(), "check must fail with every replica down");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["ok"], false, "{report}");
    let failed: Vec<&str> = report["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["outcome"] == "fail")
        .filter_map(|c| c["detail"].as_str())
        .collect();
    assert!(failed.iter().any(|d| d.contains("no replica answers")), "{failed:?}");
    assert!(failed.iter().any(|d| d.contains("agent of cluster-b: not connected")), "{failed:?}");
    // A change made while the federation is down waits in A's etcd.
    a.put("/federator/exports/shop/ledger", &export_doc(&["127.0.0.22"])).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(b.eds(CART_HOST).await?, Some(vec!["127.0.0.11".into(), "127.0.0.12".into()]));
    assert!(b.get("/federator/imports/shop/cart").await?.is_some());
    assert_eq!(
        std::fs::read_to_string(b.agent.out("bundles/a.example.pem"))?.trim(),
        both.trim(),
        "B's files still hold A's bundle"
    );
    let down = b.agent.status().expect("status");
    assert_eq!(down.applied_revision, before.applied_revision);
    assert!(down.sinks.values().all(|s| s.healthy), "{:?}", down.sinks);

    // A restarted agent serves the saved view before any replica answers.
    b.agent.kill();
    b.delete("/federator/imports/shop/cart").await?;
    b.agent.start()?;
    eventually("restarted B rewrites its sinks from disk", WAIT, || async {
        b.get("/federator/imports/shop/cart").await.ok().flatten()
    })
    .await?;
    assert_eq!(b.agent.status().map(|s| s.applied_revision), Some(before.applied_revision));

    // == Replicas back: B resumes from its revision and catches up. ==
    for id in fed.ids() {
        fed.restart(id)?;
    }
    fed.wait_for_leader(&fed.ids(), WAIT).await?;
    eventually("B imports ledger again, at its new address", WAIT, || async {
        b.eds("ledger.shop.svc.clusterset.local")
            .await
            .ok()
            .flatten()
            .filter(|e| e.as_slice() == ["127.0.0.22"])
    })
    .await?;
    let after = b
        .agent
        .wait_status("B connected again, past its saved revision", WAIT, |s| {
            s.connected_replica.is_some() && s.applied_revision > before.applied_revision
        })
        .await?;
    assert_eq!(
        after.resyncs, 0,
        "B resumed from revision {} without a resync",
        before.applied_revision
    );

    // The agents' metrics tell the same story.
    let metrics = b.agent.metrics().await?;
    assert_eq!(sample(&metrics, "federator_agent_connected"), Some(1.0), "{metrics}");
    assert_eq!(sample(&metrics, "federator_agent_resyncs_total"), Some(0.0), "{metrics}");
    assert!(
        metrics.contains("federator_agent_propagation_seconds_count{kind=\"import\",source_trust_domain=\"a.example\"}"),
        "{metrics}"
    );
    let metrics = a.agent.metrics().await?;
    assert_eq!(sample(&metrics, "federator_agent_export_source_problems"), Some(1.0), "{metrics}");
    Ok(())
}

/// Lease TTL of the failover test (short, to keep it fast: the agent's deadlines scale
/// with it).
const FAILOVER_TTL: u32 = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_leave_a_stopped_replica_and_no_lease_expires() -> anyhow::Result<()> {
    let began = Instant::now();
    let fed = Federation::formed(3, "").await?;
    let leader = fed.wait_for_leader(&fed.ids(), WAIT).await?;
    // A follower, as in the issue: stopping it elects nobody, so nothing but the agents'
    // failover keeps their leases alive.
    let stopped = fed.ids().into_iter().find(|id| *id != leader).expect("a follower");
    let others: Vec<u64> = fed.ids().into_iter().filter(|id| *id != stopped).collect();
    let stopped_addr = fed.replica(stopped).api_addr.clone();
    // Every agent tries the replica to be stopped first.
    let endpoints: Vec<String> = std::iter::once(stopped)
        .chain(others.iter().copied())
        .map(|id| fed.replica(id).api_addr.clone())
        .collect();
    let mut agents = Vec::new();
    for (name, td) in
        [("cluster-a", "a.example"), ("cluster-b", "b.example"), ("cluster-c", "c.example")]
    {
        let options = AgentOptions {
            lease_ttl_seconds: Some(FAILOVER_TTL),
            endpoints: endpoints.clone(),
            ..AgentOptions::default()
        };
        let mut agent = AgentProcess::new(&fed, MemberCluster::new(name, td)?, &options)?;
        agent.start()?;
        agents.push(agent);
    }
    let mut leases = BTreeMap::new();
    for agent in &agents {
        let status = agent
            .wait_status("joined through the replica to stop, holding a lease", WAIT, |s| {
                s.connected_replica.as_deref() == Some(stopped_addr.as_str())
                    && s.lease.as_ref().is_some_and(|l| l.last_keepalive_ms.is_some())
            })
            .await?;
        let lease = status.lease.as_ref().map(|l| l.id).expect("a lease");
        leases.insert(status.cluster.clone(), lease);
    }
    eventually("the leader holds every lease live", WAIT, || async {
        let seen = fed.leases_seen_by(leader).await.ok()?;
        leases
            .iter()
            .all(|(cluster, id)| {
                seen.get(cluster)
                    .is_some_and(|(state, seen_id, _)| state == "live" && seen_id == id)
            })
            .then_some(())
    })
    .await?;
    let ttl = Duration::from_secs(u64::from(FAILOVER_TTL));

    // == The replica stopped for 1.5 TTL, then a TTL more: every lease stays live. ==
    fed.pause(stopped);
    let paused_at = Instant::now();
    let paused_at_ms = federator::clock::unix_now_ms();
    let pause = ttl * 3 / 2;
    let mut resumed = false;
    let mut longest_unheard_ms = 0;
    let mut polls = 0;
    while paused_at.elapsed() < pause + ttl && polls < 200 {
        polls += 1;
        if !resumed && paused_at.elapsed() >= pause {
            fed.resume(stopped);
            resumed = true;
        }
        // The leader (or, should it change, the other replica) as every member sees it.
        let mut seen = None;
        for id in &others {
            if let Ok(leases) = fed.leases_seen_by(*id).await {
                seen = Some(leases);
                break;
            }
        }
        let seen = seen.ok_or_else(|| anyhow::anyhow!("no replica but the stopped one answers"))?;
        for (cluster, id) in &leases {
            let (state, seen_id, unheard_ms) = seen.get(cluster).cloned().unwrap_or_default();
            anyhow::ensure!(
                state == "live" && seen_id == *id,
                "{cluster}'s lease {id} is {state:?} (lease {seen_id}) {:?} after the replica \
                 its agent used was stopped",
                paused_at.elapsed()
            );
            longest_unheard_ms = longest_unheard_ms.max(unheard_ms);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    if !resumed {
        fed.resume(stopped);
    }
    println!(
        "replica {stopped} stopped for {pause:?} (lease TTL {ttl:?}): every lease stayed live; \
         the oldest last keep-alive of a member the leader reported was {longest_unheard_ms} ms \
         old ({polls} polls)"
    );
    anyhow::ensure!(polls >= 10, "too few polls of the leases ({polls}) to show anything");
    assert!(
        longest_unheard_ms < i64::from(FAILOVER_TTL) * 750,
        "the leader heard no keep-alive of a member for {longest_unheard_ms} ms (TTL {ttl:?})"
    );

    // Each agent says where it went, when and why, and renewed the lease it held.
    for agent in &agents {
        let status = agent
            .wait_status("the agent reports its failover", WAIT, |s| {
                s.connected_replica.is_some()
                    && s.last_failover.as_ref().is_some_and(|f| f.to.is_some())
            })
            .await?;
        let failover = status.last_failover.as_ref().expect("a failover");
        assert_eq!(failover.from, stopped_addr, "{status:?}");
        assert_ne!(failover.to.as_deref(), Some(stopped_addr.as_str()), "{status:?}");
        assert!(status.failovers >= 1, "{status:?}");
        let lease = status.lease.as_ref().expect("a lease");
        assert_eq!(Some(&lease.id), leases.get(&status.cluster), "the lease was never lost");
        // Left within TTL/4 (its pings unanswered) or so, and connected to the next
        // replica, where it renewed first, within the TTL.
        let left_ms = failover.at_ms - paused_at_ms;
        let connected_ms = failover.connected_at_ms.unwrap_or(i64::MAX) - paused_at_ms;
        println!(
            "{}: left {} {left_ms} ms after it stopped, connected to {:?} {connected_ms} ms \
             after it stopped: {}",
            status.cluster, failover.from, failover.to, failover.reason
        );
        assert!(
            (0..i64::from(FAILOVER_TTL) * 1000).contains(&connected_ms),
            "{} moved {connected_ms} ms after the replica stopped: {failover:?}",
            status.cluster
        );
    }
    // The federation agrees: nothing expired, on any replica, nor in the audit trail.
    fed.wait_for_leader(&fed.ids(), WAIT).await?;
    fed.assert_no_lease_expired().await?;
    // `federator check` shows each agent's failover.
    let mut args: Vec<String> = vec!["check".into(), "--wait".into(), "20s".into()];
    for agent in &agents {
        args.push("--agent-state-dir".into());
        args.push(agent.state_dir().display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let report = fed.cli_ok(&[], &args)?;
    for cluster in leases.keys() {
        let line = format!("√ agent of {cluster}: left {stopped_addr}");
        assert!(report.contains(&line), "`federator check` lacks {line:?}:\n{report}");
    }
    println!("took {:?}", began.elapsed());
    Ok(())
}
