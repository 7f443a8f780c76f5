//! `agent status -o json|yaml`: the agent's status for scripts, in the conventions of
//! every other command's JSON: times as RFC 3339 UTC (millisecond precision) or `null`,
//! durations with their unit in the name.
//!
//! The agent's `status.json` keeps unix milliseconds (`written_at_ms`, …): it is the
//! agent's own file, read back by `agent status` and `check` of either version during an
//! upgrade, so its format stays as it is; this view is what the command prints.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::clock::rfc3339_ms;

use crate::agent::status::{
    AgentStatus, BundleSourceStatus, ExportSourceStatus, FailoverStatus, LeaseStatus,
    PropagationStatus, SinkStatus,
};

/// The status as `agent status -o json` prints it.
#[derive(Debug, Serialize)]
pub struct StatusJson<'a> {
    pid: u32,
    written_at: String,
    cluster: &'a str,
    trust_domain: &'a str,
    connected_replica: Option<&'a str>,
    connected_since: Option<String>,
    last_error: Option<&'a str>,
    connections: u64,
    failovers: u64,
    last_failover: Option<FailoverJson<'a>>,
    applied_revision: u64,
    received_revision: u64,
    lease: Option<LeaseJson>,
    sinks: &'a BTreeMap<String, SinkStatus>,
    bundle: &'a BundleSourceStatus,
    exports: &'a ExportSourceStatus,
    bundles: &'a BTreeMap<String, u64>,
    imports: usize,
    resyncs: u64,
    last_propagation: Option<PropagationJson<'a>>,
}

#[derive(Debug, Serialize)]
struct FailoverJson<'a> {
    from: &'a str,
    reason: &'a str,
    at: String,
    to: Option<&'a str>,
    connected_at: Option<String>,
}

#[derive(Debug, Serialize)]
struct LeaseJson {
    id: u64,
    ttl_seconds: u32,
    last_keepalive_at: Option<String>,
    failed_keepalives: u64,
}

#[derive(Debug, Serialize)]
struct PropagationJson<'a> {
    kind: &'a str,
    source_trust_domain: &'a str,
    duration_ms: i64,
    at: String,
}

impl<'a> From<&'a AgentStatus> for StatusJson<'a> {
    fn from(s: &'a AgentStatus) -> Self {
        let time = |ms: Option<i64>| ms.map(rfc3339_ms);
        Self {
            pid: s.pid,
            written_at: rfc3339_ms(s.written_at_ms),
            cluster: &s.cluster,
            trust_domain: &s.trust_domain,
            connected_replica: s.connected_replica.as_deref(),
            connected_since: time(s.connected_since_ms),
            last_error: s.last_error.as_deref(),
            connections: s.connections,
            failovers: s.failovers,
            last_failover: s.last_failover.as_ref().map(|f: &FailoverStatus| FailoverJson {
                from: &f.from,
                reason: &f.reason,
                at: rfc3339_ms(f.at_ms),
                to: f.to.as_deref(),
                connected_at: time(f.connected_at_ms),
            }),
            applied_revision: s.applied_revision,
            received_revision: s.received_revision,
            lease: s.lease.as_ref().map(|l: &LeaseStatus| LeaseJson {
                id: l.id,
                ttl_seconds: l.ttl_seconds,
                last_keepalive_at: time(l.last_keepalive_ms),
                failed_keepalives: l.failed_keepalives,
            }),
            sinks: &s.sinks,
            bundle: &s.bundle,
            exports: &s.exports,
            bundles: &s.bundles,
            imports: s.imports,
            resyncs: s.resyncs,
            last_propagation: s.last_propagation.as_ref().map(|p: &PropagationStatus| {
                PropagationJson {
                    kind: &p.kind,
                    source_trust_domain: &p.source_trust_domain,
                    duration_ms: p.millis,
                    at: rfc3339_ms(p.at_ms),
                }
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_and_absent_ones_null() {
        let status = AgentStatus {
            written_at_ms: 1_796_538_296_123,
            lease: Some(LeaseStatus { id: 7, ttl_seconds: 10, ..LeaseStatus::default() }),
            last_propagation: Some(PropagationStatus {
                kind: "bundle".into(),
                source_trust_domain: "b.example".into(),
                millis: 42,
                at_ms: 1_796_538_296_000,
            }),
            ..AgentStatus::default()
        };
        let json = serde_json::to_value(StatusJson::from(&status)).expect("json");
        assert_eq!(json["written_at"], "2026-12-06T06:24:56.123Z");
        assert_eq!(json["connected_since"], serde_json::Value::Null);
        assert_eq!(json["lease"]["last_keepalive_at"], serde_json::Value::Null);
        assert_eq!(json["last_propagation"]["duration_ms"], 42);
        assert_eq!(json["last_propagation"]["at"], "2026-12-06T06:24:56Z");
        // No field of the printed status is a bare millisecond time.
        let text = json.to_string();
        for old in ["written_at_ms", "connected_since_ms", "last_keepalive_ms", "at_ms"] {
            assert!(!text.contains(old), "{old} in {text}");
        }
    }
}
