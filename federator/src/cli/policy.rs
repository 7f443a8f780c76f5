//! `federator cluster grant|revoke|locality` and `federator settings`: what the operator
//! allows each member, and the federation-wide switches.

use std::process::ExitCode;

use federator_proto::admin as pb;
use serde::Serialize;

use super::client::{Connection, ConnectionArgs, status_error};
use super::output::{self, OutputFormat, Table, print};

/// `federator settings`: show the federation-wide settings, or change them.
#[derive(Debug, clap::Args)]
pub struct SettingsArgs {
    /// Let any member export into any namespace (the Kubernetes MCS "namespace sameness"
    /// model). Off by default: a member exports only into namespaces granted to it
    /// (`federator cluster grant`).
    #[arg(long)]
    open_exports: Option<bool>,
    /// Accept endpoints at loopback addresses (127.0.0.0/8, ::1): only for federations
    /// that run on one machine (development, tests). Off by default.
    #[arg(long)]
    allow_loopback_endpoints: Option<bool>,
}

#[derive(Serialize)]
struct SettingsView {
    open_exports: bool,
    allow_loopback_endpoints: bool,
}

#[derive(Serialize)]
struct PolicyView {
    cluster: String,
    namespaces: Vec<String>,
    region: String,
    zone: String,
}

/// Runs `federator settings`.
pub async fn run_settings(
    args: SettingsArgs,
    conn: &ConnectionArgs,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let connection = Connection::new(conn)?;
    let settings = if args.open_exports.is_none() && args.allow_loopback_endpoints.is_none() {
        let mut client = connection.any_admin().await?;
        client.get_settings(pb::GetSettingsRequest::default()).await
    } else {
        let mut leader = connection.leader().await?;
        leader
            .update_settings(pb::UpdateSettingsRequest {
                open_exports: args.open_exports,
                allow_loopback_endpoints: args.allow_loopback_endpoints,
            })
            .await
    }
    .map_err(status_error)?
    .into_inner();
    let view = SettingsView {
        open_exports: settings.open_exports,
        allow_loopback_endpoints: settings.allow_loopback_endpoints,
    };
    print(out, &view, |v| {
        let mut t = Table::new(&["SETTING", "VALUE", "MEANING"]);
        t.add_row(vec![
            "open_exports".into(),
            v.open_exports.to_string(),
            if v.open_exports {
                "any member may export into any namespace".into()
            } else {
                "members export only into namespaces granted to them".to_string()
            },
        ]);
        t.add_row(vec![
            "allow_loopback_endpoints".into(),
            v.allow_loopback_endpoints.to_string(),
            if v.allow_loopback_endpoints {
                "loopback endpoint addresses are accepted (one-machine federations)".into()
            } else {
                "loopback endpoint addresses are refused".to_string()
            },
        ]);
        println!("{t}");
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Sends one policy change for `cluster` and prints the policy it leaves.
pub async fn run_update(
    connection: &Connection,
    request: pb::UpdateClusterPolicyRequest,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let mut leader = connection.leader().await?;
    let policy = leader.update_cluster_policy(request).await.map_err(status_error)?.into_inner();
    let view = PolicyView {
        cluster: policy.cluster,
        namespaces: policy.namespaces,
        region: policy.region,
        zone: policy.zone,
    };
    print(out, &view, |v| {
        output::print_line(format_args!(
            "cluster {}: namespaces [{}], locality {}",
            v.cluster,
            v.namespaces.join(", "),
            locality_cell(&v.region, &v.zone)
        ));
    })?;
    Ok(ExitCode::SUCCESS)
}

/// A locality as a table shows it: `region/zone`, `region`, or `-` when not bound.
#[must_use]
pub fn locality_cell(region: &str, zone: &str) -> String {
    match (region.is_empty(), zone.is_empty()) {
        (true, _) => "-".into(),
        (false, true) => region.to_string(),
        (false, false) => format!("{region}/{zone}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localities_read_as_region_slash_zone() {
        assert_eq!(locality_cell("", ""), "-");
        assert_eq!(locality_cell("eu-west", ""), "eu-west");
        assert_eq!(locality_cell("eu-west", "eu-west-1a"), "eu-west/eu-west-1a");
    }
}
