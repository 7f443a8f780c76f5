//! The plain-HTTP observability endpoint of replicas and agents (issue 28), against real
//! processes: `/metrics` passes Prometheus's own `promtool check metrics` (v3, built by
//! `deploy/local/setup-promtool.sh`), is OpenMetrics when asked for it, and carries the
//! `process_*` metrics; `/healthz` answers while the process serves; `/readyz` is 200 on
//! a replica with a leader and an agent with a session, and 503 with the reason once
//! quorum is lost; replicas carry per-member lease, CA-expiry and acknowledgement gauges.

use std::time::Duration;

use federator_chaos::agent::{AgentOptions, AgentProcess};
use federator_chaos::http::{self, Response};
use federator_chaos::member::MemberCluster;
use federator_chaos::promtool::check_metrics;
use federator_tests::{Federation, eventually};

const WAIT: Duration = Duration::from_secs(30);
/// Bound of one request.
const CALL: Duration = Duration::from_secs(5);

/// Every path of one endpoint, checked: metrics lint clean in the text format and come as
/// OpenMetrics on request; liveness; readiness as `ready` says.
async fn check_endpoint(what: &str, addr: &str) -> anyhow::Result<()> {
    let text = http::get(addr, "/metrics", CALL).await?;
    assert_eq!(text.status, 200, "{what}: {text:?}");
    assert!(text.content_type().starts_with("text/plain; version=0.0.4"), "{what}: {text:?}");
    check_metrics(&text.body).map_err(|e| e.context(format!("{what}'s /metrics")))?;
    for name in
        ["process_cpu_seconds_total ", "process_resident_memory_bytes ", "process_open_fds "]
    {
        assert!(text.body.contains(name), "{what}: {name} missing:\n{}", text.body);
    }
    let openmetrics = ("accept", "application/openmetrics-text;version=1.0.0,*/*;q=0.1");
    let open = http::get_with(addr, "/metrics", &[openmetrics], CALL).await?;
    assert!(open.content_type().starts_with("application/openmetrics-text"), "{what}: {open:?}");
    assert!(open.body.ends_with("# EOF\n"), "{what}: OpenMetrics ends with # EOF");
    let live = http::get(addr, "/healthz", CALL).await?;
    assert_eq!((live.status, live.body.as_str()), (200, "ok\n"), "{what}");
    let index = http::get(addr, "/", CALL).await?;
    assert!(index.status == 200 && index.body.contains("/readyz"), "{what}: {index:?}");
    Ok(())
}

async fn readiness(addr: &str) -> anyhow::Result<Response> {
    http::get(addr, "/readyz", CALL).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_lint_clean_and_health_and_readiness_answer_over_plain_http() -> anyhow::Result<()>
{
    let mut fed = Federation::formed(3, "").await?;
    let options = AgentOptions { metrics: true, ..AgentOptions::default() };
    let mut agent =
        AgentProcess::new(&fed, MemberCluster::new("cluster-a", "a.example")?, &options)?;
    agent.start()?;
    agent
        .wait_status("the agent joined", WAIT, |s| s.connected_replica.is_some())
        .await
        .map_err(|e| e.context(agent.log()))?;
    let agent_addr = agent.metrics_addr.clone().expect("the agent serves metrics");

    let replica_addr = fed.replica(1).metrics_addr.clone();
    eventually("replica 1 to be ready", WAIT, || async {
        readiness(&replica_addr).await.ok().filter(|a| a.status == 200)
    })
    .await?;
    eventually("the agent to be ready", WAIT, || async {
        readiness(&agent_addr).await.ok().filter(|a| a.status == 200)
    })
    .await?;
    check_endpoint("replica 1", &replica_addr).await?;
    check_endpoint("the agent", &agent_addr).await?;
    // Per-member gauges on the replicas: the lease, the CA's expiry, who has not applied
    // the member's newest bundle (no other member here).
    let member = "{cluster=\"cluster-a\",trust_domain=\"a.example\"}";
    let metrics = eventually("replica 1's member gauges", WAIT, || async {
        let text = http::get(&replica_addr, "/metrics", CALL).await.ok()?.body;
        text.contains(&format!("federator_member_lease_live{member} 1")).then_some(text)
    })
    .await?;
    assert!(
        metrics.contains(&format!("federator_member_ca_expiry_timestamp_seconds{member} ")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("federator_member_bundle_unacknowledged{member} 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains("\nfederator_replica_certificate_expiry_timestamp_seconds "),
        "the replica's own certificate expiry: {metrics}"
    );
    // Every metric the chart's alerts name is one a replica serves (an alert on a name
    // nobody exports never fires).
    let alerts = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/helm/federator/files/alerts.yaml"),
    )?;
    let named = alert_metric_names(&alerts);
    assert!(named.len() >= 4, "{named:?}");
    for name in &named {
        let served = metrics
            .lines()
            .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
        assert!(served, "the alerts name {name}: no replica serves it\n{metrics}");
    }

    // Quorum lost: replica 1 knows no leader and says so; it stays alive.
    fed.kill(2);
    fed.kill(3);
    let not_ready = eventually("replica 1 to report not ready", WAIT, || async {
        readiness(&replica_addr).await.ok().filter(|a| a.status == 503)
    })
    .await?;
    assert!(not_ready.body.starts_with("not ready: no leader known"), "{not_ready:?}");
    let live = http::get(&replica_addr, "/healthz", CALL).await?;
    assert_eq!(live.status, 200, "alive without quorum");
    agent.kill();
    Ok(())
}

/// The `federator_*` metric names in the `expr:` lines of an alerts file.
fn alert_metric_names(alerts: &str) -> std::collections::BTreeSet<String> {
    alerts
        .lines()
        .filter_map(|line| line.trim().strip_prefix("expr:"))
        .flat_map(|expr| {
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|word| word.starts_with("federator_"))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect()
}
