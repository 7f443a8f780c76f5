//! `federator service` and `import`: the services member clusters export, and what each
//! member imports from them.

use crate::clock::unix_now;
use std::process::ExitCode;

use federator_proto::admin as pb;
use federator_proto::federation as fpb;
use serde::Serialize;

use super::client::{Connection, ConnectionArgs, status_error};
use super::output::{self, Cell, OutputFormat, Table, Text, UnixTime, print};
use crate::service::{ExportError, Protocol, ServiceKey};

/// Inspect exported services.
#[derive(Debug, clap::Subcommand)]
pub enum ServiceCommand {
    /// Every service of the clusterset: who exports it, its merged ports, its ready
    /// endpoints and its conditions.
    List {
        /// Only the services this cluster exports.
        #[arg(long)]
        cluster: Option<String>,
        /// Serve from the replica's applied state without asking the leader.
        #[arg(long)]
        stale: bool,
    },
    /// One service: its merged ports and conditions, then every export of it, oldest
    /// first (the oldest export's port definition wins a conflict).
    Show {
        /// The service as NAMESPACE/NAME, e.g. `shop/cart`.
        #[arg(value_name = "NS/NAME", value_parser = parse_service_key)]
        service: ServiceKey,
        /// Serve from the replica's applied state without asking the leader.
        #[arg(long)]
        stale: bool,
    },
}

/// Inspect what member clusters import.
#[derive(Debug, clap::Subcommand)]
pub enum ImportCommand {
    /// The cluster's lease, then the services it imports as its agent receives them: the
    /// exporting clusters' endpoints merged, ordered by failover priority from the
    /// cluster's locality.
    List {
        /// The consuming cluster.
        #[arg(long)]
        cluster: String,
        /// Serve from the replica's applied state without asking the leader.
        #[arg(long)]
        stale: bool,
    },
}

/// Parses `NAMESPACE/NAME` on the command line; the error names the offending part.
fn parse_service_key(text: &str) -> Result<ServiceKey, ExportError> {
    ServiceKey::parse(text)
}

fn consistency(stale: bool) -> i32 {
    if stale { pb::Consistency::Stale } else { pb::Consistency::Linearizable }.into()
}

// === views (what `-o json|yaml` prints) ===

/// A port of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct PortView {
    name: String,
    port: u32,
    protocol: String,
    app_protocol: String,
}

impl From<fpb::ServicePort> for PortView {
    fn from(p: fpb::ServicePort) -> Self {
        // Normalised the way the federation stores it (empty means TCP).
        let protocol = Protocol::parse("protocol", &p.protocol)
            .map_or_else(|_| p.protocol.clone(), |p| p.to_string());
        Self { name: p.name, port: p.port, protocol, app_protocol: p.app_protocol }
    }
}

impl PortView {
    /// `http=80/TCP (http)`, as `kubectl` would show it.
    fn label(&self) -> String {
        let mut label = String::new();
        if !self.name.is_empty() {
            label.push_str(&self.name);
            label.push('=');
        }
        label.push_str(&format!("{}/{}", self.port, self.protocol));
        if !self.app_protocol.is_empty() {
            label.push_str(&format!(" ({})", self.app_protocol));
        }
        label
    }
}

/// A port an endpoint serves a named service port on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct EndpointPortView {
    name: String,
    port: u32,
}

impl From<fpb::EndpointPort> for EndpointPortView {
    fn from(p: fpb::EndpointPort) -> Self {
        Self { name: p.name, port: p.port }
    }
}

/// A condition of a service (`Conflict`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct ConditionView {
    #[serde(rename = "type")]
    kind: String,
    clusters: Vec<String>,
    message: String,
}

impl From<fpb::Condition> for ConditionView {
    fn from(c: fpb::Condition) -> Self {
        Self { kind: c.r#type, clusters: c.clusters, message: c.message }
    }
}

/// An endpoint as its cluster exports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct EndpointView {
    address: String,
    ports: Vec<EndpointPortView>,
    zone: String,
    region: String,
    weight: u32,
    ready: bool,
}

impl From<fpb::Endpoint> for EndpointView {
    fn from(e: fpb::Endpoint) -> Self {
        Self {
            address: e.address,
            ports: e.ports.into_iter().map(Into::into).collect(),
            zone: e.zone,
            region: e.region,
            weight: e.weight,
            ready: e.ready,
        }
    }
}

