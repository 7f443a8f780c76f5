//! Replica settings: a TOML file, overridden by `FEDERATOR_*` environment variables,
//! overridden by command-line flags. A wrong or missing setting stops start-up with a
//! message that names it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::TlsFiles;
pub use crate::settings::ConfigError;

/// Settings of one replica as written in `server.toml`; every field optional so that
/// the environment and flags can fill in.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Replica id, a positive integer unique in the group.
    pub id: Option<u64>,
    /// The federation's own SPIFFE trust domain.
    pub trust_domain: Option<String>,
    /// Directory for the durable log, snapshots and the admin socket.
    pub data_dir: Option<PathBuf>,
    /// Listening addresses.
    #[serde(default)]
    pub listen: ListenFile,
    /// Addresses other parties use, when they differ from the listening ones.
    #[serde(default)]
    pub advertise: AdvertiseFile,
    /// Certificate files of this replica.
    pub tls: Option<TlsFiles>,
    /// Consensus tuning.
    #[serde(default)]
    pub raft: RaftFile,
    /// Health reporting.
    #[serde(default)]
    pub health: HealthFile,
    /// SPIFFE bundle endpoint.
    #[serde(default)]
    pub bundle_endpoint: BundleEndpointFile,
    /// Bounds on what callers may hold.
    #[serde(default)]
    pub limits: LimitsFile,
}

/// `[limits]` section: bounds on what one caller may hold on a replica.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsFile {
    /// Watch streams one member may hold open on one replica (default 8; an agent holds
    /// one).
    pub max_watches_per_member: Option<usize>,
}

/// `[bundle_endpoint]` section: the SPIFFE bundle endpoint, under either profile.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BundleEndpointFile {
    /// `https_spiffe` profile listen address.
    pub listen_spiffe: Option<String>,
    /// Certificate for `https_spiffe` (default: the replica's own `tls.cert`).
    pub spiffe_cert: Option<PathBuf>,
    /// Key for `https_spiffe` (default: the replica's own `tls.key`).
    pub spiffe_key: Option<PathBuf>,
    /// `https_web` profile listen address.
    pub listen_web: Option<String>,
    /// Web PKI certificate chain for `https_web` (required with `listen_web`).
    pub web_cert: Option<PathBuf>,
    /// Key for `https_web`.
    pub web_key: Option<PathBuf>,
    /// `spiffe_refresh_hint` served with a member's bundle that carries none, seconds
    /// (10 s to 7 days; default 300): how often consumers such as SPIRE servers fetch
    /// again. A member's own hint is served as it published it.
    pub refresh_hint_seconds: Option<u64>,
}

/// A resolved bundle endpoint: address, and certificate files (`None`: the replica's).
pub type BundleEndpoint = Option<(SocketAddr, Option<TlsFiles>)>;

/// Resolved `[bundle_endpoint]`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BundleEndpointConfig {
    /// `https_spiffe` profile.
    pub spiffe: BundleEndpoint,
    /// `https_web` profile.
    pub web: BundleEndpoint,
    /// The refresh hint served with bundles that carry none, seconds.
    pub refresh_hint_secs: u64,
}

/// `[listen]` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ListenFile {
    /// Replica transport (mTLS, replicas only).
    pub raft: Option<String>,
    /// Agent and admin API (mTLS).
    pub api: Option<String>,
    /// Prometheus `/metrics` (plain HTTP); empty disables it.
    pub metrics: Option<String>,
    /// Admin unix socket; default `<data_dir>/admin.sock`.
    pub admin_socket: Option<PathBuf>,
}

/// `[advertise]` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdvertiseFile {
    /// Transport address peers dial.
    pub raft: Option<String>,
    /// API address agents and operators dial.
    pub api: Option<String>,
}

