//! Golden fixtures of the replicated formats: one encoded command of every kind and one
//! encoded state snapshot, as this version writes them, under `tests/golden/`.
//!
//! A replica of the next version must apply the log and install the snapshots this one
//! wrote, and a replica of this version must not meet a command it cannot decode in a
//! mixed group unless the feature that proposes it waits for every voter. So these files
//! are never regenerated to make a test pass: a change that fails here changes the wire
//! format, and needs a new command kind (appended at the end of `Command`), a new
//! snapshot format number, or an explicit migration — see `docs/upgrading.md`. New kinds
//! add their own fixture: `FEDERATOR_BLESS_GOLDEN=1 cargo test -p federator --test
//! golden` writes the missing files (and never overwrites one).

use std::path::{Path, PathBuf};

use federator::service::{
    Endpoint, EndpointPort, ExportMode, ExportScope, Locality, Protocol, ServiceExport, ServiceKey,
    ServicePort,
};
use federator::state::{
    COMMAND_KINDS, Command, FederationState, PolicyUpdate, RefusalReport, RemovedDomain,
    UNGATED_COMMAND_KINDS, required_version,
};
use federator_raft::StateMachine;

const NOW: i64 = 1_780_000_000;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn key() -> ServiceKey {
    ServiceKey { namespace: "shop".into(), name: "cart".into() }
}

fn locality() -> Locality {
    Locality { region: "eu-west".into(), zone: "eu-west-1a".into() }
}

/// One command of every kind, with every field set to something other than its default.
fn commands() -> Vec<(&'static str, Command)> {
    let export = ServiceExport {
        key: key(),
        ports: vec![ServicePort {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Tcp,
            app_protocol: "http".into(),
        }],
        endpoints: vec![Endpoint {
            address: "192.0.2.10".parse().expect("address"),
            ports: vec![EndpointPort { name: "http".into(), port: 18080 }],
            zone: "eu-west-1a".into(),
            region: "eu-west".into(),
            weight: 3,
            ready: true,
        }],
        identities: vec!["spiffe://a.example/ns/shop/sa/cart".into()],
        scope: ExportScope::Clusters(["cluster-b".to_string()].into()),
        mode: ExportMode::Direct,
    };
    vec![
        (
            "register-replica",
            Command::RegisterReplica {
                id: 2,
                raft_addr: "192.0.2.2:7001".into(),
                api_addr: "192.0.2.2:7101".into(),
            },
        ),
        ("unregister-replica", Command::UnregisterReplica { id: 3 }),
        ("put-probe", Command::PutProbe { key: "probe/a".into(), value: b"v1".to_vec() }),
        (
            "create-token",
            Command::CreateToken {
                secret_hash: "ab".repeat(32),
                cluster: "cluster-a".into(),
                trust_domain: "a.example".into(),
                expires_at: NOW + 3_600,
                now: NOW,
            },
        ),
        (
            "join",
            Command::Join {
                secret_hash: "cd".repeat(32),
                cluster: "cluster-a".into(),
                trust_domain: "a.example".into(),
                agent_id: "spiffe://a.example/federator/agent".into(),
                bundle_json: br#"{"keys":[]}"#.to_vec(),
                now: NOW,
            },
        ),
        (
            "publish-bundle",
            Command::PublishBundle {
                cluster: "cluster-a".into(),
                bundle_json: br#"{"keys":[],"spiffe_sequence":2}"#.to_vec(),
                agent_chain: vec![vec![0x30, 0x82, 0x01], vec![0x30, 0x82, 0x02]],
                force: true,
                now: NOW,
            },
        ),
        (
            "remove-member",
            Command::RemoveMember { cluster: "cluster-c".into(), actor: "admin".into(), now: NOW },
        ),
        (
            "ack-bundle",
            Command::AckBundle {
                cluster: "cluster-b".into(),
                trust_domain: "a.example".into(),
                sequence: 2,
                now: NOW,
            },
        ),
        (
            "export-service",
            Command::ExportService { cluster: "cluster-a".into(), export, now: NOW },
        ),
        (
            "unexport-service",
            Command::UnexportService { cluster: "cluster-a".into(), key: key(), now: NOW },
        ),
        (
            "grant-lease",
            Command::GrantLease {
                cluster: "cluster-a".into(),
                ttl_secs: 10,
                locality: locality(),
                now: NOW,
            },
        ),
        (
            "revoke-lease",
            Command::RevokeLease { cluster: "cluster-a".into(), lease_id: 7, now: NOW },
        ),
        (
            "expire-lease",
            Command::ExpireLease { cluster: "cluster-a".into(), lease_id: 8, now: NOW },
        ),
        (
            "record-refusal",
            Command::RecordRefusal {
                actor: "cluster-b".into(),
                action: "publish_bundle".into(),
                target: "a.example".into(),
                reason: "not its trust domain".into(),
                now: NOW,
            },
        ),
        ("restore-begin", Command::RestoreBegin { id: 11, size: 4_096, sha256: "ef".repeat(32) }),
        ("restore-chunk", Command::RestoreChunk { id: 11, offset: 1_024, data: vec![1, 2, 3, 4] }),
        ("restore-commit", Command::RestoreCommit { id: 11, force: true, now: NOW }),
        (
            "restore-abort",
            Command::RestoreAbort { id: 11, reason: "upload cancelled".into(), now: NOW },
        ),
        (
            "record-refusals",
            Command::RecordRefusals {
                refusals: vec![RefusalReport {
                    actor: "anonymous 127.0.0.2".into(),
                    action: "join".into(),
                    target: String::new(),
                    reason: "unknown token".into(),
                    count: 20,
                    first_at: NOW - 5,
                    last_at: NOW,
                }],
            },
        ),
        (
            "update-member-policy",
            Command::UpdateMemberPolicy {
                cluster: "cluster-a".into(),
                update: PolicyUpdate {
                    grant: vec!["shop".into()],
                    revoke: vec!["legacy".into()],
                    locality: Some(locality()),
                },
                now: NOW,
            },
        ),
        (
            "update-settings",
            Command::UpdateSettings {
                open_exports: Some(false),
                allow_loopback_endpoints: Some(true),
                now: NOW,
            },
        ),
        (
            "revoke-token",
            Command::RevokeToken {
                secret_hash: "ab".repeat(32),
                actor: "spiffe://federation.test/admin".into(),
                now: NOW,
            },
        ),
        (
            "remove-member-serving-empty",
            Command::RemoveMemberServingEmpty {
                cluster: "cluster-a".into(),
                actor: "admin".into(),
                now: NOW,
                serve_until: NOW + 7 * 86_400,
            },
        ),
    ]
}

