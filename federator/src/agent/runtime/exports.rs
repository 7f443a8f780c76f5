//! What the cluster exports: the configured export sources merged into one set, and
//! that set published to the federation (refusals reported back to the sources that can
//! show them).

use std::collections::BTreeMap;

use federator_proto::federation as pb;
use federator_proto::federation::federation_client::FederationClient;
use sha2::Digest as _;
use tokio::sync::watch;
use tonic::Code;
use tonic::transport::Channel;

use super::session_error::SessionError;
use super::tasks::Tasks;
use super::{Agent, SOURCE_POLL};
use crate::agent::config::AgentConfig;
use crate::agent::deadlines::bounded;
use crate::agent::view::ExportSet;
use crate::service::{ServiceKey, export_to_proto};

/// Merges the configured export sources into one receiver (empty when none is set).
pub(super) async fn export_sources(
    config: &AgentConfig,
    trust_domain: &str,
    kubernetes: Option<&kube::Client>,
    refusals: watch::Receiver<BTreeMap<ServiceKey, String>>,
    tasks: &mut Tasks,
) -> watch::Receiver<ExportSet> {
    let mut inputs = Vec::new();
    if let (Some(file), Some(client)) = (&config.file.exports.kubernetes, kubernetes) {
        let rules = crate::agent::kubernetes::exports::ExportRules {
            trust_domain: trust_domain.to_string(),
            trusted_namespaces: file.trusted_namespaces.iter().cloned().collect(),
            gateways: file.gateways.iter().copied().collect(),
        };
        let (rx, task) = crate::agent::kubernetes::source::watch_kubernetes_exports(
            client.clone(),
            rules,
            !config.file.lease.region.is_empty(),
            refusals,
        )
        .await;
        tasks.own("kubernetes exports", task);
        inputs.push(rx);
    }
    if let Some(prefix) = &config.file.exports.etcd_prefix {
        let (rx, task) = crate::agent::sources::etcd_exports::watch_etcd_exports_owned(
            config.file.exports.etcd_endpoints.clone(),
            config.file.exports.etcd_auth.clone().unwrap_or_default(),
            prefix.clone(),
            trust_domain.to_string(),
        )
        .await;
        tasks.own("etcd exports", task);
        inputs.push(rx);
    }
    if let Some(path) = &config.file.exports.file {
        let (rx, task) = crate::agent::sources::file_exports::spawn_watch(
            path.clone(),
            trust_domain.to_string(),
            SOURCE_POLL,
        );
        tasks.own("exports file", task);
        inputs.push(rx);
    }
    let (tx, rx) = watch::channel(ExportSet::default());
    if inputs.is_empty() {
        // Keep the sender alive so that the receiver never reports a closed channel.
        tasks.spawn("exports", async move { tx.closed().await });
        return rx;
    }
    // Ends when the receiver is dropped (the session loop ended): then it drops the
    // sources' receivers, and they end too.
    tasks.spawn("exports", async move {
        loop {
            let merged =
                merge_export_sets(inputs.iter_mut().map(|r| r.borrow_and_update().clone()));
            if tx.send(merged).is_err() {
                return;
            }
            let changes = inputs.iter_mut().map(|r| Box::pin(r.changed()));
            tokio::select! {
                (changed, _, _) = futures::future::select_all(changes) => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tx.closed() => return,
            }
        }
    });
    rx
}

/// Merges export sets; the first source wins a service both name (the other is reported).
pub(super) fn merge_export_sets(sets: impl Iterator<Item = ExportSet>) -> ExportSet {
    let mut merged = ExportSet::default();
    for set in sets {
        merged.problems.extend(set.problems);
        for (key, export) in set.exports {
            match merged.exports.entry(key) {
                std::collections::btree_map::Entry::Occupied(taken) => {
                    merged.problems.push(crate::agent::view::SourceProblem {
                        location: taken.key().to_string(),
                        message: "exported by two sources; the first one wins (Kubernetes, \
                                  then etcd, then the file)"
                            .into(),
                    });
                }
                std::collections::btree_map::Entry::Vacant(free) => {
                    free.insert(export);
                }
            }
        }
    }
    merged
}