/// `[raft]` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RaftFile {
    /// Initialize a one-replica group on first start when the log is empty.
    pub bootstrap: Option<bool>,
    /// Timing profile: `wan` (the default: replicas across zones or regions, round trips
    /// up to ~150 ms) or `lan` (one network: round trips under 10 ms, fast failover). The
    /// three settings below override single values of the profile.
    pub timing: Option<String>,
    /// Leader heartbeat period, milliseconds.
    pub heartbeat_ms: Option<u64>,
    /// Election timeout lower bound, milliseconds.
    pub election_timeout_min_ms: Option<u64>,
    /// Election timeout upper bound, milliseconds.
    pub election_timeout_max_ms: Option<u64>,
    /// Snapshot after this many applied entries (plus id mod 8 sixteenths of it, so the
    /// replicas of a group do not all snapshot at the same index).
    pub snapshot_after_entries: Option<u64>,
    /// Entries kept behind a snapshot.
    pub keep_entries_after_snapshot: Option<u64>,
    /// Peers reached through another address (a local proxy, a NAT, the chaos suite's
    /// fault proxies): `"ADVERTISED" = "DIALLED"`, both HOST:PORT.
    #[serde(default)]
    pub dial: BTreeMap<String, String>,
}

/// `[health]` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    /// Report SERVING only while applied is within this many entries of the leader.
    pub max_lag_entries: Option<u64>,
}

/// Overrides from the environment and flags (see `cli::server`).
#[derive(Clone, Debug, Default)]
pub struct ServerOverrides {
    /// `--id` / `FEDERATOR_ID`.
    pub id: Option<u64>,
    /// `--trust-domain` / `FEDERATOR_TRUST_DOMAIN`.
    pub trust_domain: Option<String>,
    /// `--data-dir` / `FEDERATOR_DATA_DIR`.
    pub data_dir: Option<PathBuf>,
    /// `--listen-raft` / `FEDERATOR_LISTEN_RAFT`.
    pub listen_raft: Option<String>,
    /// `--listen-api` / `FEDERATOR_LISTEN_API`.
    pub listen_api: Option<String>,
    /// `--listen-metrics` / `FEDERATOR_LISTEN_METRICS`.
    pub listen_metrics: Option<String>,
    /// `--tls-ca` / `FEDERATOR_TLS_CA`.
    pub tls_ca: Option<PathBuf>,
    /// `--tls-cert` / `FEDERATOR_TLS_CERT`.
    pub tls_cert: Option<PathBuf>,
    /// `--tls-key` / `FEDERATOR_TLS_KEY`.
    pub tls_key: Option<PathBuf>,
    /// `--bootstrap` / `FEDERATOR_BOOTSTRAP`.
    pub bootstrap: Option<bool>,
}

/// Checked settings of one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerConfig {
    /// Replica id.
    pub id: u64,
    /// The federation's SPIFFE trust domain.
    pub trust_domain: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Transport listen address.
    pub listen_raft: SocketAddr,
    /// API listen address.
    pub listen_api: SocketAddr,
    /// Metrics listen address, if enabled.
    pub listen_metrics: Option<SocketAddr>,
    /// Admin socket path.
    pub admin_socket: PathBuf,
    /// Advertised transport address.
    pub advertise_raft: String,
    /// Advertised API address.
    pub advertise_api: String,
    /// Certificate files.
    pub tls: TlsFiles,
    /// Initialize a one-replica group when empty.
    pub bootstrap: bool,
    /// Heartbeat period.
    pub heartbeat: Duration,
    /// Election timeout bounds.
    pub election_timeout: (Duration, Duration),
    /// Snapshot threshold.
    pub snapshot_after_entries: u64,
    /// Entries kept behind a snapshot.
    pub keep_entries_after_snapshot: u64,
    /// Peer addresses dialled through other addresses.
    pub dial: BTreeMap<String, String>,
    /// Health lag bound.
    pub max_lag_entries: u64,
    /// SPIFFE bundle endpoints.
    pub bundle_endpoint: BundleEndpointConfig,
    /// Watch streams one member may hold open on this replica.
    pub max_watches_per_member: usize,
}

// === impl ServerConfig ===

