//! The Kubernetes sink: brings the cluster's `ServiceImport`s, EndpointSlices and
//! `ClusterTrustBundle`s to the view ([`super::imports::desired_objects`]), and puts the
//! `Conflict` condition on the cluster's own `ServiceExport`s.
//!
//! Each apply writes (server-side apply, field manager [`SINK_MANAGER`]) every object
//! whose content changed since this process last wrote it, then lists the objects with
//! the agent's labels and deletes those the view no longer has; an object of the agent
//! that someone deleted is written again. An import whose namespace does not exist in
//! this cluster is skipped (the MCS API puts imports in the exported service's namespace
//! and never creates namespaces) and named in the log. Like every sink, the objects stay
//! as they are while the federation cannot be reached.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::api::certificates::v1::ClusterTrustBundle;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Resource, ResourceExt as _};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::Digest as _;

use super::SINK_MANAGER;
use super::crd::ServiceImport as ServiceImportObject;
use super::imports::{Desired, desired_objects, owner_selector};
use crate::agent::view::{AgentView, Sink, SinkError, SinkFuture, SourceProblem};
use crate::service::ServiceKey;

/// Time allowed for one API call.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Suffix of the [`KubernetesSink::written`] entry of an object's status.
const STATUS_SUFFIX: &str = "#status";
/// The sink's name in status lines and metrics.
const NAME: &str = "kubernetes";

/// Writes a view into one cluster's API server.
pub struct KubernetesSink {
    client: kube::Client,
    signer: String,
    write_imports: bool,
    write_trust_bundles: bool,
    /// Digest of what this process last wrote, by object (`kind/namespace/name`).
    written: Mutex<BTreeMap<String, String>>,
    /// The `Conflict` condition last written, by service: status, message, transition.
    conflicts: Mutex<BTreeMap<ServiceKey, (bool, String, String)>>,
    /// Objects of the view that are not written, by object: where and why.
    held_back: Mutex<BTreeMap<String, SourceProblem>>,
}

