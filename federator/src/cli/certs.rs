//! `federator certs`: the federation's CA and certificates for local use and tests.
//! Production deployments bring their own files (or cert-manager).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;

use super::output::{OutputFormat, Table, print};
use crate::identity::{
    FederationCa, IssuedCertificate, admin_spiffe_id, replica_spiffe_id, validate_trust_domain,
};

/// Create the federation's CA and certificates.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a CA, replica certificates 1..=N and an admin certificate in DIR.
    Init {
        /// Directory to write into (created if missing).
        dir: PathBuf,
        /// The federation's SPIFFE trust domain.
        #[arg(long, default_value = "federation.local")]
        trust_domain: String,
        /// How many replica certificates to issue.
        #[arg(long, default_value_t = 3)]
        replicas: u64,
        /// IP addresses the replicas are reached at (subject alternative names).
        #[arg(long = "ip", default_value = "127.0.0.1")]
        ips: Vec<IpAddr>,
        /// DNS names the replicas are reached at.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Validity of the certificates, in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Replace an existing CA in DIR.
        #[arg(long)]
        force: bool,
    },
    /// Issue one more certificate with the CA in DIR.
    Issue {
        /// Directory holding ca.pem and ca.key.
        dir: PathBuf,
        /// Issue for this replica id (replica-ID.pem/.key).
        #[arg(long, conflicts_with = "admin", required_unless_present = "admin")]
        replica: Option<u64>,
        /// Issue an admin certificate (admin.pem/.key).
        #[arg(long)]
        admin: bool,
        /// The federation's SPIFFE trust domain.
        #[arg(long, default_value = "federation.local")]
        trust_domain: String,
        /// IP addresses (subject alternative names).
        #[arg(long = "ip", default_value = "127.0.0.1")]
        ips: Vec<IpAddr>,
        /// DNS names.
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
}

#[derive(Serialize)]
struct Written {
    spiffe_id: String,
    cert: PathBuf,
    key: PathBuf,
}

/// Runs a `certs` subcommand.
pub fn run(command: CertsCommand, out: OutputFormat) -> anyhow::Result<ExitCode> {
    let written = match command {
        CertsCommand::Init { dir, trust_domain, replicas, ips, dns, days, force } => {
            validate_trust_domain(&trust_domain)?;
            if replicas == 0 {
                bail!("--replicas must be at least 1");
            }
            std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
            if dir.join("ca.key").exists() && !force {
                bail!("{} already holds a CA (ca.key); pass --force to replace it", dir.display());
            }
            let validity = days_to_duration(days);
            let ca = FederationCa::generate(
                &trust_domain,
                &format!("Federator CA {trust_domain}"),
                validity,
            )?;
            write_private(&dir.join("ca.key"), &ca.key_pem())?;
            std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
            let mut written = vec![Written {
                spiffe_id: format!("spiffe://{trust_domain}"),
                cert: dir.join("ca.pem"),
                key: dir.join("ca.key"),
            }];
            for id in 1..=replicas {
                let spiffe_id = replica_spiffe_id(&trust_domain, id);
                let issued = ca.issue(&spiffe_id, &ips, &dns, validity)?;
                written.push(save(&dir, &format!("replica-{id}"), &spiffe_id, &issued)?);
            }
            let spiffe_id = admin_spiffe_id(&trust_domain);
            let issued = ca.issue(&spiffe_id, &[], &[], validity)?;
            written.push(save(&dir, "admin", &spiffe_id, &issued)?);
            written
        }
        CertsCommand::Issue { dir, replica, admin, trust_domain, ips, dns, days } => {
            validate_trust_domain(&trust_domain)?;
            let ca = FederationCa::from_pem(
                &std::fs::read_to_string(dir.join("ca.pem"))
                    .with_context(|| format!("read {}/ca.pem", dir.display()))?,
                &std::fs::read_to_string(dir.join("ca.key"))
                    .with_context(|| format!("read {}/ca.key", dir.display()))?,
            )?;
            let (name, spiffe_id, ips) = match (replica, admin) {
                (Some(id), false) if id > 0 => {
                    (format!("replica-{id}"), replica_spiffe_id(&trust_domain, id), ips)
                }
                (Some(_), false) => bail!("--replica must be a positive id"),
                _ => ("admin".to_string(), admin_spiffe_id(&trust_domain), Vec::new()),
            };
            let issued = ca.issue(&spiffe_id, &ips, &dns, days_to_duration(days))?;
            vec![save(&dir, &name, &spiffe_id, &issued)?]
        }
    };
    print(out, &written, |w| {
        let mut t = Table::new(&["SPIFFE ID", "CERTIFICATE", "KEY"]);
        for item in w {
            t.add_row(vec![
                item.spiffe_id.clone(),
                item.cert.display().to_string(),
                item.key.display().to_string(),
            ]);
        }
        println!("{t}");
    })?;
    Ok(ExitCode::SUCCESS)
}

fn days_to_duration(days: u64) -> Duration {
    Duration::from_secs(days.saturating_mul(86_400))
}

fn save(
    dir: &Path,
    name: &str,
    spiffe_id: &str,
    issued: &IssuedCertificate,
) -> anyhow::Result<Written> {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    std::fs::write(&cert, &issued.cert_pem).with_context(|| format!("write {}", cert.display()))?;
    write_private(&key, &issued.key_pem)?;
    Ok(Written { spiffe_id: spiffe_id.to_string(), cert, key })
}

/// Writes a private key readable by the owner only.
pub(super) fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("write {}", path.display()))?;
    file.write_all(contents.as_bytes()).with_context(|| format!("write {}", path.display()))?;
    Ok(())
}
