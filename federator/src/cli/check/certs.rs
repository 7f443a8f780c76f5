//! `federator check`, certificates: the operator's CA and certificate files, every
//! replica's serving certificate, and how long each has left.

use std::time::Duration;

use super::{CheckArgs, Checks};
use crate::cli::client::{Connection, ConnectionArgs};
use crate::cli::status::GroupView;

/// Checks one certificate's expiry.
pub(super) fn check_expiry(
    args: &CheckArgs,
    what: &str,
    not_after: i64,
    now: i64,
    hint: &str,
    checks: &mut Checks,
) {
    let left = not_after - now;
    let days = left / 86_400;
    if left <= 0 {
        checks.fail("certificates", format!("{what} expired {} days ago", -days), hint);
    } else if u64::try_from(days).unwrap_or(0) < args.expiry_warning_days {
        checks.warn("certificates", format!("{what} expires in {}", human_duration(left)), hint);
    } else {
        checks.pass("certificates", format!("{what} valid for {days} more days"));
    }
}

/// `secs` in the largest whole unit, for people.
pub(super) fn human_duration(secs: i64) -> String {
    match secs {
        s if s >= 2 * 86_400 => format!("{} days", s / 86_400),
        s if s >= 3600 => format!("{} hours", s / 3600),
        s => format!("{} minutes", s.max(0) / 60),
    }
}

/// Expiry (unix seconds) of the first certificate of a PEM file.
fn pem_file_not_after(path: &std::path::Path) -> anyhow::Result<i64> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let text = std::fs::read(path)?;
    let der = CertificateDer::pem_slice_iter(&text)
        .next()
        .ok_or_else(|| anyhow::anyhow!("no CERTIFICATE block"))??;
    der_not_after(&der)
}

fn der_not_after(der: &[u8]) -> anyhow::Result<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    Ok(cert.validity().not_after.timestamp())
}

/// The operator's CA and certificate files.
pub(super) fn check_cert_files(
    args: &CheckArgs,
    connection_args: &ConnectionArgs,
    now: i64,
    checks: &mut Checks,
) {
    let files = [
        (
            &connection_args.ca,
            "federation CA",
            "renew the CA (`federator certs`) and roll it to every replica and agent before it expires",
        ),
        (
            &connection_args.cert,
            "admin certificate",
            "issue a new admin certificate with `federator certs`",
        ),
    ];
    for (path, what, hint) in files {
        let Some(path) = path else { continue };
        let what = format!("{what} ({})", path.display());
        match pem_file_not_after(path) {
            Ok(not_after) => check_expiry(args, &what, not_after, now, hint, checks),
            Err(error) => checks.fail("certificates", format!("{what}: {error:#}"), hint),
        }
    }
}

/// Every reachable replica's serving certificate, from a TLS handshake with it.
pub(super) async fn check_replica_certs(
    args: &CheckArgs,
    connection: &Connection,
    view: &GroupView,
    now: i64,
    checks: &mut Checks,
) {
    let Some(tls) = connection.tls_config() else { return };
    let connector = federator_raft::tls::connector(tls);
    for replica in view.replicas.iter().filter(|r| r.reachable && !r.api_addr.is_empty()) {
        let what = format!("replica {} certificate", replica.id);
        let hint = "issue a new replica certificate (`federator certs`); replicas reload it without a restart";
        let result = async {
            let uri: http::Uri = format!("https://{}", replica.api_addr).parse()?;
            let stream =
                tokio::time::timeout(Duration::from_secs(3), connector.connect(&uri)).await??;
            let leaf = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .ok_or_else(|| anyhow::anyhow!("no certificate presented"))?;
            der_not_after(leaf)
        }
        .await;
        match result {
            Ok(not_after) => check_expiry(args, &what, not_after, now, hint, checks),
            Err(error) => checks.warn("certificates", format!("{what}: {error:#}"), hint),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Outcome;
    use super::*;

    #[test]
    fn expiry_is_pass_warn_or_fail() {
        let mut checks = Checks::default();
        let now = 1_000_000_000;
        check_expiry(
            &CheckArgs::gathering(&[]),
            "ca",
            now + 90 * 86_400,
            now,
            "renew",
            &mut checks,
        );
        check_expiry(&CheckArgs::gathering(&[]), "ca", now + 5 * 86_400, now, "renew", &mut checks);
        check_expiry(&CheckArgs::gathering(&[]), "ca", now - 86_400, now, "renew", &mut checks);
        let outcomes: Vec<Outcome> = checks.0.iter().map(|c| c.outcome).collect();
        assert_eq!(outcomes, [Outcome::Pass, Outcome::Warn, Outcome::Fail]);
        assert!(checks.0[1].detail.contains("5 days"), "{:?}", checks.0[1]);
        assert_eq!(checks.0[2].hint.as_deref(), Some("renew"));
    }
}
