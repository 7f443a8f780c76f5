//! The Kubernetes-native agent against two real kube-apiservers (v1.37.2, each on its own
//! etcd, on loopback; `deploy/local/kube-apiserver.sh`), joined through a real 3-replica
//! federation. There is no kubelet or EndpointSlice controller: the test writes the
//! Services and EndpointSlices as that controller would.
//!
//! - A Service, its EndpointSlice and a `ServiceExport` in cluster A: A's agent marks the
//!   `ServiceExport` `Valid`; B's agent writes a `ServiceImport` and EndpointSlices
//!   labelled with the MCS labels; A's trust domain appears in B as a
//!   `ClusterTrustBundle` and follows A's CA rotation.
//! - A `ServiceExport` without its Service is `Valid=False` (`NoService`); one claiming
//!   another namespace's SPIFFE ID is `Valid=False` (`Invalid`), and nothing is imported.
//! - An import into a namespace B does not have is held back and shown in B's `agent
//!   status`; once the namespace is created, it is written.
//! - An export the federation refuses makes its `ServiceExport` `Valid=False`
//!   (`Refused`).
//! - Deleting the `ServiceExport` removes B's objects.
//! - A's agent killed: B's endpoints turn not ready once A's lease expires.
//! - Every replica killed: B's objects stay as they were (static stability).
//! - A removed from the federation: its `ClusterTrustBundle` leaves B.
//!
//! Each agent runs as a user of its own whose only permissions are the ClusterRole the
//! agent Helm chart renders (every Kubernetes part on): the chart's rules are exactly
//! enough.

use std::collections::BTreeMap;
use std::time::Duration;

use federator::agent::kubernetes::crd::{ServiceExport, ServiceImport};
use federator::agent::kubernetes::imports::{
    DEFAULT_SIGNER, MCS_SERVICE_NAME_LABEL, MCS_SOURCE_CLUSTER_LABEL, trust_bundle_name,
};
use federator_chaos::agent::{AgentOptions, AgentProcess};
use federator_chaos::cluster::{Federation, eventually};
use federator_chaos::kube_apiserver::KubeApiServer;
use federator_chaos::member::MemberCluster;
use k8s_openapi::api::certificates::v1::ClusterTrustBundle;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, ListParams, PostParams};

/// Bound of every wait on propagation (typically well under a second).
const WAIT: Duration = Duration::from_secs(30);
/// Lease TTL of the agents.
const LEASE_TTL: u32 = 5;

struct Cluster {
    api: KubeApiServer,
    client: kube::Client,
    agent: AgentProcess,
}

