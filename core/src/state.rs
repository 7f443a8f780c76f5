//! The federation's replicated state and the commands that change it.
//!
//! [`FederationState`] is the state machine every replica applies the Raft log to. It is
//! deterministic: a command carries everything it needs (including any time), and the
//! state is kept in ordered maps so that its encoding — the snapshot and the digest — is
//! identical on every replica at the same applied index.

mod audit;
mod check;
mod command;
mod events;
mod ordered_map;
mod policy;
mod removed;
mod restore;
mod services;
#[cfg(any(test, feature = "test-support"))]
pub mod test_support;
mod trust;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use audit::{
    AUDIT_CAPACITY, AuditEvent, AuditTrail, MAX_AUDIT_FIELD, REFUSAL_CAPACITY, Refusal,
    RefusalReport, cap_field,
};
pub use check::Checked;
pub use command::{
    Applied, COMMAND_KINDS, Command, CommandError, CommandResult, UNGATED_COMMAND_KINDS,
    decode_result as command_result, required_version, validate_probe_key,
};
pub use events::{Change, ChangeKind, ChangeLog, EVENT_WINDOW};
pub use policy::{FederationSettings, MAX_GRANTED_NAMESPACES, MemberPolicy, PolicyUpdate};
pub use removed::{MAX_REMOVED_DOMAINS, REMOVED_RETENTION_SECS, RemovedDomain};
pub use restore::{MAX_RESTORE_BYTES, MAX_RESTORE_CHUNK, RestoreSummary, StagedRestore};
pub use services::{ExportRecord, Lease, MAX_LEASE_TTL_SECS, MIN_LEASE_TTL_SECS, ServiceRecord};
pub use trust::{BundleAck, Member, StoredBundle, TOKEN_ID_LEN, TokenRecord, short_hash};

/// Format version of the snapshot encoding; bumped on incompatible changes. Format 5 is
/// format 4's encoding followed by the removed trust domains; format 4 is format 3's
/// encoding followed by the audit trail's refusals (kept apart from accepted changes), the
/// members' policies and the federation's settings; format 3 is format 2's encoding
/// followed by the staged restore. Formats 2 to 4 are still read, and a state without
/// removed trust domains is still written as format 4, so that a replica of the build
/// before reads it during a rolling upgrade (removed trust domains are recorded only by
/// a command behind the cluster-version gate, once every voter reads format 5).
const SNAPSHOT_FORMAT: u8 = 5;

/// The snapshot format before removed trust domains were kept.
const SNAPSHOT_FORMAT_4: u8 = 4;

/// The snapshot format before refusals were kept apart from accepted changes.
const SNAPSHOT_FORMAT_3: u8 = 3;

/// Most refusal records one `Command::RecordRefusals` may carry.
pub const MAX_REFUSAL_REPORTS: usize = 256;

/// The snapshot format before the staged restore was added.
const SNAPSHOT_FORMAT_2: u8 = 2;

/// A replica's registration: where agents and operators reach its API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaRecord {
    /// Raft transport address.
    pub raft_addr: String,
    /// Agent and admin API address.
    pub api_addr: String,
    /// Log index of the registration.
    pub registered_at_index: u64,
}

/// A value in the diagnostic probe keyspace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeValue {
    /// The bytes written. Encoded as one byte string, not a sequence of bytes: the same
    /// postcard bytes (a length, then the bytes), without a call per byte.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// 1 for the first write of the key, then +1 per write.
    pub version: u64,
    /// Log index of the last write.
    pub modified_index: u64,
}

