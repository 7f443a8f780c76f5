//! Agent settings: `agent.toml`, with the join token also from the environment or a flag.
//! A wrong or missing setting stops start-up with a message that names it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::etcd_auth::EtcdAuth;
use super::sinks::xds::MeshSettings;
use super::sinks::xds::mesh::{CertificateSource, EgressSettings};
use super::sources::bundle::BundleSourceConfig;
use crate::identity::workload_api::{ENDPOINT_SOCKET_ENV, FIRST_SVID_TIMEOUT, WorkloadApiAddress};
use crate::identity::{CertifiedIdentity, IdentityError};
use crate::settings::ConfigError;
use crate::state::{MAX_LEASE_TTL_SECS, MIN_LEASE_TTL_SECS};
use crate::token::JoinToken;

/// `agent.toml` as written.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    /// Where the agent keeps its membership, the applied view and its status.
    pub state_dir: PathBuf,
    /// A file holding the join token (first run only).
    pub token_file: Option<PathBuf>,
    /// Federation API addresses; default: those of the join token.
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The federation CA (PEM file); default: the one in the join token.
    pub federation_ca: Option<PathBuf>,
    /// The agent's own X.509-SVID: files reloaded when they change, or the Workload API.
    #[serde(default)]
    pub svid: SvidConfig,
    /// This cluster's own trust bundle.
    pub bundle: BundleSourceConfig,
    /// Publish the own bundle even when it no longer certifies this agent's own SVID
    /// (the federation refuses such a bundle otherwise: the agent would lock itself out).
    /// The federation audits each such publication as `publish_bundle (forced)`. Set it
    /// for the one rotation that needs it, then remove it.
    #[serde(default)]
    pub force_publish_bundle: bool,
    /// `spiffe_refresh_hint` the files and etcd sinks write with a federated bundle that
    /// carries none, seconds (10 s to 7 days; default 300). A member's own hint is
    /// written as it published it.
    pub bundle_refresh_hint_seconds: Option<u64>,
    /// What the cluster exports.
    #[serde(default)]
    pub exports: ExportsFile,
    /// The member lease.
    #[serde(default)]
    pub lease: LeaseFile,
    /// Where federated bundles and imports are written.
    #[serde(default)]
    pub sinks: SinksFile,
    /// Prometheus `/metrics` address (loopback by default: off).
    pub listen_metrics: Option<SocketAddr>,
    /// The cluster's Kubernetes API server, for `[exports.kubernetes]` and
    /// `[sinks.kubernetes]`.
    #[serde(default)]
    pub kubernetes: KubernetesFile,
}

/// `[kubernetes]`: how the agent reaches its cluster's API server.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesFile {
    /// A kubeconfig file; without it `$KUBECONFIG` or `~/.kube/config` when there is
    /// one, else the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    pub context: Option<String>,
}

/// `[exports.kubernetes]`: export the Services that have a `ServiceExport`.
///
/// A `ServiceExport` is written by whoever may write in its namespace, so what its
/// annotations may claim is bounded: identities of its own namespace
/// (`spiffe://<trust domain>/ns/<namespace>/...`) and gateways the operator listed here.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesExportsFile {
    /// Namespaces whose `ServiceExport`s may name any identity of the trust domain and
    /// any gateway (e.g. the mesh's own, `istio-system`).
    #[serde(default)]
    pub trusted_namespaces: Vec<String>,
    /// The east-west gateways (`IP:PORT`) a `ServiceExport` may name in
    /// `federator.io/gateway`.
    #[serde(default)]
    pub gateways: Vec<std::net::SocketAddr>,
}

/// `[sinks.kubernetes]`: write imports as `ServiceImport`s and EndpointSlices, and
/// federated trust domains as `ClusterTrustBundle`s.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSinkFile {
    /// Write a `ServiceImport` and EndpointSlices per imported service (default true).
    #[serde(default = "yes")]
    pub service_imports: bool,
    /// Write a `ClusterTrustBundle` per federated trust domain (default true).
    #[serde(default = "yes")]
    pub cluster_trust_bundles: bool,
    /// The signer of those `ClusterTrustBundle`s (default
    /// `federator.io/federated-trust-domain`); the agent needs the `attest` verb on it.
    pub signer_name: Option<String>,
}

fn yes() -> bool {
    true
}

/// The agent's own X.509-SVID (`[svid]`), in exactly one of two forms:
///
/// ```toml
/// [svid]
/// cert = "/etc/federator/agent.pem"   # PEM files, re-read when they change
/// key = "/etc/federator/agent.key"
/// ```
/// ```toml
/// [svid]
/// workload_api = "unix:///run/spire/agent.sock"   # the SPIFFE Workload API
/// ```
///
/// [`AgentConfig::parse`] checks the form and resolves it into [`AgentConfig::svid`].
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SvidConfig {
    /// Certificate chain file (PEM), leaf first; with `key`.
    pub cert: Option<PathBuf>,
    /// Private key file (PEM); with `cert`.
    pub key: Option<PathBuf>,
    /// The Workload API's address: `unix:///path/to/socket`, a plain path, or
    /// `tcp://127.0.0.1:PORT`.
    pub workload_api: Option<String>,
}