impl ServerConfig {
    /// Loads `path` (if given), applies `overrides`, and checks the result.
    ///
    /// # Errors
    /// The file cannot be read or parsed, or a setting is missing or invalid.
    pub fn load(path: Option<&Path>, overrides: &ServerOverrides) -> Result<Self, ConfigError> {
        let file = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.display().to_string(),
                    source,
                })?;
                Self::parse_file(&text, path)?
            }
            None => ServerFile::default(),
        };
        Self::resolve(file, overrides, path.and_then(Path::parent))
    }

    /// Parses the TOML text of a config file.
    ///
    /// # Errors
    /// Invalid TOML, an unknown setting or a wrong type; the message names it.
    pub fn parse_file(text: &str, path: &Path) -> Result<ServerFile, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.display().to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// Merges file and overrides and checks every setting. Relative paths in the file are
    /// taken relative to the file's directory `base`.
    ///
    /// # Errors
    /// A setting is missing or invalid.
    pub fn resolve(
        file: ServerFile,
        o: &ServerOverrides,
        base: Option<&Path>,
    ) -> Result<Self, ConfigError> {
        let rel = |p: PathBuf| match base {
            Some(base) if p.is_relative() && !base.as_os_str().is_empty() => base.join(p),
            _ => p,
        };
        let id = o.id.or(file.id).ok_or(ConfigError::Missing {
            field: "id",
            env: "FEDERATOR_ID",
            flag: "id",
        })?;
        if id == 0 {
            return Err(invalid("id", "0", "must be a positive integer"));
        }
        let trust_domain = o
            .trust_domain
            .clone()
            .or(file.trust_domain)
            .unwrap_or_else(|| "federation.local".to_string());
        crate::identity::validate_trust_domain(&trust_domain)
            .map_err(|e| invalid("trust_domain", &trust_domain, &e.to_string()))?;
        let data_dir =
            o.data_dir.clone().or(file.data_dir.map(rel)).ok_or(ConfigError::Missing {
                field: "data_dir",
                env: "FEDERATOR_DATA_DIR",
                flag: "data-dir",
            })?;
        let listen_raft = parse_addr(
            "listen.raft",
            o.listen_raft.clone().or(file.listen.raft),
            ("FEDERATOR_LISTEN_RAFT", "listen-raft"),
        )?;
        let listen_api = parse_addr(
            "listen.api",
            o.listen_api.clone().or(file.listen.api),
            ("FEDERATOR_LISTEN_API", "listen-api"),
        )?;
        if listen_raft == listen_api {
            return Err(invalid(
                "listen.api",
                &listen_api.to_string(),
                "must differ from listen.raft",
            ));
        }
        let listen_metrics = match o.listen_metrics.clone().or(file.listen.metrics) {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => Some(
                s.parse()
                    .map_err(|e| invalid("listen.metrics", &s, &format!("not host:port ({e})")))?,
            ),
        };
        let admin_socket =
            file.listen.admin_socket.map(rel).unwrap_or_else(|| data_dir.join("admin.sock"));
        let advertise_raft = file.advertise.raft.unwrap_or_else(|| listen_raft.to_string());
        let advertise_api = file.advertise.api.unwrap_or_else(|| listen_api.to_string());
        let file_tls =
            file.tls.map(|t| TlsFiles { ca: rel(t.ca), cert: rel(t.cert), key: rel(t.key) });
        let tls_path = |field, env, flag, over: &Option<PathBuf>, from_file: Option<PathBuf>| {
            over.clone().or(from_file).ok_or(ConfigError::Missing { field, env, flag })
        };
        let tls = TlsFiles {
            ca: tls_path(
                "tls.ca",
                "FEDERATOR_TLS_CA",
                "tls-ca",
                &o.tls_ca,
                file_tls.as_ref().map(|t| t.ca.clone()),
            )?,
            cert: tls_path(
                "tls.cert",
                "FEDERATOR_TLS_CERT",
                "tls-cert",
                &o.tls_cert,
                file_tls.as_ref().map(|t| t.cert.clone()),
            )?,
            key: tls_path(
                "tls.key",
                "FEDERATOR_TLS_KEY",
                "tls-key",
                &o.tls_key,
                file_tls.as_ref().map(|t| t.key.clone()),
            )?,
        };
        let bundle_endpoint = resolve_bundle_endpoint(file.bundle_endpoint, &tls, &rel)?;
        let raft = file.raft;
        let timing = match raft.timing.as_deref() {
            None => federator_raft::Timing::default(),
            Some(name) => federator_raft::Timing::from_name(name).ok_or_else(|| {
                invalid(
                    "raft.timing",
                    name,
                    "must be \"wan\" (replicas across zones or regions) or \"lan\" (replicas on one network)",
                )
            })?,
        };
        let heartbeat = raft.heartbeat_ms.map_or(timing.heartbeat(), Duration::from_millis);
        let (default_min, default_max) = timing.election_timeout();
        let min = raft.election_timeout_min_ms.map_or(default_min, Duration::from_millis);
        let max = raft.election_timeout_max_ms.map_or(default_max, Duration::from_millis);
        if heartbeat.is_zero() {
            return Err(invalid("raft.heartbeat_ms", "0", "must be positive"));
        }
        if min <= heartbeat {
            return Err(invalid(
                "raft.election_timeout_min_ms",
                &min.as_millis().to_string(),
                "must be greater than raft.heartbeat_ms",
            ));
        }
        if max <= min {
            return Err(invalid(
                "raft.election_timeout_max_ms",
                &max.as_millis().to_string(),
                "must be greater than raft.election_timeout_min_ms",
            ));
        }
        for (advertised, dialled) in &raft.dial {
            for addr in [advertised, dialled] {
                if addr.parse::<SocketAddr>().is_err() {
                    return Err(invalid(
                        "raft.dial",
                        &format!("{advertised} = {dialled}"),
                        "both sides must be HOST:PORT socket addresses",
                    ));
                }
            }
        }
        let max_watches_per_member = file
            .limits
            .max_watches_per_member
            .unwrap_or(crate::server::DEFAULT_MAX_WATCHES_PER_MEMBER);
        if max_watches_per_member == 0 {
            return Err(invalid("limits.max_watches_per_member", "0", "must be positive"));
        }
        let snapshot_after_entries = raft.snapshot_after_entries.unwrap_or(20_000);
        if snapshot_after_entries == 0 {
            return Err(invalid("raft.snapshot_after_entries", "0", "must be positive"));
        }
        Ok(Self {
            id,
            trust_domain,
            data_dir,
            listen_raft,
            listen_api,
            listen_metrics,
            admin_socket,
            advertise_raft,
            advertise_api,
            tls,
            bootstrap: o.bootstrap.or(raft.bootstrap).unwrap_or(false),
            heartbeat,
            election_timeout: (min, max),
            snapshot_after_entries,
            keep_entries_after_snapshot: raft.keep_entries_after_snapshot.unwrap_or(1_000),
            dial: raft.dial,
            max_lag_entries: file.health.max_lag_entries.unwrap_or(1_000),
            bundle_endpoint,
            max_watches_per_member,
        })
    }
}

