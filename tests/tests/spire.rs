//! Federator with SPIRE, hub and spoke (issue 26): two real SPIRE deployments (SPIRE
//! v1.13.3, trust domains a.test and b.test, each a server with its own CA and sqlite
//! datastore and an agent attested with a join token) and a Federator group.
//!
//! - Each cluster's Federator agent takes its SVID and its own bundle from its SPIRE
//!   agent's Workload API, joins, and the federation holds the SPIRE server's CA.
//! - Each SPIRE server federates with the other trust domain through Federator's bundle
//!   endpoint (`https_spiffe`, the replica's SPIFFE ID, authenticated with the
//!   federation's bundle) instead of pointing at the other SPIRE server: server a holds
//!   b's CA, and b holds a's.
//! - A workload in a registered to federate with b receives b's bundle in its Workload
//!   API response (`spire-agent api fetch x509`, as a workload).
//! - A go-spiffe workload in a calls one in b over mTLS (`tlsconfig.MTLSClientConfig`,
//!   `AuthorizeID`), each with its SVID from its own SPIRE agent; a client expecting
//!   another server ID refuses it.
//! - b rotates its CA the SPIRE way: `localauthority x509 prepare` — the prepared
//!   authority reaches a's workloads through Federator before b activates it, and
//!   `federator bundle status` shows cluster-a acknowledged it — then `activate`,
//!   `taint` and `revoke` of the old one: a ends up trusting b's new CA only, and no
//!   mTLS call from a to b fails on the way.
//! - b is removed from the federation: Federator serves b.test with no keys, a's SPIRE
//!   server drops b's CA at its next poll, and a's workloads' calls to b fail within the
//!   refresh hint (60 s here), with nothing done on a's side.
//!
//! SPIRE is built by `deploy/local/setup-spiffe.sh` (`tests/run.sh` runs it); without it
//! the test fails and says so.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use federator_chaos::agent::{AgentOptions, AgentProcess};
use federator_chaos::member::MemberCluster;
use federator_chaos::spiffe::{MtlsServer, mtls_call, tool};
use federator_chaos::spire::SpireDeployment;
use federator_tests::{Federation, eventually, eventually_every, federator_bin, free_port};

const WAIT: Duration = Duration::from_secs(90);

/// The `spiffe_refresh_hint` Federator serves here: SPIRE's smallest (it polls every
/// quarter of it, every 15 s).
const REFRESH_HINT_SECS: u64 = 60;

/// Bound on a SPIRE agent taking a changed bundle from its server to its workloads (it
/// syncs every 5 s).
const SPIRE_AGENT_SYNC: Duration = Duration::from_secs(20);

/// The PEM certificate blocks of `pem`, whitespace-trimmed, sorted.
fn certificates(pem: &str) -> Vec<String> {
    let mut blocks: Vec<String> = pem
        .split("-----END CERTIFICATE-----")
        .filter_map(|part| part.find("-----BEGIN CERTIFICATE-----").map(|at| &part[at..]))
        .map(|block| format!("{}-----END CERTIFICATE-----", block.trim()))
        .collect();
    blocks.sort();
    blocks
}

/// The federated CAs a workload receives from the Workload API at `socket`, fetched with
/// `spire-agent api fetch x509` (the `fetcher` binary, registered as the workload) into
/// `out_dir`; `None` while it gets no SVID.
fn federated_cas(fetcher: &Path, socket: &Path, out_dir: &Path) -> Option<Vec<String>> {
    fetch_federated(fetcher, socket, out_dir).ok()
}