/// Where the agent's SVID comes from, as checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SvidSource {
    /// PEM files, re-read when they change.
    Files {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// The SPIFFE Workload API, followed.
    WorkloadApi(WorkloadApiAddress),
}

impl SvidConfig {
    /// The form given, checked; relative paths are taken relative to `base`.
    ///
    /// # Errors
    /// Both forms or neither, half of the files form, or an address that does not parse.
    fn source(&self, base: &Path) -> Result<SvidSource, ConfigError> {
        let invalid = |field, value: String, rule: &str| ConfigError::Invalid {
            field,
            value,
            rule: rule.to_string(),
        };
        match (&self.cert, &self.key, &self.workload_api) {
            (Some(cert), Some(key), None) => {
                Ok(SvidSource::Files { cert: base.join(cert), key: base.join(key) })
            }
            (None, None, Some(text)) => WorkloadApiAddress::parse(text)
                .map(|address| SvidSource::WorkloadApi(address.relative_to(base)))
                .map_err(|rule| invalid("svid.workload_api", text.clone(), &rule.to_string())),
            (None, None, None) => Err(invalid(
                "svid",
                String::new(),
                "give the agent's SVID: cert and key (PEM files), or workload_api (the SPIFFE \
                 Workload API's socket)",
            )),
            (_, _, Some(text)) => Err(invalid(
                "svid",
                text.clone(),
                "give either cert and key, or workload_api, not both",
            )),
            (Some(cert), None, None) => {
                Err(invalid("svid.key", cert.display().to_string(), "required with svid.cert"))
            }
            (None, Some(key), None) => {
                Err(invalid("svid.cert", key.display().to_string(), "required with svid.key"))
            }
        }
    }
}

/// Export sources; both may be set.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportsFile {
    /// etcd endpoints of the cluster's etcd holding export documents.
    #[serde(default)]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of export documents (`<prefix><namespace>/<name>`).
    pub etcd_prefix: Option<String>,
    /// TLS and authentication of that etcd.
    pub etcd_auth: Option<EtcdAuth>,
    /// A static JSON file of exports.
    pub file: Option<PathBuf>,
    /// The Services with a `ServiceExport` in the cluster's API server.
    pub kubernetes: Option<KubernetesExportsFile>,
}

/// Lease settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseFile {
    /// Time to live without a keep-alive, seconds (default 10).
    pub ttl_seconds: Option<u32>,
    /// The cluster's region (orders its imports).
    #[serde(default)]
    pub region: String,
    /// The cluster's zone.
    #[serde(default)]
    pub zone: String,
}

/// Sinks; any subset.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinksFile {
    /// Bundle and import files.
    pub files: Option<FilesSinkFile>,
    /// etcd keys.
    pub etcd: Option<EtcdSinkFile>,
    /// Envoy SDS/EDS.
    pub xds: Option<XdsSinkFile>,
    /// Kubernetes objects.
    pub kubernetes: Option<KubernetesSinkFile>,
}

/// The files sink.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesSinkFile {
    /// Directory written.
    pub dir: PathBuf,
}

/// The etcd sink.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdSinkFile {
    /// etcd endpoints.
    pub endpoints: Vec<String>,
    /// Prefix of bundle keys (default `/federator/bundles/`).
    pub bundle_prefix: Option<String>,
    /// Prefix of import keys (default `/federator/imports/`).
    pub import_prefix: Option<String>,
    /// TLS and authentication of that etcd.
    pub auth: Option<EtcdAuth>,
}

/// The Envoy xDS sink.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsSinkFile {
    /// Address of the xDS gRPC server (loopback unless `allow_remote`).
    pub listen: SocketAddr,
    /// Serve on a non-loopback address: plain-text gRPC reachable from the network (a
    /// pod's proxies in Kubernetes); admit only the proxies to it (a NetworkPolicy).
    #[serde(default)]
    pub allow_remote: bool,
    /// Clusters for the imported services (CDS); without this table only SDS and EDS
    /// are served.
    pub clusters: Option<XdsClustersFile>,
    /// An egress listener routing to those clusters by hostname (LDS, RDS).
    pub egress: Option<XdsEgressFile>,
}

/// `[sinks.xds.clusters]`: what every imported service's cluster is made of.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsClustersFile {
    /// Name of the SDS secret of the SVID Envoy presents upstream.
    pub certificate_secret: String,
    /// The bootstrap cluster of the SDS server that serves it (e.g. the SPIRE agent's).
    pub certificate_sds_cluster: Option<String>,
    /// Or a file-based SDS document that holds it.
    pub certificate_sds_file: Option<PathBuf>,
    /// Bound of a connection attempt, milliseconds (default 1000).
    pub connect_timeout_ms: Option<u64>,
    /// Consecutive failures that eject a host (default 3).
    pub outlier_consecutive_failures: Option<u32>,
    /// Outlier detection interval, milliseconds (default 1000).
    pub outlier_interval_ms: Option<u64>,
    /// First ejection time, milliseconds (default 10000).
    pub outlier_base_ejection_ms: Option<u64>,
    /// Largest share of hosts ejected at once, percent (default 100).
    pub outlier_max_ejection_percent: Option<u32>,
    /// Circuit breaker: connections (default 1024).
    pub max_connections: Option<u32>,
    /// Circuit breaker: pending requests (default 1024).
    pub max_pending_requests: Option<u32>,
    /// Circuit breaker: requests in flight (default 1024).
    pub max_requests: Option<u32>,
    /// Circuit breaker: retries in flight (default 64).
    pub max_retries: Option<u32>,
}

