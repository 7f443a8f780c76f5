//! gRPC health (`grpc.health.v1`): SERVING only while the replica knows a leader and has
//! applied to within a bound of the leader's read index.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use federator_proto::admin::admin_server::AdminServer;
use tonic_health::server::HealthReporter;

use super::{AdminService, FederationReplica};

/// How often health is re-evaluated.
const PERIOD: Duration = Duration::from_millis(500);

/// Whether the replica serves, for `/readyz` on the metrics listener (the gRPC health
/// service answers only over mTLS).
pub type Serving = Arc<AtomicBool>;

/// Updates `reporter` and `serving` until `stop` resolves.
pub async fn report(
    replica: FederationReplica,
    reporter: HealthReporter,
    serving_flag: Serving,
    max_lag_entries: u64,
    stop: impl Future<Output = ()>,
) {
    let work = async {
        let mut serving = None;
        loop {
            let now_serving = evaluate(&replica, max_lag_entries).await;
            if serving != Some(now_serving) {
                tracing::info!(replica = replica.id(), serving = now_serving, "health changed");
                serving_flag.store(now_serving, Ordering::Relaxed);
                if now_serving {
                    reporter.set_serving::<AdminServer<AdminService>>().await;
                    reporter.set_service_status("", tonic_health::ServingStatus::Serving).await;
                } else {
                    reporter.set_not_serving::<AdminServer<AdminService>>().await;
                    reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                }
                serving = Some(now_serving);
            }
            tokio::time::sleep(PERIOD).await;
        }
    };
    tokio::select! {
        () = work => {}
        () = stop => {}
    }
}

/// Reports the replica NOT_SERVING at once (it is stopping or failed).
pub async fn not_serving(reporter: &HealthReporter, serving: &Serving) {
    serving.store(false, Ordering::Relaxed);
    reporter.set_not_serving::<AdminServer<AdminService>>().await;
    reporter.set_service_status("", tonic_health::ServingStatus::NotServing).await;
}

async fn evaluate(replica: &FederationReplica, max_lag_entries: u64) -> bool {
    if replica.stopped().is_some() {
        return false;
    }
    let (has_leader, applied) = {
        let m = replica.metrics().borrow().clone();
        (m.current_leader.is_some(), m.last_applied.map_or(0, |l| l.index))
    };
    if !has_leader {
        return false;
    }
    match tokio::time::timeout(Duration::from_secs(1), replica.read_index()).await {
        Ok(Ok(read_index)) => read_index.unwrap_or(0).saturating_sub(applied) <= max_lag_entries,
        _ => false,
    }
}