/// [`federated_cas`], or what the fetch said when it failed.
fn fetch_federated(fetcher: &Path, socket: &Path, out_dir: &Path) -> Result<Vec<String>, String> {
    // Files of a bundle no longer served must not linger from an earlier fetch.
    let entries = std::fs::read_dir(out_dir).map_err(|e| e.to_string())?;
    for entry in entries.filter_map(Result::ok) {
        if entry.file_name().to_string_lossy().starts_with("federated_bundle") {
            std::fs::remove_file(entry.path()).map_err(|e| e.to_string())?;
        }
    }
    let out = Command::new(fetcher)
        .args(["api", "fetch", "x509", "-socketPath"])
        .arg(socket)
        .arg("-write")
        .arg(out_dir)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
    }
    let entries = std::fs::read_dir(out_dir).map_err(|e| e.to_string())?;
    Ok(entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("federated_bundle"))
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|pem| certificates(&pem))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spire_servers_federate_through_federator() -> anyhow::Result<()> {
    // The federation, its bundle endpoint on replica 1 (https_spiffe, its own SVID).
    let mut fed = Federation::new(3)?;
    let endpoint_port = free_port();
    fed.start(2, false)?;
    fed.start(3, false)?;
    fed.extra_config = format!(
        "\n[bundle_endpoint]\nlisten_spiffe = \"127.0.0.1:{endpoint_port}\"\n\
         refresh_hint_seconds = {REFRESH_HINT_SECS}\n"
    );
    fed.start(1, false)?;
    fed.form_group(&[1, 2, 3]).await?;
    let endpoint_id = federator::identity::replica_spiffe_id(&fed.trust_domain, 1);

    // Two SPIRE deployments. The Federator agent is a workload of its cluster's SPIRE
    // agent; so is `spire-agent api fetch`, standing for an application that federates.
    let federator = federator_bin();
    let fetcher = tool("spire-agent")?;
    let mut spires = Vec::new();
    for (name, td) in [("a", "a.test"), ("b", "b.test")] {
        let spire =
            SpireDeployment::start_server(&fed.dir().join(format!("spire-{name}")), td).await?;
        spire.register(&MemberCluster::agent_id_of(td), &federator, &[])?;
        spires.push(spire);
    }
    for spire in &mut spires {
        spire.start_agent().await?;
    }

    // Each cluster's Federator agent: its SVID and own bundle from SPIRE.
    let mut agents = Vec::new();
    for (spire, cluster) in spires.iter().zip(["cluster-a", "cluster-b"]) {
        let options = AgentOptions {
            workload_api: Some(spire.workload_api()),
            lease_ttl_seconds: Some(5),
            ..AgentOptions::default()
        };
        let mut agent =
            AgentProcess::new(&fed, MemberCluster::new(cluster, &spire.trust_domain)?, &options)?;
        agent.start()?;
        agents.push(agent);
    }
    for (agent, spire) in agents.iter().zip(&spires) {
        agent
            .wait_status("joined with SPIRE's SVID, the federation holds SPIRE's CA", WAIT, |s| {
                s.bundle.federation_current == Some(true)
            })
            .await
            .map_err(|e| e.context(format!("agent log:\n{}", agent.log())))?;
        let held = fed.cli_ok(&[], &["bundle", "show", &spire.trust_domain, "--format", "pem"])?;
        let own = spire.bundle_pem(&spire.trust_domain)?.unwrap_or_default();
        assert_eq!(certificates(&held), certificates(&own), "{}", spire.trust_domain);
        assert!(!certificates(&own).is_empty(), "SPIRE's bundle: {own}");
    }

    // Each SPIRE server federates with the other through Federator's bundle endpoint,
    // authenticating it with the federation's bundle.
    let ca = fed.certs.join("ca.pem");
    for (spire, other) in spires.iter().zip(["b.test", "a.test"]) {
        spire.set_bundle(&fed.trust_domain, &ca)?;
        let url = format!("https://127.0.0.1:{endpoint_port}/bundles/{other}");
        spire.federate_with(other, &url, &endpoint_id)?;
    }
    for (spire, other) in spires.iter().zip([1, 0]) {
        let other = &spires[other];
        let expected = certificates(&other.bundle_pem(&other.trust_domain)?.unwrap_or_default());
        eventually(
            &format!("SPIRE {} to hold {}'s bundle", spire.trust_domain, other.trust_domain),
            WAIT,
            || async {
                let held = spire.bundle_pem(&other.trust_domain).ok().flatten()?;
                (certificates(&held) == expected).then_some(())
            },
        )
        .await
        .map_err(|e| {
            e.context(format!("server log:\n{}", federator_tests::tail(&spire.server_log(), 40)))
        })?;
    }

    // A workload in a that federates with b (an entry SPIRE accepts only once it holds
    // b's bundle) gets b's CA from its Workload API.
    let a = &spires[0];
    a.register("spiffe://a.test/app", &fetcher, &["b.test"])?;
    let out_dir = a.dir.join("app");
    std::fs::create_dir_all(&out_dir)?;
    let b_cas = certificates(&spires[1].bundle_pem("b.test")?.unwrap_or_default());
    let socket = a.dir.join("agent/workload.sock");
    eventually("a's workload to receive b's bundle from SPIRE", WAIT, || async {
        let federated = federated_cas(&fetcher, &socket, &out_dir)?;
        b_cas.iter().all(|ca| federated.contains(ca)).then_some(())
    })
    .await?;

    // A workload in a calls one in b over mTLS, each with its SVID from its own SPIRE and
    // the other's CA from the federation (go-spiffe's MTLSClientConfig / AuthorizeID).
    let go_spiffe = tool("spiffe-client")?;
    a.register("spiffe://a.test/client", &go_spiffe, &["b.test"])?;
    spires[1].register("spiffe://b.test/server", &go_spiffe, &["a.test"])?;
    let server = MtlsServer::start(&spires[1].workload_api(), "spiffe://a.test/client")?;
    let call = || mtls_call(&a.workload_api(), &server.addr, "spiffe://b.test/server");
    let first =
        eventually("an mTLS call from a's workload to b's", WAIT, || async { call().ok() }).await?;
    assert_eq!(first.line, "hello spiffe://a.test/client from spiffe://b.test/server");
    let refused = mtls_call(&a.workload_api(), &server.addr, "spiffe://b.test/someone-else");
    assert!(refused.is_err(), "a server with another ID is refused by the client");

    // b rotates its CA the SPIRE way: a new authority is prepared (in b's bundle, not
    // signing yet). It reaches a's workloads through Federator before b activates it,
    // and `bundle status` shows cluster-a acknowledged it.
    let b = &spires[1];
    let before = fed.cli_json(&["bundle", "status", "b.test"])?["sequence"].as_u64();
    b.server_cli(&["localauthority", "x509", "prepare"])?;
    let rotated = eventually("b's SPIRE bundle to hold the prepared authority", WAIT, || async {
        let pem = b.bundle_pem("b.test").ok().flatten()?;
        let cas = certificates(&pem);
        (cas.len() == 2).then_some(cas)
    })
    .await?;
    let status = eventually("cluster-a to acknowledge b's rotated bundle", WAIT, || async {
        let status = fed.cli_json(&["bundle", "status", "b.test"]).ok()?;
        let moved = status["sequence"].as_u64() > before;
        (moved && status["complete"] == true).then_some(status)
    })
    .await?;
    println!("b's rotation acknowledged: {status}");
    eventually("a's workload to receive b's prepared authority", WAIT, || async {
        let federated = federated_cas(&fetcher, &socket, &out_dir)?;
        rotated.iter().all(|ca| federated.contains(ca)).then_some(())
    })
    .await
    .map_err(|e| {
        e.context(format!("a's server log:\n{}", federator_tests::tail(&a.server_log(), 30)))
    })?;
    // Still nothing signed by it: the calls go on.
    assert_eq!(call()?.issuer, first.issuer, "b's server still has its first SVID");

    // b activates the new authority, taints the old one (its agent re-issues what the
    // old one signed) and, once b's server presents an SVID of the new one, revokes it.
    // a ends up trusting b's new CA only, and no call fails on the way.
    let ids = b.x509_authorities()?;
    let (Some(old_id), Some(new_id)) = (ids.active.clone(), ids.prepared.clone()) else {
        anyhow::bail!("b's SPIRE has no active and prepared authority: {ids:?}");
    };
    b.x509_authority("activate", &new_id)?;
    b.x509_authority("taint", &old_id)?;
    let mut calls = 0u32;
    let mut failed = Vec::new();
    let mut counted_call = || {
        calls += 1;
        match call() {
            Ok(answer) => Some(answer),
            Err(error) => {
                failed.push(error.to_string());
                None
            }
        }
    };
    let started = std::time::Instant::now();
    let every = Duration::from_millis(500);
    eventually_every("b's server to drop its tainted SVID", WAIT, every, || {
        std::future::ready(counted_call().filter(|answer| answer.issuer != first.issuer))
    })
    .await?;
    b.x509_authority("revoke", &old_id)?;
    let new_ca: Vec<String> =
        rotated.iter().filter(|ca| b_cas.iter().all(|old| old != *ca)).cloned().collect();
    assert_eq!(new_ca.len(), 1, "one new CA: {rotated:?}");
    // Within twice WAIT of the taint, as a whole.
    let left = (WAIT * 2).saturating_sub(started.elapsed());
    eventually_every("a's workloads to trust b's new CA only", left, every, || {
        counted_call();
        std::future::ready(federated_cas(&fetcher, &socket, &out_dir).filter(|cas| *cas == new_ca))
    })
    .await?;
    assert!(counted_call().is_some(), "a call after the revocation");
    println!("b's CA rotated: {calls} calls, {} failed", failed.len());
    assert!(failed.is_empty(), "calls failed during the rotation: {failed:?}");

    // b leaves the federation. Federator serves b.test with no keys from then on, so a's
    // SPIRE server replaces b's bundle with nothing at its next poll (a quarter of the
    // refresh hint), its workloads stop trusting b's CA and the call fails — within the
    // refresh hint, with nothing done on a's side.
    let removed_at = std::time::Instant::now();
    fed.cli_ok(&[], &["cluster", "remove", "cluster-b"])?;
    let within = Duration::from_secs(REFRESH_HINT_SECS) + SPIRE_AGENT_SYNC;
    // The Workload API then hands a's workloads b's bundle with no CA in it (which
    // `spire-agent api fetch` reports as an error of its own), and go-spiffe refuses b's
    // server as signed by an unknown authority.
    let seen = std::sync::Mutex::new(String::new());
    let b_empty = "no certificates in bundle for federated domain \"spiffe://b.test\"";
    eventually_every(
        "a's workloads to stop trusting b",
        within,
        Duration::from_secs(1),
        || async {
            let federated = fetch_federated(&fetcher, &socket, &out_dir);
            let answer = call();
            let untrusted = match &federated {
                Ok(cas) => new_ca.iter().all(|ca| !cas.contains(ca)),
                Err(said) => said.contains(b_empty),
            };
            if let Ok(mut seen) = seen.lock() {
                *seen = format!("a's workload API: {federated:?}; the call: {answer:?}");
            }
            (untrusted && answer.is_err()).then_some(())
        },
    )
    .await
    .map_err(|e| {
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        e.context(format!(
            "last seen: {seen}\na's server log:\n{}",
            federator_tests::tail(&a.server_log(), 20)
        ))
    })?;
    let error = call().expect_err("the call fails once b is removed");
    assert!(error.to_string().contains("unknown authority"), "{error:#}");
    println!(
        "b removed: a's workloads stopped trusting it after {:.1} s (refresh hint {REFRESH_HINT_SECS} s): {error:#}",
        removed_at.elapsed().as_secs_f64()
    );
    let held = a.bundle_pem("b.test")?.unwrap_or_default();
    assert!(certificates(&held).is_empty(), "a's SPIRE server holds no CA of b: {held}");
    for agent in &mut agents {
        agent.kill();
    }
    Ok(())
}
