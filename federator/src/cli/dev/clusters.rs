//! The member clusters of `federator dev`: each has its own CA and trust domain, a real
//! `federator agent` child process (files sink, Envoy xDS on loopback), and a demo echo
//! service it exports (`demo/echo`, answered by a tiny HTTP server in this process).
//!
//! A CA rotation is started by creating the file `clusters/NAME/rotate`: the cluster's
//! bundle gets a second CA (old and new together); once every other member has applied
//! it, the agent's and the demo workload's SVIDs are re-issued by the new CA, and the old
//! CA is retired [`ROTATION_GRACE`] later (so workloads reading their SVID files load the
//! new one first) — the whole rotation protocol, visible in the status view. Each CA has
//! its own subject (a certificate without an authority key identifier is matched to its
//! issuer by subject).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use federator_proto::admin as pb;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::process::Child;

use super::super::client::{Connection, status_error};
use crate::agent::AgentStatus;
use crate::identity::FederationCa;

/// Validity of the dev CAs and SVIDs: well past `check`'s 30-day expiry warning.
const VALIDITY: Duration = Duration::from_secs(90 * 86_400);
/// Lease TTL of the dev agents, seconds.
pub(super) const LEASE_TTL: u32 = 10;
/// When dev restarts a dead agent by default, seconds: after its lease expired.
pub(super) const AGENT_RESTART_AFTER_SECS: u64 = LEASE_TTL as u64 + 5;
/// The demo service's port in the clusterset; each cluster's echo listens on a port of
/// its own, given per endpoint.
const ECHO_SERVICE_PORT: u16 = 8080;

/// What is kept of a cluster across runs (`clusters/NAME/cluster.json`).
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    trust_domain: String,
    region: String,
    echo_port: u16,
    xds_port: u16,
    /// The agent's metrics and health listener (0 in state from before it had one).
    #[serde(default)]
    metrics_port: u16,
}

/// Where a CA rotation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rotation {
    /// No rotation.
    Idle,
    /// Old and new CA are published together; waiting for every member to apply them.
    Propagating { since: Instant },
    /// Every member trusts the new CA and the cluster's SVIDs (agent, demo workload)
    /// are re-issued by it; the old CA is retired once the workloads had
    /// [`ROTATION_GRACE`] to load theirs.
    Reissued { since: Instant, at: Instant },
}

/// How long a rotation keeps the old CA after the cluster's SVIDs are re-issued by the
/// new one, so that workloads reading them from files load them before the old CA goes.
pub(super) const ROTATION_GRACE: Duration = Duration::from_secs(10);

/// A CA's subject common name, distinct for each CA of the cluster: a certificate
/// without an authority key identifier is matched to its issuer by subject, so a rotated
/// CA must not share its predecessor's.
fn ca_common_name(cluster: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{cluster} CA {now}")
}

/// One member cluster of the dev federation.
pub(super) struct DevCluster {
    /// Cluster name.
    pub name: String,
    /// Its trust domain.
    pub trust_domain: String,
    /// Its directory.
    pub dir: PathBuf,
    /// Port of its echo service.
    pub echo_port: u16,
    /// Port of its agent's Envoy xDS server.
    pub xds_port: u16,
    /// Its agent's metrics and health listener port.
    pub metrics_port: u16,
    /// The agent process.
    pub child: Option<Child>,
    /// When the agent died.
    pub died_at: Option<Instant>,
    /// CA rotation state.
    pub rotation: Rotation,
}