/// One cluster's export of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct ExportView {
    cluster: String,
    trust_domain: String,
    generation: u64,
    created_at: UnixTime,
    updated_at: UnixTime,
    ready_endpoints: u32,
    total_endpoints: usize,
    /// Whether the exporter's lease is live.
    live: bool,
    /// Whether this export's port definition lost to an older export.
    conflicting: bool,
    ports: Vec<PortView>,
    /// `ADDRESS:PORT` of the east-west gateway, when reached through one.
    gateway: Option<String>,
    /// Clusters that may import it; empty means every member.
    scope_clusters: Vec<String>,
    identities: Vec<String>,
    endpoints: Vec<EndpointView>,
}

impl From<pb::Export> for ExportView {
    fn from(e: pb::Export) -> Self {
        let export = e.export.unwrap_or_default();
        Self {
            cluster: e.cluster,
            trust_domain: e.trust_domain,
            generation: e.generation,
            created_at: UnixTime(e.created_at),
            updated_at: UnixTime(e.updated_at),
            ready_endpoints: e.ready_endpoints,
            total_endpoints: export.endpoints.len(),
            live: e.live,
            conflicting: e.conflicting,
            ports: export.ports.into_iter().map(Into::into).collect(),
            gateway: export.gateway.map(|g| host_port(&g.address, g.port)),
            scope_clusters: export.scope_clusters,
            identities: export.identities,
            endpoints: export.endpoints.into_iter().map(Into::into).collect(),
        }
    }
}

/// A service of the clusterset with every export of it, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct ServiceView {
    namespace: String,
    name: String,
    hostname: String,
    /// The merged ports (the oldest export wins a conflict).
    ports: Vec<PortView>,
    conditions: Vec<ConditionView>,
    revision: u64,
    exports: Vec<ExportView>,
}

impl From<pb::Service> for ServiceView {
    fn from(s: pb::Service) -> Self {
        Self {
            namespace: s.namespace,
            name: s.name,
            hostname: s.hostname,
            ports: s.ports.into_iter().map(Into::into).collect(),
            conditions: s.conditions.into_iter().map(Into::into).collect(),
            revision: s.revision,
            exports: s.exports.into_iter().map(Into::into).collect(),
        }
    }
}

/// A member's liveness lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct LeaseView {
    /// `live`, `expired`, `revoked` or `none`.
    state: String,
    id: u64,
    ttl_seconds: u32,
    granted_at: UnixTime,
    ended_at: UnixTime,
    /// When the leader last heard a keep-alive (as the leader's age of it, counted back
    /// from this client's clock); `null` when unknown.
    last_keepalive_at: UnixTime,
    /// That age in milliseconds, for tables.
    #[serde(skip)]
    last_keepalive_ms: Option<u64>,
    region: String,
    zone: String,
}

impl From<pb::LeaseInfo> for LeaseView {
    fn from(l: pb::LeaseInfo) -> Self {
        Self {
            state: l.state,
            id: l.id,
            ttl_seconds: l.ttl_seconds,
            granted_at: UnixTime(l.granted_at),
            ended_at: UnixTime(l.ended_at),
            last_keepalive_at: UnixTime(
                u64::try_from(l.last_keepalive_ms)
                    .map_or(0, |ms| unix_now() - i64::try_from(ms / 1000).unwrap_or(0)),
            ),
            last_keepalive_ms: u64::try_from(l.last_keepalive_ms).ok(),
            region: l.region,
            zone: l.zone,
        }
    }
}

impl LeaseView {
    /// `r1/z1`, `r1`, or `no locality`.
    fn locality(&self) -> String {
        match (self.region.is_empty(), self.zone.is_empty()) {
            (true, true) => "no locality".into(),
            (false, true) => format!("locality {}", self.region),
            (true, false) => format!("locality -/{}", self.zone),
            (false, false) => format!("locality {}/{}", self.region, self.zone),
        }
    }

