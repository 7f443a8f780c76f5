//! Reaching the replicas as an operator does: the `federator` CLI pointed at them with the
//! admin identity (its environment, its output, a token, the audit trail), and admin
//! connections and clients.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use federator::cli::{Connection, ConnectionArgs};
use federator_proto::admin::admin_client::AdminClient;
use tonic::transport::Channel;

use super::{Federation, federator_bin};

impl Federation {
    /// Connection arguments reaching the given replicas' APIs with the admin identity.
    #[must_use]
    pub fn connection_args(&self, ids: &[u64]) -> ConnectionArgs {
        ConnectionArgs {
            endpoints: ids
                .iter()
                .filter_map(|id| self.replicas.get(id))
                .map(|p| p.api_addr.clone())
                .collect(),
            ca: Some(self.certs.join("ca.pem")),
            cert: Some(self.certs.join("admin.pem")),
            key: Some(self.certs.join("admin.key")),
        }
    }

    /// An admin connection to the given replicas.
    ///
    /// # Errors
    /// The admin certificate could not be loaded.
    pub fn connection(&self, ids: &[u64]) -> anyhow::Result<Connection> {
        Connection::new(&self.connection_args(ids))
    }

    /// An admin client of replica `id`.
    ///
    /// # Errors
    /// It cannot be reached.
    pub async fn admin(&self, id: u64) -> anyhow::Result<AdminClient<Channel>> {
        let connection = self.connection(&[id])?;
        connection.admin(&self.replica(id).api_addr).await
    }

    /// Runs the `federator` CLI against `ids` (all running replicas when empty).
    ///
    /// # Errors
    /// The process could not be run.
    pub fn cli(&self, ids: &[u64], args: &[&str]) -> anyhow::Result<Output> {
        let ids = if ids.is_empty() { self.ids() } else { ids.to_vec() };
        let output = Command::new(federator_bin())
            .args(args)
            .envs(self.cli_env(&ids))
            .stdin(Stdio::null())
            .output()?;
        Ok(output)
    }

    /// The `federator` command with `args`, pointed at every replica with the admin
    /// identity, not started (for one that runs beside the test, e.g. a `--wait`).
    #[must_use]
    pub fn cli_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(federator_bin());
        command.args(args).envs(self.cli_env(&self.ids())).stdin(Stdio::null());
        command
    }

    /// The environment that points the CLI at replicas `ids` with the admin identity.
    fn cli_env(&self, ids: &[u64]) -> [(&'static str, std::ffi::OsString); 4] {
        let conn = self.connection_args(ids);
        [
            ("FEDERATOR_ENDPOINTS", conn.endpoints.join(",").into()),
            ("FEDERATOR_CA", self.certs.join("ca.pem").into()),
            ("FEDERATOR_CERT", self.certs.join("admin.pem").into()),
            ("FEDERATOR_KEY", self.certs.join("admin.key").into()),
        ]
    }

    /// Runs the CLI against `ids` like [`Federation::cli_ok`], without blocking the
    /// runtime, killed after `timeout`; returns stdout.
    ///
    /// # Errors
    /// It could not be run, timed out, or exited non-zero (the error holds stderr).
    pub async fn cli_ok_within(
        &self,
        ids: &[u64],
        args: &[&str],
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let child = tokio::process::Command::new(federator_bin())
            .args(args)
            .envs(self.cli_env(ids))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let out = tokio::time::timeout(timeout, child.wait_with_output()).await.with_context(
            || format!("`federator {}` timed out after {timeout:?}", args.join(" ")),
        )??;
        cli_stdout(args, &out)
    }

    /// Runs the CLI and fails unless it exits 0; returns stdout.
    ///
    /// # Errors
    /// Non-zero exit; the error holds stderr.
    pub fn cli_ok(&self, ids: &[u64], args: &[&str]) -> anyhow::Result<String> {
        let out = self.cli(ids, args)?;
        cli_stdout(args, &out)
    }

    /// A join token for `cluster` in `trust_domain`, valid for `ttl` (`1h`, `30s`…),
    /// made with the CLI.
    ///
    /// # Errors
    /// The CLI failed.
    pub fn token(&self, cluster: &str, trust_domain: &str, ttl: &str) -> anyhow::Result<String> {
        self.token_with(cluster, trust_domain, ttl, &[])
    }

    /// Like [`Federation::token`], with more `token create` arguments (`--namespace`,
    /// `--region`, `--zone`).
    ///
    /// # Errors
    /// The CLI failed.
    pub fn token_with(
        &self,
        cluster: &str,
        trust_domain: &str,
        ttl: &str,
        extra: &[&str],
    ) -> anyhow::Result<String> {
        let mut args = vec![
            "token",
            "create",
            "--cluster",
            cluster,
            "--trust-domain",
            trust_domain,
            "--ttl",
            ttl,
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        let out = self.cli_ok(&[], &args)?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        v["token"].as_str().map(str::to_string).context("token create printed no token")
    }

    /// The newest audit events, as `federator audit -o json` prints them.
    ///
    /// # Errors
    /// The CLI failed.
    pub fn audit(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let out = self.cli_ok(&[], &["audit", "--limit", "200", "-o", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// Runs the CLI with `-o json` appended and parses its output.
    ///
    /// # Errors
    /// The CLI failed or printed something else than JSON.
    pub fn cli_json(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        let out = self.cli_ok(&[], &args)?;
        serde_json::from_str(&out)
            .with_context(|| format!("`federator {}` printed {out}", args.join(" ")))
    }

    /// The sequence of `td`'s bundle that member `cluster` has applied, per `federator
    /// bundle status`.
    ///
    /// # Errors
    /// The CLI failed.
    pub fn applied_sequence(&self, td: &str, cluster: &str) -> anyhow::Result<Option<u64>> {
        let status = self.cli_json(&["bundle", "status", td])?;
        Ok(status["members"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["cluster"] == cluster))
            .and_then(|m| m["applied_sequence"].as_u64()))
    }
}

/// The CLI's stdout when it exited 0, else an error with its status and output.
fn cli_stdout(args: &[&str], out: &Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "`federator {}` failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