impl DevCluster {
    /// Prepares cluster number `index` (0-based): reuses its directory if present, else
    /// creates its CA, agent SVID, exports file and agent config; asks the federation for
    /// a join token when the agent has not joined yet.
    pub async fn prepare(
        root: &Path,
        index: usize,
        connection: &Connection,
        federation_ca: &Path,
    ) -> anyhow::Result<Self> {
        let letter = char::from(b'a' + u8::try_from(index % 26).unwrap_or(0));
        let name = format!("cluster-{letter}");
        let dir = root.join("clusters").join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let saved_path = dir.join("cluster.json");
        let saved: Saved = if saved_path.exists() {
            let mut saved: Saved = serde_json::from_slice(&std::fs::read(&saved_path)?)
                .with_context(|| format!("{} does not parse", saved_path.display()))?;
            if saved.metrics_port == 0 {
                saved.metrics_port = crate::net::free_local_port()?;
                std::fs::write(&saved_path, serde_json::to_vec_pretty(&saved)?)?;
            }
            saved
        } else {
            let saved = Saved {
                trust_domain: format!("{name}.federator.test"),
                region: format!("region-{}", index % 2 + 1),
                echo_port: crate::net::free_local_port()?,
                xds_port: crate::net::free_local_port()?,
                metrics_port: crate::net::free_local_port()?,
            };
            std::fs::write(&saved_path, serde_json::to_vec_pretty(&saved)?)?;
            saved
        };
        let cluster = Self {
            name,
            trust_domain: saved.trust_domain.clone(),
            dir,
            echo_port: saved.echo_port,
            xds_port: saved.xds_port,
            metrics_port: saved.metrics_port,
            child: None,
            died_at: None,
            rotation: Rotation::Idle,
        };
        if !cluster.dir.join("ca.key").exists() {
            let ca = FederationCa::generate(
                &cluster.trust_domain,
                &ca_common_name(&cluster.name),
                VALIDITY,
            )?;
            write_secret(&cluster.dir.join("ca.key"), &ca.key_pem())?;
            std::fs::write(cluster.dir.join("ca.pem"), ca.cert_pem())?;
            std::fs::write(cluster.dir.join("bundle.pem"), ca.cert_pem())?;
            cluster.issue_agent_svid(&ca)?;
            cluster.issue_workload_svid(&ca)?;
        } else if !cluster.dir.join("workload.pem").exists() {
            // A directory from before the demo workload had an SVID.
            let ca = FederationCa::from_pem(
                &std::fs::read_to_string(cluster.dir.join("ca.pem"))?,
                &std::fs::read_to_string(cluster.dir.join("ca.key"))?,
            )?;
            cluster.issue_workload_svid(&ca)?;
        }
        cluster.write_exports()?;
        cluster.write_config(&saved, federation_ca)?;
        let joined = cluster.dir.join("state").join("membership.json").exists();
        if !joined {
            let mut leader = connection.leader().await?;
            let token = leader
                .create_token(pb::CreateTokenRequest {
                    cluster: cluster.name.clone(),
                    trust_domain: cluster.trust_domain.clone(),
                    ttl_seconds: 3600,
                    // The demo service's namespace, and where the cluster "runs".
                    namespaces: vec!["demo".into()],
                    region: saved.region.clone(),
                    zone: String::new(),
                })
                .await
                .map_err(status_error)
                .with_context(|| format!("join token for {}", cluster.name))?
                .into_inner();
            write_secret(&cluster.dir.join("join-token"), &token.token)?;
        }
        Ok(cluster)
    }

    /// Issues the agent's SVID from `ca` (the agent reloads the files).
    fn issue_agent_svid(&self, ca: &FederationCa) -> anyhow::Result<()> {
        let id = super::super::certs::member_agent_spiffe_id(&self.trust_domain);
        let svid = ca.issue(&id, &[], &[], VALIDITY)?;
        // Key first: the agent reloads when the certificate changes.
        write_secret(&self.dir.join("agent.key.tmp"), &svid.key_pem)?;
        std::fs::write(self.dir.join("agent.pem.tmp"), &svid.cert_pem)?;
        std::fs::rename(self.dir.join("agent.key.tmp"), self.dir.join("agent.key"))?;
        std::fs::rename(self.dir.join("agent.pem.tmp"), self.dir.join("agent.pem"))?;
        Ok(())
    }