/// The whole replicated state of the federation.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationState {
    /// Replicas that registered their API address, by replica id.
    #[serde(deserialize_with = "ordered_map::deserialize")]
    pub replicas: BTreeMap<u64, ReplicaRecord>,
    /// Diagnostic probe keyspace written by `check`, benchmarks and the chaos harness.
    #[serde(deserialize_with = "ordered_map::deserialize")]
    pub probes: BTreeMap<String, ProbeValue>,
    /// Member clusters by name.
    #[serde(deserialize_with = "ordered_map::deserialize")]
    pub members: BTreeMap<String, Member>,
    /// Trust bundles by trust domain (one per member).
    #[serde(deserialize_with = "ordered_map::deserialize")]
    pub bundles: BTreeMap<String, StoredBundle>,
    /// Join tokens by the hash of their secret.
    #[serde(deserialize_with = "ordered_map::deserialize")]
    pub tokens: BTreeMap<String, TokenRecord>,
    /// Exported services by namespace/name.
    #[serde(deserialize_with = "ordered_map::deserialize")]
    pub services: BTreeMap<crate::service::ServiceKey, ServiceRecord>,
    /// Members' liveness leases by cluster.
    #[serde(deserialize_with = "ordered_map::deserialize")]
    pub leases: BTreeMap<String, Lease>,
    /// Accepted and refused writes.
    pub audit: AuditTrail,
    /// Revisions and recent changes, for watchers.
    pub changes: ChangeLog,
    /// A restore being staged through the log (encoded after the rest, see
    /// [`SNAPSHOT_FORMAT`]).
    #[serde(skip)]
    pub restore: Option<StagedRestore>,
    /// What the operator allows each member, by cluster (encoded after the staged
    /// restore, format 4).
    #[serde(skip)]
    pub policies: BTreeMap<String, MemberPolicy>,
    /// Federation-wide settings (format 4).
    #[serde(skip)]
    pub settings: FederationSettings,
    /// Removed members' trust domains, served as empty bundles for a while, by trust
    /// domain (format 5, written only when there is one).
    #[serde(skip)]
    pub removed: BTreeMap<String, RemovedDomain>,
}

/// What format 4 encodes after the staged restore.
#[derive(Serialize)]
struct ExtensionsRef<'a> {
    refusals: &'a std::collections::VecDeque<Refusal>,
    policies: &'a BTreeMap<String, MemberPolicy>,
    settings: &'a FederationSettings,
}

/// [`ExtensionsRef`] as decoded.
#[derive(Deserialize)]
struct Extensions {
    refusals: std::collections::VecDeque<Refusal>,
    #[serde(deserialize_with = "ordered_map::deserialize")]
    policies: BTreeMap<String, MemberPolicy>,
    settings: FederationSettings,
}

// === impl FederationState ===

impl FederationState {
    /// Applies a decoded command at `index`.
    pub fn apply_command(&mut self, index: u64, command: Command) -> CommandResult {
        match command {
            Command::RegisterReplica { id, raft_addr, api_addr } => {
                if id == 0 {
                    return Err(CommandError::invalid("id", "replica id must be positive"));
                }
                self.replicas
                    .insert(id, ReplicaRecord { raft_addr, api_addr, registered_at_index: index });
                Ok(Applied::Done)
            }
            Command::UnregisterReplica { id } => {
                self.replicas.remove(&id);
                Ok(Applied::Done)
            }
            Command::PutProbe { key, value } => {
                command::validate_probe_key(&key)?;
                let entry = self.probes.entry(key).or_insert(ProbeValue {
                    value: Vec::new(),
                    version: 0,
                    modified_index: 0,
                });
                entry.value = value;
                entry.version += 1;
                entry.modified_index = index;
                Ok(Applied::Probe { version: entry.version })
            }
            Command::CreateToken { secret_hash, cluster, trust_domain, expires_at, now } => {
                let target = format!("{cluster} ({trust_domain})");
                let result =
                    self.apply_create_token(secret_hash, cluster, trust_domain, expires_at, now);
                self.audit.record(AuditEvent::new(
                    now,
                    index,
                    "admin",
                    "create_token",
                    target,
                    result.as_ref().err().map(ToString::to_string),
                ));
                result
            }
            Command::Join { secret_hash, cluster, trust_domain, agent_id, bundle_json, now } => {
                self.apply_join(
                    index,
                    &secret_hash,
                    cluster,
                    trust_domain,
                    agent_id,
                    &bundle_json,
                    now,
                )
            }
            Command::PublishBundle { cluster, bundle_json, agent_chain, force, now } => {
                self.apply_publish_bundle(index, &cluster, &bundle_json, &agent_chain, force, now)
            }
            Command::RemoveMember { cluster, actor, now } => {
                self.apply_remove_member(index, &cluster, actor, now, None)
            }
            Command::RemoveMemberServingEmpty { cluster, actor, now, serve_until } => {
                self.apply_remove_member(index, &cluster, actor, now, Some(serve_until))
            }
            Command::AckBundle { cluster, trust_domain, sequence, now } => {
                self.apply_ack(&cluster, &trust_domain, sequence, now)
            }
            Command::ExportService { cluster, export, now } => {
                self.apply_export(index, &cluster, export, now)
            }
            Command::UnexportService { cluster, key, now } => {
                self.apply_unexport(index, &cluster, &key, now)
            }
            Command::GrantLease { cluster, ttl_secs, locality, now } => {
                self.apply_grant_lease(index, &cluster, ttl_secs, locality, now)
            }
            Command::RevokeLease { cluster, lease_id, now } => {
                self.apply_end_lease(index, &cluster, lease_id, true, now)
            }
            Command::ExpireLease { cluster, lease_id, now } => {
                self.apply_end_lease(index, &cluster, lease_id, false, now)
            }
            Command::RecordRefusal { actor, action, target, reason, now } => {
                self.audit.record(AuditEvent::new(now, index, actor, action, target, Some(reason)));
                Ok(Applied::Done)
            }
            Command::RecordRefusals { refusals } => {
                if refusals.len() > MAX_REFUSAL_REPORTS {
                    return Err(CommandError::invalid(
                        "refusals",
                        &format!("at most {MAX_REFUSAL_REPORTS} in one report"),
                    ));
                }
                for report in refusals {
                    self.audit.record_refusal(report, index);
                }
                Ok(Applied::Done)
            }
            Command::UpdateMemberPolicy { cluster, update, now } => {
                self.apply_policy_update(index, &cluster, update, now)
            }
            Command::UpdateSettings { open_exports, allow_loopback_endpoints, now } => {
                self.apply_settings(index, open_exports, allow_loopback_endpoints, now)
            }
            Command::RevokeToken { secret_hash, actor, now } => {
                self.apply_revoke_token(index, &secret_hash, actor, now)
            }
            Command::RestoreBegin { id, size, sha256 } => {
                self.apply_restore_begin(index, id, size, sha256)
            }
            Command::RestoreChunk { id, offset, data } => {
                self.apply_restore_chunk(id, offset, &data)
            }
            Command::RestoreCommit { id, force, now } => {
                self.apply_restore_commit(index, id, force, now)
            }
            Command::RestoreAbort { id, reason, now } => {
                self.apply_restore_abort(index, id, &reason, now)
            }
        }
    }
}

