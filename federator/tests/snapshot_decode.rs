//! Decoding federation snapshots from outside input (a replica's snapshot, an operator's
//! restore upload): `StateMachine::restore` of `FederationState` refuses what is not a
//! snapshot without panicking and without touching the state, and a state that restores
//! snapshots to bytes that restore to the same state (the encoding is canonical).
//!
//! Only the public API: the state is populated through commands, as the log does. The
//! cargo-fuzz target `snapshot_decode` checks the same on fuzzer input.

use std::sync::LazyLock;

use federator::state::{Command, FederationState, command_result};
use federator_raft::StateMachine as _;
use proptest::prelude::*;

/// A state with something in most parts: a replica, probes, a join token, an accepted
/// audit event, a refusal and a staged restore.
static POPULATED: LazyLock<FederationState> = LazyLock::new(|| {
    let mut state = FederationState::default();
    let commands = [
        Command::RegisterReplica {
            id: 1,
            raft_addr: "127.0.0.1:7001".into(),
            api_addr: "127.0.0.1:8443".into(),
        },
        Command::PutProbe { key: "probe/a".into(), value: b"one".to_vec() },
        Command::PutProbe { key: "probe/b".into(), value: vec![0xff; 40] },
        Command::CreateToken {
            secret_hash: "ab".repeat(32),
            cluster: "cluster-a".into(),
            trust_domain: "a.example".into(),
            expires_at: 2_000_000_000,
            now: 1_800_000_000,
        },
        Command::RecordRefusal {
            actor: "anonymous@127.0.0.1".into(),
            action: "join".into(),
            target: "a.example".into(),
            reason: "unknown token".into(),
            now: 1_800_000_001,
        },
        Command::RestoreBegin { id: 7, size: 16, sha256: "00".repeat(32) },
        Command::RestoreChunk { id: 7, offset: 0, data: b"staged".to_vec() },
    ];
    for (index, command) in (1..).zip(commands) {
        let response = state.apply(index, &command.encode());
        command_result(&response).expect("the result decodes").expect("the command applies");
    }
    state
});

/// The populated state's snapshot in every format this build reads: 4 (the current
/// one), 3 (without the refusals after the staged restore) and 2 (without both).
static SEEDS: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let state = &*POPULATED;
    let current = state.snapshot();
    assert_eq!(current.first(), Some(&4), "snapshot format 4");
    let format_3 = postcard::to_extend(state, vec![3])
        .and_then(|out| postcard::to_extend(&state.restore, out))
        .expect("encodes");
    let format_2 = postcard::to_extend(state, vec![2]).expect("encodes");
    vec![current, format_3, format_2]
});

/// Restores `data` over the populated state: a refusal leaves it as it was; a state that
/// restores round-trips through its snapshot.
fn check(data: &[u8]) -> Result<(), TestCaseError> {
    let mut state = POPULATED.clone();
    if let Err(error) = state.restore(data) {
        prop_assert!(!error.to_string().is_empty());
        prop_assert_eq!(&state, &*POPULATED, "a refused snapshot must not change the state");
        return Ok(());
    }
    let snapshot = state.snapshot();
    let mut again = FederationState::default();
    prop_assert!(again.restore(&snapshot).is_ok(), "a restored state's snapshot must restore");
    prop_assert_eq!(&again, &state, "the snapshot must restore to the same state");
    prop_assert_eq!(again.snapshot(), snapshot, "the encoding must be canonical");
    prop_assert_eq!(again.digest(), state.digest());
    Ok(())
}

#[test]
fn a_populated_snapshot_round_trips_in_every_format() {
    let state = &*POPULATED;
    assert!(state.restore.is_some() && !state.tokens.is_empty() && !state.probes.is_empty());
    assert_eq!(state.audit.newest(10).len(), 1, "the token's creation");
    assert_eq!(state.audit.newest_refusals(10).len(), 1, "the refused join");
    for seed in SEEDS.iter() {
        let mut restored = FederationState::default();
        restored.restore(seed).expect("restores");
        assert_eq!(restored.probes, state.probes);
        assert_eq!(restored.tokens, state.tokens);
        assert_eq!(restored.audit.newest(10), state.audit.newest(10));
        check(seed).expect("round-trips");
    }
    let mut restored = FederationState::default();
    restored.restore(&SEEDS[0]).expect("restores");
    assert_eq!(&restored, state, "format 4 holds everything");
}

#[test]
fn an_empty_snapshot_is_the_empty_state() {
    let mut state = POPULATED.clone();
    state.restore(&[]).expect("restores");
    assert_eq!(state, FederationState::default());
}

#[test]
fn every_truncation_of_a_snapshot_is_refused() {
    for seed in SEEDS.iter() {
        for len in 1..seed.len() {
            let mut state = POPULATED.clone();
            let error = state.restore(&seed[..len]).expect_err("a truncated snapshot");
            assert!(error.to_string().contains("does not decode"), "{len} bytes: {error}");
            assert_eq!(state, *POPULATED, "{len} bytes: the state is untouched");
        }
    }
}

#[test]
fn unknown_formats_are_refused_naming_the_format() {
    for format in [0_u8, 1, 6, 7, 99, 255] {
        let mut data = SEEDS[0].clone();
        data[0] = format;
        let mut state = POPULATED.clone();
        let error = state.restore(&data).expect_err("an unknown format");
        let message = error.to_string();
        assert!(message.contains(&format!("format {format}")), "{message}");
        assert!(message.contains("reads formats 2 to 5"), "{message}");
        assert_eq!(state, *POPULATED);
    }
}

#[test]
fn lengths_beyond_the_input_are_refused_without_allocating_them() {
    // Format 4, then a map of replicas claiming u64::MAX entries (a varint of ten bytes).
    let mut data = vec![4_u8];
    data.extend([0xff; 9]);
    data.push(0x01);
    let mut state = FederationState::default();
    let error = state.restore(&data).expect_err("no such map fits");
    assert!(error.to_string().contains("does not decode"), "{error}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_are_refused_or_round_trip(
        format in prop_oneof![Just(2_u8), Just(3), Just(4), any::<u8>()],
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        check(&body)?;
        let data: Vec<u8> = std::iter::once(format).chain(body).collect();
        check(&data)?;
    }

    #[test]
    fn mutated_snapshots_are_refused_or_round_trip(
        seed in 0_usize..3,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0_u8..3), 1..8),
    ) {
        let mut data = SEEDS[seed].clone();
        for (at, byte, kind) in edits {
            let i = at.index(data.len());
            match kind {
                0 => data[i] = byte,
                1 => data.insert(i, byte),
                _ if data.len() > 1 => {
                    data.remove(i);
                }
                _ => {}
            }
        }
        check(&data)?;
    }
}
