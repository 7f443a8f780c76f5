//! Commands of the federation log and their results, with their wire encoding.
//!
//! Every command carries the time it was proposed at (`now`, unix seconds, from the
//! proposing replica's clock), so that applying it — including certificate validity
//! checks — gives the same result on every replica.

use serde::{Deserialize, Serialize};

use crate::bundle::BundleError;

/// Longest probe key accepted.
const MAX_PROBE_KEY: usize = 256;

/// A change to the federation state, proposed through the Raft log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// A replica announces where its API is served.
    RegisterReplica {
        /// Replica id.
        id: u64,
        /// Raft transport address.
        raft_addr: String,
        /// API address.
        api_addr: String,
    },
    /// A replica left the group.
    UnregisterReplica {
        /// Replica id.
        id: u64,
    },
    /// Writes a key of the diagnostic probe keyspace.
    PutProbe {
        /// Key, 1 to 256 printable ASCII characters.
        key: String,
        /// Value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
    },
    /// Records a single-use join token (only its hash).
    CreateToken {
        /// Hex SHA-256 of the token's secret.
        secret_hash: String,
        /// Cluster the token admits.
        cluster: String,
        /// Trust domain bound to that cluster.
        trust_domain: String,
        /// Expiry, unix seconds.
        expires_at: i64,
        /// Proposal time.
        now: i64,
    },
    /// A cluster joins with a token and its first bundle.
    Join {
        /// Hash of the presented token's secret.
        secret_hash: String,
        /// Cluster named by the token.
        cluster: String,
        /// Trust domain named by the token.
        trust_domain: String,
        /// SPIFFE ID of the joining agent (verified against `bundle_json`).
        agent_id: String,
        /// The cluster's SPIFFE bundle document.
        #[serde(with = "serde_bytes")]
        bundle_json: Vec<u8>,
        /// Proposal time.
        now: i64,
    },
    /// A member publishes a new bundle of its own trust domain.
    PublishBundle {
        /// The member (from its authenticated identity, never from the request).
        cluster: String,
        /// The SPIFFE bundle document.
        #[serde(with = "serde_bytes")]
        bundle_json: Vec<u8>,
        /// The publishing agent's SVID chain (leaf first), to refuse a bundle that would
        /// lock the agent out.
        agent_chain: Vec<Vec<u8>>,
        /// Publish even if the bundle no longer certifies `agent_chain`.
        force: bool,
        /// Proposal time.
        now: i64,
    },
    /// An operator removes a member: its bundle and exports disappear.
    RemoveMember {
        /// The member.
        cluster: String,
        /// Who asked.
        actor: String,
        /// Proposal time.
        now: i64,
    },
    /// A member has applied `sequence` of `trust_domain`'s bundle in all its sinks.
    AckBundle {
        /// The acknowledging member.
        cluster: String,
        /// The foreign trust domain.
        trust_domain: String,
        /// The sequence applied.
        sequence: u64,
        /// Proposal time.
        now: i64,
    },
    /// A member exports a service, or updates its export.
    ExportService {
        /// The member (from its authenticated identity).
        cluster: String,
        /// The export.
        export: crate::service::ServiceExport,
        /// Proposal time.
        now: i64,
    },
    /// A member withdraws its export of a service.
    UnexportService {
        /// The member.
        cluster: String,
        /// The service.
        key: crate::service::ServiceKey,
        /// Proposal time.
        now: i64,
    },
    /// A member's agent takes a liveness lease (replacing any it held).
    GrantLease {
        /// The member.
        cluster: String,
        /// Time to live without a keep-alive, seconds.
        ttl_secs: u32,
        /// Where the member runs, for ordering its imports.
        locality: crate::service::Locality,
        /// Proposal time.
        now: i64,
    },
    /// A member's agent gives its lease up (a clean shutdown).
    RevokeLease {
        /// The member.
        cluster: String,
        /// The lease.
        lease_id: u64,
        /// Proposal time.
        now: i64,
    },
    /// The leader saw no keep-alive within the lease's TTL.
    ExpireLease {
        /// The member.
        cluster: String,
        /// The lease.
        lease_id: u64,
        /// Proposal time.
        now: i64,
    },
    /// A refusal decided before the log, recorded in the audit trail. Written by builds
    /// before `RecordRefusals`; still applied.
    RecordRefusal {
        /// Who tried.
        actor: String,
        /// What they tried.
        action: String,
        /// On what.
        target: String,
        /// Why it was refused.
        reason: String,
        /// Proposal time.
        now: i64,
    },
    /// An operator starts restoring a saved snapshot (replacing a restore in progress).
    RestoreBegin {
        /// Names this restore in its chunks and commit.
        id: u64,
        /// Size of the whole snapshot.
        size: u64,
        /// Hex SHA-256 of the whole snapshot.
        sha256: String,
    },
    /// The next bytes of a restore.
    RestoreChunk {
        /// The restore.
        id: u64,
        /// Where the bytes go: the number of bytes staged before them.
        offset: u64,
        /// The bytes.
        #[serde(with = "serde_bytes")]
        data: Vec<u8>,
    },
    /// Checks the staged snapshot and replaces the federation's state with it.
    RestoreCommit {
        /// The restore.
        id: u64,
        /// Replace a federation that already has members, services or tokens.
        force: bool,
        /// Proposal time.
        now: i64,
    },
    /// Drops a restore's staged bytes: its upload failed or was cancelled before the
    /// commit (a newer restore would replace them too, but until then they would sit in
    /// every replica's memory and snapshots).
    RestoreAbort {
        /// The restore.
        id: u64,
        /// Why, for the audit trail.
        reason: String,
        /// Proposal time.
        now: i64,
    },
    /// Refusals a replica decided before the log (authentication, authorization,
    /// validation), counted and coalesced there and reported in one entry at most once a
    /// second, so that refused calls do not cost a log entry each.
    RecordRefusals {
        /// At most `MAX_REFUSAL_REPORTS` records, each with its count.
        refusals: Vec<super::RefusalReport>,
    },
    /// An operator grants or revokes namespaces of a member, or binds its locality (before
    /// or after it joins).
    UpdateMemberPolicy {
        /// The member (it need not have joined yet).
        cluster: String,
        /// What changes.
        update: super::PolicyUpdate,
        /// Proposal time.
        now: i64,
    },
    /// An operator changes federation-wide settings (`None`: unchanged).
    UpdateSettings {
        /// Any member may export into any namespace.
        open_exports: Option<bool>,
        /// Loopback endpoints are accepted.
        allow_loopback_endpoints: Option<bool>,
        /// Proposal time.
        now: i64,
    },
    /// An operator revokes a join token that was not used: a join with it is refused
    /// from then on. The first kind behind the cluster-version gate
    /// ([`UNGATED_COMMAND_KINDS`]).
    RevokeToken {
        /// Hex SHA-256 of the token's secret.
        secret_hash: String,
        /// Who revoked it (the verified admin identity).
        actor: String,
        /// Proposal time.
        now: i64,
    },
    /// An operator removes a member, as [`Command::RemoveMember`], and its trust domain is
    /// served as an empty bundle until `serve_until` (see [`super::RemovedDomain`]).
    RemoveMemberServingEmpty {
        /// The member.
        cluster: String,
        /// Who asked.
        actor: String,
        /// Proposal time.
        now: i64,
        /// Until when its trust domain is served empty (unix seconds).
        serve_until: i64,
    },
}

