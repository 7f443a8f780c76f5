//! Helpers for the state machine's unit tests: member clusters with their own CA, and
//! commands applied through the encoded log path. Other crates' tests (the replica's
//! federation watch and metrics in `federator`) get them with the `test-support` feature.

use std::time::Duration;

use super::{CommandResult, FederationState};
use crate::bundle::ValidationPolicy;
use crate::identity::FederationCa;
use crate::state::{Command, command_result};

/// A member cluster of a test: its trust domain and the CA that signs its bundle and SVIDs.
pub struct Cluster {
    /// The cluster's CA (ten years).
    pub ca: FederationCa,
    /// Its trust domain.
    pub td: String,
}

impl Cluster {
    /// A cluster of trust domain `td` with a new CA.
    pub fn new(td: &str) -> Self {
        let ca =
            FederationCa::generate(td, td, Duration::from_secs(10 * 365 * 86_400)).expect("ca");
        Self { ca, td: td.into() }
    }

    /// Its bundle (the CA alone) as SPIFFE bundle JSON, numbered `sequence`.
    pub fn bundle(&self, sequence: u64) -> Vec<u8> {
        let policy = ValidationPolicy::at(crate::clock::unix_now());
        crate::bundle::parse_pem_bundle(
            &self.td,
            self.ca.cert_pem().as_bytes(),
            sequence,
            None,
            &policy,
        )
        .expect("bundle")
        .to_spiffe_json()
        .into_bytes()
    }

    /// The DER chain of an agent SVID, `spiffe://TD/agent`, valid for an hour.
    pub fn agent_chain(&self) -> Vec<Vec<u8>> {
        let svid = self
            .ca
            .issue(&format!("spiffe://{}/agent", self.td), &[], &[], Duration::from_secs(3600))
            .expect("svid");
        use rustls_pki_types::pem::PemObject as _;
        vec![
            rustls_pki_types::CertificateDer::from_pem_slice(svid.cert_pem.as_bytes())
                .expect("pem")
                .to_vec(),
        ]
    }
}

/// Applies `command` at log `index` the way a replica does: encoded, through
/// [`federator_raft::StateMachine::apply`], its result decoded.
pub fn apply(state: &mut FederationState, index: u64, command: Command) -> CommandResult {
    let bytes =
        <FederationState as federator_raft::StateMachine>::apply(state, index, &command.encode());
    command_result(&bytes).expect("decodes")
}

/// The time now, unix seconds.
pub fn now() -> i64 {
    crate::clock::unix_now()
}

/// A state with `clusters` joined, each bound to region `r1`, with open exports and
/// loopback endpoints allowed (the policy's own tests start from a default state).
pub fn joined(clusters: &[(&str, &Cluster)]) -> FederationState {
    let mut state = FederationState {
        settings: super::FederationSettings { open_exports: true, allow_loopback_endpoints: true },
        ..FederationState::default()
    };
    for (i, (name, c)) in clusters.iter().enumerate() {
        let hash = format!("hash-{name}");
        let index = u64::try_from(i).expect("small") * 2 + 1;
        apply(
            &mut state,
            index,
            Command::CreateToken {
                secret_hash: hash.clone(),
                cluster: (*name).into(),
                trust_domain: c.td.clone(),
                expires_at: now() + 3600,
                now: now(),
            },
        )
        .expect("token");
        apply(
            &mut state,
            index + 1,
            Command::Join {
                secret_hash: hash,
                cluster: (*name).into(),
                trust_domain: c.td.clone(),
                agent_id: format!("spiffe://{}/agent", c.td),
                bundle_json: c.bundle(1),
                now: now(),
            },
        )
        .expect("join");
        let locality = crate::service::Locality { region: "r1".into(), zone: String::new() };
        let update = super::PolicyUpdate { locality: Some(locality), ..Default::default() };
        apply(
            &mut state,
            index + 1,
            Command::UpdateMemberPolicy { cluster: (*name).into(), update, now: now() },
        )
        .expect("locality");
    }
    state
}