    /// Issues the demo workload's SVID (`spiffe://<td>/ns/demo/sa/echo`, the identity
    /// its export declares) from `ca` into `workload.pem` / `workload.key`: what a
    /// sidecar of the echo would present.
    fn issue_workload_svid(&self, ca: &FederationCa) -> anyhow::Result<()> {
        let id = format!("spiffe://{}/ns/demo/sa/echo", self.trust_domain);
        let svid = ca.issue(&id, &[], &[], VALIDITY)?;
        write_secret(&self.dir.join("workload.key.tmp"), &svid.key_pem)?;
        std::fs::write(self.dir.join("workload.pem.tmp"), &svid.cert_pem)?;
        std::fs::rename(self.dir.join("workload.key.tmp"), self.dir.join("workload.key"))?;
        std::fs::rename(self.dir.join("workload.pem.tmp"), self.dir.join("workload.pem"))?;
        Ok(())
    }

    fn write_exports(&self) -> anyhow::Result<()> {
        let path = self.dir.join("exports.json");
        if path.exists() {
            // The user may have edited it: theirs to keep.
            return Ok(());
        }
        let exports = serde_json::json!({
            "exports": [{
                "namespace": "demo",
                "name": "echo",
                "ports": [{"name": "http", "port": ECHO_SERVICE_PORT, "protocol": "TCP", "appProtocol": "http"}],
                "endpoints": [{
                    "address": "127.0.0.1",
                    "zone": "zone-1",
                    "ports": [{"name": "http", "port": self.echo_port}],
                }],
                "identities": [format!("spiffe://{}/ns/demo/sa/echo", self.trust_domain)],
            }]
        });
        std::fs::write(path, serde_json::to_vec_pretty(&exports)?)?;
        Ok(())
    }

    fn write_config(&self, saved: &Saved, federation_ca: &Path) -> anyhow::Result<()> {
        let d = self.dir.display();
        let config = format!(
            "# Written by `federator dev`: the agent of {name} ({td}).\n\
             state_dir = \"{d}/state\"\n\
             token_file = \"{d}/join-token\"\n\
             federation_ca = \"{ca}\"\n\
             listen_metrics = \"127.0.0.1:{metrics}\"\n\n\
             [svid]\ncert = \"{d}/agent.pem\"\nkey = \"{d}/agent.key\"\n\n\
             [bundle]\nkind = \"file\"\npath = \"{d}/bundle.pem\"\nformat = \"pem\"\n\n\
             [exports]\nfile = \"{d}/exports.json\"\n\n\
             [lease]\nttl_seconds = {ttl}\nregion = \"{region}\"\nzone = \"zone-1\"\n\n\
             [sinks.files]\ndir = \"{d}/out\"\n\n\
             [sinks.xds]\nlisten = \"127.0.0.1:{xds}\"\n",
            name = self.name,
            td = self.trust_domain,
            ca = federation_ca.display(),
            ttl = LEASE_TTL,
            region = saved.region,
            xds = saved.xds_port,
            metrics = saved.metrics_port,
        );
        std::fs::write(self.dir.join("agent.toml"), config)?;
        Ok(())
    }

    /// Starts the agent.
    pub fn spawn(&mut self, exe: &Path) -> anyhow::Result<()> {
        let child = super::spawn_child(
            exe,
            "agent",
            &self.dir.join("agent.toml"),
            &self.dir.join("agent.log"),
            "info",
        )
        .with_context(|| format!("start the agent of {}", self.name))?;
        self.child = Some(child);
        self.died_at = None;
        Ok(())
    }