    /// One line for `import list`: `lease 42 live, ttl 10s, last keep-alive 1.2s ago,
    /// locality r1/z1`.
    pub(super) fn line(&self, now: i64) -> String {
        match self.state.as_str() {
            "none" | "" => "no lease: the cluster's agent holds none, so its exports are not \
                            ready for anyone"
                .into(),
            "live" => format!(
                "lease {} live, ttl {}s, last keep-alive {}, {}",
                self.id,
                self.ttl_seconds,
                self.last_keepalive_ms.map_or_else(|| "unknown".into(), ms_ago),
                self.locality()
            ),
            state => format!(
                "lease {} {state} {}, ttl {}s, {}",
                self.id,
                ago(now, self.ended_at),
                self.ttl_seconds,
                self.locality()
            ),
        }
    }

    /// A table cell for `cluster list`: `live, 1.2s ago`, `expired 5m ago`, `none`.
    pub(super) fn cell(&self, now: i64) -> String {
        match self.state.as_str() {
            "" => "-".into(),
            "none" => "none".into(),
            "live" => match self.last_keepalive_ms {
                Some(ms) => format!("live, {}", ms_ago(ms)),
                None => "live".into(),
            },
            state => format!("{state} {}", ago(now, self.ended_at)),
        }
    }
}

/// An endpoint of an import, with its failover priority.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct ImportEndpointView {
    address: String,
    ports: Vec<EndpointPortView>,
    zone: String,
    region: String,
    weight: u32,
    /// The exporter reports it ready and its lease is live.
    ready: bool,
    /// 0 same zone, 1 same region, 2 elsewhere (from the consumer's locality).
    priority: u32,
}

impl From<fpb::ImportEndpoint> for ImportEndpointView {
    fn from(e: fpb::ImportEndpoint) -> Self {
        Self {
            address: e.address,
            ports: e.ports.into_iter().map(Into::into).collect(),
            zone: e.zone,
            region: e.region,
            weight: e.weight,
            ready: e.ready,
            priority: e.priority,
        }
    }
}

/// One exporting cluster of an import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct ImportedClusterView {
    cluster: String,
    trust_domain: String,
    live: bool,
    via_gateway: bool,
    /// The SPIFFE IDs this cluster's endpoints run as (accepted from them only).
    identities: Vec<String>,
    endpoints: Vec<ImportEndpointView>,
}

impl From<fpb::ImportedCluster> for ImportedClusterView {
    fn from(c: fpb::ImportedCluster) -> Self {
        Self {
            cluster: c.cluster,
            trust_domain: c.trust_domain,
            live: c.live,
            via_gateway: c.via_gateway,
            identities: c.identities,
            endpoints: c.endpoints.into_iter().map(Into::into).collect(),
        }
    }
}

/// A service as one member imports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct ImportView {
    namespace: String,
    name: String,
    hostname: String,
    ports: Vec<PortView>,
    identities: Vec<String>,
    /// Exporting clusters, nearest first.
    clusters: Vec<ImportedClusterView>,
    conditions: Vec<ConditionView>,
}

impl From<fpb::ServiceImport> for ImportView {
    fn from(i: fpb::ServiceImport) -> Self {
        Self {
            namespace: i.namespace,
            name: i.name,
            hostname: i.hostname,
            ports: i.ports.into_iter().map(Into::into).collect(),
            identities: i.identities,
            clusters: i.clusters.into_iter().map(Into::into).collect(),
            conditions: i.conditions.into_iter().map(Into::into).collect(),
        }
    }
}

/// Everything one member imports, with its lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub(super) struct ImportsView {
    cluster: String,
    revision: u64,
    lease: Option<LeaseView>,
    imports: Vec<ImportView>,
}

// === formatting ===

/// `ADDRESS:PORT`, with an IPv6 address in brackets.
fn host_port(address: &str, port: u32) -> String {
    if address.contains(':') { format!("[{address}]:{port}") } else { format!("{address}:{port}") }
}

/// `5s`, `3m10s`, `42m`, `2h5m`, `14h`, `3d`.
pub(super) fn human_secs(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs}s"),
        60..600 => format!("{}m{}s", secs / 60, secs % 60),
        600..3600 => format!("{}m", secs / 60),
        3600..36_000 => format!("{}h{}m", secs / 3600, secs % 3600 / 60),
        36_000..86_400 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// How long ago a Unix time (seconds) was: `5s ago`; `-` for 0 (never).