impl FederationState {
    /// The snapshot encoding: format, state, then `staged`, the extensions and (format 5)
    /// the removed trust domains.
    fn encode(&self, staged: Option<&StagedRestore>) -> Vec<u8> {
        // Encoding ordered maps of plain data cannot fail. Both parts are appended to one
        // buffer (a state is tens of MB: no second copy of it). A failure would leave the
        // format byte alone, which no replica decodes.
        let format = if self.removed.is_empty() { SNAPSHOT_FORMAT_4 } else { SNAPSHOT_FORMAT };
        postcard::to_extend(self, vec![format])
            .and_then(|out| postcard::to_extend(&staged, out))
            .and_then(|out| {
                let extensions = ExtensionsRef {
                    refusals: self.audit.refusals(),
                    policies: &self.policies,
                    settings: &self.settings,
                };
                postcard::to_extend(&extensions, out)
            })
            .and_then(|out| {
                if format == SNAPSHOT_FORMAT_4 {
                    return Ok(out);
                }
                postcard::to_extend(&self.removed, out)
            })
            .unwrap_or_else(|_| vec![format])
    }

    /// Decodes a snapshot of any format this build reads.
    fn decode(snapshot: &[u8]) -> Result<Self, SnapshotError> {
        let mut state = match snapshot.split_first() {
            None => return Ok(Self::default()),
            Some((&format @ (SNAPSHOT_FORMAT | SNAPSHOT_FORMAT_4), body)) => {
                let (mut state, rest): (Self, _) = postcard::take_from_bytes(body)?;
                let (staged, rest) = postcard::take_from_bytes(rest)?;
                state.restore = staged;
                let (extensions, rest): (Extensions, _) = postcard::take_from_bytes(rest)?;
                state.audit.set_refusals(extensions.refusals);
                state.policies = extensions.policies;
                state.settings = extensions.settings;
                if format == SNAPSHOT_FORMAT {
                    state.removed = postcard::from_bytes(rest)?;
                } else if !rest.is_empty() {
                    return Err(SnapshotError::Undecodable(
                        postcard::Error::DeserializeBadEncoding,
                    ));
                }
                return Ok(state);
            }
            Some((&SNAPSHOT_FORMAT_3, body)) => {
                let (mut state, staged): (Self, _) = postcard::take_from_bytes(body)?;
                state.restore = postcard::from_bytes(staged)?;
                state
            }
            Some((&SNAPSHOT_FORMAT_2, body)) => postcard::from_bytes::<Self>(body)?,
            Some((&version, _)) => return Err(SnapshotError::Format(version)),
        };
        state.audit.separate_refusals();
        Ok(state)
    }
}