/// A state with something in most of its parts, built by applying commands.
fn state() -> FederationState {
    let mut state = FederationState::default();
    let commands = [
        Command::RegisterReplica {
            id: 1,
            raft_addr: "192.0.2.1:7001".into(),
            api_addr: "192.0.2.1:7101".into(),
        },
        Command::PutProbe { key: "probe/a".into(), value: b"v1".to_vec() },
        Command::CreateToken {
            secret_hash: "ab".repeat(32),
            cluster: "cluster-a".into(),
            trust_domain: "a.example".into(),
            expires_at: NOW + 3_600,
            now: NOW,
        },
        Command::RecordRefusal {
            actor: "cluster-b".into(),
            action: "publish_bundle".into(),
            target: "a.example".into(),
            reason: "not its trust domain".into(),
            now: NOW,
        },
        Command::UpdateSettings {
            open_exports: Some(true),
            allow_loopback_endpoints: Some(false),
            now: NOW,
        },
        Command::UpdateMemberPolicy {
            cluster: "cluster-a".into(),
            update: PolicyUpdate {
                grant: vec!["shop".into()],
                revoke: Vec::new(),
                locality: Some(locality()),
            },
            now: NOW,
        },
    ];
    for (index, command) in (1u64..).zip(commands) {
        let _ = state.apply_command(index, command);
    }
    state
}