impl Cluster {
    async fn start(
        fed: &Federation,
        api: KubeApiServer,
        name: &str,
        td: &str,
        region: &str,
    ) -> anyhow::Result<Self> {
        api.install_crds(&federator::agent::kubernetes::crd::definitions()).await?;
        let client = api.client().await?;
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "shop" }
        }))?;
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await?;
        // The agent runs as a user with the chart's ClusterRole and nothing else.
        let user = format!("federator-agent-{name}");
        grant_chart_role(&client, &user).await?;
        let options = AgentOptions {
            kubeconfig: Some(api.user_kubeconfig(&user)?),
            lease_ttl_seconds: Some(LEASE_TTL),
            // The operator binds the region (the slices' zones are exported within it).
            locality: Some((region.into(), format!("{region}-a"))),
            ..AgentOptions::default()
        };
        let mut agent = AgentProcess::new(fed, MemberCluster::new(name, td)?, &options)?;
        agent.start()?;
        agent
            .wait_status("joined and connected", WAIT, |s| {
                !s.cluster.is_empty() && s.connected_replica.is_some() && s.lease.is_some()
            })
            .await?;
        Ok(Self { api, client, agent })
    }

    fn slices(&self) -> Api<EndpointSlice> {
        Api::namespaced(self.client.clone(), "shop")
    }

    fn exports(&self) -> Api<ServiceExport> {
        Api::namespaced(self.client.clone(), "shop")
    }

    fn imports(&self) -> Api<ServiceImport> {
        Api::namespaced(self.client.clone(), "shop")
    }

    fn bundles(&self) -> Api<ClusterTrustBundle> {
        Api::all(self.client.clone())
    }

    /// The imported slices of `service` from `source`: (address, ready) sorted, and the
    /// ports.
    async fn imported_endpoints(
        &self,
        service: &str,
        source: &str,
    ) -> Option<(Vec<(String, bool)>, Vec<(String, i32)>)> {
        let selector =
            format!("{MCS_SERVICE_NAME_LABEL}={service},{MCS_SOURCE_CLUSTER_LABEL}={source}");
        let slices = self.slices().list(&ListParams::default().labels(&selector)).await.ok()?;
        let mut endpoints = Vec::new();
        let mut ports = Vec::new();
        for slice in &slices.items {
            for endpoint in slice.endpoints.iter().flatten() {
                let ready = endpoint.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false);
                endpoints.extend(endpoint.addresses.iter().map(|a| (a.clone(), ready)));
            }
            for port in slice.ports.iter().flatten() {
                ports.push((port.name.clone().unwrap_or_default(), port.port.unwrap_or_default()));
            }
        }
        endpoints.sort();
        ports.sort();
        ports.dedup();
        Some((endpoints, ports))
    }

    /// The `status` and `reason` of `condition` on the `ServiceExport` `name` (read
    /// untyped: a `ServiceExport` may have no spec).
    async fn export_condition(&self, name: &str, condition: &str) -> Option<(String, String)> {
        let api = federator::agent::kubernetes::service_exports_api(&self.client, "shop");
        let export = api.get(name).await.ok()?;
        let conditions = export.data["status"]["conditions"].as_array()?.clone();
        conditions.iter().find(|c| c["type"] == condition).map(|c| {
            (
                c["status"].as_str().unwrap_or_default().into(),
                c["reason"].as_str().unwrap_or_default().into(),
            )
        })
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Shown only for a failing test (the harness captures the output of passing ones).
        eprintln!("--- agent {} log ---\n{}", self.agent.member.name, self.agent.log());
        eprintln!("--- its kube-apiserver log ---\n{}", self.api.log_tail(20));
    }
}

/// The agent chart's ClusterRole with every Kubernetes part on, as `helm template`
/// renders it (Helm from deploy/local/setup-helm.sh, which tests/run.sh runs first).
fn chart_cluster_role() -> anyhow::Result<ClusterRole> {
    let helm = std::env::var_os("FEDERATOR_HELM").map_or_else(
        || {
            std::path::Path::new(&std::env::var("HOME").unwrap_or_default())
                .join(".cache/federator/helm/bin/helm")
        },
        std::path::PathBuf::from,
    );
    let chart =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/federator-agent");
    let out = std::process::Command::new(&helm)
        .args(["template", "federator-agent"])
        .arg(&chart)
        .args(["--namespace", "federator"])
        .args(["--set", "kubernetes.exports=true,kubernetes.serviceImports=true,kubernetes.clusterTrustBundles=true"])
        .output()
        .map_err(|e| anyhow::anyhow!("{}: {e} (run bash deploy/local/setup-helm.sh)", helm.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "helm template: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest = String::from_utf8(out.stdout)?;
    for document in serde_yaml_ng::Deserializer::from_str(&manifest) {
        let value = <serde_yaml_ng::Value as serde::Deserialize>::deserialize(document)?;
        if value["kind"] == "ClusterRole" {
            return Ok(serde_yaml_ng::from_value(value)?);
        }
    }
    anyhow::bail!("the agent chart rendered no ClusterRole")
}

/// Binds the chart's ClusterRole to `user`.
async fn grant_chart_role(client: &kube::Client, user: &str) -> anyhow::Result<()> {
    let mut role = chart_cluster_role()?;
    role.metadata.name = Some(user.to_string());
    Api::<ClusterRole>::all(client.clone()).create(&PostParams::default(), &role).await?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": { "name": user },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": user },
        "subjects": [{ "apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user }]
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone()).create(&PostParams::default(), &binding).await?;
    Ok(())
}

fn service(name: &str) -> anyhow::Result<Service> {
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "namespace": "shop" },
        "spec": {
            "clusterIP": "None",
            "ports": [{ "name": "http", "port": 80, "protocol": "TCP", "appProtocol": "http" }]
        }
    }))?)
}

