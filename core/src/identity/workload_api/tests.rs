//! Tests of the Workload API client that need no Workload API server: the addresses, and
//! the SVID source when nothing serves the socket. The tests against a server — the chaos
//! harness's fake SPIRE agent — are in `tests/tests/workload_api.rs`, and those of the
//! agent's bundle source in `federator/src/agent/sources/bundle/tests.rs`.

use std::time::Duration;

use proptest::prelude::*;

use super::*;
use crate::identity::CertifiedIdentity;

// === addresses ===

#[test]
fn addresses_parse_in_every_accepted_form() {
    let unix = |p: &str| Ok(WorkloadApiAddress::Unix(PathBuf::from(p)));
    let tcp = |a: &str| Ok(WorkloadApiAddress::Tcp(a.parse().expect("socket address")));
    for (text, expected) in [
        ("unix:///run/spire/agent.sock", unix("/run/spire/agent.sock")),
        ("unix:/run/spire/agent.sock", unix("/run/spire/agent.sock")),
        ("/run/spire/agent.sock", unix("/run/spire/agent.sock")),
        ("agent.sock", unix("agent.sock")),
        ("./a:b", unix("./a:b")),
        ("tcp://127.0.0.1:8081", tcp("127.0.0.1:8081")),
        ("tcp:127.0.0.1:8081", tcp("127.0.0.1:8081")),
        ("tcp://127.0.0.1:8081/", tcp("127.0.0.1:8081")),
        ("tcp://[::1]:8081", tcp("[::1]:8081")),
    ] {
        assert_eq!(WorkloadApiAddress::parse(text), expected, "{text}");
    }
}

#[test]
fn bad_addresses_are_refused_with_the_rule() {
    for (text, rule) in [
        ("", "is empty"),
        ("unix://host/run/agent.sock", "takes no host"),
        ("unix:run/agent.sock", "absolute path"),
        ("unix:", "absolute path"),
        ("unix:///", "names no socket"),
        ("unix:///run/a.sock?x=1", "no query"),
        ("unix:///run/a.sock#f", "no query"),
        ("unix:///run/a%20b.sock", "percent-encoding"),
        ("tcp://localhost:8081", "IP address"),
        ("tcp://127.0.0.1", "IP address"),
        ("tcp://127.0.0.1:0", "port other than 0"),
        ("tcp://192.0.2.1:8081", "loopback"),
        ("tcp://[2001:db8::1]:8081", "loopback"),
        ("http://127.0.0.1:8081", "unsupported scheme \"http\""),
        ("https://spire.example/agent", "unsupported scheme \"https\""),
        ("dns:///spire:8081", "unsupported scheme \"dns\""),
        ("file:///run/agent.sock", "unsupported scheme \"file\""),
        ("a:b", "unsupported scheme \"a\""),
    ] {
        let error = WorkloadApiAddress::parse(text).expect_err(text).to_string();
        assert!(error.contains(rule), "{text}: {rule:?} not in {error:?}");
    }
}

#[test]
fn an_address_defaults_to_the_environment_s() {
    let parsed = WorkloadApiAddress::configured_or_env(None, Some("unix:///run/a.sock"));
    assert_eq!(parsed, Ok(WorkloadApiAddress::Unix("/run/a.sock".into())));
    let configured =
        WorkloadApiAddress::configured_or_env(Some("/run/b.sock"), Some("unix:///run/a.sock"));
    assert_eq!(configured, Ok(WorkloadApiAddress::Unix("/run/b.sock".into())), "the file wins");
    let error = WorkloadApiAddress::configured_or_env(None, None).expect_err("neither").to_string();
    assert!(error.contains("SPIFFE_ENDPOINT_SOCKET is not set"), "{error}");
    let error =
        WorkloadApiAddress::configured_or_env(None, Some("http://x")).expect_err("bad").to_string();
    assert!(
        error.starts_with("SPIFFE_ENDPOINT_SOCKET=\"http://x\": unsupported scheme"),
        "{error}"
    );
}

#[test]
fn relative_paths_are_taken_relative_to_a_base() {
    let base = Path::new("/etc/federator");
    let relative = WorkloadApiAddress::parse("run/agent.sock").expect("path");
    assert_eq!(
        relative.relative_to(base),
        WorkloadApiAddress::Unix("/etc/federator/run/agent.sock".into())
    );
    let absolute = WorkloadApiAddress::parse("unix:///run/agent.sock").expect("uri");
    assert_eq!(absolute.clone().relative_to(base), absolute);
}

#[test]
fn a_path_that_no_unix_uri_holds_prints_as_a_path() {
    for text in ["/%", "/run/a?b.sock", "/run/a#b.sock", "/", "agent.sock"] {
        let address = WorkloadApiAddress::parse(text).expect(text);
        assert_eq!(address.to_string(), text);
    }
}

/// A path segment: letters, digits and `._-`.
fn segment() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9._-]{1,12}"
}

proptest! {
    #[test]
    fn the_three_unix_forms_are_one_address(segments in prop::collection::vec(segment(), 1..5)) {
        let path = format!("/{}", segments.join("/"));
        let expected = WorkloadApiAddress::Unix(PathBuf::from(&path));
        prop_assert_eq!(WorkloadApiAddress::parse(&format!("unix://{path}")), Ok(expected.clone()));
        prop_assert_eq!(WorkloadApiAddress::parse(&format!("unix:{path}")), Ok(expected.clone()));
        prop_assert_eq!(WorkloadApiAddress::parse(&path), Ok(expected.clone()));
        prop_assert_eq!(expected.to_string(), format!("unix://{path}"));
    }

    #[test]
    fn loopback_tcp_addresses_round_trip(port in 1u16.., v6 in any::<bool>()) {
        let text = if v6 { format!("tcp://[::1]:{port}") } else { format!("tcp://127.0.0.1:{port}") };
        let address = WorkloadApiAddress::parse(&text).expect("loopback");
        prop_assert_eq!(address.to_string(), text);
    }

    #[test]
    fn every_address_parsed_prints_back_to_itself(text in "\\PC{0,40}") {
        if let Ok(address) = WorkloadApiAddress::parse(&text) {
            prop_assert_eq!(WorkloadApiAddress::parse(&address.to_string()), Ok(address));
        }
    }

    #[test]
    fn other_schemes_are_refused(
        scheme in "(http|https|grpc|dns|file|vsock|npipe|[a-z][a-z0-9+.-]{0,8})",
        rest in "[a-zA-Z0-9/.:]{0,20}",
    ) {
        prop_assume!(scheme != "unix" && scheme != "tcp");
        let text = format!("{scheme}:{rest}");
        let error = WorkloadApiAddress::parse(&text).expect_err("refused");
        prop_assert!(error.to_string().contains("unsupported scheme"), "{}", error);
    }
}

// === the SVID source ===

#[tokio::test]
async fn no_server_is_an_error_that_says_why() {
    let dir = tempfile::tempdir().expect("dir");
    let address = WorkloadApiAddress::Unix(dir.path().join("none.sock"));
    let error = CertifiedIdentity::from_workload_api(address, None, Duration::from_millis(300))
        .await
        .expect_err("no server");
    let message = error.to_string();
    assert!(message.contains("svid.workload_api"), "{message}");
    assert!(message.contains("cannot connect"), "{message}");
}
