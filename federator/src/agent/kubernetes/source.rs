//! The Kubernetes export source: follows `ServiceExport`s, Services and EndpointSlices
//! in every namespace (three reflectors: listed, then watched, relisted after an error
//! with backoff), and hands out the [`ExportSet`] they make ([`super::exports`]) after
//! every change. Each `ServiceExport` gets its `Valid` condition (server-side apply
//! under [`SOURCE_MANAGER`]), written when it changes.
//!
//! Static stability: while the API server cannot be reached, the objects last seen stay
//! and the set carries a problem at [`SOURCE_LOCATION`], so the agent withdraws nothing
//! (as for its other sources). The first set is handed out only once all three kinds
//! have been listed: an empty cache never reads as "nothing is exported".

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use kube::api::{Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Resource};
use tokio::sync::watch;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::SOURCE_MANAGER;
use super::crd::ServiceExport as ServiceExportObject;
use super::exports::{
    ExportRules, KubernetesExports, Verdict, apply_refusals, exports_from_objects,
};
use crate::agent::view::{ExportSet, SourceProblem};
use crate::service::ServiceKey;

/// Where a problem of the whole source is reported (the API server unreachable, the
/// objects not listed yet).
pub const SOURCE_LOCATION: &str = "kubernetes ServiceExports";
/// How long [`watch_kubernetes_exports`] waits for the first listing before returning.
const FIRST_LISTING_WAIT: Duration = Duration::from_secs(20);
/// Changes arriving this close together are handled as one.
const SETTLE: Duration = Duration::from_millis(50);
/// Time allowed for one status write.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);

/// Follows the cluster's `ServiceExport`s under `rules`; a service in `refusals` (what
/// the federation refused of the agent's exports, with why) is `Valid=False`, reason
/// `Refused`. Endpoints keep
/// the zone of their slice only with `keep_zones` (the cluster's region configured): the
/// federation refuses zones from a member whose locality the operator did not bind.
///
/// Returns once everything was listed once or the first listing failed (at most about
/// 20 s), so that the receiver's first value is the cluster's, not an empty set. The task
/// ends when every receiver is dropped; its handle is returned for its owner to join.
pub async fn watch_kubernetes_exports(
    client: kube::Client,
    rules: ExportRules,
    keep_zones: bool,
    refusals: watch::Receiver<BTreeMap<ServiceKey, String>>,
) -> (watch::Receiver<ExportSet>, tokio::task::JoinHandle<()>) {
    let not_listed = ExportSet {
        exports: BTreeMap::new(),
        problems: vec![SourceProblem {
            location: SOURCE_LOCATION.into(),
            message: "not listed from the API server yet".into(),
        }],
    };
    let (tx, mut rx) = watch::channel(not_listed);
    let task = tokio::spawn(follow(client, rules, keep_zones, refusals, tx));
    let _ = tokio::time::timeout(FIRST_LISTING_WAIT, rx.changed()).await;
    (rx, task)
}

/// Whether `reader`'s kind has been listed once.
fn listed<K>(reader: &Store<K>) -> bool
where
    K: Resource + Clone + 'static,
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    futures::FutureExt::now_or_never(reader.wait_until_ready()).is_some_and(|r| r.is_ok())
}