fn resolve_bundle_endpoint(
    file: BundleEndpointFile,
    tls: &TlsFiles,
    rel: &impl Fn(PathBuf) -> PathBuf,
) -> Result<BundleEndpointConfig, ConfigError> {
    let addr =
        |field: &'static str, value: Option<String>| -> Result<Option<SocketAddr>, ConfigError> {
            match value {
                None => Ok(None),
                Some(s) if s.is_empty() => Ok(None),
                Some(s) => s
                    .parse()
                    .map(Some)
                    .map_err(|e| invalid(field, &s, &format!("not an IP:port address ({e})"))),
            }
        };
    let spiffe = match addr("bundle_endpoint.listen_spiffe", file.listen_spiffe)? {
        None => None,
        Some(a) => {
            let files = match (file.spiffe_cert, file.spiffe_key) {
                (None, None) => None,
                (Some(cert), Some(key)) => {
                    Some(TlsFiles { ca: tls.ca.clone(), cert: rel(cert), key: rel(key) })
                }
                _ => {
                    return Err(invalid(
                        "bundle_endpoint.spiffe_key",
                        "",
                        "spiffe_cert and spiffe_key go together",
                    ));
                }
            };
            Some((a, files))
        }
    };
    let web = match addr("bundle_endpoint.listen_web", file.listen_web)? {
        None => None,
        Some(a) => match (file.web_cert, file.web_key) {
            (Some(cert), Some(key)) => {
                Some((a, Some(TlsFiles { ca: tls.ca.clone(), cert: rel(cert), key: rel(key) })))
            }
            _ => {
                return Err(ConfigError::Missing {
                    field: "bundle_endpoint.web_cert and web_key",
                    env: "(file only)",
                    flag: "config",
                });
            }
        },
    };
    let refresh_hint_secs =
        file.refresh_hint_seconds.unwrap_or(crate::bundle::DEFAULT_REFRESH_HINT_SECS);
    if !crate::bundle::REFRESH_HINT_BOUNDS.contains(&refresh_hint_secs) {
        return Err(invalid(
            "bundle_endpoint.refresh_hint_seconds",
            &refresh_hint_secs.to_string(),
            "must be 10 to 604800 (7 days)",
        ));
    }
    Ok(BundleEndpointConfig { spiffe, web, refresh_hint_secs })
}