/// `[sinks.xds.egress]`: the listener Envoy serves imported services on.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsEgressFile {
    /// Address of the plain-HTTP listener (e.g. `127.0.0.1:15001`).
    pub listen: SocketAddr,
    /// Envoy `retry_on` conditions (default `connect-failure,refused-stream,reset`).
    pub retry_on: Option<String>,
    /// Retries of a request (default 3).
    pub retries: Option<u32>,
    /// Bound of one try, milliseconds (default 5000).
    pub per_try_timeout_ms: Option<u64>,
    /// Bound of a request with its retries, milliseconds (default 15000).
    pub timeout_ms: Option<u64>,
}

impl XdsSinkFile {
    /// The clusters, listener and routes to serve, checked: `None` without
    /// `[sinks.xds.clusters]`.
    ///
    /// # Errors
    /// A setting breaks a rule (named), or `[sinks.xds.egress]` is given without
    /// `[sinks.xds.clusters]`.
    pub fn mesh(&self) -> Result<Option<MeshSettings>, ConfigError> {
        let invalid = |field, value: String, rule: &str| ConfigError::Invalid {
            field,
            value,
            rule: rule.to_string(),
        };
        let Some(clusters) = &self.clusters else {
            return match &self.egress {
                Some(egress) => Err(invalid(
                    "sinks.xds.egress",
                    egress.listen.to_string(),
                    "routes to the imported services' clusters: add [sinks.xds.clusters]",
                )),
                None => Ok(None),
            };
        };
        if clusters.certificate_secret.is_empty() {
            return Err(invalid(
                "sinks.xds.clusters.certificate_secret",
                String::new(),
                "name the SDS secret of the SVID Envoy presents to imported services",
            ));
        }
        let secret = clusters.certificate_secret.clone();
        let certificate = match (&clusters.certificate_sds_cluster, &clusters.certificate_sds_file)
        {
            (Some(cluster), None) if !cluster.is_empty() => {
                CertificateSource::Sds { cluster: cluster.clone(), secret }
            }
            (None, Some(path)) => CertificateSource::File { path: path.clone(), secret },
            (cluster, file) => {
                return Err(invalid(
                    "sinks.xds.clusters.certificate_sds_cluster",
                    format!("{cluster:?} / {file:?}"),
                    "give exactly one of certificate_sds_cluster (a bootstrap cluster serving \
                     SDS, e.g. the SPIRE agent's) and certificate_sds_file (a file-based SDS \
                     document)",
                ));
            }
        };
        let millis = |field, value: Option<u64>, default: u64, bounds: (u64, u64)| {
            let value = value.unwrap_or(default);
            if (bounds.0..=bounds.1).contains(&value) {
                Ok(Duration::from_millis(value))
            } else {
                Err(invalid(
                    field,
                    value.to_string(),
                    &format!("must be {} to {} ms", bounds.0, bounds.1),
                ))
            }
        };
        let count = |field, value: Option<u32>, default: u32, bounds: (u32, u32)| {
            let value = value.unwrap_or(default);
            if (bounds.0..=bounds.1).contains(&value) {
                Ok(value)
            } else {
                Err(invalid(
                    field,
                    value.to_string(),
                    &format!("must be {} to {}", bounds.0, bounds.1),
                ))
            }
        };
        let mut mesh = MeshSettings::new(certificate);
        let defaults = MeshSettings::new(mesh.certificate.clone());
        mesh.connect_timeout = millis(
            "sinks.xds.clusters.connect_timeout_ms",
            clusters.connect_timeout_ms,
            1000,
            (10, 60_000),
        )?;
        mesh.outlier.consecutive_failures = count(
            "sinks.xds.clusters.outlier_consecutive_failures",
            clusters.outlier_consecutive_failures,
            defaults.outlier.consecutive_failures,
            (1, 1000),
        )?;
        mesh.outlier.interval = millis(
            "sinks.xds.clusters.outlier_interval_ms",
            clusters.outlier_interval_ms,
            1000,
            (10, 600_000),
        )?;
        mesh.outlier.base_ejection = millis(
            "sinks.xds.clusters.outlier_base_ejection_ms",
            clusters.outlier_base_ejection_ms,
            10_000,
            (10, 3_600_000),
        )?;
        mesh.outlier.max_ejection_percent = count(
            "sinks.xds.clusters.outlier_max_ejection_percent",
            clusters.outlier_max_ejection_percent,
            defaults.outlier.max_ejection_percent,
            (0, 100),
        )?;
        let limit = (1, 1_000_000);
        mesh.circuit.max_connections = count(
            "sinks.xds.clusters.max_connections",
            clusters.max_connections,
            defaults.circuit.max_connections,
            limit,
        )?;
        mesh.circuit.max_pending_requests = count(
            "sinks.xds.clusters.max_pending_requests",
            clusters.max_pending_requests,
            defaults.circuit.max_pending_requests,
            limit,
        )?;
        mesh.circuit.max_requests = count(
            "sinks.xds.clusters.max_requests",
            clusters.max_requests,
            defaults.circuit.max_requests,
            limit,
        )?;
        mesh.circuit.max_retries = count(
            "sinks.xds.clusters.max_retries",
            clusters.max_retries,
            defaults.circuit.max_retries,
            limit,
        )?;
        if let Some(egress) = &self.egress {
            let mut settings = EgressSettings::at(egress.listen);
            if let Some(retry_on) = &egress.retry_on {
                if retry_on.is_empty()
                    || !retry_on.split(',').all(|c| {
                        !c.is_empty()
                            && c.bytes()
                                .all(|b| b.is_ascii_lowercase() || b == b'-' || b.is_ascii_digit())
                    })
                {
                    return Err(invalid(
                        "sinks.xds.egress.retry_on",
                        retry_on.clone(),
                        "comma-separated Envoy retry conditions, e.g. connect-failure,refused-stream,reset",
                    ));
                }
                settings.retry_on.clone_from(retry_on);
            }
            settings.retries =
                count("sinks.xds.egress.retries", egress.retries, settings.retries, (0, 10))?;
            settings.per_try_timeout = millis(
                "sinks.xds.egress.per_try_timeout_ms",
                egress.per_try_timeout_ms,
                5000,
                (10, 600_000),
            )?;
            settings.timeout =
                millis("sinks.xds.egress.timeout_ms", egress.timeout_ms, 15_000, (10, 3_600_000))?;
            if settings.per_try_timeout > settings.timeout {
                return Err(invalid(
                    "sinks.xds.egress.per_try_timeout_ms",
                    settings.per_try_timeout.as_millis().to_string(),
                    &format!(
                        "must not exceed timeout_ms ({}): a try longer than the request leaves \
                         no time for a retry",
                        settings.timeout.as_millis()
                    ),
                ));
            }
            mesh.egress = Some(settings);
        }
        Ok(Some(mesh))
    }
}

