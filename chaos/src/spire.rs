//! A real SPIRE deployment for one trust domain — a SPIRE server (its own CA, a sqlite
//! datastore, keys on disk) and a SPIRE agent attested with a join token, serving the
//! SPIFFE Workload API on a unix socket — for the tests that put Federator beside SPIRE.
//! The binaries come from [`crate::spiffe::tool`] (built by
//! `deploy/local/setup-spiffe.sh`); both processes are killed when dropped.
//!
//! Workloads are told apart by their binary's path (`unix:path:` selectors; the agent's
//! unix attestor runs with `discover_workload_path`), since every test process runs as the
//! same user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};

use crate::cluster::{free_port, tail};
use crate::spiffe::tool;
use crate::wait::eventually;

/// The ids of a SPIRE server's X.509 local authorities, by state.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LocalAuthorities {
    /// Signing now.
    pub active: Option<String>,
    /// In the bundle, not signing yet.
    pub prepared: Option<String>,
    /// Replaced, still in the bundle until revoked.
    pub old: Option<String>,
}

/// One SPIRE server and one SPIRE agent.
pub struct SpireDeployment {
    /// The trust domain.
    pub trust_domain: String,
    /// Where configs, data, sockets and logs live.
    pub dir: PathBuf,
    server_port: u16,
    server: Option<Child>,
    agent: Option<Child>,
}

/// How long a SPIRE process gets to come up.
const START: Duration = Duration::from_secs(60);