fn invalid(field: &'static str, value: &str, rule: &str) -> ConfigError {
    ConfigError::Invalid { field, value: value.to_string(), rule: rule.to_string() }
}

fn parse_addr(
    field: &'static str,
    value: Option<String>,
    (env, flag): (&'static str, &'static str),
) -> Result<SocketAddr, ConfigError> {
    let value = value.ok_or(ConfigError::Missing { field, env, flag })?;
    value.parse().map_err(|e| invalid(field, &value, &format!("not an IP:port address ({e})")))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const GOOD: &str = r#"
        id = 2
        trust_domain = "fed.example"
        data_dir = "data/2"
        [listen]
        raft = "127.0.0.1:7002"
        api = "127.0.0.1:7102"
        metrics = "127.0.0.1:9102"
        [tls]
        ca = "certs/ca.pem"
        cert = "certs/replica-2.pem"
        key = "certs/replica-2.key"
        [raft]
        heartbeat_ms = 40
    "#;

    fn load(text: &str, o: &ServerOverrides) -> Result<ServerConfig, ConfigError> {
        let path = Path::new("/etc/federator/server.toml");
        ServerConfig::resolve(ServerConfig::parse_file(text, path)?, o, path.parent())
    }

    #[test]
    fn a_complete_file_loads_with_paths_relative_to_it() {
        let config = load(GOOD, &ServerOverrides::default()).expect("loads");
        assert_eq!(config.id, 2);
        assert_eq!(config.data_dir, Path::new("/etc/federator/data/2"));
        assert_eq!(config.tls.ca, Path::new("/etc/federator/certs/ca.pem"));
        assert_eq!(config.admin_socket, Path::new("/etc/federator/data/2/admin.sock"));
        assert_eq!(config.advertise_raft, "127.0.0.1:7002");
        assert_eq!(config.heartbeat, Duration::from_millis(40), "the file's value");
        assert_eq!(
            config.election_timeout,
            federator_raft::Timing::Wan.election_timeout(),
            "not in the file: the default profile's (wan)"
        );
    }

    #[test]
    fn the_bundle_endpoint_refresh_hint_defaults_and_is_bounded() {
        let config = load(GOOD, &ServerOverrides::default()).expect("loads");
        assert_eq!(config.bundle_endpoint.refresh_hint_secs, 300);
        let with = |secs: u64| {
            load(
                &format!("{GOOD}\n[bundle_endpoint]\nrefresh_hint_seconds = {secs}\n"),
                &ServerOverrides::default(),
            )
        };
        assert_eq!(with(60).expect("loads").bundle_endpoint.refresh_hint_secs, 60);
        for bad in [0, 9, 604_801] {
            let err = with(bad).expect_err("out of bounds");
            assert!(err.to_string().contains("bundle_endpoint.refresh_hint_seconds"), "{err}");
        }
    }

    #[test]
    fn the_timing_profile_sets_what_the_file_does_not() {
        let lan = load(
            &GOOD.replace("heartbeat_ms = 40", "timing = \"lan\""),
            &ServerOverrides::default(),
        )
        .expect("loads");
        assert_eq!(lan.heartbeat, federator_raft::DEFAULT_HEARTBEAT);
        assert_eq!(lan.election_timeout, federator_raft::DEFAULT_ELECTION_TIMEOUT);
        let wan = load(
            &GOOD.replace("heartbeat_ms = 40", "timing = \"wan\"\nelection_timeout_max_ms = 3000"),
            &ServerOverrides::default(),
        )
        .expect("loads");
        assert_eq!(wan.heartbeat, federator_raft::Timing::Wan.heartbeat());
        assert_eq!(
            wan.election_timeout,
            (federator_raft::Timing::Wan.election_timeout().0, Duration::from_secs(3)),
            "single values override the profile's"
        );
        let err = load(
            &GOOD.replace("heartbeat_ms = 40", "timing = \"fast\""),
            &ServerOverrides::default(),
        )
        .expect_err("unknown profile");
        assert!(
            err.to_string().contains("raft.timing") && err.to_string().contains("\"lan\""),
            "{err}"
        );
    }

    #[test]
    fn overrides_win_over_the_file() {
        let o = ServerOverrides {
            id: Some(7),
            listen_raft: Some("127.0.0.1:9999".into()),
            ..Default::default()
        };
        let config = load(GOOD, &o).expect("loads");
        assert_eq!(config.id, 7);
        assert_eq!(config.listen_raft.port(), 9999);
    }

    #[test]
    fn unknown_setting_is_named() {
        let err = load(&format!("{GOOD}\nelection_timeout = 3"), &ServerOverrides::default())
            .expect_err("must fail");
        assert!(err.to_string().contains("election_timeout"), "{err}");
    }

    #[test]
    fn missing_and_invalid_settings_are_named() {
        let err = load("", &ServerOverrides::default()).expect_err("must fail");
        assert!(
            err.to_string().contains("`id`") && err.to_string().contains("FEDERATOR_ID"),
            "{err}"
        );
        let err = load(&GOOD.replace("127.0.0.1:7102", "localhost"), &ServerOverrides::default())
            .expect_err("must fail");
        assert!(err.to_string().contains("listen.api"), "{err}");
        let err = load(
            &GOOD.replace("heartbeat_ms = 40", "heartbeat_ms = 4000"),
            &ServerOverrides::default(),
        )
        .expect_err("must fail");
        assert!(err.to_string().contains("raft.election_timeout_min_ms"), "{err}");
        let err = load(&GOOD.replace("fed.example", "Fed.Example"), &ServerOverrides::default())
            .expect_err("must fail");
        assert!(err.to_string().contains("trust_domain"), "{err}");
        let err = load(&GOOD.replace("id = 2", "id = \"two\""), &ServerOverrides::default())
            .expect_err("must fail");
        assert!(err.to_string().contains("id"), "{err}");
        let dial = "heartbeat_ms = 40\ndial = { \"127.0.0.1:7001\" = \"proxy\" }";
        let err = load(&GOOD.replace("heartbeat_ms = 40", dial), &ServerOverrides::default())
            .expect_err("must fail");
        assert!(err.to_string().contains("raft.dial"), "{err}");
    }

    #[test]
    fn peers_can_be_dialled_through_other_addresses() {
        let dial = "heartbeat_ms = 40\ndial = { \"127.0.0.1:7001\" = \"127.0.0.1:9001\" }";
        let config = load(&GOOD.replace("heartbeat_ms = 40", dial), &ServerOverrides::default())
            .expect("loads");
        assert_eq!(config.dial["127.0.0.1:7001"], "127.0.0.1:9001");
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = load(&text, &ServerOverrides::default());
        }
    }
}
