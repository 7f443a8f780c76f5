//! Agent settings: `agent.toml`, with the join token also from the environment or a flag.
//! A wrong or missing setting stops start-up with a message that names it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::sources::bundle::BundleSourceConfig;
use crate::config::ConfigError;
use crate::state::{MAX_LEASE_TTL_SECS, MIN_LEASE_TTL_SECS};

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
    /// The agent's own X.509-SVID, reloaded when the files change.
    pub svid: SvidFiles,
    /// This cluster's own trust bundle.
    pub bundle: BundleSourceConfig,
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
}

/// The agent's SVID files (PEM).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SvidFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
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
    /// A static JSON file of exports.
    pub file: Option<PathBuf>,
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
}

/// The Envoy xDS sink.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct XdsSinkFile {
    /// Address of the SDS/EDS gRPC server (keep it on loopback).
    pub listen: SocketAddr,
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
        fix(&mut self.svid.cert);
        fix(&mut self.svid.key);
        if let BundleSourceConfig::File { path, .. } = &mut self.bundle {
            fix(path);
        }
        self.exports.file.as_mut().map(fix);
        if let Some(files) = &mut self.sinks.files {
            fix(&mut files.dir);
        }
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
        file.resolve_paths(path.parent().unwrap_or_else(|| Path::new(".")));
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
        Ok(Self { file, token, lease_ttl: Duration::from_secs(u64::from(ttl)) })
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
    fn a_good_file_parses() {
        let config = parse(GOOD).expect("parses");
        assert_eq!(config.lease_ttl, Duration::from_secs(5));
        assert_eq!(config.token.as_deref(), Some("t"));
        assert_eq!(config.file.svid.cert, Path::new("agent.pem"), "relative to the file's dir");
        let nested = AgentConfig::parse(GOOD, Path::new("/etc/fed/agent.toml"), None).expect("ok");
        assert_eq!(nested.file.svid.key, Path::new("/etc/fed/agent.key"));
        assert_eq!(nested.file.state_dir, Path::new("/tmp/agent"), "absolute stays");
        assert!(config.file.sinks.etcd.is_none());
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
}