impl SpireDeployment {
    /// Starts the SPIRE server of `trust_domain` in `dir` (not the agent yet: register
    /// entries and set bundles first, then [`SpireDeployment::start_agent`]).
    ///
    /// # Errors
    /// A binary is missing, or the server did not become healthy.
    pub async fn start_server(dir: &Path, trust_domain: &str) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("server"))?;
        std::fs::create_dir_all(dir.join("agent"))?;
        let mut spire = Self {
            trust_domain: trust_domain.to_string(),
            dir: dir.to_path_buf(),
            server_port: free_port(),
            server: None,
            agent: None,
        };
        spire.write_server_config()?;
        spire.spawn_server()?;
        let healthy = eventually("the SPIRE server to be healthy", START, || async {
            spire.server_cli(&["healthcheck"]).ok()
        })
        .await;
        healthy
            .map_err(|e| e.context(format!("server log:\n{}", tail(&spire.server_log(), 30))))?;
        Ok(spire)
    }

    fn write_server_config(&self) -> anyhow::Result<()> {
        let d = self.dir.display();
        let config = format!(
            "server {{\n  bind_address = \"127.0.0.1\"\n  bind_port = \"{port}\"\n  socket_path = \
             \"{d}/server/api.sock\"\n  trust_domain = \"{td}\"\n  data_dir = \"{d}/server/data\"\n  \
             log_level = \"DEBUG\"\n  ca_ttl = \"24h\"\n  default_x509_svid_ttl = \"1h\"\n}}\n\n\
             plugins {{\n  DataStore \"sql\" {{\n    plugin_data {{\n      database_type = \"sqlite3\"\n      \
             connection_string = \"{d}/server/data/datastore.sqlite3\"\n    }}\n  }}\n  KeyManager \"disk\" {{\n    \
             plugin_data {{\n      keys_path = \"{d}/server/data/keys.json\"\n    }}\n  }}\n  NodeAttestor \
             \"join_token\" {{\n    plugin_data {{}}\n  }}\n}}\n",
            port = self.server_port,
            td = self.trust_domain,
        );
        std::fs::write(self.dir.join("server/server.conf"), config)?;
        Ok(())
    }

    fn spawn_server(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.join("server/server.log"))?;
        let child = Command::new(tool("spire-server")?)
            .args(["run", "-config"])
            .arg(self.dir.join("server/server.conf"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start spire-server")?;
        self.server = Some(child);
        Ok(())
    }

    /// Runs `spire-server <args> -socketPath <this server's>` and returns its stdout.
    ///
    /// # Errors
    /// It exited non-zero; the error holds its output.
    pub fn server_cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let socket = self.dir.join("server/api.sock");
        let out = Command::new(tool("spire-server")?)
            .args(args)
            .arg("-socketPath")
            .arg(&socket)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!(
                "spire-server {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sets the bundle of trust domain `td` on the server from a PEM file (the bootstrap
    /// of a federation relationship, or the bundle an `https_spiffe` endpoint's SVID
    /// chains to).
    ///
    /// # Errors
    /// The server refused it.
    pub fn set_bundle(&self, td: &str, pem: &Path) -> anyhow::Result<()> {
        let path = pem.to_str().context("utf-8 path")?;
        self.server_cli(&[
            "bundle",
            "set",
            "-format",
            "pem",
            "-id",
            &format!("spiffe://{td}"),
            "-path",
            path,
        ])?;
        Ok(())
    }

    /// Federates with `td` through the bundle endpoint at `url` under `https_spiffe`,
    /// authenticating the endpoint as `endpoint_spiffe_id` with the bundle of that ID's
    /// trust domain (set it first, [`SpireDeployment::set_bundle`]). The server picks a
    /// new relationship up within 10 s and fetches at once.
    ///
    /// # Errors
    /// The server refused it.
    pub fn federate_with(
        &self,
        td: &str,
        url: &str,
        endpoint_spiffe_id: &str,
    ) -> anyhow::Result<()> {
        self.server_cli(&[
            "federation",
            "create",
            "-trustDomain",
            td,
            "-bundleEndpointURL",
            url,
            "-bundleEndpointProfile",
            "https_spiffe",
            "-endpointSpiffeID",
            endpoint_spiffe_id,
        ])?;
        Ok(())
    }

    /// The bundle of `td` as this server holds it (its own with `td` its trust domain),
    /// PEM; `None` when it holds none.
    ///
    /// # Errors
    /// The server did not answer.
    pub fn bundle_pem(&self, td: &str) -> anyhow::Result<Option<String>> {
        if td == self.trust_domain {
            return self.server_cli(&["bundle", "show"]).map(Some);
        }
        match self.server_cli(&["bundle", "list", "-id", &format!("spiffe://{td}")]) {
            Ok(pem) => Ok(Some(pem)),
            Err(error)
                if error.to_string().contains("NotFound")
                    || error.to_string().contains("not found") =>
            {
                Ok(None)
            }
            Err(error) => Err(error),
        }
    }

    /// The X.509 local authorities (`localauthority x509 show`): the ids of the active,
    /// prepared and old ones, each when there is one.
    ///
    /// # Errors
    /// The server did not answer.
    pub fn x509_authorities(&self) -> anyhow::Result<LocalAuthorities> {
        let text = self.server_cli(&["localauthority", "x509", "show"])?;
        let mut authorities = LocalAuthorities::default();
        let mut section: Option<&mut Option<String>> = None;
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("Active") {
                section = Some(&mut authorities.active);
            } else if line.starts_with("Prepared") {
                section = Some(&mut authorities.prepared);
            } else if line.starts_with("Old") {
                section = Some(&mut authorities.old);
            } else if let Some(id) = line.strip_prefix("Authority ID:")
                && let Some(slot) = section.as_mut()
            {
                **slot = Some(id.trim().to_string());
            }
        }
        Ok(authorities)
    }

    /// Runs `localauthority x509 <verb> -authorityID <id>` (`activate`, `taint`, `revoke`).
    ///
    /// # Errors
    /// The server refused it.
    pub fn x509_authority(&self, verb: &str, id: &str) -> anyhow::Result<()> {
        self.server_cli(&["localauthority", "x509", verb, "-authorityID", id])?;
        Ok(())
    }

    /// The SPIFFE ID the SPIRE agent is attested as.
    #[must_use]
    pub fn agent_id(&self) -> String {
        format!("spiffe://{}/spire-agent", self.trust_domain)
    }

    /// Registers `spiffe_id` for the workloads run from `binary`, federating with
    /// `federates_with` (trust domains whose bundles its Workload API answers carry).
    ///
    /// # Errors
    /// The server refused the entry.
    pub fn register(
        &self,
        spiffe_id: &str,
        binary: &Path,
        federates_with: &[&str],
    ) -> anyhow::Result<()> {
        let selector = format!("unix:path:{}", binary.canonicalize()?.display());
        let parent = self.agent_id();
        let mut args = vec![
            "entry",
            "create",
            "-parentID",
            &parent,
            "-spiffeID",
            spiffe_id,
            "-selector",
            &selector,
        ];
        let federated: Vec<String> =
            federates_with.iter().map(|td| format!("spiffe://{td}")).collect();
        for td in &federated {
            args.extend(["-federatesWith", td.as_str()]);
        }
        self.server_cli(&args)?;
        Ok(())
    }

    /// Starts the SPIRE agent, attested with a fresh join token, and waits until its
    /// Workload API answers.
    ///
    /// # Errors
    /// The token, the bootstrap bundle or the agent failed.
    pub async fn start_agent(&mut self) -> anyhow::Result<()> {
        let token_out = self.server_cli(&["token", "generate", "-spiffeID", &self.agent_id()])?;
        let token = token_out
            .split_whitespace()
            .last()
            .context("spire-server token generate printed no token")?
            .to_string();
        let bootstrap = self.dir.join("agent/bootstrap.pem");
        std::fs::write(&bootstrap, self.server_cli(&["bundle", "show"])?)?;
        let d = self.dir.display();
        let config = format!(
            "agent {{\n  data_dir = \"{d}/agent/data\"\n  log_level = \"DEBUG\"\n  server_address = \
             \"127.0.0.1\"\n  server_port = \"{port}\"\n  socket_path = \"{d}/agent/workload.sock\"\n  \
             trust_bundle_path = \"{d}/agent/bootstrap.pem\"\n  trust_domain = \"{td}\"\n}}\n\nplugins {{\n  \
             NodeAttestor \"join_token\" {{\n    plugin_data {{}}\n  }}\n  KeyManager \"memory\" {{\n    \
             plugin_data {{}}\n  }}\n  WorkloadAttestor \"unix\" {{\n    plugin_data {{\n      \
             discover_workload_path = true\n    }}\n  }}\n}}\n",
            port = self.server_port,
            td = self.trust_domain,
        );
        std::fs::write(self.dir.join("agent/agent.conf"), config)?;
        let log = std::fs::File::create(self.dir.join("agent/agent.log"))?;
        let child = Command::new(tool("spire-agent")?)
            .args(["run", "-config"])
            .arg(self.dir.join("agent/agent.conf"))
            .args(["-joinToken", &token])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("start spire-agent")?;
        self.agent = Some(child);
        let socket = self.dir.join("agent/workload.sock");
        let healthy = eventually("the SPIRE agent to be healthy", START, || async {
            let out = Command::new(tool("spire-agent").ok()?)
                .args(["healthcheck", "-socketPath"])
                .arg(&socket)
                .output()
                .ok()?;
            out.status.success().then_some(())
        })
        .await;
        healthy.map_err(|e| e.context(format!("agent log:\n{}", tail(&self.agent_log(), 30))))?;
        Ok(())
    }

    /// The Workload API address of the SPIRE agent (`unix://…`).
    #[must_use]
    pub fn workload_api(&self) -> String {
        format!("unix://{}", self.dir.join("agent/workload.sock").display())
    }

    /// The server's log.
    #[must_use]
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server/server.log")).unwrap_or_default()
    }

    /// The agent's log.
    #[must_use]
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("agent/agent.log")).unwrap_or_default()
    }
}

impl Drop for SpireDeployment {
    fn drop(&mut self) {
        for child in [self.agent.take(), self.server.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