/// Whether `name` is a signer name the API server accepts: `DOMAIN/NAME`, a DNS
/// subdomain before the slash and a path segment after it.
fn is_signer_name(name: &str) -> bool {
    let Some((domain, path)) = name.split_once('/') else { return false };
    let subdomain =
        |s: &str| !s.is_empty() && s.len() <= 253 && s.split('.').all(is_namespace_name);
    subdomain(domain) && domain.contains('.') && subdomain(path) && name.len() <= 253
}

/// Whether `name` is a DNS label (RFC 1123), as Kubernetes namespace names are.
fn is_namespace_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl AgentFile {
    /// Makes every relative path relative to `base` (the config file's directory).
    fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        fix(&mut self.state_dir);
        self.token_file.as_mut().map(fix);
        self.federation_ca.as_mut().map(fix);
        match &mut self.bundle {
            BundleSourceConfig::File { path, .. } => fix(path),
            BundleSourceConfig::Etcd { auth, .. } => auth.resolve_paths(base),
            BundleSourceConfig::WorkloadApi { .. } => {}
        }
        if let Some(auth) = &mut self.exports.etcd_auth {
            auth.resolve_paths(base);
        }
        if let Some(auth) = self.sinks.etcd.as_mut().and_then(|e| e.auth.as_mut()) {
            auth.resolve_paths(base);
        }
        self.exports.file.as_mut().map(fix);
        if let Some(files) = &mut self.sinks.files {
            fix(&mut files.dir);
        }
        if let Some(clusters) = self.sinks.xds.as_mut().and_then(|x| x.clusters.as_mut()) {
            clusters.certificate_sds_file.as_mut().map(fix);
        }
        self.kubernetes.kubeconfig.as_mut().map(fix);
    }
}

/// Resolved settings.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// The file as written.
    pub file: AgentFile,
    /// The join token text, if one was given (file, environment or flag).
    pub token: Option<String>,
    /// Lease TTL.
    pub lease_ttl: Duration,
    /// Where the agent's SVID comes from (`[svid]`, checked).
    pub svid: SvidSource,
    /// `spiffe_refresh_hint` of served bundles that carry none, seconds.
    pub refresh_hint_secs: u64,
    /// What the xDS sink serves beside SDS and EDS (`[sinks.xds.clusters]`, checked).
    pub mesh: Option<MeshSettings>,
}

