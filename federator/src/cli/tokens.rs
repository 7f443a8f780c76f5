//! `federator token`: create, list and revoke join tokens.

use std::process::ExitCode;

use federator_proto::admin as pb;
use serde::Serialize;

use super::client::{Connection, ConnectionArgs, status_error};
use super::output::{self, OutputFormat, Table, UnixTime, print};
use super::services::ago;
use crate::clock::unix_now;

/// Create, list and revoke join tokens.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a single-use join token. It carries the replicas' addresses and the
    /// federation's CA, so the agent needs nothing else; it is stored only as a hash.
    Create {
        /// Cluster name (DNS label, unique in the federation).
        #[arg(long)]
        cluster: String,
        /// The cluster's SPIFFE trust domain; bound to the cluster at join.
        #[arg(long)]
        trust_domain: String,
        /// Validity, e.g. 30m, 1h, 2d (at most 30d).
        #[arg(long, default_value = "1h", value_parser = super::trust::parse_duration_secs)]
        ttl: u64,
        /// A namespace the cluster may export into (repeat for more; more later with
        /// `federator cluster grant`). Without any, the cluster exports nothing unless the
        /// federation runs with open exports (`federator settings`).
        #[arg(long = "namespace", value_name = "NAMESPACE")]
        namespaces: Vec<String>,
        /// The cluster's region: importers order failover by it, and its endpoints may
        /// claim no other.
        #[arg(long)]
        region: Option<String>,
        /// The cluster's zone within --region (leave it out when the cluster spans zones:
        /// its endpoints then name their own zone within the region).
        #[arg(long, requires = "region")]
        zone: Option<String>,
    },
    /// Every join token the federation holds: outstanding (a join with it would be
    /// accepted), used (by which agent) or expired (kept a day, then forgotten). Never the
    /// secret: a token is named by the first 12 hex digits of its secret's hash.
    List,
    /// Revoke a token that was not used, so that no cluster can join with it: by its id
    /// (from `token list`; 8 digits suffice when unique) or every outstanding token of a
    /// cluster. A used token cannot be revoked: remove the member instead
    /// (`federator cluster remove`). Refused until every replica runs a version that
    /// knows revocation (`federator status` shows each one's command version).
    ///
    ///   federator token revoke 3f9c2a71
    ///   federator token revoke --cluster cluster-c
    #[command(verbatim_doc_comment)]
    Revoke {
        /// The token's id.
        #[arg(required_unless_present = "cluster", conflicts_with = "cluster")]
        id: Option<String>,
        /// Revoke every outstanding token of this cluster instead.
        #[arg(long)]
        cluster: Option<String>,
    },
}

#[derive(Serialize)]
struct TokenView {
    id: String,
    token: String,
    cluster: String,
    trust_domain: String,
    expires_at: UnixTime,
    endpoints: Vec<String>,
}

/// Runs `federator token`.
pub async fn run_token(
    command: TokenCommand,
    args: &ConnectionArgs,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let connection = Connection::new(args)?;
    let (cluster, trust_domain, ttl, namespaces, region, zone) = match command {
        TokenCommand::Create { cluster, trust_domain, ttl, namespaces, region, zone } => {
            (cluster, trust_domain, ttl, namespaces, region, zone)
        }
        TokenCommand::List => return list(&connection, out).await,
        TokenCommand::Revoke { id, cluster } => return revoke(&connection, id, cluster, out).await,
    };
    let mut leader = connection.leader().await?;
    let r = leader
        .create_token(pb::CreateTokenRequest {
            cluster: cluster.clone(),
            trust_domain: trust_domain.clone(),
            ttl_seconds: ttl,
            namespaces,
            region: region.unwrap_or_default(),
            zone: zone.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let id = crate::token::JoinToken::decode(&r.token)
        .map(|t| crate::state::short_hash(&t.secret_hash()))
        .unwrap_or_default();
    let view = TokenView {
        id,
        token: r.token,
        cluster,
        trust_domain,
        expires_at: UnixTime(r.expires_at),
        endpoints: r.endpoints,
    };
    print(out, &view, |v| {
        output::print_line(&v.token);
        output::eprint_line(format_args!(
            "single-use token {} for cluster {} ({}), valid until {}; give it to that \
             cluster's agent (`federator token revoke {}` takes it back)",
            v.id,
            v.cluster,
            v.trust_domain,
            crate::clock::rfc3339(v.expires_at.secs()),
            v.id
        ));
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A token as `token list` and `token revoke` show it.
#[derive(Serialize)]
struct TokenInfoView {
    id: String,
    cluster: String,
    trust_domain: String,
    /// outstanding, used or expired.
    state: &'static str,
    created_at: UnixTime,
    expires_at: UnixTime,
    /// 0 unless used.
    used_at: UnixTime,
    /// The agent that joined with it, while that member remains.
    used_by: String,
}

impl From<pb::TokenInfo> for TokenInfoView {
    fn from(t: pb::TokenInfo) -> Self {
        let state = match t.state() {
            pb::TokenState::Outstanding => "outstanding",
            pb::TokenState::Used => "used",
            pb::TokenState::Expired => "expired",
            pb::TokenState::Unspecified => "unknown",
        };
        Self {
            id: t.id,
            cluster: t.cluster,
            trust_domain: t.trust_domain,
            state,
            created_at: UnixTime(t.created_at),
            expires_at: UnixTime(t.expires_at),
            used_at: UnixTime(t.used_at),
            used_by: t.used_by,
        }
    }
}

fn token_table(tokens: &[TokenInfoView]) -> Table {
    let mut t =
        Table::new(&["ID", "CLUSTER", "TRUST DOMAIN", "STATE", "CREATED", "EXPIRES", "USED BY"]);
    let now = unix_now();
    for token in tokens {
        let expires = if token.expires_at.secs() > now {
            format!(
                "in {}",
                super::services::human_secs(
                    u64::try_from(token.expires_at.secs() - now).unwrap_or(0)
                )
            )
        } else {
            ago(now, token.expires_at)
        };
        let used_by = match (token.used_at.secs(), token.used_by.as_str()) {
            (0, _) => "-".to_string(),
            (at, "") => format!("{} (member since removed or rejoined)", ago(now, at)),
            (at, agent) => format!("{agent}, {}", ago(now, at)),
        };
        t.add_row(vec![
            token.id.clone(),
            token.cluster.clone(),
            token.trust_domain.clone(),
            token.state.to_string(),
            ago(now, token.created_at),
            expires,
            used_by,
        ]);
    }
    t
}

async fn list(connection: &Connection, out: OutputFormat) -> anyhow::Result<ExitCode> {
    let mut client = connection.any_admin().await?;
    let r = client
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .map_err(status_error)?
        .into_inner();
    let views: Vec<TokenInfoView> = r.tokens.into_iter().map(Into::into).collect();
    print(out, &views, |v| {
        if v.is_empty() {
            output::eprint_line("no join tokens (`federator token create` makes one)");
        } else {
            println!("{}", token_table(v));
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn revoke(
    connection: &Connection,
    id: Option<String>,
    cluster: Option<String>,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let mut leader = connection.leader().await?;
    let r = leader
        .revoke_token(pb::RevokeTokenRequest {
            id: id.unwrap_or_default(),
            cluster: cluster.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let views: Vec<TokenInfoView> = r.revoked.into_iter().map(Into::into).collect();
    print(out, &views, |v| {
        for token in v {
            output::print_line(format_args!(
                "revoked token {} of cluster {} ({}): a join with it is refused",
                token.id, token.cluster, token.trust_domain
            ));
        }
    })?;
    Ok(ExitCode::SUCCESS)
}