/// How many kinds of command (variants of [`Command`]) this build applies: the
/// command-format version it supports ([`federator_raft::StateMachine::supported_version`]).
pub const COMMAND_KINDS: u32 = 23;

/// The kinds every build that may share a replica group with this one applies: the 21
/// that builds from before the cluster-version gate knew. A kind from here on is proposed
/// only once every voter reports applying it ([`required_version`]); new kinds are only
/// ever appended.
pub const UNGATED_COMMAND_KINDS: u32 = 21;

/// The command-format version a replica must apply for the encoded command `bytes`: 0
/// for a kind every build applies, else its kind + 1 (a build applies the kinds below its
/// [`COMMAND_KINDS`]).
#[must_use]
pub fn required_version(bytes: &[u8]) -> u32 {
    match variant_of(bytes) {
        Some(kind) if kind >= UNGATED_COMMAND_KINDS => kind.saturating_add(1),
        _ => 0,
    }
}

/// What an accepted command did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Applied {
    /// Applied, nothing to report.
    Done,
    /// A probe write; the key's new version.
    Probe {
        /// Version after the write.
        version: u64,
    },
    /// The state changed at this revision.
    Revision {
        /// The new revision.
        revision: u64,
    },
    /// A service export was stored.
    Export {
        /// The new revision.
        revision: u64,
        /// The export's generation.
        generation: u64,
        /// The service's conditions after the export.
        conditions: Vec<crate::service::Condition>,
    },
    /// A lease was granted.
    Lease {
        /// Lease id.
        id: u64,
        /// Its TTL in seconds.
        ttl_secs: u32,
    },
    /// A bundle was stored.
    Bundle {
        /// Its sequence.
        sequence: u64,
        /// The new revision.
        revision: u64,
    },
    /// A snapshot was restored.
    Restored(super::RestoreSummary),
}

/// Why the state machine refused a command. Refusals are deterministic: every replica
/// refuses the same command the same way.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// The command bytes do not decode (a newer or corrupt proposer).
    #[error("command does not decode: {0}")]
    Undecodable(String),
    /// A field broke a rule.
    #[error("{field}: {rule}")]
    Invalid {
        /// The field.
        field: String,
        /// The rule it broke.
        rule: String,
    },
    /// The bundle failed validation.
    #[error("bundle: {0}")]
    Bundle(BundleError),
    /// The caller may not do this.
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The join token is unknown, used, expired or for another cluster.
    #[error("join token refused: {0}")]
    Token(String),
    /// Something named does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// Something named exists already.
    #[error("{0}")]
    AlreadyExists(String),
}

impl CommandError {
    /// An invalid-field refusal.
    pub fn invalid(field: &str, rule: &str) -> Self {
        Self::Invalid { field: field.to_string(), rule: rule.to_string() }
    }
}

