//! Fuzzes the federation state's snapshot decoding (`StateMachine::restore` of
//! `FederationState`, which reads snapshot formats 2 to 4): no input may panic (a refusal
//! is fine), and a state that restores must snapshot to bytes that restore to the same
//! state, with the same digest, and snapshot to the same bytes again (the encoding is
//! canonical, so replicas that install each other's snapshots stay byte-identical).
//!
//! Run with `cargo +nightly fuzz run snapshot_decode` from `federator/`.

#![no_main]

use federator::state::FederationState;
use federator_raft::StateMachine as _;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut state = FederationState::default();
    if state.restore(data).is_err() {
        // A refused snapshot leaves the state as it was.
        assert_eq!(
            state,
            FederationState::default(),
            "a refused snapshot must not change the state"
        );
        return;
    }
    let snapshot = state.snapshot();
    let mut again = FederationState::default();
    again.restore(&snapshot).expect("a restored state's snapshot must restore");
    assert_eq!(again, state, "the snapshot must restore to the same state");
    assert_eq!(again.snapshot(), snapshot, "the snapshot encoding must be canonical");
    assert_eq!(again.digest(), state.digest());
});