async fn follow(
    client: kube::Client,
    rules: ExportRules,
    keep_zones: bool,
    mut refusals: watch::Receiver<BTreeMap<ServiceKey, String>>,
    tx: watch::Sender<ExportSet>,
) {
    // Only the metadata of ServiceExports: that is all they say, and an upstream MCS
    // ServiceExport (no spec) would not decode as the agent's type.
    let (exports_reader, exports_writer) =
        reflector::store::<PartialObjectMeta<ServiceExportObject>>();
    let (services_reader, services_writer) = reflector::store::<Service>();
    let (slices_reader, slices_writer) = reflector::store::<EndpointSlice>();
    let config = watcher::Config::default();
    let slices_config = watcher::Config::default().labels(super::exports::SERVICE_NAME_LABEL);
    let exports_stream = reflector::reflector(
        exports_writer,
        watcher(Api::<PartialObjectMeta<ServiceExportObject>>::all(client.clone()), config.clone()),
    )
    .default_backoff()
    .map(|e| (0_usize, e.err().map(|e| e.to_string())))
    .boxed();
    let services_stream =
        reflector::reflector(services_writer, watcher(Api::<Service>::all(client.clone()), config))
            .default_backoff()
            .map(|e| (1_usize, e.err().map(|e| e.to_string())))
            .boxed();
    let slices_stream = reflector::reflector(
        slices_writer,
        watcher(Api::<EndpointSlice>::all(client.clone()), slices_config),
    )
    .default_backoff()
    .map(|e| (2_usize, e.err().map(|e| e.to_string())))
    .boxed();
    let mut events = futures::stream::select(
        exports_stream,
        futures::stream::select(services_stream, slices_stream),
    );
    // Why each kind's last watch step failed (ServiceExports, Services, EndpointSlices).
    let mut failing_kinds: [Option<String>; 3] = [None, None, None];
    let mut written: BTreeMap<ServiceKey, (Verdict, String)> = BTreeMap::new();
    let mut refusals_open = true;
    loop {
        // A watch event, or (None) news of the federation's refusals.
        let Some(event) = (tokio::select! {
            event = events.next() => event.map(Some),
            changed = refusals.changed(), if refusals_open => {
                refusals_open = changed.is_ok();
                Some(None)
            }
            () = tx.closed() => return,
        }) else {
            return;
        };
        if let Some((kind, error)) = event {
            let mut note = |kind: usize, error: Option<String>| failing_kinds[kind.min(2)] = error;
            note(kind, error);
            // Take in whatever else arrived meanwhile.
            let settle = tokio::time::sleep(SETTLE);
            tokio::pin!(settle);
            loop {
                tokio::select! {
                    () = &mut settle => break,
                    event = events.next() => match event {
                        Some((kind, error)) => note(kind, error),
                        None => return,
                    },
                }
            }
        }
        let failing: Vec<String> = ["ServiceExports", "Services", "EndpointSlices"]
            .into_iter()
            .zip(&failing_kinds)
            .filter_map(|(what, error)| error.as_ref().map(|e| format!("{what}: {e}")))
            .collect();
        if !(listed(&exports_reader) && listed(&services_reader) && listed(&slices_reader)) {
            if !failing.is_empty() {
                let down = source_down(&tx.borrow(), &failing);
                let _ = tx.send(down);
            }
            continue;
        }
        let service_exports = exports_reader.state();
        let service_list = services_reader.state();
        let slice_list = slices_reader.state();
        let KubernetesExports { mut set, mut verdicts } = exports_from_objects(
            service_exports.iter().map(|o| &o.metadata),
            service_list.iter().map(Arc::as_ref),
            slice_list.iter().map(Arc::as_ref),
            &rules,
        );
        apply_refusals(&mut verdicts, &refusals.borrow_and_update());
        if !keep_zones {
            for endpoint in set.exports.values_mut().flat_map(|e| e.endpoints.iter_mut()) {
                endpoint.zone.clear();
            }
        }
        if !failing.is_empty() {
            set.problems.push(SourceProblem {
                location: SOURCE_LOCATION.into(),
                message: format!(
                    "the API server cannot be followed ({}): serving the objects last seen",
                    failing.join("; ")
                ),
            });
        }
        tx.send_if_modified(|current| {
            let changed = *current != set;
            *current = set;
            changed
        });
        write_verdicts(&client, &verdicts, &mut written).await;
    }
}

/// The last set with a problem at [`SOURCE_LOCATION`] saying why it may be stale.
fn source_down(current: &ExportSet, failing: &[String]) -> ExportSet {
    let mut set = current.clone();
    set.problems.retain(|p| p.location != SOURCE_LOCATION);
    set.problems.push(SourceProblem {
        location: SOURCE_LOCATION.into(),
        message: format!("cannot list from the API server: {}", failing.join("; ")),
    });
    set
}

/// Writes the `Valid` condition of every `ServiceExport` whose verdict changed since the
/// last write (`written`: verdict and its transition time).
async fn write_verdicts(
    client: &kube::Client,
    verdicts: &BTreeMap<ServiceKey, Verdict>,
    written: &mut BTreeMap<ServiceKey, (Verdict, String)>,
) {
    written.retain(|key, _| verdicts.contains_key(key));
    for (key, verdict) in verdicts {
        let since = match written.get(key) {
            Some((last, _)) if last == verdict => continue,
            Some((last, since)) if last.valid == verdict.valid => since.clone(),
            _ => super::now_rfc3339(),
        };
        let condition = serde_json::json!({
            "type": "Valid",
            "status": if verdict.valid { "True" } else { "False" },
            "reason": verdict.reason,
            "message": verdict.message,
            "lastTransitionTime": since,
        });
        let api = super::service_exports_api(client, &key.namespace);
        let patch = serde_json::json!({
            "apiVersion": "multicluster.x-k8s.io/v1alpha1",
            "kind": "ServiceExport",
            "status": { "conditions": [condition] },
        });
        let params = PatchParams::apply(SOURCE_MANAGER).force();
        match tokio::time::timeout(
            STATUS_TIMEOUT,
            api.patch_status(&key.name, &params, &Patch::Apply(&patch)),
        )
        .await
        {
            Ok(Ok(_)) => {
                written.insert(key.clone(), (verdict.clone(), since));
            }
            Ok(Err(error)) => {
                let error = super::sink::describe(&error);
                tracing::warn!(service = %key, %error, "cannot write the ServiceExport's Valid condition");
            }
            Err(_) => {
                tracing::warn!(service = %key, "writing the ServiceExport's Valid condition timed out")
            }
        }
    }
}
