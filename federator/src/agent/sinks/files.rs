//! The files sink: the federated bundles and the imports, as files in one directory, for
//! whatever in the cluster reads files (SPIRE's federation of bundles, Envoy's
//! file-based SDS, a controller):
//!
//! | file | content |
//! |---|---|
//! | `bundles/<td>.pem` | the X.509 authorities of trust domain `<td>`, PEM |
//! | `bundles/<td>.json` | its SPIFFE bundle (JWKS), [`TrustBundle::to_spiffe_json`] |
//! | `bundles.json` | every federated bundle, `{"<td>": <JWKS>, ...}` (like SPIRE's federated bundle set) |
//! | `imports.json` | every import, a JSON array of [`ImportDocument`] |
//!
//! Only the federated bundles are written, not the cluster's own (its CA already serves
//! it). Every write is atomic (a temporary file in the same directory, fsync, rename, fsync
//! of the directory) and happens only when the content changed, so readers that watch the
//! files see one change per real change. Files of trust domains no longer in the view are
//! removed; other files in the directory are left alone.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::agent::view::{AgentView, Sink, SinkError, SinkFuture};
use crate::bundle::TrustBundle;
use crate::service::ServiceImport;

/// The sink's name.
const NAME: &str = "files";

/// Writes the federated bundles and the imports into a directory.
#[derive(Clone, Debug)]
pub struct FileSink {
    dir: PathBuf,
    /// `spiffe_refresh_hint` written with a bundle that carries none.
    refresh_hint_secs: u64,
}

impl FileSink {
    /// A sink writing into `dir` (created on the first apply).
    #[must_use]
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, refresh_hint_secs: crate::bundle::DEFAULT_REFRESH_HINT_SECS }
    }

    /// Writes `secs` as the `spiffe_refresh_hint` of bundles that carry none.
    #[must_use]
    pub fn with_refresh_hint(mut self, secs: u64) -> Self {
        self.refresh_hint_secs = secs;
        self
    }

    /// The directory written.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Removes the temporary files that atomic writes left in the sink's directories
    /// (`dir` and `dir/bundles`) when the agent was killed mid-write; at start-up, before
    /// the first apply. Returns how many it removed.
    ///
    /// # Errors
    /// A directory cannot be listed, or a leftover cannot be removed.
    pub fn remove_leftover_temporaries(&self) -> std::io::Result<usize> {
        let mut removed = 0;
        for dir in [self.dir.clone(), self.dir.join("bundles")] {
            removed += crate::agent::store::remove_leftover_temporaries(&dir)?;
        }
        Ok(removed)
    }
}

impl Sink for FileSink {
    fn name(&self) -> &str {
        NAME
    }

    fn apply<'a>(&'a self, view: &'a AgentView) -> SinkFuture<'a> {
        Box::pin(async move {
            let files = render(view, self.refresh_hint_secs)?;
            let dir = self.dir.clone();
            tokio::task::spawn_blocking(move || files.write(&dir))
                .await
                .map_err(|e| SinkError::new(NAME, format!("writer task: {e}")))?
        })
    }
}

/// The files of a view, rendered.
struct Files {
    /// Trust domain → (PEM, JWKS).
    bundles: BTreeMap<String, (String, String)>,
    /// Trust domains whose names cannot name a file, with why.
    unnamable: Vec<(String, String)>,
    /// `bundles.json`.
    bundle_set: String,
    /// `imports.json`.
    imports: String,
}

fn render(view: &AgentView, hint: u64) -> Result<Files, SinkError> {
    let mut bundles = BTreeMap::new();
    let mut unnamable = Vec::new();
    for (td, bundle) in &view.bundles {
        // One trust domain that cannot be written never holds up the others.
        if let Err(error) = check_file_name(td) {
            unnamable.push((td.clone(), error.message));
            continue;
        }
        bundles.insert(td.clone(), (bundle.to_pem(), format!("{}\n", bundle.to_served_json(hint))));
    }
    let imports: Vec<ImportDocument> = view.imports.values().map(ImportDocument::from).collect();
    let mut imports = serde_json::to_string_pretty(&imports)
        .map_err(|e| SinkError::new(NAME, format!("imports.json: {e}")))?;
    imports.push('\n');
    Ok(Files { bundle_set: bundle_set_json(&view.bundles, hint), bundles, unnamable, imports })
}

