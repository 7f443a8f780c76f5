//! A member cluster's agent as a real `federator agent` process: its SVID and bundle
//! files (from a [`MemberCluster`]), its config, its state directory and sinks, started,
//! killed and restarted like a replica. Killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use federator::agent::AgentStatus;

use crate::cluster::{Federation, federator_bin, free_port, tail};
use crate::member::MemberCluster;
use crate::wait::eventually;

/// What an agent is configured with.
#[derive(Clone, Debug, Default)]
pub struct AgentOptions {
    /// The cluster's etcd: exports are read from `/federator/exports/` there and
    /// bundles and imports written under `/federator/bundles/` and `/federator/imports/`.
    pub etcd_endpoints: Vec<String>,
    /// Serve Envoy xDS on a free loopback port.
    pub xds: bool,
    /// More of `[sinks.xds]`: TOML tables written after it (`[sinks.xds.clusters]`,
    /// `[sinks.xds.egress]`).
    pub xds_tables: String,
    /// Lease TTL in seconds (default 10).
    pub lease_ttl_seconds: Option<u32>,
    /// Region and zone of the cluster.
    pub locality: Option<(String, String)>,
    /// Serve Prometheus metrics on a free loopback port.
    pub metrics: bool,
    /// Take the SVID and the own bundle from this SPIFFE Workload API address (for
    /// example [`crate::workload_api::WorkloadApiServer::address`]) instead of files.
    pub workload_api: Option<String>,
    /// The replica API addresses the agent tries, in this order (`endpoints` in its
    /// config); empty: those of its join token.
    pub endpoints: Vec<String>,
    /// The cluster's Kubernetes API server (an admin kubeconfig): exports from its
    /// `ServiceExport`s, imports and federated bundles written into it
    /// (`[exports.kubernetes]`, `[sinks.kubernetes]`).
    pub kubeconfig: Option<PathBuf>,
    /// More TOML written at the end of `agent.toml` (tables of its own).
    pub extra_config: String,
}

/// One agent process and its files.
pub struct AgentProcess {
    /// The cluster it serves: CAs, agent SVID, bundles.
    pub member: MemberCluster,
    /// Its working directory.
    pub dir: PathBuf,
    /// The xDS server address, when serving one.
    pub xds_addr: Option<String>,
    /// The Prometheus `/metrics` address, when serving one.
    pub metrics_addr: Option<String>,
    /// The static exports file, when it has one.
    pub exports_file: Option<PathBuf>,
    child: Option<Child>,
}