/// The fixture `name`, written first when blessing and it does not exist.
fn fixture(name: &str, current: &[u8]) -> Vec<u8> {
    let path = dir().join(name);
    if !path.exists() && std::env::var_os("FEDERATOR_BLESS_GOLDEN").is_some() {
        std::fs::create_dir_all(dir()).expect("golden directory");
        std::fs::write(&path, current).expect("write fixture");
    }
    std::fs::read(&path).unwrap_or_else(|error| {
        panic!(
            "golden fixture {} is missing ({error}); a new command kind adds its own with \
             FEDERATOR_BLESS_GOLDEN=1",
            path.display()
        )
    })
}

#[test]
fn every_command_kind_decodes_from_its_fixture_and_encodes_to_it() {
    let commands = commands();
    for (name, command) in &commands {
        let golden = fixture(&format!("command-{name}.bin"), &command.encode());
        let decoded = Command::decode(&golden)
            .unwrap_or_else(|error| panic!("command-{name}.bin no longer decodes: {error}"));
        assert_eq!(&decoded, command, "command-{name}.bin decodes to another command");
        assert_eq!(command.encode(), golden, "{name} encodes differently from its fixture");
    }
    // Every fixture in the directory is a command this build knows.
    let names: Vec<String> = std::fs::read_dir(dir())
        .expect("golden directory")
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("command-"))
        .collect();
    assert_eq!(names.len(), commands.len(), "one fixture per command kind: {names:?}");
    assert_eq!(
        u32::try_from(commands.len()).ok(),
        Some(COMMAND_KINDS),
        "COMMAND_KINDS counts every kind: a new kind raises it (and the supported version)"
    );
}

#[test]
fn kinds_from_before_the_gate_need_no_version_and_newer_ones_need_their_own() {
    for (kind, (name, command)) in (0u32..).zip(commands()) {
        let required = required_version(&command.encode());
        if kind < UNGATED_COMMAND_KINDS {
            assert_eq!(required, 0, "{name} is applied by every build");
        } else {
            assert_eq!(required, kind + 1, "{name} waits for every voter to apply it");
            assert!(required <= FederationState::supported_version(), "{name}");
        }
    }
}

#[test]
fn the_snapshot_fixture_installs_and_encodes_back_to_itself() {
    let current = state().snapshot();
    let golden = fixture("snapshot-format-4.bin", &current);
    let mut restored = FederationState::default();
    restored.restore(&golden).expect("the snapshot fixture installs");
    assert_eq!(restored.snapshot(), golden, "an installed snapshot encodes back to itself");
    assert_eq!(current, golden, "this build writes the snapshot format of the fixture");
    assert_eq!(restored.digest(), state().digest());
}

#[test]
fn the_format_5_snapshot_fixture_installs_and_encodes_back_to_itself() {
    // Format 5 is written only with a removed trust domain served empty.
    let mut state = state();
    state.removed.insert(
        "b.example".into(),
        RemovedDomain {
            trust_domain: "b.example".into(),
            cluster: "cluster-b".into(),
            sequence: 4,
            removed_at: NOW,
            serve_until: NOW + 7 * 86_400,
        },
    );
    let current = state.snapshot();
    assert_eq!(current.first(), Some(&5));
    let golden = fixture("snapshot-format-5.bin", &current);
    let mut restored = FederationState::default();
    restored.restore(&golden).expect("the snapshot fixture installs");
    assert_eq!(restored.snapshot(), golden, "an installed snapshot encodes back to itself");
    assert_eq!(current, golden, "this build writes the snapshot format of the fixture");
    assert_eq!(restored.removed, state.removed);
}

#[test]
fn a_replica_refuses_to_apply_a_command_it_does_not_know() {
    let state = FederationState::default();
    // A kind after the last one this build knows, as a newer build would propose.
    let newer = postcard::to_stdvec(&(u32::try_from(commands().len()).expect("kinds"), 5u8))
        .expect("encode");
    let refused = state.check_applicable(&newer).expect_err("an unknown kind is not applicable");
    assert!(refused.to_string().contains("newer build"), "{refused}");
    for (name, command) in commands() {
        assert_eq!(state.check_applicable(&command.encode()), Ok(()), "{name}");
    }
}
