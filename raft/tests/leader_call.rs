//! Leader calls on real replicas ([`federator_raft::Replica`]) over the mTLS transport: a
//! call made on a follower is answered by the leader's handler, a call made on the leader
//! is handled there, a replica that does not lead refuses forwarded calls naming the
//! leader, and a group without handlers fails calls with a clear error. Certificates come
//! from a throwaway CA made with rcgen.

mod support;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use federator_raft::types::NodeId;
use federator_raft::{LeaderHandler, ReplicaError, RestoreError, StateMachine};
use support::{Pki, network, start_group};
use tonic::Code;

type Running = support::Running<Nothing>;

// === application ===

/// A state machine with nothing in it: leader calls do not touch the log.
#[derive(Default)]
struct Nothing;

impl StateMachine for Nothing {
    fn apply(&mut self, _log_index: u64, _command: &[u8]) -> Vec<u8> {
        Vec::new()
    }

    fn snapshot(&self) -> Vec<u8> {
        Vec::new()
    }

    fn restore(&mut self, _snapshot: &[u8]) -> Result<(), RestoreError> {
        Ok(())
    }
}

/// Answers `<node id>:<request>`, so the caller sees which replica handled the call.
struct Echo(NodeId);

impl LeaderHandler for Echo {
    fn handle(&self, request: Vec<u8>) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send + 'static>> {
        let mut response = format!("{}:", self.0).into_bytes();
        Box::pin(async move {
            response.extend(request);
            response
        })
    }
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_calls_are_answered_by_the_leaders_handler() {
    let pki = Pki::new();
    let (group, leader_id) = start_group::<Nothing>(&pki, &[1, 2, 3]).await;
    // Handlers go in after the transport is served: the service sees them all the same.
    for running in &group {
        let id = running.replica.id();
        running.replica.set_leader_handler(Arc::new(Echo(id))).expect("install handler");
    }
    let leader = group.iter().find(|r| r.replica.id() == leader_id).expect("leader runs");
    let followers: Vec<&Running> = group.iter().filter(|r| r.replica.id() != leader_id).collect();

    // On the leader: handled locally, nothing forwarded.
    let answered = leader.replica.call_leader(b"on-leader".to_vec()).await.expect("leader call");
    assert_eq!(answered, format!("{leader_id}:on-leader").into_bytes());
    assert_eq!(leader.replica.consensus_metrics().forwarded_leader_calls.get(), 0);

    // On a follower: forwarded to and answered by the leader's handler.
    for follower in &followers {
        let id = follower.replica.id();
        let answered = follower
            .replica
            .call_leader(format!("from-{id}").into_bytes())
            .await
            .expect("forwarded leader call");
        assert_eq!(
            String::from_utf8(answered).expect("utf-8"),
            format!("{leader_id}:from-{id}"),
            "follower {id}'s call must be answered by leader {leader_id}"
        );
        assert_eq!(follower.replica.consensus_metrics().forwarded_leader_calls.get(), 1);
    }

    // A follower's transport refuses a leader call, naming the leader, although it has a
    // handler.
    let status = network(&pki)
        .leader_call(followers[0].replica.raft_addr(), b"misrouted".to_vec())
        .await
        .expect_err("a follower does not serve leader calls");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(
        status.metadata().get("x-leader-id").and_then(|v| v.to_str().ok()),
        Some(leader_id.to_string().as_str())
    );
    assert_eq!(
        status.metadata().get("x-leader-addr").and_then(|v| v.to_str().ok()),
        Some(leader.replica.raft_addr())
    );

    // The handler is installed once.
    let error =
        leader.replica.set_leader_handler(Arc::new(Echo(99))).expect_err("second handler refused");
    assert!(matches!(error, ReplicaError::LeaderHandlerAlreadySet), "{error}");
    let answered = leader.replica.call_leader(b"again".to_vec()).await.expect("leader call");
    assert_eq!(answered, format!("{leader_id}:again").into_bytes(), "the first handler stays");

    for running in &group {
        running.replica.shutdown().await.expect("shutdown");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_calls_without_a_handler_fail_clearly() {
    let pki = Pki::new();
    let (group, leader_id) = start_group::<Nothing>(&pki, &[1, 2]).await;
    let leader = group.iter().find(|r| r.replica.id() == leader_id).expect("leader runs");
    let follower = group.iter().find(|r| r.replica.id() != leader_id).expect("follower runs");
    // Only the follower has a handler: it does not lead, so it does not help.
    let follower_id = follower.replica.id();
    follower.replica.set_leader_handler(Arc::new(Echo(follower_id))).expect("install handler");

    let error = leader.replica.call_leader(b"x".to_vec()).await.expect_err("no handler here");
    assert!(
        matches!(error, ReplicaError::NoLeaderHandler { replica } if replica == leader_id),
        "{error}"
    );
    let message = error.to_string();
    assert!(message.contains("no leader handler installed"), "{message}");

    let error = follower.replica.call_leader(b"x".to_vec()).await.expect_err("none on leader");
    assert!(
        matches!(error, ReplicaError::NoLeaderHandler { replica } if replica == leader_id),
        "{error}"
    );

    // On the wire: the leader answers Unimplemented.
    let status = network(&pki)
        .leader_call(leader.replica.raft_addr(), b"x".to_vec())
        .await
        .expect_err("no handler on the leader");
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert!(status.message().contains("no leader handler installed"), "{status:?}");

    for running in &group {
        running.replica.shutdown().await.expect("shutdown");
    }
}