/// The result of applying a command, as carried back to the proposer.
pub type CommandResult = Result<Applied, CommandError>;

// === impl Command ===

impl Command {
    /// Encodes the command for the log.
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        // Plain data of owned strings and integers always encodes.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    /// Decodes a command from the log.
    ///
    /// # Errors
    /// The bytes are not a command of this build.
    pub fn decode(bytes: &[u8]) -> Result<Self, CommandError> {
        postcard::from_bytes(bytes).map_err(|e| CommandError::Undecodable(e.to_string()))
    }

    /// Whether the encoded command `bytes` costs about what its size says to apply:
    /// every command but a restore's commit, which decodes the staged state and swaps
    /// it in (see [`federator_raft::StateMachine::cheap_to_apply`]). Reads only the
    /// variant, not the command.
    #[must_use]
    pub fn is_cheap_to_apply(bytes: &[u8]) -> bool {
        static RESTORE_COMMIT: std::sync::LazyLock<Option<u32>> = std::sync::LazyLock::new(|| {
            variant_of(&Command::RestoreCommit { id: 0, force: false, now: 0 }.encode())
        });
        match (*RESTORE_COMMIT, variant_of(bytes)) {
            (Some(restore_commit), Some(variant)) => variant != restore_commit,
            // Bytes that are no command are answered with an error at once.
            (Some(_), None) => true,
            (None, _) => false,
        }
    }
}

/// The variant index an encoded enum starts with (postcard: a varint `u32`).
pub(crate) fn variant_of(bytes: &[u8]) -> Option<u32> {
    postcard::take_from_bytes::<u32>(bytes).ok().map(|(variant, _)| variant)
}

/// Checks a probe key: 1 to 256 printable ASCII characters.
///
/// # Errors
/// The key is empty, too long or has other characters.
pub fn validate_probe_key(key: &str) -> Result<(), CommandError> {
    if key.is_empty() || key.len() > MAX_PROBE_KEY {
        return Err(CommandError::invalid("key", "must be 1 to 256 characters"));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(CommandError::invalid("key", "must be printable ASCII without spaces"));
    }
    Ok(())
}

/// Encodes a command result for the proposer.
#[must_use]
pub fn encode_result(result: &CommandResult) -> Vec<u8> {
    postcard::to_stdvec(result).unwrap_or_default()
}

/// Decodes a command result returned by the log.
///
/// # Errors
/// The bytes are not a result of this build.
pub fn decode_result(bytes: &[u8]) -> Result<CommandResult, CommandError> {
    postcard::from_bytes(bytes).map_err(|e| CommandError::Undecodable(e.to_string()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn probe_key_rules() {
        assert!(validate_probe_key("a/b-1").is_ok());
        assert!(validate_probe_key("").is_err());
        assert!(validate_probe_key("has space").is_err());
        assert!(validate_probe_key(&"x".repeat(257)).is_err());
    }

    #[test]
    fn every_command_but_a_restore_commit_is_cheap_to_apply() {
        let commands = [
            Command::UnregisterReplica { id: 1 },
            Command::PutProbe { key: "k".into(), value: vec![1; 200] },
            Command::RemoveMember { cluster: "a".into(), actor: "admin".into(), now: 1 },
            Command::RevokeLease { cluster: "a".into(), lease_id: 300, now: 1 },
            Command::RestoreBegin { id: 7, size: 10, sha256: "0".repeat(64) },
            Command::RestoreChunk { id: 7, offset: 0, data: vec![0; 10] },
            Command::RestoreAbort { id: 7, reason: "cancelled".into(), now: 1 },
            Command::RecordRefusals { refusals: Vec::new() },
        ];
        for command in commands {
            assert!(Command::is_cheap_to_apply(&command.encode()), "{command:?}");
        }
        for id in [0, 1, u64::MAX] {
            let commit = Command::RestoreCommit { id, force: true, now: i64::MAX };
            assert!(!Command::is_cheap_to_apply(&commit.encode()));
        }
        assert!(Command::is_cheap_to_apply(b""), "no command: answered with an error at once");
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Command::decode(&bytes);
            let _ = decode_result(&bytes);
        }

        #[test]
        fn a_restore_commit_is_never_cheap_and_other_commands_are(
            id in any::<u64>(), force in any::<bool>(), now in any::<i64>(),
            key in "[a-z/]{1,20}", value in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let commit = Command::RestoreCommit { id, force, now }.encode();
            prop_assert!(!Command::is_cheap_to_apply(&commit));
            let abort = Command::RestoreAbort { id, reason: key.clone(), now }.encode();
            prop_assert!(Command::is_cheap_to_apply(&abort));
            let put = Command::PutProbe { key, value }.encode();
            prop_assert!(Command::is_cheap_to_apply(&put));
        }

        #[test]
        fn commands_round_trip(key in "[a-z/]{1,20}", value in proptest::collection::vec(any::<u8>(), 0..64)) {
            let command = Command::PutProbe { key, value };
            prop_assert_eq!(Command::decode(&command.encode()).expect("decodes"), command);
        }
    }
}
