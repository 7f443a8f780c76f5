//! What an agent has applied: the federation as its cluster sees it, at a revision.
//! Sinks write it into the places the mesh reads; the agent keeps it on disk so that it
//! goes on serving it while no replica is reachable (static stability).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use serde::{Deserialize, Serialize};

use crate::bundle::TrustBundle;
use crate::service::{ServiceExport, ServiceImport, ServiceKey};

/// The federation as one member cluster sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentView {
    /// The revision this view is complete at (the last checkpoint received).
    pub revision: u64,
    /// This cluster's name.
    pub cluster: String,
    /// This cluster's trust domain.
    pub trust_domain: String,
    /// This cluster's own bundle, as its bundle source gives it (not from the federation).
    pub own_bundle: Option<TrustBundle>,
    /// Every other member's bundle, by trust domain (the federated bundles).
    pub bundles: BTreeMap<String, TrustBundle>,
    /// This cluster's own bundle as the federation holds it (from the watch), to compare
    /// with what the agent published. Never served: sinks serve `own_bundle`.
    #[serde(default)]
    pub held_own_bundle: Option<super::held::HeldBundle>,
    /// Every import of this cluster, by namespace/name (saved as a list: JSON object keys
    /// must be strings).
    #[serde(with = "imports_as_list")]
    pub imports: BTreeMap<ServiceKey, ServiceImport>,
}

/// The imports map as a JSON array of imports (each names its service).
mod imports_as_list {
    use std::collections::BTreeMap;

    use serde::{Deserialize as _, Deserializer, Serializer};

    use crate::service::{ServiceImport, ServiceKey};

    pub fn serialize<S: Serializer>(
        imports: &BTreeMap<ServiceKey, ServiceImport>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(imports.values())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<ServiceKey, ServiceImport>, D::Error> {
        let list = Vec::<ServiceImport>::deserialize(deserializer)?;
        Ok(list.into_iter().map(|import| (import.key.clone(), import)).collect())
    }
}

impl AgentView {
    /// Every bundle a sink should serve: the federated ones and, when known, this
    /// cluster's own, by trust domain.
    #[must_use]
    pub fn all_bundles(&self) -> BTreeMap<&str, &TrustBundle> {
        let mut all: BTreeMap<&str, &TrustBundle> =
            self.bundles.iter().map(|(td, b)| (td.as_str(), b)).collect();
        if let Some(own) = &self.own_bundle {
            all.insert(own.trust_domain.as_str(), own);
        }
        all
    }
}

/// Why a sink could not apply a view.
#[derive(Debug, thiserror::Error)]
#[error("sink {sink}: {message}")]
pub struct SinkError {
    /// The sink's name.
    pub sink: String,
    /// What went wrong.
    pub message: String,
    /// When only some trust domains' bundles could not be written (the rest of the view
    /// was), those trust domains; empty when the sink failed as a whole.
    pub trust_domains: Vec<String>,
}

impl SinkError {
    /// An error of `sink` as a whole.
    pub fn new(sink: impl Into<String>, message: impl Into<String>) -> Self {
        Self { sink: sink.into(), message: message.into(), trust_domains: Vec::new() }
    }

    /// An error of `sink` that wrote everything but the bundles of `trust_domains`.
    pub fn for_trust_domains(
        sink: impl Into<String>,
        message: impl Into<String>,
        trust_domains: Vec<String>,
    ) -> Self {
        Self { sink: sink.into(), message: message.into(), trust_domains }
    }
}

/// A boxed future of a sink.
pub type SinkFuture<'a> = Pin<Box<dyn Future<Output = Result<(), SinkError>> + Send + 'a>>;

/// Somewhere an agent writes what it applied: files, etcd keys, an Envoy xDS server.
///
/// `apply` receives the whole view each time and must be idempotent: the agent calls it
/// after every change, after a restart (with the view kept on disk), and again after a
/// failure. A view is acknowledged to the federation only once every sink applied it.
pub trait Sink: Send + Sync {
    /// A short name for status lines and metrics (`files`, `etcd`, `sds`…).
    fn name(&self) -> &str;

    /// Brings the sink to `view`.
    fn apply<'a>(&'a self, view: &'a AgentView) -> SinkFuture<'a>;

    /// What the sink holds back of the view it last applied, each with why (objects its
    /// destination refuses): the rest is written, so the apply counts as done, and these
    /// show in `agent status` and `check` as warnings.
    fn skipped(&self) -> Vec<SourceProblem> {
        Vec::new()
    }
}

/// A problem with one document of a source (reported and skipped; it never stops the
/// rest).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceProblem {
    /// Where: a file path or an etcd key.
    pub location: String,
    /// What is wrong with it.
    pub message: String,
}

/// What the cluster exports, as its export sources currently say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExportSet {
    /// Valid documents, by namespace/name.
    pub exports: BTreeMap<ServiceKey, ServiceExport>,
    /// Documents that were skipped, with why.
    pub problems: Vec<SourceProblem>,
}
