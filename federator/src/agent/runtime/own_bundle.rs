//! The cluster's own bundle: published to the federation when its source changes (a
//! replay or a refusal reported, not fatal), and compared with what the federation holds
//! of it, to publish it again when the record of what was published is contradicted.

use federator_proto::federation as pb;
use federator_proto::federation::federation_client::FederationClient;
use sha2::Digest as _;
use tonic::Code;
use tonic::transport::Channel;

use super::session_error::SessionError;
use super::{Agent, REFUSAL_METADATA_KEY, REFUSAL_SEQUENCE_REPLAY};
use crate::agent::deadlines::bounded;
use crate::agent::held::{self, Verdict};
use crate::agent::sources::bundle::BundleState;
use crate::bundle::TrustBundle;

impl Agent {
    /// Publishes the own bundle the source gives, unless the federation holds its
    /// authorities already. A refusal is logged at WARN and shown by the status; with
    /// `force_publish_bundle` set, a bundle that no longer certifies the agent's own SVID
    /// is published all the same (the federation audits it as forced).
    pub(super) async fn publish_bundle(
        &mut self,
        client: &mut FederationClient<Channel>,
        state: &BundleState,
    ) -> Result<(), SessionError> {
        self.status.bundle.problem.clone_from(&state.problem);
        let Some(bundle) = &state.bundle else { return Ok(()) };
        self.status.bundle.sequence = Some(bundle.sequence);
        if self.view.own_bundle.as_ref() != Some(bundle) {
            self.view.own_bundle = Some(bundle.clone());
            self.hand_view_to_sinks();
        }
        let digest = authorities_digest(bundle);
        if self.published.bundle_digest.as_deref() == Some(digest.as_str()) {
            // The federation holds these authorities at the sequence it accepted then (a
            // restarted agent numbers the same certificates anew: no rotation).
            self.status.bundle.published_sequence =
                self.published.bundle_sequence.or(Some(bundle.sequence));
            self.status.bundle.published_current = Some(true);
            return Ok(());
        }
        self.status.bundle.published_current = Some(false);
        let force = self.config.file.force_publish_bundle;
        let request = pb::PublishBundleRequest {
            bundle: Some(pb::TrustBundle {
                trust_domain: bundle.trust_domain.clone(),
                spiffe_bundle_json: bundle.to_spiffe_json(),
                sequence: bundle.sequence,
            }),
            force,
        };
        let mut accepted = bundle.sequence;
        let deadline = self.deadlines().call;
        match bounded("publish bundle", deadline, client.publish_bundle(request)).await? {
            Ok(response) => {
                accepted = response.sequence;
                self.published.bundle_revision = Some(response.revision);
                if force {
                    tracing::warn!(
                        sequence = accepted,
                        "bundle published with force (force_publish_bundle is set): remove the \
                         setting once this rotation is done"
                    );
                } else {
                    tracing::info!(sequence = accepted, "bundle published");
                }
            }
            // Already there (a restart after publishing): the federation has it.
            Err(status) if is_replay(&status) => {
                tracing::debug!("bundle already published");
                // When the federation accepted it is not known.
                self.published.bundle_revision = None;
            }
            Err(status) if status.code() == Code::InvalidArgument => {
                // The source gives a bundle the federation refuses: report, keep going.
                tracing::warn!(
                    sequence = bundle.sequence,
                    reason = status.message(),
                    "the federation refused the cluster's bundle; the last one it accepted \
                     stays in force: fix the bundle source (a bundle that no longer certifies \
                     this agent's SVID needs force_publish_bundle = true)"
                );
                self.status.bundle.problem = Some(crate::agent::view::SourceProblem {
                    location: "bundle".into(),
                    message: format!("the federation refused it: {}", status.message()),
                });
                return Ok(());
            }
            Err(status) => return Err(SessionError::Answered { call: "publish bundle", status }),
        }
        self.published.bundle_digest = Some(digest);
        self.published.bundle_sequence = Some(accepted);
        self.status.bundle.published_sequence = Some(accepted);
        self.status.bundle.published_current = Some(true);
        self.save_published().await?;
        Ok(())
    }