/// The slice the EndpointSlice controller would write for `service`: its pods listen on
/// 8080. The addresses are only data here (nothing dials them), and not loopback ones,
/// which the API server refuses in a slice.
fn endpoint_slice(service: &str, addresses: &[(&str, bool)]) -> anyhow::Result<EndpointSlice> {
    let endpoints: Vec<serde_json::Value> = addresses
        .iter()
        .map(|(address, ready)| {
            serde_json::json!({
                "addresses": [address],
                "conditions": { "ready": ready },
                "zone": "r1-a"
            })
        })
        .collect();
    Ok(serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("{service}-abcde"),
            "namespace": "shop",
            "labels": { "kubernetes.io/service-name": service }
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{ "name": "http", "port": 8080, "protocol": "TCP" }]
    }))?)
}

fn service_export(name: &str) -> anyhow::Result<ServiceExport> {
    Ok(serde_json::from_value(serde_json::json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceExport",
        "metadata": { "name": name, "namespace": "shop" },
        "spec": {}
    }))?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_and_trust_bundles_flow_between_two_kubernetes_clusters() -> anyhow::Result<()> {
    let (api_a, api_b) = tokio::join!(KubeApiServer::start(), KubeApiServer::start());
    let (api_a, api_b) = (api_a?, api_b?);
    let mut fed = Federation::formed(3, "").await?;
    let mut a = Cluster::start(&fed, api_a, "cluster-a", "a.example", "r1").await?;
    let b = Cluster::start(&fed, api_b, "cluster-b", "b.example", "r2").await?;
    let create = PostParams::default();

    // == A exports shop/cart: Service, its slice (two ready pods), a ServiceExport. ==
    Api::<Service>::namespaced(a.client.clone(), "shop").create(&create, &service("cart")?).await?;
    a.slices()
        .create(&create, &endpoint_slice("cart", &[("192.0.2.11", true), ("192.0.2.12", true)])?)
        .await?;
    a.exports().create(&create, &service_export("cart")?).await?;
    eventually("A's ServiceExport is Valid", WAIT, || async {
        a.export_condition("cart", "Valid").await.filter(|(status, _)| status == "True")
    })
    .await?;

    // B imports it: a ServiceImport and slices with the MCS labels.
    let import = eventually("B's ServiceImport shop/cart", WAIT, || async {
        b.imports().get("cart").await.ok()
    })
    .await?;
    assert_eq!(import.spec.ports.len(), 1, "{import:?}");
    assert_eq!(import.spec.ports[0].name, "http");
    assert_eq!(import.spec.ports[0].port, 80);
    assert_eq!(import.spec.ports[0].app_protocol.as_deref(), Some("http"));
    let clusters = eventually("B's ServiceImport names cluster-a", WAIT, || async {
        let status = b.imports().get("cart").await.ok()?.status?;
        (!status.clusters.is_empty()).then_some(status.clusters)
    })
    .await?;
    assert_eq!(clusters[0].cluster, "cluster-a");
    let (endpoints, ports) =
        eventually("B's EndpointSlices of cart from cluster-a", WAIT, || async {
            b.imported_endpoints("cart", "cluster-a").await.filter(|(e, _)| e.len() == 2)
        })
        .await?;
    assert_eq!(
        endpoints,
        [("192.0.2.11".to_string(), true), ("192.0.2.12".to_string(), true)],
        "both endpoints ready"
    );
    assert_eq!(ports, [("http".to_string(), 8080)], "the pods' port");

    // == Trust: A's trust domain is a ClusterTrustBundle in B, for the Federator signer. ==
    let name = trust_bundle_name(DEFAULT_SIGNER, "a.example");
    let bundle = eventually("B's ClusterTrustBundle of a.example", WAIT, || async {
        b.bundles().get(&name).await.ok()
    })
    .await?;
    assert_eq!(bundle.spec.signer_name.as_deref(), Some(DEFAULT_SIGNER));
    assert_eq!(bundle.spec.trust_bundle.trim(), a.agent.member.ca_pem().trim());
    // And B's own trust domain in A.
    let b_name = trust_bundle_name(DEFAULT_SIGNER, "b.example");
    eventually("A's ClusterTrustBundle of b.example", WAIT, || async {
        a.bundles().get(&b_name).await.ok()
    })
    .await?;
    // A rotates its CA: B's ClusterTrustBundle holds old and new.
    a.agent.member.add_ca()?;
    a.agent.write_bundle()?;
    let both = a.agent.member.ca_pem();
    eventually("B's ClusterTrustBundle follows A's rotation", WAIT, || async {
        let bundle = b.bundles().get(&name).await.ok()?;
        (bundle.spec.trust_bundle.trim() == both.trim()).then_some(())
    })
    .await?;

    // == A ServiceExport without its Service is not valid, and exports nothing. It is
    // written as the MCS API's examples write one: with no spec at all. ==
    let ghost: kube::core::DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceExport",
        "metadata": { "name": "ghost", "namespace": "shop" }
    }))?;
    federator::agent::kubernetes::service_exports_api(&a.client, "shop")
        .create(&create, &ghost)
        .await?;
    let (_, reason) = eventually("A's ServiceExport ghost is not Valid", WAIT, || async {
        a.export_condition("ghost", "Valid").await.filter(|(status, _)| status == "False")
    })
    .await?;
    assert_eq!(reason, "NoService");
    assert!(b.imports().get_opt("ghost").await?.is_none(), "nothing imported for ghost");

    // == A ServiceExport claiming another namespace's identity is Invalid. ==
    Api::<Service>::namespaced(a.client.clone(), "shop")
        .create(&create, &service("thief")?)
        .await?;
    let thief = serde_json::from_value(serde_json::json!({
        "apiVersion": "multicluster.x-k8s.io/v1alpha1",
        "kind": "ServiceExport",
        "metadata": {
            "name": "thief",
            "namespace": "shop",
            "annotations": { "federator.io/identities": "spiffe://a.example/ns/payments/sa/api" }
        }
    }))?;
    federator::agent::kubernetes::service_exports_api(&a.client, "shop")
        .create(&create, &thief)
        .await?;
    let (_, reason) = eventually("A's ServiceExport thief is not Valid", WAIT, || async {
        a.export_condition("thief", "Valid").await.filter(|(status, _)| status == "False")
    })
    .await?;
    assert_eq!(reason, "Invalid");
    assert!(b.imports().get_opt("thief").await?.is_none(), "nothing imported for thief");

    // == A exports billing/ledger; B has no namespace billing: held back, then written. ==
    let billing: Namespace =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": "billing" } }))?;
    Api::<Namespace>::all(a.client.clone()).create(&create, &billing).await?;
    let in_billing = |mut meta: kube::api::ObjectMeta| {
        meta.namespace = Some("billing".into());
        meta
    };
    let mut ledger = service("ledger")?;
    ledger.metadata = in_billing(ledger.metadata);
    Api::<Service>::namespaced(a.client.clone(), "billing").create(&create, &ledger).await?;
    let mut ledger_export = service_export("ledger")?;
    ledger_export.metadata = in_billing(ledger_export.metadata);
    Api::<ServiceExport>::namespaced(a.client.clone(), "billing")
        .create(&create, &ledger_export)
        .await?;
    let status = b
        .agent
        .wait_status("B holds back billing/ledger", WAIT, |s| {
            s.sinks.get("kubernetes").is_some_and(|k| {
                k.healthy && k.skipped.iter().any(|p| p.location == "ServiceImport billing/ledger")
            })
        })
        .await?;
    let skipped = &status.sinks["kubernetes"].skipped;
    assert!(skipped[0].message.contains("namespace billing does not exist"), "{skipped:?}");
    let (ok, shown) = b.agent.status_text()?;
    assert!(shown.contains("‼ skipped ServiceImport billing/ledger"), "{shown}");
    assert!(ok, "a held-back import is a warning, not a failure:\n{shown}");
    // The operator creates the namespace: the import follows without a new view.
    Api::<Namespace>::all(b.client.clone()).create(&create, &billing).await?;
    eventually("B's ServiceImport billing/ledger", WAIT, || async {
        Api::<ServiceImport>::namespaced(b.client.clone(), "billing").get("ledger").await.ok()
    })
    .await?;
    b.agent
        .wait_status("B holds nothing back", WAIT, |s| {
            s.sinks.get("kubernetes").is_some_and(|k| k.skipped.is_empty())
        })
        .await?;

    // == The federation refuses an export (exports closed, shop not granted to A): the
    // ServiceExport says so, with the federation's reason. ==
    fed.cli_ok(&[], &["settings", "--open-exports", "false"])?;
    Api::<Service>::namespaced(a.client.clone(), "shop")
        .create(&create, &service("audit")?)
        .await?;
    a.exports().create(&create, &service_export("audit")?).await?;
    let (_, reason) = eventually("A's ServiceExport audit is Refused", WAIT, || async {
        a.export_condition("audit", "Valid").await.filter(|(status, _)| status == "False")
    })
    .await?;
    assert_eq!(reason, "Refused");
    assert!(b.imports().get_opt("audit").await?.is_none(), "nothing imported for audit");
    a.exports().delete("audit", &DeleteParams::default()).await?;
    fed.cli_ok(&[], &["settings", "--open-exports", "true"])?;

    // == A's pod turns not ready: so does B's endpoint. ==
    a.slices()
        .replace("cart-abcde", &PostParams::default(), &{
            let mut slice = endpoint_slice("cart", &[("192.0.2.11", true), ("192.0.2.12", false)])?;
            slice.metadata.resource_version =
                a.slices().get("cart-abcde").await?.metadata.resource_version;
            slice
        })
        .await?;
    eventually("B sees 192.0.2.12 not ready", WAIT, || async {
        b.imported_endpoints("cart", "cluster-a")
            .await
            .filter(|(e, _)| e.contains(&("192.0.2.12".to_string(), false)))
    })
    .await?;

    // == A's agent killed: B's endpoints turn not ready after the lease TTL. ==
    a.agent.kill();
    eventually("B's endpoints of cart not ready once A's lease expired", WAIT, || async {
        b.imported_endpoints("cart", "cluster-a")
            .await
            .filter(|(e, _)| !e.is_empty() && e.iter().all(|(_, ready)| !ready))
    })
    .await?;
    a.agent.start()?;
    eventually("B's endpoint 192.0.2.11 ready again with A back", WAIT, || async {
        b.imported_endpoints("cart", "cluster-a")
            .await
            .filter(|(e, _)| e.contains(&("192.0.2.11".to_string(), true)))
    })
    .await?;

    // == Deleting the ServiceExport removes B's objects. ==
    a.exports().delete("cart", &DeleteParams::default()).await?;
    eventually("B's ServiceImport shop/cart removed", WAIT, || async {
        b.imports().get_opt("cart").await.ok().and_then(|i| i.is_none().then_some(()))
    })
    .await?;
    eventually("B's slices of cart removed", WAIT, || async {
        b.imported_endpoints("cart", "cluster-a").await.filter(|(e, _)| e.is_empty())
    })
    .await?;

    // == Every replica killed: B's objects stay. ==
    a.exports().create(&create, &service_export("cart")?).await?;
    eventually("B's ServiceImport shop/cart back", WAIT, || async {
        b.imports().get("cart").await.ok()
    })
    .await?;
    let before = eventually("B's slices of cart back", WAIT, || async {
        b.imported_endpoints("cart", "cluster-a").await.filter(|(e, _)| e.len() == 2)
    })
    .await?;
    fed.kill_all();
    b.agent
        .wait_status("B notices no replica answers", WAIT, |s| s.connected_replica.is_none())
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(b.imports().get_opt("cart").await?.is_some(), "B's ServiceImport stays");
    assert_eq!(b.imported_endpoints("cart", "cluster-a").await, Some(before), "B's slices stay");
    assert!(b.bundles().get_opt(&name).await?.is_some(), "B's ClusterTrustBundle of A stays");

    // == A removed from the federation: its trust domain leaves B. ==
    for id in fed.ids() {
        fed.restart(id)?;
    }
    fed.wait_for_leader(&fed.ids(), WAIT).await?;
    fed.cli_ok(&[], &["cluster", "remove", "cluster-a"])?;
    eventually("B's ClusterTrustBundle of a.example removed", WAIT, || async {
        b.bundles().get_opt(&name).await.ok().and_then(|o| o.is_none().then_some(()))
    })
    .await?;
    let leftover: BTreeMap<String, String> = b
        .bundles()
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|o| {
            Some((o.metadata.name.clone()?, o.spec.signer_name.clone().unwrap_or_default()))
        })
        .collect();
    assert!(!leftover.contains_key(&name), "{leftover:?}");
    Ok(())
}
