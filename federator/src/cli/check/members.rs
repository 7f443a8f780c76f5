//! `federator check`, members and bundles: lease freshness, and the propagation of each
//! member's newest bundle sequence, and its CAs' expiry.

use federator_proto::admin as pb;

use super::certs::{check_expiry, human_duration};
use super::{CheckArgs, Checks};
use crate::bundle::{ValidationPolicy, parse_spiffe_bundle};
use crate::cli::client::status_error;

/// Each member's lease: live and kept alive.
pub(super) fn check_members(clusters: &[pb::Cluster], now: i64, checks: &mut Checks) {
    if clusters.is_empty() {
        checks.warn(
            "members",
            "no member cluster has joined".into(),
            "create a join token (`federator token create CLUSTER --trust-domain TD`) and start that cluster's agent",
        );
        return;
    }
    for cluster in clusters {
        let name = &cluster.name;
        match &cluster.lease {
            Some(lease) if lease.state == "live" => {
                let heard = u64::try_from(lease.last_keepalive_ms)
                    .map_or_else(|_| "unknown".into(), crate::cli::services::ms_ago);
                checks.pass(
                    "members",
                    format!("{name}: lease {} live (ttl {}s), last keep-alive {heard}", lease.id, lease.ttl_seconds),
                );
            }
            Some(lease) => checks.fail(
                "members",
                format!(
                    "{name}: lease {} {}{}; its endpoints are not ready anywhere",
                    lease.id,
                    lease.state,
                    if lease.ended_at > 0 {
                        format!(" {} ago", human_duration(now - lease.ended_at))
                    } else {
                        String::new()
                    }
                ),
                "the cluster's agent is down or cannot reach any replica: `federator agent status --state-dir ...` on that cluster",
            ),
            None => checks.warn(
                "members",
                format!("{name}: no lease (its agent never took one)"),
                "start the cluster's agent; until it holds a lease its exports are not ready",
            ),
        }
    }
}

/// One member's newest bundle: how far it has propagated to the members, and when its CAs
/// expire.
pub(super) async fn check_bundle(
    args: &CheckArgs,
    admin: &mut federator_proto::admin::admin_client::AdminClient<tonic::transport::Channel>,
    cluster: &pb::Cluster,
    members: usize,
    now: i64,
    checks: &mut Checks,
) {
    let td = &cluster.trust_domain;
    let request = pb::BundleStatusRequest { trust_domain: td.clone(), ..Default::default() };
    match admin.bundle_status(request).await {
        Ok(status) => {
            let status = status.into_inner();
            let behind: Vec<String> = status
                .members
                .iter()
                .filter(|m| m.applied_sequence < status.sequence)
                .map(|m| m.cluster.clone())
                .collect();
            let applied = status.members.len() - behind.len();
            let age = now - status.updated_at;
            if status.complete || members <= 1 {
                checks.pass(
                    "bundles",
                    format!("{td}: sequence {} applied by every member", status.sequence),
                );
            } else {
                let detail = format!(
                    "{td}: sequence {} applied by {applied}/{} members for {} (waiting: {})",
                    status.sequence,
                    status.members.len(),
                    human_duration(age),
                    behind.join(", ")
                );
                let hint = "do not sign with the new key yet; check those clusters' agents (sinks, acks) with `federator agent status`";
                if age > i64::try_from(args.propagation_timeout).unwrap_or(i64::MAX) {
                    checks.fail("bundles", detail, hint);
                } else {
                    checks.warn("bundles", detail, hint);
                }
            }
        }
        Err(status) => checks.fail(
            "bundles",
            format!("{td}: cannot read its propagation: {}", status_error(status)),
            "check the leader's log",
        ),
    }
    // The member's CAs: a federated CA that expires breaks every cross-cluster call.
    let request = pb::GetBundleRequest { trust_domain: td.clone(), ..Default::default() };
    let Ok(bundle) = admin.get_bundle(request).await else { return };
    let bundle = bundle.into_inner();
    // Validated as of when the federation accepted it: a CA that expired since must still
    // parse, to be reported.
    let policy = ValidationPolicy::at(bundle.updated_at);
    let Ok(parsed) = parse_spiffe_bundle(td, bundle.document.as_bytes(), &policy) else {
        return;
    };
    if let Some(not_after) = parsed.x509_authorities.iter().map(|a| a.not_after).max() {
        check_expiry(
            args,
            &format!("{td} CA (newest of {})", parsed.x509_authorities.len()),
            not_after,
            now,
            "the member must rotate its CA: add the new CA to its bundle, wait for every member to apply it, then sign with it",
            checks,
        );
    }
}
