//! The Multi-Cluster Services API objects the agent reads and writes (KEP-1645,
//! `multicluster.x-k8s.io/v1alpha1`): `ServiceExport` (a cluster's wish to export the
//! Service of the same name) and `ServiceImport` (a service the cluster set offers).
//!
//! The shapes follow the upstream definitions (`sigs.k8s.io/mcs-api`) in the fields the
//! agent uses; the CustomResourceDefinitions shipped under `deploy/crds/` are generated
//! from these types (`federator agent crds`), so the two cannot drift apart. A cluster
//! that already runs the upstream CRDs keeps them: the agent reads and writes only
//! fields both define.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of the Multi-Cluster Services API.
pub const GROUP: &str = "multicluster.x-k8s.io";

/// A cluster's wish to export the Service of the same namespace and name. Its spec is
/// empty; the agent writes its status conditions: `Valid` (the Service exists and can be
/// exported) and `Conflict` (another cluster exports the service with different ports).
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceExport",
    namespaced,
    status = "ServiceExportStatus",
    shortname = "svcex",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
pub struct ServiceExportSpec {}

/// What the agent says about an export.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
pub struct ServiceExportStatus {
    /// `Valid` and `Conflict`, each owned by the agent part that decides it (a map keyed
    /// by `type`, so that each part applies its own condition).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// A service offered by the cluster set, as this cluster imports it: its ports and the
/// clusters that export it. Its endpoints are EndpointSlices labelled
/// `multicluster.kubernetes.io/service-name`.
#[derive(CustomResource, Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq)]
#[kube(
    group = "multicluster.x-k8s.io",
    version = "v1alpha1",
    kind = "ServiceImport",
    namespaced,
    status = "ServiceImportStatus",
    shortname = "svcim",
    printcolumn = r#"{"name":"Type","type":"string","jsonPath":".spec.type"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".spec.ips"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportSpec {
    /// The merged ports of every exporting cluster.
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub ports: Vec<ServiceImportPort>,
    /// Cluster-set virtual IPs (none: Federator allocates none; clients use the
    /// endpoints or a proxy the agent configures).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<String>,
    /// `ClusterSetIP` or `Headless`.
    #[serde(rename = "type")]
    pub type_: String,
}

/// A port of an imported service.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceImportPort {
    /// The port's name (empty when the service has one port).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// The application protocol, when the exporter gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
    /// The port number.
    pub port: i32,
}

/// The clusters that export an imported service.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct ServiceImportStatus {
    /// One entry per exporting cluster.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["cluster"]))]
    pub clusters: Vec<ClusterStatus>,
}

/// An exporting cluster.
#[derive(Clone, Debug, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The cluster's name in the federation.
    pub cluster: String,
}

/// The CustomResourceDefinitions of [`ServiceExport`] and [`ServiceImport`], labelled as
/// the upstream ones are.
#[must_use]
pub fn definitions() -> Vec<CustomResourceDefinition> {
    use kube::CustomResourceExt as _;
    [ServiceExport::crd(), ServiceImport::crd()]
        .into_iter()
        .map(|mut crd| {
            // A ServiceExport's spec is empty and may be left out, as upstream: the
            // generated schema would require it.
            for version in &mut crd.spec.versions {
                if let Some(schema) =
                    version.schema.as_mut().and_then(|s| s.open_api_v3_schema.as_mut())
                    && let Some(required) = &mut schema.required
                {
                    required.retain(|field| {
                        !(crd.spec.names.kind == "ServiceExport" && field == "spec")
                    });
                    if required.is_empty() {
                        schema.required = None;
                    }
                }
            }
            let labels = crd.metadata.labels.get_or_insert_with(BTreeMap::new);
            labels.insert("multicluster.x-k8s.io/crd".into(), "true".into());
            labels.insert("app.kubernetes.io/part-of".into(), "federator".into());
            crd
        })
        .collect()
}

/// [`definitions`] as one YAML stream, as shipped in `deploy/crds/mcs.yaml`.
///
/// # Errors
/// A definition did not serialize (it always does: the types are plain data).
pub fn definitions_yaml() -> Result<String, serde_yaml_ng::Error> {
    let mut out = String::from(
        "# The Multi-Cluster Services API CustomResourceDefinitions the Federator agent\n\
         # reads and writes. Generated by `federator agent crds`; do not edit.\n",
    );
    for crd in definitions() {
        out.push_str("---\n");
        out.push_str(&serde_yaml_ng::to_string(&crd)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_definitions_name_the_mcs_group_and_version() {
        let crds = definitions();
        let names: Vec<_> = crds.iter().filter_map(|c| c.metadata.name.clone()).collect();
        assert_eq!(
            names,
            ["serviceexports.multicluster.x-k8s.io", "serviceimports.multicluster.x-k8s.io"]
        );
        for crd in &crds {
            assert_eq!(crd.spec.group, GROUP);
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(crd.spec.versions[0].name, "v1alpha1");
            assert!(crd.spec.versions[0].subresources.as_ref().is_some_and(|s| s.status.is_some()));
        }
    }

    #[test]
    fn conditions_are_a_map_keyed_by_type_so_each_writer_owns_its_own() {
        let yaml = definitions_yaml().expect("yaml");
        assert!(yaml.contains("x-kubernetes-list-map-keys:\n"), "{yaml}");
        assert!(yaml.contains("- type\n"), "{yaml}");
        assert!(yaml.contains("- cluster\n"), "{yaml}");
    }

    #[test]
    fn the_shipped_definitions_are_the_generated_ones() {
        let shipped = include_str!("../../../../deploy/crds/mcs.yaml");
        assert_eq!(
            shipped,
            definitions_yaml().expect("yaml"),
            "deploy/crds/mcs.yaml is out of date: run `federator agent crds > deploy/crds/mcs.yaml`"
        );
    }
}