impl AgentProcess {
    /// Writes the agent's files and config for `member`, with a join token from `fed`.
    ///
    /// # Errors
    /// A file could not be written or the token not made.
    pub fn new(
        fed: &Federation,
        member: MemberCluster,
        options: &AgentOptions,
    ) -> anyhow::Result<Self> {
        let dir = fed.dir().join(format!("agent-{}", member.name));
        std::fs::create_dir_all(&dir)?;
        // The region its exports claim is bound by the operator, with the token.
        let token = match &options.locality {
            Some((region, _)) if !region.is_empty() => {
                fed.token_with(&member.name, &member.trust_domain, "1h", &["--region", region])?
            }
            _ => fed.token(&member.name, &member.trust_domain, "1h")?,
        };
        std::fs::write(dir.join("join-token"), token)?;
        let xds_addr = options.xds.then(|| format!("127.0.0.1:{}", free_port()));
        let (region, zone) = options.locality.clone().unwrap_or_default();
        let identity = match &options.workload_api {
            Some(socket) => format!(
                "[svid]\nworkload_api = \"{socket}\"\n\n[bundle]\nkind = \"workload_api\"\nsocket = \"{socket}\"\n"
            ),
            None => format!(
                "[svid]\ncert = \"{dir}/agent.pem\"\nkey = \"{dir}/agent.key\"\n\n[bundle]\nkind = \"file\"\npath = \"{dir}/bundle.pem\"\nformat = \"pem\"\n",
                dir = dir.display()
            ),
        };
        let mut config = format!(
            "state_dir = \"{state}\"\ntoken_file = \"{dir}/join-token\"\n\n{identity}\n[lease]\nttl_seconds = {ttl}\nregion = \"{region}\"\nzone = \"{zone}\"\n\n[sinks.files]\ndir = \"{dir}/out\"\n",
            state = dir.join("state").display(),
            dir = dir.display(),
            ttl = options.lease_ttl_seconds.unwrap_or(10),
        );
        if !options.etcd_endpoints.is_empty() {
            let endpoints = options
                .etcd_endpoints
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", ");
            config.push_str(&format!(
                "\n[sinks.etcd]\nendpoints = [{endpoints}]\n\n[exports]\netcd_endpoints = [{endpoints}]\netcd_prefix = \"/federator/exports/\"\n"
            ));
        }
        let metrics_addr = options.metrics.then(|| format!("127.0.0.1:{}", free_port()));
        if let Some(addr) = &metrics_addr {
            // A top-level key: it must come before the first table.
            config.insert_str(0, &format!("listen_metrics = \"{addr}\"\n"));
        }
        if !options.endpoints.is_empty() {
            let endpoints: Vec<String> =
                options.endpoints.iter().map(|e| format!("\"{e}\"")).collect();
            // A top-level key too.
            config.insert_str(0, &format!("endpoints = [{}]\n", endpoints.join(", ")));
        }
        if let Some(addr) = &xds_addr {
            config.push_str(&format!("\n[sinks.xds]\nlisten = \"{addr}\"\n"));
            config.push_str(&options.xds_tables);
        }
        if let Some(kubeconfig) = &options.kubeconfig {
            config.push_str(&format!(
                "\n[kubernetes]\nkubeconfig = \"{}\"\n\n[exports.kubernetes]\n\n[sinks.kubernetes]\n",
                kubeconfig.display()
            ));
        }
        config.push_str(&options.extra_config);
        std::fs::write(dir.join("agent.toml"), config)?;
        let agent = Self { member, dir, xds_addr, metrics_addr, exports_file: None, child: None };
        agent.write_identity()?;
        agent.write_bundle()?;
        Ok(agent)
    }

    /// Writes the agent's SVID files from the member's current SVID.
    ///
    /// # Errors
    /// A file could not be written.
    pub fn write_identity(&self) -> anyhow::Result<()> {
        let svid = self.member.agent_svid();
        std::fs::write(self.dir.join("agent.pem"), &svid.cert_pem)?;
        std::fs::write(self.dir.join("agent.key"), &svid.key_pem)?;
        Ok(())
    }

    /// Writes the cluster's bundle file (its current CAs, PEM).
    ///
    /// # Errors
    /// The file could not be written.
    pub fn write_bundle(&self) -> anyhow::Result<()> {
        let path = self.dir.join("bundle.pem");
        let tmp = self.dir.join("bundle.pem.tmp");
        std::fs::write(&tmp, self.member.ca_pem())?;
        std::fs::rename(tmp, path)?;
        Ok(())
    }

    /// Gives the agent a static exports file, `exports.json` in its directory (`[exports]
    /// file`, see `federator::agent::sources::export_doc`), holding `exports`, a
    /// `{"exports": [...]}` document. Before [`AgentProcess::start`]; later changes go
    /// through [`AgentProcess::write_exports`].
    ///
    /// # Errors
    /// It is running, or a file could not be written.
    pub fn use_exports_file(&mut self, exports: &serde_json::Value) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "agent {} is running", self.member.name);
        let path = self.dir.join("exports.json");
        let config_path = self.dir.join("agent.toml");
        let mut config = std::fs::read_to_string(&config_path)?;
        let line = format!("file = \"{}\"\n", path.display());
        if config.contains("\n[exports]\n") {
            config = config.replacen("\n[exports]\n", &format!("\n[exports]\n{line}"), 1);
        } else {
            config.push_str(&format!("\n[exports]\n{line}"));
        }
        std::fs::write(config_path, config)?;
        self.exports_file = Some(path);
        self.write_exports(exports)
    }

    /// Replaces the static exports file (atomically) with `exports`, a
    /// `{"exports": [...]}` document; the agent reads it within a second.
    ///
    /// # Errors
    /// The agent has no exports file ([`AgentProcess::use_exports_file`]), or it could
    /// not be written.
    pub fn write_exports(&self, exports: &serde_json::Value) -> anyhow::Result<()> {
        let path = self.exports_file.as_deref().context("the agent has no exports file")?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(exports)?)?;
        std::fs::rename(tmp, path)?;
        Ok(())
    }

    /// Path of a file under the agent's files sink.
    #[must_use]
    pub fn out(&self, relative: &str) -> PathBuf {
        self.dir.join("out").join(relative)
    }

    /// The agent's state directory.
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// Starts (or restarts) the agent process.
    ///
    /// # Errors
    /// It is running already, or could not be spawned.
    pub fn start(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.child.is_none(), "agent {} is running", self.member.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))?;
        let child = Command::new(federator_bin())
            .args(["agent", "--config"])
            .arg(self.dir.join("agent.toml"))
            .env("RUST_LOG", "info,federator=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawn federator agent")?;
        self.child = Some(child);
        Ok(())
    }

    /// SIGKILLs the agent.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The status the agent last wrote.
    #[must_use]
    pub fn status(&self) -> Option<AgentStatus> {
        let text = std::fs::read_to_string(self.state_dir().join("status.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// What `federator agent status` prints for this agent, and whether it exited 0.
    ///
    /// # Errors
    /// The binary could not be run.
    pub fn status_text(&self) -> anyhow::Result<(bool, String)> {
        let out = std::process::Command::new(crate::cluster::federator_bin())
            .args(["agent", "status", "--state-dir"])
            .arg(self.state_dir())
            .output()?;
        Ok((out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned()))
    }

    /// Waits until the agent's status satisfies `check`.
    ///
    /// # Errors
    /// It did not within `timeout`; the error carries the agent's log.
    pub async fn wait_status(
        &self,
        what: &str,
        timeout: Duration,
        check: impl Fn(&AgentStatus) -> bool,
    ) -> anyhow::Result<AgentStatus> {
        eventually(what, timeout, || async { self.status().filter(|s| check(s)) })
            .await
            .with_context(|| format!("agent {} log:\n{}", self.member.name, tail(&self.log(), 40)))
    }

    /// The bootstrap `federator agent envoy-bootstrap` prints for this agent's config,
    /// with `extra` arguments (`--delta`…); the admin listener on a kernel-chosen port.
    ///
    /// # Errors
    /// The command failed (its stderr in the message) or printed no JSON.
    pub fn envoy_bootstrap(
        &self,
        node_id: &str,
        extra: &[&str],
    ) -> anyhow::Result<serde_json::Value> {
        let out = std::process::Command::new(crate::cluster::federator_bin())
            .args(["agent", "envoy-bootstrap", "--config"])
            .arg(self.dir.join("agent.toml"))
            .args(["--node-id", node_id, "--admin", "127.0.0.1:0"])
            .args(extra)
            .stdin(Stdio::null())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "agent envoy-bootstrap exited {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The agent's log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// The agent's Prometheus metrics (it must have been started with `metrics`).
    ///
    /// # Errors
    /// No metrics endpoint, or it did not answer.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        let addr = self.metrics_addr.as_deref().context("the agent serves no metrics")?;
        Ok(crate::http::get(addr, "/metrics", Duration::from_secs(5)).await?.body)
    }

    /// The agent's working directory.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