impl Agent {
    pub(super) async fn sync_exports(
        &mut self,
        client: &mut FederationClient<Channel>,
        set: &ExportSet,
    ) -> Result<(), SessionError> {
        self.status.exports.exports = set.exports.len();
        self.status.exports.problems.clone_from(&set.problems);
        let mut refused = BTreeMap::new();
        for (key, export) in &set.exports {
            let digest = export_digest(export);
            let name = key.to_string();
            if self.published.exports.get(&name) == Some(&digest) {
                continue;
            }
            let request = pb::ExportServiceRequest { export: Some(export_to_proto(export)) };
            let deadline = self.deadlines().call;
            match bounded("export", deadline, client.export_service(request)).await? {
                Ok(_) => {
                    tracing::info!(service = %name, "exported");
                    self.published.exports.insert(name, digest);
                }
                Err(status)
                    if matches!(status.code(), Code::InvalidArgument | Code::PermissionDenied) =>
                {
                    tracing::warn!(service = %name, error = %status.message(), "export refused");
                    refused.insert(key.clone(), status.message().to_string());
                    self.status.exports.problems.push(crate::agent::view::SourceProblem {
                        location: name,
                        message: format!("the federation refused it: {}", status.message()),
                    });
                }
                Err(status) => return Err(SessionError::Answered { call: "export", status }),
            }
        }
        self.export_refusals.send_if_modified(|current| {
            let changed = *current != refused;
            *current = refused;
            changed
        });
        // A source that cannot be read (etcd down, the file missing) says nothing about
        // what is exported: withdraw nothing until every source reads again.
        let sources_down: Vec<&str> = set
            .problems
            .iter()
            .filter(|p| self.is_source_location(&p.location))
            .map(|p| p.location.as_str())
            .collect();
        if !sources_down.is_empty() {
            tracing::debug!(?sources_down, "an export source is unreadable; withdrawing nothing");
            self.status.exports.published = self.published.exports.len();
            return Ok(());
        }
        let gone: Vec<String> = self
            .published
            .exports
            .keys()
            .filter(|name| !ServiceKey::parse(name).is_ok_and(|k| set.exports.contains_key(&k)))
            .cloned()
            .collect();
        for name in gone {
            let Ok(key) = ServiceKey::parse(&name) else {
                self.published.exports.remove(&name);
                continue;
            };
            let request = pb::UnexportServiceRequest { namespace: key.namespace, name: key.name };
            let deadline = self.deadlines().call;
            match bounded("unexport", deadline, client.unexport_service(request)).await? {
                Ok(_) => {}
                // Already gone (the federation removed it, or an earlier try did).
                Err(status) if status.code() == Code::NotFound => {}
                Err(status) => return Err(SessionError::Answered { call: "unexport", status }),
            }
            tracing::info!(service = %name, "unexported");
            self.published.exports.remove(&name);
        }
        self.status.exports.published = self.published.exports.len();
        self.save_published().await?;
        Ok(())
    }

    /// Whether a problem's location is a whole export source (not one document of it).
    pub(super) fn is_source_location(&self, location: &str) -> bool {
        let exports = &self.config.file.exports;
        exports.etcd_prefix.as_deref() == Some(location)
            || exports.file.as_ref().is_some_and(|f| f.as_os_str() == location)
            || (exports.kubernetes.is_some()
                && location == crate::agent::kubernetes::source::SOURCE_LOCATION)
    }
}

/// Digest of an export, to publish only what changed.
fn export_digest(export: &crate::service::ServiceExport) -> String {
    let bytes = postcard::to_stdvec(export).unwrap_or_default();
    hex::encode(sha2::Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_export_tasks_end_by_themselves_once_the_merged_receiver_is_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let text = "state_dir = \"state\"\n[svid]\ncert = \"agent.pem\"\nkey = \"agent.key\"\n\
                    [bundle]\nkind = \"file\"\npath = \"bundle.pem\"\nformat = \"pem\"\n\
                    [exports]\nfile = \"exports.json\"\n";
        let config = AgentConfig::parse(text, &dir.path().join("agent.toml"), Some("t".into()))
            .expect("config");
        let (_refusals_tx, refusals) = watch::channel(BTreeMap::new());
        let mut tasks = Tasks::default();
        let mut exports = export_sources(&config, "a.test", None, refusals, &mut tasks).await;
        assert_eq!(tasks.running(), 2, "the file source and the merge");
        // The merge's first value: it is past its first send, waiting for its sources.
        exports.changed().await.expect("a first merged set");
        drop(exports);
        let aborted = tasks.join(std::time::Duration::from_secs(5)).await;
        assert!(aborted.is_empty(), "tasks that did not end by themselves: {aborted:?}");
    }

    #[test]
    fn the_first_source_wins_a_service_both_export() {
        let key = ServiceKey::new("ns", "a");
        let export = |port| crate::service::ServiceExport {
            key: key.clone(),
            ports: vec![crate::service::ServicePort {
                name: "http".into(),
                port,
                protocol: crate::service::Protocol::Tcp,
                app_protocol: String::new(),
            }],
            endpoints: Vec::new(),
            identities: Vec::new(),
            scope: crate::service::ExportScope::AllMembers,
            mode: crate::service::ExportMode::Direct,
        };
        let one =
            ExportSet { exports: BTreeMap::from([(key.clone(), export(80))]), problems: vec![] };
        let two =
            ExportSet { exports: BTreeMap::from([(key.clone(), export(81))]), problems: vec![] };
        let merged = merge_export_sets([one, two].into_iter());
        assert_eq!(merged.exports[&key].ports[0].port, 80);
        assert_eq!(merged.problems.len(), 1);
    }
}