    /// Compares the own bundle the federation holds (as of the view just committed) with
    /// the source's and the record of what was published; asks for a new publication
    /// when the record is contradicted.
    pub(super) fn compare_held_bundle(&mut self) {
        let source = self.view.own_bundle.as_ref().map(authorities_digest);
        let held = self.view.held_own_bundle.as_ref();
        self.status.bundle.federation_sequence = held.map(|h| h.sequence);
        let recorded = held::Recorded {
            digest: self.published.bundle_digest.as_deref(),
            revision: self.published.bundle_revision,
        };
        let verdict = held::judge(
            held,
            self.view.revision,
            source.as_deref(),
            recorded,
            self.republished_for.as_deref(),
        );
        self.status.bundle.federation_current = match verdict {
            Verdict::Unknown => None,
            Verdict::Current => {
                // Agreed again: a later contradiction is acted on afresh.
                self.republished_for = None;
                Some(true)
            }
            Verdict::Republish | Verdict::Differs => Some(false),
        };
        if verdict == Verdict::Republish
            && let Some(held) = held
        {
            tracing::warn!(
                held_sequence = held.sequence,
                recorded_sequence = ?self.published.bundle_sequence,
                "the federation holds other authorities for this cluster's bundle than this \
                 agent recorded publishing (restored from an older backup?): publishing it again"
            );
            self.republished_for = Some(held.authorities_digest.clone());
            self.published.bundle_digest = None;
            self.published.bundle_revision = None;
            self.republish_bundle = true;
        }
    }
}

/// Digest of a bundle's authorities: what decides whether it must be published again
/// (a restarted agent numbers the same PEM certificates anew, which is no rotation).
pub(super) fn authorities_digest(bundle: &TrustBundle) -> String {
    let x509: Vec<&[u8]> = bundle.x509_authorities.iter().map(|a| a.der.as_slice()).collect();
    let jwt: Vec<&str> = bundle.jwt_authorities.iter().map(|a| a.jwk_json.as_str()).collect();
    let bytes = postcard::to_stdvec(&(x509, jwt)).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Whether `status` refuses a bundle because its sequence is not above the one the
/// federation holds (a replay: the federation already has it).
///
/// Decided by the refusal kind a replica sets in the [`REFUSAL_METADATA_KEY`] metadata
/// ([`REFUSAL_SEQUENCE_REPLAY`]); replicas that set none are recognised by their
/// message, as before.
fn is_replay(status: &tonic::Status) -> bool {
    if let Some(kind) = status.metadata().get(REFUSAL_METADATA_KEY) {
        return kind.to_str().is_ok_and(|kind| kind == REFUSAL_SEQUENCE_REPLAY);
    }
    status.code() == Code::InvalidArgument
        && status.message().contains("not greater than the stored sequence")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replay_is_recognised_by_its_refusal_kind_and_else_by_its_message() {
        let mut typed = tonic::Status::invalid_argument("any wording");
        typed
            .metadata_mut()
            .insert(REFUSAL_METADATA_KEY, REFUSAL_SEQUENCE_REPLAY.parse().expect("ascii"));
        assert!(is_replay(&typed));
        let mut other = tonic::Status::invalid_argument(
            "bundle: spiffe_sequence: 3 is not greater than the stored sequence 4 (replay)",
        );
        other.metadata_mut().insert(REFUSAL_METADATA_KEY, "lockout".parse().expect("ascii"));
        assert!(!is_replay(&other), "the kind, when given, decides");
        let legacy = tonic::Status::invalid_argument(
            "bundle: spiffe_sequence: 3 is not greater than the stored sequence 4 (replay)",
        );
        assert!(is_replay(&legacy), "replicas without the kind: the message");
        assert!(!is_replay(&tonic::Status::invalid_argument("keys: would lock the agent out")));
    }
}