/// `{"<td>": <JWKS>, ...}`, one trust domain per line.
fn bundle_set_json(bundles: &BTreeMap<String, TrustBundle>, hint: u64) -> String {
    if bundles.is_empty() {
        return "{}\n".into();
    }
    let entries: Vec<String> = bundles
        .iter()
        .map(|(td, bundle)| {
            format!("  {}: {}", serde_json::Value::String(td.clone()), bundle.to_served_json(hint))
        })
        .collect();
    format!("{{\n{}\n}}\n", entries.join(",\n"))
}

/// Refuses a trust domain name that is not safe as a file name. The federation validates
/// trust domains, but `.` and `..` pass that check and must never reach a path.
fn check_file_name(td: &str) -> Result<(), SinkError> {
    if crate::identity::validate_trust_domain(td).is_err() || td.starts_with('.') {
        return Err(SinkError::new(
            NAME,
            format!("trust domain {td:?} cannot name a file; its bundle is not written"),
        ));
    }
    Ok(())
}

impl Files {
    fn write(self, dir: &Path) -> Result<(), SinkError> {
        let io = |path: &Path, e: std::io::Error| {
            SinkError::new(NAME, format!("{}: {e}", path.display()))
        };
        let bundles_dir = dir.join("bundles");
        std::fs::create_dir_all(&bundles_dir).map_err(|e| io(&bundles_dir, e))?;
        // Each trust domain's files on their own: one that cannot be written is reported,
        // and every other one is written all the same.
        let mut failed = self.unnamable;
        for (td, (pem, jwks)) in &self.bundles {
            for (path, content) in [
                (bundles_dir.join(format!("{td}.pem")), pem),
                (bundles_dir.join(format!("{td}.json")), jwks),
            ] {
                if let Err(e) = write_if_changed(&path, content.as_bytes()) {
                    failed.push((td.clone(), format!("{}: {e}", path.display())));
                    break;
                }
            }
        }
        let set = dir.join("bundles.json");
        write_if_changed(&set, self.bundle_set.as_bytes()).map_err(|e| io(&set, e))?;
        let imports = dir.join("imports.json");
        write_if_changed(&imports, self.imports.as_bytes()).map_err(|e| io(&imports, e))?;
        let keep: BTreeSet<&str> = self.bundles.keys().map(String::as_str).collect();
        remove_stale(&bundles_dir, &keep).map_err(|e| io(&bundles_dir, e))?;
        if failed.is_empty() {
            return Ok(());
        }
        let message =
            failed.iter().map(|(td, why)| format!("{td}: {why}")).collect::<Vec<_>>().join("; ");
        Err(SinkError::for_trust_domains(
            NAME,
            format!("bundles not written (the others were): {message}"),
            failed.into_iter().map(|(td, _)| td).collect(),
        ))
    }
}

/// Replaces `path` with `content` atomically, unless it already holds it. Returns whether
/// it wrote.
fn write_if_changed(path: &Path, content: &[u8]) -> std::io::Result<bool> {
    match std::fs::read(path) {
        Ok(current) if current == content => return Ok(false),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    crate::agent::store::write_atomic(path, content, 0o644)?;
    Ok(true)
}

/// Removes `<td>.pem` and `<td>.json` of trust domains not in `keep`.
fn remove_stale(bundles_dir: &Path, keep: &BTreeSet<&str>) -> std::io::Result<()> {
    let mut removed = false;
    for entry in std::fs::read_dir(bundles_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let td = name.strip_suffix(".pem").or_else(|| name.strip_suffix(".json"));
        if let Some(td) = td
            && !td.starts_with('.')
            && !keep.contains(td)
            && entry.file_type()?.is_file()
        {
            std::fs::remove_file(entry.path())?;
            tracing::info!(file = %entry.path().display(), "removed the bundle of a trust domain that left");
            removed = true;
        }
    }
    if removed {
        sync_dir(bundles_dir)?;
    }
    Ok(())
}

/// fsyncs a directory, so that a rename or removal in it survives a crash.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

// === the import document ===

/// An import as the sinks write it: an entry of `imports.json`, the value of an etcd
/// import key. Kubernetes-style camelCase JSON.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportDocument {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `NAME.NS.svc.clusterset.local`.
    pub hostname: String,
    /// The merged ports.
    pub ports: Vec<ImportPortDocument>,
    /// Every exporter's SPIFFE IDs together; verify an endpoint against its own
    /// cluster's `identities` instead.
    pub identities: Vec<String>,
    /// Per exporting cluster, nearest first.
    pub clusters: Vec<ImportClusterDocument>,
    /// Conditions (`Conflict`).
    pub conditions: Vec<ImportConditionDocument>,
    /// The federation's revision of the last change to the service.
    pub revision: u64,
}