/// Why a federation snapshot was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The bytes are not a state of the format they announce.
    #[error("federation snapshot does not decode: {0}")]
    Undecodable(#[from] postcard::Error),
    /// A format this build does not read.
    #[error(
        "federation snapshot has format {0}, this build reads formats {SNAPSHOT_FORMAT_2} to \
         {SNAPSHOT_FORMAT}"
    )]
    Format(u8),
}

/// Makes a replica behave as an older build that knows only the first N command kinds
/// (mixed-version tests; never set in production): it refuses to apply the others.
pub const CLAIM_COMMAND_KINDS_ENV: &str = "FEDERATOR_CLAIM_COMMAND_KINDS";

/// [`CLAIM_COMMAND_KINDS_ENV`], read once.
static CLAIMED_COMMAND_KINDS: std::sync::LazyLock<Option<u32>> = std::sync::LazyLock::new(|| {
    std::env::var(CLAIM_COMMAND_KINDS_ENV).ok().and_then(|v| v.trim().parse().ok())
});

impl federator_raft::StateMachine for FederationState {
    fn apply(&mut self, log_index: u64, command: &[u8]) -> Vec<u8> {
        let result = match Command::decode(command) {
            Ok(command) => self.apply_command(log_index, command),
            Err(error) => Err(error),
        };
        command::encode_result(&result)
    }

    fn check_applicable(&self, command: &[u8]) -> Result<(), federator_raft::NotApplicable> {
        // Every command in the log was encoded by a replica's own `Command::encode`: one
        // that does not decode comes from a newer build (a kind or field this one does
        // not know) or is damaged. Either way skipping it would diverge from the replicas
        // that apply it.
        Command::decode(command).map_err(|error| {
            federator_raft::NotApplicable(format!(
                "a {}-byte command of kind {} does not decode with this build ({error}): a \
                 newer build proposed it, or it is damaged",
                command.len(),
                command::variant_of(command).map_or_else(|| "?".to_string(), |v| v.to_string())
            ))
        })?;
        match (*CLAIMED_COMMAND_KINDS, command::variant_of(command)) {
            (Some(claimed), Some(kind)) if kind >= claimed => {
                Err(federator_raft::NotApplicable(format!(
                    "command kind {kind} is unknown to this replica: it behaves as a build that \
                 knows {claimed} kinds ({CLAIM_COMMAND_KINDS_ENV}), as a newer build proposed it"
                )))
            }
            _ => Ok(()),
        }
    }

    fn snapshot(&self) -> Vec<u8> {
        self.encode(self.restore.as_ref())
    }

    fn supported_version() -> u32 {
        CLAIMED_COMMAND_KINDS
            .map_or(command::COMMAND_KINDS, |claimed| claimed.min(command::COMMAND_KINDS))
    }

    fn required_version(command: &[u8]) -> u32 {
        command::required_version(command)
    }