impl KubernetesSink {
    /// A sink writing through `client`, `ClusterTrustBundle`s for `signer`.
    #[must_use]
    pub fn new(client: kube::Client, signer: String) -> Self {
        Self {
            client,
            signer,
            write_imports: true,
            write_trust_bundles: true,
            written: Mutex::new(BTreeMap::new()),
            conflicts: Mutex::new(BTreeMap::new()),
            held_back: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether to write `ServiceImport`s and EndpointSlices (default yes).
    #[must_use]
    pub fn with_imports(mut self, on: bool) -> Self {
        self.write_imports = on;
        self
    }

    /// Whether to write `ClusterTrustBundle`s (default yes).
    #[must_use]
    pub fn with_trust_bundles(mut self, on: bool) -> Self {
        self.write_trust_bundles = on;
        self
    }

    async fn apply_view(&self, view: &AgentView) -> Result<(), SinkError> {
        if view.cluster.is_empty() {
            // Not joined yet: nothing of the federation to write.
            return Ok(());
        }
        let mut desired = desired_objects(view, &self.signer);
        if !self.write_imports {
            desired.service_imports.clear();
            desired.endpoint_slices.clear();
        }
        if !self.write_trust_bundles {
            desired.trust_bundles.clear();
        }
        let Desired { service_imports, endpoint_slices, trust_bundles } = desired;
        let selector = owner_selector(&view.cluster);
        // What this view no longer has is no longer held back.
        let wanted: BTreeSet<String> = ids("ServiceImport", &service_imports)
            .into_iter()
            .chain(ids("EndpointSlice", &endpoint_slices))
            .chain(ids("ClusterTrustBundle", &trust_bundles))
            .collect();
        self.held_back().retain(|id, _| wanted.contains(id));
        let mut missing_namespaces = BTreeSet::new();

        // Trust first: a refused import must not keep the federated anchors from pods.
        let mut failed_domains = Vec::new();
        let mut bundle_error = None;
        for object in &trust_bundles {
            let api = Api::<ClusterTrustBundle>::all(self.client.clone());
            if let Err(error) = self.write(&api, object, "ClusterTrustBundle").await {
                let domain = object
                    .annotations()
                    .get(super::imports::TRUST_DOMAIN_ANNOTATION)
                    .cloned()
                    .unwrap_or_default();
                failed_domains.push(domain);
                bundle_error = Some(match error {
                    Written::Failed(e) => e.message,
                    Written::NoNamespace => "not found".into(),
                    Written::Refused => "refused by the API server as invalid".into(),
                });
            }
        }

        // Imports, then their endpoints: a consumer never sees endpoints of a service it
        // cannot resolve. An object the API server refuses as invalid is skipped (and
        // logged); the others are written.
        for object in &service_imports {
            let namespace = object.namespace().unwrap_or_default();
            let api = Api::<ServiceImportObject>::namespaced(self.client.clone(), &namespace);
            match self.write(&api, object, "ServiceImport").await {
                Err(Written::NoNamespace) => {
                    self.held_back().insert(
                        object_id("ServiceImport", &namespace, &object.name_any()),
                        SourceProblem {
                            location: format!("ServiceImport {namespace}/{}", object.name_any()),
                            message: format!(
                                "namespace {namespace} does not exist in this cluster: create \
                                 it to import the service"
                            ),
                        },
                    );
                    missing_namespaces.insert(namespace);
                }
                Err(Written::Failed(error)) => return Err(error),
                Err(Written::Refused) => {}
                Ok(()) => {
                    let status = serde_json::json!({
                        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
                        "kind": "ServiceImport",
                        "status": object.status,
                    });
                    let id = object_id("ServiceImport", &namespace, &object.name_any());
                    self.write_status(&api, &object.name_any(), &id, &status).await?;
                }
            }
        }
        if !missing_namespaces.is_empty() {
            tracing::warn!(
                namespaces = ?missing_namespaces,
                "imports skipped: their namespaces do not exist in this cluster (create them to import)"
            );
        }
        for object in &endpoint_slices {
            let namespace = object.namespace().unwrap_or_default();
            if missing_namespaces.contains(&namespace) {
                continue;
            }
            let api = Api::<EndpointSlice>::namespaced(self.client.clone(), &namespace);
            match self.write(&api, object, "EndpointSlice").await {
                Ok(()) | Err(Written::NoNamespace | Written::Refused) => {}
                Err(Written::Failed(error)) => return Err(error),
            }
        }
        // What the view no longer has goes; what someone deleted is written next time.
        // (Kinds turned off are not read at all: their API may not be served.)
        let client = &self.client;
        if self.write_imports {
            // Endpoints go before their service (the reverse of writing).
            self.prune(
                Api::<EndpointSlice>::all(client.clone()),
                |ns| Api::namespaced(client.clone(), ns),
                "EndpointSlice",
                &selector,
                &ids("EndpointSlice", &endpoint_slices),
            )
            .await?;
            self.prune(
                Api::<ServiceImportObject>::all(client.clone()),
                |ns| Api::namespaced(client.clone(), ns),
                "ServiceImport",
                &selector,
                &ids("ServiceImport", &service_imports),
            )
            .await?;
            self.write_conflicts(view).await;
        }
        if self.write_trust_bundles {
            self.prune(
                Api::<ClusterTrustBundle>::all(client.clone()),
                |_| Api::all(client.clone()),
                "ClusterTrustBundle",
                &selector,
                &ids("ClusterTrustBundle", &trust_bundles),
            )
            .await?;
        }
        match bundle_error {
            Some(message) => Err(SinkError::for_trust_domains(NAME, message, failed_domains)),
            None => Ok(()),
        }
    }

    /// Applies `object` unless this process already wrote exactly it.
    async fn write<K>(&self, api: &Api<K>, object: &K, kind: &str) -> Result<(), Written>
    where
        K: Resource + Clone + DeserializeOwned + Serialize + Debug,
    {
        let name = object.meta().name.clone().unwrap_or_default();
        let id = object_id(kind, object.meta().namespace.as_deref().unwrap_or(""), &name);
        let digest = match serde_json::to_vec(object) {
            Ok(bytes) => hex::encode(sha2::Sha256::digest(&bytes)),
            Err(error) => {
                return Err(Written::Failed(SinkError::new(NAME, format!("{id}: {error}"))));
            }
        };
        if self.written().get(&id) == Some(&digest) {
            return Ok(());
        }
        let params = PatchParams::apply(SINK_MANAGER).force();
        match tokio::time::timeout(CALL_TIMEOUT, api.patch(&name, &params, &Patch::Apply(object)))
            .await
        {
            Ok(Ok(_)) => {
                self.held_back().remove(&id);
                self.written().insert(id, digest);
                Ok(())
            }
            Ok(Err(kube::Error::Api(status)))
                if status.is_not_found() && status.message.contains("namespaces") =>
            {
                Err(Written::NoNamespace)
            }
            // Invalid: writing the same content again cannot succeed. Remembered, so it is
            // tried again only once its content changes.
            Ok(Err(kube::Error::Api(status))) if status.is_invalid() => {
                tracing::warn!(object = %id, error = %status.message, "the API server refuses the object; skipped");
                let namespace = object.meta().namespace.as_deref().unwrap_or("");
                let location = if namespace.is_empty() {
                    format!("{kind} {name}")
                } else {
                    format!("{kind} {namespace}/{name}")
                };
                let message = format!("the API server refuses it as invalid: {}", status.message);
                self.held_back().insert(id.clone(), SourceProblem { location, message });
                self.written().insert(id, digest);
                Err(Written::Refused)
            }
            Ok(Err(error)) => {
                self.written().remove(&id);
                Err(Written::Failed(SinkError::new(
                    NAME,
                    format!("writing {id}: {}", describe(&error)),
                )))
            }
            Err(_) => {
                self.written().remove(&id);
                Err(Written::Failed(SinkError::new(
                    NAME,
                    format!("writing {id}: no answer within {CALL_TIMEOUT:?}"),
                )))
            }
        }
    }

    /// Applies `patch` to the status of `name` (the object `object`, an [`object_id`]).
    async fn write_status<K>(
        &self,
        api: &Api<K>,
        name: &str,
        object: &str,
        patch: &serde_json::Value,
    ) -> Result<(), SinkError>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
    {
        let id = format!("{object}{STATUS_SUFFIX}");
        let digest = hex::encode(sha2::Sha256::digest(patch.to_string().as_bytes()));
        if self.written().get(&id) == Some(&digest) {
            return Ok(());
        }
        let params = PatchParams::apply(SINK_MANAGER).force();
        match tokio::time::timeout(
            CALL_TIMEOUT,
            api.patch_status(name, &params, &Patch::Apply(patch)),
        )
        .await
        {
            Ok(Ok(_)) => {
                self.written().insert(id, digest);
                Ok(())
            }
            Ok(Err(error)) => Err(SinkError::new(
                NAME,
                format!("writing the status of {object}: {}", describe(&error)),
            )),
            Err(_) => Err(SinkError::new(
                NAME,
                format!("writing the status of {object}: no answer within {CALL_TIMEOUT:?}"),
            )),
        }
    }

    /// Deletes the agent's objects of `api`'s kind that are not in `keep`, and forgets
    /// what it wrote of those that are gone.
    async fn prune<K>(
        &self,
        api: Api<K>,
        api_in: impl Fn(&str) -> Api<K>,
        kind: &str,
        selector: &str,
        keep: &BTreeSet<String>,
    ) -> Result<(), SinkError>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
    {
        let fail = |what: String| SinkError::new(NAME, what);
        let listed = tokio::time::timeout(
            CALL_TIMEOUT,
            api.list_metadata(&ListParams::default().labels(selector)),
        )
        .await
        .map_err(|_| fail(format!("listing {kind}s: no answer within {CALL_TIMEOUT:?}")))?
        .map_err(|e| fail(format!("listing {kind}s: {}", describe(&e))))?;
        let present: BTreeSet<String> = listed
            .items
            .iter()
            .map(|o| {
                object_id(
                    kind,
                    o.metadata.namespace.as_deref().unwrap_or(""),
                    o.metadata.name.as_deref().unwrap_or(""),
                )
            })
            .collect();
        // Written by this process but deleted since: write it again next time. (One the
        // API server refused is not there either: it is tried again once it changes.)
        let refused: BTreeSet<String> = self.held_back().keys().cloned().collect();
        self.written().retain(|id, _| {
            !id.starts_with(&format!("{kind}/"))
                || refused.contains(id)
                || present.contains(id.strip_suffix(STATUS_SUFFIX).unwrap_or(id))
        });
        for object in &listed.items {
            let namespace = object.metadata.namespace.clone().unwrap_or_default();
            let name = object.metadata.name.clone().unwrap_or_default();
            let id = object_id(kind, &namespace, &name);
            if keep.contains(&id) {
                continue;
            }
            // Whatever happens next, what this process wrote of it is no longer known.
            self.written()
                .retain(|written, _| written.strip_suffix(STATUS_SUFFIX).unwrap_or(written) != id);
            let api = api_in(&namespace);
            match tokio::time::timeout(CALL_TIMEOUT, api.delete(&name, &DeleteParams::default()))
                .await
            {
                Ok(Ok(_)) => tracing::info!(kind, namespace, name, "deleted"),
                Ok(Err(error)) if is_not_found(&error) => {}
                Ok(Err(error)) => {
                    return Err(fail(format!(
                        "deleting {kind} {namespace}/{name}: {}",
                        describe(&error)
                    )));
                }
                Err(_) => {
                    return Err(fail(format!(
                        "deleting {kind} {namespace}/{name}: no answer within {CALL_TIMEOUT:?}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The `Conflict` condition on each `ServiceExport` of this cluster whose service
    /// it imports: true while exporters define its ports differently. A condition that
    /// cannot be written is logged and tried again with the next view: it must not hold
    /// up the imports and bundles (a failing sink delays every acknowledgement).
    async fn write_conflicts(&self, view: &AgentView) {
        for import in view.imports.values() {
            if !import.clusters.iter().any(|c| c.cluster == view.cluster) {
                continue;
            }
            let conflict = import.conditions.iter().find(|c| c.kind == "Conflict");
            let (status, reason, message) = match conflict {
                Some(c) => (true, "PortConflict", c.message.clone()),
                None => (
                    false,
                    "NoConflict",
                    "every exporting cluster defines the same ports".to_string(),
                ),
            };
            let since = match self.conflicts().get(&import.key) {
                Some((last, text, _)) if *last == status && *text == message => continue,
                Some((last, _, since)) if *last == status => since.clone(),
                _ => super::now_rfc3339(),
            };
            let patch = serde_json::json!({
                "apiVersion": "multicluster.x-k8s.io/v1alpha1",
                "kind": "ServiceExport",
                "status": { "conditions": [{
                    "type": "Conflict",
                    "status": if status { "True" } else { "False" },
                    "reason": reason,
                    "message": message,
                    "lastTransitionTime": since,
                }]},
            });
            let api = super::service_exports_api(&self.client, &import.key.namespace);
            let params = PatchParams::apply(SINK_MANAGER).force();
            match tokio::time::timeout(
                CALL_TIMEOUT,
                api.patch_status(&import.key.name, &params, &Patch::Apply(&patch)),
            )
            .await
            {
                Ok(Ok(_)) => {
                    self.conflicts().insert(import.key.clone(), (status, message, since));
                }
                // Exported through another source, or the ServiceExport is gone.
                Ok(Err(error)) if is_not_found(&error) => {}
                Ok(Err(error)) => tracing::warn!(
                    service = %import.key,
                    error = %describe(&error),
                    "cannot write the ServiceExport's Conflict condition"
                ),
                Err(_) => tracing::warn!(
                    service = %import.key,
                    "writing the ServiceExport's Conflict condition timed out"
                ),
            }
        }
    }

    fn written(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, String>> {
        self.written.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn held_back(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, SourceProblem>> {
        self.held_back.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn conflicts(&self) -> std::sync::MutexGuard<'_, BTreeMap<ServiceKey, (bool, String, String)>> {
        self.conflicts.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// How a write ended when it did not.
enum Written {
    /// The object's namespace does not exist.
    NoNamespace,
    /// The API server refuses the object as invalid (skipped until its content changes).
    Refused,
    /// Any other failure.
    Failed(SinkError),
}

/// The ids of `objects` of `kind`.
fn ids<K: Resource>(kind: &str, objects: &[K]) -> BTreeSet<String> {
    objects
        .iter()
        .map(|o| {
            let meta = o.meta();
            object_id(
                kind,
                meta.namespace.as_deref().unwrap_or(""),
                meta.name.as_deref().unwrap_or(""),
            )
        })
        .collect()
}

/// What went wrong, once: the API server's own message for a refusal (kube's `Display`
/// repeats it inside a dump of the whole status).
pub(super) fn describe(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => other.to_string(),
    }
}

/// Whether the API server answered 404 Not Found.
fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.is_not_found())
}

fn object_id(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind}/{namespace}/{name}")
}

impl Sink for KubernetesSink {
    fn name(&self) -> &str {
        NAME
    }

    fn apply<'a>(&'a self, view: &'a AgentView) -> SinkFuture<'a> {
        Box::pin(self.apply_view(view))
    }

    fn skipped(&self) -> Vec<SourceProblem> {
        self.held_back().values().cloned().collect()
    }
}