pub(super) fn ago(now: i64, at: impl Into<i64>) -> String {
    let at: i64 = at.into();
    if at <= 0 {
        return "-".into();
    }
    format!("{} ago", human_secs(u64::try_from(now.saturating_sub(at)).unwrap_or(0)))
}

/// How long ago, from milliseconds: `850ms ago`, `1.2s ago`, `3m10s ago`.
pub(super) fn ms_ago(ms: u64) -> String {
    match ms {
        0..1000 => format!("{ms}ms ago"),
        1000..60_000 => format!("{}.{}s ago", ms / 1000, ms % 1000 / 100),
        _ => format!("{} ago", human_secs(ms / 1000)),
    }
}

fn ports_label(ports: &[PortView]) -> String {
    if ports.is_empty() {
        return "-".into();
    }
    ports.iter().map(PortView::label).collect::<Vec<_>>().join(", ")
}

/// `Conflict: a, b` per condition, or `-`.
fn conditions_label(conditions: &[ConditionView]) -> String {
    if conditions.is_empty() {
        return "-".into();
    }
    conditions
        .iter()
        .map(|c| {
            if c.clusters.is_empty() {
                c.kind.clone()
            } else {
                format!("{}: {}", c.kind, c.clusters.join(", "))
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn list_or_dash(items: &[String], separator: &str) -> String {
    if items.is_empty() { "-".into() } else { items.join(separator) }
}

/// A `service list` row: SERVICE, HOSTNAME, EXPORTERS, PORTS, ENDPOINTS, CONDITIONS,
/// REVISION.
fn service_row(s: &ServiceView) -> Vec<String> {
    let exporters: Vec<String> = s.exports.iter().map(|e| e.cluster.clone()).collect();
    let ready: u64 = s.exports.iter().map(|e| u64::from(e.ready_endpoints)).sum();
    let total: usize = s.exports.iter().map(|e| e.total_endpoints).sum();
    vec![
        format!("{}/{}", s.namespace, s.name),
        s.hostname.clone(),
        list_or_dash(&exporters, ", "),
        ports_label(&s.ports),
        format!("{ready}/{total}"),
        conditions_label(&s.conditions),
        s.revision.to_string(),
    ]
}

fn services_table(services: &[ServiceView]) -> Table {
    let mut t = Table::new(&[
        "SERVICE",
        "HOSTNAME",
        "EXPORTERS",
        "PORTS",
        "ENDPOINTS",
        "CONDITIONS",
        "REVISION",
    ]);
    for s in services {
        t.add_row(service_row(s));
    }
    t
}

/// A `service show` row: CLUSTER, TRUST DOMAIN, GENERATION, ENDPOINTS, LEASE, MODE,
/// SCOPE, IDENTITIES (one a line), CONFLICTING, UPDATED.
fn export_row(e: &ExportView, now: i64) -> Vec<Cell> {
    vec![
        e.cluster.as_str().into(),
        e.trust_domain.as_str().into(),
        e.generation.to_string().into(),
        format!("{}/{}", e.ready_endpoints, e.total_endpoints).into(),
        if e.live { "live" } else { "expired" }.into(),
        e.gateway.as_ref().map_or_else(|| "direct".into(), |g| format!("gateway {g}")).into(),
        if e.scope_clusters.is_empty() { "all".into() } else { e.scope_clusters.join(", ") }.into(),
        if e.identities.is_empty() { "-".into() } else { Cell::lines(&e.identities) },
        if e.conflicting { "yes" } else { "no" }.into(),
        ago(now, e.updated_at).into(),
    ]
}

/// The header block of `service show`.
fn service_header(s: &ServiceView) -> String {
    let mut header = Text::new();
    header
        .line(format_args!("service:    {}/{}", s.namespace, s.name))
        .line(format_args!("hostname:   {}", s.hostname))
        .line(format_args!("ports:      {}", ports_label(&s.ports)))
        .line(format_args!("revision:   {}", s.revision));
    if s.conditions.is_empty() {
        header.line("conditions: none");
    } else {
        header.line("conditions:");
        for c in &s.conditions {
            let who = if c.clusters.is_empty() {
                String::new()
            } else {
                format!(" ({})", c.clusters.join(", "))
            };
            header.line(format_args!("  {}{who}: {}", c.kind, c.message));
        }
    }
    header.into()
}

fn exports_table(s: &ServiceView, now: i64) -> Table {
    let mut t = Table::new(&[
        "CLUSTER",
        "TRUST DOMAIN",
        "GENERATION",
        "ENDPOINTS",
        "LEASE",
        "MODE",
        "SCOPE",
        "IDENTITIES",
        "CONFLICTING",
        "UPDATED",
    ]);
    for e in &s.exports {
        t.add_row(export_row(e, now));
    }
    t
}

fn ready_total(endpoints: &[ImportEndpointView]) -> (usize, usize) {
    (endpoints.iter().filter(|e| e.ready).count(), endpoints.len())
}

/// `b (2/2 ready), c (via gateway, 0/1 ready, lease expired)`, nearest first.
fn clusters_summary(clusters: &[ImportedClusterView]) -> String {
    if clusters.is_empty() {
        return "-".into();
    }
    clusters
        .iter()
        .map(|c| {
            let (ready, total) = ready_total(&c.endpoints);
            let mut notes = Vec::new();
            if c.via_gateway {
                notes.push("via gateway".to_string());
            }
            notes.push(format!("{ready}/{total} ready"));
            if !c.live {
                notes.push("lease expired".into());
            }
            format!("{} ({})", c.cluster, notes.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many endpoints sit at each failover priority: `0:2 1:0 2:1` (0 same zone, 1 same
/// region, 2 elsewhere; every priority up to the highest present is listed).
fn priorities_summary(clusters: &[ImportedClusterView]) -> String {
    let mut counts: Vec<usize> = vec![0; 3];
    for e in clusters.iter().flat_map(|c| &c.endpoints) {
        let priority = usize::try_from(e.priority).unwrap_or(usize::MAX).min(1024);
        if counts.len() <= priority {
            counts.resize(priority + 1, 0);
        }
        counts[priority] += 1;
    }
    if counts.iter().all(|&n| n == 0) {
        return "-".into();
    }
    counts.iter().enumerate().map(|(p, n)| format!("{p}:{n}")).collect::<Vec<_>>().join(" ")
}

/// An `import list` row: SERVICE, HOSTNAME, PORTS, CLUSTERS, ENDPOINTS, PRIORITIES,
/// CONDITIONS.
fn import_row(i: &ImportView) -> Vec<String> {
    let (ready, total) = i
        .clusters
        .iter()
        .map(|c| ready_total(&c.endpoints))
        .fold((0, 0), |(r, t), (cr, ct)| (r + cr, t + ct));
    vec![
        format!("{}/{}", i.namespace, i.name),
        i.hostname.clone(),
        ports_label(&i.ports),
        clusters_summary(&i.clusters),
        format!("{ready}/{total}"),
        priorities_summary(&i.clusters),
        conditions_label(&i.conditions),
    ]
}

fn imports_table(imports: &[ImportView]) -> Table {
    let mut t = Table::new(&[
        "SERVICE",
        "HOSTNAME",
        "PORTS",
        "CLUSTERS",
        "ENDPOINTS",
        "PRIORITIES",
        "CONDITIONS",
    ]);
    for i in imports {
        t.add_row(import_row(i));
    }
    t
}

// === commands ===

/// Runs `federator service`.
pub async fn run_service(
    command: ServiceCommand,
    args: &ConnectionArgs,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let connection = Connection::new(args)?;
    let mut client = connection.any_admin().await?;
    match command {
        ServiceCommand::List { cluster, stale } => {
            let r = client
                .list_services(pb::ListServicesRequest {
                    cluster: cluster.clone().unwrap_or_default(),
                    consistency: consistency(stale),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let views: Vec<ServiceView> = r.services.into_iter().map(Into::into).collect();
            print(out, &views, |v| {
                if v.is_empty() {
                    match &cluster {
                        Some(cluster) => {
                            output::print_line(format_args!(
                                "cluster {cluster} exports no service"
                            ));
                        }
                        None => println!("no cluster exports a service"),
                    }
                } else {
                    println!("{}", services_table(v));
                }
            })?;
        }
        ServiceCommand::Show { service, stale } => {
            let r = client
                .get_service(pb::GetServiceRequest {
                    namespace: service.namespace,
                    name: service.name,
                    consistency: consistency(stale),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let view = ServiceView::from(r);
            print(out, &view, |v| {
                print!("{}", service_header(v));
                println!("{}", exports_table(v, unix_now()));
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `federator import`.
pub async fn run_import(
    command: ImportCommand,
    args: &ConnectionArgs,
    out: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let connection = Connection::new(args)?;
    let mut client = connection.any_admin().await?;
    let ImportCommand::List { cluster, stale } = command;
    let r = client
        .list_imports(pb::ListImportsRequest {
            cluster: cluster.clone(),
            consistency: consistency(stale),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let view = ImportsView {
        cluster,
        revision: r.revision,
        lease: r.lease.map(Into::into),
        imports: r.imports.into_iter().map(Into::into).collect(),
    };
    print(out, &view, |v| {
        match &v.lease {
            Some(lease) => output::print_line(lease.line(unix_now())),
            None => println!("lease unknown"),
        }
        if v.imports.is_empty() {
            output::print_line(format_args!("cluster {} imports no service", v.cluster));
        } else {
            println!("{}", imports_table(&v.imports));
        }
    })?;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000;

    fn port(name: &str, port: u32, protocol: &str) -> fpb::ServicePort {
        fpb::ServicePort {
            name: name.into(),
            port,
            protocol: protocol.into(),
            app_protocol: String::new(),
        }
    }

    fn endpoint(address: &str, ready: bool) -> fpb::Endpoint {
        fpb::Endpoint { address: address.into(), ready, ..Default::default() }
    }

    fn export(
        cluster: &str,
        ports: Vec<fpb::ServicePort>,
        endpoints: Vec<fpb::Endpoint>,
    ) -> pb::Export {
        let ready = u32::try_from(endpoints.iter().filter(|e| e.ready).count()).expect("small");
        pb::Export {
            cluster: cluster.into(),
            trust_domain: format!("{cluster}.example.org"),
            generation: 1,
            created_at: NOW - 600,
            updated_at: NOW - 5,
            export: Some(fpb::ServiceExport {
                namespace: "shop".into(),
                name: "cart".into(),
                ports,
                endpoints,
                identities: vec![format!("spiffe://{cluster}.example.org/ns/shop/sa/cart")],
                scope_clusters: vec![],
                gateway: None,
            }),
            ready_endpoints: ready,
            live: true,
            conflicting: false,
        }
    }

    /// `shop/cart` exported by a (oldest, 2 endpoints) and b (via gateway, scoped to c,
    /// lease expired, port conflict).
    fn conflicted_service() -> ServiceView {
        let a = export(
            "a",
            vec![port("http", 80, ""), port("grpc", 9090, "TCP")],
            vec![endpoint("127.0.10.1", true), endpoint("127.0.10.2", false)],
        );
        let mut b =
            export("b", vec![port("http", 8080, "TCP")], vec![endpoint("127.0.11.1", true)]);
        b.generation = 3;
        b.updated_at = NOW - 190;
        b.live = false;
        b.conflicting = true;
        if let Some(e) = b.export.as_mut() {
            e.gateway = Some(fpb::Gateway { address: "::1".into(), port: 15443 });
            e.scope_clusters = vec!["c".into()];
        }
        pb::Service {
            namespace: "shop".into(),
            name: "cart".into(),
            hostname: "cart.shop.svc.clusterset.local".into(),
            exports: vec![a, b],
            ports: vec![port("http", 80, "TCP"), port("grpc", 9090, "TCP")],
            conditions: vec![fpb::Condition {
                r#type: "Conflict".into(),
                clusters: vec!["b".into()],
                message: "conflicting port definitions: cluster b defines port http=8080/TCP, \
                          the oldest export (cluster a) defines http=80/TCP"
                    .into(),
            }],
            revision: 42,
        }
        .into()
    }

    fn import_endpoint(address: &str, ready: bool, priority: u32) -> fpb::ImportEndpoint {
        fpb::ImportEndpoint { address: address.into(), ready, priority, ..Default::default() }
    }

    fn cart_import() -> ImportView {
        fpb::ServiceImport {
            namespace: "shop".into(),
            name: "cart".into(),
            hostname: "cart.shop.svc.clusterset.local".into(),
            ports: vec![port("http", 80, "TCP")],
            identities: vec!["spiffe://b.example.org/ns/shop/sa/cart".into()],
            clusters: vec![
                fpb::ImportedCluster {
                    cluster: "b".into(),
                    trust_domain: "b.example.org".into(),
                    live: true,
                    via_gateway: false,
                    identities: Vec::new(),
                    endpoints: vec![
                        import_endpoint("127.0.11.1", true, 0),
                        import_endpoint("127.0.11.2", true, 0),
                    ],
                },
                fpb::ImportedCluster {
                    cluster: "c".into(),
                    trust_domain: "c.example.org".into(),
                    live: false,
                    via_gateway: true,
                    identities: Vec::new(),
                    endpoints: vec![import_endpoint("192.0.2.7", false, 2)],
                },
            ],
            conditions: vec![],
        }
        .into()
    }

    #[test]
    fn ports_are_labelled_like_kubectl() {
        let mut p = PortView::from(port("http", 80, ""));
        assert_eq!(p.label(), "http=80/TCP");
        p.app_protocol = "http".into();
        assert_eq!(p.label(), "http=80/TCP (http)");
        assert_eq!(PortView::from(port("", 53, "udp")).label(), "53/UDP");
        assert_eq!(ports_label(&[]), "-");
    }

    #[test]
    fn service_list_row_merges_exports() {
        let row = service_row(&conflicted_service());
        assert_eq!(
            row,
            [
                "shop/cart",
                "cart.shop.svc.clusterset.local",
                "a, b",
                "http=80/TCP, grpc=9090/TCP",
                "2/3",
                "Conflict: b",
                "42",
            ]
        );
        let mut quiet = conflicted_service();
        quiet.conditions.clear();
        quiet.exports.clear();
        let row = service_row(&quiet);
        assert_eq!((row[2].as_str(), row[4].as_str(), row[5].as_str()), ("-", "0/0", "-"));
    }

    #[test]
    fn service_show_rows_describe_each_export() {
        let s = conflicted_service();
        assert_eq!(
            export_row(&s.exports[0], NOW),
            [
                "a",
                "a.example.org",
                "1",
                "1/2",
                "live",
                "direct",
                "all",
                "spiffe://a.example.org/ns/shop/sa/cart",
                "no",
                "5s ago",
            ]
        );
        assert_eq!(
            export_row(&s.exports[1], NOW),
            [
                "b",
                "b.example.org",
                "3",
                "1/1",
                "expired",
                "gateway [::1]:15443",
                "c",
                "spiffe://b.example.org/ns/shop/sa/cart",
                "yes",
                "3m10s ago",
            ]
        );
        let header = service_header(&s);
        assert!(header.contains("hostname:   cart.shop.svc.clusterset.local\n"), "{header}");
        assert!(header.contains("ports:      http=80/TCP, grpc=9090/TCP\n"), "{header}");
        assert!(header.contains("  Conflict (b): conflicting port definitions: cluster b"));
        let rendered = format!("{header}{}", exports_table(&s, NOW));
        assert!(rendered.contains("CONFLICTING"), "{rendered}");
    }

    #[test]
    fn hostile_service_fields_are_escaped_in_header_and_tables() {
        let hostile = "\n\x1b]0;pwned\x07\x1b[1A";
        let mut s = conflicted_service();
        s.namespace = format!("shop{hostile}");
        s.conditions[0].message = hostile.into();
        s.exports[0].cluster = hostile.into();
        s.exports[0].identities = vec![hostile.into(), "spiffe://a.example.org/x".into()];
        let header = service_header(&s);
        assert_eq!(header.lines().count(), 6, "{header}");
        let exports = exports_table(&s, NOW).to_string();
        let services = services_table(std::slice::from_ref(&s)).to_string();
        for text in [&header, &exports, &services] {
            assert!(!text.contains(|c: char| c.is_control() && c != '\n'), "{text:?}");
            assert!(text.contains(r"\n\x1b]0;pwned\x07\x1b[1A"), "{text}");
        }
        // Two exports, the first with two identities one a line.
        assert_eq!(exports.lines().count(), 1 + 3, "{exports}");
        assert_eq!(services.lines().count(), 2, "{services}");
    }

    #[test]
    fn import_clusters_and_priorities_are_summarised() {
        let i = cart_import();
        assert_eq!(
            clusters_summary(&i.clusters),
            "b (2/2 ready), c (via gateway, 0/1 ready, lease expired)"
        );
        assert_eq!(priorities_summary(&i.clusters), "0:2 1:0 2:1");
        assert_eq!(priorities_summary(&[]), "-");
        assert_eq!(clusters_summary(&[]), "-");
        let row = import_row(&i);
        assert_eq!(row[4], "2/3");
        assert_eq!(row[6], "-");
        let rendered = imports_table(&[i]).to_string();
        assert!(rendered.contains("PRIORITIES"), "{rendered}");
    }

    #[test]
    fn priorities_list_every_level_up_to_the_highest() {
        let mut i = cart_import();
        i.clusters[0].endpoints = vec![ImportEndpointView::from(import_endpoint("a", true, 4))];
        i.clusters[1].endpoints.clear();
        assert_eq!(priorities_summary(&i.clusters), "0:0 1:0 2:0 3:0 4:1");
    }

    #[test]
    fn leases_read_as_a_sentence_and_a_cell() {
        let live = LeaseView::from(pb::LeaseInfo {
            state: "live".into(),
            id: 42,
            ttl_seconds: 10,
            granted_at: NOW - 100,
            ended_at: 0,
            last_keepalive_ms: 1234,
            region: "r1".into(),
            zone: "z1".into(),
        });
        assert_eq!(
            live.line(NOW),
            "lease 42 live, ttl 10s, last keep-alive 1.2s ago, locality r1/z1"
        );
        assert_eq!(live.cell(NOW), "live, 1.2s ago");

        let unknown = LeaseView { last_keepalive_ms: None, zone: String::new(), ..live.clone() };
        assert_eq!(
            LeaseView::from(pb::LeaseInfo { last_keepalive_ms: -1, ..Default::default() })
                .last_keepalive_ms,
            None
        );
        assert_eq!(
            unknown.line(NOW),
            "lease 42 live, ttl 10s, last keep-alive unknown, locality r1"
        );
        assert_eq!(unknown.cell(NOW), "live");

        let expired = LeaseView { state: "expired".into(), ended_at: UnixTime(NOW - 300), ..live };
        assert_eq!(expired.line(NOW), "lease 42 expired 5m0s ago, ttl 10s, locality r1/z1");
        assert_eq!(expired.cell(NOW), "expired 5m0s ago");

        let none = LeaseView::from(pb::LeaseInfo { state: "none".into(), ..Default::default() });
        assert_eq!(none.cell(NOW), "none");
        assert!(none.line(NOW).starts_with("no lease"));
    }

    #[test]
    fn ages_are_short() {
        assert_eq!(ago(NOW, NOW - 5), "5s ago");
        assert_eq!(ago(NOW, NOW - 190), "3m10s ago");
        assert_eq!(ago(NOW, NOW - 1800), "30m ago");
        assert_eq!(ago(NOW, NOW - 7500), "2h5m ago");
        assert_eq!(ago(NOW, NOW - 3 * 86_400), "3d ago");
        assert_eq!(ago(NOW, NOW + 10), "0s ago");
        assert_eq!(ago(NOW, 0), "-");
        assert_eq!(ms_ago(850), "850ms ago");
        assert_eq!(ms_ago(61_000), "1m1s ago");
    }

    #[test]
    fn service_names_parse_with_the_field_named() {
        assert_eq!(parse_service_key("shop/cart"), Ok(ServiceKey::new("shop", "cart")));
        let error = parse_service_key("cart").expect_err("no namespace").to_string();
        assert!(error.starts_with("service: "), "{error}");
        let error = parse_service_key("shop/Cart").expect_err("upper case").to_string();
        assert!(error.starts_with("name: "), "{error}");
    }

    #[test]
    fn views_serialize_with_proto_field_names() {
        let json = serde_json::to_value(conflicted_service()).expect("serializes");
        assert_eq!(json["conditions"][0]["type"], "Conflict");
        assert_eq!(json["exports"][1]["gateway"], "[::1]:15443");
        assert_eq!(json["exports"][0]["ports"][0]["protocol"], "TCP");
    }
}
