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
        /// IP addresses the replicas are reached at (subject alternative names;
        /// comma-separated, or the option repeated).
        #[arg(long = "ip", default_value = "127.0.0.1", value_delimiter = ',')]
        ips: Vec<IpAddr>,
        /// DNS names the replicas are reached at (comma-separated, or the option repeated).
        #[arg(long = "dns", value_delimiter = ',')]
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
        #[arg(long = "ip", default_value = "127.0.0.1", value_delimiter = ',')]
        ips: Vec<IpAddr>,
        /// DNS names.
        #[arg(long = "dns", value_delimiter = ',')]
        dns: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
    },
    /// Set up a member cluster that has no SPIFFE issuer of its own (no SPIRE): its own CA
    /// and trust domain, its agent's SVID and an agent.toml that uses them, in DIR.
    ///
    /// Writes ca.pem and ca.key (the cluster's CA: keep the key offline once workloads'
    /// certificates are issued), bundle.pem (the bundle the agent publishes), agent.pem
    /// and agent.key (an X.509-SVID for spiffe://TD/federator-agent, signed by that CA),
    /// federation-ca.pem (a copy of --ca, the federation's CA, when given) and agent.toml.
    /// Then:
    ///
    ///   federator token create --cluster NAME --trust-domain TD > DIR/join-token
    ///   federator agent --config DIR/agent.toml
    ///
    /// With SPIRE, skip this: the agent takes its SVID and bundle from the SPIRE agent's
    /// Workload API (see the README, "Federator with SPIRE").
    Member {
        /// Directory to write into (created if missing).
        dir: PathBuf,
        /// The cluster's name in the federation (a DNS label).
        #[arg(long)]
        cluster: String,
        /// The cluster's own SPIFFE trust domain.
        #[arg(long)]
        trust_domain: String,
        /// Validity of the CA and the agent's SVID, in days.
        #[arg(long, default_value_t = 365)]
        days: u64,
        /// Replace a CA already in DIR.
        #[arg(long)]
        force: bool,
    },
}

/// The SPIFFE ID `certs member` gives a member's agent (any ID of its trust domain
/// works; this is the one the docs and `federator dev` use).
#[must_use]
pub fn member_agent_spiffe_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/federator-agent")
}

#[derive(Serialize)]
struct Written {
    spiffe_id: String,
    cert: PathBuf,
    key: PathBuf,
}

/// Runs a `certs` subcommand; `federation_ca` is the connection's `--ca`, if any.
pub fn run(
    command: CertsCommand,
    federation_ca: Option<&Path>,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let written = match command {
        CertsCommand::Member { dir, cluster, trust_domain, days, force } => {
            member(&dir, &cluster, &trust_domain, days, force, federation_ca)?
        }
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

/// `certs member`: the member's CA, bundle, agent SVID and agent.toml in `dir`.
fn member(
    dir: &Path,
    cluster: &str,
    trust_domain: &str,
    days: u64,
    force: bool,
    federation_ca: Option<&Path>,
) -> anyhow::Result<Vec<Written>> {
    validate_trust_domain(trust_domain)?;
    crate::token::validate_cluster_name(cluster).map_err(|e| anyhow::anyhow!("--cluster: {e}"))?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    if dir.join("ca.key").exists() && !force {
        bail!("{} already holds a CA (ca.key); pass --force to replace it", dir.display());
    }
    let validity = days_to_duration(days);
    let ca = FederationCa::generate(trust_domain, &format!("{cluster} CA"), validity)?;
    write_private(&dir.join("ca.key"), &ca.key_pem())?;
    std::fs::write(dir.join("ca.pem"), ca.cert_pem())?;
    std::fs::write(dir.join("bundle.pem"), ca.cert_pem())?;
    let agent_id = member_agent_spiffe_id(trust_domain);
    let issued = ca.issue(&agent_id, &[], &[], validity)?;
    let agent = save(dir, "agent", &agent_id, &issued)?;
    let federation_ca_path = dir.join("federation-ca.pem");
    if let Some(source) = federation_ca {
        std::fs::copy(source, &federation_ca_path)
            .with_context(|| format!("copy the federation's CA {}", source.display()))?;
    }
    let d = dir.display();
    let config = format!(
        "# Written by `federator certs member`: the agent of {cluster} ({trust_domain}).\n\
         # Join token (single use): federator token create --cluster {cluster} \
         --trust-domain {trust_domain} > {d}/join-token\n\
         state_dir = \"{d}/state\"\n\
         token_file = \"{d}/join-token\"\n\
         # The federation's CA, which the replicas' certificates chain to.\n\
         federation_ca = \"{ca}\"\n\n\
         [svid]\ncert = \"{d}/agent.pem\"\nkey = \"{d}/agent.key\"\n\n\
         [bundle]\nkind = \"file\"\npath = \"{d}/bundle.pem\"\nformat = \"pem\"\n\n\
         [sinks.files]\ndir = \"{d}/out\"\n",
        ca = federation_ca_path.display(),
    );
    let config_path = dir.join("agent.toml");
    std::fs::write(&config_path, config)
        .with_context(|| format!("write {}", config_path.display()))?;
    if federation_ca.is_none() {
        super::output::eprint_line(format_args!(
            "no --ca (FEDERATOR_CA) given: put the federation's CA at {} before starting the agent",
            federation_ca_path.display()
        ));
    }
    super::output::eprint_line(format_args!(
        "next: federator token create --cluster {cluster} --trust-domain {trust_domain} > {d}/join-token\n      federator agent --config {}",
        config_path.display()
    ));
    Ok(vec![
        Written {
            spiffe_id: format!("spiffe://{trust_domain}"),
            cert: dir.join("ca.pem"),
            key: dir.join("ca.key"),
        },
        agent,
    ])
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