    fn cheap_to_apply(command: &[u8]) -> bool {
        Command::is_cheap_to_apply(command)
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), federator_raft::RestoreError> {
        *self = Self::decode(snapshot).map_err(federator_raft::RestoreError::new)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use federator_raft::StateMachine as _;

    use super::*;

    fn put(state: &mut FederationState, index: u64, key: &str, value: &[u8]) -> CommandResult {
        let bytes = Command::PutProbe { key: key.into(), value: value.to_vec() }.encode();
        command::decode_result(&state.apply(index, &bytes)).expect("result decodes")
    }

    #[test]
    fn probe_versions_count_writes() {
        let mut state = FederationState::default();
        assert_eq!(put(&mut state, 1, "a", b"1"), Ok(Applied::Probe { version: 1 }));
        assert_eq!(put(&mut state, 2, "a", b"2"), Ok(Applied::Probe { version: 2 }));
        assert_eq!(state.probes["a"].modified_index, 2);
    }

    #[test]
    fn invalid_command_is_an_error_response_not_a_panic() {
        let mut state = FederationState::default();
        let response = state.apply(1, b"\xff\xff\xff garbage");
        assert!(command::decode_result(&response).expect("decodes").is_err());
        assert_eq!(state, FederationState::default());
    }

    #[test]
    fn snapshot_round_trips_and_digest_matches() {
        let mut state = FederationState::default();
        put(&mut state, 1, "k", b"v").expect("put");
        let mut other = FederationState::default();
        other.restore(&state.snapshot()).expect("restore");
        assert_eq!(state, other);
        assert_eq!(state.digest(), other.digest());
    }

    /// A byte vector's field as the state encoded it before it was marked a byte string.
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct SequenceOfBytes {
        value: Vec<u8>,
        version: u64,
        modified_index: u64,
    }

    proptest::proptest! {
        /// Marking byte vectors as byte strings kept the encoding: postcard writes a
        /// sequence of `u8` and a byte string alike (a varint length, then the bytes), so
        /// logs and snapshots written before decode the same, and the other way round.
        #[test]
        fn byte_strings_encode_as_the_byte_sequences_did(
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            version in proptest::prelude::any::<u64>(),
        ) {
            let old = SequenceOfBytes { value: value.clone(), version, modified_index: 7 };
            let new = ProbeValue { value: value.clone(), version, modified_index: 7 };
            let old_bytes = postcard::to_stdvec(&old).expect("encodes");
            proptest::prop_assert_eq!(&old_bytes, &postcard::to_stdvec(&new).expect("encodes"));
            proptest::prop_assert_eq!(postcard::from_bytes::<ProbeValue>(&old_bytes).expect("decodes"), new);
            // `PutProbe` is the command enum's variant 2: its tag, the key, the value.
            let command = Command::PutProbe { key: "k".into(), value };
            let mut legacy = vec![2u8];
            legacy.extend(postcard::to_stdvec(&("k", old.value)).expect("encodes"));
            proptest::prop_assert_eq!(command.encode(), legacy);
        }
    }

    #[test]
    fn a_format_3_snapshot_restores_with_its_refusals_apart_and_no_policies() {
        let mut state = FederationState::default();
        put(&mut state, 1, "k", b"v").expect("put");
        let accepted = AuditEvent::new(1, 1, "admin", "create_token", "a", None);
        let refused = AuditEvent::new(2, 2, "anonymous@127.0.0.9", "join", "a", Some("no".into()));
        state.audit.record(accepted);
        // A format 3 trail kept refusals among accepted events: encode one that way.
        let mut legacy = state.clone();
        legacy.audit = AuditTrail::default();
        legacy.audit.record(AuditEvent::new(1, 1, "admin", "create_token", "a", None));
        let mut bytes = vec![SNAPSHOT_FORMAT_3];
        let mut encoded = postcard::to_stdvec(&legacy).expect("encodes");
        // Format 3's trail: the refused event among the accepted ones (same field layout as
        // `AuditTrail` without its refusal part), spliced in for the current trail's bytes.
        #[derive(Serialize)]
        struct LegacyTrail<'a> {
            next_seq: u64,
            events: Vec<&'a AuditEvent>,
        }
        let first =
            AuditEvent { seq: 1, ..AuditEvent::new(1, 1, "admin", "create_token", "a", None) };
        let second = AuditEvent { seq: 2, ..refused };
        let trail =
            postcard::to_stdvec(&LegacyTrail { next_seq: 2, events: vec![&first, &second] })
                .expect("encodes");
        let current = postcard::to_stdvec(&legacy.audit).expect("encodes");
        let at = encoded
            .windows(current.len())
            .position(|w| w == current.as_slice())
            .expect("the trail's bytes");
        encoded.splice(at..at + current.len(), trail);
        bytes.extend(encoded);
        bytes.extend(postcard::to_stdvec(&Option::<StagedRestore>::None).expect("encodes"));
        let mut restored = FederationState::default();
        restored.restore(&bytes).expect("format 3 decodes");
        assert_eq!(restored.probes, state.probes);
        assert_eq!(restored.audit.newest(10).len(), 1, "accepted events stay");
        let refusals = restored.audit.newest_refusals(10);
        assert_eq!(refusals.len(), 1, "the refused event moved apart");
        assert_eq!(refusals[0].actor, "anonymous@127.0.0.9");
        assert!(restored.policies.is_empty());
        assert_eq!(restored.settings, FederationSettings::default());
    }

    #[test]
    fn snapshot_of_another_format_is_refused() {
        let mut state = FederationState::default();
        let err = state.restore(&[99, 0, 0]).expect_err("must refuse");
        assert!(err.to_string().contains("format 99"), "{err}");
    }
}
