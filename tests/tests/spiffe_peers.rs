//! Third-party SPIFFE implementations against Federator (issue 26).
//!
//! - go-spiffe v2's `federation.FetchBundle` — what SPIRE servers and go-spiffe
//!   applications use to federate — fetches a member's bundle from Federator's bundle
//!   endpoint under both profiles: `https_web` trusting a web CA, and `https_spiffe`
//!   authenticating the replica's SPIFFE ID with the federation's bundle. It gets the
//!   member's authorities, sequence and refresh hint; a wrong endpoint ID or wrong roots
//!   are refused by the client. A removed member's trust domain comes back with no keys.
//!
//! The client is built by `deploy/local/setup-spiffe.sh` (`tests/run.sh` runs it); without
//! it the test fails and says so.

use federator_chaos::member::MemberCluster;
use federator_chaos::spiffe::{Profile, fetch_bundle};
use federator_tests::Federation;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_spiffe_fetches_member_bundles_under_both_profiles() -> anyhow::Result<()> {
    let mut fed = Federation::new(3)?;
    // A web PKI stand-in for https_web: a CA that is not the federation's.
    let web = federator_tests::WebCertificate::write(&fed.dir().join("web"))?;
    let spiffe_port = federator_tests::free_port();
    let web_port = federator_tests::free_port();
    fed.start(2, false)?;
    fed.start(3, false)?;
    fed.extra_config = web.bundle_endpoint_config(spiffe_port, web_port);
    fed.start(1, false)?;
    fed.form_group(&[1, 2, 3]).await?;
    let mut a = MemberCluster::new("cluster-a", "a.example")?;
    a.add_ca()?;
    a.join(&fed, 2).await?;
    let mut b = MemberCluster::new("cluster-b", "b.example")?;
    b.join(&fed, 3).await?;

    let replica_id = federator::identity::replica_spiffe_id(&fed.trust_domain, 1);
    let federation_ca = fed.certs.join("ca.pem");
    let web_profile = Profile::Web { roots: web.ca.clone() };
    let spiffe_profile =
        Profile::Spiffe { endpoint_id: replica_id.clone(), endpoint_bundle: federation_ca.clone() };
    for (member, authorities) in [(&a, 2), (&b, 1)] {
        let td = member.trust_domain.as_str();
        for (profile, port) in [(&web_profile, web_port), (&spiffe_profile, spiffe_port)] {
            let url = format!("https://127.0.0.1:{port}/bundles/{td}");
            let fetched = fetch_bundle(&url, td, profile)?;
            assert_eq!(fetched.trust_domain, td, "{profile:?}");
            assert_eq!(fetched.x509_authorities.len(), authorities, "{profile:?}: {fetched:?}");
            let ca = member.ca_pem();
            for pem in &fetched.x509_authorities {
                assert!(ca.contains(pem.trim()), "{profile:?}: an authority {td} does not have");
            }
            assert_eq!(fetched.sequence, Some(1), "{profile:?}");
            assert_eq!(fetched.refresh_hint_seconds, Some(300), "{profile:?}");
        }
    }

    // The client authenticates the endpoint: another replica's ID, or roots that did not
    // issue its certificate, are refused.
    let url = format!("https://127.0.0.1:{spiffe_port}/bundles/a.example");
    let other = Profile::Spiffe {
        endpoint_id: federator::identity::replica_spiffe_id(&fed.trust_domain, 2),
        endpoint_bundle: federation_ca.clone(),
    };
    let refused = fetch_bundle(&url, "a.example", &other).expect_err("wrong endpoint ID");
    assert!(refused.to_string().contains(&replica_id), "{refused:#}");
    let url = format!("https://127.0.0.1:{web_port}/bundles/a.example");
    let wrong_roots = Profile::Web { roots: federation_ca };
    fetch_bundle(&url, "a.example", &wrong_roots).expect_err("roots that did not issue it");

    // A removed member's trust domain is served with no keys and the next sequence (a
    // 404 would leave consumers holding its CA); one never a member stays a 404.
    let removed = fed.cli(&[], &["cluster", "remove", "cluster-b"])?;
    let said = String::from_utf8_lossy(&removed.stderr);
    assert!(removed.status.success(), "{said}");
    assert!(said.contains("serves b.example with no keys until"), "{said}");
    for (profile, port) in [(&web_profile, web_port), (&spiffe_profile, spiffe_port)] {
        let url = format!("https://127.0.0.1:{port}/bundles/b.example");
        let fetched = fetch_bundle(&url, "b.example", profile)?;
        assert!(fetched.x509_authorities.is_empty(), "{profile:?}: {fetched:?}");
        assert_eq!(fetched.sequence, Some(2), "{profile:?}");
        assert_eq!(fetched.refresh_hint_seconds, Some(300), "{profile:?}");
        let url = format!("https://127.0.0.1:{port}/bundles/never.example");
        fetch_bundle(&url, "never.example", profile).expect_err("no such trust domain");
    }
    Ok(())
}
