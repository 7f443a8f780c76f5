//! Third-party SPIFFE peers the tests run: SPIRE server and agent (v1.13.3) and the
//! go-spiffe v2 test client (`tests/spiffe-client`), built by
//! `deploy/local/setup-spiffe.sh` into `$FEDERATOR_SPIFFE_TOOLS/bin` (default
//! `~/.cache/federator/spiffe-tools/bin`). A missing tool fails the test that needs it
//! with what to run: these tests are never skipped.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};

/// What to do when a tool is missing.
pub const INSTALL_HINT: &str = "run `bash deploy/local/setup-spiffe.sh` (it builds SPIRE \
     v1.13.3 and the go-spiffe test client with Go), or set FEDERATOR_SPIFFE_TOOLS to the \
     directory whose bin/ holds them";

/// The directory the tools are in.
#[must_use]
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("FEDERATOR_SPIFFE_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
            .join(".cache/federator/spiffe-tools"),
    }
}

/// The tool `name` (`spire-server`, `spire-agent`, `spiffe-client`).
///
/// # Errors
/// It is not built.
pub fn tool(name: &str) -> anyhow::Result<PathBuf> {
    let path = tools_dir().join("bin").join(name);
    if !path.is_file() {
        bail!("{name} is not at {}: {INSTALL_HINT}", path.display());
    }
    Ok(path)
}

/// What the go-spiffe client's `fetch-bundle` printed.
#[derive(Debug, serde::Deserialize)]
pub struct FetchedBundle {
    /// The trust domain of the bundle.
    pub trust_domain: String,
    /// Its X.509 authorities, PEM each.
    pub x509_authorities: Vec<String>,
    /// Key ids of its JWT authorities.
    pub jwt_key_ids: Vec<String>,
    /// `spiffe_sequence`.
    pub sequence: Option<u64>,
    /// `spiffe_refresh_hint`, seconds.
    pub refresh_hint_seconds: Option<i64>,
}

/// How the go-spiffe client authenticates the bundle endpoint.
#[derive(Clone, Debug)]
pub enum Profile {
    /// `https_web`: web PKI roots from this PEM file.
    Web {
        /// The roots.
        roots: PathBuf,
    },
    /// `https_spiffe`: the endpoint's SPIFFE ID and the PEM bundle of its trust domain.
    Spiffe {
        /// The endpoint's SPIFFE ID.
        endpoint_id: String,
        /// The bundle of the endpoint's trust domain.
        endpoint_bundle: PathBuf,
    },
}

/// Runs go-spiffe's `federation.FetchBundle` on `url` for `trust_domain`.
///
/// # Errors
/// The client is missing, or it failed (its stderr is the error).
pub fn fetch_bundle(
    url: &str,
    trust_domain: &str,
    profile: &Profile,
) -> anyhow::Result<FetchedBundle> {
    let mut command = Command::new(tool("spiffe-client")?);
    command.args(["fetch-bundle", "-url", url, "-trust-domain", trust_domain]);
    match profile {
        Profile::Web { roots } => {
            command.args(["-profile", "https_web", "-roots"]).arg(roots);
        }
        Profile::Spiffe { endpoint_id, endpoint_bundle } => {
            command
                .args(["-profile", "https_spiffe", "-endpoint-id", endpoint_id])
                .arg("-endpoint-bundle")
                .arg(endpoint_bundle);
        }
    }
    let out = command.output().context("run spiffe-client")?;
    if !out.status.success() {
        bail!("go-spiffe FetchBundle {url}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout)
        .with_context(|| format!("spiffe-client printed {}", String::from_utf8_lossy(&out.stdout)))
}

/// go-spiffe's `mtls-serve`: answers mTLS connections from one SPIFFE ID with its SVID
/// from a Workload API. Killed when dropped.
pub struct MtlsServer {
    /// Where it listens.
    pub addr: String,
    child: std::process::Child,
}

impl MtlsServer {
    /// Starts it on a free loopback port with the SVID of `workload_api`, accepting only
    /// `client_id`, and waits until it listens.
    ///
    /// # Errors
    /// The client is missing, or it did not come up.
    pub fn start(workload_api: &str, client_id: &str) -> anyhow::Result<Self> {
        use std::io::BufRead as _;
        let addr = format!("127.0.0.1:{}", crate::cluster::free_port());
        let mut child = Command::new(tool("spiffe-client")?)
            .args(["mtls-serve", "-workload-api", workload_api, "-listen", &addr])
            .args(["-authorize", client_id])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .context("start spiffe-client mtls-serve")?;
        let stdout = child.stdout.take().context("its stdout")?;
        let mut first = String::new();
        std::io::BufReader::new(stdout).read_line(&mut first)?;
        if !first.starts_with("listening") {
            let _ = child.kill();
            let _ = child.wait();
            bail!("spiffe-client mtls-serve did not start (printed {first:?})");
        }
        Ok(Self { addr, child })
    }
}

impl Drop for MtlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What an mTLS call returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MtlsAnswer {
    /// The server's line.
    pub line: String,
    /// The authority key id (hex) of the SVID the server presented: which of its
    /// authorities signed it.
    pub issuer: String,
}

/// go-spiffe's `mtls-call` to `addr` with the SVID of `workload_api`, authorizing
/// `server_id` (`tlsconfig.MTLSClientConfig` with `AuthorizeID`).
///
/// # Errors
/// The call failed (refused handshake, wrong peer, no SVID); the error is the client's.
pub fn mtls_call(workload_api: &str, addr: &str, server_id: &str) -> anyhow::Result<MtlsAnswer> {
    let out = Command::new(tool("spiffe-client")?)
        .args(["mtls-call", "-workload-api", workload_api, "-addr", addr])
        .args(["-authorize", server_id, "-timeout", "10s"])
        .output()
        .context("run spiffe-client mtls-call")?;
    if !out.status.success() {
        bail!("go-spiffe mTLS call to {addr}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let line = lines.next().unwrap_or_default().trim().to_string();
    let issuer =
        lines.find_map(|l| l.strip_prefix("issuer ")).unwrap_or_default().trim().to_string();
    Ok(MtlsAnswer { line, issuer })
}
