//! Connecting the CLI to replicas' admin APIs: the local admin socket, or mTLS with an
//! admin certificate.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use federator_proto::admin::admin_client::AdminClient;
use federator_proto::admin::{ReplicaStatus, StatusRequest};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint};

use crate::identity::TlsFiles;

/// How to reach the federation (global flags). Listed under a heading of their own: in
/// `server`, `agent` and `dev` help they sit beside those commands' own TLS settings,
/// which they are not.
#[derive(Clone, Debug, clap::Args)]
#[command(next_help_heading = "Admin client (for the commands that call the federation)")]
pub struct ConnectionArgs {
    /// Replicas to talk to: `unix:///path/admin.sock` or API addresses `host:port`,
    /// comma-separated.
    #[arg(long, global = true, env = "FEDERATOR_ENDPOINTS", value_delimiter = ',')]
    pub endpoints: Vec<String>,
    /// CA certificate (PEM) that replicas' certificates chain to.
    #[arg(long, global = true, env = "FEDERATOR_CA")]
    pub ca: Option<PathBuf>,
    /// Admin certificate (PEM).
    #[arg(long, global = true, env = "FEDERATOR_CERT")]
    pub cert: Option<PathBuf>,
    /// Admin private key (PEM).
    #[arg(long, global = true, env = "FEDERATOR_KEY")]
    pub key: Option<PathBuf>,
}

/// An admin connection factory built from [`ConnectionArgs`].
#[derive(Clone)]
pub struct Connection {
    endpoints: Vec<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection").field("endpoints", &self.endpoints).finish_non_exhaustive()
    }
}

/// Time allowed to connect to one replica.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time allowed for one admin call (adding a replica waits for it to catch up).
const CALL_TIMEOUT: Duration = Duration::from_secs(150);

// === impl Connection ===