impl AgentConfig {
    /// Reads `path`, takes the token from `token` (flag), `FEDERATOR_JOIN_TOKEN` or the
    /// configured token file, and checks every setting.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or a setting breaks a rule (named).
    pub fn load(path: &Path, token: Option<String>) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text, path, token)
    }

    /// Parses and checks the text of `agent.toml`.
    ///
    /// # Errors
    /// As [`AgentConfig::load`].
    pub fn parse(text: &str, path: &Path, token: Option<String>) -> Result<Self, ConfigError> {
        let mut file: AgentFile = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        file.resolve_paths(base);
        let svid = file.svid.source(base)?;
        if let BundleSourceConfig::WorkloadApi { socket } = &mut file.bundle {
            // The address in the file (relative to it), else SPIFFE_ENDPOINT_SOCKET's.
            let env = std::env::var(ENDPOINT_SOCKET_ENV).ok();
            let address = WorkloadApiAddress::configured_or_env(socket.as_deref(), env.as_deref())
                .map_err(|rule| ConfigError::Invalid {
                    field: "bundle.socket",
                    value: socket.clone().unwrap_or_default(),
                    rule: rule.to_string(),
                })?;
            let address = if socket.is_some() { address.relative_to(base) } else { address };
            *socket = Some(address.to_string());
        }
        let token = match token.or_else(|| std::env::var("FEDERATOR_JOIN_TOKEN").ok()) {
            Some(token) => Some(token),
            None => match &file.token_file {
                Some(token_file) => Some(
                    std::fs::read_to_string(token_file)
                        .map_err(|e| ConfigError::Invalid {
                            field: "token_file",
                            value: token_file.display().to_string(),
                            rule: format!("cannot be read: {e}"),
                        })?
                        .trim()
                        .to_string(),
                ),
                None => None,
            },
        };
        let ttl = file.lease.ttl_seconds.unwrap_or(10);
        if !(MIN_LEASE_TTL_SECS..=MAX_LEASE_TTL_SECS).contains(&ttl) {
            return Err(ConfigError::Invalid {
                field: "lease.ttl_seconds",
                value: ttl.to_string(),
                rule: format!("must be {MIN_LEASE_TTL_SECS} to {MAX_LEASE_TTL_SECS}"),
            });
        }
        let refresh_hint_secs =
            file.bundle_refresh_hint_seconds.unwrap_or(crate::bundle::DEFAULT_REFRESH_HINT_SECS);
        if !crate::bundle::REFRESH_HINT_BOUNDS.contains(&refresh_hint_secs) {
            return Err(ConfigError::Invalid {
                field: "bundle_refresh_hint_seconds",
                value: refresh_hint_secs.to_string(),
                rule: "must be 10 to 604800 (7 days)".into(),
            });
        }
        if file.exports.etcd_prefix.is_some() && file.exports.etcd_endpoints.is_empty() {
            return Err(ConfigError::Invalid {
                field: "exports.etcd_endpoints",
                value: String::new(),
                rule: "required with exports.etcd_prefix".into(),
            });
        }
        if let Some(etcd) = &file.sinks.etcd
            && etcd.endpoints.is_empty()
        {
            return Err(ConfigError::Invalid {
                field: "sinks.etcd.endpoints",
                value: String::new(),
                rule: "name at least one etcd endpoint".into(),
            });
        }
        if file.exports.etcd_auth.is_some() && file.exports.etcd_endpoints.is_empty() {
            return Err(ConfigError::Invalid {
                field: "exports.etcd_auth",
                value: String::new(),
                rule: "authenticates to the etcd of exports.etcd_endpoints: name them".into(),
            });
        }
        if let Some(auth) = &file.exports.etcd_auth {
            auth.check("exports.etcd_auth", &file.exports.etcd_endpoints)?;
        }
        if let Some(etcd) = &file.sinks.etcd
            && let Some(auth) = &etcd.auth
        {
            auth.check("sinks.etcd.auth", &etcd.endpoints)?;
        }
        if let BundleSourceConfig::Etcd { endpoints, auth, .. } = &file.bundle {
            auth.check("bundle.auth", endpoints)?;
        }
        if let Some(xds) = &file.sinks.xds
            && !xds.listen.ip().is_loopback()
            && !xds.allow_remote
        {
            return Err(ConfigError::Invalid {
                field: "sinks.xds.listen",
                value: xds.listen.to_string(),
                rule: "the xDS server speaks plain-text gRPC and authenticates no client: \
                       listen on loopback (127.0.0.1 or [::1]) beside the proxies, or set \
                       allow_remote = true and admit only the proxies (a NetworkPolicy)"
                    .into(),
            });
        }
        let mesh = match &file.sinks.xds {
            Some(xds) => xds.mesh()?,
            None => None,
        };
        if let Some(signer) = file.sinks.kubernetes.as_ref().and_then(|k| k.signer_name.as_ref())
            && !is_signer_name(signer)
        {
            return Err(ConfigError::Invalid {
                field: "sinks.kubernetes.signer_name",
                value: signer.clone(),
                rule: "a signer name is DOMAIN/NAME, e.g. federator.io/federated-trust-domain \
                       (lower-case letters, digits, '.', '-'; one '/')"
                    .into(),
            });
        }
        if let Some(kubernetes) = &file.exports.kubernetes
            && let Some(bad) = kubernetes.trusted_namespaces.iter().find(|n| !is_namespace_name(n))
        {
            return Err(ConfigError::Invalid {
                field: "exports.kubernetes.trusted_namespaces",
                value: bad.clone(),
                rule: "a namespace name is a DNS label: at most 63 lower-case letters, digits \
                       and '-', starting and ending with a letter or digit"
                    .into(),
            });
        }
        Ok(Self {
            mesh,
            file,
            token,
            lease_ttl: Duration::from_secs(u64::from(ttl)),
            svid,
            refresh_hint_secs,
        })
    }

    /// How to reach the cluster's Kubernetes API server (`[kubernetes]`).
    #[must_use]
    pub fn kubernetes_connection(&self) -> super::kubernetes::Connection {
        super::kubernetes::Connection {
            kubeconfig: self.file.kubernetes.kubeconfig.clone(),
            context: self.file.kubernetes.context.clone(),
        }
    }

    /// Starts the agent's own identity ([`Self::svid`]): loads the files and re-reads them
    /// every `poll` when they change, or connects to the Workload API and waits for the
    /// first SVID (at most [`FIRST_SVID_TIMEOUT`]), preferring one of the agent's trust
    /// domain: `trust_domain` (the membership's) or else the join token's.
    ///
    /// # Errors
    /// The files do not load, or no SVID came from the Workload API in time (the error
    /// names `svid.workload_api`).
    pub async fn start_identity(
        &self,
        trust_domain: Option<&str>,
        poll: Duration,
    ) -> Result<Arc<CertifiedIdentity>, IdentityError> {
        let identity = match &self.svid {
            SvidSource::Files { cert, key } => {
                CertifiedIdentity::from_files(cert.clone(), key.clone())?
            }
            SvidSource::WorkloadApi(address) => {
                let trust_domain = trust_domain.map(str::to_string).or_else(|| {
                    let token = JoinToken::decode(self.token.as_deref()?).ok()?;
                    Some(token.trust_domain)
                });
                CertifiedIdentity::from_workload_api(
                    address.clone(),
                    trust_domain,
                    FIRST_SVID_TIMEOUT,
                )
                .await?
            }
        };
        let identity = Arc::new(identity);
        identity.watch(poll);
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
state_dir = "/tmp/agent"
[svid]
cert = "agent.pem"
key = "agent.key"
[bundle]
kind = "file"
path = "bundle.pem"
format = "pem"
[exports]
etcd_endpoints = ["127.0.0.1:2379"]
etcd_prefix = "/federator/exports/"
[lease]
ttl_seconds = 5
region = "r1"
[sinks.files]
dir = "/tmp/agent/out"
[sinks.xds]
listen = "127.0.0.1:18000"
"#;

    fn parse(text: &str) -> Result<AgentConfig, ConfigError> {
        AgentConfig::parse(text, Path::new("agent.toml"), Some("t".into()))
    }

    #[test]
    fn xds_clusters_and_egress_are_checked_and_defaulted() {
        let plain = parse(GOOD).expect("parses");
        assert!(plain.mesh.is_none(), "only SDS and EDS without [sinks.xds.clusters]");
        let text = format!(
            "{GOOD}[sinks.xds.clusters]\ncertificate_secret = \"default\"\n\
             certificate_sds_cluster = \"spire_agent\"\noutlier_consecutive_failures = 5\n\
             [sinks.xds.egress]\nlisten = \"127.0.0.1:15001\"\nretries = 2\n"
        );
        let mesh = parse(&text).expect("parses").mesh.expect("mesh");
        assert_eq!(
            mesh.certificate,
            CertificateSource::Sds { cluster: "spire_agent".into(), secret: "default".into() }
        );
        assert_eq!(mesh.outlier.consecutive_failures, 5);
        assert_eq!(mesh.outlier.max_ejection_percent, 100);
        let egress = mesh.egress.expect("egress");
        assert_eq!(
            (egress.retries, egress.retry_on.as_str()),
            (2, "connect-failure,refused-stream,reset")
        );

        let file = format!(
            "{GOOD}[sinks.xds.clusters]\ncertificate_secret = \"svid\"\n\
             certificate_sds_file = \"envoy/svid.json\"\n"
        );
        let mesh = parse(&file).expect("parses").mesh.expect("mesh");
        assert_eq!(
            mesh.certificate,
            CertificateSource::File {
                path: PathBuf::from("envoy/svid.json"),
                secret: "svid".into()
            },
            "relative to the config file's directory (here the working directory)"
        );

        let exposed = GOOD.replace("listen = \"127.0.0.1:18000\"", "listen = \"0.0.0.0:18000\"");
        let err = parse(&exposed).expect_err("a plain-text xDS server off loopback");
        assert!(err.to_string().contains("sinks.xds.listen"), "{err}");
        let allowed = exposed.replace(
            "listen = \"0.0.0.0:18000\"",
            "listen = \"0.0.0.0:18000\"\nallow_remote = true",
        );
        assert!(parse(&allowed).is_ok(), "allowed explicitly");
        for (extra, field) in [
            ("[sinks.xds.egress]\nlisten = \"127.0.0.1:15001\"\n", "sinks.xds.egress"),
            (
                "[sinks.xds.clusters]\ncertificate_secret = \"s\"\n",
                "sinks.xds.clusters.certificate_sds_cluster",
            ),
            (
                "[sinks.xds.clusters]\ncertificate_secret = \"s\"\ncertificate_sds_cluster = \"a\"\n\
                 certificate_sds_file = \"b\"\n",
                "sinks.xds.clusters.certificate_sds_cluster",
            ),
            (
                "[sinks.xds.clusters]\ncertificate_secret = \"\"\ncertificate_sds_cluster = \"a\"\n",
                "sinks.xds.clusters.certificate_secret",
            ),
            (
                "[sinks.xds.clusters]\ncertificate_secret = \"s\"\ncertificate_sds_cluster = \"a\"\n\
                 outlier_max_ejection_percent = 101\n",
                "sinks.xds.clusters.outlier_max_ejection_percent",
            ),
            (
                "[sinks.xds.clusters]\ncertificate_secret = \"s\"\ncertificate_sds_cluster = \"a\"\n\
                 [sinks.xds.egress]\nlisten = \"127.0.0.1:1\"\nretry_on = \"5xx;rm -rf\"\n",
                "sinks.xds.egress.retry_on",
            ),
            (
                "[sinks.xds.clusters]\ncertificate_secret = \"s\"\ncertificate_sds_cluster = \"a\"\n\
                 [sinks.xds.egress]\nlisten = \"127.0.0.1:1\"\ntimeout_ms = 1000\n",
                "sinks.xds.egress.per_try_timeout_ms",
            ),
        ] {
            let err = parse(&format!("{GOOD}{extra}")).expect_err(extra);
            assert!(err.to_string().contains(field), "{extra}: {err}");
        }
    }

    #[test]
    fn the_refresh_hint_of_served_bundles_defaults_and_is_bounded() {
        assert_eq!(parse(GOOD).expect("parses").refresh_hint_secs, 300);
        let set = parse(&format!("bundle_refresh_hint_seconds = 60\n{GOOD}")).expect("parses");
        assert_eq!(set.refresh_hint_secs, 60);
        let err = parse(&format!("bundle_refresh_hint_seconds = 5\n{GOOD}")).expect_err("bound");
        assert!(err.to_string().contains("bundle_refresh_hint_seconds"), "{err}");
    }

    #[test]
    fn a_good_file_parses() {
        let config = parse(GOOD).expect("parses");
        assert_eq!(config.lease_ttl, Duration::from_secs(5));
        assert_eq!(config.token.as_deref(), Some("t"));
        assert_eq!(
            config.svid,
            SvidSource::Files { cert: "agent.pem".into(), key: "agent.key".into() },
            "relative to the file's dir"
        );
        let nested = AgentConfig::parse(GOOD, Path::new("/etc/fed/agent.toml"), None).expect("ok");
        assert_eq!(
            nested.svid,
            SvidSource::Files {
                cert: "/etc/fed/agent.pem".into(),
                key: "/etc/fed/agent.key".into()
            }
        );
        assert_eq!(nested.file.state_dir, Path::new("/tmp/agent"), "absolute stays");
        assert!(config.file.sinks.etcd.is_none());
        assert!(!config.file.force_publish_bundle, "off unless set");
        let forced = parse(&format!("force_publish_bundle = true\n{GOOD}")).expect("parses");
        assert!(forced.file.force_publish_bundle);
    }

    #[test]
    fn bad_settings_are_named() {
        let err = parse(&GOOD.replace("ttl_seconds = 5", "ttl_seconds = 1")).expect_err("ttl");
        assert!(err.to_string().contains("lease.ttl_seconds"), "{err}");
        let err = parse(&GOOD.replace("state_dir", "stat_dir")).expect_err("unknown");
        assert!(err.to_string().contains("stat_dir"), "{err}");
        let err = parse(&GOOD.replace("etcd_endpoints = [\"127.0.0.1:2379\"]", ""))
            .expect_err("endpoints");
        assert!(err.to_string().contains("exports.etcd_endpoints"), "{err}");
        let err = parse(&GOOD.replace("[svid]\ncert = \"agent.pem\"\nkey = \"agent.key\"\n", ""))
            .expect_err("svid");
        assert!(err.to_string().contains("svid"), "{err}");
    }

    const FILES: &str = "[svid]\ncert = \"agent.pem\"\nkey = \"agent.key\"\n";

    fn with_svid(svid: &str) -> String {
        GOOD.replace(FILES, svid)
    }

    #[test]
    fn the_svid_may_come_from_the_workload_api() {
        let config = parse(&with_svid("[svid]\nworkload_api = \"unix:///run/spire/agent.sock\"\n"))
            .expect("parses");
        assert_eq!(
            config.svid,
            SvidSource::WorkloadApi(WorkloadApiAddress::Unix("/run/spire/agent.sock".into()))
        );
        let relative = AgentConfig::parse(
            &with_svid("[svid]\nworkload_api = \"spire/agent.sock\"\n"),
            Path::new("/etc/fed/agent.toml"),
            None,
        )
        .expect("parses");
        assert_eq!(
            relative.svid,
            SvidSource::WorkloadApi(WorkloadApiAddress::Unix("/etc/fed/spire/agent.sock".into()))
        );
    }

    #[test]
    fn exactly_one_svid_form_is_accepted() {
        for (svid, field, rule) in [
            (
                "[svid]\ncert = \"a.pem\"\nkey = \"a.key\"\nworkload_api = \"/run/a.sock\"\n",
                "`svid`",
                "not both",
            ),
            ("[svid]\nkey = \"a.key\"\nworkload_api = \"/run/a.sock\"\n", "`svid`", "not both"),
            ("", "`svid`", "cert and key (PEM files), or workload_api"),
            ("[svid]\n", "`svid`", "cert and key (PEM files), or workload_api"),
            ("[svid]\ncert = \"a.pem\"\n", "`svid.key`", "required with svid.cert"),
            ("[svid]\nkey = \"a.key\"\n", "`svid.cert`", "required with svid.key"),
            (
                "[svid]\nworkload_api = \"http://127.0.0.1:8081\"\n",
                "`svid.workload_api`",
                "unsupported scheme",
            ),
            ("[svid]\nworkload_api = \"unix://spire/a.sock\"\n", "`svid.workload_api`", "no host"),
        ] {
            let err = parse(&with_svid(svid)).expect_err(svid).to_string();
            assert!(err.contains(field) && err.contains(rule), "{svid:?}: {err}");
        }
        let err = parse(&with_svid("[svid]\ncert = \"a.pem\"\nkey = \"a.key\"\nsocket = \"x\"\n"))
            .expect_err("unknown key");
        assert!(err.to_string().contains("socket"), "{err}");
    }

    const FILE_BUNDLE: &str =
        "[bundle]\nkind = \"file\"\npath = \"bundle.pem\"\nformat = \"pem\"\n";

    fn with_bundle(bundle: &str) -> String {
        GOOD.replace(FILE_BUNDLE, bundle)
    }

    #[test]
    fn the_bundle_may_come_from_the_workload_api() {
        let config = parse(&with_bundle(
            "[bundle]\nkind = \"workload_api\"\nsocket = \"unix:/run/spire/agent.sock\"\n",
        ))
        .expect("parses");
        assert_eq!(
            config.file.bundle,
            BundleSourceConfig::WorkloadApi { socket: Some("unix:///run/spire/agent.sock".into()) }
        );
        let relative = AgentConfig::parse(
            &with_bundle("[bundle]\nkind = \"workload_api\"\nsocket = \"agent.sock\"\n"),
            Path::new("/etc/fed/agent.toml"),
            None,
        )
        .expect("parses");
        assert_eq!(
            relative.file.bundle,
            BundleSourceConfig::WorkloadApi { socket: Some("unix:///etc/fed/agent.sock".into()) }
        );

        let err = parse(&with_bundle(
            "[bundle]\nkind = \"workload_api\"\nsocket = \"https://spire:8081\"\n",
        ))
        .expect_err("scheme")
        .to_string();
        assert!(err.contains("`bundle.socket`") && err.contains("unsupported scheme"), "{err}");
        let err = parse(&with_bundle("[bundle]\nkind = \"workload_api\"\npath = \"x\"\n"))
            .expect_err("unknown key");
        assert!(err.to_string().contains("path"), "{err}");

        // No socket: SPIFFE_ENDPOINT_SOCKET's (tests cannot set the environment; this
        // checks the case where it is not set).
        let no_socket = parse(&with_bundle("[bundle]\nkind = \"workload_api\"\n"));
        match std::env::var(ENDPOINT_SOCKET_ENV) {
            Err(_) => {
                let err = no_socket.expect_err("no socket").to_string();
                assert!(
                    err.contains("`bundle.socket`") && err.contains(ENDPOINT_SOCKET_ENV),
                    "{err}"
                );
            }
            Ok(_) => {
                if let Ok(config) = no_socket {
                    let BundleSourceConfig::WorkloadApi { socket } = config.file.bundle else {
                        panic!("not the Workload API: {:?}", config.file.bundle)
                    };
                    assert!(socket.is_some(), "filled in from the environment");
                }
            }
        }
    }

    #[test]
    fn kubernetes_export_rules_name_namespaces_and_gateways() {
        let text = format!(
            "{GOOD}[exports.kubernetes]\ntrusted_namespaces = [\"istio-system\"]\n\
             gateways = [\"192.0.2.9:15443\", \"[2001:db8::9]:15443\"]\n"
        );
        let config = parse(&text).expect("parses");
        let rules = config.file.exports.kubernetes.expect("[exports.kubernetes]");
        assert_eq!(rules.trusted_namespaces, ["istio-system"]);
        assert_eq!(rules.gateways.len(), 2);
        for (bad, field) in [
            ("trusted_namespaces = [\"Istio_System\"]", "exports.kubernetes.trusted_namespaces"),
            ("trusted_namespaces = [\"\"]", "exports.kubernetes.trusted_namespaces"),
        ] {
            let text = format!("{GOOD}[exports.kubernetes]\n{bad}\n");
            match parse(&text) {
                Err(ConfigError::Invalid { field: f, .. }) => assert_eq!(f, field, "{bad}"),
                other => panic!("{bad}: {other:?}"),
            }
        }
        let text = format!("{GOOD}[exports.kubernetes]\ngateways = [\"gateway:15443\"]\n");
        assert!(parse(&text).is_err(), "a gateway is IP:PORT");
    }
}
