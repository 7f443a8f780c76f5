//! Trust federation end to end: clusters join with single-use tokens, publish bundles
//! that are validated and authorized per trust domain, watch each other's bundles,
//! acknowledge rotations, get removed, and read bundles from the SPIFFE bundle endpoint.

use std::time::Duration;

use federator_chaos::http;
use federator_proto::federation as pb;
use federator_tests::member::{MemberCluster, connect_as, join_request, publish_request};
use federator_tests::{Federation, eventually};
use tonic::Code;

fn clusters(fed: &Federation) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(&fed.cli_ok(&[], &["cluster", "list", "-o", "json"])?)?)
}

/// Reads watch events until `until` holds for the collected events (bounded).
async fn watch_until(
    stream: &mut tonic::Streaming<pb::WatchEvent>,
    seen: &mut Vec<pb::WatchEvent>,
    until: impl Fn(&[pb::WatchEvent]) -> bool,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !until(seen) {
        let next = tokio::time::timeout_at(deadline, stream.message()).await??;
        match next {
            Some(event) => seen.push(event),
            None => anyhow::bail!("watch ended early after {seen:?}"),
        }
    }
    Ok(())
}

fn bundle_put(event: &pb::WatchEvent) -> Option<&pb::TrustBundle> {
    match &event.event {
        Some(pb::watch_event::Event::BundlePut(b)) => Some(b),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusters_join_with_tokens_and_watch_each_others_bundles() -> anyhow::Result<()> {
    let fed = Federation::formed(3, "").await?;
    let mut a = MemberCluster::new("cluster-a", "a.example")?;
    let mut b = MemberCluster::new("cluster-b", "b.example")?;
    let joined = a.join(&fed, 1).await?;
    assert_eq!(joined.trust_domain, "a.example");
    assert_eq!(joined.agent_id, a.agent_id());
    b.join(&fed, 2).await?;

    let list = clusters(&fed)?;
    let names: Vec<&str> =
        list.as_array().expect("array").iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["cluster-a", "cluster-b"]);

    // B's watch (served by replica 3) holds A's bundle; then A rotates and B sees it.
    let mut client_b = b.client(&fed.replica(3).api_addr, &fed.ca_pem()).await?;
    let mut stream = client_b.watch(pb::WatchRequest { after_revision: 0 }).await?.into_inner();
    let mut seen = Vec::new();
    watch_until(&mut stream, &mut seen, |s| {
        s.iter().any(|e| matches!(e.event, Some(pb::watch_event::Event::SnapshotEnd(_))))
    })
    .await?;
    assert!(
        seen.iter()
            .filter_map(bundle_put)
            .any(|b| b.trust_domain == "a.example" && b.sequence == 1),
        "{seen:?}"
    );

    a.add_ca()?;
    let rotated = a.next_bundle()?;
    let mut client_a = a.client(&fed.replica(2).api_addr, &fed.ca_pem()).await?;
    let published =
        client_a.publish_bundle(publish_request("a.example", rotated, false)).await?.into_inner();
    assert_eq!(published.sequence, 2);
    watch_until(&mut stream, &mut seen, |s| {
        s.iter().filter_map(bundle_put).any(|b| b.trust_domain == "a.example" && b.sequence == 2)
    })
    .await?;
    let revisions: Vec<u64> = seen.iter().map(|e| e.revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] <= w[1]), "revisions went back: {revisions:?}");

    // The PEM view holds both of A's CAs.
    let pem = fed.cli_ok(&[], &["bundle", "show", "a.example", "--format", "pem"])?;
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2, "{pem}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_expired_unknown_and_foreign_tokens_are_refused() -> anyhow::Result<()> {
    let fed = Federation::formed(3, "").await?;
    let ca = fed.ca_pem();
    let mut a = MemberCluster::new("cluster-a", "a.example")?;
    let mut b = MemberCluster::new("cluster-b", "b.example")?;

    // Reuse: the first join succeeds. The same agent retrying that very join (same
    // token, key and bundle: its answer was lost) gets the same answer and nothing is
    // proposed; the token with another bundle is refused as used.
    let token_a = fed.token("cluster-a", "a.example", "1h")?;
    let bundle = a.next_bundle()?;
    let mut client_a = a.client(&fed.replica(1).api_addr, &ca).await?;
    let first = client_a.join(join_request(&token_a, "a.example", bundle.clone())).await?;
    let first = first.into_inner();
    let applied = fed.applied_index(1).await?;
    let retried = client_a.join(join_request(&token_a, "a.example", bundle)).await?.into_inner();
    assert_eq!(
        (retried.cluster.as_str(), retried.revision),
        (first.cluster.as_str(), first.revision),
        "a retry is answered as the join it was"
    );
    assert_eq!(fed.applied_index(1).await?, applied, "a retry proposes nothing");
    let other = a.next_bundle()?;
    let err = client_a.join(join_request(&token_a, "a.example", other)).await.expect_err("reuse");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("already used"), "{err}");

    // A token for cluster-b presented by A's agent (another trust domain) is refused.
    let token_b = fed.token("cluster-b", "b.example", "1h")?;
    let err = client_a
        .join(join_request(&token_b, "b.example", b.bundle_at(1)?))
        .await
        .expect_err("foreign");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // Expired.
    let mut c = MemberCluster::new("cluster-c", "c.example")?;
    let token_c = fed.token("cluster-c", "c.example", "1s")?;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let mut client_c = c.client(&fed.replica(2).api_addr, &ca).await?;
    let err = client_c
        .join(join_request(&token_c, "c.example", c.next_bundle()?))
        .await
        .expect_err("expired");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("expired"), "{err}");

    // Unknown (well-formed, never created) and malformed.
    let forged = federator::token::JoinToken::generate(
        "cluster-c",
        "c.example",
        vec![fed.replica(1).api_addr.clone()],
        ca.clone(),
        i64::MAX / 4,
    );
    let err = client_c
        .join(join_request(&forged.encode(), "c.example", c.bundle_at(1)?))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    assert!(err.message().contains("unknown"), "{err}");
    let err = client_c
        .join(join_request("fedjoin1.not-a-token", "c.example", c.bundle_at(1)?))
        .await
        .expect_err("garbage");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");

    // Nothing was committed for the refused joins.
    let list = clusters(&fed)?;
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    // Refused before the log: reported to the audit trail within a second or so.
    eventually("refused joins in the audit trail", Duration::from_secs(15), || async {
        let refused: u64 = fed
            .audit()
            .ok()?
            .into_iter()
            .filter(|e| e["accepted"] == false && e["action"] == "join")
            .map(|e| e["count"].as_u64().unwrap_or(1))
            .sum();
        (refused >= 2).then_some(())
    })
    .await?;
    let _ = &mut b;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_domain_writes_and_foreign_svids_are_refused() -> anyhow::Result<()> {
    let fed = Federation::formed(3, "").await?;
    let ca = fed.ca_pem();
    let mut a = MemberCluster::new("cluster-a", "a.example")?;
    let mut b = MemberCluster::new("cluster-b", "b.example")?;
    a.join(&fed, 1).await?;
    b.join(&fed, 1).await?;
    let b_before = fed.cli_ok(&[], &["bundle", "show", "b.example", "-o", "json"])?;

    // A publishes for B's trust domain.
    let mut client_a = a.client(&fed.replica(1).api_addr, &ca).await?;
    let err = client_a
        .publish_bundle(publish_request("b.example", b.bundle_at(5)?, false))
        .await
        .expect_err("cross-domain");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // An SVID claiming A's trust domain but signed by B's CA.
    let forged = b.issue(&a.agent_id())?;
    let mut forged_client = connect_as(&fed.replica(2).api_addr, &ca, Some(&forged)).await?;
    let err = forged_client
        .publish_bundle(publish_request("a.example", a.bundle_at(7)?, false))
        .await
        .expect_err("forged");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    let err = forged_client
        .watch(pb::WatchRequest { after_revision: 0 })
        .await
        .expect_err("forged watch");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // A workload of A that is not A's registered agent.
    let workload = a.issue("spiffe://a.example/ns/default/sa/web")?;
    let mut workload_client = connect_as(&fed.replica(3).api_addr, &ca, Some(&workload)).await?;
    let err = workload_client
        .publish_bundle(publish_request("a.example", a.bundle_at(8)?, false))
        .await
        .expect_err("not the agent");
    assert_eq!(err.code(), Code::PermissionDenied, "{err}");

    // No certificate at all: the handshake or the call is refused.
    match connect_as(&fed.replica(1).api_addr, &ca, None).await {
        Err(_) => {}
        Ok(mut anonymous) => {
            let err = anonymous
                .watch(pb::WatchRequest { after_revision: 0 })
                .await
                .expect_err("anonymous");
            // TLS 1.3 finishes the client's side of the handshake before the server
            // refuses it, so the refusal surfaces as a closed connection on the first call.
            assert!(
                matches!(
                    err.code(),
                    Code::Unauthenticated | Code::Unavailable | Code::Unknown | Code::Cancelled
                ),
                "{err}"
            );
        }
    }

    // Nothing committed: B's bundle is unchanged, A's too; the refusals are audited.
    assert_eq!(fed.cli_ok(&[], &["bundle", "show", "b.example", "-o", "json"])?, b_before);
    let a_now: serde_json::Value =
        serde_json::from_str(&fed.cli_ok(&[], &["bundle", "show", "a.example", "-o", "json"])?)?;
    assert_eq!(a_now["sequence"], 1);
    eventually("refusals in the audit trail", Duration::from_secs(10), || async {
        let refused: Vec<_> =
            fed.audit().ok()?.into_iter().filter(|e| e["accepted"] == false).collect();
        (refused.len() >= 2).then_some(())
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_bundles_are_refused_with_nothing_committed() -> anyhow::Result<()> {
    let fed = Federation::formed(3, "").await?;
    let ca = fed.ca_pem();
    let mut a = MemberCluster::new("cluster-a", "a.example")?;
    let mut b = MemberCluster::new("cluster-b", "b.example")?;
    a.join(&fed, 1).await?;
    b.join(&fed, 2).await?;
    let mut client_a = a.client(&fed.replica(3).api_addr, &ca).await?;

    let cases: Vec<(&str, String, &str)> = vec![
        ("replayed sequence", a.bundle_at(1)?, "spiffe_sequence"),
        ("duplicate member", a.bundle_at(9)?.replacen('{', "{\"keys\":[],", 1), "keys"),
        ("empty keys", r#"{"keys":[],"spiffe_sequence":10}"#.to_string(), "keys"),
        ("not JSON", "{not json".to_string(), ""),
        ("unknown use", a.bundle_at(11)?.replace("x509-svid", "x509-whatever"), "use"),
    ];
    for (what, document, field) in cases {
        let err = client_a
            .publish_bundle(publish_request("a.example", document, false))
            .await
            .expect_err(what);
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err}");
        assert!(err.message().contains(field), "{what}: the error must name {field:?}: {err}");
    }

    // A key already in B's bundle.
    let mut mixed: serde_json::Value = serde_json::from_str(&a.bundle_at(20)?)?;
    let theirs: serde_json::Value = serde_json::from_str(&b.bundle_at(1)?)?;
    let keys = mixed["keys"].as_array_mut().expect("keys");
    keys.extend(theirs["keys"].as_array().expect("keys").iter().cloned());
    let err = client_a
        .publish_bundle(publish_request("a.example", mixed.to_string(), false))
        .await
        .expect_err("stolen key");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("b.example"), "{err}");
    let stolen = MemberCluster::new("cluster-a", "a.example")?;

    // A bundle that no longer certifies the agent's own SVID: refused unless forced.
    let lockout = stolen.bundle_at(30)?;
    let err = client_a
        .publish_bundle(publish_request("a.example", lockout.clone(), false))
        .await
        .expect_err("lock-out");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("lock"), "{err}");

    let status: serde_json::Value =
        serde_json::from_str(&fed.cli_ok(&[], &["bundle", "show", "a.example", "-o", "json"])?)?;
    assert_eq!(status["sequence"], 1, "nothing committed: {status}");
    let forced =
        client_a.publish_bundle(publish_request("a.example", lockout, true)).await?.into_inner();
    assert_eq!(forced.sequence, 30);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_closes_streams_and_stops_reconnects() -> anyhow::Result<()> {
    let fed = Federation::formed(3, "").await?;
    let ca = fed.ca_pem();
    let mut a = MemberCluster::new("cluster-a", "a.example")?;
    let mut b = MemberCluster::new("cluster-b", "b.example")?;
    a.join(&fed, 1).await?;
    b.join(&fed, 1).await?;

    let mut client_a = a.client(&fed.replica(2).api_addr, &ca).await?;
    let mut stream_a = client_a.watch(pb::WatchRequest { after_revision: 0 }).await?.into_inner();
    let mut client_b = b.client(&fed.replica(3).api_addr, &ca).await?;
    let mut stream_b = client_b.watch(pb::WatchRequest { after_revision: 0 }).await?.into_inner();
    let mut seen_b = Vec::new();
    watch_until(&mut stream_b, &mut seen_b, |s| {
        s.iter().any(|e| matches!(e.event, Some(pb::watch_event::Event::SnapshotEnd(_))))
    })
    .await?;

    fed.cli_ok(&[], &["cluster", "remove", "cluster-a"])?;

    // A's stream ends with PermissionDenied.
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream_a.message().await {
                Ok(Some(_)) => {}
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await?;
    let status = ended.expect("the stream must end with an error");
    assert_eq!(status.code(), Code::PermissionDenied, "{status}");

    // B sees A's bundle go.
    watch_until(&mut stream_b, &mut seen_b, |s| {
        s.iter().any(|e| matches!(&e.event, Some(pb::watch_event::Event::BundleRemoved(r)) if r.trust_domain == "a.example"))
    })
    .await?;

    // A can no longer watch or publish, through any replica.
    for id in 1..=3 {
        let mut client = a.client(&fed.replica(id).api_addr, &ca).await?;
        let err = client.watch(pb::WatchRequest { after_revision: 0 }).await.expect_err("removed");
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
        let err = client
            .publish_bundle(publish_request("a.example", a.next_bundle()?, false))
            .await
            .expect_err("removed");
        assert_eq!(err.code(), Code::PermissionDenied, "{err}");
    }
    assert!(fed.cli(&[], &["bundle", "show", "a.example"])?.status.code() != Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_is_visible_in_bundle_status_member_by_member() -> anyhow::Result<()> {
    let fed = Federation::formed(3, "").await?;
    let ca = fed.ca_pem();
    let mut a = MemberCluster::new("cluster-a", "a.example")?;
    let mut b = MemberCluster::new("cluster-b", "b.example")?;
    let mut c = MemberCluster::new("cluster-c", "c.example")?;
    for (m, via) in [(&mut a, 1), (&mut b, 2), (&mut c, 3)] {
        m.join(&fed, via).await?;
    }
    let status = |fed: &Federation| -> anyhow::Result<serde_json::Value> {
        let out = fed.cli(&[], &["bundle", "status", "a.example", "-o", "json"])?;
        Ok(serde_json::from_str(&String::from_utf8_lossy(&out.stdout))?)
    };
    let applied = |s: &serde_json::Value, cluster: &str| -> u64 {
        s["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["cluster"] == cluster))
            .and_then(|m| m["applied_sequence"].as_u64())
            .unwrap_or(99)
    };
    let mut client_a = a.client(&fed.replica(1).api_addr, &ca).await?;
    let mut client_b = b.client(&fed.replica(2).api_addr, &ca).await?;
    let mut client_c = c.client(&fed.replica(3).api_addr, &ca).await?;

    // Step 1: old and new CA together.
    a.add_ca()?;
    client_a.publish_bundle(publish_request("a.example", a.next_bundle()?, false)).await?;
    let s = status(&fed)?;
    assert_eq!(s["sequence"], 2);
    assert_eq!(s["complete"], false);
    let list = clusters(&fed)?;
    assert_eq!(list[0]["status"], "rotating (0/2 members applied sequence 2)", "{list}");
    client_b.ack(pb::AckRequest { trust_domain: "a.example".into(), sequence: 2 }).await?;
    let s = status(&fed)?;
    assert_eq!(
        (applied(&s, "cluster-b"), applied(&s, "cluster-c"), s["complete"].as_bool()),
        (2, 0, Some(false)),
        "{s}"
    );
    // What holds the rotation up, and whether it is alive at all (no agent here: no lease).
    assert_eq!(s["blocking"], serde_json::json!(["cluster-c"]), "{s}");
    let c_ack =
        s["members"].as_array().and_then(|m| m.iter().find(|m| m["cluster"] == "cluster-c"));
    assert_eq!(c_ack.map(|m| m["lease_live"].clone()), Some(serde_json::json!(false)), "{s}");
    let table = fed.cli(&[], &["bundle", "status", "a.example"])?;
    assert_eq!(table.status.code(), Some(3), "incomplete: exit 3");
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.contains("blocked by cluster-c"), "{table}");
    assert!(table.contains("cluster-c hold(s) no live lease"), "{table}");
    // `--wait` gives up after its time with the same answer...
    let waited = fed.cli(&[], &["bundle", "status", "a.example", "--wait", "2s"])?;
    assert_eq!(waited.status.code(), Some(3), "still incomplete after the wait");
    // ... and returns 0 as soon as the last member applies it.
    let waiting = fed
        .cli_command(&["bundle", "status", "a.example", "--wait", "60s"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    client_c.ack(pb::AckRequest { trust_domain: "a.example".into(), sequence: 2 }).await?;
    let waited = tokio::task::spawn_blocking(move || waiting.wait_with_output()).await??;
    assert!(waited.status.success(), "{}", waited.status);
    assert!(String::from_utf8_lossy(&waited.stdout).contains("safe to sign with the new key"));
    let s = status(&fed)?;
    assert_eq!(s["complete"], true, "{s}");
    let list = clusters(&fed)?;
    assert_eq!(list[0]["status"], "active", "{list}");
    let table = fed.cli(&[], &["bundle", "status", "a.example"])?;
    assert!(String::from_utf8_lossy(&table.stdout).contains("safe to sign with the new key"));

    // Step 2: only the new CA; the agent first takes an SVID of the new CA.
    a.retire_old_cas()?;
    let mut client_a = a.client(&fed.replica(2).api_addr, &ca).await?;
    client_a.publish_bundle(publish_request("a.example", a.next_bundle()?, false)).await?;
    let s = status(&fed)?;
    assert_eq!(
        (s["sequence"].as_u64(), applied(&s, "cluster-b"), s["complete"].as_bool()),
        (Some(3), 2, Some(false)),
        "{s}"
    );
    // An acknowledgement of a sequence that does not exist yet is refused.
    let err = client_b
        .ack(pb::AckRequest { trust_domain: "a.example".into(), sequence: 4 })
        .await
        .expect_err("future ack");
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    for client in [&mut client_b, &mut client_c] {
        client.ack(pb::AckRequest { trust_domain: "a.example".into(), sequence: 3 }).await?;
    }
    assert_eq!(status(&fed)?["complete"], true);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bundle_endpoint_serves_stored_bundles_under_both_profiles() -> anyhow::Result<()> {
    let mut fed = Federation::new(3)?;
    // A web PKI certificate for the https_web profile, from a CA that is not the federation's.
    let web = federator_tests::WebCertificate::write(&fed.dir().join("web"))?;
    let spiffe_port = federator_tests::free_port();
    let web_port = federator_tests::free_port();
    // Only replica 1 serves the endpoint here (each replica needs its own ports).
    fed.start(2, false)?;
    fed.start(3, false)?;
    fed.extra_config = format!(
        "{}refresh_hint_seconds = 120\n",
        web.bundle_endpoint_config(spiffe_port, web_port)
    );
    fed.start(1, false)?;
    fed.form_group(&[1, 2, 3]).await?;
    let mut a = MemberCluster::new("cluster-a", "a.example")?;
    a.add_ca()?;
    a.join(&fed, 2).await?;
    let stored: serde_json::Value =
        serde_json::from_str(&fed.cli_ok(&[], &["bundle", "show", "a.example", "-o", "json"])?)?;

    let fed_ca = std::fs::read_to_string(fed.certs.join("ca.pem"))?;
    // The body of a 200 answer over HTTPS (handshake and answer within 10 s).
    let get = async |port: u16, ca: &str, path: &str| {
        let addr = format!("127.0.0.1:{port}");
        http::get_https(&addr, ca, path, Duration::from_secs(10)).await?.ok().map(|r| r.body)
    };
    let spiffe_body = get(spiffe_port, &fed_ca, "/bundles/a.example").await?;
    let web_body = get(web_port, &web.ca_pem, "/bundles/a.example").await?;
    for (profile, body) in [("https_spiffe", &spiffe_body), ("https_web", &web_body)] {
        let policy = federator::bundle::ValidationPolicy::at(federator::clock::unix_now());
        let parsed = federator::bundle::parse_spiffe_bundle("a.example", body.as_bytes(), &policy)
            .map_err(|e| anyhow::anyhow!("{profile}: {e}: {body}"))?;
        assert_eq!(
            parsed.to_spiffe_json(),
            stored["document"].as_str().expect("document"),
            "{profile}"
        );
        assert_eq!(parsed.sequence, 1, "{profile}");
        // The member's own hint is served as it published it (the default is 120 here).
        assert_eq!(parsed.refresh_hint_secs, Some(300), "{profile}");
        assert_eq!(parsed.x509_authorities.len(), 2, "{profile}");
    }
    // The federation's own bundle and the list of trust domains are served too.
    let list = get(spiffe_port, &fed_ca, "/bundles").await?;
    assert!(list.contains("a.example") && list.contains(&fed.trust_domain), "{list}");
    // A bundle without a hint of its own (the federation's) gets the configured one.
    let own = get(spiffe_port, &fed_ca, &format!("/bundles/{}", fed.trust_domain)).await?;
    let own: serde_json::Value = serde_json::from_str(&own)?;
    assert_eq!(own["spiffe_refresh_hint"], 120, "{own}");
    let missing = get(spiffe_port, &fed_ca, "/bundles/nope.example").await;
    assert!(missing.is_err(), "an unknown trust domain is a 404");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_without_the_admin_identity_are_refused() -> anyhow::Result<()> {
    use federator_proto::admin as apb;
    use federator_proto::admin::admin_client::AdminClient;

    let fed = Federation::formed(3, "").await?;
    let ca = fed.ca_pem();
    let mut a = MemberCluster::new("cluster-a", "a.example")?;
    a.join(&fed, 1).await?;
    let api = fed.replica(1).api_addr.clone();

    // A member's agent, a replica's own certificate, and a foreign CA's certificate that
    // claims the admin SPIFFE ID.
    let replica = federator::identity::IssuedCertificate {
        cert_pem: std::fs::read_to_string(fed.certs.join("replica-2.pem"))?,
        key_pem: std::fs::read_to_string(fed.certs.join("replica-2.key"))?,
    };
    let impostor_ca = federator::identity::FederationCa::generate(
        &fed.trust_domain,
        "impostor",
        Duration::from_secs(3600),
    )?;
    let impostor = impostor_ca.issue(
        &federator::identity::admin_spiffe_id(&fed.trust_domain),
        &[],
        &[],
        Duration::from_secs(3600),
    )?;
    for (who, svid) in [("agent", a.agent_svid()), ("replica", &replica), ("impostor", &impostor)] {
        let channel = federator_tests::member::channel_as(&api, &ca, Some(svid)).await?;
        let mut admin = AdminClient::new(channel);
        let err = admin.list_clusters(apb::ListClustersRequest::default()).await.expect_err(who);
        assert_eq!(err.code(), Code::PermissionDenied, "{who}: {err}");
        let err = admin
            .create_token(apb::CreateTokenRequest {
                cluster: "evil".into(),
                trust_domain: "evil.example".into(),
                ttl_seconds: 60,
                ..Default::default()
            })
            .await
            .expect_err(who);
        assert_eq!(err.code(), Code::PermissionDenied, "{who}: {err}");
    }
    // The admin identity itself is served.
    let list = clusters(&fed)?;
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    Ok(())
}

/// A member set up by hand without SPIRE, the way the docs describe: `federator certs
/// member` writes its own CA, its agent's SVID and an agent.toml; `token create` gives the
/// join token; the agent joins with them and holds a live lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_set_up_with_certs_member_joins() -> anyhow::Result<()> {
    let fed = Federation::formed(3, "").await?;
    let dir = fed.dir().join("cluster-x");
    let dir_arg = dir.to_str().ok_or_else(|| anyhow::anyhow!("a utf-8 path"))?;
    let made = fed.cli(
        &[],
        &["certs", "member", dir_arg, "--cluster", "cluster-x", "--trust-domain", "x.example"],
    )?;
    let said = String::from_utf8_lossy(&made.stderr);
    assert!(made.status.success(), "{said}");
    assert!(said.contains("next: federator token create --cluster cluster-x"), "{said}");
    let again = fed.cli(
        &[],
        &["certs", "member", dir_arg, "--cluster", "cluster-x", "--trust-domain", "x.example"],
    )?;
    assert!(!again.status.success(), "an existing CA is not replaced without --force");
    let token = fed.cli_ok(
        &[],
        &["token", "create", "--cluster", "cluster-x", "--trust-domain", "x.example"],
    )?;
    std::fs::write(dir.join("join-token"), token.trim())?;
    let log = std::fs::File::create(dir.join("agent.log"))?;
    let mut agent = std::process::Command::new(federator_tests::federator_bin())
        .args(["agent", "--config"])
        .arg(dir.join("agent.toml"))
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let joined =
        eventually("cluster-x to join with a live lease", Duration::from_secs(30), || async {
            let list = fed.cli_json(&["cluster", "list"]).ok()?;
            let x = list.as_array()?.iter().find(|c| c["name"] == "cluster-x")?.clone();
            (x["lease"]["state"] == "live").then_some(x)
        })
        .await;
    let _ = agent.kill();
    let _ = agent.wait();
    let joined = joined.map_err(|e| {
        e.context(std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default())
    })?;
    assert_eq!(joined["trust_domain"], "x.example", "{joined}");
    assert_eq!(joined["agent_id"], "spiffe://x.example/federator-agent", "{joined}");
    Ok(())
}