/// A port of an import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportPortDocument {
    /// Name (may be empty for a single-port service).
    pub name: String,
    /// Port number.
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Application protocol, empty when not given.
    pub app_protocol: String,
}

/// The endpoints one exporting cluster contributes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportClusterDocument {
    /// The exporting cluster.
    pub cluster: String,
    /// Its trust domain (whose bundle verifies its workloads).
    pub trust_domain: String,
    /// Whether its lease is live.
    pub live: bool,
    /// Reached through its east-west gateway.
    pub via_gateway: bool,
    /// The SPIFFE IDs its endpoints run as: accept them from these endpoints only.
    #[serde(default)]
    pub identities: Vec<String>,
    /// Its endpoints, by priority then address.
    pub endpoints: Vec<ImportEndpointDocument>,
}

/// An endpoint of an import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportEndpointDocument {
    /// Address to connect to.
    pub address: IpAddr,
    /// Ports that differ from the import's (by port name).
    pub ports: Vec<ImportEndpointPortDocument>,
    /// Zone.
    pub zone: String,
    /// Region.
    pub region: String,
    /// Load-balancing weight.
    pub weight: u32,
    /// Ready (reported ready and its cluster's lease live).
    pub ready: bool,
    /// Failover priority from this cluster's locality (0 = same zone).
    pub priority: u32,
}

/// A port of an endpoint that differs from the import's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportEndpointPortDocument {
    /// The import port's name.
    pub name: String,
    /// The endpoint's port number.
    pub port: u16,
}

/// A condition of an import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ImportConditionDocument {
    /// `Conflict`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The exporting clusters concerned.
    pub clusters: Vec<String>,
    /// For people.
    pub message: String,
}

impl From<&ServiceImport> for ImportDocument {
    fn from(import: &ServiceImport) -> Self {
        Self {
            namespace: import.key.namespace.clone(),
            name: import.key.name.clone(),
            hostname: import.hostname.clone(),
            ports: import
                .ports
                .iter()
                .map(|p| ImportPortDocument {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: p.protocol.as_str().to_string(),
                    app_protocol: p.app_protocol.clone(),
                })
                .collect(),
            identities: import.identities.clone(),
            clusters: import
                .clusters
                .iter()
                .map(|c| ImportClusterDocument {
                    cluster: c.cluster.clone(),
                    trust_domain: c.trust_domain.clone(),
                    live: c.live,
                    via_gateway: c.via_gateway,
                    identities: c.identities.clone(),
                    endpoints: c
                        .endpoints
                        .iter()
                        .map(|e| ImportEndpointDocument {
                            address: e.address,
                            ports: e
                                .ports
                                .iter()
                                .map(|p| ImportEndpointPortDocument {
                                    name: p.name.clone(),
                                    port: p.port,
                                })
                                .collect(),
                            zone: e.zone.clone(),
                            region: e.region.clone(),
                            weight: e.weight,
                            ready: e.ready,
                            priority: e.priority,
                        })
                        .collect(),
                })
                .collect(),
            conditions: import
                .conditions
                .iter()
                .map(|c| ImportConditionDocument {
                    kind: c.kind.clone(),
                    clusters: c.clusters.clone(),
                    message: c.message.clone(),
                })
                .collect(),
            revision: import.revision,
        }
    }
}

/// The import as compact JSON (an [`ImportDocument`]), as the etcd sink writes it.
#[must_use]
pub fn import_json(import: &ServiceImport) -> String {
    serde_json::to_string(&ImportDocument::from(import)).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests;
