//! `federator server`: run one replica.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::server::config::{ServerConfig, ServerOverrides};

/// Run one federator replica.
///
/// Settings come from the TOML file, then `FEDERATOR_*` environment variables, then these
/// flags (the last wins). A new group is formed with `--bootstrap` on its first replica
/// (or `federator raft init`), and grown with `federator raft add-member`.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// Config file (TOML); see deploy/local/server.toml for every setting.
    #[arg(long, short = 'c', env = "FEDERATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Replica id (positive, unique in the group).
    #[arg(long, env = "FEDERATOR_ID")]
    id: Option<u64>,
    /// The federation's own SPIFFE trust domain.
    #[arg(long, env = "FEDERATOR_TRUST_DOMAIN")]
    trust_domain: Option<String>,
    /// Data directory (log, snapshots, admin socket).
    #[arg(long, env = "FEDERATOR_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Replica transport listen address (IP:port).
    #[arg(long, env = "FEDERATOR_LISTEN_RAFT")]
    listen_raft: Option<String>,
    /// API listen address (IP:port).
    #[arg(long, env = "FEDERATOR_LISTEN_API")]
    listen_api: Option<String>,
    /// Prometheus metrics listen address (IP:port; empty disables).
    #[arg(long, env = "FEDERATOR_LISTEN_METRICS")]
    listen_metrics: Option<String>,
    /// CA certificate of the federation (PEM).
    #[arg(long, env = "FEDERATOR_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// This replica's certificate (PEM).
    #[arg(long, env = "FEDERATOR_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// This replica's private key (PEM).
    #[arg(long, env = "FEDERATOR_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// Initialize a one-replica group on first start if the log is empty.
    #[arg(long, env = "FEDERATOR_BOOTSTRAP")]
    bootstrap: bool,
}

/// Runs the replica until SIGINT or SIGTERM.
pub async fn run(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let overrides = ServerOverrides {
        id: args.id,
        trust_domain: args.trust_domain,
        data_dir: args.data_dir.map(super::expand_home),
        listen_raft: args.listen_raft,
        listen_api: args.listen_api,
        listen_metrics: args.listen_metrics,
        tls_ca: args.tls_ca,
        tls_cert: args.tls_cert,
        tls_key: args.tls_key,
        bootstrap: args.bootstrap.then_some(true),
    };
    let config = ServerConfig::load(args.config.as_deref(), &overrides)?;
    crate::server::run(config, shutdown_signal()).await.context("replica stopped")?;
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the replica");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
