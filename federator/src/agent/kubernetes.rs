//! The agent in a Kubernetes cluster: the Multi-Cluster Services API in and out, trust
//! anchors as `ClusterTrustBundle`s.
//!
//! - [`source`]: `ServiceExport` objects (with their Services and EndpointSlices) are what
//!   the cluster exports; the agent writes each one's `Valid` condition back.
//! - [`sink`]: what the cluster imports becomes `ServiceImport`s and EndpointSlices, the
//!   federated trust domains `ClusterTrustBundle`s; the `Conflict` condition goes on the
//!   cluster's own `ServiceExport`s.
//! - [`crd`]: the MCS CustomResourceDefinitions (`deploy/crds/mcs.yaml`).
//! - [`exports`], [`imports`]: the conversions, free of any API call.
//!
//! Objects are written with server-side apply under the field managers
//! [`SOURCE_MANAGER`] and [`SINK_MANAGER`], and labelled as the agent's
//! ([`imports::owner_labels`]); the agent deletes only objects that carry its labels.

pub mod crd;
pub mod exports;
pub mod imports;
pub mod sink;
pub mod source;

use std::path::PathBuf;

/// Field manager of the source's writes (the `Valid` condition).
pub const SOURCE_MANAGER: &str = "federator-agent-exports";
/// Field manager of the sink's writes.
pub const SINK_MANAGER: &str = "federator-agent";

// One agent per API server: the objects' names do not carry the agent's cluster, so two
// agents writing into one API server would overwrite each other's objects (each deletes
// only objects with its own labels).

/// Where the agent finds its cluster's API server.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Connection {
    /// A kubeconfig file; without it `$KUBECONFIG` or `~/.kube/config` when there is
    /// one, else the in-cluster service account (kube's inference order).
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (its current one when not given).
    pub context: Option<String>,
}

/// Why the agent cannot talk to its cluster's API server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The kubeconfig file could not be read or parsed.
    #[error("kubernetes.kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// Why.
        source: kube::config::KubeconfigError,
    },
    /// No configuration was found or it was not usable.
    #[error("kubernetes: {0}")]
    Infer(String),
    /// The client could not be built (TLS settings).
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

impl Connection {
    /// A client for the configured cluster.
    ///
    /// # Errors
    /// The kubeconfig is unreadable or names no usable cluster.
    pub async fn client(&self) -> Result<kube::Client, ConnectError> {
        let options = kube::config::KubeConfigOptions {
            context: self.context.clone(),
            ..kube::config::KubeConfigOptions::default()
        };
        let config = match &self.kubeconfig {
            Some(path) => {
                let kubeconfig = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                    ConnectError::Kubeconfig { path: path.display().to_string(), source }
                })?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options).await.map_err(
                    |source| ConnectError::Kubeconfig { path: path.display().to_string(), source },
                )?
            }
            None if self.context.is_some() => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(|e| ConnectError::Infer(e.to_string()))?,
            None => kube::Config::infer().await.map_err(|e| ConnectError::Infer(e.to_string()))?,
        };
        Ok(kube::Client::try_from(config)?)
    }
}

/// `ServiceExport`s of `namespace` as untyped objects, for status writes: the answer to
/// a write is the whole object, which need not decode as the agent's type (an upstream
/// MCS `ServiceExport` has no spec).
#[must_use]
pub fn service_exports_api(
    client: &kube::Client,
    namespace: &str,
) -> kube::Api<kube::core::DynamicObject> {
    let resource = kube::core::ApiResource::erase::<crd::ServiceExport>(&());
    kube::Api::namespaced_with(client.clone(), namespace, &resource)
}

/// Now as Kubernetes writes times (`2026-12-06T23:59:59Z`, whole seconds).
#[must_use]
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    now.format(&time::format_description::well_known::Rfc3339).unwrap_or_default()
}
