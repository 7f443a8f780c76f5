//! Why a session with a replica failed ([`SessionError`]), and what a refusal asks of
//! the operator ([`refusal_next_step`]).
//!
//! The session loop logs every failure with its causes ([`SessionError::describe`]) and
//! moves to the next replica. The federation refusing the agent — permission denied or
//! unauthenticated, answered to a call or to the lease keeper: a removed cluster, a used
//! or expired token, an SVID that does not verify — is told apart by its variant
//! ([`SessionError::refusal`]): nothing changes until an operator acts.

use std::path::{Path, PathBuf};

use tonic::Code;

use crate::agent::deadlines::ReplicaFault;
use crate::agent::lease::LeaseError;

/// Why a session with a replica failed. Its display is the outermost step (`connect to
/// r1:8443`, `publish bundle`); [`SessionError::describe`] adds the causes.
#[derive(Debug, thiserror::Error)]
pub(super) enum SessionError {
    /// `federation_ca` names a file that cannot be read.
    #[error("federation_ca {}", path.display())]
    FederationCaFile {
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        #[source]
        source: std::io::Error,
    },
    /// No federation CA is known: none configured, and no membership or token gives one.
    #[error("no federation CA: set federation_ca or join with a token")]
    NoFederationCa,
    /// The federation CA is not PEM.
    #[error("federation CA")]
    FederationCaPem(#[source] rustls_pki_types::pem::Error),
    /// A certificate of the federation CA cannot verify replicas.
    #[error("federation CA")]
    FederationCaCert(#[source] rustls::Error),
    /// The client's TLS cannot be set up.
    #[error(transparent)]
    Tls(rustls::Error),
    /// The replica's address is no endpoint.
    #[error(transparent)]
    Endpoint(tonic::transport::Error),
    /// Connecting to the replica failed (TCP, TLS, HTTP/2).
    #[error("connect to {addr}")]
    Connect {
        /// The replica.
        addr: String,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// Connecting to the replica took longer than its deadline.
    #[error("connect to {addr}")]
    ConnectTimeout {
        /// The replica.
        addr: String,
        /// The deadline missed.
        #[source]
        fault: ReplicaFault,
    },
    /// A join without a token (cannot happen: the agent joins only with one).
    #[error("no join token")]
    NoJoinToken,
    /// The own bundle source stopped before giving the bundle to join with.
    #[error("the bundle source stopped")]
    BundleSourceStopped(#[source] tokio::sync::watch::error::RecvError),
    /// The replica answered `call` (join, publish bundle, export, unexport, watch) with
    /// an error: the federation's refusals among them.
    #[error("{call}")]
    Answered {
        /// The call.
        call: &'static str,
        /// The replica's answer.
        #[source]
        status: tonic::Status,
    },
    /// A call, or the next message of a watch batch, got no answer in time.
    #[error(transparent)]
    Fault(#[from] ReplicaFault),
    /// Renewing or granting the lease at the start of the session failed.
    #[error(transparent)]
    Lease(#[from] LeaseError),
    /// The lease keeper stopped: it cannot keep the lease alive through this replica.
    #[error("lease")]
    KeeperStopped(#[source] LeaseError),
    /// The lease keeper's task failed.
    #[error("the lease keeper stopped")]
    KeeperFailed(#[source] tokio::task::JoinError),
    /// No lease keeper once the lease was granted (cannot happen).
    #[error("no lease keeper")]
    NoLeaseKeeper,
    /// The watch stream broke (a connection closed for an unanswered HTTP/2 ping too).
    /// Not a refusal, whatever its status.
    #[error("the watch stream broke: {:?}: {}", .0.code(), .0.message())]
    WatchBroke(tonic::Status),
    /// Every sink task stopped.
    #[error("the sink tasks stopped")]
    SinksStopped,
    /// A state file (the membership, the view, what was published) cannot be written.
    #[error(transparent)]
    StateFile(#[from] std::io::Error),
}

impl SessionError {
    /// The federation's refusal of this agent, when this failure is one: a replica's
    /// answer of permission denied or unauthenticated, to a call of the session or to the
    /// lease keeper.
    pub(super) fn refusal(&self) -> Option<&tonic::Status> {
        let status = match self {
            Self::Answered { status, .. } => status,
            Self::Lease(error) | Self::KeeperStopped(error) => error.status()?,
            _ => return None,
        };
        matches!(status.code(), Code::PermissionDenied | Code::Unauthenticated).then_some(status)
    }

    /// This failure with its causes, outermost first, each after a `: ` (`connect to
    /// r1:8443: transport error: ...`): what the log and the status show.
    pub(super) fn describe(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(error) = cause {
            text.push_str(": ");
            text.push_str(&error.to_string());
            cause = error.source();
        }
        text
    }
}

/// When `error` is the federation refusing the agent (permission denied,
/// unauthenticated: see [`SessionError::refusal`]), what the operator should do
/// (`joined`: the agent has a membership; `token_file`: where it takes new tokens from);
/// `None` for any other failure, retried as usual.
pub(super) fn refusal_next_step(
    error: &SessionError,
    joined: bool,
    token_file: Option<&Path>,
) -> Option<String> {
    error.refusal()?;
    let give = token_file.map_or_else(
        || "restart the agent with it (--token or FEDERATOR_JOIN_TOKEN)".to_string(),
        |path| {
            format!("write it to {}: the agent joins with it, no restart needed", path.display())
        },
    );
    Some(if joined {
        format!(
            "if this cluster was removed (`federator cluster remove`), create a new token with \
             `federator token create` and {give} (it republishes its bundle and exports and \
             acknowledges every bundle again; nothing to delete); if its SVID does not verify, \
             publish the bundle that certifies it"
        )
    } else {
        format!(
            "the join token was refused (used, expired, or for another cluster): create a new \
             one with `federator token create` and {give}"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_say_what_to_do_and_other_failures_are_retried_as_usual() {
        let refused = |code| SessionError::Answered {
            call: "session",
            status: tonic::Status::new(code, "no"),
        };
        let file = std::path::Path::new("/etc/federator/join-token");
        let removed = refusal_next_step(&refused(Code::PermissionDenied), true, Some(file))
            .expect("a refusal");
        assert!(removed.contains("federator token create"), "{removed}");
        assert!(removed.contains("write it to /etc/federator/join-token"), "{removed}");
        assert!(removed.contains("no restart needed"), "{removed}");
        let token = refusal_next_step(&refused(Code::Unauthenticated), false, None).expect("one");
        assert!(token.contains("join token was refused"), "{token}");
        assert!(token.contains("--token"), "{token}");
        // Through a lease keeper's error too.
        let keeper = || LeaseError::Answered {
            call: "keep-alive",
            status: tonic::Status::permission_denied("not a member"),
        };
        assert!(refusal_next_step(&SessionError::Lease(keeper()), true, Some(file)).is_some());
        let stopped = SessionError::KeeperStopped(keeper());
        assert!(refusal_next_step(&stopped, true, Some(file)).is_some());
        for code in [Code::Unavailable, Code::DeadlineExceeded, Code::InvalidArgument] {
            assert_eq!(refusal_next_step(&refused(code), true, Some(file)), None, "{code:?}");
        }
        assert_eq!(refusal_next_step(&SessionError::NoFederationCa, true, None), None);
        // A watch stream that broke is no refusal, whatever its status.
        let broke = SessionError::WatchBroke(tonic::Status::permission_denied("no"));
        assert_eq!(refusal_next_step(&broke, true, None), None);
    }

    #[test]
    fn a_failure_is_described_with_its_causes() {
        let keeper = SessionError::KeeperStopped(LeaseError::Answered {
            call: "keep-alive",
            status: tonic::Status::unavailable("no leader"),
        });
        let described = keeper.describe();
        assert!(
            described.starts_with("lease: keep-alive: Unavailable: no leader: "),
            "{described}"
        );
        let missed = ReplicaFault::MissedDeadline {
            call: "ack",
            deadline: std::time::Duration::from_millis(2500),
        };
        assert_eq!(SessionError::from(missed).describe(), "ack: no answer within 2500 ms");
    }
}