impl Connection {
    /// Checks the flags and loads the admin certificate if one is given.
    ///
    /// # Errors
    /// No endpoint, or unusable certificate files.
    pub fn new(args: &ConnectionArgs) -> anyhow::Result<Self> {
        let endpoints: Vec<String> =
            args.endpoints.iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
        if let Some(bad) = endpoints.iter().find(|e| {
            e.split_once("://").is_some_and(|(scheme, _)| scheme != "unix" && scheme != "https")
        }) {
            bail!(
                "endpoint {bad:?}: the API is gRPC over mTLS; write host:port (or \
                 https://host:port), or unix:///DATA_DIR/admin.sock for a replica's admin socket"
            );
        }
        if endpoints.is_empty() {
            bail!(
                "no federator endpoint: pass --endpoints (or set FEDERATOR_ENDPOINTS) to a replica's \
                 admin socket (unix:///DATA_DIR/admin.sock) or API address (host:port)"
            );
        }
        let tls = match (&args.ca, &args.cert, &args.key) {
            (Some(ca), Some(cert), Some(key)) => {
                let files = TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() };
                Some(files.load()?.client_config()?)
            }
            (None, None, None) => None,
            _ => bail!(
                "--ca, --cert and --key go together (FEDERATOR_CA, FEDERATOR_CERT, FEDERATOR_KEY)"
            ),
        };
        Ok(Self { endpoints, tls })
    }

    /// The configured endpoints.
    #[must_use]
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The client TLS configuration, when an admin certificate was given.
    #[must_use]
    pub fn tls_config(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.tls.clone()
    }

    /// Connects to one endpoint (`unix://` socket or `host:port` over mTLS).
    ///
    /// # Errors
    /// The endpoint is malformed or unreachable, or mTLS is needed and no certificate
    /// was given.
    pub async fn admin(&self, endpoint: &str) -> anyhow::Result<AdminClient<Channel>> {
        Ok(AdminClient::new(self.channel(endpoint).await?).max_decoding_message_size(64 << 20))
    }

    /// A gRPC channel to one endpoint, for any service the replica serves there (admin,
    /// health).
    ///
    /// # Errors
    /// As [`Connection::admin`].
    pub async fn channel(&self, endpoint: &str) -> anyhow::Result<Channel> {
        let channel = if let Some(path) = endpoint.strip_prefix("unix://") {
            let path = PathBuf::from(path);
            Endpoint::from_static("http://admin.socket")
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(CALL_TIMEOUT)
                .connect_with_connector(tower::service_fn(move |_| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .with_context(|| format!("cannot connect to admin socket {endpoint}"))?
        } else {
            let Some(tls) = self.tls.clone() else {
                bail!(
                    "endpoint {endpoint} needs an admin certificate: pass --ca, --cert and --key \
                     (or use the replica's unix:// admin socket)"
                );
            };
            let address = endpoint.trim_start_matches("https://");
            Endpoint::from_shared(format!("https://{address}"))
                .with_context(|| format!("endpoint {endpoint:?} is not host:port"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .timeout(CALL_TIMEOUT)
                .connect_with_connector(federator_raft::tls::connector(tls))
                .await
                .with_context(|| format!("cannot connect to {endpoint}"))?
        };
        Ok(channel)
    }

    /// A client of the first endpoint that accepts a connection, in the order given.
    ///
    /// # Errors
    /// No endpoint accepted; the error lists why for each.
    pub async fn any_admin(&self) -> anyhow::Result<AdminClient<Channel>> {
        let mut failures = Vec::new();
        for endpoint in &self.endpoints {
            match self.admin(endpoint).await {
                Ok(client) => return Ok(client),
                Err(error) => {
                    failures.push(format!("{endpoint}: {}", super::output::error_chain(&error)))
                }
            }
        }
        bail!("no replica accepted a connection:\n  {}", failures.join("\n  "))
    }

    /// Status of the first endpoint that answers, with the endpoint used.
    ///
    /// # Errors
    /// No endpoint answered; the error lists why for each.
    pub async fn first_status(&self) -> anyhow::Result<(String, ReplicaStatus)> {
        let mut failures = Vec::new();
        for endpoint in &self.endpoints {
            match self.status_of(endpoint).await {
                Ok(status) => return Ok((endpoint.clone(), status)),
                Err(error) => {
                    failures.push(format!("{endpoint}: {}", super::output::error_chain(&error)))
                }
            }
        }
        bail!("no replica answered:\n  {}", failures.join("\n  "))
    }

    /// Status of one endpoint.
    ///
    /// # Errors
    /// It did not answer.
    pub async fn status_of(&self, endpoint: &str) -> anyhow::Result<ReplicaStatus> {
        let mut client = self.admin(endpoint).await?;
        Ok(client.status(StatusRequest {}).await.map_err(status_error)?.into_inner())
    }

    /// A client of the current leader: asks the endpoints who leads and connects to the
    /// leader's registered API address (or an endpoint that is the leader). While an
    /// election is under way (no leader known, or a new one that has not registered its
    /// address yet) it asks again, for at most [`LEADER_WAIT`].
    ///
    /// # Errors
    /// No leader was known within [`LEADER_WAIT`], or it cannot be reached.
    pub async fn leader(&self) -> anyhow::Result<AdminClient<Channel>> {
        let deadline = tokio::time::Instant::now() + LEADER_WAIT;
        loop {
            match self.known_leader().await? {
                Ok(client) => return Ok(client),
                Err(election) if tokio::time::Instant::now() >= deadline => {
                    bail!("{election} (for {LEADER_WAIT:?})")
                }
                Err(_) => tokio::time::sleep(LEADER_POLL).await,
            }
        }
    }

    /// The leader's client, or why none is known yet (the outer error: no endpoint
    /// answers, or the leader cannot be reached).
    async fn known_leader(&self) -> anyhow::Result<Result<AdminClient<Channel>, NoLeaderYet>> {
        let (endpoint, status) = self.first_status().await?;
        if !status.has_leader {
            return Ok(Err(NoLeaderYet::Election { asked: status.id }));
        }
        if status.leader_id == status.id {
            return self.admin(&endpoint).await.map(Ok);
        }
        let leader_api = status
            .voters
            .iter()
            .chain(&status.learners)
            .find(|m| m.id == status.leader_id)
            .map(|m| m.api_addr.clone())
            .filter(|a| !a.is_empty());
        match leader_api {
            Some(addr) => self.admin(&addr).await.map(Ok),
            None => Ok(Err(NoLeaderYet::Unregistered { leader: status.leader_id })),
        }
    }
}

/// Why no leader can be asked yet (the caller asks again, for at most [`LEADER_WAIT`]).
#[derive(Debug, thiserror::Error)]
enum NoLeaderYet {
    /// The replica asked knows no leader.
    #[error("replica {asked} knows no leader (election in progress or no quorum)")]
    Election { asked: u64 },
    /// The leader has no API address in the membership yet.
    #[error("the leader, replica {leader}, has not registered its API address yet")]
    Unregistered { leader: u64 },
}

/// How long a call that needs the leader waits for an election to end: longer than the
/// slowest timing profile's election timeout, a few rounds over.
const LEADER_WAIT: Duration = Duration::from_secs(10);
/// How often it asks meanwhile.
const LEADER_POLL: Duration = Duration::from_millis(200);

/// Turns a gRPC status into an error whose text is the server's message, control
/// characters escaped: the message may quote what a client sent, and the error is
/// printed to a terminal.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", super::output::escape_control(status.message()), status.code())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_with_a_scheme_other_than_unix_or_https_is_refused_with_the_form() {
        let args = |endpoint: &str| ConnectionArgs {
            endpoints: vec![endpoint.to_string()],
            ca: None,
            cert: None,
            key: None,
        };
        let refused = Connection::new(&args("http://127.0.0.1:7101")).expect_err("refused");
        let text = refused.to_string();
        assert!(text.contains("write host:port"), "{text}");
        assert!(Connection::new(&args("unix:///var/lib/federator/admin.sock")).is_ok());
        assert!(Connection::new(&args("127.0.0.1:7101")).is_ok());
        assert!(Connection::new(&args("https://127.0.0.1:7101")).is_ok());
    }
}