    /// The agent's last status, if it wrote one.
    pub fn status(&self) -> Option<AgentStatus> {
        let text = std::fs::read_to_string(self.dir.join("state").join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// The agent's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Starts or advances a CA rotation; returns a line for the status view.
    pub async fn advance_rotation(
        &mut self,
        connection: &Connection,
    ) -> anyhow::Result<Option<String>> {
        let trigger = self.dir.join("rotate");
        match self.rotation {
            Rotation::Idle if trigger.exists() => {
                std::fs::remove_file(&trigger)?;
                let next = FederationCa::generate(
                    &self.trust_domain,
                    &ca_common_name(&self.name),
                    VALIDITY,
                )?;
                write_secret(&self.dir.join("ca-next.key"), &next.key_pem())?;
                std::fs::write(self.dir.join("ca-next.pem"), next.cert_pem())?;
                let old = std::fs::read_to_string(self.dir.join("ca.pem"))?;
                write_atomic(&self.dir.join("bundle.pem"), &format!("{old}{}", next.cert_pem()))?;
                self.rotation = Rotation::Propagating { since: Instant::now() };
                Ok(Some(format!(
                    "{}: rotation started: old and new CA published together",
                    self.name
                )))
            }
            Rotation::Idle => Ok(None),
            Rotation::Propagating { since } => {
                let Some(status) = self.status() else { return Ok(None) };
                let published = status.bundle.published_sequence;
                let mut leader = connection.leader().await?;
                let bundle = leader
                    .bundle_status(pb::BundleStatusRequest {
                        trust_domain: self.trust_domain.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(status_error)?
                    .into_inner();
                let applied =
                    bundle.members.iter().filter(|m| m.applied_sequence >= bundle.sequence).count();
                let both_published = status.bundle.sequence == published
                    && published.is_some_and(|p| p == bundle.sequence);
                if !(both_published && bundle.complete) {
                    return Ok(Some(format!(
                        "{}: rotating for {}s — {applied}/{} members applied sequence {}",
                        self.name,
                        since.elapsed().as_secs(),
                        bundle.members.len(),
                        bundle.sequence
                    )));
                }
                // Every member trusts the new CA: the cluster's SVIDs are re-issued by it;
                // the old CA stays until the workloads had time to load theirs.
                let next = FederationCa::from_pem(
                    &std::fs::read_to_string(self.dir.join("ca-next.pem"))?,
                    &std::fs::read_to_string(self.dir.join("ca-next.key"))?,
                )?;
                self.issue_agent_svid(&next)?;
                self.issue_workload_svid(&next)?;
                self.rotation = Rotation::Reissued { since, at: Instant::now() };
                Ok(Some(format!(
                    "{}: every member applied the new CA after {}s; agent and workload SVIDs \
                     re-issued by it, old CA retired in {}s",
                    self.name,
                    since.elapsed().as_secs(),
                    ROTATION_GRACE.as_secs()
                )))
            }
            Rotation::Reissued { since, at } => {
                if at.elapsed() < ROTATION_GRACE {
                    return Ok(None);
                }
                let next = std::fs::read_to_string(self.dir.join("ca-next.pem"))?;
                std::fs::rename(self.dir.join("ca-next.key"), self.dir.join("ca.key"))?;
                std::fs::rename(self.dir.join("ca-next.pem"), self.dir.join("ca.pem"))?;
                write_atomic(&self.dir.join("bundle.pem"), &next)?;
                self.rotation = Rotation::Idle;
                Ok(Some(format!(
                    "{}: old CA retired {}s after the rotation began",
                    self.name,
                    since.elapsed().as_secs()
                )))
            }
        }
    }
}

/// Writes a file only its owner can read.
fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    Ok(())
}

fn write_atomic(path: &Path, text: &str) -> anyhow::Result<()> {
    crate::agent::store::write_atomic(path, text.as_bytes(), 0o644)
        .with_context(|| format!("write {}", path.display()))
}

/// Serves `demo/echo` of `cluster` on 127.0.0.1:`port`: every HTTP request gets
/// `hello from CLUSTER`.
pub(super) async fn serve_echo(cluster: String, port: u16) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("echo service of {cluster} on 127.0.0.1:{port}"))?;
    loop {
        let (mut stream, _) = listener.accept().await?;
        let cluster = cluster.clone();
        // One connection, bounded: it reads the request head with a timeout, answers and
        // closes; it needs no owner.
        tokio::spawn(async move {
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            // Read the request head (bounded), then answer and close.
            while request.len() < 16 * 1024 && !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => request.extend_from_slice(&buf[..n]),
                    _ => return,
                }
            }
            let body = format!("hello from {cluster}\n");
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_ca_of_a_cluster_has_its_own_subject() {
        let first = ca_common_name("cluster-a");
        let second = ca_common_name("cluster-a");
        assert_ne!(first, second);
        assert!(first.starts_with("cluster-a CA "), "{first}");
    }
}
